//! Issuing registry tokens: Docker token-authentication JWTs signed by the
//! current key of a [`KeyStore`].
//!
//! One token works on Docker Distribution 2.8 and 3.x alike: header `alg`
//! (RS256 or ES256 with raw `r||s`), `x5c` (the signing certificate, which
//! 2.8 chains to its `rootcertbundle`) and `kid` (the RFC 7638 thumbprint,
//! which 3.x looks up); claims `iss`, `sub`, `aud` as a JSON string,
//! integer `exp`, `nbf`, `iat`, a random `jti` and `access`.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use berth_auth::{Access, Claims};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::keys::{KeyError, KeyStore};

/// The default lifetime of a registry token.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("no randomness available")]
    Random,
    #[error("cannot express the token's times: {0}")]
    Time(String),
}

/// A signed token and what the token endpoint tells the client about it.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The compact JWS.
    pub token: String,
    /// Seconds until it expires (the issuer's lifetime).
    pub expires_in: u64,
    /// When it was issued, RFC 3339 (`2025-01-31T12:00:00Z`): clients such
    /// as skopeo refuse an integer here.
    pub issued_at: String,
    /// The claims that were signed.
    pub claims: Claims,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a bearer credential: never in logs.
        f.debug_struct("IssuedToken")
            .field("token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .field("issued_at", &self.issued_at)
            .field("claims", &self.claims)
            .finish()
    }
}

/// Issues tokens for one registry (`aud`) under one issuer name (`iss`).
#[derive(Debug, Clone)]
pub struct TokenIssuer {
    keys: Arc<KeyStore>,
    issuer: String,
    audience: String,
    lifetime: Duration,
}

impl TokenIssuer {
    /// An issuer signing with `keys`. `issuer` must equal the registry's
    /// `auth.token.issuer`, `audience` its `service`. Tells the key store
    /// `lifetime`, so that keys outlive the tokens they sign.
    pub fn new(
        keys: Arc<KeyStore>,
        issuer: String,
        audience: String,
        lifetime: Duration,
    ) -> TokenIssuer {
        keys.note_token_lifetime(lifetime);
        TokenIssuer {
            keys,
            issuer,
            audience,
            lifetime,
        }
    }

    /// The key store tokens are signed with.
    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    /// The `iss` of issued tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `aud` of issued tokens.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The lifetime of issued tokens.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Issues a token for `subject` granting `access`, now.
    pub fn issue(&self, subject: &str, access: Vec<Access>) -> Result<IssuedToken, TokenError> {
        self.issue_at(subject, access, SystemTime::now())
    }

    /// Issues a token as if the time were `now` (tests; tokens dated in the
    /// past or the future).
    pub fn issue_at(
        &self,
        subject: &str,
        access: Vec<Access>,
        now: SystemTime,
    ) -> Result<IssuedToken, TokenError> {
        let key = self.keys.signing_key_at(now)?;
        let time_err = |e: &dyn fmt::Display| TokenError::Time(e.to_string());
        let iat = now
            .duration_since(UNIX_EPOCH)
            .map_err(|e| time_err(&e))?
            .as_secs();
        let iat = i64::try_from(iat).map_err(|e| time_err(&e))?;
        let lifetime = i64::try_from(self.lifetime.as_secs()).map_err(|e| time_err(&e))?;
        let mut jti = [0u8; 16];
        SystemRandom::new()
            .fill(&mut jti)
            .map_err(|_| TokenError::Random)?;
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.to_owned(),
            aud: self.audience.clone(),
            exp: iat.saturating_add(lifetime),
            nbf: iat,
            iat,
            jti: hex::encode(jti),
            access,
        };
        let issued_at = OffsetDateTime::from_unix_timestamp(iat)
            .map_err(|e| time_err(&e))?
            .format(&Rfc3339)
            .map_err(|e| time_err(&e))?;
        let token = key.sign(&claims)?;
        Ok(IssuedToken {
            token,
            expires_in: self.lifetime.as_secs(),
            issued_at,
            claims,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Algorithm, KeyOptions, jwk_thumbprint};
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use berth_auth::{Action, Scope};
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
    use serde_json::Value;

    fn issuer(alg: Algorithm, dir: &std::path::Path) -> TokenIssuer {
        let options = KeyOptions {
            algorithm: alg,
            ..KeyOptions::default()
        };
        let keys = Arc::new(KeyStore::open(dir, options).unwrap());
        TokenIssuer::new(
            keys,
            "berth".into(),
            "registry.test".into(),
            DEFAULT_TOKEN_LIFETIME,
        )
    }

    fn validation(alg: Algorithm) -> Validation {
        let mut v = Validation::new(match alg {
            Algorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::Es256 => jsonwebtoken::Algorithm::ES256,
        });
        v.set_audience(&["registry.test"]);
        v.set_issuer(&["berth"]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        v.validate_nbf = true;
        v
    }

    fn part(token: &str, i: usize) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(token.split('.').nth(i).unwrap())
            .unwrap()
    }

    fn check_tokens(alg: Algorithm) {
        let dir = tempfile::tempdir().unwrap();
        let issuer = issuer(alg, dir.path());
        let access = vec![Access::from(&Scope::repository(
            "alice/app",
            &[Action::Pull, Action::Push],
        ))];
        let before = SystemTime::now();
        let issued = issuer.issue("alice", access.clone()).unwrap();
        let second = issuer.issue("alice", access.clone()).unwrap();
        let t = issued.token.as_str();

        // Header: alg, kid = RFC 7638 thumbprint of the key, x5c.
        let header = decode_header(t).unwrap();
        let raw_header: Value = serde_json::from_slice(&part(t, 0)).unwrap();
        assert_eq!(raw_header["alg"], alg.as_str());
        let kid = header.kid.clone().unwrap();
        let jwks = issuer.keys().jwks();
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid.as_str())
            .expect("the kid is in the JWKS");
        assert_eq!(jwk_thumbprint(jwk).unwrap(), kid);
        let x5c = header.x5c.clone().unwrap();
        assert_eq!(x5c.len(), 1);
        // Standard base64, not base64url.
        let cert_der = STANDARD.decode(&x5c[0]).unwrap();

        // Verifies with the JWKS key selected by kid.
        let jwk: Jwk = serde_json::from_value(jwk.clone()).unwrap();
        let by_jwk =
            decode::<Claims>(t, &DecodingKey::from_jwk(&jwk).unwrap(), &validation(alg)).unwrap();
        // And with the public key of the x5c certificate.
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            STANDARD.encode(&cert_der)
        );
        let cert_key = match alg {
            Algorithm::Rs256 => DecodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            Algorithm::Es256 => DecodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        };
        let by_cert = decode::<Claims>(t, &cert_key, &validation(alg)).unwrap();
        assert_eq!(by_jwk.claims, by_cert.claims);
        assert_eq!(by_jwk.claims, issued.claims);

