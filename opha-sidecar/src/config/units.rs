//! Values with units in the config file: durations ("60s"), byte sizes ("512MiB"), ratios
//! ("5%", "50000ppm"), ports, listen addresses, and "off".
//!
//! Each kind has a parser (pure, tested on its own), a formatter that the parser reads back
//! exactly (so an effective config can be printed and parsed again), and a serde module for
//! `#[serde(with = ...)]`. Bare numbers are refused where a unit is needed, so that "60" is
//! never silently read as milliseconds by one person and seconds by another.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use serde::{
    Deserializer, Serializer,
    de::{self, Visitor},
};

// ---- durations ----

/// Parses "500ms", "60s", "5m", "1h", "1m30s" (whole numbers, units ms, s, m, h, d).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration: write e.g. \"60s\" or \"500ms\"".to_string());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{t:?} has no unit: write e.g. \"{t}s\" or \"{t}ms\" (units: ms, s, m, h, d)"
        ));
    }
    let mut total_ms: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "{t:?} is not a duration: expected a whole number before {rest:?} (units: ms, s, m, h, d)"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{t:?} is not a duration: number too large"))?;
        rest = &rest[digits..];
        if rest.starts_with('.') {
            return Err(format!(
                "{t:?}: write whole numbers with a smaller unit, e.g. \"1500ms\" rather than \"1.5s\""
            ));
        }
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        let per: u64 = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(format!("{t:?}: {n} has no unit (units: ms, s, m, h, d)"));
            }
            other => {
                return Err(format!(
                    "{t:?}: unknown unit {other:?} (units: ms, s, m, h, d)"
                ));
            }
        };
        total_ms = n
            .checked_mul(per)
            .and_then(|v| total_ms.checked_add(v))
            .ok_or_else(|| format!("{t:?} is too long a duration"))?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// The shortest exact spelling: "1h", "5m", "90s", "250ms".
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

// ---- byte sizes ----

/// Parses a byte size: an integer (bytes) or "<n><unit>" with B, KiB, MiB, GiB, TiB (powers of
/// 1024) or kB, MB, GB, TB (powers of 1000).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!(
            "{t:?} is not a size: write e.g. \"512MiB\" or a number of bytes"
        ));
    }
    let n: u64 = t[..digits]
        .parse()
        .map_err(|_| format!("{t:?} is too large a size"))?;
    let unit = t[digits..].trim();
    let per: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "{t:?}: unknown unit {other:?} (units: B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)"
            ));
        }
    };
    n.checked_mul(per)
        .ok_or_else(|| format!("{t:?} is too large a size"))
}

/// The largest binary unit that divides exactly: "512MiB", "1GiB", "1000B".
pub fn format_bytes(n: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n != 0 && n.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n}B")
}

// ---- ratios ----

pub const PPM_MAX: u32 = 1_000_000;

/// Parses a ratio into parts per million: "5%", "2.5%", "0.0001%", "50000ppm". At most 100%.
pub fn parse_ppm(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (num, per_unit, max_frac) = if let Some(n) = t.strip_suffix('%') {
        (n.trim(), 10_000u64, 4)
    } else if let Some(n) = t.strip_suffix("ppm") {
        (n.trim(), 1u64, 0)
    } else {
        return Err(format!(
            "{t:?} has no unit: write a percentage like \"5%\" or parts per million like \"50000ppm\""
        ));
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let ok = !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
        && !(num.contains('.') && frac.is_empty());
    if !ok {
        return Err(format!(
            "{t:?} is not a ratio: expected a number before the unit"
        ));
    }
    if frac.len() > max_frac {
        return Err(format!(
            "{t:?} is finer than 1 ppm (at most {max_frac} decimal places)"
        ));
    }
    let int: u64 = int.parse().map_err(|_| format!("{t:?} is above 100%"))?;
    let frac_ppm = if frac.is_empty() {
        0
    } else {
        let f: u64 = frac.parse().map_err(|_| format!("{t:?} is not a ratio"))?;
        f * 10u64.pow((max_frac - frac.len()) as u32)
    };
    let ppm = int
        .checked_mul(per_unit)
        .and_then(|v| v.checked_add(frac_ppm))
        .filter(|&v| v <= u64::from(PPM_MAX))
        .ok_or_else(|| format!("{t:?} is above 100%"))?;
    Ok(ppm as u32)
}

/// "5%" when a whole or short percentage, else "123ppm".
pub fn format_ppm(ppm: u32) -> String {
    if ppm.is_multiple_of(10_000) {
        format!("{}%", ppm / 10_000)
    } else if ppm.is_multiple_of(100) {
        format!("{}.{:02}%", ppm / 10_000, (ppm % 10_000) / 100)
    } else {
        format!("{ppm}ppm")
    }
}

// ---- listen addresses ----

/// Parses "off" or an IP address and port ("127.0.0.1:8730", "[::1]:8730").
pub fn parse_listen(s: &str) -> Result<Option<SocketAddr>, String> {
    let t = s.trim();
    if t == "off" {
        return Ok(None);
    }
    if let Some(port) = t.strip_prefix("localhost:") {
        return Err(format!(
            "{t:?}: write an IP address rather than a name, e.g. \"127.0.0.1:{port}\""
        ));
    }
    let addr: SocketAddr = t.parse().map_err(|_| {
        format!("{t:?} is not an address and port: write e.g. \"127.0.0.1:8730\", \"[::1]:8730\" or \"off\"")
    })?;
    if addr.port() == 0 {
        return Err(format!("{t:?}: port 0 is not allowed, name a fixed port"));
    }
    Ok(Some(addr))
}

pub fn format_listen(a: &Option<SocketAddr>) -> String {
    match a {
        Some(a) => a.to_string(),
        None => "off".to_string(),
    }
}

// ---- serde modules ----

struct StrVisitor<F> {
    expecting: &'static str,
    parse: F,
}

impl<'de, T, F: FnOnce(&str) -> Result<T, String>> Visitor<'de> for StrVisitor<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }

    // Integers go through the parser as text, so that its "has no unit" message is the one the
    // user sees rather than serde's "invalid type".
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        (self.parse)(&v.to_string()).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.parse)(&v.to_string()).map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        Err(E::custom(format!(
            "{v} is a bare number: write it as a string with a unit"
        )))
    }
}

