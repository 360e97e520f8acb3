//! Reading one value from a node's Prometheus `/metrics` endpoint.
//!
//! A plain HTTP/1.1 GET over a TCP socket is all it takes, so the load generator needs no HTTP
//! client library: the request asks the server to close the connection, and the body is read
//! to its end.

use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The server's resident memory, as the process collector reports it.
pub(super) const RESIDENT_MEMORY: &str = "peroxo_process_resident_memory_bytes";
/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes of a response read (a node's metrics are a few tens of KiB).
const MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;

/// Fetches `url` (an `http://host:port/path` URL) and returns the value of the sample named
/// `metric` (the first one, without labels).
pub(super) async fn metric(url: &str, metric: &str) -> anyhow::Result<f64> {
    let body = tokio::time::timeout(SCRAPE_TIMEOUT, get(url))
        .await
        .with_context(|| format!("GET {url} took longer than {SCRAPE_TIMEOUT:?}"))??;
    sample(&body, metric).with_context(|| format!("{url} has no sample named {metric}"))
}

/// The body of a GET of `url`.
async fn get(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("--metrics-url {url:?}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    let mut stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot connect to {authority}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream
        .take(MAX_RESPONSE_BYTES)
        .read_to_end(&mut response)
        .await?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head.lines().next().unwrap_or_default();
    anyhow::ensure!(status.contains(" 200 "), "GET {url}: {status}");
    Ok(body.to_owned())
}

/// The value of the unlabelled sample `name` in a Prometheus text exposition.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok())?
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_found_by_its_exact_name() {
        let body = "# HELP peroxo_process_resident_memory_bytes RSS\n\
                    # TYPE peroxo_process_resident_memory_bytes gauge\n\
                    peroxo_process_resident_memory_bytes_max 1\n\
                    peroxo_process_resident_memory_bytes 123456\n";
        assert_eq!(sample(body, RESIDENT_MEMORY), Some(123_456.0));
        assert_eq!(sample(body, "peroxo_connections"), None);
    }
}
