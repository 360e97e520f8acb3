//! Who a connecting client is, decided once on the upgrade request (and again on `refresh`).
//!
//! [`Authenticator`] is the one interface the rest of the node calls.
//! - **jwt**: the client presents a signed token (`Authorization: Bearer …`, or `?token=…` for
//!   browsers). `sub` is the user, `tenant` (optional) the tenant, `exp` is required; `nbf` and
//!   `iat` are honoured, and `aud`/`iss` are checked when configured. The key is the static
//!   one of `[auth]` or the one a token's `kid` chooses in a JSON Web Key Set ([`keys`]), read
//!   from a file or fetched from a URL and kept fresh ([`jwks`]).
//! - **dev**: the client names itself (`?user=alice&tenant=acme`); for trying PerOXO out.
//!
//! Tokens and query strings never reach the logs.

mod jwks;
mod keys;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;

use peroxo_config::{AuthConfig, AuthMode, ConfigError, JwtAlgorithm};
use peroxo_protocol::domain::{DEFAULT_TENANT, UserKey, validate_id};

pub use jwks::RefreshOutcome;
use jwks::RefreshingKeys;
use keys::{Choice, KeySet};

/// Why an upgrade request (or a refresh) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No usable identity was presented, or the token is not valid.
    #[error("{0}")]
    Unauthenticated(String),
    /// The identity presented is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The node cannot verify tokens yet (no key set loaded); trying again later may help.
    #[error("{0}")]
    Unavailable(String),
}

impl AuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            AuthError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `error` field of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Unauthenticated(_) => "unauthorized",
            AuthError::BadRequest(_) => "bad_request",
            AuthError::Unavailable(_) => "unavailable",
        }
    }
}

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub key: UserKey,
    /// When the credential expires (Unix seconds); `None` in dev mode.
    pub expires_at: Option<u64>,
    /// When the token was issued (its `iat`, Unix seconds); `None` in dev mode and for a
    /// token without `iat`. A revocation of the user's tokens compares it.
    pub issued_at: Option<u64>,
}

/// The claims PerOXO reads from a token. Times are JWT NumericDates (seconds, possibly
/// fractional). `nbf`, `aud` and `iss` are checked by the verifier itself.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    tenant: Option<String>,
    exp: f64,
    #[serde(default)]
    iat: Option<f64>,
}

/// Decides the identity of a connecting client.
pub enum Authenticator {
    /// Any client may claim any id.
    Dev,
    Jwt(Box<JwtVerifier>),
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authenticator::Dev => f.write_str("Authenticator::Dev"),
            Authenticator::Jwt(_) => f.write_str("Authenticator::Jwt"),
        }
    }
}

/// What `/metrics` shows of the verification keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyStats {
    /// Keys in the set in use (1 for a static key).
    pub keys: usize,
    /// Fetches of the key set by outcome (none for a static key).
    pub refreshes: [(RefreshOutcome, u64); 3],
}

/// The keys tokens are verified with.
enum Keys {
    /// `[auth]`'s one key.
    Static(KeySet),
    /// A JSON Web Key Set, from `auth.jwks_file` or `auth.jwks_url`.
    Refreshing(Arc<RefreshingKeys>),
}

/// Verifies tokens with the configured keys and rules.
pub struct JwtVerifier {
    keys: Keys,
    /// The rules of tokens of every tenant without rules of its own (their `algorithms` are
    /// replaced by the one of the key chosen for a token).
    validation: Validation,
    /// The rules of tenants with `aud` or `iss` of their own (`[auth.tenants.*]`).
    tenants: HashMap<String, Validation>,
    leeway_secs: u64,
}

