//! The registry's side of the Docker token-authentication contract: which
//! keys it trusts ([`KeySet`], built from the token service's JWKS), how a
//! bearer token is verified ([`Verifier`]), what access each request needs
//! ([`required_access`], [`catalog_access`]) and the `WWW-Authenticate`
//! challenge that sends a client to the token service ([`challenge`]).
//!
//! It owns verification only: no HTTP wiring, no key fetching. It depends
//! on the shared contract (`berth-auth`) and never on the token service or
//! Keystone code.
//!
//! Verification follows what Docker Distribution does with the same tokens:
//! RS256/RS384/RS512/ES256/ES384 only (never HMAC, never `none`); the
//! header's `alg` must equal the algorithm of the key its `kid` names;
//! `iss` must equal the configured issuer, `aud` the configured service
//! (a JSON string, an array is refused); `exp` is required; `exp` and
//! `nbf` are checked with 60 s of leeway.
//!
//! Keys come only from the configured key set, chosen by the header's
//! `kid`: a `jwk` or `x5c` in the token header is never trusted (a token
//! must not bring its own key), so a token without a known `kid` is
//! refused.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::Method;
use berth_auth::{Action, Claims, Scope};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, Validation};
use serde_json::Value;

/// The clock skew tolerated on `exp` and `nbf`, as Distribution does.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// The signature algorithms a token may use. HMAC (a shared secret the
/// registry would have to hold, and the classic key-confusion attack) and
/// `none` are never accepted; PS256 and EdDSA are refused by Distribution.
pub const ALLOWED_ALGORITHMS: [Algorithm; 5] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// Why a token was refused. Every variant means 401 `invalid_token`;
/// [`AuthError::UnknownKey`] additionally means the caller should refetch
/// the key set (the token service may have rotated in a new key) and retry
/// once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token signed by unknown key {0:?}")]
    UnknownKey(String),
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issuer is not trusted")]
    WrongIssuer,
    #[error("token is for another service")]
    WrongAudience,
    #[error("token signature algorithm not allowed")]
    AlgorithmNotAllowed,
}

/// Why a JWKS document could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("not a JWK set: expected an object with a \"keys\" array")]
    NotAKeySet,
    #[error("the JWK set holds no usable signing key (RS256/384/512, ES256/384)")]
    NoUsableKey,
}

/// One trusted public key and the only algorithm it verifies.
struct TrustedKey {
    alg: Algorithm,
    key: DecodingKey,
}

/// The public keys tokens may be signed with, by `kid`.
#[derive(Default)]
pub struct KeySet {
    keys: HashMap<String, TrustedKey>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<(&str, Algorithm)> =
            self.keys.iter().map(|(k, v)| (k.as_str(), v.alg)).collect();
        kids.sort_by_key(|(kid, _)| *kid);
        f.debug_struct("KeySet").field("keys", &kids).finish()
    }
}

