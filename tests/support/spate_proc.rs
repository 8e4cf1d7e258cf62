//! Runs the real `spate` binary for integration tests and talks SMTP to it.

#![allow(dead_code)] // reason: each test binary uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A spate process; killed when dropped.
pub struct Spate {
    pub child: Child,
    pub smtp: SocketAddr,
    pub log: PathBuf,
}

/// A free loopback port for a server to bind, never one this process was
/// given before (see [`spate::util::port::free_loopback_port`]).
pub fn free_port() -> u16 {
    spate::util::port::free_loopback_port().expect("a free loopback port")
}

/// Polls `ok` every 50 ms until it holds; fails with `what` and `log()`
/// (typically spate's log) after `timeout`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut() -> bool,
    log: impl Fn() -> String,
) {
    let end = Instant::now() + timeout;
    while !ok() {
        assert!(
            Instant::now() < end,
            "timed out waiting for {what}; log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Spate {
    /// Starts `spate run --config <dir>/spate.toml` and waits for its port.
    pub fn start(dir: &Path, config: &str, smtp: SocketAddr) -> Spate {
        let path = dir.join("spate.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join(format!("spate-{}.log", Instant::now().elapsed().as_nanos()));
        let logfile = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_spate"))
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(logfile)
            .spawn()
            .expect("spawn spate");
        let s = Spate { child, smtp, log };
        let end = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(smtp).is_err() {
            assert!(
                Instant::now() < end,
                "spate did not start: {}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Spate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A line-oriented SMTP client for tests.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Self::connect_from(None, addr)
    }

    /// Connects from a chosen loopback source address.
    pub fn connect_from(source: Option<&str>, addr: SocketAddr) -> Client {
        let stream = match source {
            None => TcpStream::connect(addr).unwrap(),
            Some(src) => {
                let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .unwrap();
                let src: SocketAddr = format!("{src}:0").parse().unwrap();
                sock.bind(&src.into()).unwrap();
                sock.connect(&addr.into()).unwrap();
                sock.into()
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let writer = stream.try_clone().unwrap();
        let mut c = Client {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = c.reply();
        assert!(greeting.starts_with("220"), "greeting: {greeting}");
        c
    }

    /// Reads one (possibly multi-line) reply; returns its last line.
    pub fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return String::from("EOF");
            }
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return line.trim_end().to_string();
            }
        }
    }

    pub fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).unwrap();
    }

    pub fn cmd(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n"));
        self.reply()
    }

    /// Sends one message; returns the final reply to the data.
    pub fn message(&mut self, from: &str, to: &[&str], data: &str) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        assert!(r.starts_with("250"), "MAIL: {r}");
        let mut accepted = 0;
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>"));
            if r.starts_with("250") {
                accepted += 1;
            }
        }
        if accepted == 0 {
            let _ = self.cmd("RSET");
            return String::from("no recipients");
        }
        let r = self.cmd("DATA");
        assert!(r.starts_with("354"), "DATA: {r}");
        self.send(data);
        self.send(".\r\n");
        self.reply()
    }

    /// Reads one reply and returns all its lines.
    pub fn reply_lines(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return lines;
            }
            let done = line.len() < 4 || line.as_bytes()[3] != b'-';
            lines.push(line.trim_end().to_string());
            if done {
                return lines;
            }
        }
    }

    /// The raw socket, e.g. to start TLS on it (nothing must be buffered).
    pub fn into_stream(self) -> TcpStream {
        assert!(
            self.reader.buffer().is_empty(),
            "unread bytes would be lost"
        );
        self.writer
    }

    pub fn read_rest(&mut self) -> String {
        let mut s = String::new();
        let _ = self.reader.read_to_string(&mut s);
        s
    }
}
