//! DataNorm throughput on embedding-table-sized data, in bytes of table per second.
//!
//! `cargo bench -p data-sparsifier --bench norm` (a few minutes). Tables: 1M × 64 and 4M × 64 f32
//! (256 MiB and 1 GiB), uniform random values (no ties); `NORM_BENCH_SIZES=small` runs only
//! 1M × 64 (and the narrow table).
//!
//! * `step`: one `DataSparsifier::step` (the mask recomputed from scratch), level 0.5:
//!   `(1,4)` whole blocks, `(4,4)` whole blocks, `(1,4)` with 2 zeros per block, `(4,4)` with 4
//!   zeros per block; the same on 1M × 64 bf16 (128 MiB); and, on a narrow 4M × 16 table
//!   (256 MiB, the DLRM embedding width), `(1,4)` whole blocks with L1 and L2;
//! * `squash`: `squash_mask` writing `mask · data` into the table (setup not timed).
//!
//! Each table also gets `read (the limit)`: a plain parallel read of its bytes (rayon, the sum of
//! its 8-byte words), timed in the same run, and the squash group a plain parallel `copy (the
//! limit)`. Divide the baseline's time by a case's time for the ratio to the physical limit that
//! `sparsify bench` prints (this machine's absolute speed varies 2–3× from day to day).

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use data_sparsifier::limits::{parallel_copy, parallel_read};
use data_sparsifier::norm::{DataNormConfig, DataNormPatch, DataNormSparsifier, Norm};
use data_sparsifier::SquashOptions;
use data_sparsifier::{DType, Tensor};
use rayon::prelude::*;

/// A `rows × cols` f32 table of uniform values in (-1, 1), filled in parallel.
fn table(rows: usize, cols: usize, seed: u64) -> Tensor {
    let mut v = vec![0f32; rows * cols];
    v.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut s = seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for x in chunk {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                *x = ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
            }
        });
    Tensor::from_vec(v, [rows, cols]).unwrap()
}

fn sizes() -> Vec<(&'static str, usize)> {
    match std::env::var("NORM_BENCH_SIZES").as_deref() {
        Ok("small") => vec![("1M x 64", 1 << 20)],
        _ => vec![("1M x 64", 1 << 20), ("4M x 64", 4 << 20)],
    }
}

/// Times `step` on table `t` for each config patch of `cases`.
fn step_cases(
    g: &mut BenchmarkGroup<'_, WallTime>,
    size: &str,
    t: Tensor,
    cases: &[(&str, DataNormPatch)],
) {
    g.throughput(Throughput::Bytes(t.size_in_bytes() as u64));
    let bytes = t.as_bytes();
    g.bench_function(BenchmarkId::new("read (the limit)", size), |b| {
        b.iter(|| std::hint::black_box(parallel_read(bytes)))
    });
    let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    sp.add_data("table", t).unwrap();
    for (name, patch) in cases {
        let mut cfg = DataNormConfig::default();
        data_sparsifier::Config::apply(&mut cfg, patch);
        *sp.config_mut("table").unwrap() = cfg;
        g.bench_function(BenchmarkId::new(*name, size), |b| {
            b.iter(|| sp.step().unwrap())
        });
    }
}

fn step(c: &mut Criterion) {
    let mut g = c.benchmark_group("norm_step");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    let cases = [
        ("(1,4) L1 whole blocks", DataNormPatch::new().block(1, 4)),
        ("(4,4) L1 whole blocks", DataNormPatch::new().block(4, 4)),
        (
            "(1,4) L1 zpb=2",
            DataNormPatch::new().block(1, 4).zeros_per_block(2),
        ),
        (
            "(4,4) L1 zpb=4",
            DataNormPatch::new().block(4, 4).zeros_per_block(4),
        ),
    ];
    for (size, rows) in sizes() {
        step_cases(&mut g, size, table(rows, 64, 1), &cases);
    }
    // Half precision (most checkpoints today): throughput in the table's own bytes.
    let half = Tensor::from_f64s(
        &table(1 << 20, 64, 4).to_f64_vec(),
        DType::BF16,
        [1 << 20, 64],
    )
    .unwrap();
    step_cases(&mut g, "1M x 64 bf16", half, &cases);
    // Narrow rows (the DLRM embedding width): as many bytes and blocks as 1M × 64, 4 times the rows.
    let narrow = [
        ("(1,4) L1 whole blocks", DataNormPatch::new().block(1, 4)),
        (
            "(1,4) L2 whole blocks",
            DataNormPatch::new().block(1, 4).norm(Norm::L2),
        ),
    ];
    step_cases(&mut g, "4M x 16", table(4 << 20, 16, 3), &narrow);
    g.finish();
}

fn squash(c: &mut Criterion) {
    let mut g = c.benchmark_group("norm_squash");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for (size, rows) in sizes() {
        let t = table(rows, 64, 2);
        g.throughput(Throughput::Bytes(t.size_in_bytes() as u64));
        let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
        sp.add_data("table", t.clone()).unwrap();
        sp.step().unwrap();
        let mask = sp.get_mask("table").unwrap().clone();
        let src = t.as_bytes();
        let mut dst = vec![0u8; src.len()];
        g.bench_function(BenchmarkId::new("copy (the limit)", size), |b| {
            b.iter(|| parallel_copy(src, std::hint::black_box(&mut dst)))
        });
        g.bench_function(BenchmarkId::new("(1,4) L1 0.5", size), |b| {
            b.iter_batched(
                || {
                    let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
                    sp.add_data("table", t.clone()).unwrap();
                    *sp.get_mask_mut("table").unwrap() = mask.clone();
                    sp
                },
                |mut sp| {
                    sp.squash_mask(None, SquashOptions::default()).unwrap();
                    sp
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, step, squash);
criterion_main!(benches);
