//! The `peroxo` binary: configuration errors stop it before it binds anything (exit 64,
//! naming the key), and `peroxo serve` runs a working node that stops cleanly on SIGTERM.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn peroxo() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_peroxo"));
    // The developer's own overrides must not leak into these runs.
    for (name, _) in std::env::vars() {
        if name.starts_with("PEROXO_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
}

fn config_file(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `peroxo serve` with `config` and returns (exit code, stderr).
fn serve_with(config: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(&dir, config);
    let output = peroxo()
        .args(["serve", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn an_unknown_key_exits_64_naming_it() {
    let (code, stderr) = serve_with("[storage]\nmax_pendin = 5\n", &[]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("storage.max_pendin"), "{stderr}");
}

#[test]
fn an_invalid_value_exits_64_naming_its_key() {
    let (code, stderr) = serve_with("[limits]\nmax_text_bytes = 0\n", &[]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("limits.max_text_bytes"), "{stderr}");
}

#[test]
fn an_invalid_environment_override_exits_64_naming_its_key() {
    let (code, stderr) = serve_with("", &[("PEROXO_HTTP__LISTEN", "not-an-address")]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("http.listen"), "{stderr}");
}

#[test]
fn jwt_mode_without_a_secret_refuses_to_start_and_says_how_to_set_one() {
    let (code, stderr) = serve_with("[auth]\nmode = \"jwt\"\n", &[]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("auth.jwt_secret"), "{stderr}");
    assert!(stderr.contains("PEROXO_AUTH__JWT_SECRET"), "{stderr}");
}

#[test]
fn token_prints_a_token_for_the_configured_secret_and_refuses_without_one() {
    let output = peroxo()
        .args([
            "token", "--user", "alice", "--tenant", "acme", "--ttl", "15m",
        ])
        .env("PEROXO_AUTH__JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap();
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        token.trim(),
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
    )
    .expect("the token verifies with the secret")
    .claims;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["tenant"], "acme");
    let ttl = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(ttl, 15 * 60);

    let output = peroxo()
        .args(["token", "--user", "alice"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let output = peroxo()
        .args(["token", "--user", "not valid", "--ttl", "1h"])
        .env("PEROXO_AUTH__JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
}

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

#[test]
fn a_public_key_file_that_is_not_a_key_exits_64_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("not-a-key.pem");
    std::fs::write(&key, "hello").unwrap();
    let (code, stderr) = serve_with(
        &format!(
            "[auth]\nalgorithm = \"RS256\"\npublic_key_file = \"{}\"\n",
            key.display()
        ),
        &[],
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("auth.public_key_file"), "{stderr}");
}

#[test]
fn check_config_refuses_a_malformed_jwks_file_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    for (text, says) in [
        ("{\"keys\": [", "not a JSON Web Key Set"),
        ("{\"keys\": []}", "no key of the set"),
    ] {
        std::fs::write(&jwks, text).unwrap();
        let path = config_file(
            &dir,
            &format!("[auth]\njwks_file = \"{}\"\n", jwks.display()),
        );
        let output = peroxo()
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(64), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("auth.jwks_file"), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
}

#[test]
fn check_config_prints_the_effective_values_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(&dir, "[storage]\nmax_pending = 1234\n");
    let output = peroxo()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("PEROXO_AUTH__JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(printed.contains("max_pending = 1234"), "{printed}");
    assert!(printed.contains("jwt_secret = \"<redacted>\""), "{printed}");
    assert!(!printed.contains(SECRET));
    // The printout is itself a valid configuration.
    let again = config_file(&dir, &printed.replace("<redacted>", SECRET));
    let output = peroxo()
        .args(["check-config", "--config"])
        .arg(&again)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");

    let bad = config_file(&dir, "[limits]\nrate_burst = 0\n");
    let output = peroxo()
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("limits.rate_burst"));
}

#[test]
fn store_runs_without_any_auth_settings() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(
        &dir,
        &format!(
            "[auth]\nmode = \"jwt\"\n[storage]\nlisten = \"127.0.0.1:0\"\nsqlite_path = \"{}\"\n[log]\nformat = \"json\"\n",
            dir.path().join("store.db").display()
        ),
    );
    let mut node = Node::spawn(peroxo().args(["store", "--config"]).arg(&path), dir);
    let listening = node.wait_for_log("storage service listening");
    assert!(listening["addr"].as_str().is_some());
    node.terminate();
}

#[test]
fn a_config_file_given_explicitly_must_exist() {
    let output = peroxo()
        .args(["serve", "--config", "/nonexistent/peroxo.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
}

#[test]
fn an_unknown_flag_exits_64() {
    let output = peroxo().args(["serve", "--no-such-flag"]).output().unwrap();
    assert_eq!(output.status.code(), Some(64));
}

/// A `peroxo serve` process on ephemeral ports, with JSON logs on a channel.
struct Node {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every log line read so far.
    seen: Vec<String>,
    dir: tempfile::TempDir,
}

impl Node {
    fn start(args: &[&str], env: &[(&str, &str)], level: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[storage]\nlisten = \"127.0.0.1:0\"\nsqlite_path = \"{}\"\n[log]\nformat = \"json\"\nlevel = \"{level}\"\n",
            dir.path().join("data/peroxo.db").display()
        );
        let path = config_file(&dir, &config);
        let mut command = peroxo();
        command
            .arg("serve")
            .args(args)
            .arg("--config")
            .arg(&path)
            .envs(env.iter().copied());
        Self::spawn(&mut command, dir)
    }

    fn spawn(command: &mut Command, dir: tempfile::TempDir) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            dir,
        }
    }

    /// Reads log lines until one whose message starts with `prefix`; returns its fields.
    fn wait_for_log(&mut self, prefix: &str) -> serde_json::Value {
        let deadline = Instant::now() + common::DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!("no log {prefix:?} in time");
            };
            self.seen.push(line.clone());
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if entry["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(prefix))
            {
                return entry["fields"].clone();
            }
        }
    }

    fn addr(&mut self) -> String {
        self.wait_for_log("gateway listening")["addr"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Sends SIGTERM and waits for a clean exit; returns every log line.
    fn terminate(mut self) -> Vec<String> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + common::DEADLINE;
        let exit = loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                break exit;
            }
            assert!(
                Instant::now() < deadline,
                "peroxo did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(exit.success(), "{exit:?}");
        self.seen.extend(self.lines.try_iter());
        self.seen
    }
}

#[tokio::test]
async fn serve_runs_a_working_node_and_stops_on_sigterm() {
    let mut node = Node::start(&["--dev"], &[], "info");
    let warning = node.wait_for_log("auth.mode = \"dev\"");
    assert!(
        warning["message"]
            .as_str()
            .unwrap()
            .contains("any client can claim any user id")
    );
    let addr = node.addr();

    let mut alice = common::Client::connect(&format!("ws://{addr}/ws?user=alice")).await;
    let mut bob = common::Client::connect(&format!("ws://{addr}/ws?user=bob")).await;
    alice.dm("bob", "through the binary", "m1").await;
    assert_eq!(bob.expect("message").await["text"], "through the binary");
    assert!(node.dir.path().join("data/peroxo.db").exists());

    let kill = Command::new("kill")
        .args(["-TERM", &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let close = alice.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1001);
    drop(bob);
    let logs = node.terminate();
    // One line per session open and close, with who, how long and how it ended.
    let closed: Vec<serde_json::Value> = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["fields"]["message"] == "session closed")
        .map(|e| e["fields"].clone())
        .collect();
    let alice_closed = closed
        .iter()
        .find(|f| f["user"] == "alice")
        .expect("alice's session close is logged");
    assert_eq!(alice_closed["tenant"], "default");
    assert_eq!(alice_closed["close_code"], 1001);
    assert_eq!(alice_closed["reason"], "shutdown");
    assert!(alice_closed["duration_ms"].as_u64().is_some());
    let opened = logs
        .iter()
        .filter(|l| l.contains("\"session opened\""))
        .count();
    assert_eq!(opened, 2);
}

#[tokio::test]
async fn backup_copies_a_serving_database_and_the_copy_restores() {
    let mut node = Node::start(&["--dev"], &[], "info");
    let addr = node.addr();
    let mut alice = common::Client::connect(&format!("ws://{addr}/ws?user=alice")).await;
    for i in 0..5 {
        alice
            .dm("bob", &format!("before the backup {i}"), &format!("m{i}"))
            .await;
    }
    let config = node.dir.path().join("config.toml");
    let kept = tempfile::tempdir().unwrap();
    let copy = kept.path().join("copy.db");
    let backup = |to: &std::path::Path| {
        peroxo()
            .args(["backup", "--config"])
            .arg(&config)
            .arg("--to")
            .arg(to)
            .output()
            .unwrap()
    };
    let output = backup(&copy);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("5 messages"), "{stdout}");
    assert!(stdout.contains("integrity check ok"), "{stdout}");
    // The node kept serving; a second backup to the same file is refused.
    alice.dm("bob", "after the backup", "m5").await;
    let again = backup(&copy);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    drop(alice);
    node.terminate();

    // Restoring is starting a node on the copy: bob's stream holds what was backed up.
    let store = peroxo_storage::SqliteStore::open(&copy, peroxo_config::SqliteSync::Full).unwrap();
    let page = peroxo_storage::MessageStore::sync(
        &store,
        peroxo_storage::SyncQuery {
            user: peroxo_protocol::domain::UserKey::new("default", "bob"),
            after_seq: 0,
            limit: 100,
            scope: peroxo_storage::SyncScope::Everything,
        },
    )
    .await
    .unwrap();
    let texts: Vec<&str> = page.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        (0..5)
            .map(|i| format!("before the backup {i}"))
            .collect::<Vec<_>>()
    );
}

#[test]
fn backup_of_a_postgres_backend_says_to_use_postgres_tools() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(
        &dir,
        "[storage]\nbackend = \"postgres\"\n[storage.postgres]\nurl = \"postgres://postgres@127.0.0.1/none\"\n",
    );
    let output = peroxo()
        .args(["backup", "--config"])
        .arg(&path)
        .arg("--to")
        .arg(dir.path().join("copy.db"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("pg_dump"));
}

#[tokio::test]
async fn tokens_in_query_strings_never_reach_the_logs() {
    let mut node = Node::start(&[], &[("PEROXO_AUTH__JWT_SECRET", SECRET)], "debug");
    let addr = node.addr();
    let token = String::from_utf8(
        peroxo()
            .args(["token", "--user", "alice"])
            .env("PEROXO_AUTH__JWT_SECRET", SECRET)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let token = token.trim();
    let mut alice = common::Client::connect(&format!("ws://{addr}/ws?token={token}")).await;
    assert_eq!(alice.welcome["user"], "alice");
    alice.dm("bob", "hi", "m1").await;
    // A refused token must not be logged either.
    let bad = format!("{token}x");
    assert!(
        common::Client::try_connect(&format!("ws://{addr}/ws?token={bad}"))
            .await
            .is_err()
    );
    alice.close().await;
    let logs = node.terminate();
    assert!(logs.len() > 3, "debug logging was on");
    let signature = token.rsplit('.').next().unwrap();
    for line in &logs {
        assert!(
            !line.contains(signature),
            "a token reached the logs: {line}"
        );
        assert!(
            !line.contains(SECRET),
            "the secret reached the logs: {line}"
        );
    }
}

/// Runs `peroxo` with `args`; returns (exit code, stdout, stderr).
fn run(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let output = peroxo().args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn sighup_reloads_the_file_and_peroxo_reload_reports_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "[auth]\nmode = \"dev\"\n[storage]\nlisten = \"127.0.0.1:0\"\nsqlite_path = \"{}\"\n\
         [log]\nformat = \"json\"\n",
        dir.path().join("peroxo.db").display()
    );
    let config = config_file(&dir, &format!("{base}[http]\nlisten = \"127.0.0.1:0\"\n"));
    let pid_file = dir.path().join("peroxo.pid");
    let mut command = peroxo();
    command
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--pid-file")
        .arg(&pid_file);
    let mut node = Node::spawn(&mut command, tempfile::tempdir().unwrap());
    let addr = node.addr();
    let state_file = dir.path().join("peroxo.pid.json");
    common::eventually("the node writes its state file", || state_file.exists()).await;
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, node.child.id());
    let mut alice = common::Client::connect(&format!("ws://{addr}/ws?user=alice")).await;

    // A stricter burst (live) and another listen address (restart needed).
    std::fs::write(
        &config,
        format!("{base}[http]\nlisten = \"127.0.0.1:1\"\n[limits]\nrate_burst = 3\n"),
    )
    .unwrap();
    let (code, diff, stderr) = run(&[
        "check-config".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--diff".as_ref(),
        "--pid-file".as_ref(),
        pid_file.as_os_str(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        diff.lines().collect::<Vec<_>>(),
        [
            "http.listen: \"127.0.0.1:0\" -> \"127.0.0.1:1\" (restart needed)",
            "limits.rate_burst: 40 -> 3 (live)",
        ]
    );
    let reload = [
        "reload".as_ref(),
        "--pid-file".as_ref(),
        pid_file.as_os_str(),
    ];
    let (code, out, stderr) = run(&reload);
    assert_eq!(code, 0, "{stderr}");
    assert!(out.contains("limits.rate_burst: 40 -> 3"), "{out}");
    assert!(out.contains("restart needed"), "{out}");
    assert!(out.contains("http.listen"), "{out}");
    // The session opened before the reload has a burst of 3 now, and is still open.
    for i in 0..3 {
        alice
            .send_json(serde_json::json!({"type": "ping", "req_id": i}))
            .await;
        alice.expect("pong").await;
    }
    alice
        .send_json(serde_json::json!({"type": "ping", "req_id": 3}))
        .await;
    assert_eq!(alice.expect("error").await["code"], "rate_limited");

    // An invalid file changes nothing, and says why.
    std::fs::write(&config, format!("{base}[limits]\nrate_burst = \"many\"\n")).unwrap();
    let (code, _, stderr) = run(&reload);
    assert_eq!(code, 1);
    assert!(stderr.contains("reload rejected"), "{stderr}");
    assert!(stderr.contains("limits.rate_burst"), "{stderr}");
    let (_, metrics) = common::http_request(addr.parse().unwrap(), "GET", "/metrics", "").await;
    assert_eq!(
        common::metric_sample(
            &metrics,
            "peroxo_config_reloads_total",
            "outcome=\"rejected\""
        ),
        Some(1.0)
    );

    // The log format changes live: from JSON lines to text.
    std::fs::write(
        &config,
        format!(
            "{}[log]\nformat = \"text\"\n",
            base.replace("[log]\nformat = \"json\"\n", "")
        ),
    )
    .unwrap();
    let (code, _, stderr) = run(&reload);
    assert_eq!(code, 0, "{stderr}");
    let _bob = common::Client::connect(&format!("ws://{addr}/ws?user=bob")).await;
    let deadline = Instant::now() + common::DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = node
            .lines
            .recv_timeout(left)
            .expect("a text log line for bob's session");
        if line.contains("session opened") && line.contains("bob") {
            assert!(!line.starts_with('{'), "{line}");
            break;
        }
    }
    drop(alice);
    node.terminate();
    assert!(!pid_file.exists() && !state_file.exists());
}

#[tokio::test]
async fn user_export_writes_json_lines_and_user_erase_leaves_tombstones() {
    let mut node = Node::start(&["--dev"], &[], "info");
    let addr = node.addr();
    let mut alice = common::Client::connect(&format!("ws://{addr}/ws?user=alice")).await;
    alice.dm("bob", "first", "m0").await;
    alice.dm("carol", "second", "m1").await;
    let config = node.dir.path().join("config.toml");
    let kept = tempfile::tempdir().unwrap();
    let export = |user: &str, to: &std::path::Path| {
        peroxo()
            .args(["user", "export", "--config"])
            .arg(&config)
            .args(["--tenant", "default", "--user", user, "--to"])
            .arg(to)
            .output()
            .unwrap()
    };
    let file = kept.path().join("alice.jsonl");
    let output = export("alice", &file);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("2 conversations, 2 messages"), "{stderr}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is one JSON object"))
        .collect();
    let types: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["user", "conversation", "conversation", "message", "message"]
    );
    assert_eq!(lines[0]["user"], "alice");
    assert_eq!(lines[0]["last_seq"], 2);
    assert_eq!(
        lines[1]["conversation_id"], "alice:carol",
        "newest activity first"
    );
    assert_eq!(
        lines[1]["read_marker"],
        lines[1]["last_message"]["message_id"]
    );
    let texts: Vec<&str> = lines[3..]
        .iter()
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["first", "second"]);
    // The file is never overwritten; an unknown user is said to be one.
    assert_eq!(export("alice", &file).status.code(), Some(1));
    let unknown = export("nobody", &kept.path().join("nobody.jsonl"));
    assert_eq!(unknown.status.code(), Some(67));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no user \"nobody\""));

    // Erasing while the node serves; a second run says there is nothing left.
    let erase = || {
        peroxo()
            .args(["user", "erase", "--config"])
            .arg(&config)
            .args(["--user", "alice"])
            .output()
            .unwrap()
    };
    let first = erase();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{stdout}");
    assert!(stdout.contains("2 message texts"), "{stdout}");
    let again = erase();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to erase"));
    let erased = kept.path().join("erased.jsonl");
    assert!(export("alice", &erased).status.success());
    let text = std::fs::read_to_string(&erased).unwrap();
    assert!(
        !text.contains("first") && !text.contains("second"),
        "{text}"
    );
    assert_eq!(
        text.matches("\"erased\":true").count(),
        4,
        "two messages, two previews"
    );
    drop(alice);
    node.terminate();
}

#[test]
fn apikey_prints_a_key_and_the_config_entry_that_accepts_it() {
    let output = peroxo()
        .args(["apikey", "--tenant", "acme", "--name", "billing"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (key, entry) = stdout.split_once('\n').unwrap();
    assert!(key.starts_with("pxk_") && key.len() == 4 + 64, "{key}");
    // The entry is valid configuration, naming the key by its SHA-256 only.
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(&dir, entry);
    let config = peroxo_config::Config::load(
        &path,
        peroxo_config::ConfigFile::Required,
        std::iter::empty(),
    )
    .expect("the printed entry loads");
    let listed = &config.server_api.keys[0];
    assert_eq!(
        (listed.tenant.as_str(), listed.name.as_str()),
        ("acme", "billing")
    );
    use sha2::Digest;
    assert_eq!(
        listed.sha256,
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    );
    assert!(!entry.contains(key), "the key itself is not in the entry");

    let bad = peroxo()
        .args(["apikey", "--tenant", "no spaces", "--name", "x"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
}
