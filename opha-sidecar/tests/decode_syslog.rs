//! Syslog decoding: RFC 3164 and RFC 5424 samples (the RFCs' own, util-linux `logger`'s),
//! edge cases, the strict PRI rule, truncated records.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use opha_common::ports::SNAP_LEN;
use opha_common::ringbuf::{RingKind, RingRecord};
use opha_common::wire::{Event, EventKind, RawSource, Severity, Syslog, TenantId};
use opha_sidecar::decode::syslog::{parse_pri, severity};
use opha_sidecar::decode::{DecodeContext, decode};

const SRC: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 20));

fn record(payload: &[u8], tenant: u32) -> RingRecord {
    let cap = payload.len().min(SNAP_LEN);
    let mut data = [0u8; SNAP_LEN];
    data[..cap].copy_from_slice(&payload[..cap]);
    let IpAddr::V4(v4) = SRC else { unreachable!() };
    RingRecord {
        ts_ns: 1_000,
        ifindex: 2,
        tenant,
        src: v4.to_ipv6_mapped().octets(),
        vlan: 0,
        src_port: 514,
        dst_port: 514,
        kind: RingKind::Syslog as u8,
        _pad: 0,
        orig_len: payload.len() as u16,
        cap_len: cap as u16,
        _pad2: 0,
        data,
    }
}

fn decode_syslog(payload: &[u8]) -> Event {
    decode(&record(payload, 5), &DecodeContext::fixed(0, 1))
}

fn syslog(payload: &[u8]) -> (Syslog, Event) {
    let ev = decode_syslog(payload);
    match &ev.kind {
        EventKind::Syslog(s) => (s.clone(), ev),
        other => panic!(
            "{:?}: expected syslog, got {other:?} ({})",
            String::from_utf8_lossy(payload),
            ev.details
        ),
    }
}

fn expect(
    payload: &[u8],
    facility: u8,
    sev: u8,
    host: &str,
    app: Option<&str>,
    message: &str,
) -> Event {
    let (s, ev) = syslog(payload);
    assert_eq!(
        s,
        Syslog {
            facility,
            severity: sev,
            host: host.into(),
            app: app.map(Into::into),
            message: message.into(),
        },
        "{:?}",
        String::from_utf8_lossy(payload)
    );
    assert_eq!(ev.tenant, TenantId(5));
    assert_eq!(ev.severity, severity(sev));
    ev
}

fn expect_undecodable(payload: &[u8]) -> Event {
    let ev = decode_syslog(payload);
    match &ev.kind {
        EventKind::Undecodable { source, from, raw } => {
            assert_eq!(*source, RawSource::Syslog);
            assert_eq!(*from, SRC);
            assert_eq!(raw.0, payload);
        }
        other => panic!("{payload:?}: expected undecodable, got {other:?}"),
    }
    ev
}

#[test]
fn rfc3164_samples() {
    // RFC 3164 §5.4 examples.
    let ev = expect(
        b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
        4,
        2,
        "mymachine",
        Some("su"),
        "'su root' failed for lonvick on /dev/pts/8",
    );
    assert_eq!(ev.severity, Severity::Major);
    assert_eq!(
        ev.details,
        "auth.crit mymachine su: 'su root' failed for lonvick on /dev/pts/8"
    );
    expect(
        b"<13>Feb  5 17:32:18 198.18.0.99 Use the BFG!",
        1,
        5,
        "198.18.0.99",
        Some("Use"),
        "the BFG!",
    );
    // Tag with a pid, single-digit day, trailing newline and NUL.
    expect(
        b"<189>Jan  1 00:00:01 core-sw1 sshd[4242]: Accepted publickey\n\0",
        23,
        5,
        "core-sw1",
        Some("sshd"),
        "Accepted publickey",
    );
    // Feb 29 is a valid date (the year is not in the message).
    expect(
        b"<14>Feb 29 12:00:00 h app: leap",
        1,
        6,
        "h",
        Some("app"),
        "leap",
    );
}

#[test]
fn rfc5424_samples() {
    // RFC 5424 §6.5 examples 1, 3 and 4.
    expect(
        "<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \u{feff}'su root' failed for lonvick on /dev/pts/8".as_bytes(),
        4,
        2,
        "mymachine.example.com",
        Some("su"),
        "'su root' failed for lonvick on /dev/pts/8",
    );
    let ev = expect(
        "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"] \u{feff}An application event log entry...".as_bytes(),
        20,
        5,
        "mymachine.example.com",
        Some("evntslog"),
        "An application event log entry...",
    );
    assert!(
        ev.details.ends_with(
            "[exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"]"
        ),
        "{}",
        ev.details
    );
    expect(
        b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\"][examplePriority@32473 class=\"high\"]",
        20,
        5,
        "mymachine.example.com",
        Some("evntslog"),
        "",
    );
    // Nil values everywhere: the host is the sender's address.
    expect(
        b"<191>1 - - - - - - debug",
        23,
        7,
        "198.18.1.20",
        None,
        "debug",
    );
}

