//! Who calls: a bearer token (a JWT access token in the style of RFC 9068) whose signature checks
//! against a key of the JWKS (`ORDERSVC_JWKS`), issued by `ORDERSVC_ISSUER` for
//! `ORDERSVC_AUDIENCE`, within its `nbf`..`exp` (give or take [`LEEWAY_SECS`]). Its `sub` is the
//! customer; the scope [`OPERATOR_SCOPE`] makes an operator, who reaches every order.
//!
//! Only RS256, ES256 and EdDSA are accepted, each only with a key of its own family: `none` and the
//! HMAC algorithms are refused before any key is looked at, so a public key can never serve as an
//! HMAC secret. A `kid` not in the key set makes one refresh of it (at most one per
//! [`MIN_REFRESH`], however many such tokens arrive) and is refused if still unknown.
//!
//! Decoding keys are built once per key set, so a check costs one signature verification, and a
//! token that passed it is remembered with its key set until its `exp` ([`verified`]): a client
//! that sends the same token again is not checked again.

mod fetch;
mod verified;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::error::ApiError;

use self::fetch::Fetcher;
pub(crate) use self::fetch::ca_file;
pub use self::fetch::{CA_VARIABLE as JWKS_CA_VARIABLE, MAX_JWKS_BYTES};
use self::verified::Verified;

/// The scope of operators (`scope` claim, space-separated): every order of every customer.
pub const OPERATOR_SCOPE: &str = "orders:admin";
/// Clock difference tolerated between the issuer and this service, for `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;
/// The key set is fetched again for an unknown `kid` at most this often: a flood of tokens with
/// made-up key ids costs the issuer one request per interval.
pub const MIN_REFRESH: Duration = Duration::from_secs(5);
/// The accepted signature algorithms.
const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Who made a request, as its token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// `ORDERSVC_AUTH=none`: anyone, reaching every order.
    Anyone,
    /// A customer (the token's `sub`): their own orders only.
    Customer(String),
    /// A token with [`OPERATOR_SCOPE`]: every order.
    Operator(String),
}

impl Caller {
    /// The one customer whose orders the caller may reach; `None`: every customer's.
    pub fn only(&self) -> Option<&str> {
        match self {
            Caller::Customer(id) => Some(id),
            Caller::Anyone | Caller::Operator(_) => None,
        }
    }

    /// Whether the caller may see and change the orders of `customer_id`.
    pub fn reaches(&self, customer_id: &str) -> bool {
        self.only().is_none_or(|own| own == customer_id)
    }
}

/// The token check of one ordersvc; cheap to clone.
#[derive(Clone)]
pub struct Auth(Option<Arc<Verifier>>);

/// Where the key set comes from.
enum Source {
    File(PathBuf),
    Url(Box<Fetcher>),
}

/// A key of the set, ready to verify with.
struct Key {
    decoding: DecodingKey,
    algorithm: Algorithm,
}

type Keys = HashMap<String, Arc<Key>>;

/// The keys of one version of the key set, and the tokens they verified: replacing the set
/// forgets those tokens with it.
struct KeySet {
    keys: Keys,
    verified: Verified,
}

impl KeySet {
    fn new(keys: Keys) -> Arc<KeySet> {
        Arc::new(KeySet {
            keys,
            verified: Verified::default(),
        })
    }
}

struct Verifier {
    source: Source,
    keys: RwLock<Arc<KeySet>>,
    /// When the key set was last refreshed for an unknown `kid` (`None`: not yet); held while one
    /// refresh runs, so that concurrent requests wait for it rather than fetch again.
    refreshed: tokio::sync::Mutex<Option<Instant>>,
    validations: HashMap<Algorithm, Validation>,
}

impl Auth {
    /// No check at all (`ORDERSVC_AUTH=none`): every request is [`Caller::Anyone`].
    pub fn open() -> Auth {
        Auth(None)
    }

