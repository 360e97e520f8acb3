//! Arbitrary bytes and arbitrary JSON thrown at the frame decoder and at a live session:
//! never a panic, always either a valid command or a precise `bad_request` (or `too_large`).

use crate::common::TestServer;
use peroxo_protocol::{DecodeLimits, ErrorCode, decode};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use serde_json::Value;

const LIMITS: DecodeLimits = DecodeLimits {
    max_text_bytes: 4096,
    max_watched_users: 1000,
};

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,80}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A frame that looks like a command: a known or unknown type with random fields.
fn command_like() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        Just("send"),
        Just("history"),
        Just("sync"),
        Just("presence_subscribe"),
        Just("presence_unsubscribe"),
        Just("online_users"),
        Just("typing"),
        Just("ping"),
        Just("refresh"),
        Just("nope"),
    ];
    let field = prop_oneof![
        Just("to"),
        Just("text"),
        Just("client_msg_id"),
        Just("req_id"),
        Just("with"),
        Just("before"),
        Just("limit"),
        Just("after_seq"),
        Just("users"),
        Just("token"),
    ];
    (kind, prop::collection::vec((field, any_json()), 0..6)).prop_map(|(kind, fields)| {
        let mut object = serde_json::Map::new();
        object.insert("type".into(), Value::from(kind));
        for (name, value) in fields {
            object.insert(name.into(), value);
        }
        Value::Object(object)
    })
}

fn assert_decodes_or_refuses(text: &str) {
    match decode(text, &LIMITS) {
        Ok(_) => {}
        Err(error) => {
            assert!(
                matches!(error.code, ErrorCode::BadRequest | ErrorCode::TooLarge),
                "{text:?} gave {error:?}"
            );
            assert!(!error.message.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(RunnerConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_text_never_panics_the_decoder(text in ".{0,300}") {
        assert_decodes_or_refuses(&text);
    }

    #[test]
    fn arbitrary_bytes_as_lossy_text_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        assert_decodes_or_refuses(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_json_never_panics_the_decoder(value in any_json()) {
        assert_decodes_or_refuses(&value.to_string());
    }

    #[test]
    fn command_shaped_json_decodes_or_is_refused(value in command_like()) {
        assert_decodes_or_refuses(&value.to_string());
    }
}

#[tokio::test]
async fn a_session_survives_a_stream_of_garbage_and_others_keep_talking() {
    let server = TestServer::start_with(|c| {
        c.limits.rate_per_sec = 100_000;
        c.limits.rate_burst = 100_000;
    })
    .await;
    let mut attacker = server.connect("mallory").await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;

    let mut runner = TestRunner::deterministic();
    let frames: Vec<String> = (0..300)
        .map(|i| {
            let strategy = if i % 2 == 0 {
                command_like().boxed()
            } else {
                any_json().boxed()
            };
            strategy
                .new_tree(&mut runner)
                .unwrap()
                .current()
                .to_string()
        })
        .collect();
    for (i, frame) in frames.iter().enumerate() {
        attacker.send_text(frame).await;
        if i % 3 == 0 {
            attacker.send_binary(frame.as_bytes()).await;
        }
        if i % 50 == 0 {
            alice.dm("bob", &format!("m{i}"), &format!("m{i}")).await;
        }
    }
    // Every answer is a well-formed frame; errors are precise, never `internal`.
    for frame in attacker.frames_until_pong().await {
        let kind = frame["type"].as_str().expect("every frame has a type");
        if kind == "error" {
            let code = frame["code"].as_str().unwrap();
            assert!(
                ["bad_request", "too_large", "forbidden", "unavailable"].contains(&code),
                "{frame}"
            );
        }
    }
    // The attacker's session still works, and so does everyone else's.
    let ack = attacker.dm("alice", "hello after all that", "final").await;
    assert_eq!(ack["duplicate"], false);
    for i in (0..300).step_by(50) {
        assert_eq!(bob.wait_for("message").await["text"], format!("m{i}"));
    }
    assert_eq!(
        server
            .gateway
            .restarts(peroxo_gateway::telemetry::ActorKind::Session),
        0
    );
}
