//! A seconds-long run of the relay harness, to keep it honest.

mod common;
use common::spate_bin;

use spate_bench::relay::{
    FORWARD_LEG, FORWARD_WRITE_LEG, Load, SpateLeg, run_forward, run_forward_write, run_raw,
    run_spate,
};

fn small_load() -> Load {
    Load {
        messages: 300,
        connections: 5,
        per_connection: 20,
        size: 2048,
        inject_threads: 1,
        rate: None,
        tls: false,
        rcpts: 1,
        domains: 1,
    }
}

#[test]
fn raw_leg_delivers_everything() {
    let r = run_raw(&small_load()).unwrap();
    assert_eq!(r.error, None);
    assert_eq!(r.injected_ok, 300);
    assert_eq!(r.delivered, 300);
    assert!(r.end_to_end_msgs_per_s > 0.0);
    assert_eq!(r.ack_latency.count, 300);
    assert_eq!(r.e2e_latency.count, 300);
    assert_machine_figures(&r);
}

/// The forwarder leg: every message crosses `spate-bench forward`, a process
/// of its own whose CPU and memory the row reports.
#[test]
fn forward_leg_delivers_everything_through_the_forwarder() {
    let bench = std::path::Path::new(env!("CARGO_BIN_EXE_spate-bench"));
    let r = run_forward(&small_load(), bench).unwrap();
    assert_eq!(r.name, FORWARD_LEG);
    assert_eq!(r.error, None);
    assert_eq!((r.injected_ok, r.delivered), (300, 300));
    assert_eq!(r.e2e_latency.count, 300);
    assert!(r.cpu_s.is_some_and(|s| s > 0.0), "{:?}", r.cpu_s);
    assert!(
        r.peak_rss_kib.is_some_and(|k| k > 0),
        "{:?}",
        r.peak_rss_kib
    );
    assert_machine_figures(&r);
    // Through TLS too: STARTTLS passes through, end to end with the sink.
    let tls = Load {
        tls: true,
        ..small_load()
    };
    let r = run_forward(&tls, bench).unwrap();
    assert_eq!(r.error, None);
    assert_eq!((r.injected_ok, r.delivered), (300, 300));
    assert!(
        r.sink_tls_sessions.is_some_and(|n| n >= 15),
        "{:?}",
        r.sink_tls_sessions
    );
}

/// The writing forwarder's leg: every message crosses it, its files are in
/// a directory made under the work dir, and the directory goes with the leg.
#[test]
fn forward_write_leg_delivers_everything_and_cleans_up() {
    let bench = std::path::Path::new(env!("CARGO_BIN_EXE_spate-bench"));
    let work = tempfile::tempdir().unwrap();
    let r = run_forward_write(&small_load(), bench, Some(work.path()), false).unwrap();
    assert_eq!(r.name, FORWARD_WRITE_LEG);
    assert_eq!(r.error, None);
    assert_eq!((r.injected_ok, r.delivered), (300, 300));
    assert!(r.cpu_s.is_some_and(|s| s > 0.0), "{:?}", r.cpu_s);
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
}

/// `spate-bench forward` refuses an address off loopback, on either side,
/// unless allowed, and a thread count out of its bounds.
#[test]
fn the_forwarder_refuses_remote_addresses_and_bad_thread_counts() {
    use spate_bench::forward::{FORWARD_THREADS_MAX, ForwardArgs};
    let args = |listen: &str, to: &str, threads: usize, allow_remote: bool| ForwardArgs {
        listen: listen.parse().unwrap(),
        to: to.parse().unwrap(),
        threads,
        allow_remote,
        write_dir: None,
        direct: false,
    };
    for (listen, to) in [
        ("127.0.0.1:0", "192.0.2.1:25"),
        ("192.0.2.1:2600", "127.0.0.1:25"),
    ] {
        let err = args(listen, to, 1, false)
            .validate()
            .expect_err("off loopback");
        assert!(err.to_string().contains("loopback"), "{err:#}");
        args(listen, to, 1, true).validate().unwrap();
    }
    for threads in [0, FORWARD_THREADS_MAX + 1] {
        let err = args("127.0.0.1:0", "127.0.0.1:25", threads, false).validate();
        assert!(err.is_err(), "{threads} threads");
    }
    args("127.0.0.1:0", "127.0.0.1:25", FORWARD_THREADS_MAX, false)
        .validate()
        .unwrap();
}

