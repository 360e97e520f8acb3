//! The check of the cases with a webhook receiver: what the receiver got against the feed
//! (the `outbox` table) and the messages the database holds.

use std::collections::{BTreeMap, HashMap};

use peroxo_gateway::webhooks::signature;
use peroxo_protocol::domain::conversation_id;
use peroxo_protocol::event::is_group_id;
use serde_json::Value;

use super::{Check, Evidence};
use crate::rig::OutboxRow;
use crate::webhook::{Batch, Received};

/// The kind of event an endpoint never receives (the record of its own failures).
const FAILED: &str = "webhook.failed";

/// The feed's ids are gapless from 1 and no batch was given up; the receiver got every event
/// of the feed (deduplicated by id), each as the feed holds it, in batches signed with the
/// endpoint's secret, each a run of the feed in commit order that never starts past the
/// first event not received yet (redeliveries after a kill start earlier: at least once);
/// every message the database holds has exactly one `message.created` event, naming its
/// sender and conversation, none names another; each conversation's `message.created`
/// events are in commit order. The receiver held the whole feed within the deadline after
/// the traffic.
pub(super) fn webhooks_complete(evidence: &Evidence<'_>, received: &Received) -> Check {
    let outbox = &evidence.stored.outbox;
    let mut failures = feed_gapless(outbox);
    // What the endpoint takes: every event but the records of failed deliveries.
    let expected: Vec<&OutboxRow> = outbox.iter().filter(|row| row.kind != FAILED).collect();
    let position: HashMap<i64, usize> = expected
        .iter()
        .enumerate()
        .map(|(n, row)| (row.id, n))
        .collect();
    // Every event received, by id: its first copy and how many copies came.
    let mut copies: BTreeMap<i64, (Value, u32)> = BTreeMap::new();
    // How many events of `expected`, from the first, had arrived before each batch.
    let mut next = 0;
    for (n, batch) in received.batches.iter().enumerate() {
        let events = match batch_events(batch, received) {
            Ok(events) => events,
            Err(failure) => {
                failures.push(format!("batch {n}: {failure}"));
                continue;
            }
        };
        let mut last: Option<usize> = None;
        for event in events {
            let id = event["id"]
                .as_str()
                .and_then(|id| id.parse::<i64>().ok())
                .unwrap_or(-1);
            let Some(&at) = position.get(&id) else {
                failures.push(format!("batch {n}: event {event} is not in the feed"));
                continue;
            };
            failures
                .extend(differs_from_feed(&event, expected[at]).map(|d| format!("batch {n}: {d}")));
            match last {
                None if at > next => failures.push(format!(
                    "batch {n} starts at event {id}: event {} was never delivered before it",
                    expected[next].id
                )),
                Some(previous) if at != previous + 1 => failures.push(format!(
                    "batch {n}: event {id} follows event {}, not the next of the feed",
                    expected[previous].id
                )),
                _ => {}
            }
            last = Some(at);
            next = next.max(at + 1);
            let copy = copies.entry(id).or_insert_with(|| (event.clone(), 0));
            if copy.0 != event {
                failures.push(format!("event {id} came as {} and as {event}", copy.0));
            }
            copy.1 += 1;
        }
        if last.is_none() {
            failures.push(format!("batch {n} holds no event"));
        }
    }
    for row in &expected {
        if !copies.contains_key(&row.id) {
            failures.push(format!("event {} ({}) never received", row.id, row.kind));
        }
    }
    failures.extend(messages_created_once_in_order(evidence, &copies));
    if received.caught_up.is_none() {
        failures.push(format!(
            "the receiver did not hold the feed's {} events within the deadline",
            expected.len()
        ));
    }
    let distinct = copies.len();
    let total: u32 = copies.values().map(|(_, n)| n).sum();
    let created = copies
        .values()
        .filter(|(e, _)| e["type"] == "message.created")
        .count();
    Check {
        name: "webhooks-complete",
        failures,
        remark: format!(
            " ({distinct} events, {created} message.created, in {} batches, {} redelivered, \
             {} of {} requests answered 500, {} in flight at the kill, caught up in {})",
            received.batches.len(),
            total as usize - distinct,
            received.refused,
            received.requests,
            received.in_flight_at_kills,
            received
                .caught_up
                .map_or("-".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()))
        ),
    }
}

