//! Criterion micro-benchmarks of the hot pieces (`cargo bench --bench hot_paths`):
//! the per-record state update, the channel hand-off of a record batch, the
//! synchronous snapshot phase at K = 1M changed entries, and the
//! asynchronous phase's RocksDB write of 500k changed entries.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use cutpoint_core::{Key, Record};
use cutpoint_runtime::channel::{Message, BATCH_SIZE, CHANNEL_CAPACITY};
use cutpoint_runtime::source::generator_app_id;
use cutpoint_state::{RocksStore, StateTable};

const KEYS: u64 = 1_000_000;

fn state_update(c: &mut Criterion) {
    let mut table = StateTable::new();
    for k in 0..KEYS {
        table.add(Key::Int(k as i64), 1);
    }
    let keys: Vec<i64> = (0..100_000)
        .map(|i| generator_app_id(42, KEYS, i) as i64)
        .collect();
    let mut g = c.benchmark_group("state_table");
    g.throughput(Throughput::Elements(keys.len() as u64));
    g.bench_function("add_1m_keys_random", |b| {
        b.iter(|| {
            for k in &keys {
                black_box(table.add(Key::Int(*k), 1));
            }
        })
    });
    g.finish();
}

fn channel_handoff(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel");
    g.throughput(Throughput::Elements(BATCH_SIZE as u64 * 100));
    g.bench_function("batch_handoff_100_batches", |b| {
        let (tx, rx) = crossbeam_channel::bounded::<Message>(CHANNEL_CAPACITY);
        let consumer = std::thread::spawn(move || {
            let mut n = 0u64;
            while let Ok(m) = rx.recv() {
                if let Message::Records(r) = m {
                    n += r.len() as u64;
                }
            }
            n
        });
        let batch: Vec<Record> = (0..BATCH_SIZE as i64)
            .map(|i| Record::int(Key::Int(i), 1))
            .collect();
        b.iter(|| {
            for _ in 0..100 {
                tx.send(Message::Records(batch.clone())).unwrap();
            }
        });
        drop(tx);
        black_box(consumer.join().unwrap());
    });
    g.finish();
}

fn sync_phase(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot");
    g.bench_function("sync_phase_freeze_1m_changed", |b| {
        b.iter_batched(
            || {
                let mut t = StateTable::new();
                for k in 0..KEYS {
                    t.add(Key::Int(k as i64), 1);
                }
                t
            },
            // Return both so dropping 1M entries is not timed.
            |mut t| {
                let frozen = t.freeze();
                (t, frozen)
            },
            BatchSize::LargeInput,
        )
    });
    g.sample_size(10);
    g.bench_function("async_apply_500k_changed", |b| {
        let dir = tempfile::tempdir().unwrap();
        let mut store =
            RocksStore::open(&dir.path().join("db"), &dir.path().join("s"), 128).unwrap();
        b.iter_batched(
            || {
                let mut t = StateTable::new();
                for k in 0..KEYS / 2 {
                    t.add(Key::Int((k * 2) as i64), 1);
                }
                t.freeze()
            },
            |delta| store.apply(delta).unwrap(),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, state_update, channel_handoff, sync_phase);
criterion_main!(benches);
