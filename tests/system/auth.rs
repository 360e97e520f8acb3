//! JWT authentication: where the token may come from, which claims are checked, which key a
//! token's `kid` chooses in a key set, refresh and expiry on an open session.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{Client, DEADLINE, TestServer};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use peroxo_config::{AuthMode, JwtAlgorithm, Secret};
use serde_json::{Value, json};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn token_for(user: &str, tenant: Option<&str>, ttl_secs: u64) -> String {
    let mut claims = json!({"sub": user, "exp": now() + ttl_secs, "iat": now()});
    if let Some(tenant) = tenant {
        claims["tenant"] = json!(tenant);
    }
    hs256(claims)
}

async fn jwt_server(adjust: impl FnOnce(&mut peroxo_config::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwt_secret = Secret::new(SECRET);
        c.auth.leeway_secs = 0;
        adjust(c);
    })
    .await
}

#[tokio::test]
async fn a_token_is_accepted_from_the_authorization_header_or_the_query_string() {
    let server = jwt_server(|_| {}).await;
    let token = token_for("alice", Some("acme"), 3600);
    let header = format!("Bearer {token}");
    let alice = Client::connect_with_headers(
        &format!("ws://{}/ws", server.gateway.http_addr),
        &[("authorization", &header)],
    )
    .await;
    assert_eq!(alice.welcome["user"], "alice");
    assert_eq!(alice.welcome["tenant"], "acme");

    let bob = Client::connect(&server.ws_url_with_token(&token_for("bob", None, 3600))).await;
    assert_eq!(bob.welcome["user"], "bob");
    assert_eq!(bob.welcome["tenant"], "default");
}

#[tokio::test]
async fn ws_check_answers_what_an_upgrade_would_get_without_upgrading() {
    let server = jwt_server(|c| c.limits.max_sessions_per_user = 1).await;
    let addr = server.gateway.http_addr;
    let check = |query: String| async move {
        let (status, body) =
            crate::common::http_request(addr, "GET", &format!("/ws/check{query}"), "").await;
        (status, serde_json::from_str::<Value>(&body).unwrap())
    };
    let token = token_for("alice", Some("acme"), 3600);
    // Who the client would be; asking twice takes no place from the one session allowed.
    for _ in 0..2 {
        let (status, body) = check(format!("?token={token}&protocol=2")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["user"], "alice");
        assert_eq!(body["tenant"], "acme");
        assert_eq!(body["protocol"], 2);
        assert!(body["expires_at"].as_u64().unwrap() > now());
    }
    // The same refusals as /ws, with the same bodies.
    let expired = hs256(json!({"sub": "alice", "exp": now() - 10}));
    let (status, body) = check(format!("?token={expired}")).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "unauthorized");
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    let (status, body) = check(String::new()).await;
    assert_eq!((status, &body["error"]), (401, &json!("unauthorized")));
    let (status, body) = check(format!("?token={token}&protocol=99")).await;
    assert_eq!((status, &body["error"]), (400, &json!("bad_request")));
    let _alice = Client::connect(&server.ws_url_with_token(&token)).await;
    let (status, body) = check(format!("?token={token}")).await;
    assert_eq!((status, &body["error"]), (429, &json!("too_many_sessions")));
}

