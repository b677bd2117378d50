//! Token signing keys: generation, durable storage in the data directory,
//! rotation, the published key set (JWKS) and the certificate bundle a
//! Docker Distribution registry trusts.
//!
//! These keys are not the TLS keys. Each key lives in one file,
//! `<dir>/<kid>.json` (mode 0600, written to a temp file, fsynced, renamed,
//! directory fsynced), holding the PKCS#8 private key, a self-signed
//! certificate for it and two times: when it was created (from then on it is
//! published) and when it starts signing. A key file never changes after it
//! is written, so the set of file names is the whole state: an active and a
//! standby instance on the same replicated filesystem, or a `berth keys
//! rotate` run beside the server, agree on every decision by reading the
//! directory.
//!
//! The `kid` is the RFC 7638 JWK thumbprint of the public key, which is how
//! Distribution 3.x finds a key in its bundle or JWKS; tokens also carry the
//! certificate in `x5c`, which is what Distribution 2.8 verifies against its
//! `rootcertbundle`.
//!
//! Life of a key, in unix seconds:
//! - `created`: published (in [`KeyStore::jwks`] and
//!   [`KeyStore::export_bundle`]).
//! - `activates` = `created` + publish delay: signs from then on, until a
//!   newer key activates. The first key of an empty store activates at once:
//!   nobody can have cached a key set yet.
//! - retired once the next key has been signing for longer than the longest
//!   token lifetime plus leeway: no token it signed can still be valid. It
//!   leaves the key set at that moment and its file is deleted by the next
//!   [`KeyStore::rotate`] or [`KeyStore::prune`].

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::Header;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::durable::{self, WriteError};

/// How long a key's certificate is valid. Distribution 2.8 checks the
/// validity dates of the `x5c` chain, so this outlives any key.
const CERT_VALIDITY: Duration = Duration::from_secs(10 * 366 * 24 * 3600);
/// How far back a certificate's `notBefore` is set, for verifiers whose
/// clock is behind ours.
const CERT_BACKDATE: Duration = Duration::from_secs(3600);
/// How often the key directory is re-read for keys written by another
/// process (`berth keys rotate`, the other node of a pair).
const RESCAN_INTERVAL: Duration = Duration::from_secs(1);
/// The file format version written into each key file.
const FORMAT: u32 = 1;

/// The signature algorithm of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit keys.
    #[default]
    #[serde(rename = "RS256")]
    Rs256,
    /// ECDSA on P-256 with SHA-256, raw `r||s` signatures (JWS), never DER.
    #[serde(rename = "ES256")]
    Es256,
}

impl Algorithm {
    /// The JWS name: `RS256` or `ES256`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Es256 => "ES256",
        }
    }

    fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::Es256 => jsonwebtoken::Algorithm::ES256,
        }
    }

    fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Algorithm::Rs256 => &rcgen::PKCS_RSA_SHA256,
            Algorithm::Es256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = KeyError;

    /// Parses `RS256` or `ES256` (case-insensitive).
    fn from_str(s: &str) -> Result<Algorithm, KeyError> {
        match s.to_ascii_uppercase().as_str() {
            "RS256" => Ok(Algorithm::Rs256),
            "ES256" => Ok(Algorithm::Es256),
            _ => Err(KeyError::UnknownAlgorithm(s.to_owned())),
        }
    }
}

/// Why a key could not be created, loaded, stored or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key storage {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("key file {path} is unusable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot generate a signing key: {0}")]
    Generate(String),
    #[error("unknown signing algorithm {0:?} (expected RS256 or ES256)")]
    UnknownAlgorithm(String),
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("the key store holds no signing key")]
    NoSigningKey,
}

impl From<WriteError> for KeyError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Random => KeyError::Generate("no randomness".into()),
            WriteError::Io { path, source } => KeyError::Io { path, source },
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How a [`KeyStore`] creates and retires keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyOptions {
    /// The algorithm of new keys. Existing keys keep theirs: a change takes
    /// effect with the next rotation.
    pub algorithm: Algorithm,
    /// How long a rotated-in key is published before it signs, so that
    /// verifiers caching the key set learn it first.
    pub publish_delay: Duration,
    /// The longest lifetime of a token signed by these keys. A
    /// [`crate::token::TokenIssuer`] raises it to its own lifetime if that is
    /// longer.
    pub token_lifetime: Duration,
    /// Clock skew a verifier tolerates on `exp` (Distribution: 60 s).
    pub leeway: Duration,
}

