//! `spate-bench`: load generator, scriptable sink, test DNS server and benchmark scenarios.

fn main() {
    println!("usage: spate-bench sink|inject|dns|relay ...");
}