/// The forwarder copies both ways and passes a half-close on: the client
/// sends 200 KB and shuts its sending side; the server reads to the end,
/// answers with what it counted, and closes; the client reads the answer
/// and the end.
/// Sends 200 KiB (no zero byte in it) through a forwarder started with
/// `threads` and `writes`; the server answers with the count after the
/// client's half close. Returns what was sent.
fn forward_through(threads: usize, writes: Option<spate_bench::forward::Writes<'_>>) -> Vec<u8> {
    use std::io::{Read, Write};
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let to = server.local_addr().unwrap();
    let counted = std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(format!("got {} bytes", got.len()).as_bytes())
            .unwrap();
        got
    });
    let listen: std::net::SocketAddr = format!(
        "127.0.0.1:{}",
        spate::util::port::free_loopback_port().unwrap()
    )
    .parse()
    .unwrap();
    spate_bench::forward::start(listen, to, threads, writes).unwrap();
    let sent: Vec<u8> = (0..200 * 1024).map(|i| (i % 251 + 1) as u8).collect();
    let mut c = std::net::TcpStream::connect(listen).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    c.write_all(&sent).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, format!("got {} bytes", sent.len()));
    assert_eq!(counted.join().unwrap(), sent);
    sent
}

#[test]
fn the_forwarder_copies_both_ways_and_passes_half_closes_on() {
    forward_through(2, None);
}

/// With `--write-dir` the bytes the client sent (and only those: not the
/// server's answer) are stored in the thread's file, in order: at its start
/// through the page cache; with `--direct` in batches each padded with
/// zeros to a whole block.
#[test]
fn the_writing_forwarder_stores_what_clients_send() {
    use spate_bench::forward::{FORWARD_FILE_BYTES, Writes};
    for direct in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let sent = forward_through(
            1,
            Some(Writes {
                dir: dir.path(),
                direct,
            }),
        );
        let file = dir.path().join("forward-0.dat");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), FORWARD_FILE_BYTES);
        // The writer stores batches behind the forwarding: wait for the
        // last. The data has no zero byte, so dropping zeros drops exactly
        // the unwritten rest and the padding.
        let head = sent.len() as u64 * 2 + (1 << 20);
        let stored = || -> Vec<u8> {
            use std::io::Read;
            let mut bytes = Vec::new();
            std::io::Read::take(std::fs::File::open(&file).unwrap(), head)
                .read_to_end(&mut bytes)
                .unwrap();
            bytes
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut data: Vec<u8>;
        loop {
            data = stored().into_iter().filter(|&b| b != 0).collect();
            if data.len() >= sent.len() || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(data == sent, "direct {direct}: the file holds other bytes");
        let bytes = stored();
        if direct {
            // Each batch starts on a block: every run of data does.
            let starts =
                (0..bytes.len()).filter(|&i| bytes[i] != 0 && (i == 0 || bytes[i - 1] == 0));
            for i in starts {
                assert_eq!(
                    i % spate_bench::forward::DIRECT_BLOCK_BYTES,
                    0,
                    "data at {i}"
                );
            }
            // And the file is open with O_DIRECT (the forwarder's threads
            // are this process's).
            assert!(
                open_with_o_direct(&file),
                "{} not open with O_DIRECT",
                file.display()
            );
        } else {
            assert!(bytes[..sent.len()] == sent[..], "not at the file's start");
            assert!(!open_with_o_direct(&file));
        }
    }
}

/// Whether this process holds `path` open with O_DIRECT (from
/// /proc/self/fdinfo's octal flags).
fn open_with_o_direct(path: &std::path::Path) -> bool {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| target == path) && {
                let info = std::fs::read_to_string(format!(
                    "/proc/self/fdinfo/{}",
                    fd.file_name().to_string_lossy()
                ))
                .unwrap_or_default();
                info.lines()
                    .find_map(|l| l.strip_prefix("flags:"))
                    .and_then(|f| i64::from_str_radix(f.trim(), 8).ok())
                    .is_some_and(|flags| flags & i64::from(libc::O_DIRECT) != 0)
            }
        })
}

/// The whole machine's CPU over the leg: some busy CPUs, no more than
/// there are, and CPU time per message of the machine and of the harness.
fn assert_machine_figures(r: &spate_bench::relay::LegResult) {
    let cpus = std::thread::available_parallelism().unwrap().get() as f64;
    let cores = r.machine_busy_cores.expect("busy cores from /proc/stat");
    assert!(cores > 0.0 && cores <= cpus + 0.01, "{cores} of {cpus}");
    assert!(r.machine_cpu_ms_per_msg.is_some_and(|v| v > 0.0), "{r:?}");
    assert!(r.harness_cpu_ms_per_msg.is_some_and(|v| v > 0.0), "{r:?}");
}

