//! Token authentication at the HTTP edge: [`TokenAuth`] holds the
//! [`Verifier`], the challenge's `realm` and `service`, and an optional
//! callback that refetches the token service's key set when a token names
//! an unknown `kid` (at most once every [`REFETCH_INTERVAL`]).
//!
//! [`TokenAuth::check`] runs in `dispatch` after the endpoint is parsed and
//! before its handler reads the body, so a refused request writes nothing.
//!
//! Verified tokens are remembered (by the SHA-256 of their text, never the
//! text) with their claims: a client sends the same token with every
//! request of a pull or push, and the RSA signature check is most of a
//! small request's cost. A remembered token is still checked for `exp` and
//! `nbf` on every use, and the memory is emptied whenever the key set
//! changes, so a token is never accepted from it that the current keys
//! would refuse.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, Method, Uri, header};
use berth_auth::{Action, Claims, Scope};

use super::error::ApiError;
use super::route::Endpoint;
use crate::auth::{
    AuthError, KeySet, Verifier, catalog_access, challenge, is_granted, required_access,
    scope_granted, scope_string,
};

/// The least time between two refetches of the key set.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(5);

/// The most verified tokens remembered; when full, the memory is emptied
/// (live clients verify once more and refill it).
pub const VERIFIED_TOKENS: usize = 8192;

/// A token's memory key: the SHA-256 of its text.
type TokenHash = [u8; 32];

/// A callback that fetches the current key set (`None` when it cannot).
pub type KeyRefetch =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Option<KeySet>> + Send>> + Send + Sync>;

/// Where challenges send clients for a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Realm {
    /// Always this URL.
    Fixed(String),
    /// The host the client used to reach the registry (its `Host`
    /// header or HTTP/2 authority), on the token service's port: clients
    /// that reach the registry by any of its names or addresses are sent
    /// to the same name, which the certificate covers. `fallback` is the
    /// host used when the request names none (or an unusable one).
    SameHost {
        scheme: &'static str,
        port: u16,
        fallback: String,
    },
}

impl From<String> for Realm {
    fn from(url: String) -> Realm {
        Realm::Fixed(url)
    }
}

impl From<&str> for Realm {
    fn from(url: &str) -> Realm {
        Realm::Fixed(url.to_owned())
    }
}

impl Realm {
    /// The realm URL for a request with these `headers` and `uri`.
    pub fn for_request(&self, uri: &Uri, headers: &HeaderMap) -> String {
        match self {
            Realm::Fixed(url) => url.clone(),
            Realm::SameHost {
                scheme,
                port,
                fallback,
            } => {
                let authority = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| uri.authority().map(|a| a.as_str()));
                let host = authority.and_then(host_of).unwrap_or(fallback);
                format!("{scheme}://{host}:{port}/token")
            }
        }
    }
}

/// The host of an `authority` (`host`, `host:port`, `[v6]:port`), if it is
/// a plain DNS name or IP address: anything else (user info, odd bytes) is
/// refused rather than echoed into a URL.
fn host_of(authority: &str) -> Option<&str> {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let inner = &rest[..end];
        inner.parse::<std::net::Ipv6Addr>().ok()?;
        &authority[..end + 2]
    } else {
        match authority.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return None,
            None => authority,
        }
    };
    let plain = host.starts_with('[')
        || (!host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'));
    plain.then_some(host)
}

/// Bearer-token enforcement for the registry API.
pub struct TokenAuth {
    verifier: RwLock<Verifier>,
    realm: Realm,
    service: String,
    refetch: Option<KeyRefetch>,
    /// When the key set was last refetched; held across the refetch so
    /// that concurrent requests with the new key wait for it.
    last_refetch: tokio::sync::Mutex<Option<Instant>>,
    /// Tokens verified with the current keys, and their claims.
    verified: RwLock<HashMap<TokenHash, Claims>>,
}

impl fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAuth")
            .field("realm", &self.realm)
            .field("service", &self.service)
            .field("refetch", &self.refetch.is_some())
            .finish_non_exhaustive()
    }
}

/// What a request must be granted.
enum Required {
    /// Only a valid token (`/v2/`, and paths that are no endpoint).
    Nothing,
    /// Repository access, per operation.
    Repository(Vec<(String, Action)>),
    /// A non-repository scope (the catalog).
    Scope(Scope),
}

impl Required {
    fn scope(&self) -> Option<String> {
        match self {
            Required::Nothing => None,
            Required::Repository(r) => Some(scope_string(r)),
            Required::Scope(s) => Some(s.to_string()),
        }
    }

    fn granted(&self, claims: &Claims) -> bool {
        match self {
            Required::Nothing => true,
            Required::Repository(r) => is_granted(claims, r),
            Required::Scope(s) => scope_granted(claims, s),
        }
    }
}

