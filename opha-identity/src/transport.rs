//! QUIC settings for WAN links and fast failure detection, and the quinn configs that combine
//! them with the mutual-TLS configs of [`crate::verify`].
//!
//! | setting | default | why |
//! | --- | --- | --- |
//! | `keep_alive_ms` | 1000 | an idle link still carries a packet a second, so a dead peer is noticed by the idle timeout, and NAT/firewall state stays open |
//! | `idle_timeout_ms` | 5000 | a peer silent for 5 s (about 5 missed keep-alives) is gone: the poller fails over to the next primary within seconds |
//! | `bandwidth_bits_per_sec` | 100 Mbit/s | the WAN link's capacity, for the windows below |
//! | `rtt_ms` | 100 | the WAN round trip, for the windows below and the first loss-detection timer |
//! | `congestion` | `cubic` | Cubic: the standard for long fat paths; recovers its window faster than NewReno after a loss on a high-BDP link. `bbr` for lossy links, `newreno` for comparison (see [`Congestion`]) |
//! | stream window | max(4 x BDP, 64 KiB) | the bus's one stream can fill the whole link on its own, also with a standing queue and while a lost packet holds back delivery (see below) |
//! | connection window | 2 x stream window | the bus stream and the control streams (fencing, config, catch-up) together are not blocked by flow control |
//! | send window | connection window | data the sender buffers unacknowledged; at least the link's BDP, or the sender idles |
//!
//! BDP (bandwidth-delay product) = bandwidth (bits/s) / 8 x RTT (s): the bytes in flight that
//! keep the link full. A receive window below it caps throughput at window / RTT whatever the
//! link; far above it only costs memory for buffered data, and the bus's own window
//! (`window_records`) bounds what is ever buffered. A single stream needs more than one BDP:
//! a queue at the bottleneck (BBR keeps up to one BDP there) stretches the round trip, and
//! the receive window cannot slide past a lost packet until its retransmission arrives,
//! about 1.5 round trips later, while the sender keeps sending behind it. Measured on the
//! emulated 10 Mbit/s, 100 ms, 1% loss link with BBR: 2 x BDP held the transfer near 70% of
//! the link, a window far above the BDP let it reach the replay cap.
//!
//! Left at quinn's defaults on purpose: the initial congestion window (10 packets, RFC 9002;
//! a window sized to the configured BDP would burst a whole BDP into a link that other
//! traffic may share, on the strength of a config value), the initial MTU (1200 bytes) with
//! MTU discovery on (probes up to 1452 bytes after the handshake, so full-size Ethernet
//! paths carry 1452-byte datagrams), and loss detection (3 packets or 9/8 RTT: standard
//! RFC 9002 thresholds; random loss is detected as fast as it can be).

use crate::verify::{ExpectPeer, TlsError, TlsIdentity, Trust};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// ALPN protocol id of the opha bus, version 1. A peer offering anything else is refused.
pub const ALPN: &[u8] = b"opha/1";
/// Server name passed to `quinn::Endpoint::connect`. Ignored by the verifier, which checks the
/// server's peer id instead (see [`crate::verify`]), but quinn needs a syntactically valid one.
pub const SERVER_NAME: &str = "opha";

/// Floor for the stream window: below this, even a LAN stalls on flow-control updates.
pub const MIN_STREAM_WINDOW: u64 = 64 * 1024;
/// Ceiling for the stream window, so a typo in the bandwidth cannot ask for gigabytes of
/// buffer per connection.
pub const MAX_STREAM_WINDOW: u64 = 256 * 1024 * 1024;

/// QUIC congestion controller (`congestion = "cubic" | "bbr" | "newreno"`).
///
/// The controller that matters is the sender's: the poller's for the bus stream (records
/// flow poller -> receiver), a receiver's for catch-up fetches it serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// The default: loss-based, fair to other TCP/QUIC flows on a shared link. Treats every
    /// loss as congestion, so random (non-congestive) loss caps it at about
    /// MSS x 1.22 / (RTT x sqrt(loss)) whatever the link: ~0.6-1.2 Mbit/s at 1% loss and a
    /// 100-200 ms round trip.
    #[default]
    Cubic,
    /// Model-based (bottleneck bandwidth and minimum RTT), does not back off on random loss:
    /// for lossy WAN links (radio, satellite, long-haul with random loss). quinn marks its
    /// BBR experimental; and BBRv1 takes more than its share from loss-based flows (Cubic,
    /// NewReno, TCP) at a shared bottleneck, so keep a bandwidth cap on a shared link.
    Bbr,
    /// Loss-based, the RFC 9002 reference; slower than Cubic to regain its window on a
    /// high-BDP link. For comparison or conservative setups.
    #[serde(rename = "newreno")]
    NewReno,
}

