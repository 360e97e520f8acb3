//! The `[auth]` section: how the gateway authenticates clients, and the checks of it that
//! need the key material (reading `jwt_secret_file`, `public_key_file` or `jwks_file`). Only
//! roles that authenticate clients run them, through [`crate::Config::validate_auth`].
//!
//! Tokens are verified either with one static key (`jwt_secret`, `jwt_secret_file` or
//! `public_key_file`, for `algorithm`) or with a JSON Web Key Set (`jwks_file` or `jwks_url`)
//! whose keys a token's `kid` chooses. The two are exclusive: a node holding both would have
//! to guess which one a token meant.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::secret::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Clients present a signed JWT.
    #[default]
    Jwt,
    /// The client names itself in the query string. For trying PerOXO out only.
    Dev,
}

/// The JWT signature algorithms PerOXO verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum JwtAlgorithm {
    /// HMAC with a shared secret.
    #[default]
    HS256,
    /// RSA, verified with a public key.
    RS256,
    /// ECDSA P-256, verified with a public key.
    ES256,
}

/// The `aud` and `iss` a tenant's tokens must carry, where they differ from `[auth]`'s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantAuth {
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

impl AuthConfig {
    /// The `aud` and `iss` that tokens of `tenant` must carry (`None`: not checked).
    pub fn claims_for(&self, tenant: &str) -> (Option<&str>, Option<&str>) {
        let rule = self.tenants.get(tenant);
        let audience = rule.and_then(|r| r.audience.as_deref());
        let issuer = rule.and_then(|r| r.issuer.as_deref());
        (
            audience.or(self.audience.as_deref()),
            issuer.or(self.issuer.as_deref()),
        )
    }
}

/// The shortest HS256 secret accepted, in bytes.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub algorithm: JwtAlgorithm,
    /// The HS256 shared secret.
    pub jwt_secret: Secret,
    /// A file holding the HS256 shared secret (instead of `jwt_secret`).
    pub jwt_secret_file: Option<PathBuf>,
    /// The PEM public key that verifies RS256 or ES256 tokens.
    pub public_key_file: Option<PathBuf>,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// `aud` and `iss` rules of single tenants (`[auth.tenants.acme]`), for tenants whose
    /// tokens come from an issuer of their own; a rule left out there is the global one.
    pub tenants: BTreeMap<String, TenantAuth>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    pub leeway_secs: u64,
    /// A JSON Web Key Set on disk: several keys, each chosen by the `kid` of a token, so keys
    /// can be rotated without downtime. Re-read like `jwks_url`.
    pub jwks_file: Option<PathBuf>,
    /// An http(s) URL serving a JSON Web Key Set (an identity provider's `jwks_uri`).
    pub jwks_url: Option<String>,
    /// How often the key set is fetched (or the file read) again; a shorter `max-age` in
    /// the answer's `Cache-Control` brings the next fetch forward.
    #[serde(with = "crate::seconds_or_duration")]
    pub jwks_refresh_secs: Duration,
    /// The shortest time between two fetches that tokens with an unknown `kid` ask for:
    /// forged `kid`s cannot make the node hammer the issuer.
    #[serde(with = "crate::seconds_or_duration")]
    pub jwks_min_refresh_secs: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Jwt,
            algorithm: JwtAlgorithm::HS256,
            jwt_secret: Secret::default(),
            jwt_secret_file: None,
            public_key_file: None,
            audience: None,
            issuer: None,
            tenants: BTreeMap::new(),
            leeway_secs: 30,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_secs: Duration::from_secs(300),
            jwks_min_refresh_secs: Duration::from_secs(30),
        }
    }
}

impl AuthConfig {
    /// Whether tokens are verified with a JSON Web Key Set (`jwks_file` or `jwks_url`)
    /// rather than one static key.
    pub fn uses_jwks(&self) -> bool {
        self.jwks_file.is_some() || self.jwks_url.is_some()
    }

