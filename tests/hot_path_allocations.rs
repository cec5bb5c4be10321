//! The worker's per-request path (parse, route, first-seen set, batch for the recorder,
//! answer) allocates nothing once warmed up: checked with a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use verve::health::Readiness;
use verve::ingest::{self, window_bound::WindowIdCounts};
use verve::metrics::WorkerMetrics;
use verve::window::WindowClock;
use verve::worker::batch::IngestBuffer;
use verve::worker::handler::Handler;
use verve::worker::router::Router;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn handling_requests_allocates_nothing_once_warm() {
    let metrics = WorkerMetrics::single();
    let (mut senders, receiver) = ingest::channel(1, 64, &Arc::new(WindowIdCounts::new(u64::MAX)));
    let buffer = IngestBuffer::new(senders.pop().unwrap(), Arc::clone(&metrics.metrics));
    let mut handler = Handler::new(Router::new(
        WindowClock::new(3600),
        buffer,
        Readiness::default(),
        metrics,
    ));
    let mut out = Vec::with_capacity(64 * 1024);
    let requests: Vec<Vec<u8>> = (0..50_000)
        .map(|i| {
            // Distinct ids, a few duplicates, some percent-encoded, pipelined in fours.
            let id = if i % 7 == 0 { i / 7 } else { i };
            let q = if i % 5 == 0 {
                format!("i%64={id}")
            } else {
                format!("id={id}")
            };
            format!("GET /api/verve/accept?{q} HTTP/1.1\r\nHost: x\r\n\r\n")
                .repeat(4)
                .into_bytes()
        })
        .collect();
    let mut run = |now: SystemTime| {
        for (i, r) in requests.iter().enumerate() {
            out.clear();
            let processed = handler.process(r, now, &mut out);
            assert_eq!(processed.consumed, r.len());
            assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
            if !handler.ingest().is_empty() {
                assert!(handler.ingest().flush());
            }
            // Like the recorder, which drains the batches of many rounds at once.
            if i % 40 == 39 {
                while let Ok(batch) = receiver.try_recv() {
                    receiver.recycle(batch);
                }
            }
        }
    };
    // Warm up: the first-seen set grows to its working size, batches start circulating.
    let now = SystemTime::now();
    run(now);
    // The next window: every id is new to the worker again and goes to the recorder.
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    run(now + Duration::from_hours(1));
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(
        after - before,
        0,
        "{} allocations for 200,000 requests",
        after - before
    );
}
