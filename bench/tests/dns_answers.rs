//! The test DNS server's answers, queried over UDP and TCP with hickory-proto.

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use spate_bench::dns::{Zone, spawn};

const ZONE: &str = "\
$TTL 120
$NEGTTL 30
example.test      MX 20 mx2.example.test   # backup
example.test      MX 10 mx1.example.test.
example.test      TXT \"v=spf1 -all\"
mx1.example.test  60 A 127.0.0.2
mx2.example.test  AAAA ::1
nullmx.test       MX 0 .
";

fn query(addr: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let mut msg = Message::query();
    msg.metadata.id = 4242;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    socket.send_to(&msg.to_vec().unwrap(), addr).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    let reply = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(reply.metadata.id, 4242);
    reply
}

fn query_tcp(addr: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let mut msg = Message::query();
    msg.metadata.id = 4343;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    let bytes = msg.to_vec().unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    stream
        .write_all(&(bytes.len() as u16).to_be_bytes())
        .unwrap();
    stream.write_all(&bytes).unwrap();
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut reply).unwrap();
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.metadata.id, 4343);
    reply
}

/// The character-strings of the single TXT answer.
fn txt_strings(reply: &Message) -> Vec<Vec<u8>> {
    assert_eq!(reply.answers.len(), 1, "{:?}", reply.answers);
    match &reply.answers[0].data {
        RData::TXT(t) => t.txt_data.iter().map(|s| s.to_vec()).collect(),
        other => panic!("expected TXT, got {other:?}"),
    }
}

#[test]
fn mx_answers_carry_preferences() {
    let dns = spawn("127.0.0.1:0".parse().unwrap(), Zone::parse(ZONE).unwrap()).unwrap();
    let reply = query(dns.addr, "Example.Test.", RecordType::MX);
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.metadata.authoritative);
    let mut mx: Vec<(u16, String, u32)> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::MX(m) => Some((m.preference, m.exchange.to_ascii(), r.ttl)),
            _ => None,
        })
        .collect();
    mx.sort();
    assert_eq!(
        mx,
        vec![
            (10, "mx1.example.test.".into(), 120),
            (20, "mx2.example.test.".into(), 120)
        ]
    );
}

#[test]
fn null_mx_a_aaaa_and_txt() {
    let dns = spawn("127.0.0.1:0".parse().unwrap(), Zone::parse(ZONE).unwrap()).unwrap();
    let reply = query(dns.addr, "nullmx.test.", RecordType::MX);
    match &reply.answers[0].data {
        RData::MX(m) => assert!(m.preference == 0 && m.exchange.is_root()),
        other => panic!("expected null MX, got {other:?}"),
    }
    let a = query(dns.addr, "mx1.example.test.", RecordType::A);
    assert_eq!(a.answers.len(), 1);
    assert!(
        matches!(&a.answers[0].data, RData::A(ip) if ip.0 == std::net::Ipv4Addr::new(127, 0, 0, 2))
    );
    assert_eq!(a.answers[0].ttl, 60);
    let aaaa = query(dns.addr, "mx2.example.test.", RecordType::AAAA);
    assert!(
        matches!(&aaaa.answers[0].data, RData::AAAA(ip) if ip.0 == std::net::Ipv6Addr::LOCALHOST)
    );
    let txt = query(dns.addr, "example.test.", RecordType::TXT);
    assert!(
        matches!(&txt.answers[0].data, RData::TXT(t) if t.to_string() == "v=spf1 -all"),
        "{:?}",
        txt.answers
    );
}

#[test]
fn nxdomain_and_nodata_carry_an_soa() {
    let dns = spawn("127.0.0.1:0".parse().unwrap(), Zone::parse(ZONE).unwrap()).unwrap();
    let nx = query(dns.addr, "nowhere.test.", RecordType::MX);
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(nx.answers.is_empty());
    assert!(matches!(&nx.authorities[0].data, RData::SOA(s) if s.minimum == 30));
    let nodata = query(dns.addr, "mx1.example.test.", RecordType::MX);
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert_eq!(nodata.authorities.len(), 1);
}

#[test]
fn answers_over_tcp_too() {
    let dns = spawn("127.0.0.1:0".parse().unwrap(), Zone::parse(ZONE).unwrap()).unwrap();
    let reply = query_tcp(dns.addr, "example.test.", RecordType::MX);
    assert_eq!(reply.answers.len(), 2);
}

#[test]
fn bad_zone_lines_are_errors_with_line_numbers() {
    let err = Zone::parse("ok.test A 127.0.0.1\nbad.test A not-an-ip\n").unwrap_err();
    assert!(format!("{err:#}").contains("zone line 2"), "{err:#}");
    assert!(Zone::parse("x.test MX ten mx.test").is_err());
    assert!(Zone::parse("x.test SRV 1 2 3 y.test").is_err());
}

