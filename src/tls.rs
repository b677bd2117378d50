//! HTTPS for berth's listeners. This module owns:
//!
//! - the local certificate authority berth creates under `<data-dir>/tls` on
//!   first start, and the server certificate it issues from it. The server
//!   certificate is reissued in place when it no longer covers the configured
//!   names or nears expiry; the CA stays, so clients that trust `ca.crt` keep
//!   working;
//! - the rustls server configuration (aws-lc-rs chosen explicitly: the build
//!   also links ring through reqwest, so the process-default provider is
//!   ambiguous), its certificate in a [`CertSlot`] that a standby replaces
//!   when it takes over;
//! - [`TlsListener`], a listener for `axum::serve` that runs every handshake
//!   in its own task with a deadline, so that a slow or silent client cannot
//!   stall the accept loop;
//! - the instructions printed for operators to trust the CA.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use axum::serve::{Listener, ListenerExt, TapIo};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// File names inside the TLS directory.
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const SERVER_CERT: &str = "server.crt";
const SERVER_KEY: &str = "server.key";
const LOCK: &str = ".lock";

/// The CA outlives many server certificates; ten years.
const CA_VALIDITY: time::Duration = time::Duration::days(3650);
/// Two years: below the 825 days Apple's TLS clients accept for any
/// certificate, private CAs included.
const SERVER_VALIDITY: time::Duration = time::Duration::days(730);
/// A server certificate this close to its end is reissued at start-up.
const RENEW_BEFORE: time::Duration = time::Duration::days(30);
/// Back-dating of notBefore, for clients whose clock is slightly behind.
const BACKDATE: time::Duration = time::Duration::hours(1);

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at once; beyond this, connections wait in the
/// kernel's accept queue.
const MAX_PENDING_HANDSHAKES: usize = 1024;
/// Finished handshakes waiting for `axum::serve` to take them.
const ESTABLISHED_QUEUE: usize = 64;

/// The result of [`ensure_self_signed`]: where the files are and what
/// changed.
#[derive(Clone, Debug)]
pub struct GeneratedTls {
    /// The CA certificate clients must trust (`<dir>/ca.crt`).
    pub ca_cert: PathBuf,
    /// The server certificate chain: server certificate, then the CA
    /// (`<dir>/server.crt`).
    pub cert: PathBuf,
    /// The server's private key (`<dir>/server.key`).
    pub key: PathBuf,
    /// A new CA was created: clients must be told to trust it.
    pub ca_created: bool,
    /// A new server certificate was issued (first start, new names, near
    /// expiry, or an unusable previous one).
    pub cert_issued: bool,
    /// The subject alternative names of the server certificate in use.
    pub names: Vec<String>,
    /// When the server certificate in use expires.
    pub not_after: OffsetDateTime,
}

/// The names berth's server certificate covers by default: the machine's
/// host name, `localhost`, `127.0.0.1`, `::1`, then `extra`; deduplicated
/// (DNS names case-insensitively, IP addresses by value), order kept.
/// Entries that are neither a DNS name nor an IP address are kept as given
/// so that [`ensure_self_signed`] reports them.
pub fn default_names(extra: &[String]) -> Vec<String> {
    let builtin = ["localhost", "127.0.0.1", "::1"].map(String::from);
    let mut names: Vec<String> = Vec::new();
    for name in hostname()
        .into_iter()
        .chain(builtin)
        .chain(extra.iter().cloned())
    {
        let name = match SubjectName::parse(&name) {
            Ok(parsed) => parsed.to_string(),
            Err(_) => name.trim().to_owned(),
        };
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// The machine's host name as the kernel knows it (UTS namespace),
/// lower-cased, if there is one. Read from `/proc/sys/kernel/hostname`
/// (falling back to `/etc/hostname`) rather than through libc, which would
/// need `unsafe` or another dependency.
pub fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| fs::read_to_string(path).ok())
        .map(|name| name.trim().to_ascii_lowercase())
        .find(|name| !name.is_empty() && name != "(none)")
}

/// Makes sure `dir` holds a CA and a server certificate covering `names`,
/// creating or renewing what is missing, stale or unusable (see the module
/// documentation). `dir` is normally `<data-dir>/tls`; it is created with
/// mode 0700. Blocking: call it before serving or from `spawn_blocking`.
///
/// Concurrent callers on the same directory are serialised by a lock file.
pub fn ensure_self_signed(dir: &Path, names: &[String]) -> anyhow::Result<GeneratedTls> {
    ensure_at(dir, names, OffsetDateTime::now_utc(), SERVER_VALIDITY)
}

