//! The event feed: `GET /api/v1/events?after=&limit=&wait=`, the tenant's committed changes
//! in commit order after a cursor the consumer keeps. With `wait`, an empty answer waits (a
//! long poll) until an event commits or `wait` seconds pass.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::time::Instant;

use super::{ApiError, ApiQuery, Caller, storage};
use crate::http::HttpState;
use peroxo_protocol::outbox::MAX_EVENTS_LIMIT;
use peroxo_storage::EventsQuery;

/// The longest long poll.
pub(super) const MAX_WAIT_SECS: u64 = 30;
/// How often a long poll looks for events committed by other nodes (this node's own commits
/// end it at once).
const POLL: Duration = Duration::from_millis(250);
/// Long polls a node keeps waiting at once; beyond, a poll is answered at once (an empty page
/// is a valid answer), so waiting requests cannot pile up open connections.
pub(crate) const MAX_WAITING_POLLS: usize = 256;

#[derive(Debug, Deserialize)]
pub(super) struct FeedQuery {
    /// The last event id processed (`next_after` of the previous answer); 0 or absent: from
    /// the oldest event kept.
    after: Option<String>,
    limit: Option<u32>,
    /// Seconds an empty answer may wait for an event (0 to 30; default 0).
    wait: Option<u64>,
}

/// `GET /api/v1/events`
pub(super) async fn feed(
    State(state): State<HttpState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<FeedQuery>,
) -> Result<Response, ApiError> {
    let after = match query.after.as_deref() {
        None | Some("") => 0,
        Some(after) => after
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request("after must be an event id (decimal digits)"))?,
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_EVENTS_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_EVENTS_LIMIT}"
        )));
    }
    let wait = query.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(ApiError::bad_request(format!(
            "wait must be between 0 and {MAX_WAIT_SECS} seconds"
        )));
    }
    // Only a poll that holds a place waits.
    let place = state.api_polls.clone().try_acquire_owned().ok();
    let wait = if place.is_some() { wait } else { 0 };
    let deadline = Instant::now() + Duration::from_secs(wait);
    let gateway = &state.gateway;
    loop {
        // Armed before the read, so a commit between the read and the wait is not missed.
        let committed = gateway.committed.notified();
        tokio::pin!(committed);
        committed.as_mut().enable();
        let page = storage(gateway)?
            .events(EventsQuery {
                tenant: caller.tenant.clone(),
                after,
                limit,
            })
            .await?;
        let now = Instant::now();
        if !page.events.is_empty() || now >= deadline {
            return Ok(Json(serde_json::json!({
                "events": page.events.iter().map(|e| e.feed_json()).collect::<Vec<_>>(),
                "next_after": page.next_after.to_string(),
                "pruned_until": page.pruned_until.to_string(),
            }))
            .into_response());
        }
        let pause = POLL.min(deadline - now);
        tokio::select! {
            () = committed => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}
