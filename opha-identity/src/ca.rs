//! The certificate authority: creates the CA and issues peer certificates in the layout the
//! crate docs describe. Functions map one to one onto the CLI the sidecar will expose:
//! `certs init` = [`init_ca`], `certs issue` = [`issue_to_dir`].

use crate::identity::{
    IdentityError, MAX_TENANTS, PEER_URI_PREFIX, PeerIdentity, ROLE_URI_PREFIX, Serial,
    TENANT_URI_PREFIX, role_name,
};
use opha_common::wire::{PeerId, PeerRole, TenantId};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// File names inside a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
/// Organisation written into every subject, so `openssl x509 -subject` shows what made it.
pub const ORGANIZATION: &str = "opha";

/// Backdating of `not_before`, so a peer whose clock is a little behind the CA's accepts a
/// certificate issued a moment ago.
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// When a certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From [`CLOCK_SKEW`] ago until `days` from now.
    pub fn days_from_now(days: u32) -> Self {
        let now = SystemTime::now();
        Validity {
            not_before: now.checked_sub(CLOCK_SKEW).unwrap_or(now),
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }

    fn check(&self) -> Result<(), CaError> {
        if self.not_after <= self.not_before {
            return Err(CaError::BadValidity);
        }
        Ok(())
    }
}

/// What a peer certificate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    pub peer_id: PeerId,
    pub role: PeerRole,
    pub tenants: Vec<TenantId>,
    pub validity: Validity,
}

/// A CA: its certificate and its signing key (ECDSA P-256).
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    // The key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA with a fresh key. `name` becomes the CN (e.g. "opha CA prod").
    pub fn create(name: &str, validity: Validity) -> Result<Ca, CaError> {
        validity.check()?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(name, None);
        // Path length 0: the CA signs peers only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
        })
    }

    /// A CA from its PEM certificate and PEM (PKCS#8) key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, CaError> {
        let key = KeyPair::from_pem(key_pem)?;
        let cert_der = first_cert(cert_pem)?;
        // Fail now, not at the first issue, when the pair does not belong together.
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| CaError::Parse(e.to_string()))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::KeyMismatch);
        }
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            cert_der,
            key,
        })
    }

    /// Loads `ca.pem` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Ca, CaError> {
        let cert = read(&dir.join(CA_CERT_FILE))?;
        let key = read(&dir.join(CA_KEY_FILE))?;
        Ca::from_pem(&cert, &key)
    }

    /// Writes `ca.pem` (0644) and `ca.key` (0600) into `dir` (created 0700 if missing).
    /// Refuses to replace an existing key unless `overwrite`: losing a CA key orphans every
    /// certificate it issued.
    pub fn save(&self, dir: &Path, overwrite: bool) -> Result<(PathBuf, PathBuf), CaError> {
        create_dir(dir)?;
        let cert = dir.join(CA_CERT_FILE);
        let key = dir.join(CA_KEY_FILE);
        write_file(&key, self.key.serialize_pem().as_bytes(), 0o600, overwrite)?;
        write_file(&cert, self.cert_pem.as_bytes(), 0o644, overwrite)?;
        Ok((cert, key))
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Issues a peer certificate with a fresh key.
    pub fn issue(&self, spec: &PeerSpec) -> Result<IssuedCert, CaError> {
        spec.validity.check()?;
        let mut tenants = spec.tenants.clone();
        tenants.sort_unstable();
        tenants.dedup();
        if tenants.len() > MAX_TENANTS {
            return Err(CaError::TooManyTenants(tenants.len()));
        }
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let id = spec.peer_id.as_str();
        params.distinguished_name = subject(id, Some(role_name(spec.role)));
        let mut sans = vec![
            uri(format!("{PEER_URI_PREFIX}{id}"))?,
            uri(format!("{ROLE_URI_PREFIX}{}", role_name(spec.role)))?,
        ];
        for t in &tenants {
            sans.push(uri(format!("{TENANT_URI_PREFIX}{}", t.0))?);
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Both: a mirror or primary is a server to pollers and a client to other receivers.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = spec.validity.not_before.into();
        params.not_after = spec.validity.not_after.into();
        let cert = params.signed_by(&key, &issuer)?;
        // Read back what was written, so the issued identity is exactly what verifiers see.
        let identity = PeerIdentity::from_certificate(cert.der())?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            identity,
        })
    }
}