        // A key not in the set does not verify.
        let other_dir = tempfile::tempdir().unwrap();
        let other = self::issuer(alg, other_dir.path());
        let other_jwk: Jwk =
            serde_json::from_value(other.keys().jwks()["keys"][0].clone()).unwrap();
        assert!(
            decode::<Claims>(
                t,
                &DecodingKey::from_jwk(&other_jwk).unwrap(),
                &validation(alg)
            )
            .is_err()
        );

        // Claims, as raw JSON: aud a string, integer times.
        let claims: Value = serde_json::from_slice(&part(t, 1)).unwrap();
        assert_eq!(claims["iss"], "berth");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["aud"], "registry.test");
        assert!(claims["aud"].is_string());
        for k in ["exp", "nbf", "iat"] {
            assert!(claims[k].is_i64(), "{k} is an integer: {}", claims[k]);
        }
        let iat = claims["iat"].as_i64().unwrap();
        let before = before.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!(iat >= before && iat <= before + 5);
        assert_eq!(claims["nbf"].as_i64().unwrap(), iat);
        assert_eq!(claims["exp"].as_i64().unwrap(), iat + 300);
        assert_eq!(claims["access"][0]["type"], "repository");
        assert_eq!(claims["access"][0]["name"], "alice/app");
        assert_eq!(
            claims["access"][0]["actions"],
            serde_json::json!(["pull", "push"])
        );
        assert!(!claims["jti"].as_str().unwrap().is_empty());
        assert_ne!(issued.claims.jti, second.claims.jti);

        // Response fields.
        assert_eq!(issued.expires_in, 300);
        let parsed = OffsetDateTime::parse(&issued.issued_at, &Rfc3339).unwrap();
        assert_eq!(parsed.unix_timestamp(), iat);
        assert!(issued.issued_at.ends_with('Z'), "{}", issued.issued_at);
        assert!(!format!("{issued:?}").contains(t));

        // Signature shape: ES256 raw r||s is 64 bytes (DER would be ~70-72
        // and start with 0x30); RS256 is the modulus length.
        let sig = part(t, 2);
        match alg {
            Algorithm::Es256 => assert_eq!(sig.len(), 64),
            Algorithm::Rs256 => assert!(sig.len() >= 256),
        }
    }

    #[test]
    fn rs256_tokens() {
        check_tokens(Algorithm::Rs256);
    }

    #[test]
    fn es256_tokens() {
        check_tokens(Algorithm::Es256);
    }

    #[test]
    fn expired_tokens_do_not_verify() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = issuer(Algorithm::Es256, dir.path());
        let old = SystemTime::now() - Duration::from_secs(3600);
        let issued = issuer.issue_at("bob", vec![], old).unwrap();
        let jwk: Jwk = serde_json::from_value(issuer.keys().jwks()["keys"][0].clone()).unwrap();
        let err = decode::<Claims>(
            &issued.token,
            &DecodingKey::from_jwk(&jwk).unwrap(),
            &validation(Algorithm::Es256),
        )
        .unwrap_err();
        assert_eq!(
            err.kind(),
            &jsonwebtoken::errors::ErrorKind::ExpiredSignature
        );
    }

    #[test]
    fn the_issuer_keeps_keys_for_its_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Arc::new(
            KeyStore::open(
                dir.path(),
                KeyOptions {
                    publish_delay: Duration::ZERO,
                    ..KeyOptions::default()
                },
            )
            .unwrap(),
        );
        let first = keys.signing_key().unwrap().kid().to_owned();
        let issuer = TokenIssuer::new(
            Arc::clone(&keys),
            "berth".into(),
            "registry.test".into(),
            Duration::from_secs(7200),
        );
        let t0 = SystemTime::now();
        let token = issuer.issue_at("carol", vec![], t0).unwrap();
        let rotation = keys.rotate(t0).unwrap();
        let new = issuer
            .issue_at("carol", vec![], rotation.activates)
            .unwrap();
        assert_ne!(
            decode_header(&new.token).unwrap().kid,
            decode_header(&token.token).unwrap().kid
        );
        assert_eq!(
            decode_header(&new.token).unwrap().kid.unwrap(),
            rotation.kid
        );
        // The old key signed until the new one activated; its 2 h tokens
        // (plus 60 s leeway) keep it published that long, not a second less.
        let last = rotation.activates;
        assert!(
            keys.prune(last + Duration::from_secs(3600))
                .unwrap()
                .is_empty()
        );
        assert!(
            keys.prune(last + Duration::from_secs(7200 + 59))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            keys.prune(last + Duration::from_secs(7200 + 60)).unwrap(),
            [first]
        );
    }
}