impl TokenAuth {
    /// Enforces tokens verified by `verifier`; challenges send clients to
    /// `realm` for `service` (which should be the verifier's audience).
    pub fn new(verifier: Verifier, realm: impl Into<Realm>, service: impl Into<String>) -> Self {
        TokenAuth {
            verifier: RwLock::new(verifier),
            realm: realm.into(),
            service: service.into(),
            refetch: None,
            last_refetch: tokio::sync::Mutex::new(None),
            verified: RwLock::new(HashMap::new()),
        }
    }

    /// Refetches the key set with `refetch` when a token names an unknown
    /// key.
    pub fn with_refetch(mut self, refetch: KeyRefetch) -> Self {
        self.refetch = Some(refetch);
        self
    }

    /// The challenge's realm.
    pub fn realm(&self) -> &Realm {
        &self.realm
    }

    /// The challenge's service.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Replaces the trusted keys (and forgets every verified token).
    pub fn set_keys(&self, keys: KeySet) {
        let mut verifier = self.verifier.write().unwrap_or_else(|e| e.into_inner());
        verifier.set_keys(keys);
        self.verified
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The claims of `token` if it was verified before and is still within
    /// its validity.
    fn remembered(&self, hash: &TokenHash) -> Option<Claims> {
        let claims = self
            .verified
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .cloned()?;
        let verifier = self.verifier.read().unwrap_or_else(|e| e.into_inner());
        verifier
            .check_times(&claims, std::time::SystemTime::now())
            .ok()
            .map(|()| claims)
    }

    fn remember(&self, hash: TokenHash, claims: &Claims) {
        let mut verified = self.verified.write().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_TOKENS {
            verified.clear();
        }
        verified.insert(hash, claims.clone());
    }

    fn verify_now(&self, token: &str) -> Result<Claims, AuthError> {
        self.verifier
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .verify(token)
    }

    /// Verifies `token` (or finds it verified before); on an unknown key,
    /// refetches the key set (at most once every [`REFETCH_INTERVAL`]) and
    /// tries once more.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let mut hash = [0u8; 32];
        hash.copy_from_slice(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref(),
        );
        if let Some(claims) = self.remembered(&hash) {
            return Ok(claims);
        }
        let claims = self.verify_with_keys(token).await?;
        self.remember(hash, &claims);
        Ok(claims)
    }

    async fn verify_with_keys(&self, token: &str) -> Result<Claims, AuthError> {
        match self.verify_now(token) {
            Err(AuthError::UnknownKey(kid)) => {
                let Some(refetch) = &self.refetch else {
                    return Err(AuthError::UnknownKey(kid));
                };
                let mut last = self.last_refetch.lock().await;
                // Another request may have refetched while this one waited.
                match self.verify_now(token) {
                    Err(AuthError::UnknownKey(kid)) => {
                        if last.is_some_and(|t| t.elapsed() < REFETCH_INTERVAL) {
                            return Err(AuthError::UnknownKey(kid));
                        }
                        *last = Some(Instant::now());
                        match refetch().await {
                            Some(keys) => {
                                tracing::info!(keys = keys.len(), "refetched the token key set");
                                self.set_keys(keys);
                                self.verify_now(token)
                            }
                            None => {
                                tracing::warn!("could not refetch the token key set");
                                Err(AuthError::UnknownKey(kid))
                            }
                        }
                    }
                    other => other,
                }
            }
            other => other,
        }
    }

