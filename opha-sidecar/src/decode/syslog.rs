//! Syslog datagrams: RFC 5424 and RFC 3164.
//!
//! The header is parsed with the `syslog_loose` crate (the parser Vector uses), behind two
//! rules of our own so that "loose" never means "guessing":
//!
//! - A message must start with a valid PRI, `<N>` with one to three digits and N <= 191 (RFC
//!   5424 §6.2.1, RFC 3164 §4.1.1). Without one the datagram is undecodable: every real sender
//!   (devices, rsyslog, `logger`) writes it, and anything else on the syslog port is not
//!   syslog. Facility and severity always come from this PRI.
//! - If the rest is not a well-formed RFC 5424 or RFC 3164 header (no or a bad TIMESTAMP), the
//!   message is still syslog: as an RFC 3164 relay does (§4.3.2), the whole text after the PRI
//!   becomes the message and the host is the packet's source address.
//!
//! The text is read as UTF-8; invalid sequences become U+FFFD (RFC 3164 is ASCII, and RFC 5424
//! says MSG should be UTF-8). A leading BOM (RFC 5424) and trailing CR, LF and NUL (which some
//! senders append) are dropped. When the header has no HOSTNAME (`-` in RFC 5424) the host is
//! the source address. RFC 5424 structured data goes into `details`. The header's TIMESTAMP is
//! not used: the event's time is when the kernel saw the packet (device clocks drift, and RFC
//! 3164 timestamps have neither year nor zone).

use std::net::IpAddr;

use opha_common::wire::{EventKind, Severity, Syslog};
use syslog_loose::{Message, Variant};

use super::{Decoded, Undecodable};

/// Facility keywords, by code (RFC 5424 table 1; 9 and 15 are both clock daemons).
const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "security", "console", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

/// Severity keywords, by code (RFC 5424 table 2).
const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// The facility keyword of `code` (0..=23).
pub fn facility_name(code: u8) -> &'static str {
    FACILITIES
        .get(usize::from(code))
        .copied()
        .unwrap_or("unknown")
}

/// The severity keyword of `code` (0..=7).
pub fn severity_name(code: u8) -> &'static str {
    SEVERITIES
        .get(usize::from(code))
        .copied()
        .unwrap_or("unknown")
}

/// The documented mapping of syslog severities onto event severities.
pub fn severity(code: u8) -> Severity {
    match code {
        0 | 1 => Severity::Critical,
        2 => Severity::Major,
        3 => Severity::Minor,
        4 => Severity::Warning,
        _ => Severity::Info,
    }
}

/// Reads a PRI at the start of `bytes`: its value and the bytes after it.
pub fn parse_pri(bytes: &[u8]) -> Option<(u8, &[u8])> {
    let rest = bytes.strip_prefix(b"<")?;
    let digits = rest
        .iter()
        .take(4)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if !(1..=3).contains(&digits) || rest.get(digits) != Some(&b'>') {
        return None;
    }
    let value = rest[..digits]
        .iter()
        .fold(0u16, |v, d| v * 10 + u16::from(d - b'0'));
    let value = u8::try_from(value).ok().filter(|v| *v <= 191)?;
    Some((value, &rest[digits + 1..]))
}

/// Decodes one syslog datagram sent from `from`.
pub(crate) fn decode(payload: &[u8], from: IpAddr) -> Result<Decoded, Undecodable> {
    let trimmed = trim_end(payload);
    let Some((pri, after_pri)) = parse_pri(trimmed) else {
        return Err(Undecodable(
            "no syslog PRI (\"<0>\" to \"<191>\") at the start".into(),
        ));
    };
    let (facility, sev) = (pri >> 3, pri & 7);
    let text = String::from_utf8_lossy(trimmed);
    let parsed = syslog_loose::parse_message_with_year_exact_tz::<_, chrono::Utc>(
        &text,
        // Only for the crate's timestamp validation (the time is the kernel's): a leap year, so
        // that "Feb 29" is a valid RFC 3164 date.
        |_| 2000,
        Some(chrono::Utc),
        Variant::Either,
    );
    let from_text = from.to_string();
    let (host, app, message, structured) = match &parsed {
        Ok(m) => (
            m.hostname.unwrap_or(&from_text).to_string(),
            m.appname.map(str::to_string),
            strip_bom(m.msg).to_string(),
            structured_data(m),
        ),
        Err(_) => {
            let rest = String::from_utf8_lossy(after_pri);
            (from_text.clone(), None, rest.trim().to_string(), None)
        }
    };
    let mut details = format!("{}.{} {host}", facility_name(facility), severity_name(sev));
    if let Some(app) = &app {
        details.push(' ');
        details.push_str(app);
    }
    details.push_str(": ");
    details.push_str(&message);
    if let Some(sd) = structured {
        details.push(' ');
        details.push_str(&sd);
    }
    Ok(Decoded {
        kind: EventKind::Syslog(Syslog {
            facility,
            severity: sev,
            host,
            app,
            message,
        }),
        severity: severity(sev),
        details,
    })
}

/// Drops trailing CR, LF and NUL.
fn trim_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b'\r' | b'\n' | 0))
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

fn strip_bom(s: &str) -> &str {
    s.strip_prefix('\u{feff}').unwrap_or(s)
}

/// RFC 5424 structured data as text, `[id k="v" ...]...`, or `None` when there is none.
fn structured_data(m: &Message<&str>) -> Option<String> {
    use std::fmt::Write;
    if m.structured_data.is_empty() {
        return None;
    }
    let mut s = String::new();
    for element in &m.structured_data {
        let _ = write!(s, "[{}", element.id);
        for (k, v) in element.params() {
            let _ = write!(s, " {k}=\"{v}\"");
        }
        s.push(']');
    }
    Some(s)
}