/// A TXT string over 255 bytes (a DKIM key, a long SPF record) goes out as
/// consecutive 255-byte character-strings, over UDP and TCP alike.
#[test]
fn long_txt_strings_are_split_into_character_strings() {
    let key: String = (0..300 - 18)
        .map(|i| char::from(b'A' + (i % 26) as u8))
        .collect();
    let text = format!("v=DKIM1; k=rsa; p={key}");
    assert_eq!(text.len(), 300);
    let zone = format!(
        "sel._domainkey.example.test TXT \"{text}\"\n\
         two.test TXT \"short\" \"{text}\"\n\
         empty.test TXT \"\"\n"
    );
    let dns = spawn("127.0.0.1:0".parse().unwrap(), Zone::parse(&zone).unwrap()).unwrap();
    for reply in [
        query(dns.addr, "sel._domainkey.example.test.", RecordType::TXT),
        query_tcp(dns.addr, "sel._domainkey.example.test.", RecordType::TXT),
    ] {
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        let strings = txt_strings(&reply);
        assert_eq!(
            strings.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![255, 45]
        );
        assert_eq!(strings.concat(), text.as_bytes());
    }
    let strings = txt_strings(&query_tcp(dns.addr, "two.test.", RecordType::TXT));
    assert_eq!(
        strings.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![5, 255, 45]
    );
    assert_eq!(strings.concat(), format!("short{text}").as_bytes());
    let strings = txt_strings(&query(dns.addr, "empty.test.", RecordType::TXT));
    assert_eq!(strings, vec![Vec::<u8>::new()]);
}

/// A record no message could carry is refused with its line; records of one
/// name that only together overflow a message get SERVFAIL, not silence.
#[test]
fn oversized_answers_are_refused_or_servfail() {
    let huge = "x".repeat(70_000);
    let err = Zone::parse(&format!("ok.test A 127.0.0.1\nbig.test TXT \"{huge}\"\n")).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.starts_with("zone line 2: "), "{}", &msg[..200]);
    assert!(msg.contains("TXT record cannot be sent"), "{}", &msg[..200]);
    let half = "y".repeat(40_000);
    let zone = format!("big.test TXT \"{half}\"\nbig.test TXT \"{half}z\"\nbig.test A 127.0.0.9\n");
    let dns = spawn("127.0.0.1:0".parse().unwrap(), Zone::parse(&zone).unwrap()).unwrap();
    for reply in [
        query(dns.addr, "big.test.", RecordType::TXT),
        query_tcp(dns.addr, "big.test.", RecordType::TXT),
        query_tcp(dns.addr, "big.test.", RecordType::ANY),
    ] {
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert!(reply.answers.is_empty());
        assert_eq!(reply.queries.len(), 1);
    }
    // The same connection and the other types still work.
    let a = query_tcp(dns.addr, "big.test.", RecordType::A);
    assert_eq!(a.answers.len(), 1);
}

/// A name that exists only above other names is NODATA (RFC 8020), not
/// NXDOMAIN; below it, unknown names stay NXDOMAIN.
#[test]
fn empty_non_terminals_are_nodata() {
    let zone = Zone::parse("a.b.ent.test A 127.0.0.1\nsel._domainkey.ent.test TXT x\n").unwrap();
    let dns = spawn("127.0.0.1:0".parse().unwrap(), zone).unwrap();
    for name in ["ent.test.", "B.ent.test.", "_domainkey.ent.test."] {
        for reply in [
            query(dns.addr, name, RecordType::A),
            query_tcp(dns.addr, name, RecordType::TXT),
        ] {
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NoError,
                "{name}"
            );
            assert!(reply.answers.is_empty(), "{name}");
            assert!(
                matches!(&reply.authorities[..], [soa] if matches!(soa.data, RData::SOA(_))),
                "{name}: {:?}",
                reply.authorities
            );
        }
    }
    for name in ["c.b.ent.test.", "x.ent.test.", "nowhere.test."] {
        let reply = query(dns.addr, name, RecordType::A);
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
    }
    let a = query(dns.addr, "a.b.ent.test.", RecordType::A);
    assert_eq!(a.answers.len(), 1);
}

/// `Zone::load` errors name the file as well as the line.
#[test]
fn zone_file_errors_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zone.txt");
    std::fs::write(&path, "ok.test MX 10 mx.test\nbad.test MX ten mx.test\n").unwrap();
    let msg = format!("{:#}", Zone::load(&path).unwrap_err());
    assert!(
        msg.contains(&format!("zone file {} line 2: ", path.display())),
        "{msg}"
    );
    assert!(msg.contains("bad MX preference"), "{msg}");
    // The command fails the same way, without a panic.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spate-bench"))
        .args(["dns", "--listen", "127.0.0.1:0", "--zone"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("zone.txt line 2"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The commands refuse to listen off loopback unless told to.
#[test]
fn commands_refuse_non_loopback_listen_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let zone = dir.path().join("zone.txt");
    std::fs::write(&zone, ZONE).unwrap();
    let bench = env!("CARGO_BIN_EXE_spate-bench");
    for args in [
        vec![
            "dns",
            "--listen",
            "192.0.2.1:5353",
            "--zone",
            zone.to_str().unwrap(),
        ],
        vec![
            "sink",
            "--listen",
            "127.0.0.1:0,192.0.2.1:2526",
            "--duration",
            "1s",
        ],
    ] {
        let out = std::process::Command::new(bench)
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} ran");
        assert!(
            stderr.contains("refusing non-loopback address 192.0.2.1"),
            "{args:?}: {stderr}"
        );
    }
}