impl Default for KeyOptions {
    fn default() -> KeyOptions {
        KeyOptions {
            algorithm: Algorithm::Rs256,
            publish_delay: Duration::from_secs(60),
            token_lifetime: Duration::from_secs(300),
            leeway: Duration::from_secs(60),
        }
    }
}

/// What a key file holds. Never `Debug`: it contains the private key.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    format: u32,
    kid: String,
    alg: Algorithm,
    /// Unix seconds: published from then on.
    created: u64,
    /// Unix seconds: signs from then on (until a newer key activates).
    activates: u64,
    /// PEM, one certificate.
    certificate: String,
    /// PEM, PKCS#8.
    private_key: String,
}

/// A loaded key: what it takes to sign with it and to publish it.
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    created: u64,
    activates: u64,
    encoding: Signer,
    /// The JWS header, base64url, made on first use: it never changes.
    header_b64: std::sync::OnceLock<String>,
    /// Public JWK (`kty`, `n`/`e` or `crv`/`x`/`y`), without `kid` etc.
    public_jwk: Value,
    cert_der: Vec<u8>,
    cert_pem: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("created", &self.created)
            .field("activates", &self.activates)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// The key ID: RFC 7638 thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key's signature algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// When the key was published.
    pub fn created(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.created)
    }

    /// When the key starts (or started) signing.
    pub fn activates(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.activates)
    }

    /// The key's self-signed certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The public key as a JWK with `kid`, `alg`, `use` and `x5c`.
    pub fn jwk(&self) -> Value {
        let mut jwk = self.public_jwk.clone();
        if let Value::Object(map) = &mut jwk {
            map.insert("kid".into(), Value::String(self.kid.clone()));
            map.insert("alg".into(), Value::String(self.alg.as_str().into()));
            map.insert("use".into(), Value::String("sig".into()));
            map.insert("x5c".into(), json!([STANDARD.encode(&self.cert_der)]));
        }
        jwk
    }

    /// The JWT header a token signed by this key carries: `alg`, `typ`,
    /// `kid` and `x5c` (this key's certificate, standard base64 DER).
    pub fn header(&self) -> Header {
        let mut header = Header::new(self.alg.jwt());
        header.kid = Some(self.kid.clone());
        header.x5c = Some(vec![STANDARD.encode(&self.cert_der)]);
        header
    }

    /// Signs `claims` as a compact JWS with [`SigningKey::header`].
    ///
    /// The key pair is parsed once, when the key is loaded: going through
    /// `jsonwebtoken::encode` re-parsed and re-validated the RSA private key
    /// on every token, which cost more than the signature itself.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, KeyError> {
        let sign_err = |e: &dyn fmt::Display| KeyError::Sign(e.to_string());
        if self.header_b64.get().is_none() {
            let header = serde_json::to_vec(&self.header()).map_err(|e| sign_err(&e))?;
            let _ = self.header_b64.set(URL_SAFE_NO_PAD.encode(header));
        }
        let header = self
            .header_b64
            .get()
            .ok_or_else(|| KeyError::Sign("no header".into()))?;
        let claims = serde_json::to_vec(claims).map_err(|e| sign_err(&e))?;
        let mut jws = header.clone();
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(claims));
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signature = match &self.encoding {
            Signer::Rsa(pair) => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &rng,
                    jws.as_bytes(),
                    &mut sig,
                )
                .map_err(|e| sign_err(&e))?;
                sig
            }
            Signer::Ecdsa(pair) => pair
                .sign(&rng, jws.as_bytes())
                .map_err(|e| sign_err(&e))?
                .as_ref()
                .to_vec(),
        };
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(jws)
    }
}

