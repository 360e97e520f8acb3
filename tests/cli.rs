//! The `peroxo` binary: configuration errors stop it before it binds anything (exit 64,
//! naming the key), and `peroxo serve` runs a working node that stops cleanly on SIGTERM.

mod common;

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

/// Reads JSON log lines until one whose message starts with `prefix`; returns its fields.
fn wait_for_log(lines: &mut impl Iterator<Item = String>, prefix: &str) -> serde_json::Value {
    let deadline = Instant::now() + common::DEADLINE;
    for line in lines {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for log {prefix:?}"
        );
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
    panic!("the process ended before logging {prefix:?}");
}

#[tokio::test]
async fn serve_runs_a_working_node_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[storage]\nlisten = \"127.0.0.1:0\"\nsqlite_path = \"{}\"\n[log]\nformat = \"json\"\n",
        dir.path().join("data/peroxo.db").display()
    );
    let path = config_file(&dir, &config);
    let mut child = peroxo()
        .args(["serve", "--dev", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = std::iter::from_fn(|| lines_rx.recv_timeout(common::DEADLINE).ok());
    let warning = wait_for_log(&mut lines, "auth.mode = \"dev\"");
    assert!(
        warning["message"]
            .as_str()
            .unwrap()
            .contains("any client can claim any user id")
    );
    let listening = wait_for_log(&mut lines, "gateway listening");
    let addr = listening["addr"].as_str().unwrap().to_owned();

    let mut alice = common::Client::connect(&format!("ws://{addr}/ws?user=alice")).await;
    let mut bob = common::Client::connect(&format!("ws://{addr}/ws?user=bob")).await;
    alice.dm("bob", "through the binary", "m1").await;
    assert_eq!(bob.expect("message").await["text"], "through the binary");
    assert!(dir.path().join("data/peroxo.db").exists());

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let close = alice.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1001);
    let deadline = Instant::now() + common::DEADLINE;
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "peroxo did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
}