/// [`ensure_self_signed`] with the clock and the server validity as
/// parameters, for tests.
fn ensure_at(
    dir: &Path,
    names: &[String],
    now: OffsetDateTime,
    server_validity: time::Duration,
) -> anyhow::Result<GeneratedTls> {
    // Certificates hold whole seconds.
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let mut wanted: Vec<SubjectName> = Vec::with_capacity(names.len());
    for name in names {
        let name = SubjectName::parse(name).context("invalid TLS certificate name")?;
        if !wanted.contains(&name) {
            wanted.push(name);
        }
    }
    if wanted.is_empty() {
        bail!("no names for the TLS server certificate");
    }
    prepare_dir(dir)?;
    let lock_path = dir.join(LOCK);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| format!("cannot open the lock file {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;

    let ca_cert = dir.join(CA_CERT);
    let ca_key = dir.join(CA_KEY);
    let cert = dir.join(SERVER_CERT);
    let key = dir.join(SERVER_KEY);

    let ca_created = match (exists(&ca_cert)?, exists(&ca_key)?) {
        (true, true) => false,
        (true, false) => bail!(
            "{} exists but its private key {} is missing, so berth cannot issue server \
             certificates: restore {CA_KEY}, or remove {} to create a new CA (clients then \
             have to trust the new one)",
            ca_cert.display(),
            ca_key.display(),
            ca_cert.display()
        ),
        (false, _) => {
            let (cert_pem, key_pem) = create_ca(now)?;
            // Key first: a crash in between leaves a key without a
            // certificate, which the next start replaces.
            write_atomic(dir, CA_KEY, key_pem.as_bytes(), 0o600)?;
            write_atomic(dir, CA_CERT, cert_pem.as_bytes(), 0o644)?;
            tracing::info!(path = %ca_cert.display(), "created a local TLS certificate authority");
            true
        }
    };
    let ca = Ca::load(&ca_cert, &ca_key)?;
    if ca.not_after <= now {
        bail!(
            "the CA certificate {} expired on {}; remove {} and {} to create a new CA (clients \
             then have to trust the new one)",
            ca_cert.display(),
            ca.not_after,
            ca_cert.display(),
            ca_key.display()
        );
    }
    if ca.not_after - now < RENEW_BEFORE {
        tracing::warn!(
            path = %ca_cert.display(),
            not_after = %ca.not_after,
            "the local TLS CA expires soon; remove ca.crt and ca.key to create a new one"
        );
    }

    match check_server(&cert, &key, &ca, &wanted, now) {
        Ok((names, not_after)) => Ok(GeneratedTls {
            ca_cert,
            cert,
            key,
            ca_created,
            cert_issued: false,
            names,
            not_after,
        }),
        Err(reason) => {
            let issued = issue_server(&ca, &wanted, now, server_validity)?;
            write_atomic(dir, SERVER_KEY, issued.key_pem.as_bytes(), 0o600)?;
            write_atomic(dir, SERVER_CERT, issued.chain_pem.as_bytes(), 0o644)?;
            tracing::info!(
                path = %cert.display(),
                reason = %reason,
                not_after = %issued.not_after,
                "issued a TLS server certificate"
            );
            Ok(GeneratedTls {
                ca_cert,
                cert,
                key,
                ca_created,
                cert_issued: true,
                names: wanted.iter().map(ToString::to_string).collect(),
                not_after: issued.not_after,
            })
        }
    }
}

/// A subject alternative name: IP address or DNS name.
#[derive(Clone, Debug, PartialEq, Eq)]
enum SubjectName {
    Dns(String),
    Ip(IpAddr),
}

impl SubjectName {
    /// Parses a configured name: an IPv4 or IPv6 address (brackets allowed),
    /// else a DNS name, lower-cased, without trailing dot.
    fn parse(name: &str) -> anyhow::Result<Self> {
        let name = name.trim();
        let bare = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        let dns = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let valid_chars = dns
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '*'));
        if dns.is_empty()
            || !valid_chars
            || dns.starts_with('.')
            || dns.contains("..")
            || dns.len() > 253
        {
            bail!(
                "{name:?} is neither an IP address nor a DNS name (letters, digits, '-' and '.'; \
                 no port; internationalised names in their xn-- form)"
            );
        }
        Ok(Self::Dns(dns))
    }

    fn to_san(&self) -> anyhow::Result<SanType> {
        Ok(match self {
            Self::Ip(ip) => SanType::IpAddress(*ip),
            Self::Dns(dns) => SanType::DnsName(
                dns.clone()
                    .try_into()
                    .with_context(|| format!("{dns:?} is not a valid DNS name"))?,
            ),
        })
    }
}

impl std::fmt::Display for SubjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dns(dns) => f.write_str(dns),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// The SANs of a parsed certificate (DNS names and IP addresses; other
/// kinds are ignored).
fn cert_names(cert: &X509Certificate<'_>) -> anyhow::Result<Vec<SubjectName>> {
    let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| anyhow!("bad subjectAltName extension: {e}"))?
    else {
        return Ok(Vec::new());
    };
    let mut names = Vec::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(dns) => names.push(SubjectName::Dns(dns.to_ascii_lowercase())),
            GeneralName::IPAddress(bytes) => {
                if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                    names.push(SubjectName::Ip(IpAddr::from(v4)));
                } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                    names.push(SubjectName::Ip(IpAddr::from(v6)));
                }
            }
            _ => {}
        }
    }
    Ok(names)
}

fn parse_x509<'a>(der: &'a [u8], path: &Path) -> anyhow::Result<X509Certificate<'a>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow!("{} is not a valid X.509 certificate: {e}", path.display()))?;
    Ok(cert)
}

fn not_after(cert: &X509Certificate<'_>) -> anyhow::Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
        .map_err(|e| anyhow!("notAfter out of range: {e}"))
}

fn not_before(cert: &X509Certificate<'_>) -> anyhow::Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(cert.validity().not_before.timestamp())
        .map_err(|e| anyhow!("notBefore out of range: {e}"))
}

/// Whether the public key of `key` is the one certified by `cert`.
fn key_matches(key: &KeyPair, cert: &X509Certificate<'_>) -> bool {
    key.der_bytes() == cert.public_key().subject_public_key.data.as_ref()
}

/// The CA as loaded from disk.
struct Ca {
    /// `ca.crt` as written, appended to server certificates as the chain.
    pem: String,
    der: CertificateDer<'static>,
    key: KeyPair,
    not_after: OffsetDateTime,
}

impl Ca {
    fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Self> {
        let pem = fs::read_to_string(cert_path)
            .with_context(|| format!("cannot read the CA certificate {}", cert_path.display()))?;
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| pem_error(e, cert_path, "certificate", CERT_BLOCKS))?;
        let key_pem = fs::read_to_string(key_path)
            .with_context(|| format!("cannot read the CA key {}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| anyhow!("cannot use the CA key {}: {e}", key_path.display()))?;
        let cert = parse_x509(&der, cert_path)?;
        let is_ca = cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            bail!("{} is not a CA certificate", cert_path.display());
        }
        if !key_matches(&key, &cert) {
            bail!(
                "the CA key {} does not match the CA certificate {}",
                key_path.display(),
                cert_path.display()
            );
        }
        let not_after = not_after(&cert).with_context(|| cert_path.display().to_string())?;
        drop(cert);
        Ok(Self {
            pem,
            der,
            key,
            not_after,
        })
    }
}