#[test]
fn real_logger_output() {
    // util-linux logger 2.38, captured.
    expect(
        b"<163>Nov 21 08:35:33 vm opha-test: link eth0 down",
        20,
        3,
        "vm",
        Some("opha-test"),
        "link eth0 down",
    );
    let ev = expect(
        b"<28>1 2026-11-21T08:35:33.692000+00:00 vm opha-test - - [timeQuality tzKnown=\"1\" isSynced=\"0\"][opha@32473 node=\"r1\"] disk 91% full",
        3,
        4,
        "vm",
        Some("opha-test"),
        "disk 91% full",
    );
    assert_eq!(ev.severity, Severity::Warning);
    assert!(
        ev.details.contains("[opha@32473 node=\"r1\"]"),
        "{}",
        ev.details
    );
}

#[test]
fn headerless_messages_fall_back_to_the_relay_rule() {
    // A valid PRI but no valid TIMESTAMP: RFC 3164 §4.3.2, the text is the message, the host
    // is the sender.
    expect(
        b"<13>just a message",
        1,
        5,
        "198.18.1.20",
        None,
        "just a message",
    );
    expect(
        b"<0>router: reload",
        0,
        0,
        "198.18.1.20",
        None,
        "router: reload",
    );
    expect(
        b"<13>Feb 30 22:14:15 host x: y",
        1,
        5,
        "198.18.1.20",
        None,
        "Feb 30 22:14:15 host x: y",
    );
    expect(b"<7>", 0, 7, "198.18.1.20", None, "");
    // Leading zeros are read as the number they spell.
    expect(b"<013>hello", 1, 5, "198.18.1.20", None, "hello");
}

#[test]
fn severity_mapping() {
    let expected = [
        Severity::Critical,
        Severity::Critical,
        Severity::Major,
        Severity::Minor,
        Severity::Warning,
        Severity::Info,
        Severity::Info,
        Severity::Info,
    ];
    for (code, sev) in expected.into_iter().enumerate() {
        assert_eq!(severity(code as u8), sev);
        let payload = format!("<{}>Oct 11 22:14:15 h app: m", 8 + code);
        let ev = expect(payload.as_bytes(), 1, code as u8, "h", Some("app"), "m");
        assert_eq!(ev.severity, sev);
    }
}

#[test]
fn pri_is_strict() {
    assert_eq!(parse_pri(b"<0>x"), Some((0, &b"x"[..])));
    assert_eq!(parse_pri(b"<191>"), Some((191, &b""[..])));
    for bad in [
        &b""[..],
        b"<",
        b"<>",
        b"<192>x",
        b"<999>x",
        b"<1000>x",
        b"<0013>x",
        b"<-1>x",
        b"<1a>x",
        b"13>x",
        b" <13>x",
        b"<13",
    ] {
        assert_eq!(parse_pri(bad), None, "{bad:?}");
        let ev = expect_undecodable(bad);
        assert!(ev.details.contains("no syslog PRI"), "{}", ev.details);
        assert_eq!(ev.severity, Severity::Warning);
    }
    expect_undecodable(b"Oct 11 22:14:15 mymachine su: no pri");
    expect_undecodable(&[0xff, 0x00, 0x13, 0x37]);
}

#[test]
fn invalid_utf8_is_replaced_not_refused() {
    let (s, _) = syslog(b"<13>Oct 11 22:14:15 h app: caf\xe9 \xff\xfe");
    assert_eq!(s.message, "caf\u{fffd} \u{fffd}\u{fffd}");
    assert_eq!(s.host, "h");
}

#[test]
fn truncated_syslog_is_decoded_and_says_so() {
    let long = format!("<14>Oct 11 22:14:15 h app: {}", "y".repeat(900));
    let rec = record(long.as_bytes(), 5);
    assert!(rec.cap_len < rec.orig_len);
    let ev = decode(&rec, &DecodeContext::fixed(0, 1));
    let EventKind::Syslog(s) = &ev.kind else {
        panic!("{:?}", ev.kind)
    };
    assert_eq!(
        s.message.len(),
        SNAP_LEN - "<14>Oct 11 22:14:15 h app: ".len()
    );
    assert!(
        ev.details.ends_with(&format!(
            "[truncated: {SNAP_LEN} of {} bytes captured (kernel snap length)]",
            long.len()
        )),
        "{}",
        ev.details
    );
}

/// util-linux `logger`, live, over loopback, in both formats.
#[test]
fn live_logger_decodes() {
    if Command::new("logger")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("skip live_logger_decodes: util-linux logger is not installed");
        return;
    }
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = sock.local_addr().unwrap().port().to_string();
    for format in ["--rfc3164", "--rfc5424"] {
        let status = Command::new("logger")
            .args([
                format,
                "-d",
                "-n",
                "127.0.0.1",
                "-P",
                &port,
                "-p",
                "local3.crit",
                "-t",
                "opha-live",
                "fan 2 failed",
            ])
            .status()
            .unwrap();
        assert!(status.success());
        let mut buf = [0u8; 2048];
        let (n, _) = sock.recv_from(&mut buf).unwrap();
        let (s, ev) = syslog(&buf[..n]);
        assert_eq!((s.facility, s.severity), (19, 2), "{format}");
        assert_eq!(s.app.as_deref(), Some("opha-live"), "{format}");
        assert_eq!(s.message, "fan 2 failed", "{format}");
        assert_eq!(ev.severity, Severity::Major);
    }
}
