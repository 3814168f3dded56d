//! Bearer tokens for tests and the dev stack: an ES256 signing key (P-256, made with `rcgen`), the
//! JWKS that publishes its public half, and access tokens (JWTs in the style of RFC 9068) signed
//! with it: what an identity provider would hand ordersvc's clients.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::KeyPair;
use serde_json::{Value, json};

/// The scope of operators: every order, every customer.
pub const OPERATOR_SCOPE: &str = "orders:admin";

/// How long [`TokenIssuer::customer`] and [`TokenIssuer::operator`] tokens live.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// A signing key with the issuer and audience its tokens name.
pub struct TokenIssuer {
    key_pem: String,
    key: EncodingKey,
    jwk: Jwk,
    kid: String,
    issuer: String,
    audience: String,
}

impl TokenIssuer {
    /// A new P-256 key.
    pub fn generate(issuer: &str, audience: &str) -> anyhow::Result<TokenIssuer> {
        let pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("making a P-256 signing key")?;
        TokenIssuer::from_key_pair(&pair, issuer, audience)
    }

    /// The key of `pem` (PKCS#8, as [`TokenIssuer::key_pem`] gives it).
    pub fn from_pem(pem: &str, issuer: &str, audience: &str) -> anyhow::Result<TokenIssuer> {
        let pair = KeyPair::from_pem(pem).context("reading the signing key (PKCS#8 PEM)")?;
        TokenIssuer::from_key_pair(&pair, issuer, audience)
    }

    fn from_key_pair(pair: &KeyPair, issuer: &str, audience: &str) -> anyhow::Result<TokenIssuer> {
        let key = EncodingKey::from_ec_der(&pair.serialize_der());
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)
            .context("the signing key's public JWK")?;
        // RFC 7638: the key id is the key's own thumbprint, so it changes only with the key.
        let kid = jwk.thumbprint(ThumbprintHash::SHA256);
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(TokenIssuer {
            key_pem: pair.serialize_pem(),
            key,
            jwk,
            kid,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    /// The private key as PKCS#8 PEM: keep it mode 600.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The public key as a JWK (with `kid`, `alg` ES256 and `use` sig).
    pub fn jwk(&self) -> Value {
        serde_json::to_value(&self.jwk).unwrap_or(Value::Null)
    }

    /// A JWKS holding this key and `others`'.
    pub fn jwks_with(&self, others: &[&TokenIssuer]) -> Value {
        let keys: Vec<Value> = std::iter::once(self)
            .chain(others.iter().copied())
            .map(TokenIssuer::jwk)
            .collect();
        json!({ "keys": keys })
    }

    /// A JWKS holding this key alone.
    pub fn jwks(&self) -> Value {
        self.jwks_with(&[])
    }

    /// Writes [`TokenIssuer::jwks`] to `path`.
    pub fn write_jwks(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.jwks().to_string())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The claims of an access token for `subject`, valid from now for `ttl`, with `scope` when
    /// given.
    pub fn claims(&self, subject: &str, scope: Option<&str>, ttl: Duration) -> Value {
        let now = unix_now();
        let mut claims = json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "client_id": "testkit",
            "iat": now,
            "nbf": now,
            "exp": now.saturating_add(ttl.as_secs()),
            "jti": jti(),
        });
        if let Some(scope) = scope {
            claims["scope"] = Value::from(scope);
        }
        claims
    }

    /// `claims` signed with this key (ES256, `typ` at+jwt, this key's `kid`).
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(&self.header(), claims)
    }

    /// `claims` signed with this key under `header` (which may name another key's `kid`).
    pub fn sign_with_header(&self, header: &Header, claims: &Value) -> String {
        // Signing a JSON value with a P-256 key made above cannot fail; an empty token is refused.
        jsonwebtoken::encode(header, claims, &self.key).unwrap_or_default()
    }

    /// The header [`TokenIssuer::sign`] uses.
    pub fn header(&self) -> Header {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("at+jwt".to_owned());
        header.kid = Some(self.kid.clone());
        header
    }

    /// A token for `subject` with `scope`, living `ttl`.
    pub fn token(&self, subject: &str, scope: Option<&str>, ttl: Duration) -> String {
        self.sign(&self.claims(subject, scope, ttl))
    }

    /// A customer's token: `sub` is the customer id, no scope.
    pub fn customer(&self, customer_id: &str) -> String {
        self.token(customer_id, None, DEFAULT_TTL)
    }

    /// An operator's token: scope [`OPERATOR_SCOPE`].
    pub fn operator(&self) -> String {
        self.token("operator", Some(OPERATOR_SCOPE), DEFAULT_TTL)
    }
}

/// A JWT with `header` and `claims` as given and an empty signature (`alg: none`, or anything a
/// hostile client may try).
pub fn unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    )
}

/// `claims` signed with HS256 under `secret`, with `kid` in the header: the algorithm-confusion
/// attack when `secret` is a public key.
pub fn hs256(secret: &[u8], kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// A token id unique within this process and very likely beyond it.
fn jti() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!(
        "{nanos:x}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Base64url without padding (RFC 7515's encoding of JWT parts).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextets = [(n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63];
        for sextet in sextets.iter().take(chunk.len() + 1) {
            out.push(char::from(ALPHABET[*sextet as usize]));
        }
    }
    out
}