/// A fresh CA: ECDSA P-256, CA:TRUE with path length 0, keyCertSign and
/// cRLSign. Returns the certificate and key in PEM.
fn create_ca(now: OffsetDateTime) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("cannot generate the CA key")?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let host = hostname().unwrap_or_else(|| "localhost".to_owned());
    dn.push(DnType::CommonName, format!("berth local CA {host}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    let cert = params
        .self_signed(&key)
        .context("cannot create the CA certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Checks the existing server certificate and key: present, parseable,
/// issued by `ca`, matching each other, covering `wanted` and not expiring
/// within [`RENEW_BEFORE`]. Returns its SANs and expiry, or why it must be
/// replaced.
fn check_server(
    cert_path: &Path,
    key_path: &Path,
    ca: &Ca,
    wanted: &[SubjectName],
    now: OffsetDateTime,
) -> Result<(Vec<String>, OffsetDateTime), String> {
    if !cert_path.exists() {
        return Err("no server certificate yet".to_owned());
    }
    let pem = fs::read(cert_path).map_err(|e| format!("cannot read {SERVER_CERT}: {e}"))?;
    let der = CertificateDer::from_pem_slice(&pem)
        .map_err(|e| format!("no usable certificate in {SERVER_CERT}: {e}"))?;
    let cert = parse_x509(&der, cert_path).map_err(|e| format!("{e:#}"))?;
    let names = cert_names(&cert).map_err(|e| format!("{SERVER_CERT}: {e:#}"))?;
    let missing: Vec<String> = wanted
        .iter()
        .filter(|name| !names.contains(name))
        .map(ToString::to_string)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the certificate does not cover {}",
            missing.join(", ")
        ));
    }
    let expires = not_after(&cert).map_err(|e| format!("{e:#}"))?;
    if expires - now < RENEW_BEFORE {
        return Err(format!("the certificate expires on {expires}"));
    }
    let starts = not_before(&cert).map_err(|e| format!("{e:#}"))?;
    if starts > now {
        return Err(format!("the certificate is not valid before {starts}"));
    }
    let ca_cert = parse_x509(&ca.der, Path::new(CA_CERT)).map_err(|e| format!("{e:#}"))?;
    let issued_by_ca = cert.issuer().as_raw() == ca_cert.subject().as_raw()
        && cert.verify_signature(Some(ca_cert.public_key())).is_ok();
    if !issued_by_ca {
        return Err("the certificate was not issued by the current CA".to_owned());
    }
    let key_pem =
        fs::read_to_string(key_path).map_err(|e| format!("cannot read {SERVER_KEY}: {e}"))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| format!("unusable {SERVER_KEY}: {e}"))?;
    if !key_matches(&key, &cert) {
        return Err(format!("{SERVER_KEY} does not match {SERVER_CERT}"));
    }
    Ok((names.iter().map(ToString::to_string).collect(), expires))
}

struct IssuedServer {
    /// Server certificate then CA certificate, PEM.
    chain_pem: String,
    key_pem: String,
    not_after: OffsetDateTime,
}

/// A new server key and certificate from `ca`: ECDSA P-256, CA:FALSE,
/// digitalSignature, serverAuth, SANs `names`; valid for `validity` but
/// never past the CA.
fn issue_server(
    ca: &Ca,
    names: &[SubjectName],
    now: OffsetDateTime,
    validity: time::Duration,
) -> anyhow::Result<IssuedServer> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("cannot generate the server key")?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = names
        .iter()
        .map(SubjectName::to_san)
        .collect::<anyhow::Result<_>>()?;
    let mut dn = DistinguishedName::new();
    if let Some(first) = names.first() {
        dn.push(DnType::CommonName, first.to_string());
    }
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = std::cmp::min(now + validity, ca.not_after);
    let issuer = Issuer::from_ca_cert_der(&ca.der, &ca.key)
        .context("cannot use the CA certificate to issue certificates")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("cannot sign the server certificate")?;
    let mut chain_pem = cert.pem();
    if !chain_pem.ends_with('\n') {
        chain_pem.push('\n');
    }
    chain_pem.push_str(&ca.pem);
    Ok(IssuedServer {
        chain_pem,
        key_pem: key.serialize_pem(),
        not_after: params.not_after,
    })
}

fn exists(path: &Path) -> anyhow::Result<bool> {
    path.try_exists()
        .with_context(|| format!("cannot check {}", path.display()))
}

/// Creates `dir` with mode 0700 (its parents with the default mode) and
/// takes group and other permissions away from an existing one.
fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let meta = fs::metadata(dir).with_context(|| format!("cannot inspect {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {} to mode 0700", dir.display()))?;
    }
    Ok(())
}

/// Replaces `dir/name` atomically: a temporary file in `dir` with `mode`,
/// written and synced, renamed over the target, then the directory synced.
fn write_atomic(dir: &Path, name: &str, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    /// Removes the temporary file unless the rename happened.
    struct Cleanup<'a>(Option<&'a Path>);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            if let Some(path) = self.0 {
                let _ = fs::remove_file(path);
            }
        }
    }

    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", tmp.display())),
    }
    let write = || -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have cleared bits of `mode` (0644 under umask 077).
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()
    };
    let mut cleanup = Cleanup(Some(&tmp));
    write().with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, &target).with_context(|| format!("cannot replace {}", target.display()))?;
    cleanup.0 = None;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync the directory {}", dir.display()))?;
    Ok(())
}

