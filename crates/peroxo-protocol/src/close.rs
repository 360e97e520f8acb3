//! Why the server closes a client's WebSocket: each cause carries its close code (part of the
//! protocol: clients choose how to reconnect by it), its reason text and its metric label.

/// Why the server closes a connection: its close code, reason text and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// The server is shutting down (1001).
    Shutdown,
    /// The client was silent (not even a pong) for `limits.idle_timeout_secs` (1001).
    IdleTimeout,
    /// The client kept exceeding its command rate (1008).
    RateAbuse,
    /// The client sent a message or frame over `limits.max_message_bytes` (1009).
    TooLarge,
    /// The session failed `session.max_restarts` times in the window, or could not restart
    /// (1011).
    SessionFailed,
    /// SessionSupervisor failed and its sessions with it (1011).
    SupervisorFailed,
    /// The client's outbound queue overflowed: it does not read fast enough (1013).
    SlowConsumer,
    /// Storage was unreachable when the client connected (1013).
    StorageUnavailable,
    /// The client's token expired without a refresh (4001).
    TokenExpired,
    /// The session ended without a more specific cause (1000).
    SessionEnded,
    /// The application disconnected the user through the server API, with a code of its
    /// choice (4000 to 4999; [`DISCONNECTED_CODE`] when it named none).
    Disconnected { code: u16 },
}

/// The close code of a disconnection by the server API that names no code of its own.
pub const DISCONNECTED_CODE: u16 = 4003;

impl CloseCause {
    pub const ALL: [CloseCause; 11] = [
        CloseCause::Shutdown,
        CloseCause::IdleTimeout,
        CloseCause::RateAbuse,
        CloseCause::TooLarge,
        CloseCause::SessionFailed,
        CloseCause::SupervisorFailed,
        CloseCause::SlowConsumer,
        CloseCause::StorageUnavailable,
        CloseCause::TokenExpired,
        CloseCause::SessionEnded,
        CloseCause::Disconnected {
            code: DISCONNECTED_CODE,
        },
    ];

    /// The WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            CloseCause::Shutdown | CloseCause::IdleTimeout => 1001,
            CloseCause::RateAbuse => 1008,
            CloseCause::TooLarge => 1009,
            CloseCause::SessionFailed | CloseCause::SupervisorFailed => 1011,
            CloseCause::SlowConsumer | CloseCause::StorageUnavailable => 1013,
            CloseCause::TokenExpired => 4001,
            CloseCause::SessionEnded => 1000,
            CloseCause::Disconnected { code } => code,
        }
    }

    /// The close frame's reason text.
    pub fn text(self) -> &'static str {
        match self {
            CloseCause::Shutdown => "server shutting down",
            CloseCause::IdleTimeout => "idle timeout",
            CloseCause::RateAbuse => "command rate exceeded persistently",
            CloseCause::TooLarge => "message too large",
            CloseCause::SessionFailed => "session failed repeatedly",
            CloseCause::SupervisorFailed => "session supervisor failed",
            CloseCause::SlowConsumer => "client is not reading fast enough; reconnect and sync",
            CloseCause::StorageUnavailable => "storage unavailable; reconnect later",
            CloseCause::TokenExpired => "token expired",
            CloseCause::SessionEnded => "session ended",
            CloseCause::Disconnected { .. } => "disconnected by the application",
        }
    }

    /// The `reason` label of `peroxo_sessions_closed_total`.
    pub fn label(self) -> &'static str {
        match self {
            CloseCause::Shutdown => "shutdown",
            CloseCause::IdleTimeout => "idle_timeout",
            CloseCause::RateAbuse => "rate_abuse",
            CloseCause::TooLarge => "too_large",
            CloseCause::SessionFailed => "session_failed",
            CloseCause::SupervisorFailed => "supervisor_failed",
            CloseCause::SlowConsumer => "slow_consumer",
            CloseCause::StorageUnavailable => "storage_unavailable",
            CloseCause::TokenExpired => "token_expired",
            CloseCause::SessionEnded => "session_ended",
            CloseCause::Disconnected { .. } => "disconnected",
        }
    }
}