    /// Tokens checked against the key set of `jwks` (a file, read now, or an `http(s)://` URL,
    /// fetched at the first request), issued by `issuer` for `audience`. An `https://` server's
    /// certificate is checked against the system's authorities and those in the PEM file `ca`
    /// (`ORDERSVC_JWKS_CA`, only with `https://`).
    pub fn jwt(
        jwks: &str,
        ca: Option<&Path>,
        issuer: &str,
        audience: &str,
    ) -> anyhow::Result<Auth> {
        let source = if jwks.starts_with("http://") || jwks.starts_with("https://") {
            Source::Url(Box::new(Fetcher::new(jwks, ca)?))
        } else {
            anyhow::ensure!(
                ca.is_none(),
                "{JWKS_CA_VARIABLE} is set but ORDERSVC_JWKS is a file: unset {JWKS_CA_VARIABLE}"
            );
            Source::File(PathBuf::from(jwks))
        };
        let keys = match &source {
            Source::File(_) => {
                let keys = source.load_blocking()?;
                anyhow::ensure!(
                    !keys.is_empty(),
                    "ORDERSVC_JWKS: {jwks} holds no key ordersvc can verify with (a signing key \
                     with a kid, for RS256, ES256 or EdDSA)"
                );
                keys
            }
            Source::Url { .. } => Keys::new(),
        };
        let validations = ALGORITHMS
            .iter()
            .map(|algorithm| {
                let mut validation = Validation::new(*algorithm);
                validation.leeway = LEEWAY_SECS;
                validation.validate_nbf = true;
                validation.set_issuer(&[issuer]);
                validation.set_audience(&[audience]);
                validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                (*algorithm, validation)
            })
            .collect();
        Ok(Auth(Some(Arc::new(Verifier {
            source,
            keys: RwLock::new(KeySet::new(keys)),
            refreshed: tokio::sync::Mutex::new(None),
            validations,
        }))))
    }

    /// Whether requests are let in without a token.
    pub fn is_open(&self) -> bool {
        self.0.is_none()
    }

    /// The caller of a request with `headers`: 401 without a valid bearer token, 503 when the
    /// key set is needed and cannot be fetched.
    pub async fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let Some(verifier) = &self.0 else {
            return Ok(Caller::Anyone);
        };
        let token = bearer(headers).ok_or(ApiError::Unauthorized(None))?;
        verifier.verify(token).await
    }
}

/// The token of an `Authorization: Bearer …` header; `None` without one (another scheme counts
/// as no token).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

fn invalid(description: &'static str) -> ApiError {
    ApiError::Unauthorized(Some(description))
}

impl Verifier {
    async fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(caller) = self.current().verified.get(token, now) {
            return Ok(caller);
        }
        // `alg: none` and unknown names already fail here: they are no `Algorithm`.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the token is not a JWT signed with RS256, ES256 or EdDSA"))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(invalid(
                "the token's algorithm is not accepted (RS256, ES256 or EdDSA only)",
            ));
        }
        if let Some(typ) = header.typ.as_deref()
            && !["jwt", "at+jwt", "application/at+jwt"].contains(&typ.to_ascii_lowercase().as_str())
        {
            return Err(invalid("the token is not an access token (typ)"));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| invalid("the token names no key (kid)"))?;
        let (set, key) = self
            .key(kid)
            .await?
            .ok_or_else(|| invalid("the token is signed with a key this service does not know"))?;
        if key.algorithm != header.alg {
            return Err(invalid("the token's algorithm does not match its key"));
        }
        let validation = self
            .validations
            .get(&header.alg)
            .ok_or_else(|| invalid("the token's algorithm is not accepted"))?;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, validation)
            .map_err(|error| invalid(describe(error.kind())))?
            .claims;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|sub| !sub.trim().is_empty())
            .ok_or_else(|| invalid("the token has no subject (sub)"))?;
        let operator = claims
            .get("scope")
            .and_then(Value::as_str)
            .is_some_and(|scope| scope.split_whitespace().any(|s| s == OPERATOR_SCOPE));
        let caller = if operator {
            Caller::Operator(subject.to_owned())
        } else {
            Caller::Customer(subject.to_owned())
        };
        // `exp` is required and was checked above; one that is not a whole number of seconds
        // is simply not remembered.
        if let Some(expires) = claims.get("exp").and_then(Value::as_u64) {
            set.verified.insert(token, caller.clone(), expires, now);
        }
        Ok(caller)
    }

    /// The key set as it is now.
    fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The key `kid` of the current set, with that set.
    fn cached(&self, kid: &str) -> Option<(Arc<KeySet>, Arc<Key>)> {
        let set = self.current();
        let key = set.keys.get(kid).cloned()?;
        Some((set, key))
    }

    fn is_empty(&self) -> bool {
        self.current().keys.is_empty()
    }

    /// The key `kid` and the key set it is in, refreshing the set once when the key is unknown
    /// (unless that was done less than [`MIN_REFRESH`] ago).
    async fn key(&self, kid: &str) -> Result<Option<(Arc<KeySet>, Arc<Key>)>, ApiError> {
        if let Some(key) = self.cached(kid) {
            return Ok(Some(key));
        }
        let mut refreshed = self.refreshed.lock().await;
        // Another request may have refreshed while this one waited.
        if let Some(key) = self.cached(kid) {
            return Ok(Some(key));
        }
        if refreshed.is_some_and(|at| at.elapsed() < MIN_REFRESH) {
            return Ok(None);
        }
        *refreshed = Some(Instant::now());
        match self.source.load().await {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "key set refreshed for an unknown kid");
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = KeySet::new(keys);
                Ok(self.cached(kid))
            }
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "cannot refresh the key set (ORDERSVC_JWKS)"
                );
                if self.is_empty() {
                    Err(ApiError::Unavailable(
                        "tokens cannot be checked now: the key set is unavailable".to_owned(),
                    ))
                } else {
                    Ok(None)
                }
            }
        }
    }
}