impl KeySet {
    /// Builds a key set from a JWKS document (`{"keys": [...]}`).
    ///
    /// A key is used only if it has a `kid`, is for signing (`use`, when
    /// present, is `sig`) and is an RSA key of at least 2048 bits with
    /// `alg` RS256/RS384/RS512, or an EC key on P-256 (ES256) or P-384
    /// (ES384) whose `alg`, when present, matches its curve. Other keys
    /// (symmetric, encryption, unknown kinds) are skipped, as a JWKS may
    /// hold keys for other purposes; a later duplicate `kid` is ignored.
    pub fn from_jwks(jwks: &Value) -> Result<KeySet, JwksError> {
        let entries = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::NotAKeySet)?;
        let mut keys = HashMap::new();
        for jwk in entries {
            if let Some((kid, key)) = trusted_key(jwk) {
                keys.entry(kid).or_insert(key);
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(KeySet { keys })
    }

    /// The number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key with this `kid` is trusted.
    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// The algorithm of the key `kid`.
    pub fn algorithm(&self, kid: &str) -> Option<Algorithm> {
        self.keys.get(kid).map(|k| k.alg)
    }
}

/// The `kid` and decoding key of one JWK, if it is usable.
fn trusted_key(jwk: &Value) -> Option<(String, TrustedKey)> {
    let member = |k: &str| jwk.get(k).and_then(Value::as_str);
    let kid = member("kid").filter(|k| !k.is_empty())?;
    if jwk.get("use").is_some() && member("use") != Some("sig") {
        return None;
    }
    let alg = match jwk.get("alg") {
        None => None,
        Some(Value::String(a)) => Some(a.as_str()),
        Some(_) => return None,
    };
    let (alg, key) = match member("kty")? {
        "RSA" => {
            let alg = match alg? {
                "RS256" => Algorithm::RS256,
                "RS384" => Algorithm::RS384,
                "RS512" => Algorithm::RS512,
                _ => return None,
            };
            let key = DecodingKey::from_rsa_components(member("n")?, member("e")?).ok()?;
            if let DecodingKeyKind::RsaModulusExponent { n, .. } = key.kind() {
                let significant = n.iter().skip_while(|b| **b == 0).count();
                if significant < 256 {
                    return None;
                }
            }
            (alg, key)
        }
        "EC" => {
            let by_curve = match member("crv")? {
                "P-256" => Algorithm::ES256,
                "P-384" => Algorithm::ES384,
                _ => return None,
            };
            match alg {
                None => {}
                Some("ES256") if by_curve == Algorithm::ES256 => {}
                Some("ES384") if by_curve == Algorithm::ES384 => {}
                Some(_) => return None,
            }
            let key = DecodingKey::from_ec_components(member("x")?, member("y")?).ok()?;
            (by_curve, key)
        }
        _ => return None,
    };
    Some((kid.to_owned(), TrustedKey { alg, key }))
}

/// Verifies registry tokens against a [`KeySet`], an issuer and an
/// audience (the registry's `service` name).
#[derive(Debug)]
pub struct Verifier {
    keys: KeySet,
    issuer: String,
    audience: String,
    leeway: Duration,
}

impl Verifier {
    /// A verifier with [`DEFAULT_LEEWAY`] (60 s).
    pub fn new(keys: KeySet, issuer: impl Into<String>, audience: impl Into<String>) -> Verifier {
        Verifier {
            keys,
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: DEFAULT_LEEWAY,
        }
    }

    /// Sets the clock skew tolerated on `exp` and `nbf`.
    pub fn with_leeway(mut self, leeway: Duration) -> Verifier {
        self.leeway = leeway;
        self
    }

    /// The trusted keys.
    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    /// Replaces the trusted keys (after refetching the JWKS).
    pub fn set_keys(&mut self, keys: KeySet) {
        self.keys = keys;
    }

    /// The required `iss`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The required `aud`.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The clock skew tolerated on `exp` and `nbf`.
    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    /// Verifies a compact JWS now and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_at(token, SystemTime::now())
    }

    /// Verifies a compact JWS as if the time were `now`.
    pub fn verify_at(&self, token: &str, now: SystemTime) -> Result<Claims, AuthError> {
        // `alg: none` and unknown names fail here: jsonwebtoken's header
        // type has no such algorithm.
        let header = jsonwebtoken::decode_header(token).map_err(|e| malformed(&e))?;
        if !ALLOWED_ALGORITHMS.contains(&header.alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let kid = header
            .kid
            .ok_or_else(|| AuthError::Malformed("no kid in the header".into()))?;
        let key = self
            .keys
            .keys
            .get(&kid)
            .ok_or_else(|| AuthError::UnknownKey(kid.clone()))?;
        if header.alg != key.alg {
            return Err(AuthError::AlgorithmNotAllowed);
        }

        // jsonwebtoken checks the algorithm again and the signature, then
        // decodes the claims; times and names are checked below, against
        // `now`, with our own error mapping.
        let mut validation = Validation::new(key.alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidRsaKey(_)
                | ErrorKind::InvalidKeyFormat => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                    AuthError::AlgorithmNotAllowed
                }
                _ => malformed(&e),
            })?
            .claims;

