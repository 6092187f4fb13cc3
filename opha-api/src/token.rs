//! Bearer tokens: the `[[api.token]]` configuration, minting, and authentication.
//!
//! A token is `opha_` followed by 64 hex digits (32 bytes from the system CSPRNG). The
//! configuration holds only its SHA-256 (hex): a leaked config file grants nothing, and since
//! the token has 256 bits of entropy a plain (unsalted) hash is enough (nothing to guess).
//! Presented tokens are hashed and compared with every configured hash in constant time.

use opha_common::wire::TenantId;
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// Prefix of every token, so that a token pasted into the wrong place is recognisable.
pub const TOKEN_PREFIX: &str = "opha_";

/// What a token may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Every tenant: the consolidated view.
    Operator,
    /// One tenant only (`tenant` of the entry).
    Tenant,
}

/// One `[[api.token]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// For logs and metrics: who made the request (never the token itself).
    pub name: String,
    pub role: Role,
    /// Required for `role = "tenant"`, refused for `role = "operator"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<u32>,
    /// SHA-256 of the token, 64 hex digits.
    pub sha256: String,
}

/// Who a request is from, once authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub scope: PrincipalScope,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrincipalScope {
    Operator,
    Tenant(TenantId),
}

/// A configuration error, naming the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

/// Why a request is not authenticated (answered 401).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no Authorization header; send `Authorization: Bearer <token>`")]
    Missing,
    #[error("the Authorization header is not `Bearer <token>`")]
    Malformed,
    #[error("unknown token")]
    Unknown,
}

struct Known {
    hash: [u8; 32],
    principal: Principal,
}

/// The configured tokens, checked.
pub struct Tokens {
    known: Vec<Known>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: hashes stay out of logs too.
        f.debug_list()
            .entries(self.known.iter().map(|k| &k.principal.name))
            .finish()
    }
}

fn hash(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

fn to_hex(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(HEX[usize::from(x >> 4)] as char);
        s.push(HEX[usize::from(x & 0xf)] as char);
    }
    s
}

fn from_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let val = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (o, p) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = val(p[0])? << 4 | val(p[1])?;
    }
    Some(out)
}

/// The SHA-256 hex of a token, as `sha256` in the configuration.
pub fn token_sha256(token: &str) -> String {
    to_hex(&hash(token))
}

impl Tokens {
    /// Checks the entries: names present and unique, hashes well-formed and unique, tenant
    /// given exactly for tenant tokens. Errors name the key, e.g. `api.token[2].tenant`.
    pub fn new(entries: &[TokenEntry]) -> Result<Tokens, ConfigError> {
        let mut known: Vec<Known> = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let key = |k: &str| format!("api.token[{i}].{k}");
            let err = |k: &str, m: String| ConfigError {
                key: key(k),
                message: m,
            };
            if e.name.trim().is_empty() || e.name.len() > 64 {
                return Err(err("name", "must be 1 to 64 characters".into()));
            }
            if known.iter().any(|k| k.principal.name == e.name) {
                return Err(err("name", format!("{:?} is used twice", e.name)));
            }
            let Some(h) = from_hex32(&e.sha256) else {
                return Err(err(
                    "sha256",
                    "must be 64 hex digits (SHA-256 of the token)".into(),
                ));
            };
            if known.iter().any(|k| k.hash == h) {
                return Err(err("sha256", "the same token is configured twice".into()));
            }
            let scope = match (e.role, e.tenant) {
                (Role::Operator, None) => PrincipalScope::Operator,
                (Role::Operator, Some(_)) => {
                    return Err(err(
                        "tenant",
                        "an operator token sees every tenant; remove `tenant` or use role = \"tenant\""
                            .into(),
                    ));
                }
                (Role::Tenant, Some(t)) => PrincipalScope::Tenant(TenantId(t)),
                (Role::Tenant, None) => {
                    return Err(err("tenant", "required for role = \"tenant\"".into()));
                }
            };
            known.push(Known {
                hash: h,
                principal: Principal {
                    name: e.name.clone(),
                    scope,
                },
            });
        }
        Ok(Tokens { known })
    }

    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Authenticates an `Authorization` header value.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let (scheme, token) = header.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        let token = token.trim();
        if token.is_empty() || token.len() > 256 {
            return Err(AuthError::Malformed);
        }
        let presented = hash(token);
        // Every entry is compared (no early exit), each in constant time.
        let mut found: Option<&Known> = None;
        for k in &self.known {
            if bool::from(k.hash.ct_eq(&presented)) {
                found = Some(k);
            }
        }
        found.map(|k| k.principal.clone()).ok_or(AuthError::Unknown)
    }
}

/// A freshly minted token: show `token` once, store only `entry`.
#[derive(Clone, Debug)]
pub struct Minted {
    pub token: String,
    pub entry: TokenEntry,
}

impl Minted {
    /// The `[[api.token]]` block to paste into the primary's configuration.
    pub fn to_toml(&self) -> String {
        let mut s = String::from("[[api.token]]\n");
        s.push_str(&format!("name = {}\n", toml_str(&self.entry.name)));
        let role = match self.entry.role {
            Role::Operator => "operator",
            Role::Tenant => "tenant",
        };
        s.push_str(&format!("role = \"{role}\"\n"));
        if let Some(t) = self.entry.tenant {
            s.push_str(&format!("tenant = {t}\n"));
        }
        s.push_str(&format!("sha256 = \"{}\"\n", self.entry.sha256));
        s
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Mints a new token for `name` (operator when `tenant` is `None`).
pub fn mint(name: &str, tenant: Option<TenantId>) -> Result<Minted, ConfigError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ConfigError {
            key: "token".into(),
            message: "the system random number generator failed".into(),
        })?;
    let token = format!("{TOKEN_PREFIX}{}", to_hex(&bytes));
    let entry = TokenEntry {
        name: name.to_string(),
        role: if tenant.is_some() {
            Role::Tenant
        } else {
            Role::Operator
        },
        tenant: tenant.map(|t| t.0),
        sha256: token_sha256(&token),
    };
    // The same checks as a loaded configuration.
    Tokens::new(std::slice::from_ref(&entry))?;
    Ok(Minted { token, entry })
}
