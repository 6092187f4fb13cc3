//! The receivers' configuration file (TOML): `opha-sidecar primary --config primary.toml` and
//! `opha-sidecar mirror --config mirror.toml`, by example in examples/primary.toml and
//! examples/mirror.toml.
//!
//! Same rules as the poller's file: `deny_unknown_fields` everywhere, the first parse error
//! names its key path and line, relative paths are relative to the file's directory, and every
//! rule across keys that is broken is reported.
//!
//! ```toml
//! peer_id = "primary-1"          # must equal the peer id in `tls.certificate`
//! role = "primary"               # or "mirror"; must equal the certificate's role
//! listen = "0.0.0.0:7443"        # QUIC (UDP)
//!
//! [tls]
//! certificate = "certs/primary-1.pem"
//! key = "certs/primary-1.key"
//! ca = "certs/ca.pem"
//!
//! [deny]                         # revoked certificates: serials (hex) and peer ids
//! serials = []
//! peers = []
//!
//! [store]
//! dir = "/var/lib/opha/primary-1/store"
//! max_age = "30d"                # or "off"
//! max_size = "off"               # per tenant file, e.g. "10GiB"
//! retention_every = "5m"
//!
//! [transport]                    # opha_identity::TransportSettings
//! keep_alive_ms = 1000
//! idle_timeout_ms = 5000
//!
//! [[poller]]                     # the tenant registry: who may send for which tenants
//! id = "poller-1"
//! tenants = [1, 2]
//!
//! [[peer]]                       # primaries only: where to fetch gaps, in preference order
//! id = "mirror-1"
//! role = "mirror"
//! address = "mirror-1.example:7443"
//!
//! [metrics]
//! listen = "127.0.0.1:9731"      # or "off"
//!
//! [api]                          # the HTTP API and Home view; no table: not served
//! listen = "127.0.0.1:8080"      # or "off"
//! max_page = 1000                # and the other opha_api::ApiConfig limits
//! [[api.token]]                  # `opha-sidecar api token mint` prints these blocks
//! name = "noc"
//! role = "operator"
//! sha256 = "..."
//! ```
//!
//! A poller not in the registry is refused. A record is accepted only for a tenant listed both
//! in the registry entry of its poller and in that poller's certificate.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use opha_common::wire::{PeerId, TenantId};
use opha_identity::{DenyList, Serial, TransportSettings};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ConfigError, Problem, units};

/// Default QUIC listen address of a receiver.
pub const DEFAULT_RECEIVER_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7443);
/// Default Prometheus address of a receiver (loopback: metrics are for the local scraper).
pub const DEFAULT_RECEIVER_METRICS: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9731);
/// Default address of the HTTP API and Home view when an `[api]` table is present (loopback:
/// put a TLS-terminating proxy in front to serve it further).
pub const DEFAULT_API_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);

/// The role a receiver runs in (the same type a poller's `[[receiver]]` names).
pub use super::bus::ReceiverRole;

/// The whole file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverFileConfig {
    /// This receiver's peer id (as in its certificate). Required.
    pub peer_id: PeerId,
    /// `primary` or `mirror`. Required.
    pub role: ReceiverRole,
    /// QUIC (UDP) address pollers connect to.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    pub tls: TlsConfig,
    #[serde(default)]
    pub deny: DenyConfig,
    pub store: StoreSection,
    #[serde(default)]
    pub transport: TransportSettings,
    /// The tenant registry, `[[poller]]`.
    #[serde(default, rename = "poller")]
    pub pollers: Vec<PollerEntry>,
    /// `[[peer]]`: other receivers a primary fetches gaps from, in preference order.
    #[serde(default, rename = "peer", skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerEntry>,
    #[serde(default)]
    pub metrics: ReceiverMetricsConfig,
    /// `[api]`: the HTTP API and Home view; absent: not served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ReceiverApiConfig>,
    /// `[mirror]` (mirrors only): the paired poller and the promotion settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<crate::mirror::config::MirrorSection>,
}

fn default_listen() -> SocketAddr {
    DEFAULT_RECEIVER_LISTEN
}

/// `[tls]`: this receiver's certificate and key, and the CA that signs every peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub certificate: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// `[deny]`: revoked certificates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DenyConfig {
    /// Serial numbers in hex (colons allowed), as `openssl x509 -serial` prints them.
    pub serials: Vec<String>,
    /// Peer ids: every certificate of these peers.
    pub peers: Vec<PeerId>,
}

/// `[store]`: the per-tenant SQLite store and its retention.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    pub dir: PathBuf,
    /// Records older than this are deleted; "off" keeps them.
    #[serde(default = "default_max_age", with = "off_duration")]
    pub max_age: Option<Duration>,
    /// Per tenant file: the oldest records are deleted above this size; "off": no cap.
    #[serde(default, with = "off_bytes")]
    pub max_size: Option<u64>,
    /// How often retention runs.
    #[serde(default = "default_retention_every", with = "units::duration")]
    pub retention_every: Duration,
}

