//! The HTTP client PerOXO calls other services with (a key set's URL, webhook endpoints):
//! rustls with the ring provider and the platform's trusted roots, and PerOXO's user agent.
//! Each caller adds its own timeout and redirect policy.

use std::sync::Arc;

/// A client builder with PerOXO's TLS and user agent.
pub fn client_builder() -> Result<reqwest::ClientBuilder, Box<dyn std::error::Error + Send + Sync>>
{
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .user_agent(concat!("peroxo/", env!("CARGO_PKG_VERSION"))))
}
