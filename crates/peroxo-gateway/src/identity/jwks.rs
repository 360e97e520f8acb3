//! A key set that stays fresh: read from `auth.jwks_file` or fetched from `auth.jwks_url`.
//!
//! [`RefreshingKeys`] holds the last good [`KeySet`] and fetches it again
//! - every `auth.jwks_refresh_secs` (sooner when the issuer's `Cache-Control: max-age` says so,
//!   never sooner than `auth.jwks_min_refresh_secs`), by a task [`RefreshingKeys::start`] spawns;
//! - when a token names a `kid` the set lacks (or no set was ever loaded), at most once per
//!   `auth.jwks_min_refresh_secs`, so forged `kid`s cannot make the node hammer the issuer.
//!   Requests that arrive while a fetch is under way wait for it and share its result.
//!
//! A fetch that fails (unreachable, an error status, more than [`MAX_JWKS_BYTES`], no answer
//! within [`FETCH_TIMEOUT`]) or brings a set that is not valid leaves the last good set in place;
//! it is logged and counted (`peroxo_jwks_refresh_total{outcome}`). Until a first set is loaded
//! (an issuer down when the node starts), tokens are refused with 503 and the task retries with
//! backoff. A file is read once in [`RefreshingKeys::from_config`], so a bad one stops the start.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use jsonwebtoken::Header;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use peroxo_config::{AuthConfig, ConfigError};

use super::keys::{Choice, KeySet};

/// The largest key set accepted, in bytes (providers publish a few kilobytes).
pub(crate) const MAX_JWKS_BYTES: usize = 1 << 20;
/// How long one fetch of `auth.jwks_url` may take, body included.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How a fetch of the key set ended: the label of `peroxo_jwks_refresh_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// A valid set was loaded.
    Ok,
    /// No answer, an error status, or a body too large.
    Unreachable,
    /// An answer that is not a usable key set.
    Invalid,
}

impl RefreshOutcome {
    pub const ALL: [RefreshOutcome; 3] = [
        RefreshOutcome::Ok,
        RefreshOutcome::Unreachable,
        RefreshOutcome::Invalid,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RefreshOutcome::Ok => "ok",
            RefreshOutcome::Unreachable => "unreachable",
            RefreshOutcome::Invalid => "invalid",
        }
    }
}

/// Where the set comes from.
enum Source {
    File(PathBuf),
    Url {
        url: String,
        client: reqwest::Client,
    },
}

/// The set a node verifies tokens with, kept fresh.
pub(crate) struct RefreshingKeys {
    source: Source,
    refresh_every: Duration,
    min_refresh: Duration,
    /// The last good set; `None` until the first fetch of a URL succeeds.
    current: RwLock<Option<Arc<KeySet>>>,
    /// When the last fetch began. Held for the whole of a fetch, so one runs at a time and
    /// requests that wait for it can use its result.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// Fetches finished so far: tells a waiting request whether one ran while it waited.
    fetches: AtomicU64,
    /// Fetches by outcome, in the order of [`RefreshOutcome::ALL`].
    outcomes: [AtomicU64; 3],
    /// Ends the refresh task when the keys are dropped.
    stop: CancellationToken,
}

/// What a fetch brought: the set and how long the issuer says it stays fresh.
type Fetched = Result<(KeySet, Option<Duration>), (RefreshOutcome, String)>;

impl RefreshingKeys {
    /// The key set of `auth.jwks_file` (read now: a bad file names its key) or of
    /// `auth.jwks_url` (fetched once started); `None` for a static key.
    pub(crate) fn from_config(config: &AuthConfig) -> Result<Option<Self>, ConfigError> {
        let (source, current) = if let Some(jwks) = config.jwks_file_text()? {
            let set = KeySet::from_jwks(&jwks)
                .map_err(|e| ConfigError::new("auth.jwks_file", e.to_string()))?;
            let path = config.jwks_file.clone().unwrap_or_default();
            (Source::File(path), Some(Arc::new(set)))
        } else if let Some(url) = &config.jwks_url {
            let client = http_client().map_err(|e| {
                ConfigError::new("auth.jwks_url", format!("cannot build an HTTP client: {e}"))
            })?;
            let url = url.clone();
            (Source::Url { url, client }, None)
        } else {
            return Ok(None);
        };
        Ok(Some(Self {
            source,
            refresh_every: config.jwks_refresh_secs,
            min_refresh: config.jwks_min_refresh_secs,
            current: RwLock::new(current),
            last_fetch: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
            outcomes: Default::default(),
            stop: CancellationToken::new(),
        }))
    }

