//! What a peer certificate says: the peer id, its role and its tenants, in one documented layout
//! (see the crate docs), and the parser that reads them back from a certificate's DER.

use opha_common::wire::{PeerId, PeerRole, TenantId};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::extensions::GeneralName;

/// URI SAN naming the peer: `opha://peer/<id>`. Exactly one per certificate.
pub const PEER_URI_PREFIX: &str = "opha://peer/";
/// URI SAN naming the role: `opha://role/poller|primary|mirror`. Exactly one per certificate.
pub const ROLE_URI_PREFIX: &str = "opha://role/";
/// URI SAN per tenant the peer may carry data for: `opha://tenant/<decimal u32>`.
pub const TENANT_URI_PREFIX: &str = "opha://tenant/";
/// Every opha URI SAN starts with this; an unknown `opha://` kind is refused, not ignored, so
/// a certificate made for a later layout never passes with half its meaning dropped.
pub const OPHA_URI_SCHEME: &str = "opha://";
/// Bound on tenants per certificate, so a certificate stays small (it crosses the WAN on every
/// handshake) and the tenant list is cheap to search.
pub const MAX_TENANTS: usize = 1024;

/// The verified identity of a connected peer, read from its certificate only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub peer_id: PeerId,
    pub role: PeerRole,
    /// Sorted, without duplicates. Empty means the peer may carry data for no tenant.
    pub tenants: Vec<TenantId>,
    pub serial: Serial,
    /// End of the certificate's validity, for expiry alarms.
    pub not_after: SystemTime,
}

impl PeerIdentity {
    /// Whether the certificate allows records of `tenant`.
    pub fn allows_tenant(&self, tenant: TenantId) -> bool {
        self.tenants.binary_search(&tenant).is_ok()
    }

    /// Reads the identity from a certificate's DER. This does not verify the certificate: call
    /// it only on a certificate the TLS layer has verified (as `verify` does).
    pub fn from_certificate(der: &[u8]) -> Result<Self, IdentityError> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        if !rest.is_empty() {
            return Err(IdentityError::Parse(format!(
                "{} trailing bytes after the certificate",
                rest.len()
            )));
        }
        let sans = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Parse(e.to_string()))?
            .ok_or(IdentityError::Missing("subject alternative names"))?;

        let mut peer: Option<PeerId> = None;
        let mut role: Option<PeerRole> = None;
        let mut tenants = Vec::new();
        for name in &sans.value.general_names {
            let GeneralName::URI(uri) = name else {
                continue;
            };
            if let Some(id) = uri.strip_prefix(PEER_URI_PREFIX) {
                let id = PeerId::new(id).map_err(|e| IdentityError::BadPeerId(e.to_string()))?;
                if peer.replace(id).is_some() {
                    return Err(IdentityError::Duplicate("peer"));
                }
            } else if let Some(r) = uri.strip_prefix(ROLE_URI_PREFIX) {
                let r = parse_role(r).ok_or_else(|| IdentityError::BadRole(r.to_string()))?;
                if role.replace(r).is_some() {
                    return Err(IdentityError::Duplicate("role"));
                }
            } else if let Some(t) = uri.strip_prefix(TENANT_URI_PREFIX) {
                tenants.push(parse_tenant(t).ok_or_else(|| IdentityError::BadTenant(t.into()))?);
            } else if uri.starts_with(OPHA_URI_SCHEME) {
                return Err(IdentityError::UnknownUri(uri.to_string()));
            }
        }
        let peer_id = peer.ok_or(IdentityError::Missing("peer id URI"))?;
        let role = role.ok_or(IdentityError::Missing("role URI"))?;
        tenants.sort_unstable();
        tenants.dedup();
        if tenants.len() > MAX_TENANTS {
            return Err(IdentityError::TooManyTenants(tenants.len()));
        }
        // The CN repeats the peer id for humans (openssl x509 -subject); a mismatch means the
        // certificate was not made by `ca::Ca::issue`, so it is refused rather than guessed at.
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or(IdentityError::Missing("common name"))?;
        if cn != peer_id.as_str() {
            return Err(IdentityError::CommonNameMismatch {
                cn: cn.to_string(),
                peer: peer_id,
            });
        }
        let not_after = u64::try_from(cert.validity().not_after.timestamp())
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
            .unwrap_or(UNIX_EPOCH);
        Ok(PeerIdentity {
            peer_id,
            role,
            tenants,
            serial: Serial::from_be_bytes(cert.tbs_certificate.raw_serial()),
            not_after,
        })
    }
}