#[tokio::test]
async fn a_tenant_with_its_own_issuer_gets_its_own_aud_and_iss_checks() {
    let server = jwt_server(|c| {
        c.auth.audience = Some("peroxo".into());
        c.auth.tenants.insert(
            "acme".into(),
            peroxo_config::TenantAuth {
                audience: Some("acme-chat".into()),
                issuer: Some("https://login.acme.test".into()),
            },
        );
    })
    .await;
    let claims = |tenant: &str, patch: Value| {
        let mut claims = json!({"sub": "alice", "tenant": tenant, "exp": now() + 600});
        for (k, v) in patch.as_object().unwrap() {
            claims[k] = v.clone();
        }
        hs256(claims)
    };
    let acme = json!({"aud": "acme-chat", "iss": "https://login.acme.test"});
    let welcome = Client::connect(&server.ws_url_with_token(&claims("acme", acme)))
        .await
        .welcome;
    assert_eq!(welcome["tenant"], "acme");
    // Other tenants keep the global rule.
    Client::connect(&server.ws_url_with_token(&claims("other", json!({"aud": "peroxo"})))).await;
    let refused = [
        (
            claims(
                "acme",
                json!({"aud": "peroxo", "iss": "https://login.acme.test"}),
            ),
            "aud",
        ),
        (claims("acme", json!({"aud": "acme-chat"})), "iss"),
        (
            claims(
                "acme",
                json!({"aud": "acme-chat", "iss": "https://evil.test"}),
            ),
            "iss",
        ),
        (claims("other", json!({"aud": "acme-chat"})), "aud"),
    ];
    for (token, reason) in refused {
        let Err((status, body)) = Client::try_connect(&server.ws_url_with_token(&token)).await
        else {
            panic!("a token that should fail for {reason:?} was accepted");
        };
        assert_eq!(status, 401, "{body}");
        assert!(body["message"].as_str().unwrap().contains(reason), "{body}");
    }
}

#[tokio::test]
async fn bad_tokens_get_401_with_a_reason_and_no_upgrade() {
    let server = jwt_server(|c| {
        c.auth.audience = Some("peroxo".into());
        c.auth.issuer = Some("https://auth.test".into());
    })
    .await;
    let good =
        json!({"sub": "alice", "exp": now() + 600, "aud": "peroxo", "iss": "https://auth.test"});
    let with = |patch: Value| {
        let mut claims = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        hs256(claims)
    };
    let wrong_key = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(b"another-secret-another-secret-another"),
    )
    .unwrap();
    let cases = [
        (String::new(), "missing token"),
        ("not.a.jwt".to_owned(), "malformed"),
        (wrong_key, "signature"),
        (with(json!({"exp": now() - 10})), "expired"),
        (with(json!({"exp": null})), "exp"),
        (with(json!({"sub": null})), "sub"),
        (with(json!({"nbf": now() + 600})), "nbf"),
        (with(json!({"iat": now() + 600})), "iat"),
        (with(json!({"aud": "someone-else"})), "aud"),
        (with(json!({"iss": "https://evil.test"})), "iss"),
        (with(json!({"sub": "no spaces allowed"})), "sub"),
    ];
    for (token, reason) in cases {
        let url = if token.is_empty() {
            format!("ws://{}/ws", server.gateway.http_addr)
        } else {
            server.ws_url_with_token(&token)
        };
        let Err((status, body)) = Client::try_connect(&url).await else {
            panic!("a token that should fail for {reason:?} was accepted");
        };
        assert_eq!(status, 401, "{reason}: {body}");
        assert_eq!(body["error"], "unauthorized", "{reason}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(reason),
            "{message:?} should mention {reason:?}"
        );
    }
    // The good one passes, and so do its standard variants: a list of audiences and
    // fractional times.
    Client::connect(&server.ws_url_with_token(&hs256(good.clone()))).await;
    let variant = with(
        json!({"aud": ["other", "peroxo"], "exp": now() as f64 + 600.5, "iat": now() as f64 - 0.25}),
    );
    Client::connect(&server.ws_url_with_token(&variant)).await;
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_with_the_configured_public_key() {
    let fixtures = FIXTURES;
    for (algorithm, jwt_alg, name) in [
        (JwtAlgorithm::RS256, Algorithm::RS256, "rs256"),
        (JwtAlgorithm::ES256, Algorithm::ES256, "es256"),
    ] {
        let server = jwt_server(|c| {
            c.auth.algorithm = algorithm;
            c.auth.jwt_secret = Secret::default();
            c.auth.public_key_file = Some(format!("{fixtures}/{name}-public.pem").into());
        })
        .await;
        let private = std::fs::read(format!("{fixtures}/{name}-private.pem")).unwrap();
        let key = match jwt_alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&private).unwrap(),
            _ => EncodingKey::from_ec_pem(&private).unwrap(),
        };
        let claims = json!({"sub": "alice", "exp": now() + 600});
        let token = jsonwebtoken::encode(&Header::new(jwt_alg), &claims, &key).unwrap();
        let alice = Client::connect(&server.ws_url_with_token(&token)).await;
        assert_eq!(alice.welcome["user"], "alice", "{name}");
        // An HS256 token, even one signed with the public key as secret, is refused.
        let forged = hs256(claims.clone());
        let Err((status, _)) = Client::try_connect(&server.ws_url_with_token(&forged)).await else {
            panic!("{name}: an HS256 token was accepted");
        };
        assert_eq!(status, 401);
    }
}