    /// Fetches the set when none is loaded yet (waiting at most [`FETCH_TIMEOUT`]; a failure
    /// is logged, not returned), then spawns the task that keeps it fresh.
    pub(crate) async fn start(self: &Arc<Self>) {
        let first = match self.set() {
            Some(_) => Ok(None),
            None => self.refresh(false).await.unwrap_or(Ok(None)),
        };
        tokio::spawn(keep_fresh(Arc::downgrade(self), self.stop.clone(), first));
    }

    fn set(&self) -> Option<Arc<KeySet>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Keys in the current set.
    pub(crate) fn len(&self) -> usize {
        self.set().map_or(0, |set| set.len())
    }

    /// Fetches by outcome since the node started.
    pub(crate) fn outcomes(&self) -> [(RefreshOutcome, u64); 3] {
        RefreshOutcome::ALL.map(|o| (o, self.outcomes[o as usize].load(Ordering::Relaxed)))
    }

    /// The key for a token with this header, fetching the set again (within the rate bound)
    /// when the token names a `kid` the set lacks or no set is loaded. `None`: no set loaded.
    pub(crate) async fn choose(&self, header: &Header) -> Option<Choice> {
        let choice = self.set().map(|set| set.choose(header));
        if let Some(choice @ (Choice::Key(_) | Choice::Refused(_))) = choice {
            return Some(choice);
        }
        self.refresh(true).await;
        self.set().map(|set| set.choose(header))
    }

    /// Fetches the set now, or (`on_demand`) unless a fetch ended while this one waited its
    /// turn or began less than `min_refresh` ago. `None` when no fetch was made.
    async fn refresh(&self, on_demand: bool) -> Option<Result<Option<Duration>, ()>> {
        let seen = self.fetches.load(Ordering::Acquire);
        let mut last = self.last_fetch.lock().await;
        if on_demand
            && (self.fetches.load(Ordering::Acquire) != seen
                || last.is_some_and(|at| at.elapsed() < self.min_refresh))
        {
            return None;
        }
        *last = Some(Instant::now());
        let fetched = self.fetch().await;
        let outcome = match &fetched {
            Ok(_) => RefreshOutcome::Ok,
            Err((outcome, _)) => *outcome,
        };
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.fetches.fetch_add(1, Ordering::Release);
        Some(match fetched {
            Ok((set, max_age)) => {
                tracing::debug!(keys = set.len(), "key set loaded");
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(set));
                Ok(max_age)
            }
            Err((outcome, error)) => {
                match self.len() {
                    0 => tracing::warn!(
                        outcome = outcome.label(),
                        %error,
                        "cannot load the key set; tokens are refused until one is loaded"
                    ),
                    keys => tracing::warn!(
                        outcome = outcome.label(),
                        %error,
                        keys,
                        "cannot refresh the key set; keeping the last good one"
                    ),
                }
                Err(())
            }
        })
    }

    async fn fetch(&self) -> Fetched {
        let (body, max_age) = match &self.source {
            Source::File(path) => (read_file(path.clone()).await?, None),
            Source::Url { url, client } => fetch_url(client, url).await?,
        };
        let set = KeySet::from_jwks(&body).map_err(|e| (RefreshOutcome::Invalid, e.to_string()))?;
        Ok((set, max_age))
    }

    /// How long until the next scheduled fetch after one the issuer said stays fresh for
    /// `max_age`.
    fn next_refresh(&self, max_age: Option<Duration>) -> Duration {
        max_age
            .map_or(self.refresh_every, |age| age.min(self.refresh_every))
            .max(self.min_refresh)
    }
}