/// The role's spelling in certificates and configuration.
pub fn role_name(role: PeerRole) -> &'static str {
    match role {
        PeerRole::Poller => "poller",
        PeerRole::Primary => "primary",
        PeerRole::Mirror => "mirror",
    }
}

pub fn parse_role(s: &str) -> Option<PeerRole> {
    match s {
        "poller" => Some(PeerRole::Poller),
        "primary" => Some(PeerRole::Primary),
        "mirror" => Some(PeerRole::Mirror),
        _ => None,
    }
}

/// Canonical decimal only (no sign, no leading zeros), so one tenant has one spelling.
fn parse_tenant(s: &str) -> Option<TenantId> {
    let n: u32 = s.parse().ok()?;
    (n.to_string() == s).then_some(TenantId(n))
}

/// A certificate serial number, as unsigned big-endian bytes without leading zeros; written as
/// lowercase hex (colons accepted when parsing, as `openssl x509 -serial` prints none but other
/// tools do).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

impl Serial {
    pub fn from_be_bytes(bytes: &[u8]) -> Self {
        let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        Serial(bytes[start..].to_vec())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("00");
        }
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for Serial {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, IdentityError> {
        let hex: String = s.chars().filter(|&c| c != ':').collect();
        let bad = || IdentityError::BadSerial(s.to_string());
        if hex.is_empty() || hex.len() > 40 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        // An odd digit count means a leading nibble: pad it so byte pairs line up.
        let hex = if hex.len() % 2 == 1 {
            format!("0{hex}")
        } else {
            hex
        };
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad()))
            .collect::<Result<Vec<u8>, _>>()?;
        Ok(Serial::from_be_bytes(&bytes))
    }
}

/// Why a certificate does not carry a usable opha identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate does not parse: {0}")]
    Parse(String),
    #[error("certificate has no {0}")]
    Missing(&'static str),
    #[error("certificate has more than one {0} URI")]
    Duplicate(&'static str),
    #[error("certificate peer id is invalid: {0}")]
    BadPeerId(String),
    #[error("certificate role {0:?} is not poller, primary or mirror")]
    BadRole(String),
    #[error("certificate tenant {0:?} is not a canonical decimal u32")]
    BadTenant(String),
    #[error("certificate has {0} tenants, at most {MAX_TENANTS} allowed")]
    TooManyTenants(usize),
    #[error("certificate has an unknown opha URI {0:?}")]
    UnknownUri(String),
    #[error("certificate common name {cn:?} differs from its peer id {peer}")]
    CommonNameMismatch { cn: String, peer: PeerId },
    #[error("serial number {0:?} is not 1 to 20 bytes of hex")]
    BadSerial(String),
    #[error("the connection has no verified peer certificate")]
    NoPeerCertificate,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_round_trips_and_ignores_leading_zeros_and_colons() {
        let s: Serial = "00:1a:2B".parse().unwrap();
        assert_eq!(s.as_bytes(), &[0x1a, 0x2b]);
        assert_eq!(s.to_string(), "1a2b");
        assert_eq!("abc".parse::<Serial>().unwrap().as_bytes(), &[0x0a, 0xbc]);
        assert!("".parse::<Serial>().is_err());
        assert!("xyz".parse::<Serial>().is_err());
    }

    #[test]
    fn tenant_spelling_is_canonical() {
        assert_eq!(parse_tenant("2"), Some(TenantId(2)));
        assert_eq!(parse_tenant("02"), None);
        assert_eq!(parse_tenant("+2"), None);
        assert_eq!(parse_tenant("4294967296"), None);
    }
}