#[tokio::test]
async fn refresh_takes_a_token_for_the_same_identity_only() {
    let server = jwt_server(|_| {}).await;
    let mut alice =
        Client::connect(&server.ws_url_with_token(&token_for("alice", Some("acme"), 600))).await;

    let fresh = token_for("alice", Some("acme"), 7200);
    alice
        .send_json(json!({"type": "refresh", "token": fresh, "req_id": 1}))
        .await;
    let refreshed = alice.expect("refreshed").await;
    assert_eq!(refreshed["req_id"], 1);
    let exp = refreshed["exp"].as_u64().unwrap();
    assert!(exp >= now() + 7000, "{refreshed}");

    for (token, code) in [
        (token_for("mallory", Some("acme"), 600), "forbidden"),
        (token_for("alice", Some("other"), 600), "forbidden"),
        (token_for("alice", None, 600), "forbidden"),
        ("garbage".to_owned(), "bad_request"),
        (
            token_for("alice", Some("acme"), 0).replace('.', "x"),
            "bad_request",
        ),
    ] {
        alice
            .send_json(json!({"type": "refresh", "token": token, "req_id": "r"}))
            .await;
        let error = alice.expect("error").await;
        assert_eq!(error["code"], code, "{error}");
        assert_eq!(error["req_id"], "r");
    }
    // Still alice of acme, still working.
    alice.dm("bob", "still me", "m1").await;
}

#[tokio::test]
async fn an_expired_token_closes_the_session_with_4001_unless_refreshed() {
    let server = jwt_server(|_| {}).await;
    let minted = now();
    let mut lapsing =
        Client::connect(&server.ws_url_with_token(&token_for("alice", None, 2))).await;
    let mut refreshing =
        Client::connect(&server.ws_url_with_token(&token_for("bob", None, 2))).await;
    refreshing
        .send_json(json!({"type": "refresh", "token": token_for("bob", None, 3600)}))
        .await;
    refreshing.expect("refreshed").await;

    let close = lapsing.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4001);
    assert_eq!(close.reason.as_str(), "token expired");

    // By now bob's first token has expired too; the refreshed session is still open.
    assert!(now() >= minted + 2);
    assert!(refreshing.frames_until_pong().await.is_empty());
}

/// Two HS256 secrets of a key set, by kid.
const KEY_ONE: (&str, &str) = ("one", "the-first-secret-of-the-set-long-enough-for-hs256");
const KEY_TWO: (&str, &str) = ("two", "the-second-secret-of-the-set-long-enough-for-hs256");

/// An HS256 key of a JSON Web Key Set.
fn oct_jwk((kid, secret): (&str, &str)) -> Value {
    use base64::Engine;
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    json!({"kty": "oct", "kid": kid, "alg": "HS256", "k": k})
}

