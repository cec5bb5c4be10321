//! The two ways a worker could put a round's record in the write-ahead log, side by side:
//! a copy into the segment mapped `MAP_SHARED` (what verve ships: no system call), and a
//! `pwrite` of the encoded record per round (one system call each; through `io_uring` it would
//! be one submission each). Records of 1 id (one request per read, c64) and of 16 ids (16
//! requests pipelined per read), into files allocated ahead on the disk of `target/`.
//!
//!   cargo bench --bench `wal_append`
//!   cargo test --benches (scripts/test.sh)    each once, as a smoke test

use std::fs::OpenOptions;
use std::hint::black_box;
use std::os::unix::fs::FileExt;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use verve::wal::record;
use verve::wal::segment::Segment;

/// Records written before the benchmark starts again at the front of a file: a segment of
/// this many rounds stays within its allocation.
const ROUNDS_PER_FILE: usize = 100_000;

fn appends(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut group = c.benchmark_group("wal_append");
    for ids_per_round in [1usize, 16] {
        let ids: Vec<i64> = (0..ids_per_round as i64).map(|i| i * 7_919 + 1).collect();
        let len = record::record_len(ids_per_round);
        group.throughput(Throughput::Elements(1));

        let mut fresh = 0;
        let mut new_segment = || {
            fresh += 1;
            let path = dir
                .path()
                .join(format!("mapped-{ids_per_round}-{fresh}.wal"));
            let mut segment = Segment::create(&path, 1).unwrap();
            segment.reserve(len * ROUNDS_PER_FILE).unwrap();
            segment
        };
        let mut segment = new_segment();
        let mut written = 0;
        group.bench_function(format!("mapped_copy/{ids_per_round}_ids"), |b| {
            b.iter(|| {
                if written == ROUNDS_PER_FILE {
                    segment = new_segment();
                    written = 0;
                }
                segment.append(black_box(&ids));
                written += 1;
            });
        });

        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(dir.path().join(format!("written-{ids_per_round}.wal")))
            .unwrap();
        file.set_len((len * ROUNDS_PER_FILE) as u64).unwrap();
        let mut buffer = vec![0; len];
        let mut at = 0;
        group.bench_function(format!("pwrite/{ids_per_round}_ids"), |b| {
            b.iter(|| {
                record::encode(black_box(&ids), &mut buffer);
                file.write_all_at(&buffer, (at * len) as u64).unwrap();
                at = (at + 1) % ROUNDS_PER_FILE;
            });
        });
    }
    group.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