/// `#[serde(with = "duration")]` for `std::time::Duration`.
pub mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(StrVisitor {
            expecting: "a duration such as \"60s\" or \"500ms\"",
            parse: parse_duration,
        })
    }

    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*v))
    }
}

/// `#[serde(with = "bytes")]` for a byte count (`u64`); integers are bytes.
pub mod bytes {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(StrVisitor {
            expecting: "a size such as \"512MiB\" or a number of bytes",
            parse: |s: &str| {
                if s.starts_with('-') {
                    Err(format!("{s} is negative: a size is 0 or more bytes"))
                } else {
                    parse_bytes(s)
                }
            },
        })
    }

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_bytes(*v))
    }
}

/// `#[serde(with = "ppm")]` for a ratio in parts per million (`u32`).
pub mod ppm {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        d.deserialize_any(StrVisitor {
            expecting: "a ratio such as \"5%\" or \"50000ppm\"",
            parse: parse_ppm,
        })
    }

    pub fn serialize<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_ppm(*v))
    }
}

/// `#[serde(with = "listen")]` for `Option<SocketAddr>`, where "off" is `None`.
pub mod listen {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        d.deserialize_any(StrVisitor {
            expecting: "an address and port such as \"127.0.0.1:8730\", or \"off\"",
            parse: parse_listen,
        })
    }

    pub fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_listen(v))
    }
}

/// `#[serde(with = "off_path")]` for `Option<PathBuf>`, where "off" is `None`.
pub mod off_path {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        d.deserialize_any(StrVisitor {
            expecting: "a path, or \"off\"",
            parse: |s: &str| {
                if s == "off" {
                    Ok(None)
                } else if s.is_empty() {
                    Err("empty path: write a path or \"off\"".to_string())
                } else if s.bytes().all(|b| b.is_ascii_digit()) {
                    Err(format!("{s} is a number, not a path"))
                } else {
                    Ok(Some(PathBuf::from(s)))
                }
            },
        })
    }

    pub fn serialize<S: Serializer>(v: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(p) => s.serialize_str(&p.to_string_lossy()),
            None => s.serialize_str("off"),
        }
    }
}

/// `Option<Option<Duration>>` for keys that may be absent (outer None, the default) or "off".
pub mod off_duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<Duration>>, D::Error> {
        d.deserialize_any(StrVisitor {
            expecting: "a duration such as \"500ms\", or \"off\"",
            parse: |s: &str| {
                if s.trim() == "off" {
                    Ok(Some(None))
                } else {
                    parse_duration(s).map(|d| Some(Some(d)))
                }
            },
        })
    }

    pub fn serialize<S: Serializer>(v: &Option<Option<Duration>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(Some(d)) => s.serialize_str(&format_duration(*d)),
            Some(None) => s.serialize_str("off"),
            None => s.serialize_none(),
        }
    }
}