/// The feed's ids run from 1 without holes, and it holds no record of a batch given up.
fn feed_gapless(outbox: &[OutboxRow]) -> Vec<String> {
    let mut failures = Vec::new();
    for (row, n) in outbox.iter().zip(1..) {
        if row.id != n {
            failures.push(format!("the feed holds event {} where {n} was due", row.id));
            break;
        }
    }
    for row in outbox.iter().filter(|row| row.kind == FAILED) {
        failures.push(format!(
            "event {}: a batch was given up: {}",
            row.id, row.payload
        ));
    }
    failures
}

/// A batch's events, once its signature, endpoint and tenant are as configured.
fn batch_events(batch: &Batch, received: &Received) -> Result<Vec<Value>, String> {
    let expected = signature(received.secret, &batch.timestamp, &batch.body);
    if batch.signature != expected {
        return Err(format!(
            "signature {:?} of timestamp {:?}, not {expected}",
            batch.signature, batch.timestamp
        ));
    }
    if batch.webhook != received.name {
        return Err(format!(
            "{:?} names webhook {:?}",
            batch.body, batch.webhook
        ));
    }
    let body: Value =
        serde_json::from_str(&batch.body).map_err(|e| format!("{:?}: {e}", batch.body))?;
    if body["webhook"] != received.name || body["tenant"] != received.tenant.as_str() {
        return Err(format!("{body} is not of webhook {}", received.name));
    }
    match body["events"].as_array() {
        Some(events) => Ok(events.clone()),
        None => Err(format!("{body} holds no events")),
    }
}

/// How a received event differs from the feed's row of its id, if it does.
fn differs_from_feed(event: &Value, row: &OutboxRow) -> Option<String> {
    let data: Value = serde_json::from_str(&row.payload).unwrap_or(Value::Null);
    (event["type"] != row.kind.as_str()
        || event["conversation_id"] != row.conversation.as_str()
        || event["data"] != data)
        .then(|| format!("event {event} differs from the feed's {row:?}"))
}

/// Every stored message has exactly one `message.created` event among those received, with
/// its sender and conversation; none names a message the database does not hold; and each
/// conversation's events name its messages in commit order (ids increasing with event ids).
fn messages_created_once_in_order(
    evidence: &Evidence<'_>,
    copies: &BTreeMap<i64, (Value, u32)>,
) -> Vec<String> {
    let mut failures = Vec::new();
    // Message id → the ids of the events that announced it.
    let mut created: HashMap<i64, Vec<(i64, &Value)>> = HashMap::new();
    let mut last_in: HashMap<&str, i64> = HashMap::new();
    for (id, (event, _)) in copies {
        if event["type"] != "message.created" {
            continue;
        }
        let message = event["data"]["message_id"]
            .as_str()
            .and_then(|m| m.parse::<i64>().ok())
            .unwrap_or(-1);
        created.entry(message).or_default().push((*id, event));
        let conversation = event["conversation_id"].as_str().unwrap_or_default();
        if let Some(previous) = last_in.insert(conversation, message)
            && previous >= message
        {
            failures.push(format!(
                "event {id}: message {message} of {conversation} announced after message \
                 {previous}"
            ));
        }
    }
    for row in &evidence.stored.messages {
        let conversation = if is_group_id(&row.recipient) {
            row.recipient.clone()
        } else {
            conversation_id(&row.sender, &row.recipient)
        };
        match created.remove(&row.id).as_deref() {
            Some([(_, event)])
                if event["data"]["from"] == row.sender.as_str()
                    && event["conversation_id"] == conversation.as_str() => {}
            Some([(id, event)]) => failures.push(format!(
                "event {id} announces message {} as {event}, stored as {row:?}",
                row.id
            )),
            Some(events) => failures.push(format!(
                "message {} announced by {} events: {:?}",
                row.id,
                events.len(),
                events.iter().map(|(id, _)| id).collect::<Vec<_>>()
            )),
            None => failures.push(format!(
                "message {} ({}/{}) never announced by message.created",
                row.id, row.sender, row.client_msg_id
            )),
        }
    }
    for (message, events) in created {
        failures.push(format!(
            "message.created event(s) {:?} name message {message}, which is not stored",
            events.iter().map(|(id, _)| id).collect::<Vec<_>>()
        ));
    }
    failures
}