impl Congestion {
    pub fn as_str(self) -> &'static str {
        match self {
            Congestion::Cubic => "cubic",
            Congestion::Bbr => "bbr",
            Congestion::NewReno => "newreno",
        }
    }

    fn factory(self) -> Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> {
        match self {
            Congestion::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
            Congestion::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
            Congestion::NewReno => Arc::new(quinn::congestion::NewRenoConfig::default()),
        }
    }
}

impl std::fmt::Display for Congestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Congestion {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cubic" => Ok(Congestion::Cubic),
            "bbr" => Ok(Congestion::Bbr),
            "newreno" => Ok(Congestion::NewReno),
            _ => Err(TransportError {
                key: "congestion",
                why: "use \"cubic\", \"bbr\" or \"newreno\"",
            }),
        }
    }
}

/// WAN transport settings, as they appear in a peer's config file (`[transport]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportSettings {
    pub keep_alive_ms: u64,
    pub idle_timeout_ms: u64,
    pub bandwidth_bits_per_sec: u64,
    pub rtt_ms: u64,
    pub congestion: Congestion,
}

impl Default for TransportSettings {
    fn default() -> Self {
        TransportSettings {
            keep_alive_ms: 1000,
            idle_timeout_ms: 5000,
            bandwidth_bits_per_sec: 100_000_000,
            rtt_ms: 100,
            congestion: Congestion::Cubic,
        }
    }
}

impl TransportSettings {
    /// Bandwidth-delay product in bytes.
    pub fn bdp_bytes(&self) -> u64 {
        let bits = u128::from(self.bandwidth_bits_per_sec) * u128::from(self.rtt_ms) / 1000;
        u64::try_from(bits / 8).unwrap_or(u64::MAX)
    }

    pub fn stream_window(&self) -> u64 {
        self.bdp_bytes()
            .saturating_mul(4)
            .clamp(MIN_STREAM_WINDOW, MAX_STREAM_WINDOW)
    }

    pub fn connection_window(&self) -> u64 {
        self.stream_window() * 2
    }

    /// Checks the settings make sense together; the error names the key to fix.
    pub fn validate(&self) -> Result<(), TransportError> {
        let bad = |key: &'static str, why: &'static str| Err(TransportError { key, why });
        if self.keep_alive_ms == 0 {
            return bad("keep_alive_ms", "must be above 0");
        }
        if self.idle_timeout_ms <= self.keep_alive_ms {
            return bad(
                "idle_timeout_ms",
                "must be longer than keep_alive_ms, or an idle link times out between keep-alives",
            );
        }
        if IdleTimeout::try_from(Duration::from_millis(self.idle_timeout_ms)).is_err() {
            return bad("idle_timeout_ms", "too large for QUIC");
        }
        if self.bandwidth_bits_per_sec == 0 {
            return bad("bandwidth_bits_per_sec", "must be above 0");
        }
        if self.rtt_ms == 0 {
            return bad("rtt_ms", "must be above 0");
        }
        Ok(())
    }

    /// The quinn transport config for these settings.
    pub fn transport_config(&self) -> Result<quinn::TransportConfig, TransportError> {
        self.validate()?;
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(Duration::from_millis(self.keep_alive_ms)));
        let idle =
            IdleTimeout::try_from(Duration::from_millis(self.idle_timeout_ms)).map_err(|_| {
                TransportError {
                    key: "idle_timeout_ms",
                    why: "too large for QUIC",
                }
            })?;
        t.max_idle_timeout(Some(idle));
        // Windows are clamped far below VarInt::MAX (2^62), so these conversions cannot fail.
        t.stream_receive_window(VarInt::from_u64(self.stream_window()).unwrap_or(VarInt::MAX));
        t.receive_window(VarInt::from_u64(self.connection_window()).unwrap_or(VarInt::MAX));
        t.send_window(self.connection_window());
        t.initial_rtt(Duration::from_millis(self.rtt_ms));
        t.congestion_controller_factory(self.congestion.factory());
        Ok(t)
    }

    /// quinn server config: mutual TLS from `trust` (client certificate required), presenting
    /// `own`, with these transport settings.
    pub fn server_config(
        &self,
        trust: &Trust,
        own: &TlsIdentity,
    ) -> Result<quinn::ServerConfig, ConfigError> {
        let tls = trust.server_config(own)?;
        let quic = QuicServerConfig::try_from(tls)
            .map_err(|e| ConfigError::Tls(TlsError::Quic(e.to_string())))?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
        cfg.transport_config(Arc::new(self.transport_config()?));
        Ok(cfg)
    }

    /// quinn client config: presents `own`, requires the server to chain to `trust`'s CA and
    /// match `expect`, with these transport settings. Connect with [`SERVER_NAME`].
    pub fn client_config(
        &self,
        trust: &Trust,
        own: &TlsIdentity,
        expect: ExpectPeer,
    ) -> Result<quinn::ClientConfig, ConfigError> {
        let tls = trust.client_config(own, expect)?;
        self.client_config_from_tls(tls)
    }

    /// quinn client config from a ready rustls config (ALPN and verifier already set).
    pub fn client_config_from_tls(
        &self,
        tls: rustls::ClientConfig,
    ) -> Result<quinn::ClientConfig, ConfigError> {
        let quic = QuicClientConfig::try_from(tls)
            .map_err(|e| ConfigError::Tls(TlsError::Quic(e.to_string())))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
        cfg.transport_config(Arc::new(self.transport_config()?));
        Ok(cfg)
    }
}