/// `Option<Option<u32>>` ratio (ppm) for keys that may be absent or "off".
pub mod off_ppm {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
        d.deserialize_any(StrVisitor {
            expecting: "a ratio such as \"5%\", or \"off\"",
            parse: |s: &str| {
                if s.trim() == "off" {
                    Ok(Some(None))
                } else {
                    parse_ppm(s).map(|p| Some(Some(p)))
                }
            },
        })
    }

    pub fn serialize<S: Serializer>(v: &Option<Option<u32>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(Some(p)) => s.serialize_str(&format_ppm(*p)),
            Some(None) => s.serialize_str("off"),
            None => s.serialize_none(),
        }
    }
}

/// Ports: integers 1-65535, with a message that says so.
pub mod port {
    use super::*;

    pub fn check(v: i64) -> Result<u16, String> {
        u16::try_from(v)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{v} is not a port: use 1-65535"))
    }

    struct PortVisitor;

    impl Visitor<'_> for PortVisitor {
        type Value = u16;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a port number 1-65535")
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u16, E> {
            check(v).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u16, E> {
            check(i64::try_from(v).unwrap_or(i64::MAX)).map_err(E::custom)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u16, E> {
            Err(E::custom(format!(
                "{v:?} is a string: write the port as a number, e.g. 161"
            )))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
        d.deserialize_any(PortVisitor)
    }

    pub fn serialize<S: Serializer>(v: &u16, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(*v)
    }

    /// A newtype for lists of ports (`Vec<Port>` keeps serde's per-element path).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct Port(pub u16);

    impl<'de> serde::Deserialize<'de> for Port {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            deserialize(d).map(Port)
        }
    }

    impl serde::Serialize for Port {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_u16(self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_back() {
        for (s, ms) in [
            ("500ms", 500),
            ("60s", 60_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1m30s", 90_000),
            ("1m 30s", 90_000),
            ("2d", 172_800_000),
            ("0s", 0),
        ] {
            let d = parse_duration(s).unwrap();
            assert_eq!(d.as_millis() as u64, ms, "{s}");
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        for (bad, want) in [
            ("60", "has no unit"),
            ("", "empty"),
            ("5x", "unknown unit \"x\""),
            ("s", "whole number"),
            ("1.5s", "whole numbers"),
            ("99999999999999999999s", "too large"),
            ("999999999999999d", "too long"),
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn sizes_parse_and_print_back() {
        for (s, n) in [
            ("512MiB", 512u64 << 20),
            ("1GiB", 1 << 30),
            ("4 KiB", 4096),
            ("1000", 1000),
            ("10MB", 10_000_000),
            ("1kB", 1000),
            ("7B", 7),
        ] {
            let v = parse_bytes(s).unwrap();
            assert_eq!(v, n, "{s}");
            assert_eq!(parse_bytes(&format_bytes(v)).unwrap(), v);
        }
        assert_eq!(format_bytes(3 << 30), "3GiB");
        assert_eq!(format_bytes(1000), "1000B");
        for (bad, want) in [
            ("MiB", "not a size"),
            ("5 mb", "unknown unit \"mb\""),
            ("99999999TiB", "too large"),
        ] {
            let e = parse_bytes(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn ratios_parse_and_print_back() {
        for (s, ppm) in [
            ("5%", 50_000),
            ("2.5%", 25_000),
            ("0.0001%", 1),
            ("100%", 1_000_000),
            ("50000ppm", 50_000),
            ("7ppm", 7),
            ("0%", 0),
        ] {
            let v = parse_ppm(s).unwrap();
            assert_eq!(v, ppm, "{s}");
            assert_eq!(parse_ppm(&format_ppm(v)).unwrap(), v);
        }
        assert_eq!(format_ppm(25_000), "2.50%");
        for (bad, want) in [
            ("5", "has no unit"),
            ("101%", "above 100%"),
            ("1000001ppm", "above 100%"),
            ("0.00001%", "finer than 1 ppm"),
            ("1.5ppm", "finer than 1 ppm"),
            ("x%", "not a ratio"),
            ("5.%", "not a ratio"),
        ] {
            let e = parse_ppm(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen("off").unwrap(), None);
        assert_eq!(
            parse_listen("[::1]:9").unwrap(),
            Some("[::1]:9".parse().unwrap())
        );
        assert!(
            parse_listen("localhost:80")
                .unwrap_err()
                .contains("127.0.0.1:80")
        );
        assert!(
            parse_listen("127.0.0.1")
                .unwrap_err()
                .contains("not an address and port")
        );
        assert!(parse_listen("127.0.0.1:0").unwrap_err().contains("port 0"));
    }
}