fn algorithm(algorithm: JwtAlgorithm) -> Algorithm {
    match algorithm {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Authenticator {
    /// Builds the configured authenticator; key problems name their config key.
    pub fn from_config(config: &AuthConfig) -> Result<Self, ConfigError> {
        Ok(match config.mode {
            AuthMode::Dev => Authenticator::Dev,
            AuthMode::Jwt => Authenticator::Jwt(Box::new(JwtVerifier::from_config(config)?)),
        })
    }

    /// Logs what an operator must know about this mode at start-up.
    pub fn announce(&self) {
        match self {
            Authenticator::Dev => tracing::warn!(
                "auth.mode = \"dev\": any client can claim any user id; never expose this node"
            ),
            Authenticator::Jwt(verifier) => tracing::info!(
                keys = verifier.stats().keys,
                "auth.mode = \"jwt\": clients present signed tokens"
            ),
        }
    }

    /// Loads a key set that is fetched (waiting at most one fetch's timeout: an issuer that
    /// is down does not stop the start) and spawns the task that keeps it fresh. Needs a
    /// Tokio runtime; until it runs, a token that finds no key set asks for a fetch itself.
    pub async fn start(&self) {
        if let Authenticator::Jwt(verifier) = self
            && let Keys::Refreshing(keys) = &verifier.keys
        {
            keys.start().await;
        }
    }

    /// Whether the keys refresh themselves (a JWKS file or URL): a reload that leaves
    /// `[auth]` as it was keeps such an authenticator rather than start a new one.
    pub fn refreshes_itself(&self) -> bool {
        matches!(self, Authenticator::Jwt(verifier) if matches!(verifier.keys, Keys::Refreshing(_)))
    }

    /// The verification keys as `/metrics` shows them; `None` in dev mode.
    pub fn key_stats(&self) -> Option<KeyStats> {
        match self {
            Authenticator::Dev => None,
            Authenticator::Jwt(verifier) => Some(verifier.stats()),
        }
    }

    /// The identity of the client making this upgrade request. It may wait for a fetch of
    /// the key set, when the token names a key id the set lacks.
    pub async fn authenticate(
        &self,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> Result<Identity, AuthError> {
        match self {
            Authenticator::Dev => {
                let user = query.get("user").ok_or_else(|| {
                    AuthError::Unauthenticated(
                        "dev mode: name yourself with ?user=<id>[&tenant=<id>]".to_owned(),
                    )
                })?;
                validate_id(user).map_err(|e| AuthError::BadRequest(format!("user {e}")))?;
                let tenant = query.get("tenant").map_or(DEFAULT_TENANT, String::as_str);
                validate_id(tenant).map_err(|e| AuthError::BadRequest(format!("tenant {e}")))?;
                Ok(Identity {
                    key: UserKey::new(tenant, user.as_str()),
                    expires_at: None,
                    issued_at: None,
                })
            }
            Authenticator::Jwt(verifier) => {
                let token = bearer_token(headers)?
                    .or_else(|| query.get("token").map(String::as_str))
                    .ok_or_else(|| {
                        AuthError::Unauthenticated(
                            "missing token: send `Authorization: Bearer <jwt>` or ?token=<jwt>"
                                .to_owned(),
                        )
                    })?;
                verifier.verify(token).await
            }
        }
    }

    /// Verifies a token presented on an open session (`refresh`).
    pub async fn verify_token(&self, token: &str) -> Result<Identity, AuthError> {
        match self {
            Authenticator::Dev => Err(AuthError::BadRequest(
                "refresh needs auth.mode = \"jwt\"; this node runs in dev mode".to_owned(),
            )),
            Authenticator::Jwt(verifier) => verifier.verify(token).await,
        }
    }

    /// How long past `exp` a session may stay open.
    pub fn leeway(&self) -> Duration {
        match self {
            Authenticator::Dev => Duration::ZERO,
            Authenticator::Jwt(verifier) => Duration::from_secs(verifier.leeway_secs),
        }
    }
}

/// The token of an `Authorization: Bearer` header, if there is one.
fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| AuthError::Unauthenticated("malformed Authorization header".to_owned()))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(AuthError::Unauthenticated(
            "the Authorization header must be `Bearer <jwt>`".to_owned(),
        )),
    }
}

