//! The record of one connection: the log lines and metrics of its opening and its end.

use std::sync::Arc;

use peroxo_protocol::domain::{SessionId, UserKey};
use tokio::time::Instant;

use super::Outbound;
use crate::telemetry::{CONNECTION_LOST, Metrics};

/// How a connection ended, for its log line and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ending {
    code: u16,
    label: &'static str,
}

/// The record of one connection: logs its end (tenant, user, duration, close code) and counts
/// it once both socket tasks are done with it.
pub struct ConnectionRecord {
    pub key: UserKey,
    pub session_id: SessionId,
    opened: Instant,
    /// The node's metrics, where the end is counted.
    metrics: Arc<Metrics>,
    /// The first side to know how the connection ends writes it here.
    ending: std::sync::Mutex<Option<Ending>>,
}

impl ConnectionRecord {
    /// Logs the opening of the connection queued through `outbound` and counts it.
    pub fn opened(key: UserKey, outbound: &Outbound) -> Arc<Self> {
        let session_id = outbound.session_id();
        tracing::info!(tenant = %key.tenant, user = %key.user, session = %session_id, "session opened");
        let metrics = Arc::clone(&outbound.shared.metrics);
        metrics.sessions_opened.increment(1);
        Arc::new(Self {
            key,
            session_id,
            opened: Instant::now(),
            metrics,
            ending: std::sync::Mutex::new(None),
        })
    }

    /// Writes how the connection ends, unless a side wrote it first.
    pub(super) fn ended(&self, code: u16, label: &'static str) {
        let mut ending = self.ending.lock().expect("connection record poisoned");
        if ending.is_none() {
            *ending = Some(Ending { code, label });
        }
    }
}

impl Drop for ConnectionRecord {
    fn drop(&mut self) {
        let ending = self
            .ending
            .lock()
            .map(|e| *e)
            .unwrap_or_default()
            .unwrap_or(Ending {
                code: 1006,
                label: CONNECTION_LOST,
            });
        self.metrics.session_closed(ending.label);
        tracing::info!(
            tenant = %self.key.tenant,
            user = %self.key.user,
            session = %self.session_id,
            duration_ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX),
            close_code = ending.code,
            reason = ending.label,
            "session closed"
        );
    }
}