/// A transport setting that does not make sense.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("transport.{key}: {why}")]
pub struct TransportError {
    pub key: &'static str,
    pub why: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Transport(#[from] TransportError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_the_bandwidth_delay_product() {
        let s = TransportSettings::default();
        // 100 Mbit/s x 100 ms = 10 Mbit = 1.25 MB.
        assert_eq!(s.bdp_bytes(), 1_250_000);
        assert_eq!(s.stream_window(), 5_000_000);
        assert_eq!(s.connection_window(), 10_000_000);
        // The issue's WAN: 10 Mbit/s x 200 ms = 250 KB in flight; windows well above it.
        let wan = TransportSettings {
            bandwidth_bits_per_sec: 10_000_000,
            rtt_ms: 200,
            ..s
        };
        assert_eq!(wan.bdp_bytes(), 250_000);
        assert_eq!(wan.stream_window(), 1_000_000);
        assert!(wan.transport_config().is_ok());
        let lan = TransportSettings {
            bandwidth_bits_per_sec: 1_000_000,
            rtt_ms: 1,
            ..s
        };
        assert_eq!(lan.bdp_bytes(), 125);
        assert_eq!(lan.stream_window(), MIN_STREAM_WINDOW);
        let absurd = TransportSettings {
            bandwidth_bits_per_sec: u64::MAX,
            rtt_ms: u64::MAX,
            ..s
        };
        assert_eq!(absurd.stream_window(), MAX_STREAM_WINDOW);
    }

    #[test]
    fn settings_that_cannot_work_are_refused_by_key() {
        let s = TransportSettings {
            keep_alive_ms: 5000,
            idle_timeout_ms: 5000,
            ..TransportSettings::default()
        };
        assert_eq!(s.validate().unwrap_err().key, "idle_timeout_ms");
        assert!(TransportSettings::default().transport_config().is_ok());
        let parsed: TransportSettings = serde_json::from_str(r#"{"rtt_ms": 30}"#).unwrap();
        assert_eq!(parsed.rtt_ms, 30);
        assert_eq!(parsed.keep_alive_ms, 1000);
        assert!(serde_json::from_str::<TransportSettings>(r#"{"rtt": 30}"#).is_err());
    }

    #[test]
    fn congestion_control_is_chosen_by_name() {
        assert_eq!(TransportSettings::default().congestion, Congestion::Cubic);
        for (name, want) in [
            ("cubic", Congestion::Cubic),
            ("bbr", Congestion::Bbr),
            ("newreno", Congestion::NewReno),
        ] {
            let json = format!(r#"{{"congestion": "{name}"}}"#);
            let s: TransportSettings = serde_json::from_str(&json).unwrap();
            assert_eq!(s.congestion, want);
            assert_eq!(name.parse::<Congestion>().unwrap(), want);
            assert_eq!(want.to_string(), name);
            // Each builds a transport config with its controller.
            assert!(s.transport_config().is_ok());
        }
        for bad in ["BBR", "reno", "new_reno", ""] {
            let json = format!(r#"{{"congestion": "{bad}"}}"#);
            assert!(
                serde_json::from_str::<TransportSettings>(&json).is_err(),
                "{bad}"
            );
            assert_eq!(bad.parse::<Congestion>().unwrap_err().key, "congestion");
        }
    }
}
