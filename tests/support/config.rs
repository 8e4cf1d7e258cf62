//! The common parts of the end-to-end tests' spate configuration.

use std::net::SocketAddr;
use std::path::Path;

/// Hostname `relay.test`, a spool of 1 MiB segments in `<dir>/spool`, two
/// unpinned shards, `[admin]` with `admin_lines`, DNS pointed at a closed
/// port (the tests route with `smtp_hosts`), one listener on `smtp`. Callers
/// append their sources, vMTAs and domains.
pub fn head(dir: &Path, smtp: SocketAddr, admin_lines: &str) -> String {
    format!(
        r#"
hostname = "relay.test"

[spool]
path = "{spool}"
segment_size = "1MiB"

[runtime]
shards = 2
pin_cores = false
shutdown_timeout = "5s"

[admin]
{admin_lines}

[dns]
nameservers = ["127.0.0.1:9"]
timeout = "1s"

[[listener]]
address = "{smtp}"
"#,
        spool = dir.join("spool").display(),
    )
}

/// An `[[accounting]]` table writing `d`, `b` and `t` records as CSV to
/// `<dir>/acct.csv`.
pub fn accounting(dir: &Path) -> String {
    format!(
        r#"
[[accounting]]
path = "{}"
format = "csv"
records = ["d", "b", "t"]
"#,
        dir.join("acct.csv").display()
    )
}