    /// Checks that the request carries a token granting what `ep` and
    /// `method` need; the refusal is a 401 with a Bearer challenge.
    pub(crate) async fn check(
        &self,
        ep: Option<&Endpoint>,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Claims, ApiError> {
        let required = required_for(ep, method, uri);
        let scope = required.scope();
        let realm = self.realm.for_request(uri, headers);
        let challenge_with =
            |error: Option<&str>| hv(&challenge(&realm, &self.service, scope.as_deref(), error));
        let Some(token) = bearer(headers) else {
            return Err(ApiError::unauthorized(challenge_with(None)));
        };
        let claims = match self.verify(token).await {
            Ok(claims) => claims,
            Err(e) => {
                tracing::info!(error = %e, "refused a registry token");
                return Err(ApiError::invalid_token(challenge_with(Some(
                    "invalid_token",
                ))));
            }
        };
        if !required.granted(&claims) {
            tracing::info!(subject = %claims.sub, scope = scope.as_deref().unwrap_or(""),
                "token lacks the access");
            return Err(ApiError::insufficient_scope(challenge_with(Some(
                "insufficient_scope",
            ))));
        }
        Ok(claims)
    }
}

/// What `method` on `ep` needs; `None` is a path that is no endpoint.
fn required_for(ep: Option<&Endpoint>, method: &Method, uri: &Uri) -> Required {
    let repo =
        |name: &str, from: Option<&str>| Required::Repository(required_access(method, name, from));
    match ep {
        None | Some(Endpoint::Base) => Required::Nothing,
        Some(Endpoint::Catalog) => Required::Scope(catalog_access()),
        Some(Endpoint::Uploads { name }) if *method == Method::POST => {
            let from = mount_from(uri);
            repo(name.as_str(), from.as_deref())
        }
        Some(
            Endpoint::Tags { name }
            | Endpoint::Uploads { name }
            | Endpoint::Manifest { name, .. }
            | Endpoint::Blob { name, .. }
            | Endpoint::Upload { name, .. }
            | Endpoint::Referrers { name, .. },
        ) => repo(name.as_str(), None),
    }
}

/// The `from` of a mount (`?mount=<digest>&from=<name>`).
fn mount_from(uri: &Uri) -> Option<String> {
    let query = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri).ok()?;
    let get = |k: &str| query.0.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    get("mount")?;
    get("from").cloned()
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        for (v, want) in [
            ("Bearer abc", Some("abc")),
            ("bearer  abc ", Some("abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer ", None),
        ] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
            assert_eq!(bearer(&h), want, "{v}");
        }
    }

    /// Verified tokens are remembered, but never past their validity, never
    /// across a change of keys, and never for a token that differs.
    #[tokio::test]
    async fn verified_tokens_are_remembered_within_their_validity() {
        use berth_identity::keys::{KeyOptions, KeyStore};
        use berth_identity::token::TokenIssuer;
        let dir = tempfile::tempdir().unwrap();
        let keys = Arc::new(KeyStore::open(dir.path(), KeyOptions::default()).unwrap());
        let issuer = TokenIssuer::new(
            keys.clone(),
            "iss".into(),
            "aud".into(),
            Duration::from_secs(2),
        );
        let set = || KeySet::from_jwks(&keys.jwks()).unwrap();
        let verifier = Verifier::new(set(), "iss", "aud").with_leeway(Duration::ZERO);
        let auth = TokenAuth::new(verifier, "https://r/token", "aud");
        let token = issuer.issue("alice", Vec::new()).unwrap().token;

        assert_eq!(auth.verify(&token).await.unwrap().sub, "alice");
        assert_eq!(auth.verified.read().unwrap().len(), 1);
        assert_eq!(auth.verify(&token).await.unwrap().sub, "alice");
        assert_eq!(auth.verified.read().unwrap().len(), 1, "no second entry");

        // A different text (one signature byte changed) is verified anew.
        let mut forged = token.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert!(auth.verify(&forged).await.is_err());

        // New keys: the memory is emptied.
        auth.set_keys(set());
        assert!(auth.verified.read().unwrap().is_empty());
        auth.verify(&token).await.unwrap();

        // Past `exp`, the remembered token is refused like any other.
        tokio::time::sleep(Duration::from_millis(3100)).await;
        assert!(matches!(auth.verify(&token).await, Err(AuthError::Expired)));
    }

    #[test]
    fn realm_follows_the_host_the_client_used() {
        let realm = Realm::SameHost {
            scheme: "https",
            port: 9002,
            fallback: "registry.example".into(),
        };
        let uri: Uri = "/v2/".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(
            realm.for_request(&uri, &h),
            "https://registry.example:9002/token"
        );
        for (host, want) in [
            ("localhost:9001", "https://localhost:9002/token"),
            ("127.0.0.1:9001", "https://127.0.0.1:9002/token"),
            ("[::1]:9001", "https://[::1]:9002/token"),
            ("reg.example", "https://reg.example:9002/token"),
            // Refused: user info, paths, quotes, bad IPv6: the fallback.
            ("evil@x:1", "https://registry.example:9002/token"),
            ("x/y", "https://registry.example:9002/token"),
            ("a\"b", "https://registry.example:9002/token"),
            ("[zz]:1", "https://registry.example:9002/token"),
            ("x:port", "https://registry.example:9002/token"),
        ] {
            h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            assert_eq!(realm.for_request(&uri, &h), want, "{host}");
        }
        let h2: Uri = "https://h2.example:9001/v2/".parse().unwrap();
        assert_eq!(
            realm.for_request(&h2, &HeaderMap::new()),
            "https://h2.example:9002/token"
        );
    }

    #[test]
    fn mounts_need_pull_on_the_source() {
        let uri: Uri = "/v2/a/blobs/uploads/?mount=sha256:x&from=b/c"
            .parse()
            .unwrap();
        assert_eq!(mount_from(&uri).as_deref(), Some("b/c"));
        let uri: Uri = "/v2/a/blobs/uploads/?from=b/c".parse().unwrap();
        assert_eq!(mount_from(&uri), None);
    }
}
