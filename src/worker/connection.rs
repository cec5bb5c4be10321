//! One connection: read, handle every complete request, write all the answers in one write,
//! repeat. Idle and head timeouts; a graceful close after an error answer.

use std::cell::RefCell;
use std::time::{Duration, Instant, SystemTime};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::handler::Handler;
use super::notify::{LocalBroadcast, LocalNotify};
use super::tasks::wait_for_sync;
use crate::http::request::MAX_REQUEST;

/// What the connections of one worker share.
pub(super) struct ConnectionContext {
    pub handler: RefCell<Handler>,
    /// Wakes the worker's flusher when ids are waiting to go to the recorder.
    pub ingest_waiting: LocalNotify,
    /// Wakes the worker's log sync when an answer waits for it (`--durability host`).
    pub sync_wanted: LocalNotify,
    /// Rung after each sync of the worker's log.
    pub log_synced: LocalBroadcast,
    pub idle_timeout: Duration,
    pub head_timeout: Duration,
}

/// After an error answer, how long and how much the peer may still send before the close.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
/// A connection's input buffer: more than any common request, pipelined ones included. It
/// grows, up to `MAX_REQUEST`, only while one request is longer.
const READ_BUFFER: usize = 16 * 1024;

pub(super) async fn serve(mut stream: TcpStream, ctx: &ConnectionContext) {
    let _ = stream.set_nodelay(true);
    let mut input: Vec<u8> = Vec::with_capacity(READ_BUFFER);
    let mut output: Vec<u8> = Vec::with_capacity(4096);
    let mut head_deadline: Option<Instant> = None;
    loop {
        let wait = match head_deadline {
            None => ctx.idle_timeout,
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
        };
        if input.len() == input.capacity() {
            // The parser refuses a request before it reaches MAX_REQUEST: never full there.
            input.reserve(input.capacity().min(MAX_REQUEST - input.len()));
        }
        let filled = input.len();
        let Ok((read, buf)) =
            monoio::time::timeout(wait, stream.read(input.slice_mut(filled..))).await
        else {
            return; // idle, or a head dribbled slower than the head timeout
        };
        input = buf.into_inner();
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let (processed, logged) = {
            let mut handler = ctx.handler.borrow_mut();
            let processed = handler.process(&input, SystemTime::now(), &mut output);
            if !handler.ingest().is_empty() {
                ctx.ingest_waiting.notify();
            }
            (processed, handler.ingest().records_to_await())
        };
        if let Some(records) = logged
            && !wait_for_sync(&ctx.sync_wanted, &ctx.log_synced, || {
                let mut handler = ctx.handler.borrow_mut();
                handler.ingest().records_synced(records)
            })
            .await
        {
            return; // its sync failed: no answer rather than an `ok` that is not durable
        }
        input.drain(..processed.consumed);
        if input.capacity() > READ_BUFFER && input.len() <= READ_BUFFER {
            input.shrink_to(READ_BUFFER);
        }
        // The head timeout times each request from the read that brought its first byte: a
        // tail left after whole requests is a request that began in this read.
        head_deadline = match (input.is_empty(), head_deadline) {
            (true, _) => None,
            (false, Some(d)) if processed.consumed == 0 => Some(d),
            (false, _) => Some(Instant::now() + ctx.head_timeout),
        };
        if !output.is_empty() {
            let Ok((written, buf)) =
                monoio::time::timeout(ctx.idle_timeout, stream.write_all(output)).await
            else {
                return;
            };
            output = buf;
            output.clear();
            if written.is_err() {
                return;
            }
        }
        if processed.linger {
            linger(stream, input).await;
            return;
        }
        if processed.close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Closes after an error answer without resetting the connection: a close with unread input
/// makes the kernel send RST, which can destroy the answer before the peer reads it.
async fn linger(mut stream: TcpStream, mut buf: Vec<u8>) {
    let _ = stream.shutdown().await;
    let deadline = Instant::now() + LINGER;
    let mut discarded = 0;
    while discarded < LINGER_BYTES {
        buf.clear();
        let wait = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(wait, stream.read(buf)).await {
            Ok((Ok(n), b)) if n > 0 => {
                discarded += n;
                buf = b;
            }
            _ => return,
        }
    }
}