fn default_max_age() -> Option<Duration> {
    Some(Duration::from_secs(30 * 86_400))
}

fn default_retention_every() -> Duration {
    Duration::from_secs(300)
}

/// `[[poller]]`: one poller and the tenants it may send for (intersected with its
/// certificate's tenants).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollerEntry {
    pub id: PeerId,
    pub tenants: Vec<u32>,
    /// The poller's mirror: while promoted it streams its own records for these tenants
    /// (docs/mirror.md). A mirror not named here is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<PeerId>,
}

/// `[[peer]]`: another receiver (the poller's mirror, another primary) that a primary asks
/// for what it missed and the poller's log no longer holds (`receiver::gap`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    /// Its peer id: its certificate must carry it and `role`.
    pub id: PeerId,
    pub role: ReceiverRole,
    /// `host:port` of its QUIC endpoint (resolved at each fetch).
    pub address: String,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverMetricsConfig {
    #[serde(with = "units::listen")]
    pub listen: Option<SocketAddr>,
}

impl Default for ReceiverMetricsConfig {
    fn default() -> Self {
        Self {
            listen: Some(DEFAULT_RECEIVER_METRICS),
        }
    }
}

/// `[api]`: where the HTTP API and Home view are served, their limits and bearer tokens (the
/// keys of [`opha_api::ApiConfig`], see docs/api.md). Primaries and mirrors both serve it when
/// the table is present; a mirror's shows what the mirror holds (its poller's records).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverApiConfig {
    /// TCP address of the API and page; "off" keeps the table (tokens) but serves nothing.
    #[serde(with = "units::listen")]
    pub listen: Option<SocketAddr>,
    pub max_body_bytes: usize,
    pub max_uri_bytes: usize,
    pub max_page: usize,
    pub max_params: usize,
    /// `[[api.token]]`: SHA-256 of each bearer token, with its role (and tenant).
    #[serde(rename = "token", skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<opha_api::TokenEntry>,
}

impl Default for ReceiverApiConfig {
    fn default() -> Self {
        let d = opha_api::ApiConfig::default();
        Self {
            listen: Some(DEFAULT_API_LISTEN),
            max_body_bytes: d.max_body_bytes,
            max_uri_bytes: d.max_uri_bytes,
            max_page: d.max_page,
            max_params: d.max_params,
            tokens: d.tokens,
        }
    }
}

impl ReceiverApiConfig {
    /// The API crate's configuration.
    pub fn api_config(&self) -> opha_api::ApiConfig {
        opha_api::ApiConfig {
            max_body_bytes: self.max_body_bytes,
            max_uri_bytes: self.max_uri_bytes,
            max_page: self.max_page,
            max_params: self.max_params,
            tokens: self.tokens.clone(),
        }
    }
}

mod off_duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim() == "off" {
            return Ok(None);
        }
        units::parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&units::format_duration(*d)),
            None => s.serialize_str("off"),
        }
    }
}

mod off_bytes {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim() == "off" {
            return Ok(None);
        }
        units::parse_bytes(&s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&units::format_bytes(*b)),
            None => s.serialize_str("off"),
        }
    }
}

impl super::ConfigFile for ReceiverFileConfig {
    fn resolve(&mut self, base_dir: &Path) {
        ReceiverFileConfig::resolve(self, base_dir)
    }
    fn validate(&self) -> Vec<Problem> {
        ReceiverFileConfig::validate(self)
    }
}