#[test]
fn spate_leg_delivers_everything() {
    let bin = spate_bin();
    let r = run_spate(&small_load(), &SpateLeg::new(&bin)).unwrap();
    assert_eq!(r.error, None);
    assert_eq!(r.delivered, 300);
    assert!(r.cpu_s.is_some() && r.peak_rss_kib.is_some());
    assert_machine_figures(&r);
    // Anonymous memory is part of the resident set.
    let anon = r.peak_anon_kib.expect("sampled anonymous memory");
    assert!(anon > 0 && anon <= r.peak_rss_kib.unwrap(), "{anon} KiB");
    // Every message waited for one commit. (fdatasyncs also serve the
    // delivery states, so their number is not bounded by the messages.)
    let spool = r.spool.expect("spool figures from spate's metrics");
    assert_eq!(spool.commits, 300);
    assert!(spool.fsyncs >= 1, "{spool:?}");
    assert!(spool.commit_mean_ms > 0.0 && spool.fsync_mean_ms > 0.0);
    // The sink was found by name through the leg's test DNS server.
    assert!(r.dns_queries.is_some_and(|q| q > 0), "{:?}", r.dns_queries);
}

/// `--domains 3`: each destination's mail reaches its own MX host (a sink
/// address of its own, found through the test DNS), a third each.
#[test]
fn spate_leg_delivers_each_destination_to_its_own_mx_host() {
    let load = Load {
        domains: 3,
        ..small_load()
    };
    let bin = spate_bin();
    let r = run_spate(&load, &SpateLeg::new(&bin)).unwrap();
    assert_eq!(r.error, None);
    assert_eq!((r.injected_ok, r.delivered), (300, 300));
    assert_eq!(r.per_sink_messages.len(), 3, "{:?}", r.per_sink_messages);
    for (i, (addr, n)) in r.per_sink_messages.iter().enumerate() {
        assert_eq!(*n, 100, "{addr}: {:?}", r.per_sink_messages);
        assert!(addr.starts_with(&format!("127.0.0.{}:", 101 + i)), "{addr}");
    }
    // Each destination's mail, and only it, at its own host.
    let routes: Vec<(String, Vec<String>)> = r
        .per_sink_domains
        .iter()
        .map(|(a, d)| (a.clone(), d.clone()))
        .collect();
    let want: Vec<(String, Vec<String>)> = r
        .per_sink_messages
        .iter()
        .enumerate()
        .map(|(i, (a, _))| (a.clone(), vec![format!("d{}.example.test", i + 1)]))
        .collect();
    assert_eq!(routes, want);
    // One lookup at least per destination's MX host.
    assert!(r.dns_queries.is_some_and(|q| q >= 3), "{:?}", r.dns_queries);
    // The raw leg sends all of it to the first address.
    let raw = run_raw(&load).unwrap();
    assert_eq!(raw.delivered, 300);
    let firsts: Vec<u64> = raw.per_sink_messages.iter().map(|(_, n)| *n).collect();
    assert_eq!(firsts, [300, 0, 0]);
}

/// Several recipients over several destinations: spate splits each message
/// into a transaction per destination, each at its own MX host, and the leg
/// ends when every recipient arrived (not at the first 300 transactions).
/// The raw leg sends each message whole to the first address.
#[test]
fn several_recipients_over_several_destinations_are_counted_in_recipients() {
    let load = Load {
        domains: 3,
        rcpts: 2,
        ..small_load()
    };
    let bin = spate_bin();
    let r = run_spate(&load, &SpateLeg::new(&bin)).unwrap();
    assert_eq!(r.error, None);
    assert_eq!((r.injected_ok, r.delivered), (300, 300));
    assert_eq!(r.delivered_recipients, 600);
    // Recipient n of the load goes to destination n % 3, so each message's
    // two recipients are at two destinations: 600 transactions, 200 each.
    let counts: Vec<u64> = r.per_sink_messages.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts, [200, 200, 200], "{:?}", r.per_sink_messages);
    for (i, (_, domains)) in r.per_sink_domains.iter().enumerate() {
        assert_eq!(domains, &[format!("d{}.example.test", i + 1)]);
    }
    let raw = run_raw(&load).unwrap();
    assert_eq!(raw.error, None);
    assert_eq!((raw.delivered, raw.delivered_recipients), (300, 600));
    let counts: Vec<u64> = raw.per_sink_messages.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts, [300, 0, 0]);
}

