//! The `[server_api]` section: who may call the server API (`/api/v1/`), and how much.
//!
//! An application's backend authenticates with an API key. The configuration holds only each
//! key's SHA-256 (`peroxo apikey` makes a key and prints its entry), so a leaked config file
//! leaks no key. Each key belongs to one tenant and reaches only that tenant; a tenant may
//! have several keys at once, which is how keys are rotated: add the new one, move the
//! backend over, remove the old one (the section applies on reload).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{ConfigError, within};
use peroxo_protocol::domain::validate_id;

/// The prefix of every API key, so that a key found in a log or a repository is recognisable.
pub const API_KEY_PREFIX: &str = "pxk_";
/// The largest request body the server API accepts, whatever `server_api.max_body_bytes` says.
pub const MAX_API_BODY_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerApiConfig {
    /// The keys that open the server API; none: the API answers 401 to everyone.
    pub keys: Vec<ApiKeyEntry>,
    /// When not empty, the only client addresses the server API serves (addresses or CIDR
    /// blocks); others get 403.
    pub allowed_ips: Vec<String>,
    /// Requests per second each key may make, on average.
    pub rate_per_sec: u32,
    /// Requests a key may make at once above its rate.
    pub rate_burst: u32,
    /// The largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// The most messages one batch send may carry.
    pub max_batch: usize,
}

/// One `[[server_api.keys]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// The tenant the key acts for (and the only one it reaches).
    pub tenant: String,
    /// A name for logs and metrics, such as "billing-backend".
    pub name: String,
    /// The lowercase hex SHA-256 of the key.
    pub sha256: String,
}

impl Default for ServerApiConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            allowed_ips: Vec::new(),
            rate_per_sec: 1_000,
            rate_burst: 2_000,
            max_body_bytes: 1024 * 1024,
            max_batch: 100,
        }
    }
}

impl ServerApiConfig {
    /// The checks of `[server_api]`.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (i, key) in self.keys.iter().enumerate() {
            let at = |field: &str| format!("server_api.keys[{i}].{field}");
            validate_id(&key.tenant).map_err(|e| ConfigError::new(at("tenant"), e))?;
            if key.name.is_empty() || key.name.len() > 64 {
                return Err(ConfigError::new(at("name"), "must be 1 to 64 bytes"));
            }
            if key.sha256.len() != 64
                || !key
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(ConfigError::new(
                    at("sha256"),
                    "must be 64 lowercase hex digits (the line `peroxo apikey` prints)",
                ));
            }
            if self.keys[..i]
                .iter()
                .any(|other| other.sha256 == key.sha256)
            {
                return Err(ConfigError::new(
                    at("sha256"),
                    "the same key is listed twice",
                ));
            }
        }
        for (i, entry) in self.allowed_ips.iter().enumerate() {
            IpRange::parse(entry)
                .map_err(|e| ConfigError::new(format!("server_api.allowed_ips[{i}]"), e))?;
        }
        within("server_api.rate_per_sec", self.rate_per_sec, 1, 1_000_000)?;
        within("server_api.rate_burst", self.rate_burst, 1, 1_000_000)?;
        within(
            "server_api.max_body_bytes",
            self.max_body_bytes,
            1_024,
            MAX_API_BODY_BYTES,
        )?;
        within("server_api.max_batch", self.max_batch, 1, 1_000)
    }

    /// The parsed `allowed_ips` (checked by `validate`, so every entry parses).
    pub fn allowed_ranges(&self) -> Vec<IpRange> {
        self.allowed_ips
            .iter()
            .filter_map(|entry| IpRange::parse(entry).ok())
            .collect()
    }
}

/// An address or a CIDR block of `server_api.allowed_ips`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange(ipnet::IpNet);

impl IpRange {
    /// Parses `10.0.0.0/8`, `::1` or `192.168.1.7`.
    pub fn parse(entry: &str) -> Result<Self, String> {
        if let Ok(net) = entry.parse::<ipnet::IpNet>() {
            return Ok(Self(net.trunc()));
        }
        entry
            .parse::<IpAddr>()
            .map(|ip| Self(ipnet::IpNet::from(ip)))
            .map_err(|_| format!("{entry:?} is neither an IP address nor a CIDR block"))
    }

    /// Whether `ip` lies in the range; an IPv4 client seen as an IPv4-mapped IPv6 address
    /// matches IPv4 ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sha256: &str) -> ApiKeyEntry {
        ApiKeyEntry {
            tenant: "acme".to_owned(),
            name: "backend".to_owned(),
            sha256: sha256.to_owned(),
        }
    }

    #[test]
    fn a_key_entry_names_its_bad_field() {
        let mut config = ServerApiConfig::default();
        config.keys.push(entry(&"a".repeat(64)));
        assert!(config.validate().is_ok());
        config.keys.push(entry("not hex"));
        let error = config.validate().unwrap_err();
        assert_eq!(error.key, "server_api.keys[1].sha256");
        config.keys[1] = entry(&"a".repeat(64));
        let error = config.validate().unwrap_err();
        assert_eq!(error.key, "server_api.keys[1].sha256");
        assert!(error.message.contains("twice"), "{error}");
    }

    #[test]
    fn allowed_ips_take_addresses_and_cidr_blocks() {
        let block = IpRange::parse("10.1.0.0/16").unwrap();
        assert!(block.contains("10.1.200.3".parse().unwrap()));
        assert!(!block.contains("10.2.0.1".parse().unwrap()));
        assert!(block.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one = IpRange::parse("::1").unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("127.0.0.1".parse().unwrap()));
        let config = ServerApiConfig {
            allowed_ips: vec!["127.0.0.1".to_owned(), "nope".to_owned()],
            ..ServerApiConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().key,
            "server_api.allowed_ips[1]"
        );
    }
}