/// RFC 7638 JWK thumbprint: base64url (no padding) of the SHA-256 of the
/// canonical JSON of the required members (`e`, `kty`, `n` for RSA; `crv`,
/// `kty`, `x`, `y` for EC), in lexicographic order, without whitespace.
/// `None` for a JWK of another or an incomplete kind.
pub fn jwk_thumbprint(jwk: &Value) -> Option<String> {
    let member = |k: &str| jwk.get(k).and_then(Value::as_str);
    // serde_json's Map is ordered by key (no preserve_order feature), and
    // the compact writer emits no whitespace: exactly RFC 7638's form.
    let canonical = match member("kty")? {
        "RSA" => json!({"e": member("e")?, "kty": "RSA", "n": member("n")?}),
        "EC" => json!({"crv": member("crv")?, "kty": "EC", "x": member("x")?, "y": member("y")?}),
        _ => return None,
    };
    let canonical = serde_json::to_string(&canonical).ok()?;
    let hash = digest::digest(&digest::SHA256, canonical.as_bytes());
    Some(URL_SAFE_NO_PAD.encode(hash.as_ref()))
}

/// Decodes the first PEM block labelled `label`.
fn pem_decode(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let body: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD.decode(body).ok()
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A parsed private key, ready to sign. Never `Debug`.
enum Signer {
    Rsa(RsaKeyPair),
    /// P-256, fixed-length `r||s` signatures (JWS), never DER.
    Ecdsa(EcdsaKeyPair),
}

/// The public JWK members, the SubjectPublicKeyInfo DER and the signer of
/// a PKCS#8 private key, checked to be of `alg`.
fn parse_private_key(alg: Algorithm, pkcs8: &[u8]) -> Result<(Value, Vec<u8>, Signer), String> {
    match alg {
        Algorithm::Rs256 => {
            let pair = RsaKeyPair::from_pkcs8(pkcs8).map_err(|e| format!("not an RSA key: {e}"))?;
            if pair.public_modulus_len() < 256 {
                return Err("RSA key shorter than 2048 bits".into());
            }
            let public = pair.public_key();
            let jwk = json!({
                "kty": "RSA",
                "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
            });
            let spki = public
                .as_der()
                .map_err(|_| "cannot encode the public key")?;
            let spki = spki.as_ref().to_vec();
            Ok((jwk, spki, Signer::Rsa(pair)))
        }
        Algorithm::Es256 => {
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
                .map_err(|e| format!("not a P-256 key: {e}"))?;
            let point = pair.public_key().as_ref();
            // Uncompressed SEC1 point: 0x04 || x || y.
            if point.len() != 65 || point[0] != 4 {
                return Err("unexpected P-256 public key encoding".into());
            }
            let jwk = json!({
                "kty": "EC",
                "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..]),
            });
            let spki = pair
                .public_key()
                .as_der()
                .map_err(|_| "cannot encode the public key")?;
            let spki = spki.as_ref().to_vec();
            Ok((jwk, spki, Signer::Ecdsa(pair)))
        }
    }
}

impl SigningKey {
    /// Loads and checks a key file: the key is of the stated algorithm, the
    /// `kid` is its thumbprint and matches the file name, the certificate is
    /// for this key.
    fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let corrupt = |reason: String| KeyError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let raw = fs::read(path).map_err(io_err(path))?;
        let file: KeyFile = serde_json::from_slice(&raw).map_err(|e| corrupt(e.to_string()))?;
        if file.format != FORMAT {
            return Err(corrupt(format!("unknown format {}", file.format)));
        }
        let pkcs8 = pem_decode(&file.private_key, "PRIVATE KEY")
            .ok_or_else(|| corrupt("private_key is not a PKCS#8 PEM".into()))?;
        let (public_jwk, spki, encoding) = parse_private_key(file.alg, &pkcs8).map_err(corrupt)?;
        let kid = jwk_thumbprint(&public_jwk)
            .ok_or_else(|| corrupt("cannot compute the key's thumbprint".into()))?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if kid != file.kid || kid != stem {
            return Err(corrupt(format!("kid {kid} does not match the file")));
        }
        let cert_der = pem_decode(&file.certificate, "CERTIFICATE")
            .ok_or_else(|| corrupt("certificate is not a PEM certificate".into()))?;
        // The DER certificate embeds the SubjectPublicKeyInfo verbatim.
        if !cert_der.windows(spki.len()).any(|w| w == spki) {
            return Err(corrupt("the certificate is not for this key".into()));
        }
        Ok(SigningKey {
            kid,
            alg: file.alg,
            created: file.created,
            activates: file.activates,
            encoding,
            header_b64: std::sync::OnceLock::new(),
            public_jwk,
            cert_pem: pem_encode("CERTIFICATE", &cert_der),
            cert_der,
        })
    }

    /// Generates a key and its self-signed certificate.
    fn generate(
        alg: Algorithm,
        created: u64,
        activates: u64,
    ) -> Result<(SigningKey, KeyFile), KeyError> {
        let generr = |e: &dyn fmt::Display| KeyError::Generate(e.to_string());
        let pair = rcgen::KeyPair::generate_for(alg.rcgen()).map_err(|e| generr(&e))?;
        let pkcs8 = pair.serialize_der();
        let (public_jwk, _, encoding) = parse_private_key(alg, &pkcs8).map_err(|e| generr(&e))?;
        let kid = jwk_thumbprint(&public_jwk).ok_or_else(|| generr(&"no thumbprint"))?;

        let mut params = rcgen::CertificateParams::default();
        let mut name = rcgen::DistinguishedName::new();
        name.push(
            rcgen::DnType::CommonName,
            format!("berth token signer {kid}"),
        );
        params.distinguished_name = name;
        let secs = |t: u64| {
            time::OffsetDateTime::from_unix_timestamp(i64::try_from(t).unwrap_or(i64::MAX))
                .map_err(|e| generr(&e))
        };
        params.not_before = secs(created.saturating_sub(CERT_BACKDATE.as_secs()))?;
        params.not_after = secs(created + CERT_VALIDITY.as_secs())?;
        let mut serial = [0u8; 16];
        SystemRandom::new()
            .fill(&mut serial)
            .map_err(|_| generr(&"no randomness"))?;
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&pair).map_err(|e| generr(&e))?;
        let cert_der = cert.der().to_vec();
        let cert_pem = pem_encode("CERTIFICATE", &cert_der);

        let file = KeyFile {
            format: FORMAT,
            kid: kid.clone(),
            alg,
            created,
            activates,
            certificate: cert_pem.clone(),
            private_key: pem_encode("PRIVATE KEY", &pkcs8),
        };
        let key = SigningKey {
            kid,
            alg,
            created,
            activates,
            encoding,
            header_b64: std::sync::OnceLock::new(),
            public_jwk,
            cert_der,
            cert_pem,
        };
        Ok((key, file))
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn fsync_dir(dir: &Path) -> Result<(), KeyError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// The keys known, ordered by when they start signing.
#[derive(Default)]
struct State {
    /// File name -> key.
    keys: BTreeMap<String, Arc<SigningKey>>,
    last_scan: Option<Instant>,
}

impl State {
    /// Keys in signing order: by activation, then kid (a tie is possible
    /// only if two processes created keys in the same second).
    fn ordered(&self) -> Vec<&Arc<SigningKey>> {
        let mut keys: Vec<_> = self.keys.values().collect();
        keys.sort_by(|a, b| (a.activates, &a.kid).cmp(&(b.activates, &b.kid)));
        keys
    }
}

/// The signing keys under one directory. `Send + Sync`: share it in an
/// `Arc`. Keys written by another process are picked up within a second.
pub struct KeyStore {
    dir: PathBuf,
    options: KeyOptions,
    /// Longest token lifetime any issuer announced, in seconds.
    token_lifetime: AtomicU64,
    state: RwLock<State>,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<String> = self
            .state
            .read()
            .map(|s| s.keys.values().map(|k| k.kid.clone()).collect())
            .unwrap_or_default();
        f.debug_struct("KeyStore")
            .field("dir", &self.dir)
            .field("options", &self.options)
            .field("kids", &kids)
            .finish()
    }
}