/// A number of destinations the legs cannot run is refused before anything
/// starts.
#[test]
fn too_many_destinations_are_refused() {
    let too_many = Load {
        domains: 101,
        ..small_load()
    };
    let err = run_raw(&too_many).unwrap_err().to_string();
    assert!(err.contains("1 to 100"), "{err}");
}

/// `--tls`: the injector runs STARTTLS into spate (it fails a connection
/// where none is offered) and spate into the sink; the raw leg into the sink.
#[test]
fn tls_legs_run_starttls_on_every_hop() {
    let load = Load {
        tls: true,
        ..small_load()
    };
    let raw = run_raw(&load).unwrap();
    assert_eq!(raw.error, None);
    assert_eq!((raw.injected_ok, raw.delivered), (300, 300));
    // One TLS session per injector connection: 300 messages at up to 20
    // each take at least 15; each of the 5 slots claims messages one at a
    // time, so each may end on a short connection when the last are taken.
    assert!(
        raw.sink_tls_sessions
            .is_some_and(|n| (15..=19).contains(&n)),
        "{:?}",
        raw.sink_tls_sessions
    );
    let bin = spate_bin();
    let r = run_spate(&load, &SpateLeg::new(&bin)).unwrap();
    assert_eq!(r.error, None);
    assert_eq!(
        (r.injected_ok, r.delivered),
        (300, 300),
        "{:?}",
        r.injector_failures
    );
    assert!(
        r.sink_tls_sessions.is_some_and(|n| n > 0),
        "{:?}",
        r.sink_tls_sessions
    );
    assert_eq!(run_raw(&small_load()).unwrap().sink_tls_sessions, None);
}

/// A `--tls` template naming the run's certificate (`{tls_cert}`,
/// `{tls_key}`) and each destination's sink (`{sink1}`, `{sink2}`): spate
/// presents that certificate, which the injector checks, and routes each
/// destination to its sink.
#[test]
fn a_template_takes_the_run_certificate_and_each_destination_sink() {
    let generated = spate_bench::relay::spate_config(
        std::path::Path::new("{dir}"),
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        "127.0.0.1:3".parse().unwrap(),
        &[
            "127.0.0.1:4".parse().unwrap(),
            "127.0.0.1:5".parse().unwrap(),
        ],
    );
    let template = generated
        .replace("127.0.0.1:1", "{listen}")
        .replace("127.0.0.1:2", "{admin}")
        .replace("127.0.0.1:3", "{dns}")
        .replace("sink1.example.test:4", "{sink1}")
        .replace("sink2.example.test:5", "{sink2}")
        .replace(
            "max_connections_per_ip = 2000\n",
            "max_connections_per_ip = 2000\ntls_cert = \"{tls_cert}\"\ntls_key = \"{tls_key}\"\n",
        );
    assert!(template.contains("{sink2}") && template.contains("{tls_key}"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tls.toml");
    std::fs::write(&path, &template).unwrap();
    let bin = spate_bin();
    let leg = SpateLeg {
        config: Some(&path),
        ..SpateLeg::new(&bin)
    };
    let load = Load {
        tls: true,
        domains: 2,
        ..small_load()
    };
    let r = run_spate(&load, &leg).unwrap();
    assert_eq!(r.error, None, "{:?}", r.injector_failures);
    assert_eq!((r.injected_ok, r.delivered), (300, 300));
    let counts: Vec<u64> = r.per_sink_messages.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts, [150, 150]);
    // spate presenting another certificate while the template names the
    // run's (here in a comment): the injector refuses it, the leg fails.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.path().join("other.pem"), dir.path().join("other.key"));
    std::fs::write(&cert, other.cert.pem()).unwrap();
    std::fs::write(&key, other.signing_key.serialize_pem()).unwrap();
    let wrong = template
        .replace(
            "\"{tls_cert}\"",
            &format!("{:?} # not {{tls_cert}}", cert.display().to_string()),
        )
        .replace("\"{tls_key}\"", &format!("{:?}", key.display().to_string()));
    std::fs::write(&path, &wrong).unwrap();
    let r = run_spate(&load, &leg).unwrap();
    assert_eq!(r.injected_ok, 0, "{:?}", r.injector_failures);
    assert!(
        r.error
            .as_deref()
            .is_some_and(|e| e.contains("300 of 300 messages were not accepted")),
        "{:?}",
        r.error
    );
}

/// Several recipients per message reach the sink, each once.
#[test]
fn spate_leg_delivers_every_recipient_of_multi_recipient_messages() {
    let load = Load {
        rcpts: 3,
        ..small_load()
    };
    let bin = spate_bin();
    let r = run_spate(&load, &SpateLeg::new(&bin)).unwrap();
    assert_eq!(r.error, None);
    assert_eq!((r.injected_ok, r.delivered), (300, 300));
    assert_eq!(r.delivered_recipients, 900);
}

/// A template routing off loopback is refused before spate starts (nothing
/// is sent: the refusal comes from reading the filled-in configuration).
#[test]
fn a_template_reaching_beyond_loopback_is_refused() {
    let bin = spate_bin();
    let dir = tempfile::tempdir().unwrap();
    let generated = spate_bench::relay::spate_config(
        std::path::Path::new("{dir}"),
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        "127.0.0.1:3".parse().unwrap(),
        &["127.0.0.1:4".parse().unwrap()],
    );
    // The generated configuration as a template, with placeholders.
    let template = generated
        .replace("127.0.0.1:1", "{listen}")
        .replace("127.0.0.1:2", "{admin}")
        .replace("127.0.0.1:3", "{dns}");
    let remote = template.replace(
        &format!("{}:4", spate_bench::relay::SINK_NAME),
        "192.0.2.7:25",
    );
    assert_ne!(remote, template);
    let path = dir.path().join("remote.toml");
    std::fs::write(&path, &remote).unwrap();
    let leg = SpateLeg {
        config: Some(&path),
        ..SpateLeg::new(&bin)
    };
    let err = run_spate(&small_load(), &leg).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("beyond loopback"), "{text}");
    assert!(text.contains("192.0.2.7"), "{text}");
    assert!(text.contains("--allow-remote"), "{text}");
}