impl Drop for RefreshingKeys {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The refresh task: fetches on schedule, and with backoff while fetches fail. It holds the
/// keys only while it fetches, and ends when they are dropped.
async fn keep_fresh(
    keys: Weak<RefreshingKeys>,
    stop: CancellationToken,
    mut last: Result<Option<Duration>, ()>,
) {
    let mut backoff = None;
    loop {
        let delay = {
            let Some(keys) = keys.upgrade() else { return };
            match last {
                Ok(max_age) => {
                    backoff = None;
                    keys.next_refresh(max_age)
                }
                Err(()) => backoff
                    .get_or_insert_with(|| {
                        ExponentialBuilder::default()
                            .with_min_delay(Duration::from_secs(1))
                            .with_max_delay(keys.refresh_every)
                            .with_factor(2.0)
                            .with_jitter()
                            .without_max_times()
                            .build()
                    })
                    .next()
                    .unwrap_or(keys.refresh_every),
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        let Some(keys) = keys.upgrade() else { return };
        last = keys.refresh(false).await.unwrap_or(Ok(None));
    }
}

/// The client for `auth.jwks_url`: a bounded time per fetch.
fn http_client() -> Result<reqwest::Client, Box<dyn std::error::Error + Send + Sync>> {
    Ok(crate::outbound_http::client_builder()?
        .timeout(FETCH_TIMEOUT)
        .build()?)
}

async fn fetch_url(
    client: &reqwest::Client,
    url: &str,
) -> Result<(Vec<u8>, Option<Duration>), (RefreshOutcome, String)> {
    let unreachable = |e: reqwest::Error| (RefreshOutcome::Unreachable, with_causes(&e));
    let too_large = || {
        (
            RefreshOutcome::Unreachable,
            format!("the key set is larger than {MAX_JWKS_BYTES} bytes"),
        )
    };
    let mut response = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(unreachable)?;
    if !response.status().is_success() {
        return Err((
            RefreshOutcome::Unreachable,
            format!("answered {}", response.status()),
        ));
    }
    let max_age = response
        .headers()
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(max_age);
    if response
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, max_age))
}

/// An error and its causes, `: `-separated (reqwest's own text leaves out why a request failed).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

async fn read_file(path: PathBuf) -> Result<Vec<u8>, (RefreshOutcome, String)> {
    let read = tokio::task::spawn_blocking(move || {
        let text =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if text.len() > MAX_JWKS_BYTES {
            return Err(format!(
                "{} is larger than {MAX_JWKS_BYTES} bytes",
                path.display()
            ));
        }
        Ok(text)
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    read.map_err(|e| (RefreshOutcome::Unreachable, e))
}

/// The `max-age` of a `Cache-Control` value (`no-cache`/`no-store` count as zero).
fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|directive| {
        let directive = directive.trim();
        if directive.eq_ignore_ascii_case("no-cache") || directive.eq_ignore_ascii_case("no-store")
        {
            return Some(Duration::ZERO);
        }
        let (name, value) = directive.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| value.trim().trim_matches('"').parse().ok())
            .flatten()
            .map(Duration::from_secs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use jsonwebtoken::Algorithm;
    use serde_json::json;

    /// Keys read from a file in `dir` holding one key, fetched `min_refresh` apart at least.
    fn file_keys(dir: &tempfile::TempDir, min_refresh: Duration) -> RefreshingKeys {
        let path = dir.path().join("jwks.json");
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode("a-secret-long-enough-for-hs256-tokens");
        let jwks = json!({"keys": [{"kty": "oct", "kid": "one", "alg": "HS256", "k": k}]});
        std::fs::write(&path, jwks.to_string()).unwrap();
        let config = AuthConfig {
            jwks_file: Some(path),
            jwks_min_refresh_secs: min_refresh,
            ..AuthConfig::default()
        };
        RefreshingKeys::from_config(&config).unwrap().unwrap()
    }

    fn fetches(keys: &RefreshingKeys) -> u64 {
        keys.outcomes().iter().map(|(_, n)| n).sum()
    }

    #[tokio::test]
    async fn unknown_kids_arriving_together_share_one_fetch_within_the_rate_bound() {
        let dir = tempfile::tempdir().unwrap();
        let keys = file_keys(&dir, Duration::from_secs(3600));
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("unknown".to_owned());
        let asks = (0..10).map(|_| keys.choose(&header));
        for choice in futures_util::future::join_all(asks).await {
            assert!(matches!(choice, Some(Choice::UnknownKid)));
        }
        assert_eq!(fetches(&keys), 1, "ten asks, one fetch");
        keys.choose(&header).await;
        assert_eq!(fetches(&keys), 1, "no second fetch within the rate bound");
        header.kid = Some("one".to_owned());
        assert!(matches!(keys.choose(&header).await, Some(Choice::Key(_))));
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=120, must-revalidate"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }
}