/// The outcome of [`KeyStore::rotate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The new key's ID; it is published now.
    pub kid: String,
    /// When the new key starts signing.
    pub activates: SystemTime,
    /// Keys retired (removed from the key set and deleted).
    pub retired: Vec<String>,
}

impl KeyStore {
    /// Opens the key directory `dir` (created with mode 0700 if missing),
    /// loading its keys; an empty directory gets a first key of
    /// `options.algorithm`, signing at once. Existing keys are never
    /// regenerated. A key file that does not load is an error here (and
    /// skipped with a warning by later rescans).
    pub fn open(dir: &Path, options: KeyOptions) -> Result<KeyStore, KeyError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
        let store = KeyStore {
            dir: dir.to_owned(),
            options,
            token_lifetime: AtomicU64::new(options.token_lifetime.as_secs()),
            state: RwLock::new(State::default()),
        };
        {
            let mut state = store.write_state();
            store.scan(&mut state, true)?;
            if state.keys.is_empty() {
                let now = unix_secs(SystemTime::now());
                store.add_key(&mut state, now, now)?;
                tracing::info!(dir = %dir.display(), alg = %options.algorithm, "generated a first token signing key");
            }
        }
        Ok(store)
    }

    /// The options the store was opened with.
    pub fn options(&self) -> KeyOptions {
        self.options
    }

    /// The directory the keys live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Raises the token lifetime that retirement waits for to `lifetime`
    /// if it is longer. [`crate::token::TokenIssuer::new`] calls this.
    pub fn note_token_lifetime(&self, lifetime: Duration) {
        self.token_lifetime
            .fetch_max(lifetime.as_secs(), Ordering::Relaxed);
    }

    /// How long after a key stops signing it stays published.
    fn retention(&self) -> u64 {
        self.token_lifetime.load(Ordering::Relaxed) + self.options.leeway.as_secs()
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while holding the lock leaves the state consistent (every
        // mutation is a single insert or remove), so poisoning is ignored.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the directory: loads new key files, forgets deleted ones.
    /// `strict`: a key file that does not load is an error (else a warning).
    fn scan(&self, state: &mut State, strict: bool) -> Result<(), KeyError> {
        state.last_scan = Some(Instant::now());
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".json") && !name.starts_with('.') {
                names.push(name.to_owned());
            }
        }
        state.keys.retain(|name, _| names.contains(name));
        for name in names {
            if state.keys.contains_key(&name) {
                continue;
            }
            match SigningKey::load(&self.dir.join(&name)) {
                Ok(key) => {
                    tracing::debug!(kid = %key.kid, "loaded token signing key");
                    state.keys.insert(name, Arc::new(key));
                }
                // Deleted between listing and reading: retired meanwhile.
                Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) if strict => return Err(e),
                Err(e) => tracing::warn!(error = %e, "skipping a token signing key"),
            }
        }
        Ok(())
    }

    /// Rescans the directory if the last scan is older than a second.
    fn refresh(&self) {
        let due = self
            .read_state()
            .last_scan
            .is_none_or(|t| t.elapsed() >= RESCAN_INTERVAL);
        if due {
            let mut state = self.write_state();
            if state
                .last_scan
                .is_none_or(|t| t.elapsed() >= RESCAN_INTERVAL)
                && let Err(e) = self.scan(&mut state, false)
            {
                tracing::warn!(error = %e, "cannot re-read the token signing keys");
            }
        }
    }

    /// Re-reads the key directory now, e.g. after another process rotated.
    pub fn reload(&self) -> Result<(), KeyError> {
        let mut state = self.write_state();
        self.scan(&mut state, false)
    }

    fn add_key(
        &self,
        state: &mut State,
        created: u64,
        activates: u64,
    ) -> Result<Arc<SigningKey>, KeyError> {
        let (key, file) = SigningKey::generate(self.options.algorithm, created, activates)?;
        let json =
            serde_json::to_vec_pretty(&file).map_err(|e| KeyError::Generate(e.to_string()))?;
        let name = format!("{}.json", key.kid);
        durable::replace_file(&self.dir.join(&name), &json)?;
        let key = Arc::new(key);
        state.keys.insert(name, Arc::clone(&key));
        Ok(key)
    }

    /// Which keys are retired at `now` (file name and kid).
    fn retired(&self, state: &State, now: u64) -> Vec<(String, String)> {
        let retention = self.retention();
        let ordered = state.ordered();
        let mut out = Vec::new();
        for pair in ordered.windows(2) {
            let (key, next) = (pair[0], pair[1]);
            // `key` signed until `next` activated.
            if next.activates <= now && now >= next.activates.saturating_add(retention) {
                out.push((format!("{}.json", key.kid), key.kid.clone()));
            }
        }
        out
    }

    /// The keys published at `now`: every key that is not retired, signing
    /// order.
    fn published(&self, now: SystemTime) -> Vec<Arc<SigningKey>> {
        self.refresh();
        let now = unix_secs(now);
        let state = self.read_state();
        let retired: Vec<String> = self
            .retired(&state, now)
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        state
            .ordered()
            .into_iter()
            .filter(|k| !retired.contains(&k.kid))
            .cloned()
            .collect()
    }

    /// The key that signs at `now`: the newest key already active (or, if
    /// the clock went back before every activation, the earliest key).
    pub fn signing_key_at(&self, now: SystemTime) -> Result<Arc<SigningKey>, KeyError> {
        self.refresh();
        let now = unix_secs(now);
        let state = self.read_state();
        let ordered = state.ordered();
        ordered
            .iter()
            .rev()
            .find(|k| k.activates <= now)
            .or(ordered.first())
            .map(|k| Arc::clone(k))
            .ok_or(KeyError::NoSigningKey)
    }

    /// The key that signs now.
    pub fn signing_key(&self) -> Result<Arc<SigningKey>, KeyError> {
        self.signing_key_at(SystemTime::now())
    }

    /// Every published key (may still verify a live token, or is about to
    /// sign) at `now`, in signing order.
    pub fn keys_at(&self, now: SystemTime) -> Vec<Arc<SigningKey>> {
        self.published(now)
    }

    /// The JWK Set at `now`: `{"keys": [...]}`, see [`SigningKey::jwk`].
    pub fn jwks_at(&self, now: SystemTime) -> Value {
        let keys: Vec<Value> = self.published(now).iter().map(|k| k.jwk()).collect();
        json!({ "keys": keys })
    }

    /// The JWK Set to serve at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> Value {
        self.jwks_at(SystemTime::now())
    }

    /// The PEM certificates of every published key at `now`.
    pub fn export_bundle_at(&self, now: SystemTime) -> String {
        self.published(now)
            .iter()
            .map(|k| k.cert_pem.as_str())
            .collect()
    }

    /// The PEM bundle of every published key's certificate: what a Docker
    /// Distribution registry's `auth.token.rootcertbundle` needs. Distribution
    /// reads it at start, so re-export and restart it after a rotation,
    /// within the publish delay.
    pub fn export_bundle(&self) -> String {
        self.export_bundle_at(SystemTime::now())
    }

    /// Adds a new key of the configured algorithm, published at once and
    /// signing after the publish delay (and at least a second after the
    /// previous key), then retires keys whose tokens have
    /// all expired ([`KeyStore::prune`]).
    pub fn rotate(&self, now: SystemTime) -> Result<Rotation, KeyError> {
        let created = unix_secs(now);
        let key = {
            let mut state = self.write_state();
            self.scan(&mut state, false)?;
            // Strictly after every existing key, so that the newest key
            // signs even when rotations come within one second.
            let latest = state.keys.values().map(|k| k.activates).max();
            let activates =
                (created + self.options.publish_delay.as_secs()).max(latest.map_or(0, |l| l + 1));
            self.add_key(&mut state, created, activates)?
        };
        tracing::info!(kid = %key.kid, alg = %key.alg, activates = key.activates, "rotated in a token signing key");
        let retired = self.prune(now)?;
        Ok(Rotation {
            kid: key.kid.clone(),
            activates: key.activates(),
            retired,
        })
    }

    /// Deletes the files of keys retired at `now` (no token they signed can
    /// still be valid) and returns their kids. Published key sets leave them
    /// out from that moment whether or not this runs.
    pub fn prune(&self, now: SystemTime) -> Result<Vec<String>, KeyError> {
        let mut state = self.write_state();
        self.scan(&mut state, false)?;
        let retired = self.retired(&state, unix_secs(now));
        for (name, kid) in &retired {
            let path = self.dir.join(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
            state.keys.remove(name);
            tracing::info!(%kid, "retired a token signing key");
        }
        if !retired.is_empty() {
            fsync_dir(&self.dir)?;
        }
        Ok(retired.into_iter().map(|(_, kid)| kid).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(alg: Algorithm) -> KeyOptions {
        KeyOptions {
            algorithm: alg,
            ..KeyOptions::default()
        }
    }

    #[test]
    fn thumbprint_rfc7638_vector() {
        // RFC 7638 section 3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            jwk_thumbprint(&jwk).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        assert_eq!(jwk_thumbprint(&json!({"kty": "oct", "k": "x"})), None);
        assert_eq!(jwk_thumbprint(&json!({"kty": "RSA", "n": "x"})), None);
    }

    #[test]
    fn algorithm_names() {
        assert_eq!("rs256".parse::<Algorithm>().unwrap(), Algorithm::Rs256);
        assert_eq!("ES256".parse::<Algorithm>().unwrap(), Algorithm::Es256);
        assert!("PS256".parse::<Algorithm>().is_err());
        assert_eq!(serde_json::to_value(Algorithm::Es256).unwrap(), "ES256");
    }

    fn check_store(alg: Algorithm) {
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("identity/keys");
        let store = KeyStore::open(&keys_dir, opts(alg)).unwrap();
        let key = store.signing_key().unwrap();
        assert_eq!(key.algorithm(), alg);

        let jwks = store.jwks();
        let published = jwks["keys"].as_array().unwrap();
        assert_eq!(published.len(), 1);
        let jwk = &published[0];
        assert_eq!(jwk["kid"], key.kid());
        assert_eq!(jwk["alg"], alg.as_str());
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk_thumbprint(jwk).unwrap(), key.kid());
        match alg {
            Algorithm::Rs256 => {
                assert_eq!(jwk["kty"], "RSA");
                assert_eq!(jwk["e"], "AQAB");
                let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
                assert!(n.len() >= 256, "RSA 2048 or more");
            }
            Algorithm::Es256 => {
                assert_eq!(jwk["kty"], "EC");
                assert_eq!(jwk["crv"], "P-256");
                assert!(jwk.get("d").is_none());
            }
        }
        // No private material anywhere public.
        let public = format!("{jwks} {} {store:?} {key:?}", store.export_bundle());
        assert!(!public.contains("PRIVATE"), "{public}");
        assert!(jwk.get("d").is_none() && jwk.get("p").is_none());

        // Files: one key file, 0600, in a 0700 directory.
        let file = keys_dir.join(format!("{}.json", key.kid()));
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&keys_dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let names: Vec<_> = fs::read_dir(&keys_dir).unwrap().collect();
        assert_eq!(names.len(), 1);

        // The bundle is the key's certificate.
        let bundle = store.export_bundle();
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 1);
        assert_eq!(bundle, key.certificate_pem());

        // Reopening loads, never regenerates, even with another algorithm.
        let other = match alg {
            Algorithm::Rs256 => Algorithm::Es256,
            Algorithm::Es256 => Algorithm::Rs256,
        };
        drop(store);
        let again = KeyStore::open(&keys_dir, opts(other)).unwrap();
        assert_eq!(again.signing_key().unwrap().kid(), key.kid());
        assert_eq!(again.signing_key().unwrap().algorithm(), alg);
        assert_eq!(again.export_bundle(), bundle);
    }

    #[test]
    fn rs256_store_persists() {
        check_store(Algorithm::Rs256);
    }

    #[test]
    fn es256_store_persists() {
        check_store(Algorithm::Es256);
    }

    #[test]
    fn rotation_publishes_before_signing_and_retires_late() {
        let dir = tempfile::tempdir().unwrap();
        let options = KeyOptions {
            algorithm: Algorithm::Es256,
            publish_delay: Duration::from_secs(60),
            token_lifetime: Duration::from_secs(300),
            leeway: Duration::from_secs(60),
        };
        let store = KeyStore::open(dir.path(), options).unwrap();
        let old = store.signing_key().unwrap();
        let t0 = SystemTime::now();
        let rotation = store.rotate(t0).unwrap();
        assert!(rotation.retired.is_empty());
        let new_file = dir.path().join(format!("{}.json", rotation.kid));
        assert_eq!(
            fs::metadata(&new_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_ne!(rotation.kid, old.kid());
        assert_eq!(
            unix_secs(rotation.activates),
            unix_secs(t0) + 60,
            "signs after the publish delay"
        );

        // Published at once, both keys.
        let kids = |now| -> Vec<String> {
            store.jwks_at(now)["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(kids(t0), [old.kid().to_owned(), rotation.kid.clone()]);
        assert_eq!(
            store
                .export_bundle_at(t0)
                .matches("BEGIN CERTIFICATE")
                .count(),
            2
        );

        // The old key signs until the publish delay has passed.
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(store.signing_key_at(t0).unwrap().kid(), old.kid());
        assert_eq!(store.signing_key_at(at(59)).unwrap().kid(), old.kid());
        assert_eq!(store.signing_key_at(at(60)).unwrap().kid(), rotation.kid);

        // The old key stays published for lifetime + leeway after its last
        // signature (at t0 + 60), then leaves the key set and the disk.
        let last = 60 + 300 + 60;
        assert_eq!(kids(at(last - 1)).len(), 2);
        assert!(store.prune(at(last - 1)).unwrap().is_empty());
        assert_eq!(kids(at(last)), std::slice::from_ref(&rotation.kid));
        assert_eq!(
            store
                .export_bundle_at(at(last))
                .matches("BEGIN CERTIFICATE")
                .count(),
            1
        );
        let old_file = dir.path().join(format!("{}.json", old.kid()));
        assert!(old_file.exists(), "kept on disk until pruned");
        assert_eq!(store.prune(at(last)).unwrap(), [old.kid().to_owned()]);
        assert!(!old_file.exists());
        assert_eq!(store.signing_key_at(at(last)).unwrap().kid(), rotation.kid);

        // An issuer with a longer lifetime holds keys longer.
        let r2 = store.rotate(at(1000)).unwrap();
        store.note_token_lifetime(Duration::from_secs(3600));
        let r2_signs = 1000 + 60;
        assert!(store.prune(at(r2_signs + 300 + 60)).unwrap().is_empty());
        assert_eq!(
            store.prune(at(r2_signs + 3600 + 60)).unwrap(),
            std::slice::from_ref(&rotation.kid)
        );
        assert_eq!(kids(at(r2_signs + 3600 + 60)), [r2.kid]);
    }

    #[test]
    fn another_process_sees_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let options = KeyOptions {
            publish_delay: Duration::ZERO,
            ..opts(Algorithm::Es256)
        };
        let server = KeyStore::open(dir.path(), options).unwrap();
        let first = server.signing_key().unwrap();
        // `berth keys rotate` as another process: its own store.
        let cli = KeyStore::open(dir.path(), options).unwrap();
        assert_eq!(cli.signing_key().unwrap().kid(), first.kid());
        let rotation = cli.rotate(SystemTime::now()).unwrap();
        // Within a second the server notices without being told.
        let deadline = Instant::now() + Duration::from_secs(3);
        while server.signing_key().unwrap().kid() != rotation.kid {
            assert!(Instant::now() < deadline, "server never saw the new key");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(server.jwks()["keys"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn broken_key_files_are_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path(), opts(Algorithm::Es256)).unwrap();
        let kid = store.signing_key().unwrap().kid().to_owned();
        let path = dir.path().join(format!("{kid}.json"));
        let good = fs::read(&path).unwrap();

        // Renamed: kid no longer matches the file name.
        let renamed = dir.path().join("AAAA.json");
        fs::rename(&path, &renamed).unwrap();
        assert!(matches!(
            KeyStore::open(dir.path(), opts(Algorithm::Es256)),
            Err(KeyError::Corrupt { .. })
        ));
        fs::remove_file(&renamed).unwrap();

        // Certificate of another key.
        let other = tempfile::tempdir().unwrap();
        let other_store = KeyStore::open(other.path(), opts(Algorithm::Es256)).unwrap();
        let mut file: KeyFile = serde_json::from_slice(&good).unwrap();
        file.certificate = other_store.export_bundle();
        fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
        let err = KeyStore::open(dir.path(), opts(Algorithm::Es256)).unwrap_err();
        assert!(err.to_string().contains("not for this key"), "{err}");

        // Garbage.
        fs::write(&path, b"{").unwrap();
        assert!(KeyStore::open(dir.path(), opts(Algorithm::Es256)).is_err());

        // Temp files of an interrupted write are ignored.
        fs::write(&path, &good).unwrap();
        fs::write(dir.path().join(".x.json.0123.tmp"), b"partial").unwrap();
        let store = KeyStore::open(dir.path(), opts(Algorithm::Es256)).unwrap();
        assert_eq!(store.signing_key().unwrap().kid(), kid);
    }

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<KeyStore>();
        check::<Arc<SigningKey>>();
    }
}