const CERT_BLOCKS: &str = "PEM \"CERTIFICATE\" blocks";
const KEY_BLOCKS: &str = "a PEM \"PRIVATE KEY\" (PKCS#8), \"EC PRIVATE KEY\" (SEC1) or \
                          \"RSA PRIVATE KEY\" (PKCS#1) block";

/// `what` was looked for in `path`; `expected` describes the PEM blocks
/// that would do.
fn pem_error(e: pem::Error, path: &Path, what: &str, expected: &str) -> anyhow::Error {
    match e {
        pem::Error::NoItemsFound => {
            anyhow!("no {what} in {} (expected {expected})", path.display())
        }
        e => anyhow!("{} is not valid PEM: {e}", path.display()),
    }
}

/// The rustls configuration for serving `cert_pem` (the certificate chain,
/// server certificate first) with `key_pem` (PKCS#8, SEC1 or PKCS#1):
/// aws-lc-rs provider, TLS 1.3 and 1.2, no client authentication, ALPN
/// `h2` then `http/1.1`. Fails, naming the file, when a file is unreadable,
/// holds no certificate or key, or the key does not match the certificate.
/// (The servers use [`certified_key`] and [`server_config_with`], whose
/// certificate can be replaced while serving.)
#[cfg(test)]
pub fn server_config(cert_pem: &Path, key_pem: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    server_config_with(CertSlot::new(certified_key(cert_pem, key_pem)?))
}

/// [`server_config`] with the certificate in `slot`, which may be replaced
/// while serving.
pub fn server_config_with(slot: Arc<CertSlot>) -> anyhow::Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("the TLS provider supports neither TLS 1.3 nor TLS 1.2")?
        .with_no_client_auth()
        .with_cert_resolver(slot);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Our suite order, not the client's (OpenSSL lists AES-256 first).
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// aws-lc-rs, with AES-128-GCM preferred (TLS 1.3 first, then 1.2): with
/// AES instructions it moves about 1.5 times the bytes of AES-256-GCM per
/// CPU second (`openssl speed` here: 3.3 against 2.1 GB/s), and image
/// layers are bulk data; 128-bit keys are what TLS's own recommended suite
/// uses. The server's order counts (see [`server_config_with`]).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite as C;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    let rank = |suite: C| match suite {
        C::TLS13_AES_128_GCM_SHA256 => 0,
        C::TLS13_AES_256_GCM_SHA384 => 1,
        C::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
        _ => 4,
    };
    provider.cipher_suites.sort_by_key(|s| rank(s.suite()));
    Arc::new(provider)
}

/// Reads and checks a certificate chain and its key (see [`server_config`]).
pub fn certified_key(cert_pem: &Path, key_pem: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let cert_text = fs::read(cert_pem)
        .with_context(|| format!("cannot read the TLS certificate {}", cert_pem.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e, cert_pem, "certificate", CERT_BLOCKS))?;
    if chain.is_empty() {
        bail!(
            "no certificate in {} (expected {CERT_BLOCKS})",
            cert_pem.display()
        );
    }
    let key_text = fs::read(key_pem)
        .with_context(|| format!("cannot read the TLS key {}", key_pem.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_text)
        .map_err(|e| pem_error(e, key_pem, "private key", KEY_BLOCKS))?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => anyhow!(
            "the TLS key {} does not match the certificate {}",
            key_pem.display(),
            cert_pem.display()
        ),
        e => anyhow!(
            "cannot use the TLS certificate {} with the key {}: {e}",
            cert_pem.display(),
            key_pem.display()
        ),
    })?;
    Ok(Arc::new(certified))
}

/// A self-signed certificate for `localhost` made in memory, never
/// written: what a standby serves when there is no certificate it may read
/// yet. No client trusts it; health probes that skip verification get
/// their answer.
pub fn ephemeral_certified_key() -> anyhow::Result<Arc<CertifiedKey>> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .context("cannot make a temporary certificate")?;
    let key = PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
    let certified = CertifiedKey::from_der(vec![made.cert.der().clone()], key, &provider())
        .context("cannot use the temporary certificate")?;
    Ok(Arc::new(certified))
}

/// The certificate every handshake gets, replaceable while serving: a
/// standby serves a stand-in until it takes over, then the real one (the
/// listeners stay bound). One read lock per handshake.
#[derive(Debug)]
pub struct CertSlot(RwLock<Arc<CertifiedKey>>);

impl CertSlot {
    /// A slot holding `key`.
    pub fn new(key: Arc<CertifiedKey>) -> Arc<CertSlot> {
        Arc::new(CertSlot(RwLock::new(key)))
    }

    /// Serves `key` from the next handshake on.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = key;
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// A listener for `axum::serve` that speaks TLS.
///
/// A background task accepts TCP connections (setting `TCP_NODELAY`) and
/// runs each handshake in its own task, with a 10 s deadline; finished
/// connections come out of [`Listener::accept`] in completion order, so a
/// slow or silent client delays nobody else. Failed handshakes are logged at
/// debug level and dropped. Dropping the listener (as `axum::serve` does on
/// graceful shutdown) stops the background task and closes the socket.
///
/// For `ConnectInfo<SocketAddr>` use [`TlsListener::with_connect_info`]:
/// axum implements `Connected` only for its own listeners and for `TapIo`.
#[derive(Debug)]
pub struct TlsListener {
    tcp: Arc<TcpListener>,
    established: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

/// [`TlsListener`] wrapped so that
/// `Router::into_make_service_with_connect_info::<SocketAddr>()` accepts it.
pub type ConnectInfoTlsListener = TapIo<TlsListener, fn(&mut TlsStream<TcpStream>)>;

impl TlsListener {
    /// Serves TLS with `config` on `tcp`. Must be called inside a Tokio
    /// runtime (it spawns the accept task).
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> Self {
        Self::with_handshake_timeout(tcp, config, HANDSHAKE_TIMEOUT)
    }

