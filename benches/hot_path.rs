//! Micro-benchmarks of the per-request path, without sockets: request parsing, the query,
//! the first-seen set, whole request handling (pipelined), and the recorder's batch path.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use clap::Parser;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;
use verve::config::Config;
use verve::health::Readiness;
use verve::http::query::parse_accept_query;
use verve::http::request::{Parsed, parse};
use verve::ingest::window_bound::WindowIdCounts;
use verve::ingest::{self, Ingest, MAX_BATCH};
use verve::metrics::{Metrics, WorkerMetrics};
use verve::recorder::Recorder;
use verve::sinks::callbacks::CallbackPool;
use verve::window::WindowClock;
use verve::worker::batch::IngestBuffer;
use verve::worker::first_seen::FirstSeen;
use verve::worker::handler::Handler;
use verve::worker::router::Router;

/// What wrk sends.
const REQUEST: &[u8] =
    b"GET /api/verve/accept?id=7345610028 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";

/// The head of what a client library sends, without its blank line: headers that match
/// none the parser looks for are compared with every name it knows, the trace context's too.
macro_rules! client_head {
    () => {
        "GET /api/verve/accept?id=7345610028 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
         User-Agent: loadgen/1.4\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\n\
         X-Request-Id: 5f0c6a2e-93b1-4d7e-a1f4-2c8e9d0b7a31\r\n"
    };
}

/// The parse cases: name, request, whether it carries a trace context for the callback.
const HEADS: [(&str, &[u8], bool); 3] = [
    ("request head", REQUEST, false),
    (
        "request head, five headers",
        concat!(client_head!(), "\r\n").as_bytes(),
        false,
    ),
    (
        "request head, five headers and trace context",
        concat!(
            client_head!(),
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n",
            "tracestate: congo=t61rcWkgMzE\r\n\r\n"
        )
        .as_bytes(),
        true,
    ),
];

/// A cheap deterministic stream of ids.
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> i64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 as i64
    }
}

fn parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    for (name, request, traced) in HEADS {
        // Each request is measured on the path that accepts it, not on a refusal.
        assert!(
            matches!(parse(request), Parsed::Complete { head, .. } if head.trace.is_some() == traced)
        );
        g.bench_function(name, |b| b.iter(|| parse(black_box(request))));
    }
    let mut scratch = Vec::new();
    g.bench_function("accept query", |b| {
        b.iter(|| parse_accept_query(black_box(b"id=7345610028"), &mut scratch));
    });
    g.bench_function("accept query, percent-encoded endpoint", |b| {
        b.iter(|| {
            parse_accept_query(
                black_box(b"id=7345610028&endpoint=http%3A%2F%2Fexample.com%2Fhook%3Fa%3D1"),
                &mut scratch,
            )
        });
    });
    g.finish();
}

fn first_seen(c: &mut Criterion) {
    const N: u64 = 1000;
    let mut g = c.benchmark_group("first-seen set");
    g.throughput(Throughput::Elements(N));
    let mut set = FirstSeen::default();
    let mut ids = Ids(0x9E37_79B9_7F4A_7C15);
    let mut rounds = 0u64;
    g.bench_function("insert new ids", |b| {
        b.iter(|| {
            // A fresh window every million ids keeps the set at a realistic size.
            rounds += 1;
            for _ in 0..N {
                black_box(set.insert(rounds / 1000, ids.next()));
            }
        });
    });
    let mut repeat = FirstSeen::default();
    g.bench_function("insert repeated ids", |b| {
        b.iter(|| {
            for id in 0..N as i64 {
                black_box(repeat.insert(0, id));
            }
        });
    });
    g.finish();
}

fn handling(c: &mut Criterion) {
    const DEPTH: usize = 16;
    let mut g = c.benchmark_group("handle without sockets");
    g.throughput(Throughput::Elements(DEPTH as u64));
    let metrics = WorkerMetrics::single();
    let (mut senders, receiver) =
        ingest::channel(1, 1024, &Arc::new(WindowIdCounts::new(u64::MAX)));
    let buffer = IngestBuffer::new(senders.pop().unwrap(), Arc::clone(&metrics.metrics));
    let mut handler = Handler::new(Router::new(
        WindowClock::new(60),
        buffer,
        Readiness::default(),
        metrics,
    ));
    let mut ids = Ids(12345);
    let mut out = Vec::with_capacity(64 * 1024);
    let now = SystemTime::now();
    let mut pipelined = |same_id: bool| {
        let mut input = Vec::new();
        for _ in 0..DEPTH {
            let id = if same_id { 42 } else { ids.next() };
            input.extend_from_slice(
                format!("GET /api/verve/accept?id={id} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes(),
            );
        }
        input
    };
    let random: Vec<Vec<u8>> = (0..4096).map(|_| pipelined(false)).collect();
    let same = pipelined(true);
    let mut i = 0;
    let mut run = |handler: &mut Handler, input: &[u8]| {
        out.clear();
        black_box(handler.process(input, now, &mut out));
        if !handler.ingest().is_empty() {
            handler.ingest().flush();
        }
        while let Ok(batch) = receiver.try_recv() {
            receiver.recycle(batch);
        }
    };
    g.bench_function("16 pipelined, random ids", |b| {
        b.iter(|| {
            i = (i + 1) % random.len();
            run(&mut handler, &random[i]);
        });
    });
    g.bench_function("16 pipelined, same id", |b| {
        b.iter(|| run(&mut handler, &same));
    });
    g.finish();
}

fn recorder_batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("recorder");
    g.throughput(Throughput::Elements(MAX_BATCH as u64));
    let config = Config::parse_from(["verve"]);
    let metrics = Arc::new(Metrics::new(1));
    let (queue, _pool) = CallbackPool::start(&config.settings().callbacks, &metrics).unwrap();
    let (_senders, receiver) = ingest::channel(1, 16, &Arc::new(WindowIdCounts::new(u64::MAX)));
    let mut recorder = Recorder::new(
        WindowClock::new(60),
        Duration::from_secs(1),
        receiver,
        queue,
        metrics,
        SystemTime::now(),
    );
    let window = WindowClock::new(60).window_of(SystemTime::now());
    let mut ids = Ids(777);
    g.bench_function("apply a batch of new ids", |b| {
        b.iter_batched(
            || {
                (0..MAX_BATCH)
                    .map(|_| Ingest::Id {
                        window,
                        id: ids.next(),
                    })
                    .collect::<Vec<_>>()
            },
            |batch| recorder.apply(batch),
            BatchSize::SmallInput,
        );
    });
    g.finish();
}

criterion_group!(benches, parsing, first_seen, handling, recorder_batch);
criterion_main!(benches);