        if claims.iss != self.issuer {
            return Err(AuthError::WrongIssuer);
        }
        if claims.aud != self.audience {
            return Err(AuthError::WrongAudience);
        }
        self.check_times(&claims, now)?;
        Ok(claims)
    }

    /// Whether verified `claims` are still (or already) valid at `now`:
    /// `exp` and `nbf` with the leeway. A cache of verified tokens asks
    /// this on every use.
    pub fn check_times(&self, claims: &Claims, now: SystemTime) -> Result<(), AuthError> {
        let now = match now.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(_) => 0,
        };
        let leeway = i64::try_from(self.leeway.as_secs()).unwrap_or(i64::MAX);
        if claims.exp.saturating_add(leeway) < now {
            return Err(AuthError::Expired);
        }
        if claims.nbf > now.saturating_add(leeway) {
            return Err(AuthError::NotYetValid);
        }
        Ok(())
    }
}

fn malformed(e: &dyn fmt::Display) -> AuthError {
    AuthError::Malformed(e.to_string())
}

/// The access a request on repository `name` needs, as Distribution
/// requires it: GET/HEAD `pull`; POST/PUT/PATCH `pull` and `push`; DELETE
/// `delete`; a cross-repository mount (`mount_from`, the `from` of a blob
/// upload POST) also `pull` on the source. Any other method needs `*`
/// (Distribution would need nothing; we fail closed).
pub fn required_access(
    method: &Method,
    name: &str,
    mount_from: Option<&str>,
) -> Vec<(String, Action)> {
    let actions: &[Action] = match *method {
        Method::GET | Method::HEAD => &[Action::Pull],
        Method::POST | Method::PUT | Method::PATCH => &[Action::Pull, Action::Push],
        Method::DELETE => &[Action::Delete],
        _ => &[Action::All],
    };
    let mut required: Vec<(String, Action)> =
        actions.iter().map(|a| (name.to_owned(), *a)).collect();
    if let Some(source) = mount_from {
        let pull = (source.to_owned(), Action::Pull);
        if !required.contains(&pull) {
            required.push(pull);
        }
    }
    required
}

/// The access listing the catalog needs: `registry:catalog:*`.
pub fn catalog_access() -> Scope {
    Scope {
        kind: "registry".into(),
        name: "catalog".into(),
        actions: [Action::All].into(),
    }
}

/// Whether `claims` grant every `(repository, action)` of `required`.
pub fn is_granted(claims: &Claims, required: &[(String, Action)]) -> bool {
    required
        .iter()
        .all(|(name, action)| claims.allows_repository(name, *action))
}

/// Whether `claims` grant every action of `scope` (e.g. [`catalog_access`]).
pub fn scope_granted(claims: &Claims, scope: &Scope) -> bool {
    scope.actions.iter().all(|action| {
        claims
            .access
            .iter()
            .any(|a| a.allows(&scope.kind, &scope.name, *action))
    })
}