/// A peer certificate and its key, as PEM.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub identity: PeerIdentity,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    pub fn serial(&self) -> &Serial {
        &self.identity.serial
    }

    /// Writes `<peer>.pem` (0644) and `<peer>.key` (0600) into `dir`. Peer ids are safe file
    /// names by construction (`[a-z0-9._-]`, not starting with a dot).
    pub fn save(&self, dir: &Path, overwrite: bool) -> Result<(PathBuf, PathBuf), CaError> {
        create_dir(dir)?;
        let id = self.identity.peer_id.as_str();
        let cert = dir.join(format!("{id}.pem"));
        let key = dir.join(format!("{id}.key"));
        write_file(&key, self.key_pem.as_bytes(), 0o600, overwrite)?;
        write_file(&cert, self.cert_pem.as_bytes(), 0o644, overwrite)?;
        Ok((cert, key))
    }
}

/// `certs init`: creates a CA valid for `days` and writes it into `dir`.
pub fn init_ca(dir: &Path, name: &str, days: u32, overwrite: bool) -> Result<Ca, CaError> {
    let ca = Ca::create(name, Validity::days_from_now(days))?;
    ca.save(dir, overwrite)?;
    Ok(ca)
}

/// `certs issue`: loads the CA from `ca_dir`, issues `spec`, writes `<peer>.pem`/`<peer>.key`
/// into `out_dir`, and returns the certificate with the paths written.
pub fn issue_to_dir(
    ca_dir: &Path,
    out_dir: &Path,
    spec: &PeerSpec,
    overwrite: bool,
) -> Result<(IssuedCert, PathBuf, PathBuf), CaError> {
    let ca = Ca::load(ca_dir)?;
    let issued = ca.issue(spec)?;
    let (cert, key) = issued.save(out_dir, overwrite)?;
    Ok((issued, cert, key))
}

fn subject(cn: &str, role: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    if let Some(role) = role {
        dn.push(DnType::OrganizationalUnitName, role);
    }
    dn.push(DnType::CommonName, cn);
    dn
}

fn uri(s: String) -> Result<SanType, CaError> {
    Ok(SanType::URI(s.try_into()?))
}

/// 16 random bytes, top bit clear so the DER INTEGER stays positive and 16 bytes long
/// (RFC 5280: at most 20 octets, unpredictable).
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn first_cert(pem: &str) -> Result<CertificateDer<'static>, CaError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| CaError::Parse("no CERTIFICATE block".into()))?
        .map_err(|e| CaError::Parse(e.to_string()))
}

fn read(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CaError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes through a temporary file created with `mode` (so a key is never readable by others,
/// not even for a moment), fsyncs, then renames into place.
fn write_file(path: &Path, data: &[u8], mode: u32, overwrite: bool) -> Result<(), CaError> {
    if !overwrite && path.exists() {
        return Err(CaError::Exists(path.to_path_buf()));
    }
    let io_err = |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err)?;
    // The umask may have narrowed `mode`; set it exactly.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err)?;
    f.write_all(data).map_err(io_err)?;
    f.sync_all().map_err(io_err)?;
    fs::rename(&tmp, path).map_err(io_err)?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0} exists; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("CA certificate: {0}")]
    Parse(String),
    #[error("the CA key does not belong to the CA certificate")]
    KeyMismatch,
    #[error("validity: not_after must be later than not_before")]
    BadValidity,
    #[error("a certificate carries at most {MAX_TENANTS} tenants, got {0}")]
    TooManyTenants(usize),
    #[error("issued certificate does not read back: {0}")]
    Identity(#[from] IdentityError),
}
