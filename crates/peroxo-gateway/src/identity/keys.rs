//! The keys that verify tokens, and which one a token's header chooses.
//!
//! A [`KeySet`] holds either the one static key of `[auth]` (`jwt_secret` or
//! `public_key_file`) or the keys of a JSON Web Key Set. Choosing keeps these rules, here and
//! nowhere else:
//! - a token with a `kid` is verified with the key of that `kid` only, and only when that key's
//!   algorithm is the token's `alg`: a token never picks an algorithm its key was not meant for
//!   (an RSA public key taken as an HMAC secret is the classic forgery);
//! - a token without a `kid` is verified when exactly one key of the set has its `alg`;
//! - the static key ignores `kid`, as the node always did.
//!
//! A set's key is used when its `alg` (or, without one, its `kty` and curve) is HS256, RS256 or
//! ES256 and its `use` is not `enc`; other keys (encryption keys, other algorithms) are left
//! out. A key meant for signing that cannot be used safely (an `alg` its `kty` cannot carry,
//! an HMAC secret shorter than [`MIN_JWT_SECRET_BYTES`], unreadable components) or two keys
//! with one `kid` make the whole set invalid.

use std::sync::Arc;

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Header};

use peroxo_config::MIN_JWT_SECRET_BYTES;

/// One key and the one algorithm it verifies.
pub(crate) struct VerificationKey {
    /// The `kid` tokens name it by; `None` for the static key and kid-less set keys.
    pub(crate) kid: Option<String>,
    pub(crate) algorithm: Algorithm,
    pub(crate) key: DecodingKey,
}

/// The keys a node verifies tokens with.
pub(crate) struct KeySet {
    keys: Vec<Arc<VerificationKey>>,
    /// The static key's rule: the token's `kid` is not read.
    ignores_kid: bool,
}

/// The kids and algorithms, never the key material.
impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (&k.kid, k.algorithm)))
            .finish()
    }
}

/// Which key a token's header chooses.
pub(crate) enum Choice {
    Key(Arc<VerificationKey>),
    /// The token names a `kid` the set does not hold (a fresher set may).
    UnknownKid,
    Refused(KeyRefusal),
}

/// Why no key of the set may verify a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyRefusal {
    /// The key the `kid` names is for another algorithm than the token's `alg`.
    AlgorithmMismatch,
    /// No key verifies the token's `alg`.
    NoKeyForAlgorithm,
    /// The token has no `kid` and several keys verify its `alg`.
    KidNeeded,
}

impl KeyRefusal {
    pub(crate) fn message(self) -> &'static str {
        match self {
            KeyRefusal::AlgorithmMismatch => {
                "token algorithm (alg) is not the one of the key its key id (kid) names"
            }
            KeyRefusal::NoKeyForAlgorithm => {
                "token signed with an algorithm this node does not accept"
            }
            KeyRefusal::KidNeeded => {
                "token without a key id (kid), and several keys of its algorithm are trusted"
            }
        }
    }
}

/// Why a JSON Web Key Set cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JwksError {
    #[error("not a JSON Web Key Set: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no key of the set verifies HS256, RS256 or ES256 signatures")]
    NoUsableKey,
    #[error("two keys have the key id (kid) {0:?}")]
    DuplicateKid(String),
    #[error("key {kid}: {reason}")]
    BadKey { kid: String, reason: String },
}

impl KeySet {
    /// The static key: every token is verified with it, whatever its `kid`.
    pub(crate) fn single(algorithm: Algorithm, key: DecodingKey) -> Self {
        let key = VerificationKey {
            kid: None,
            algorithm,
            key,
        };
        Self {
            keys: vec![Arc::new(key)],
            ignores_kid: true,
        }
    }