/// The `scope` a challenge names for `required`: one
/// `repository:<name>:<actions>` per repository, in order of first
/// appearance, separated by spaces (`repository:b:pull,push
/// repository:a:pull` for a mount of `a` into `b`).
pub fn scope_string(required: &[(String, Action)]) -> String {
    let mut scopes: Vec<Scope> = Vec::new();
    for (name, action) in required {
        match scopes.iter_mut().find(|s| &s.name == name) {
            Some(scope) => {
                scope.actions.insert(*action);
            }
            None => scopes.push(Scope::repository(name, &[*action])),
        }
    }
    scopes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A `WWW-Authenticate` value:
/// `Bearer realm="...",service="...",scope="...",error="..."`, with
/// `scope` and `error` only when given. `"`, `\` and control characters
/// are removed from the values, so that no value can end its quoted
/// string or the header.
pub fn challenge(realm: &str, service: &str, scope: Option<&str>, error: Option<&str>) -> String {
    let mut out = format!(
        "Bearer realm=\"{}\",service=\"{}\"",
        quotable(realm),
        quotable(service)
    );
    for (name, value) in [("scope", scope), ("error", error)] {
        if let Some(value) = value {
            out.push_str(&format!(",{name}=\"{}\"", quotable(value)));
        }
    }
    out
}

fn quotable(value: &str) -> String {
    value
        .chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use berth_auth::Access;
    use berth_identity::keys::{Algorithm as KeyAlg, KeyOptions, KeyStore};
    use berth_identity::token::{DEFAULT_TOKEN_LIFETIME, TokenIssuer};
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use std::sync::Arc;

    const ISS: &str = "berth";
    const AUD: &str = "registry.test";

    struct Fixture {
        _dir: tempfile::TempDir,
        keys: Arc<KeyStore>,
        issuer: TokenIssuer,
    }

    fn fixture(alg: KeyAlg) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let options = KeyOptions {
            algorithm: alg,
            ..KeyOptions::default()
        };
        let keys = Arc::new(KeyStore::open(dir.path(), options).unwrap());
        let issuer = TokenIssuer::new(
            Arc::clone(&keys),
            ISS.into(),
            AUD.into(),
            DEFAULT_TOKEN_LIFETIME,
        );
        Fixture {
            _dir: dir,
            keys,
            issuer,
        }
    }

    fn verifier(f: &Fixture) -> Verifier {
        Verifier::new(KeySet::from_jwks(&f.keys.jwks()).unwrap(), ISS, AUD)
    }

    fn push_pull(name: &str) -> Vec<Access> {
        vec![Access::from(&Scope::repository(
            name,
            &[Action::Pull, Action::Push],
        ))]
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn part(token: &str, i: usize) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(token.split('.').nth(i).unwrap())
            .unwrap()
    }

    fn at(secs: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap())
    }

    fn check_roundtrip(alg: KeyAlg) {
        let f = fixture(alg);
        let v = verifier(&f);
        let issued = f.issuer.issue("alice", push_pull("alice/app")).unwrap();
        let claims = v.verify(&issued.token).unwrap();
        assert_eq!(claims, issued.claims);
        assert!(claims.allows_repository("alice/app", Action::Push));
        let required = required_access(&Method::PUT, "alice/app", None);
        assert!(is_granted(&claims, &required));
        assert!(!is_granted(
            &claims,
            &required_access(&Method::DELETE, "alice/app", None)
        ));
    }

    #[test]
    fn rs256_token_verifies() {
        check_roundtrip(KeyAlg::Rs256);
    }

    #[test]
    fn es256_token_verifies() {
        check_roundtrip(KeyAlg::Es256);
    }

    #[test]
    fn es384_token_verifies() {
        // The identity service signs only RS256/ES256; Distribution also
        // accepts ES384, and so do we.
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref();
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-384", "kid": "p384",
            "x": b64(&point[1..49]), "y": b64(&point[49..]),
        }]});
        let keys = KeySet::from_jwks(&jwks).unwrap();
        assert_eq!(keys.algorithm("p384"), Some(Algorithm::ES384));
        let v = Verifier::new(keys, ISS, AUD);
        let now = 1_700_000_000;
        let claims = json!({"iss": ISS, "sub": "s", "aud": AUD, "exp": now + 300,
            "nbf": now, "iat": now, "jti": "j", "access": []});
        let mut header = Header::new(Algorithm::ES384);
        header.kid = Some("p384".into());
        let token =
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_der(pkcs8.as_ref()))
                .unwrap();
        assert_eq!(v.verify_at(&token, at(now)).unwrap().sub, "s");
        // The same key cannot be used under another EC algorithm.
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("p384".into());
        let forged = format!(
            "{}.{}",
            b64(&serde_json::to_vec(&header).unwrap()),
            token.split_once('.').unwrap().1
        );
        assert_eq!(
            v.verify_at(&forged, at(now)),
            Err(AuthError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn expired_and_not_yet_valid_with_leeway() {
        let f = fixture(KeyAlg::Es256);
        let v = verifier(&f);
        let issued = f.issuer.issue("alice", push_pull("alice/app")).unwrap();
        let (t, exp, nbf) = (&issued.token, issued.claims.exp, issued.claims.nbf);
        // Within 60 s of leeway: accepted.
        assert!(v.verify_at(t, at(exp + 59)).is_ok());
        assert!(v.verify_at(t, at(exp + 60)).is_ok());
        assert!(v.verify_at(t, at(nbf - 59)).is_ok());
        assert!(v.verify_at(t, at(nbf - 60)).is_ok());
        // Beyond: refused.
        assert_eq!(v.verify_at(t, at(exp + 61)), Err(AuthError::Expired));
        assert_eq!(v.verify_at(t, at(exp + 3600)), Err(AuthError::Expired));
        assert_eq!(v.verify_at(t, at(nbf - 61)), Err(AuthError::NotYetValid));
        // A verifier with no leeway.
        let strict = verifier(&f).with_leeway(Duration::ZERO);
        assert!(strict.verify_at(t, at(exp)).is_ok());
        assert_eq!(strict.verify_at(t, at(exp + 1)), Err(AuthError::Expired));
        assert_eq!(
            strict.verify_at(t, at(nbf - 1)),
            Err(AuthError::NotYetValid)
        );

        // Tokens dated in the past and the future, verified now.
        let old = SystemTime::now() - Duration::from_secs(3600);
        let stale = f.issuer.issue_at("alice", vec![], old).unwrap();
        assert_eq!(v.verify(&stale.token), Err(AuthError::Expired));
    }

    #[test]
    fn wrong_audience_and_issuer_are_refused() {
        let f = fixture(KeyAlg::Rs256);
        let v = verifier(&f);
        let other_aud = TokenIssuer::new(
            Arc::clone(&f.keys),
            ISS.into(),
            "other.registry".into(),
            DEFAULT_TOKEN_LIFETIME,
        );
        let t = other_aud.issue("alice", push_pull("alice/app")).unwrap();
        assert_eq!(v.verify(&t.token), Err(AuthError::WrongAudience));
        let other_iss = TokenIssuer::new(
            Arc::clone(&f.keys),
            "mallory".into(),
            AUD.into(),
            DEFAULT_TOKEN_LIFETIME,
        );
        let t = other_iss.issue("alice", push_pull("alice/app")).unwrap();
        assert_eq!(v.verify(&t.token), Err(AuthError::WrongIssuer));
    }

    #[test]
    fn audience_array_and_missing_exp_are_refused() {
        let f = fixture(KeyAlg::Es256);
        let v = verifier(&f);
        let key = f.keys.signing_key().unwrap();
        let now = 1_700_000_000i64;
        let base = json!({"iss": ISS, "sub": "s", "aud": AUD, "exp": now + 300,
            "nbf": now, "iat": now, "jti": "j", "access": []});
        assert!(v.verify_at(&key.sign(&base).unwrap(), at(now)).is_ok());
        let mut array = base.clone();
        array["aud"] = json!([AUD]);
        assert!(matches!(
            v.verify_at(&key.sign(&array).unwrap(), at(now)),
            Err(AuthError::Malformed(_))
        ));
        let mut no_exp = base.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(matches!(
            v.verify_at(&key.sign(&no_exp).unwrap(), at(now)),
            Err(AuthError::Malformed(_))
        ));
        let mut float_exp = base;
        float_exp["exp"] = json!(now as f64 + 300.5);
        assert!(matches!(
            v.verify_at(&key.sign(&float_exp).unwrap(), at(now)),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn alg_none_is_refused() {
        let f = fixture(KeyAlg::Rs256);
        let v = verifier(&f);
        let issued = f.issuer.issue("alice", push_pull("alice/app")).unwrap();
        let kid = f.keys.signing_key().unwrap().kid().to_owned();
        for alg in ["none", "None", "NONE"] {
            let header = json!({"alg": alg, "typ": "JWT", "kid": kid});
            let payload = issued.token.split('.').nth(1).unwrap();
            let head = b64(&serde_json::to_vec(&header).unwrap());
            for token in [
                format!("{head}.{payload}."),
                format!("{head}.{payload}"),
                format!(
                    "{head}.{payload}.{}",
                    issued.token.split('.').nth(2).unwrap()
                ),
            ] {
                let err = v.verify(&token).unwrap_err();
                assert!(
                    matches!(
                        err,
                        AuthError::Malformed(_) | AuthError::AlgorithmNotAllowed
                    ),
                    "{alg}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn hs256_with_the_public_key_as_secret_is_refused() {
        let f = fixture(KeyAlg::Rs256);
        let v = verifier(&f);
        let key = f.keys.signing_key().unwrap();
        let jwk = key.jwk();
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let claims = json!({"iss": ISS, "sub": "mallory", "aud": AUD, "exp": now + 300,
            "nbf": now, "iat": now, "jti": "j",
            "access": [{"type": "repository", "name": "alice/app", "actions": ["*"]}]});
        // Every public form of the key an attacker could use as a secret.
        let secrets: Vec<Vec<u8>> = vec![
            key.certificate_pem().as_bytes().to_vec(),
            serde_json::to_vec(&jwk).unwrap(),
            URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap(),
        ];
        for secret in secrets {
            for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                let mut header = Header::new(alg);
                header.kid = Some(key.kid().to_owned());
                let token =
                    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&secret))
                        .unwrap();
                assert_eq!(v.verify(&token), Err(AuthError::AlgorithmNotAllowed));
            }
        }
        // PS256 (RSA, but refused by Distribution) is not allowed either.
        let mut header = json!({"alg": "PS256", "kid": key.kid()});
        let payload = b64(&serde_json::to_vec(&claims).unwrap());
        let head = b64(&serde_json::to_vec(&header).unwrap());
        assert_eq!(
            v.verify(&format!("{head}.{payload}.AAAA")),
            Err(AuthError::AlgorithmNotAllowed)
        );
        // RS384 on an RS256 key: allowed algorithm, but not this key's.
        header["alg"] = json!("RS384");
        let head = b64(&serde_json::to_vec(&header).unwrap());
        assert_eq!(
            v.verify(&format!("{head}.{payload}.AAAA")),
            Err(AuthError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn unknown_kid_is_reported_for_a_refetch() {
        let f = fixture(KeyAlg::Es256);
        let other = fixture(KeyAlg::Es256);
        let mut v = verifier(&f);
        let t = other.issuer.issue("alice", push_pull("alice/app")).unwrap();
        let kid = other.keys.signing_key().unwrap().kid().to_owned();
        assert_eq!(v.verify(&t.token), Err(AuthError::UnknownKey(kid.clone())));
        // After a refetch that includes the key, it verifies.
        v.set_keys(KeySet::from_jwks(&other.keys.jwks()).unwrap());
        assert!(v.keys().contains(&kid));
        assert!(v.verify(&t.token).is_ok());

        // No kid at all.
        let key = f.keys.signing_key().unwrap();
        let header = json!({"alg": "ES256"});
        let rest = t.token.split_once('.').unwrap().1;
        let token = format!("{}.{rest}", b64(&serde_json::to_vec(&header).unwrap()));
        assert!(matches!(v.verify(&token), Err(AuthError::Malformed(_))));
        // A kid naming a trusted key, with another key's signature.
        let header = json!({"alg": "ES256", "kid": key.kid()});
        let token = format!("{}.{rest}", b64(&serde_json::to_vec(&header).unwrap()));
        let v = verifier(&f);
        assert_eq!(v.verify(&token), Err(AuthError::BadSignature));
    }

    #[test]
    fn a_key_embedded_in_the_header_is_not_trusted() {
        let f = fixture(KeyAlg::Es256);
        let v = verifier(&f);
        let trusted = f.keys.signing_key().unwrap().kid().to_owned();
        // The attacker's own P-256 key, sent along in `jwk`.
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
        )
        .unwrap();
        let point = pair.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "evil",
            "x": b64(&point[1..33]), "y": b64(&point[33..])});
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let claims = json!({"iss": ISS, "sub": "mallory", "aud": AUD, "exp": now + 300,
            "nbf": now, "iat": now, "jti": "j",
            "access": [{"type": "repository", "name": "alice/app", "actions": ["*"]}]});
        let key = EncodingKey::from_ec_der(pkcs8.as_ref());
        for kid in [trusted.as_str(), "evil"] {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(kid.to_owned());
            header.jwk = Some(serde_json::from_value(jwk.clone()).unwrap());
            let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
            let expected = if kid == "evil" {
                AuthError::UnknownKey("evil".into())
            } else {
                AuthError::BadSignature
            };
            assert_eq!(v.verify(&token), Err(expected));
        }
    }

    #[test]
    fn tampered_payload_is_refused() {
        for alg in [KeyAlg::Rs256, KeyAlg::Es256] {
            let f = fixture(alg);
            let v = verifier(&f);
            let t = f.issuer.issue("alice", push_pull("alice/app")).unwrap();
            let mut claims: Value = serde_json::from_slice(&part(&t.token, 1)).unwrap();
            claims["access"][0]["name"] = json!("bob/app");
            claims["access"][0]["actions"] = json!(["*"]);
            let parts: Vec<&str> = t.token.split('.').collect();
            let forged = format!(
                "{}.{}.{}",
                parts[0],
                b64(&serde_json::to_vec(&claims).unwrap()),
                parts[2]
            );
            assert_eq!(v.verify(&forged), Err(AuthError::BadSignature));
            // A flipped signature byte.
            let mut sig = part(&t.token, 2);
            sig[5] ^= 1;
            let forged = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
            assert_eq!(v.verify(&forged), Err(AuthError::BadSignature));
            // Garbage.
            for bad in ["", "a", "a.b", "a.b.c", "..", "....."] {
                assert!(v.verify(bad).is_err(), "{bad:?}");
            }
        }
    }

    #[test]
    fn a_token_for_another_repository_lacks_the_access() {
        let f = fixture(KeyAlg::Es256);
        let v = verifier(&f);
        let t = f.issuer.issue("alice", push_pull("alice/app")).unwrap();
        let claims = v.verify(&t.token).unwrap();
        assert!(!claims.allows_repository("bob/app", Action::Pull));
        assert!(!claims.allows_repository("alice/app2", Action::Pull));
        assert!(!claims.allows_repository("alice", Action::Pull));
        assert!(!is_granted(
            &claims,
            &required_access(&Method::GET, "bob/app", None)
        ));
        // A mount from a repository the token does not cover.
        assert!(!is_granted(
            &claims,
            &required_access(&Method::POST, "alice/app", Some("bob/base"))
        ));
        assert!(!scope_granted(&claims, &catalog_access()));
    }

    #[test]
    fn key_sets() {
        let f = fixture(KeyAlg::Rs256);
        let g = fixture(KeyAlg::Es256);
        let rsa = f.keys.jwks()["keys"][0].clone();
        let ec = g.keys.jwks()["keys"][0].clone();
        let set = KeySet::from_jwks(&json!({"keys": [rsa, ec]})).unwrap();
        assert_eq!(set.len(), 2);
        let rsa_kid = rsa["kid"].as_str().unwrap();
        let ec_kid = ec["kid"].as_str().unwrap();
        assert_eq!(set.algorithm(rsa_kid), Some(Algorithm::RS256));
        assert_eq!(set.algorithm(ec_kid), Some(Algorithm::ES256));
        assert!(format!("{set:?}").contains(rsa_kid));

        let with = |k: &str, v: Value, base: &Value| {
            let mut j = base.clone();
            j[k] = v;
            j
        };
        let unusable = [
            json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0", "alg": "HS256"}),
            with("alg", json!("none"), &rsa),
            with("alg", json!("HS256"), &rsa),
            with("alg", json!("PS256"), &rsa),
            with("alg", json!("ES384"), &ec),
            with("alg", json!("EdDSA"), &ec),
            with("use", json!("enc"), &rsa),
            with("kid", json!(""), &rsa),
            with("crv", json!("P-521"), &ec),
            // RSA without an alg: ambiguous, refused.
            {
                let mut j = rsa.clone();
                j.as_object_mut().unwrap().remove("alg");
                j
            },
            // A 1024-bit modulus.
            with("n", json!(b64(&[0xc5; 128])), &rsa),
            json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "AAAA"}),
            json!("not a key"),
        ];
        for bad in &unusable {
            assert_eq!(
                KeySet::from_jwks(&json!({ "keys": [bad] })).unwrap_err(),
                JwksError::NoUsableKey,
                "{bad}"
            );
        }
        // Unusable keys are skipped beside usable ones.
        let mixed = KeySet::from_jwks(&json!({"keys": [unusable[0], ec]})).unwrap();
        assert_eq!(mixed.len(), 1);
        // An EC key without alg takes its curve's.
        let mut bare = ec.clone();
        bare.as_object_mut().unwrap().remove("alg");
        let set = KeySet::from_jwks(&json!({ "keys": [bare] })).unwrap();
        assert_eq!(set.algorithm(ec_kid), Some(Algorithm::ES256));
        for bad in [json!({}), json!([]), json!({"keys": {}}), json!(null)] {
            assert_eq!(KeySet::from_jwks(&bad).unwrap_err(), JwksError::NotAKeySet);
        }
        assert_eq!(
            KeySet::from_jwks(&json!({"keys": []})).unwrap_err(),
            JwksError::NoUsableKey
        );
    }

    #[test]
    fn access_per_operation() {
        let pull = |n: &str| (n.to_owned(), Action::Pull);
        let push = |n: &str| (n.to_owned(), Action::Push);
        assert_eq!(required_access(&Method::GET, "a/b", None), [pull("a/b")]);
        assert_eq!(required_access(&Method::HEAD, "a/b", None), [pull("a/b")]);
        for m in [Method::POST, Method::PUT, Method::PATCH] {
            assert_eq!(required_access(&m, "a/b", None), [pull("a/b"), push("a/b")]);
        }
        assert_eq!(
            required_access(&Method::DELETE, "a/b", None),
            [("a/b".to_owned(), Action::Delete)]
        );
        assert_eq!(
            required_access(&Method::OPTIONS, "a/b", None),
            [("a/b".to_owned(), Action::All)]
        );
        let mount = required_access(&Method::POST, "a/b", Some("c/d"));
        assert_eq!(mount, [pull("a/b"), push("a/b"), pull("c/d")]);
        assert_eq!(
            scope_string(&mount),
            "repository:a/b:pull,push repository:c/d:pull"
        );
        // Mounting from itself adds nothing.
        assert_eq!(
            required_access(&Method::POST, "a/b", Some("a/b")),
            [pull("a/b"), push("a/b")]
        );
        assert_eq!(catalog_access().to_string(), "registry:catalog:*");

        let claims = |access: Vec<Access>| Claims {
            iss: ISS.into(),
            sub: "s".into(),
            aud: AUD.into(),
            exp: 0,
            nbf: 0,
            iat: 0,
            jti: "j".into(),
            access,
        };
        let catalog = claims(vec![Access::from(&catalog_access())]);
        assert!(scope_granted(&catalog, &catalog_access()));
        let star = claims(vec![Access {
            kind: "repository".into(),
            name: "a/b".into(),
            actions: vec!["*".into()],
        }]);
        assert!(is_granted(
            &star,
            &required_access(&Method::OPTIONS, "a/b", None)
        ));
        assert!(is_granted(
            &star,
            &required_access(&Method::DELETE, "a/b", None)
        ));
        assert!(!scope_granted(&star, &catalog_access()));
        let pull_only = claims(vec![Access::from(&Scope::repository(
            "a/b",
            &[Action::Pull],
        ))]);
        assert!(!is_granted(
            &pull_only,
            &required_access(&Method::OPTIONS, "a/b", None)
        ));
        assert!(!is_granted(
            &pull_only,
            &required_access(&Method::PATCH, "a/b", None)
        ));
    }

    #[test]
    fn challenges() {
        assert_eq!(
            challenge(
                "https://auth.example/token",
                "registry.example",
                Some("repository:library/ubuntu:pull,push"),
                Some("invalid_token"),
            ),
            "Bearer realm=\"https://auth.example/token\",service=\"registry.example\",\
             scope=\"repository:library/ubuntu:pull,push\",error=\"invalid_token\""
        );
        assert_eq!(
            challenge("https://a/t", "s", None, None),
            "Bearer realm=\"https://a/t\",service=\"s\""
        );
        assert_eq!(
            challenge("r", "s", None, Some("insufficient_scope")),
            "Bearer realm=\"r\",service=\"s\",error=\"insufficient_scope\""
        );
        assert_eq!(
            challenge("r\"x", "s\\", Some("a\",error=\"b\r\nX: y"), None),
            "Bearer realm=\"rx\",service=\"s\",scope=\"a,error=bX: y\""
        );
    }
}
