//! The echo bot example (`examples/echo_bot.rs`), run as a program against a dev node: it
//! answers a direct message with the same text, and exits once it has answered as many as
//! `--exit-after` asks.
//!
//! The example's binary is the one `cargo test` builds beside this test's (`cargo test --test
//! echo_bot` alone does not build examples: run `cargo test -p peroxo-client`).

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use common::{DEADLINE, TestServer, config, next_matching};
use peroxo_client::{Client, Event};

/// `target/<profile>/examples/echo_bot`, from this test's `target/<profile>/deps/echo_bot-…`.
fn echo_bot_binary() -> PathBuf {
    let test = std::env::current_exe().unwrap();
    let profile = test.parent().and_then(|deps| deps.parent()).unwrap();
    let binary = profile
        .join("examples")
        .join(format!("echo_bot{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: `cargo test -p peroxo-client` builds it",
        binary.display()
    );
    binary
}

#[tokio::test]
async fn the_echo_bot_answers_a_direct_message_to_its_sender() {
    let server = TestServer::dev().await;
    let mut bot = tokio::process::Command::new(echo_bot_binary())
        .args([
            "--url",
            &server.ws_url(),
            "--user",
            "echo",
            "--exit-after",
            "1",
        ])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the echo bot starts");

    // Sent whether or not the bot is connected yet: it syncs what it missed.
    let (alice, mut events) = Client::connect(config(server.user_url("alice")))
        .await
        .unwrap();
    alice.send("echo", "hello bot").await.unwrap();
    let echo = next_matching(
        &mut events,
        "the echo",
        |event| match event {
            Event::Message(m) if m.from == "echo" => Some(m.clone()),
            _ => None,
        },
        |_| {},
    )
    .await;
    assert_eq!(echo.to, "alice");
    assert_eq!(echo.text, "echo: hello bot");

    let exit = tokio::time::timeout(DEADLINE, bot.wait())
        .await
        .expect("the bot exits after one answer")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    alice.close().await;
}