#[test]
fn spate_leg_with_delivery_paused_measures_injection_only() {
    let bin = spate_bin();
    // In a directory of our choosing (--work-dir), removed after the run.
    let work = tempfile::tempdir().unwrap();
    let leg = SpateLeg {
        pause_delivery: true,
        work_dir: Some(work.path()),
        ..SpateLeg::new(&bin)
    };
    let r = run_spate(&small_load(), &leg).unwrap();
    assert_eq!(r.error, None);
    assert_eq!(r.injected_ok, 300);
    assert_eq!(r.delivered, 0, "a paused spate delivered");
    assert!(r.injection_msgs_per_s > 0.0);
    assert_eq!(r.ack_latency.count, 300);
    // The run directory was made there, and removed after the run.
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
    let nowhere = work.path().join("missing");
    let leg = SpateLeg {
        work_dir: Some(&nowhere),
        ..SpateLeg::new(&bin)
    };
    let err = run_spate(&small_load(), &leg).unwrap_err();
    assert!(
        format!("{err:#}").contains("making a run directory in"),
        "{err:#}"
    );
}

#[test]
fn spate_leg_fails_clearly_when_the_binary_is_missing() {
    let missing = std::path::Path::new("/nonexistent/spate");
    let err = run_spate(&small_load(), &SpateLeg::new(missing)).unwrap_err();
    assert!(format!("{err:#}").contains("not found"), "{err:#}");
}

#[test]
#[ignore = "installs and starts a private Postfix (needs root and apt); run with --ignored"]
fn postfix_leg_delivers_everything() {
    let r = spate_bench::relay::run_postfix(&small_load()).unwrap();
    assert_eq!(r.error, None);
    assert_eq!(r.delivered, 300);
    assert!(r.cpu_s.is_some_and(|c| c > 0.0));
    // Memory is the process tree's anonymous peak, not the master's VmHWM.
    assert!(r.peak_rss_kib.is_none() && r.peak_anon_kib.is_some_and(|k| k > 0));
    // Several destinations: Postfix's transport map sends each to its own
    // sink address.
    let load = Load {
        domains: 3,
        ..small_load()
    };
    let r = spate_bench::relay::run_postfix(&load).unwrap();
    assert_eq!(r.error, None);
    let counts: Vec<u64> = r.per_sink_messages.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts, [100, 100, 100], "{:?}", r.per_sink_messages);
    for (i, (_, domains)) in r.per_sink_domains.iter().enumerate() {
        assert_eq!(domains, &[format!("d{}.example.test", i + 1)]);
    }
    assert_eq!(r.per_sink_domains.len(), 3);
    // Two recipients a message over them: Postfix splits each message too.
    let load = Load {
        domains: 3,
        rcpts: 2,
        ..small_load()
    };
    let r = spate_bench::relay::run_postfix(&load).unwrap();
    assert_eq!(r.error, None);
    assert_eq!((r.delivered, r.delivered_recipients), (300, 600));
    let counts: Vec<u64> = r.per_sink_messages.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts, [200, 200, 200], "{:?}", r.per_sink_messages);
}
