//! The writer task: owns the sending half of the socket. It takes frames from the queue,
//! writes every frame already waiting before one flush, runs the heartbeat, and sends the
//! close frame when asked. It goes through three phases, one function each: wait for
//! something to write ([`next_frame`]), write it with what follows ([`write_frames`]), and at
//! the end the close handshake ([`close_handshake`]).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use peroxo_protocol::CloseCause;
use tokio::time::{Instant, Sleep};

use super::heartbeat::{Heartbeat, Pacemaker, Pulse};
use super::outbound::{Item, Next, OutboundQueue};
use super::record::ConnectionRecord;
use crate::live::LiveSettings;

type Sink = SplitSink<WebSocket, Message>;

/// How long the writer waits for the client's answer to its close frame before it drops the
/// connection.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the writer stops serving frames.
enum Stop {
    /// Close the connection with this cause.
    Close(CloseCause),
    /// Nothing more will be written (the connection ended, every sender is gone, or the
    /// socket failed): no close frame of ours.
    Finished,
}

/// The writer task. Written as an `async` block rather than an `async fn`: the task keeps
/// its arguments once instead of twice, and every idle connection carries the task.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice"
)]
pub(super) fn run_writer(
    mut sink: Sink,
    queue: OutboundQueue,
    live: Arc<LiveSettings>,
    record: Arc<ConnectionRecord>,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let heartbeat = Heartbeat::of(&live.load().limits);
        let mut pacemaker = Pacemaker {
            heartbeat,
            last_heard: &queue.shared.last_heard,
            pinged_at: None,
        };
        // One timer per connection, set to the next moment the heartbeat has something to do.
        let check = tokio::time::sleep(heartbeat.ping_interval);
        tokio::pin!(check);
        let stop = loop {
            let first =
                match next_frame(&mut sink, &queue, &mut pacemaker, check.as_mut(), &live).await {
                    Ok(first) => first,
                    Err(stop) => break stop,
                };
            if let Err(stop) =
                write_frames(&mut sink, &queue, &pacemaker, check.as_mut(), first).await
            {
                break stop;
            }
        };
        if let Stop::Close(cause) = stop {
            record.ended(cause.code(), cause.label());
        }
        close_handshake(&mut sink, &queue, Heartbeat::of(&live.load().limits), stop).await;
        queue.shared.end();
    }
}

/// Waits until there is a frame to write, pinging the client and timing it out meanwhile.
async fn next_frame(
    sink: &mut Sink,
    queue: &OutboundQueue,
    pacemaker: &mut Pacemaker<'_>,
    mut check: Pin<&mut Sleep>,
    live: &LiveSettings,
) -> Result<Utf8Bytes, Stop> {
    loop {
        match queue.next() {
            Next::CloseNow(cause) | Next::Item(Item::Close(cause)) => {
                return Err(Stop::Close(cause));
            }
            Next::Item(Item::Text(text)) => return Ok(text),
            Next::Finished => return Err(Stop::Finished),
            Next::Empty => {}
        }
        tokio::select! {
            biased;
            () = queue.woken() => {}
            () = &mut check => {
                // A reload may have changed the intervals: they apply from this check on.
                pacemaker.heartbeat = Heartbeat::of(&live.load().limits);
                match pacemaker.pulse() {
                    Pulse::Close => {
                        return Err(Stop::Close(queue.shared.first_cause(CloseCause::IdleTimeout)));
                    }
                    Pulse::Ping => {
                        pacemaker.pinged_at = Some(Instant::now());
                        if !ping(sink, pacemaker.heartbeat.idle_timeout).await {
                            return Err(Stop::Finished);
                        }
                    }
                    Pulse::Wait => {}
                }
                check.as_mut().reset(pacemaker.next_check());
            }
        }
    }
}