impl ReceiverFileConfig {
    /// Reads, resolves and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        super::load_file(path)
    }

    /// Parses, resolves (relative paths against `base_dir`) and validates.
    pub fn from_toml(text: &str, file: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        super::from_toml_text(text, file, base_dir)
    }

    /// TOML into the types; the error names the key path.
    pub fn parse(text: &str) -> Result<Self, Problem> {
        super::parse_toml(text)
    }

    /// Makes relative paths absolute against `base_dir`.
    pub fn resolve(&mut self, base_dir: &Path) {
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base_dir.join(p)
            }
        };
        self.tls.certificate = abs(&self.tls.certificate);
        self.tls.key = abs(&self.tls.key);
        self.tls.ca = abs(&self.tls.ca);
        self.store.dir = abs(&self.store.dir);
        if let Some(m) = &mut self.mirror {
            m.resolve(base_dir);
        }
    }

    /// Rules across keys; empty when the config is good.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        for (i, s) in self.deny.serials.iter().enumerate() {
            if let Err(e) = s.parse::<Serial>() {
                p.push(Problem::new(format!("deny.serials[{i}]"), e.to_string()));
            }
        }
        if let Err(e) = self.transport.validate() {
            p.push(Problem::new(format!("transport.{}", e.key), e.why));
        }
        if self.listen.port() == 0 {
            p.push(Problem::new(
                "listen",
                "port 0 is not allowed, name a fixed port",
            ));
        }
        if self.metrics.listen.is_some_and(|m| m.port() == 0) {
            p.push(Problem::new("metrics.listen", "port 0 is not allowed"));
        }
        if let Some(api) = &self.api {
            if api.listen.is_some_and(|a| a.port() == 0) {
                p.push(Problem::new("api.listen", "port 0 is not allowed"));
            }
            if api.listen.is_some() && api.listen == self.metrics.listen {
                p.push(Problem::new(
                    "api.listen",
                    "is metrics.listen too: give each its own port",
                ));
            }
            // Limits and every token entry; the error names its key (`api.token[1].tenant`).
            if let Err(e) = api.api_config().check() {
                p.push(Problem::new(e.key, e.message));
            }
        }
        if self.store.retention_every.is_zero() {
            p.push(Problem::new("store.retention_every", "must be above 0"));
        }
        self.validate_peers(&mut p);
        if let Some(m) = &self.mirror {
            if self.role != ReceiverRole::Mirror {
                p.push(Problem::new("mirror", "only a mirror has a [mirror] table"));
            }
            m.validate(self.pollers.iter().any(|e| e.id == m.poller), &mut p);
        }
        let mut seen = BTreeSet::new();
        for (i, entry) in self.pollers.iter().enumerate() {
            if !seen.insert(entry.id.clone()) {
                p.push(Problem::new(
                    format!("poller[{i}].id"),
                    format!("poller {} is listed twice", entry.id),
                ));
            }
            if entry.id == self.peer_id {
                p.push(Problem::new(
                    format!("poller[{i}].id"),
                    "is this receiver's own peer id",
                ));
            }
            if let Some(mirror) = &entry.mirror {
                let clash = self.pollers.iter().any(|e| e.id == *mirror)
                    || self
                        .pollers
                        .iter()
                        .take(i)
                        .any(|e| e.mirror.as_ref() == Some(mirror));
                if clash {
                    p.push(Problem::new(
                        format!("poller[{i}].mirror"),
                        format!("{mirror} is a poller or another poller's mirror"),
                    ));
                }
                if *mirror == self.peer_id && self.role == ReceiverRole::Primary {
                    p.push(Problem::new(
                        format!("poller[{i}].mirror"),
                        "is this primary's own peer id",
                    ));
                }
            }
            if entry.tenants.is_empty() {
                p.push(Problem::new(
                    format!("poller[{i}].tenants"),
                    "lists no tenant: the poller could send only tenant-less records",
                ));
            }
            for (j, &t) in entry.tenants.iter().enumerate() {
                if t == 0 {
                    p.push(Problem::new(
                        format!("poller[{i}].tenants[{j}]"),
                        "tenant 0 is reserved (the receiver's own reports)",
                    ));
                }
            }
        }
        p
    }

    fn validate_peers(&self, p: &mut Vec<Problem>) {
        let mut seen = BTreeSet::new();
        for (i, peer) in self.peers.iter().enumerate() {
            if self.role == ReceiverRole::Mirror {
                p.push(Problem::new(
                    format!("peer[{i}]"),
                    "only primaries fetch gaps (a mirror serves them): remove [[peer]]",
                ));
            }
            if !seen.insert(peer.id.clone()) {
                p.push(Problem::new(
                    format!("peer[{i}].id"),
                    format!("peer {} is listed twice", peer.id),
                ));
            }
            if peer.id == self.peer_id {
                p.push(Problem::new(
                    format!("peer[{i}].id"),
                    "is this receiver's own peer id",
                ));
            }
            if self.pollers.iter().any(|e| e.id == peer.id) {
                p.push(Problem::new(
                    format!("peer[{i}].id"),
                    format!("{} is a poller in [[poller]], not a receiver", peer.id),
                ));
            }
            let ok = peer
                .address
                .rsplit_once(':')
                .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|n| n > 0));
            if !ok {
                p.push(Problem::new(
                    format!("peer[{i}].address"),
                    format!("{:?} is not host:port", peer.address),
                ));
            }
        }
    }

    /// The deny list (call after `validate`: bad serials are skipped here).
    pub fn deny_list(&self) -> DenyList {
        DenyList {
            serials: self
                .deny
                .serials
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
            peers: self.deny.peers.iter().cloned().collect(),
        }
    }

    /// The tenant registry: poller -> tenants it may send for; a poller's mirror (other than
    /// this receiver) -> the same tenants (the connection's role check tells them apart).
    pub fn registry(&self) -> BTreeMap<PeerId, BTreeSet<TenantId>> {
        let mut m = BTreeMap::new();
        for e in &self.pollers {
            let tenants: BTreeSet<TenantId> = e.tenants.iter().map(|&t| TenantId(t)).collect();
            if let Some(mirror) = e.mirror.as_ref().filter(|m| **m != self.peer_id) {
                m.insert(mirror.clone(), tenants.clone());
            }
            m.insert(e.id.clone(), tenants);
        }
        m
    }

    /// The store's settings.
    pub fn store_config(&self) -> opha_store::StoreConfig {
        let mut c = opha_store::StoreConfig::default();
        c.retention.max_age_ms = self
            .store
            .max_age
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        c.retention.max_bytes = self.store.max_size;
        c
    }

    /// The effective config as TOML.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}