/// What was wrong with a token, for `error_description`: never the key or the expected values.
fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
        ErrorKind::InvalidIssuer => "the token's issuer is not accepted",
        ErrorKind::InvalidAudience => "the token is not meant for this API (its audience)",
        ErrorKind::InvalidSignature => "the token's signature is invalid",
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => "the token has no expiry (exp)",
            "iss" => "the token has no issuer (iss)",
            "aud" => "the token has no audience (aud)",
            _ => "the token has no subject (sub)",
        },
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "the token's algorithm is not accepted"
        }
        _ => "the token is malformed",
    }
}

impl Source {
    async fn load(&self) -> anyhow::Result<Keys> {
        match self {
            Source::File(_) => self.load_blocking(),
            Source::Url(fetcher) => Ok(keys(&fetcher.fetch().await?)),
        }
    }

    /// The key set of a file (a few kilobytes: read in place).
    fn load_blocking(&self) -> anyhow::Result<Keys> {
        let Source::File(path) = self else {
            anyhow::bail!("the key set of a URL is fetched, not read");
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("ORDERSVC_JWKS: cannot read {}", path.display()))?;
        let set: Value = serde_json::from_str(&text)
            .with_context(|| format!("ORDERSVC_JWKS: {} is not a JWKS (JSON)", path.display()))?;
        Ok(keys(&set))
    }
}

/// The usable keys of a JWKS by `kid`: signing keys of an accepted algorithm. Others (encryption
/// keys, HMAC secrets, other curves, keys without `kid`) are skipped: a set may hold them for
/// other services.
fn keys(set: &Value) -> Keys {
    let mut keys = Keys::new();
    for value in set["keys"].as_array().into_iter().flatten() {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value.clone()) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|usage| *usage != PublicKeyUse::Signature)
        {
            continue;
        }
        let Some(algorithm) = algorithm(&jwk) else {
            continue;
        };
        if let Ok(decoding) = DecodingKey::from_jwk(&jwk) {
            keys.insert(
                kid,
                Arc::new(Key {
                    decoding,
                    algorithm,
                }),
            );
        }
    }
    keys
}

/// The one accepted algorithm a key is for: its `alg` when given, else what its type implies.
fn algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(implied),
        Some(stated) => {
            let stated = match stated {
                KeyAlgorithm::RS256 => Algorithm::RS256,
                KeyAlgorithm::ES256 => Algorithm::ES256,
                KeyAlgorithm::EdDSA => Algorithm::EdDSA,
                _ => return None,
            };
            (stated == implied).then_some(stated)
        }
    }
}

/// Middleware of the protected routes: a request goes on with its [`Caller`] in its extensions,
/// or is answered 401 (503 when the key set cannot be fetched) before its body is read.
pub(crate) async fn authenticate(
    State(auth): State<Auth>,
    mut request: Request,
    next: Next,
) -> Response {
    match auth.caller(request.headers()).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}