/// A token for `sub` alice signed with `key` under `alg`, naming `kid` when given.
fn signed(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let claims = json!({"sub": "alice", "exp": now() + 600});
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn hs256_with((kid, secret): (&str, &str)) -> String {
    signed(
        Algorithm::HS256,
        Some(kid),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// The fixture's RS256 (kid `rs-1`) and ES256 (kid `es-1`) public keys as JWKs.
fn fixture_jwks() -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{FIXTURES}/jwks-public.json")).unwrap();
    let set: Value = serde_json::from_str(&text).unwrap();
    set["keys"].as_array().unwrap().clone()
}

fn fixture_private(name: &str) -> EncodingKey {
    let pem = std::fs::read(format!("{FIXTURES}/{name}-private.pem")).unwrap();
    match name {
        "rs256" => EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => EncodingKey::from_ec_pem(&pem).unwrap(),
    }
}

/// The user a token is accepted for, or the status and message it is refused with (asked at
/// `/ws/check`, which answers as an upgrade would).
async fn try_token(server: &TestServer, token: &str) -> Result<String, (u16, String)> {
    let path = format!("/ws/check?token={token}");
    let (status, body) =
        crate::common::http_request(server.gateway.http_addr, "GET", &path, "").await;
    let body: Value = serde_json::from_str(&body).unwrap();
    match status {
        200 => Ok(body["user"].as_str().unwrap().to_owned()),
        _ => Err((
            status,
            body["message"].as_str().unwrap_or_default().to_owned(),
        )),
    }
}

#[tokio::test]
async fn a_jwks_file_verifies_each_token_with_the_key_its_kid_names() {
    let keys_dir = tempfile::tempdir().unwrap();
    let path = keys_dir.path().join("jwks.json");
    let mut keys = vec![oct_jwk(KEY_ONE), oct_jwk(KEY_TWO)];
    keys.extend(fixture_jwks());
    std::fs::write(&path, json!({ "keys": keys }).to_string()).unwrap();
    let server = jwt_server(|c| {
        c.auth.jwt_secret = Secret::default();
        c.auth.jwks_file = Some(path.clone());
    })
    .await;

    for token in [
        hs256_with(KEY_ONE),
        hs256_with(KEY_TWO),
        signed(Algorithm::RS256, Some("rs-1"), &fixture_private("rs256")),
        signed(Algorithm::ES256, Some("es-1"), &fixture_private("es256")),
    ] {
        assert_eq!(try_token(&server, &token).await, Ok("alice".to_owned()));
    }

    let rsa_public = std::fs::read(format!("{FIXTURES}/rs256-public.pem")).unwrap();
    let refusals = [
        (hs256_with(("three", KEY_ONE.1)), "unknown key id (kid)"),
        // The RSA key's kid on an HS256 token signed with the public key as the secret.
        (
            signed(
                Algorithm::HS256,
                Some("rs-1"),
                &EncodingKey::from_secret(&rsa_public),
            ),
            "algorithm (alg)",
        ),
        (hs256_with(("one", KEY_TWO.1)), "signature"),
        // Two HS256 keys: a token without kid cannot say which.
        (
            signed(
                Algorithm::HS256,
                None,
                &EncodingKey::from_secret(KEY_ONE.1.as_bytes()),
            ),
            "key id (kid)",
        ),
    ];
    for (token, reason) in refusals {
        let (status, message) = try_token(&server, &token).await.unwrap_err();
        assert_eq!(status, 401, "{reason}");
        assert!(
            message.contains(reason),
            "{message:?} should say {reason:?}"
        );
    }
}

/// A key set served over HTTP as an identity provider serves its `jwks_uri`, which a test can
/// rotate or break; it counts the fetches.
struct JwksServer {
    url: String,
    state: Arc<JwksState>,
}

#[derive(Default)]
struct JwksState {
    /// What `GET /jwks` answers: 200 with this body, or 500 when `None`.
    body: std::sync::Mutex<Option<String>>,
    fetches: AtomicUsize,
}

impl JwksServer {
    async fn start(keys: &[Value]) -> Self {
        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        let state = Arc::new(JwksState::default());
        let served = Arc::clone(&state);
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let state = Arc::clone(&served);
                async move {
                    state.fetches.fetch_add(1, Ordering::SeqCst);
                    match state.body.lock().unwrap().clone() {
                        Some(body) => (StatusCode::OK, body).into_response(),
                        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let server = Self { url, state };
        server.serve(keys);
        server
    }

    fn serve(&self, keys: &[Value]) {
        *self.state.body.lock().unwrap() = Some(json!({ "keys": keys }).to_string());
    }

    fn serve_garbage(&self) {
        *self.state.body.lock().unwrap() = Some("<html>maintenance</html>".to_owned());
    }

    fn fail(&self) {
        *self.state.body.lock().unwrap() = None;
    }

    fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }
}

/// A node whose keys come from `jwks`, fetched again on an unknown kid at most once a second.
async fn jwks_url_server(jwks: &JwksServer) -> TestServer {
    jwt_server(|c| {
        c.auth.jwt_secret = Secret::default();
        c.auth.jwks_url = Some(jwks.url.clone());
        c.auth.jwks_min_refresh_secs = MIN_REFRESH;
    })
    .await
}

const MIN_REFRESH: Duration = Duration::from_secs(1);

/// Presents `token` until it is accepted (each refusal must be an unknown kid), and returns
/// how long that took.
async fn accepted_eventually(server: &TestServer, token: &str) -> Duration {
    let started = Instant::now();
    loop {
        match try_token(server, token).await {
            Ok(user) => {
                assert_eq!(user, "alice");
                return started.elapsed();
            }
            Err((status, message)) => {
                assert_eq!(status, 401, "{message}");
                assert!(message.contains("unknown key id (kid)"), "{message}");
            }
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the new key was never fetched"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Presents tokens naming an unknown kid, which ask for fetches, until a fetch that ended with
/// `outcome` has been counted.
async fn until_a_fetch_fails(server: &TestServer, outcome: &str) {
    let deadline = Instant::now() + DEADLINE;
    let label = format!("outcome=\"{outcome}\"");
    while metric(server, "peroxo_jwks_refresh_total", &label).await < 1.0 {
        let (status, message) = try_token(server, &hs256_with(("three", KEY_ONE.1)))
            .await
            .unwrap_err();
        assert_eq!((status, message.as_str()), (401, "unknown key id (kid)"));
        assert!(Instant::now() < deadline, "no {outcome} fetch was counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(server: &TestServer, name: &str, labels: &str) -> f64 {
    let (_, text) =
        crate::common::http_request(server.gateway.http_addr, "GET", "/metrics", "").await;
    crate::common::metric_sample(&text, name, labels).unwrap_or(0.0)
}

#[tokio::test]
async fn a_key_set_url_is_fetched_again_for_a_new_kid_at_most_once_per_min_refresh() {
    let mut keys = vec![oct_jwk(KEY_ONE)];
    keys.extend(fixture_jwks());
    let jwks = JwksServer::start(&keys).await;
    let server = jwks_url_server(&jwks).await;
    assert_eq!(jwks.fetches(), 1, "the set is fetched when the node starts");
    assert_eq!(
        try_token(&server, &hs256_with(KEY_ONE)).await,
        Ok("alice".into())
    );
    let rs256 = signed(Algorithm::RS256, Some("rs-1"), &fixture_private("rs256"));
    assert_eq!(try_token(&server, &rs256).await, Ok("alice".into()));
    assert_eq!(jwks.fetches(), 1, "known kids need no fetch");

    // The issuer publishes a second key; the first token naming it brings it in.
    keys.push(oct_jwk(KEY_TWO));
    jwks.serve(&keys);
    let waited = accepted_eventually(&server, &hs256_with(KEY_TWO)).await;
    let fetches = jwks.fetches();
    assert!(
        fetches <= 2 + (waited.as_secs_f64() / MIN_REFRESH.as_secs_f64()) as usize,
        "{fetches} fetches in {waited:?}"
    );

    // A burst of tokens naming kids nobody published costs at most one fetch per interval.
    let started = Instant::now();
    let burst = (0..20).map(|i| {
        let token = hs256_with((&format!("forged-{i}"), KEY_ONE.1));
        let server = &server;
        async move { try_token(server, &token).await }
    });
    for refused in futures_util::future::join_all(burst).await {
        let (status, message) = refused.unwrap_err();
        assert_eq!(status, 401);
        assert_eq!(message, "unknown key id (kid)");
    }
    let allowed = 1 + (started.elapsed().as_secs_f64() / MIN_REFRESH.as_secs_f64()) as usize;
    assert!(
        jwks.fetches() - fetches <= allowed,
        "{} fetches for 20 forged kids in {:?}",
        jwks.fetches() - fetches,
        started.elapsed()
    );
    assert_eq!(metric(&server, "peroxo_jwks_keys", "").await, 4.0);
}

#[tokio::test]
async fn the_last_good_key_set_keeps_verifying_while_the_issuer_fails() {
    let jwks = JwksServer::start(&[oct_jwk(KEY_ONE), oct_jwk(KEY_TWO)]).await;
    let server = jwks_url_server(&jwks).await;
    assert_eq!(
        try_token(&server, &hs256_with(KEY_ONE)).await,
        Ok("alice".into())
    );

    for (break_it, outcome) in [
        (JwksServer::fail as fn(&JwksServer), "unreachable"),
        (JwksServer::serve_garbage, "invalid"),
    ] {
        break_it(&jwks);
        until_a_fetch_fails(&server, outcome).await;
        for key in [KEY_ONE, KEY_TWO] {
            assert_eq!(
                try_token(&server, &hs256_with(key)).await,
                Ok("alice".into())
            );
        }
        assert_eq!(metric(&server, "peroxo_jwks_keys", "").await, 2.0);
    }
}

#[tokio::test]
async fn a_key_added_to_the_jwks_file_verifies_without_a_restart() {
    let keys_dir = tempfile::tempdir().unwrap();
    let path = keys_dir.path().join("jwks.json");
    let write = |keys: Vec<Value>| std::fs::write(&path, json!({ "keys": keys }).to_string());
    write(vec![oct_jwk(KEY_ONE)]).unwrap();
    let server = jwt_server(|c| {
        c.auth.jwt_secret = Secret::default();
        c.auth.jwks_file = Some(path.clone());
        c.auth.jwks_min_refresh_secs = MIN_REFRESH;
    })
    .await;
    assert_eq!(
        try_token(&server, &hs256_with(KEY_ONE)).await,
        Ok("alice".into())
    );
    write(vec![oct_jwk(KEY_ONE), oct_jwk(KEY_TWO)]).unwrap();
    accepted_eventually(&server, &hs256_with(KEY_TWO)).await;
    // A broken edit keeps the keys read before it.
    std::fs::write(&path, "{\"keys\": [").unwrap();
    until_a_fetch_fails(&server, "invalid").await;
    for key in [KEY_ONE, KEY_TWO] {
        assert_eq!(
            try_token(&server, &hs256_with(key)).await,
            Ok("alice".into())
        );
    }
}

#[tokio::test]
async fn a_node_starts_while_the_issuer_is_down_and_verifies_once_it_answers() {
    let jwks = JwksServer::start(&[oct_jwk(KEY_ONE)]).await;
    jwks.fail();
    let server = jwks_url_server(&jwks).await;
    let (status, message) = try_token(&server, &hs256_with(KEY_ONE)).await.unwrap_err();
    assert_eq!(status, 503, "{message}");
    assert!(message.contains("no verification keys"), "{message}");

    jwks.serve(&[oct_jwk(KEY_ONE)]);
    let deadline = Instant::now() + DEADLINE;
    while try_token(&server, &hs256_with(KEY_ONE)).await.is_err() {
        assert!(Instant::now() < deadline, "the key set was never loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