impl JwtVerifier {
    fn from_config(config: &AuthConfig) -> Result<Self, ConfigError> {
        let keys = match RefreshingKeys::from_config(config)? {
            Some(keys) => Keys::Refreshing(Arc::new(keys)),
            None => Keys::Static(KeySet::single(
                algorithm(config.algorithm),
                static_key(config)?,
            )),
        };
        let validation =
            validation_for(config, config.audience.as_deref(), config.issuer.as_deref());
        let tenants = config
            .tenants
            .keys()
            .map(|tenant| {
                let (audience, issuer) = config.claims_for(tenant);
                (tenant.clone(), validation_for(config, audience, issuer))
            })
            .collect();
        Ok(Self {
            keys,
            validation,
            tenants,
            leeway_secs: config.leeway_secs,
        })
    }

    /// The rules for `token`: its tenant's, chosen by the `tenant` claim read before the
    /// signature is checked (the full check that follows covers that claim too).
    fn validation_of(&self, token: &str) -> &Validation {
        if self.tenants.is_empty() {
            return &self.validation;
        }
        let tenant = unverified_tenant(token);
        self.tenants
            .get(tenant.as_deref().unwrap_or(DEFAULT_TENANT))
            .unwrap_or(&self.validation)
    }

    fn stats(&self) -> KeyStats {
        match &self.keys {
            Keys::Static(set) => KeyStats {
                keys: set.len(),
                refreshes: RefreshOutcome::ALL.map(|o| (o, 0)),
            },
            Keys::Refreshing(keys) => KeyStats {
                keys: keys.len(),
                refreshes: keys.outcomes(),
            },
        }
    }

    async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Unauthenticated("malformed token".to_owned()))?;
        let choice = match &self.keys {
            Keys::Static(set) => set.choose(&header),
            Keys::Refreshing(keys) => keys.choose(&header).await.ok_or_else(|| {
                AuthError::Unavailable(
                    "no verification keys loaded yet (auth.jwks_url); try again later".to_owned(),
                )
            })?,
        };
        let key = match choice {
            Choice::Key(key) => key,
            Choice::UnknownKid => {
                return Err(AuthError::Unauthenticated(
                    "unknown key id (kid)".to_owned(),
                ));
            }
            Choice::Refused(refusal) => {
                return Err(AuthError::Unauthenticated(refusal.message().to_owned()));
            }
        };
        // Only the chosen key's algorithm: the token's `alg` was matched against it above,
        // and the verifier checks it again.
        let mut validation = self.validation_of(token).clone();
        validation.algorithms = vec![key.algorithm];
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| AuthError::Unauthenticated(describe(e.kind())))?
            .claims;
        if claims
            .iat
            .is_some_and(|iat| iat > (now_secs() + self.leeway_secs) as f64)
        {
            return Err(AuthError::Unauthenticated(
                "token issued in the future (iat)".to_owned(),
            ));
        }
        validate_id(&claims.sub)
            .map_err(|e| AuthError::Unauthenticated(format!("token subject (sub) {e}")))?;
        let tenant = claims.tenant.unwrap_or_else(|| DEFAULT_TENANT.to_owned());
        validate_id(&tenant)
            .map_err(|e| AuthError::Unauthenticated(format!("token tenant {e}")))?;
        Ok(Identity {
            key: UserKey::new(tenant, claims.sub),
            // Whole seconds, rounded as the verifier rounds them.
            expires_at: Some(claims.exp.max(0.0).round() as u64),
            // Whole seconds, rounded down: a token is never taken as newer than it is.
            issued_at: claims.iat.map(|iat| iat.max(0.0).floor() as u64),
        })
    }
}

