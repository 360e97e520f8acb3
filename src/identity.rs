//! Who a connecting client is, decided once on the upgrade request.
//!
//! [`Authenticator`] is the one interface the HTTP layer calls. Dev mode trusts the query
//! string (`?user=alice&tenant=acme`) and exists for trying PerOXO out; other modes slot in
//! here without touching the rest of the node.

use std::collections::HashMap;

use axum::http::{HeaderMap, StatusCode};

use crate::config::{AuthConfig, AuthMode};
use crate::domain::{DEFAULT_TENANT, UserKey, validate_id};

/// Why an upgrade request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No usable identity was presented.
    #[error("{0}")]
    Unauthenticated(String),
    /// The identity presented is malformed.
    #[error("{0}")]
    BadRequest(String),
}

impl AuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            AuthError::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The `error` field of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Unauthenticated(_) => "unauthorized",
            AuthError::BadRequest(_) => "bad_request",
        }
    }
}

/// Decides the identity of a connecting client.
#[derive(Debug, Clone)]
pub enum Authenticator {
    /// Any client may claim any id.
    Dev,
}

impl Authenticator {
    pub fn from_config(config: &AuthConfig) -> Self {
        match config.mode {
            AuthMode::Dev => Authenticator::Dev,
        }
    }

    /// Logs what an operator must know about this mode at start-up.
    pub fn announce(&self) {
        match self {
            Authenticator::Dev => tracing::warn!(
                "auth.mode = \"dev\": any client can claim any user id; never expose this node"
            ),
        }
    }

    /// The identity of the client making this upgrade request.
    pub fn authenticate(
        &self,
        query: &HashMap<String, String>,
        _headers: &HeaderMap,
    ) -> Result<UserKey, AuthError> {
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
                Ok(UserKey::new(tenant, user.as_str()))
            }
        }
    }
}