    fn with_handshake_timeout(
        tcp: TcpListener,
        config: Arc<ServerConfig>,
        timeout: Duration,
    ) -> Self {
        let tcp = Arc::new(tcp);
        let (tx, established) = mpsc::channel(ESTABLISHED_QUEUE);
        tokio::spawn(accept_loop(
            tcp.clone(),
            TlsAcceptor::from(config),
            timeout,
            tx,
        ));
        Self { tcp, established }
    }

    /// This listener with a no-op `tap_io`, for which axum implements
    /// `Connected`: use it with
    /// `router.into_make_service_with_connect_info::<SocketAddr>()`.
    pub fn with_connect_info(self) -> ConnectInfoTlsListener {
        fn untouched(_: &mut TlsStream<TcpStream>) {}
        self.tap_io(untouched as fn(&mut TlsStream<TcpStream>))
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.established.recv().await {
            Some(connection) => connection,
            None => {
                // Only if the accept task died, which it does not do while
                // this receiver exists.
                tracing::error!("the TLS accept task stopped; no more connections");
                std::future::pending().await
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Accepts TCP connections and spawns a handshake task for each, at most
/// [`MAX_PENDING_HANDSHAKES`] at once, until the [`TlsListener`] is dropped.
async fn accept_loop(
    tcp: Arc<TcpListener>,
    acceptor: TlsAcceptor,
    timeout: Duration,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let permits = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            biased;
            () = tx.closed() => return,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = tx.closed() => return,
            accepted = tcp.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::error!(error = %e, "cannot accept a TCP connection");
                tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        set_nodelay(&stream);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                // An error means the listener is gone; the stream drops.
                Ok(Ok(tls)) => drop(tx.send((tls, peer)).await),
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(
                    %peer,
                    error = %format!("no handshake within {timeout:?}"),
                    "TLS handshake failed"
                ),
            }
        });
    }
}

/// Errors that concern one connection only (as axum's own listener).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

fn set_nodelay(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// A plain TCP listener for `axum::serve` that sets `TCP_NODELAY` on every
/// accepted connection (responses are written in full by hyper, so Nagle's
/// algorithm only adds latency). Works with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn tcp_nodelay_listener(tcp: TcpListener) -> TapIo<TcpListener, fn(&mut TcpStream)> {
    fn nodelay(stream: &mut TcpStream) {
        set_nodelay(stream);
    }
    tcp.tap_io(nodelay as fn(&mut TcpStream))
}

/// What berth prints when it has created its CA: where `ca.crt` is and the
/// commands that make docker, podman/skopeo/buildah, containerd (per
/// `host:port`, for each of `ports`) and the system trust store (curl and most other tools)
/// trust it. IPv6 hosts are bracketed (`[::1]:9001`).
pub fn trust_instructions(ca_cert: &Path, host: &str, ports: &[u16]) -> String {
    let ca = shell_quote(&ca_cert.display().to_string());
    let host = match host.parse::<std::net::Ipv6Addr>() {
        Ok(v6) => format!("[{v6}]"),
        Err(_) => host.to_owned(),
    };
    let mut text = format!(
        "berth serves HTTPS with a certificate from its own local CA. Clients must trust the \
         CA certificate:\n    {ca}\n"
    );
    for port in ports {
        let docker = shell_quote(&format!("/etc/docker/certs.d/{host}:{port}/ca.crt"));
        let containers = shell_quote(&format!("/etc/containers/certs.d/{host}:{port}/ca.crt"));
        let containerd = shell_quote(&format!("/etc/containerd/certs.d/{host}:{port}/ca.crt"));
        text.push_str(&format!(
            "\nFor {host}:{port}:\n  docker:\n    sudo install -D -m 0644 {ca} {docker}\n  \
             podman, skopeo, buildah:\n    sudo install -D -m 0644 {ca} {containers}\n  \
             containerd (Kubernetes nodes; with the CRI plugin's registry config_path = \
             \"/etc/containerd/certs.d\"):\n    sudo install -D -m 0644 {ca} {containerd}\n"
        ));
    }
    text.push_str(&format!(
        "\ncurl and other tools using the system trust store (Debian, Ubuntu):\n    \
         sudo install -D -m 0644 {ca} /usr/local/share/ca-certificates/berth-ca.crt && \
         sudo update-ca-certificates\n"
    ));
    text
}

/// `s` as one shell word: unchanged when it only has safe characters, else
/// single-quoted.
fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:+,=@%".contains(c));
    if safe {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;

    use axum::Router;
    use axum::extract::ConnectInfo;
    use axum::routing::get;
    use rustls::pki_types::ServerName;
    use tokio::io::AsyncReadExt;
    use tokio::sync::oneshot;

    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn read_all(dir: &Path) -> Vec<Vec<u8>> {
        [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY]
            .iter()
            .map(|name| fs::read(dir.join(name)).unwrap())
            .collect()
    }

    /// The certificates of a PEM file, DER.
    fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(path)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn sans(path: &Path) -> Vec<SubjectName> {
        let chain = certs(path);
        let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        cert_names(&cert).unwrap()
    }

    #[test]
    fn generation_creates_four_files_with_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data/tls");
        let tls = ensure_self_signed(&dir, &names(&["localhost", "127.0.0.1"])).unwrap();
        assert!(tls.ca_created && tls.cert_issued);
        assert_eq!(tls.ca_cert, dir.join("ca.crt"));
        assert_eq!(tls.cert, dir.join("server.crt"));
        assert_eq!(tls.key, dir.join("server.key"));
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("ca.crt")), 0o644);
        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        assert_eq!(mode(&dir.join("server.crt")), 0o644);
        assert_eq!(mode(&dir.join("server.key")), 0o600);
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // server.crt: server certificate then the CA.
        let chain = certs(&tls.cert);
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1], certs(&tls.ca_cert)[0]);
        let (_, ca) = x509_parser::parse_x509_certificate(&chain[1]).unwrap();
        let (_, server) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        let cn = ca.subject().iter_common_name().next().unwrap();
        assert!(cn.as_str().unwrap().starts_with("berth local CA "));
        let bc = ca.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        assert!(ca.key_usage().unwrap().unwrap().value.key_cert_sign());
        let ca_years = ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp();
        assert!(ca_years > 9 * 365 * 86400, "{ca_years}");
        assert!(!server.basic_constraints().unwrap().unwrap().value.ca);
        assert!(
            server
                .extended_key_usage()
                .unwrap()
                .unwrap()
                .value
                .server_auth
        );
        let days = (server.validity().not_after.timestamp()
            - server.validity().not_before.timestamp())
            / 86400;
        assert!((700..=825).contains(&days), "{days} days");
        assert_eq!(server.issuer().as_raw(), ca.subject().as_raw());
        server.verify_signature(Some(ca.public_key())).unwrap();
        // ECDSA P-256 keys.
        for key in [&tls.key, &dir.join("ca.key")] {
            let key = KeyPair::from_pem(&fs::read_to_string(key).unwrap()).unwrap();
            assert!(key.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256));
        }
    }

    #[test]
    fn sans_cover_dns_names_and_ip_addresses() {
        let tmp = tempfile::tempdir().unwrap();
        let wanted = names(&[
            "Berth.Example.",
            "localhost",
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "berth.example",
            "[0::1]",
        ]);
        let tls = ensure_self_signed(tmp.path(), &wanted).unwrap();
        let expected = vec![
            SubjectName::Dns("berth.example".into()),
            SubjectName::Dns("localhost".into()),
            SubjectName::Ip("127.0.0.1".parse().unwrap()),
            SubjectName::Ip("::1".parse().unwrap()),
            SubjectName::Ip("10.1.2.3".parse().unwrap()),
        ];
        assert_eq!(sans(&tls.cert), expected);
        assert_eq!(
            tls.names,
            names(&["berth.example", "localhost", "127.0.0.1", "::1", "10.1.2.3"])
        );
    }

    #[test]
    fn bad_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["registry.example:5000", "", "a b", "ré.example", "a..b"] {
            let err = ensure_self_signed(tmp.path(), &names(&[bad])).unwrap_err();
            assert!(
                format!("{err:#}").contains("neither an IP address"),
                "{err:#}"
            );
        }
    }

    #[test]
    fn second_call_reuses_the_files() {
        let tmp = tempfile::tempdir().unwrap();
        let wanted = names(&["localhost", "127.0.0.1", "::1"]);
        let first = ensure_self_signed(tmp.path(), &wanted).unwrap();
        let before = read_all(tmp.path());
        let second = ensure_self_signed(tmp.path(), &wanted).unwrap();
        assert!(!second.ca_created && !second.cert_issued);
        assert_eq!(read_all(tmp.path()), before);
        assert_eq!(second.names, first.names);
        assert_eq!(second.not_after, first.not_after);
        // A subset of the names is covered too.
        let third = ensure_self_signed(tmp.path(), &names(&["LOCALHOST"])).unwrap();
        assert!(!third.ca_created && !third.cert_issued);
        assert_eq!(third.names, first.names);
    }

    #[test]
    fn new_name_renews_the_server_cert_and_keeps_the_ca() {
        let tmp = tempfile::tempdir().unwrap();
        ensure_self_signed(tmp.path(), &names(&["localhost"])).unwrap();
        let before = read_all(tmp.path());
        let renewed =
            ensure_self_signed(tmp.path(), &names(&["localhost", "berth.example"])).unwrap();
        assert!(renewed.cert_issued && !renewed.ca_created);
        let after = read_all(tmp.path());
        assert_eq!(after[0], before[0], "ca.crt changed");
        assert_eq!(after[1], before[1], "ca.key changed");
        assert_ne!(after[2], before[2], "server.crt unchanged");
        assert_ne!(after[3], before[3], "server.key unchanged");
        assert!(sans(&renewed.cert).contains(&SubjectName::Dns("berth.example".into())));
        // Still issued by the same CA.
        let chain = certs(&renewed.cert);
        let ca_der = certs(&renewed.ca_cert).remove(0);
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let (_, server) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        server.verify_signature(Some(ca.public_key())).unwrap();
        server_config(&renewed.cert, &renewed.key).unwrap();
    }

    #[test]
    fn expiring_cert_is_renewed() {
        let tmp = tempfile::tempdir().unwrap();
        let wanted = names(&["localhost"]);
        let now = OffsetDateTime::now_utc();
        let short = ensure_at(tmp.path(), &wanted, now, time::Duration::days(10)).unwrap();
        assert!(short.not_after < now + RENEW_BEFORE);
        let ca_before = fs::read(&short.ca_cert).unwrap();
        let renewed = ensure_self_signed(tmp.path(), &wanted).unwrap();
        assert!(renewed.cert_issued && !renewed.ca_created);
        assert!(renewed.not_after > now + time::Duration::days(700));
        assert_eq!(fs::read(&renewed.ca_cert).unwrap(), ca_before);
        // And a long-valid one is kept at a later date.
        let later = ensure_at(
            tmp.path(),
            &wanted,
            now + time::Duration::days(600),
            SERVER_VALIDITY,
        )
        .unwrap();
        assert!(!later.ca_created && !later.cert_issued);
        let near_end = ensure_at(
            tmp.path(),
            &wanted,
            now + time::Duration::days(710),
            SERVER_VALIDITY,
        )
        .unwrap();
        assert!(near_end.cert_issued);
    }

    #[test]
    fn unusable_server_files_are_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let wanted = names(&["localhost"]);
        ensure_self_signed(tmp.path(), &wanted).unwrap();
        fs::write(tmp.path().join(SERVER_CERT), "garbage").unwrap();
        assert!(ensure_self_signed(tmp.path(), &wanted).unwrap().cert_issued);
        fs::remove_file(tmp.path().join(SERVER_KEY)).unwrap();
        assert!(ensure_self_signed(tmp.path(), &wanted).unwrap().cert_issued);
        // A server certificate from another CA.
        let other = tempfile::tempdir().unwrap();
        ensure_self_signed(other.path(), &wanted).unwrap();
        for name in [SERVER_CERT, SERVER_KEY] {
            fs::copy(other.path().join(name), tmp.path().join(name)).unwrap();
        }
        let fixed = ensure_self_signed(tmp.path(), &wanted).unwrap();
        assert!(fixed.cert_issued && !fixed.ca_created);
        server_config(&fixed.cert, &fixed.key).unwrap();
    }

    #[test]
    fn missing_ca_key_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        ensure_self_signed(tmp.path(), &names(&["localhost"])).unwrap();
        fs::remove_file(tmp.path().join(CA_KEY)).unwrap();
        let err = ensure_self_signed(tmp.path(), &names(&["localhost"])).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("ca.key") && msg.contains("missing"), "{msg}");
        assert!(!tmp.path().join(CA_KEY).exists());
    }

    #[test]
    fn default_names_include_host_and_loopback_once() {
        let got = default_names(&names(&["LOCALHOST", "berth.example", "::1", "0:0::1"]));
        assert_eq!(got.iter().filter(|n| *n == "localhost").count(), 1);
        assert_eq!(got.iter().filter(|n| *n == "::1").count(), 1);
        for name in ["localhost", "127.0.0.1", "::1", "berth.example"] {
            assert!(got.contains(&name.to_owned()), "{got:?}");
        }
        if let Some(host) = hostname() {
            assert_eq!(got[0], host);
        }
    }

    #[test]
    fn trust_instructions_name_every_port() {
        let text = trust_instructions(Path::new("/var/lib/berth/tls/ca.crt"), "::1", &[9000, 9001]);
        assert!(text.contains("/var/lib/berth/tls/ca.crt"));
        assert!(text.contains(
            "sudo install -D -m 0644 /var/lib/berth/tls/ca.crt '/etc/docker/certs.d/[::1]:9001/ca.crt'"
        ));
        assert!(text.contains("'/etc/containers/certs.d/[::1]:9000/ca.crt'"));
        assert!(text.contains(
            "sudo install -D -m 0644 /var/lib/berth/tls/ca.crt '/etc/containerd/certs.d/[::1]:9001/ca.crt'"
        ));
        assert!(text.contains(
            "/usr/local/share/ca-certificates/berth-ca.crt && sudo update-ca-certificates"
        ));
        let text = trust_instructions(Path::new("/my data/ca.crt"), "reg.example", &[443]);
        assert!(text.contains(
            "sudo install -D -m 0644 '/my data/ca.crt' /etc/docker/certs.d/reg.example:443/ca.crt"
        ));
    }

    #[test]
    fn server_config_accepts_the_generated_pair() {
        let tmp = tempfile::tempdir().unwrap();
        let tls = ensure_self_signed(tmp.path(), &names(&["localhost"])).unwrap();
        let config = server_config(&tls.cert, &tls.key).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn server_config_refuses_bad_files() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let a = ensure_self_signed(a.path(), &names(&["localhost"])).unwrap();
        let b = ensure_self_signed(b.path(), &names(&["localhost"])).unwrap();
        let err = format!("{:#}", server_config(&a.cert, &b.key).unwrap_err());
        assert!(err.contains("does not match"), "{err}");
        assert!(err.contains(&b.key.display().to_string()), "{err}");

        let missing = a.cert.with_file_name("nope.crt");
        let err = format!("{:#}", server_config(&missing, &a.key).unwrap_err());
        assert!(err.contains(&missing.display().to_string()), "{err}");
        // A key where the certificate should be, and the reverse.
        let err = format!("{:#}", server_config(&a.key, &a.key).unwrap_err());
        assert!(err.contains("no certificate in"), "{err}");
        let err = format!("{:#}", server_config(&a.cert, &a.cert).unwrap_err());
        assert!(err.contains("no private key in"), "{err}");
    }

    #[test]
    fn server_config_reads_sec1_and_pkcs1_keys() {
        let tmp = tempfile::tempdir().unwrap();
        // SEC1 ("EC PRIVATE KEY") and PKCS#1 ("RSA PRIVATE KEY") from openssl,
        // certificates from rcgen.
        for (kind, args) in [
            (
                "ec",
                &["ecparam", "-name", "prime256v1", "-genkey", "-noout"][..],
            ),
            ("rsa", &["genrsa", "-traditional", "2048"][..]),
        ] {
            let Ok(out) = std::process::Command::new("openssl").args(args).output() else {
                eprintln!("openssl not installed: skipping");
                return;
            };
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let pem = String::from_utf8(out.stdout).unwrap();
            assert!(pem.contains(if kind == "ec" {
                "BEGIN EC PRIVATE KEY"
            } else {
                "BEGIN RSA PRIVATE KEY"
            }));
            let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
            let key = KeyPair::try_from(&der).unwrap();
            let cert = CertificateParams::new(names(&["localhost"]))
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let cert_path = tmp.path().join(format!("{kind}.crt"));
            let key_path = tmp.path().join(format!("{kind}.key"));
            fs::write(&cert_path, cert.pem()).unwrap();
            fs::write(&key_path, &pem).unwrap();
            server_config(&cert_path, &key_path).unwrap();
        }
    }

    /// A TLS server on 127.0.0.1 answering `/` with the peer address it
    /// saw; stops when the sender is dropped or fired.
    struct TestServer {
        addr: SocketAddr,
        tls: GeneratedTls,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    async fn serve(handshake_timeout: Duration) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let tls = ensure_self_signed(dir.path(), &names(&["localhost", "127.0.0.1"])).unwrap();
        let config = server_config(&tls.cert, &tls.key).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = if handshake_timeout == HANDSHAKE_TIMEOUT {
            TlsListener::new(tcp, config)
        } else {
            TlsListener::with_handshake_timeout(tcp, config, handshake_timeout)
        };
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route(
            "/",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(
                listener.with_connect_info(),
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        TestServer {
            addr,
            tls,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    fn trusting_client(ca_cert: &Path) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&fs::read(ca_cert).unwrap()).unwrap();
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn https_over_loopback_with_the_ca() {
        let server = serve(HANDSHAKE_TIMEOUT).await;
        let client = trusting_client(&server.tls.ca_cert);
        let port = server.addr.port();
        for url in [
            format!("https://127.0.0.1:{port}/"),
            format!("https://localhost:{port}/"),
        ] {
            let response = client.get(&url).send().await.unwrap();
            assert!(response.status().is_success(), "{url}");
            let peer: SocketAddr = response.text().await.unwrap().parse().unwrap();
            assert_eq!(peer.ip(), IpAddr::from([127, 0, 0, 1]));
        }

        let untrusting = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        assert!(
            untrusting
                .get(format!("https://127.0.0.1:{port}/"))
                .send()
                .await
                .is_err()
        );
        // Plain HTTP on the TLS port gets nowhere either.
        let plain = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        assert!(
            plain
                .get(format!("http://127.0.0.1:{port}/"))
                .send()
                .await
                .is_err()
        );
    }

    async fn rustls_handshake(
        addr: SocketAddr,
        ca_cert: &Path,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certs(ca_cert).remove(0)).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn tls13_and_tls12_negotiate_h2() {
        let server = serve(HANDSHAKE_TIMEOUT).await;
        // The client (rustls' default order) prefers AES-256; the server's
        // order wins: AES-128-GCM.
        for (versions, expected, suite) in [
            (
                &[&rustls::version::TLS13][..],
                rustls::ProtocolVersion::TLSv1_3,
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            ),
            (
                &[&rustls::version::TLS12][..],
                rustls::ProtocolVersion::TLSv1_2,
                rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ),
        ] {
            let tls = rustls_handshake(server.addr, &server.tls.ca_cert, versions).await;
            let (_, connection) = tls.get_ref();
            assert_eq!(connection.protocol_version(), Some(expected));
            assert_eq!(connection.alpn_protocol(), Some(&b"h2"[..]));
            assert_eq!(
                connection.negotiated_cipher_suite().map(|s| s.suite()),
                Some(suite)
            );
        }
    }

    #[tokio::test]
    async fn tls11_is_refused() {
        let server = serve(HANDSHAKE_TIMEOUT).await;
        let connect = server.addr.to_string();
        let s_client = |version: &'static str| {
            let connect = connect.clone();
            tokio::task::spawn_blocking(move || {
                std::process::Command::new("openssl")
                    .args(["s_client", "-connect", &connect, version])
                    // Let OpenSSL 3 offer TLS 1.1 at all.
                    .args(["-cipher", "DEFAULT:@SECLEVEL=0"])
                    .stdin(std::process::Stdio::null())
                    .output()
            })
        };
        let Ok(tls12) = s_client("-tls1_2").await.unwrap() else {
            eprintln!("openssl not installed: skipping");
            return;
        };
        let text = String::from_utf8_lossy(&tls12.stdout);
        assert!(tls12.status.success(), "{text}");
        assert!(text.contains("TLSv1.2"), "{text}");
        let tls11 = s_client("-tls1_1").await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&tls11.stdout);
        let errors = String::from_utf8_lossy(&tls11.stderr);
        assert!(!tls11.status.success(), "{text}");
        assert!(text.contains("Cipher is (NONE)"), "{text}");
        // rustls answers a TLS 1.1-only ClientHello with a fatal alert
        // (handshake_failure); the same command with -tls1_2 succeeded above.
        assert!(errors.contains("alert"), "{errors}");
    }

    #[tokio::test]
    async fn silent_client_does_not_block_others() {
        let server = serve(HANDSHAKE_TIMEOUT).await;
        let _silent = TcpStream::connect(server.addr).await.unwrap();
        let _half = {
            // And one that sent half a record header.
            let mut s = TcpStream::connect(server.addr).await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut s, &[0x16, 0x03])
                .await
                .unwrap();
            s
        };
        let start = Instant::now();
        let client = trusting_client(&server.tls.ca_cert);
        let response = client
            .get(format!("https://127.0.0.1:{}/", server.addr.port()))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn silent_client_is_dropped_after_the_handshake_timeout() {
        let server = serve(Duration::from_millis(300)).await;
        let mut silent = TcpStream::connect(server.addr).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
            .await
            .expect("the server kept a silent connection open");
        // EOF or reset: the server closed it.
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    #[tokio::test]
    async fn graceful_shutdown_closes_the_socket() {
        let mut server = serve(HANDSHAKE_TIMEOUT).await;
        let client = trusting_client(&server.tls.ca_cert);
        let url = format!("https://127.0.0.1:{}/", server.addr.port());
        assert!(client.get(&url).send().await.unwrap().status().is_success());
        drop(client);
        server.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), &mut server.task)
            .await
            .expect("serve did not stop")
            .unwrap();
        // The accept task notices the dropped listener and closes the socket.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if TcpStream::connect(server.addr).await.is_err() {
                break;
            }
            assert!(Instant::now() < deadline, "still accepting after shutdown");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn tcp_nodelay_listener_serves_with_connect_info() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let router = Router::new().route(
            "/",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        tokio::spawn(async move {
            axum::serve(
                tcp_nodelay_listener(tcp),
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        let body = reqwest::get(format!("http://{addr}/"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.starts_with("127.0.0.1:"), "{body}");
    }
}
