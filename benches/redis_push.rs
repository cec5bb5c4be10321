//! The recorder's Redis path: pipelined SADD batches of random ids into a real local
//! redis-server (started here on a free port), as ids per second.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use verve::metrics::Metrics;
use verve::redis::RedisHealth;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> (Server, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    (Server(child), port)
}

fn push(c: &mut Criterion) {
    let (_server, port) = redis_server();
    let mut group = c.benchmark_group("redis");
    for (ids_per_round, shards) in [(10_000usize, 1u32), (10_000, 4), (1_000, 1)] {
        let mut store = RedisStore::new(
            &format!("redis://127.0.0.1:{port}"),
            "bench".into(),
            shards,
            Duration::from_secs(600),
            Duration::from_secs(3),
            Arc::new(RedisHealth::default()),
            Arc::new(Metrics::new(1)),
        )
        .unwrap();
        assert!(store.ensure_connected());
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut window = 0u64;
        group.throughput(Throughput::Elements(ids_per_round as u64));
        group.bench_function(
            format!("push {ids_per_round} random ids per round, {shards} shard(s)"),
            |b| {
                b.iter(|| {
                    let ids = (0..ids_per_round)
                        .map(|_| {
                            state ^= state << 13;
                            state ^= state >> 7;
                            state ^= state << 17;
                            state as i64
                        })
                        .collect();
                    // A new key now and then keeps the sets at a realistic size.
                    window += 1;
                    let op = PushOp::Ids {
                        window: format!("bench-{}", window / 100),
                        ids,
                    };
                    store.push(&[op]).expect("redis took the ids");
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, push);
criterion_main!(benches);