/// The static key of `[auth]`: the HS256 secret or the RS256/ES256 public key.
fn static_key(config: &AuthConfig) -> Result<DecodingKey, ConfigError> {
    Ok(match config.algorithm {
        JwtAlgorithm::HS256 => DecodingKey::from_secret(config.hs256_secret()?.expose().as_bytes()),
        JwtAlgorithm::RS256 => {
            DecodingKey::from_rsa_pem(&config.public_key_pem()?).map_err(|e| {
                ConfigError::new(
                    "auth.public_key_file",
                    format!("not an RSA public key in PEM: {e}"),
                )
            })?
        }
        JwtAlgorithm::ES256 => {
            DecodingKey::from_ec_pem(&config.public_key_pem()?).map_err(|e| {
                ConfigError::new(
                    "auth.public_key_file",
                    format!("not an EC public key in PEM: {e}"),
                )
            })?
        }
    })
}

/// The checks of a token whose `aud` and `iss` must be `audience` and `issuer` (when set).
fn validation_for(config: &AuthConfig, audience: Option<&str>, issuer: Option<&str>) -> Validation {
    let mut validation = Validation::new(algorithm(config.algorithm));
    validation.leeway = config.leeway_secs;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "sub"]);
    match audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            validation.required_spec_claims.insert("aud".to_owned());
        }
        None => validation.validate_aud = false,
    }
    if let Some(issuer) = issuer {
        validation.set_issuer(&[issuer]);
        validation.required_spec_claims.insert("iss".to_owned());
    }
    validation
}

/// The `tenant` claim of a token, read without checking anything (`None` when absent or
/// unreadable: the check that follows refuses a malformed token anyway).
fn unverified_tenant(token: &str) -> Option<String> {
    use base64::Engine;
    #[derive(Deserialize)]
    struct TenantOnly {
        tenant: Option<String>,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<TenantOnly>(&bytes).ok()?.tenant
}

/// A short, safe description of why a token was refused (never the token itself).
fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "token expired".to_owned(),
        ErrorKind::ImmatureSignature => "token not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidSignature => "invalid token signature".to_owned(),
        ErrorKind::InvalidAudience => "token audience (aud) not accepted".to_owned(),
        ErrorKind::InvalidIssuer => "token issuer (iss) not accepted".to_owned(),
        ErrorKind::InvalidAlgorithm => {
            "token signed with an algorithm this node does not accept".to_owned()
        }
        ErrorKind::MissingRequiredClaim(claim) => format!("token lacks the `{claim}` claim"),
        ErrorKind::InvalidClaimFormat(claim) => format!("token claim `{claim}` is malformed"),
        ErrorKind::Json(_) => {
            "token claims are malformed (`sub` and `exp` are required)".to_owned()
        }
        _ => "malformed token".to_owned(),
    }
}

/// Signs a token for `key`, valid for `ttl`, that this node's configuration accepts (for
/// `peroxo token`). Only HS256 can sign: the node holds no private key for RS256/ES256.
pub fn sign_token(
    config: &AuthConfig,
    key: &UserKey,
    ttl: Duration,
) -> Result<String, ConfigError> {
    if config.algorithm != JwtAlgorithm::HS256 {
        return Err(ConfigError::new(
            "auth.algorithm",
            "tokens can only be signed with HS256 here; sign RS256/ES256 tokens with your issuer's private key",
        ));
    }
    let secret = config.hs256_secret()?;
    if secret.is_empty() {
        return Err(ConfigError::new(
            "auth.jwt_secret",
            "no secret to sign with: set auth.jwt_secret (or PEROXO_AUTH__JWT_SECRET), or auth.jwt_secret_file",
        ));
    }
    let now = now_secs();
    let mut claims = serde_json::json!({
        "sub": key.user,
        "tenant": key.tenant,
        "exp": now + ttl.as_secs(),
        "iat": now,
    });
    let (audience, issuer) = config.claims_for(&key.tenant);
    if let Some(audience) = audience {
        claims["aud"] = audience.into();
    }
    if let Some(issuer) = issuer {
        claims["iss"] = issuer.into();
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )
    .map_err(|e| ConfigError::new("auth.jwt_secret", format!("cannot sign: {e}")))
}
