//! The reads that the hot paths repeat use the index meant for them. SQLite plans without
//! statistics (the backend never runs `ANALYZE`), and then may prefer a primary key's leading
//! column to a narrower index: a plan that reads every row of a tenant or every entry of a
//! user's stream for each call is correct, and slower with every row stored. These tests keep
//! each plan on its index.

use rusqlite::Connection;

use super::schema::migrate;
use super::{outbox, queries, state};

/// The query plan SQLite chooses for `sql`, one line per step.
fn plan(conn: &Connection, sql: &str) -> Vec<String> {
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap_or_else(|e| panic!("{sql} does not prepare: {e}"));
    let count = stmt.parameter_count();
    let params = vec![rusqlite::types::Value::Integer(1); count];
    stmt.query_map(rusqlite::params_from_iter(params), |row| {
        row.get::<_, String>(3)
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn database() -> Connection {
    let mut conn = Connection::open_in_memory().unwrap();
    migrate(&mut conn).unwrap();
    conn
}

/// Asserts that the plan of `sql` has a step with each of `steps` and no step reading a
/// table by a bare `tenant` prefix.
fn assert_plan(sql: &str, steps: &[&str]) {
    let plan = plan(&database(), sql);
    for step in steps {
        assert!(
            plan.iter().any(|line| line.contains(step)),
            "no step {step:?} in the plan {plan:#?} of {sql}"
        );
    }
    assert!(
        !plan
            .iter()
            .any(|line| line.ends_with("(tenant=?)") || line.starts_with("SCAN")),
        "a step reads a whole tenant or table in the plan {plan:#?} of {sql}"
    );
}

#[test]
fn a_groups_members_are_read_through_the_members_index() {
    assert_plan(
        state::MEMBERS,
        &["USING INDEX group_members (tenant=? AND conversation=?)"],
    );
}

#[test]
fn a_conversation_page_finds_each_last_group_message_through_the_group_message_index() {
    assert_plan(
        &queries::conversation_page_sql(),
        &[
            "USING INDEX conversation_list (tenant=? AND user=? AND activity_seq<?)",
            "USING COVERING INDEX inbox_group_messages (tenant=? AND owner=? AND message_id=?)",
        ],
    );
}

#[test]
fn read_receipts_read_the_members_or_the_two_participants_only() {
    assert_plan(
        queries::GROUP_READ_MARKERS,
        &["USING INDEX group_members (tenant=? AND conversation=?)"],
    );
    assert_plan(
        queries::DIRECT_READ_MARKERS,
        &["USING PRIMARY KEY (tenant=? AND user=? AND conversation=?)"],
    );
}

#[test]
fn the_event_feed_reads_a_range_of_the_outbox_primary_key() {
    assert_plan(
        outbox::FEED,
        &["SEARCH outbox USING PRIMARY KEY (tenant=? AND id>?)"],
    );
}
