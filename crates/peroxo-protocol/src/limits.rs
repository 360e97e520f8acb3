//! Limits that hold whatever a deployment configures: the configuration may lower them, never
//! raise them, and the storage service enforces them on every call.

/// The largest text any message may carry, whatever `limits.max_text_bytes` allows.
pub const MAX_STORED_TEXT_BYTES: usize = 65_536;
/// The most messages one append call to the storage service may carry
/// (`storage.max_batch` is at most this).
pub const MAX_APPEND_BATCH: usize = 10_000;