/// Writes `first` and what follows it in the queue. A client that stops reading blocks the
/// write: a close request, the end of the connection or the idle timeout must still get
/// through.
async fn write_frames(
    sink: &mut Sink,
    queue: &OutboundQueue,
    pacemaker: &Pacemaker<'_>,
    mut check: Pin<&mut Sleep>,
    first: Utf8Bytes,
) -> Result<(), Stop> {
    // Boxed: an idle connection does not carry the write's state.
    let mut write = Box::pin(write_batch(sink, queue, first));
    // Whether the heartbeat skipped a ping while this write was stuck.
    let mut ping_deferred = false;
    loop {
        tokio::select! {
            biased;
            () = queue.woken() => {
                if let Some(cause) = queue.close_now() {
                    return Err(Stop::Close(cause));
                }
                if queue.shared.has_ended() {
                    return Err(Stop::Finished);
                }
            }
            () = &mut check => {
                if let Pulse::Close = pacemaker.pulse() {
                    return Err(Stop::Close(queue.shared.first_cause(CloseCause::IdleTimeout)));
                }
                // No ping while a write is stuck (the socket is busy), so the next thing to
                // check is the idle timeout: the time to ping has passed and would fire again
                // at once.
                check.as_mut().reset(pacemaker.idle_deadline());
                ping_deferred = true;
            }
            written = &mut write => return match written {
                Ok(None) => {
                    if ping_deferred {
                        check.as_mut().reset(pacemaker.next_check());
                    }
                    Ok(())
                }
                Ok(Some(cause)) => Err(Stop::Close(cause)),
                Err(_) => Err(Stop::Finished),
            },
        }
    }
}

/// Ends the WebSocket: sends our close frame when `stop` asks for one and waits a while for
/// the client's answer, or answers a close frame the client sent first.
async fn close_handshake(sink: &mut Sink, queue: &OutboundQueue, heartbeat: Heartbeat, stop: Stop) {
    let mut answer_pending = true;
    if let Stop::Close(cause) = stop {
        let reason = match queue.shared.close_reason() {
            Some(reason) => Utf8Bytes::from(String::from(reason)),
            None => Utf8Bytes::from_static(cause.text()),
        };
        let frame = CloseFrame {
            code: cause.code(),
            reason,
        };
        // A client that does not read gets as long as an idle one before it is dropped.
        let sent = tokio::time::timeout(
            heartbeat.idle_timeout,
            sink.send(Message::Close(Some(frame))),
        )
        .await;
        match sent {
            Ok(Ok(())) => {
                // The reader sees the client's answer (or the end of the stream) and ends the
                // connection; a client that never answers is dropped after a while.
                let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, queue.shared.ended()).await;
                answer_pending = false;
            }
            // The client closed first (the WebSocket refuses a second close frame): answer it.
            Ok(Err(_)) => {}
            // The client does not read: an answer would not get through either.
            Err(_) => answer_pending = false,
        }
    }
    if answer_pending {
        // The client may have closed first. The WebSocket queued the answer to its close frame
        // when the reader read it; closing the sink writes that answer out.
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, sink.close()).await;
    }
}

/// Writes `first` and every frame already waiting, then flushes once. Returns the close
/// request found among the waiting frames, if any.
async fn write_batch(
    sink: &mut Sink,
    queue: &OutboundQueue,
    first: Utf8Bytes,
) -> Result<Option<CloseCause>, axum::Error> {
    sink.feed(Message::Text(first)).await?;
    let mut close = None;
    loop {
        match queue.next() {
            Next::Item(Item::Text(text)) => sink.feed(Message::Text(text)).await?,
            Next::Item(Item::Close(cause)) | Next::CloseNow(cause) => {
                close = Some(cause);
                break;
            }
            Next::Empty | Next::Finished => break,
        }
    }
    sink.flush().await?;
    Ok(close)
}

/// Pings the client; false when the ping cannot be written within `timeout`. Boxed: an idle
/// connection does not carry the ping's state.
async fn ping(sink: &mut Sink, timeout: Duration) -> bool {
    let send = Box::pin(sink.send(Message::Ping(Default::default())));
    matches!(tokio::time::timeout(timeout, send).await, Ok(Ok(())))
}