    /// The usable keys of a JSON Web Key Set (`{"keys": [...]}`).
    pub(crate) fn from_jwks(json: &[u8]) -> Result<Self, JwksError> {
        let set: JwkSet = serde_json::from_slice(json)?;
        let mut keys: Vec<Arc<VerificationKey>> = Vec::new();
        for jwk in &set.keys {
            let Some(key) = verification_key(jwk)? else {
                continue;
            };
            if let Some(kid) = &key.kid
                && keys.iter().any(|k| k.kid.as_ref() == Some(kid))
            {
                return Err(JwksError::DuplicateKid(kid.clone()));
            }
            keys.push(Arc::new(key));
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(Self {
            keys,
            ignores_kid: false,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key that may verify a token with this header (see the module's rules).
    pub(crate) fn choose(&self, header: &Header) -> Choice {
        if let (Some(kid), false) = (&header.kid, self.ignores_kid) {
            return match self.keys.iter().find(|k| k.kid.as_ref() == Some(kid)) {
                None => Choice::UnknownKid,
                Some(key) if key.algorithm != header.alg => {
                    Choice::Refused(KeyRefusal::AlgorithmMismatch)
                }
                Some(key) => Choice::Key(Arc::clone(key)),
            };
        }
        let mut of_alg = self.keys.iter().filter(|k| k.algorithm == header.alg);
        match (of_alg.next(), of_alg.next()) {
            (Some(key), None) => Choice::Key(Arc::clone(key)),
            (None, _) => Choice::Refused(KeyRefusal::NoKeyForAlgorithm),
            (Some(_), Some(_)) => Choice::Refused(KeyRefusal::KidNeeded),
        }
    }
}

/// The key a JWK describes, `None` for one not meant for verifying HS256, RS256 or ES256
/// signatures, or an error for one meant for it that cannot be used safely.
fn verification_key(jwk: &Jwk) -> Result<Option<VerificationKey>, JwksError> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Ok(None);
    }
    let kid = jwk.common.key_id.clone();
    let bad = |reason: String| JwksError::BadKey {
        kid: kid.clone().unwrap_or_else(|| "without kid".to_owned()),
        reason,
    };
    let stated = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::HS256) => Some(Algorithm::HS256),
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(_) => return Ok(None),
    };
    // What the key material can verify: its `kty` (and curve) decide, never the token.
    let carried = match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        _ => {
            return match stated {
                None => Ok(None),
                Some(alg) => Err(bad(format!("its key type cannot verify {alg:?}"))),
            };
        }
    };
    if let Some(stated) = stated
        && stated != carried
    {
        return Err(bad(format!(
            "alg {stated:?} on a key that verifies {carried:?} only"
        )));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("unreadable key: {e}")))?;
    if carried == Algorithm::HS256
        && key.try_get_as_bytes().map_or(0, <[u8]>::len) < MIN_JWT_SECRET_BYTES
    {
        return Err(bad(format!(
            "an HS256 secret must be at least {MIN_JWT_SECRET_BYTES} bytes"
        )));
    }
    Ok(Some(VerificationKey {
        kid,
        algorithm: carried,
        key,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use serde_json::json;

    fn oct(kid: &str, secret: &str) -> serde_json::Value {
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        json!({"kty": "oct", "kid": kid, "alg": "HS256", "k": k})
    }

    fn set(keys: serde_json::Value) -> Result<KeySet, JwksError> {
        KeySet::from_jwks(json!({ "keys": keys }).to_string().as_bytes())
    }

    fn header(alg: Algorithm, kid: Option<&str>) -> Header {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        header
    }

    const LONG: &str = "a-secret-long-enough-for-hs256-tokens";

    /// What `keys` chooses for a token of `alg` naming `kid`, as text.
    fn chosen(keys: &KeySet, alg: Algorithm, kid: Option<&str>) -> String {
        match keys.choose(&header(alg, kid)) {
            Choice::Key(key) => format!("key {:?}", key.kid.as_deref()),
            Choice::UnknownKid => "unknown kid".to_owned(),
            Choice::Refused(refusal) => format!("{refusal:?}"),
        }
    }

    #[test]
    fn a_kid_chooses_its_key_and_only_for_the_key_s_algorithm() {
        let keys = set(json!([oct("one", LONG), oct("two", LONG)])).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            chosen(&keys, Algorithm::HS256, Some("two")),
            "key Some(\"two\")"
        );
        assert_eq!(
            chosen(&keys, Algorithm::HS256, Some("three")),
            "unknown kid"
        );
        assert_eq!(
            chosen(&keys, Algorithm::RS256, Some("one")),
            "AlgorithmMismatch"
        );
    }

    #[test]
    fn a_token_without_kid_needs_exactly_one_key_of_its_algorithm() {
        let two = set(json!([oct("one", LONG), oct("two", LONG)])).unwrap();
        assert_eq!(chosen(&two, Algorithm::HS256, None), "KidNeeded");
        let one = set(json!([oct("one", LONG)])).unwrap();
        assert_eq!(chosen(&one, Algorithm::HS256, None), "key Some(\"one\")");
        assert_eq!(chosen(&one, Algorithm::ES256, None), "NoKeyForAlgorithm");
    }

    #[test]
    fn the_static_key_ignores_kid_but_not_alg() {
        let keys = KeySet::single(Algorithm::HS256, DecodingKey::from_secret(LONG.as_bytes()));
        assert_eq!(chosen(&keys, Algorithm::HS256, Some("any")), "key None");
        assert_eq!(chosen(&keys, Algorithm::RS256, None), "NoKeyForAlgorithm");
    }

    #[test]
    fn keys_for_other_purposes_are_left_out_and_unsafe_ones_refuse_the_set() {
        let mut encryption = oct("enc", LONG);
        encryption["use"] = json!("enc");
        let mut other_alg = oct("hs512", LONG);
        other_alg["alg"] = json!("HS512");
        let keys = set(json!([encryption, other_alg, oct("sig", LONG)])).unwrap();
        assert_eq!(keys.len(), 1);

        let mut confused = oct("confused", LONG);
        confused["alg"] = json!("RS256");
        let err = set(json!([confused])).unwrap_err().to_string();
        assert!(err.contains("confused"), "{err}");
        let err = set(json!([oct("short", "too-short")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least"), "{err}");
        assert!(matches!(
            set(json!([oct("a", LONG), oct("a", LONG)])),
            Err(JwksError::DuplicateKid(_))
        ));
        assert!(matches!(set(json!([])), Err(JwksError::NoUsableKey)));
        assert!(matches!(
            KeySet::from_jwks(b"<html>"),
            Err(JwksError::Json(_))
        ));
    }
}