    /// The text of `jwks_file`.
    pub fn jwks_file_text(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(path) = &self.jwks_file else {
            return Ok(None);
        };
        std::fs::read(path).map(Some).map_err(|e| {
            ConfigError::new(
                "auth.jwks_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })
    }

    /// The HS256 secret, from `jwt_secret` or `jwt_secret_file`.
    pub fn hs256_secret(&self) -> Result<Secret, ConfigError> {
        if let Some(path) = &self.jwt_secret_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    "auth.jwt_secret_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            return Ok(Secret::new(text.trim_end_matches(['\r', '\n'])));
        }
        Ok(self.jwt_secret.clone())
    }

    /// The PEM public key for RS256/ES256.
    pub fn public_key_pem(&self) -> Result<Vec<u8>, ConfigError> {
        let path = self.public_key_file.as_ref().ok_or_else(|| {
            ConfigError::new(
                "auth.public_key_file",
                format!(
                    "{:?} needs the PEM public key that verifies tokens: set auth.public_key_file",
                    self.algorithm
                ),
            )
        })?;
        std::fs::read(path).map_err(|e| {
            ConfigError::new(
                "auth.public_key_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })
    }

    /// Checks `[auth]` in `jwt` mode: exactly one source of an HS256 secret, long enough, or
    /// a readable public key for RS256 and ES256, or else one key set.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.mode != AuthMode::Jwt {
            return Ok(());
        }
        if let Some(tenant) = self
            .tenants
            .keys()
            .find(|t| peroxo_protocol::domain::validate_id(t).is_err())
        {
            return Err(ConfigError::new(
                format!("auth.tenants.{tenant}"),
                "not a valid tenant id (1-64 characters of [A-Za-z0-9._@-])",
            ));
        }
        if self.uses_jwks() {
            return self.validate_jwks();
        }
        match self.algorithm {
            JwtAlgorithm::HS256 => {
                if self.jwt_secret_file.is_some() && !self.jwt_secret.is_empty() {
                    return Err(ConfigError::new(
                        "auth.jwt_secret",
                        "set either auth.jwt_secret or auth.jwt_secret_file, not both",
                    ));
                }
                let secret = self.hs256_secret()?;
                if secret.is_empty() {
                    return Err(ConfigError::new(
                        "auth.jwt_secret",
                        "auth.mode = \"jwt\" needs a secret: set auth.jwt_secret (or the \
                         environment variable PEROXO_AUTH__JWT_SECRET), or auth.jwt_secret_file; \
                         use --dev only to try PerOXO out",
                    ));
                }
                if secret.expose().len() < MIN_JWT_SECRET_BYTES {
                    return Err(ConfigError::new(
                        "auth.jwt_secret",
                        format!("must be at least {MIN_JWT_SECRET_BYTES} bytes"),
                    ));
                }
            }
            JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                self.public_key_pem()?;
            }
        }
        Ok(())
    }

    /// Checks a key set's keys: one source, no static key beside it, sane refresh times.
    fn validate_jwks(&self) -> Result<(), ConfigError> {
        if self.jwks_file.is_some() && self.jwks_url.is_some() {
            return Err(ConfigError::new(
                "auth.jwks_url",
                "set either auth.jwks_file or auth.jwks_url, not both",
            ));
        }
        let static_key = [
            ("auth.jwt_secret", !self.jwt_secret.is_empty()),
            ("auth.jwt_secret_file", self.jwt_secret_file.is_some()),
            ("auth.public_key_file", self.public_key_file.is_some()),
        ];
        if let Some((key, _)) = static_key.iter().find(|(_, set)| *set) {
            return Err(ConfigError::new(
                *key,
                "a key set (auth.jwks_file or auth.jwks_url) holds every verification key: \
                 leave the static key unset, or put it in the set",
            ));
        }
        if let Some(url) = &self.jwks_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::new(
                "auth.jwks_url",
                "must be an http:// or https:// URL",
            ));
        }
        crate::duration_at_least(
            "auth.jwks_min_refresh_secs",
            self.jwks_min_refresh_secs,
            crate::MIN_SUBSECOND,
        )?;
        crate::duration_at_least(
            "auth.jwks_refresh_secs",
            self.jwks_refresh_secs,
            self.jwks_min_refresh_secs,
        )?;
        self.jwks_file_text()?;
        Ok(())
    }
}
