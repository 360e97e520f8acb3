//! The JSON Schema of the wire frames, derived from the very types the server encodes
//! ([`Command`] as a client writes it, [`ServerFrame`] as the server writes it) and committed as
//! `docs/protocol.schema.json`, where clients in other languages generate their types from it
//! (`clients/js` does, with `npm run gen`).
//!
//! The test below fails when the committed file differs from what the types produce, so a
//! change to a frame cannot land without the schema (and, through the SDK's own staleness
//! test, the TypeScript types) following it. `PEROXO_UPDATE_SCHEMA=1 cargo test -p
//! peroxo-protocol schema` writes the file anew.
//!
//! Only tests derive the schemas (`schemars` is a dev-dependency): a build of the server
//! carries none of this.

use std::path::PathBuf;

use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use crate::{Command, CommandKind, ServerFrame};

/// Where the schema is committed, from the workspace root.
const SCHEMA_PATH: &str = "docs/protocol.schema.json";

/// The schema: `Command`, `CommandKind` and `ServerFrame` under `$defs`, with every type they
/// use.
fn protocol_schema() -> Value {
    // Both directions are described as written: a client writes commands and reads the frames
    // the server writes.
    let mut generator = SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator();
    generator.subschema_for::<Command>();
    generator.subschema_for::<CommandKind>();
    generator.subschema_for::<ServerFrame<'static>>();
    let mut definitions = generator.take_definitions(true);
    // `Command` flattens `CommandKind`, which schemars writes out in full: name it instead, so
    // that generated code has one type for what a command asks, with or without its `req_id`.
    let kinds = definitions["CommandKind"]["oneOf"].clone();
    let command = definitions["Command"]
        .as_object_mut()
        .expect("Command is an object schema");
    assert_eq!(
        command.remove("oneOf"),
        Some(kinds),
        "Command is CommandKind with a req_id"
    );
    command.insert("allOf".into(), json!([{ "$ref": "#/$defs/CommandKind" }]));
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "PerOXO wire protocol",
        "description": "The JSON text frames of PerOXO's WebSocket protocol (versions 1 and 2): \
            `Command` is what a client sends, `ServerFrame` what the server sends. Generated \
            from crates/peroxo-protocol by its schema test; docs/PROTOCOL.md is normative.",
        "$defs": definitions,
    })
}

fn schema_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(SCHEMA_PATH)
}

#[test]
fn committed_schema_matches_the_wire_types() {
    let expected =
        serde_json::to_string_pretty(&protocol_schema()).expect("a schema is JSON") + "\n";
    let path = schema_path();
    if std::env::var_os("PEROXO_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &expected).expect("write the schema");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == expected,
        "{SCHEMA_PATH} is not what the wire types produce: run \
         `PEROXO_UPDATE_SCHEMA=1 cargo test -p peroxo-protocol schema`, then `npm run gen` in \
         clients/js, and commit both"
    );
}

#[test]
fn schema_names_every_error_code_and_role() {
    let schema = protocol_schema();
    let text = schema.to_string();
    for code in crate::ErrorCode::ALL {
        assert!(text.contains(&format!("\"{}\"", code.as_str())), "{code:?}");
    }
    let roles = &schema["$defs"]["MemberView"]["properties"]["role"]["enum"];
    let expected: Vec<&str> = crate::event::Role::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(roles, &json!(expected));
}
