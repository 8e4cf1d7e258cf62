//! `spate-spool`: read-only spool inspector.

fn main() {
    println!("usage: spate-spool [--spool DIR] [--json] ls | show ID [--body] | stats | verify");
}
