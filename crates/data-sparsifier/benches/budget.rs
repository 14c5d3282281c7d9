//! The global sparsity budget against per-tensor DataNorm on the same tables, in one run.
//!
//! `cargo bench -p data-sparsifier --bench budget`. Four embedding-like tables of different scales
//! and dtypes (f32 1M × 64, bf16 1M × 64, f32 256K × 128, f16 512K × 32: 704 MiB of f32-equivalent
//! cells, 448 MiB of bytes), `(1, 4)` blocks, level 0.5:
//!
//! * `datanorm_per_tensor`: `compute_mask` on each table at level 0.5 (what a per-tensor run does);
//! * `budget_select`: survey + tally + resolve (no masks), mean normalization;
//! * `budget_select_and_masks`: the whole global budget, masks included (one mask at a time);
//! * `read`: a plain parallel sum of every table's bytes (the physical limit).
//!
//! The ratios `budget_select_and_masks / datanorm_per_tensor` and `/ read` are the figures to
//! quote; `BUDGET_BENCH_SIZES=small` divides every table by 4.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use data_sparsifier::norm::budget::{BudgetTensor, GlobalBudget};
use data_sparsifier::norm::{compute_mask, DataNormConfig};
use data_sparsifier::random::randn;
use data_sparsifier::{DType, Mask, Tensor};
use rayon::prelude::*;

fn tables() -> Vec<(String, Tensor)> {
    let div = match std::env::var("BUDGET_BENCH_SIZES").as_deref() {
        Ok("small") => 4,
        _ => 1,
    };
    let scaled = |t: Tensor, s: f64| {
        let v: Vec<f64> = t.to_f64_vec().par_iter().map(|x| x * s).collect();
        Tensor::from_f64s(&v, t.dtype(), t.shape().to_vec()).unwrap()
    };
    vec![
        ("emb.a".into(), randn([(1 << 20) / div, 64], DType::F32, 1)),
        (
            "emb.b".into(),
            scaled(randn([(1 << 20) / div, 64], DType::BF16, 2), 0.01),
        ),
        (
            "emb.c".into(),
            scaled(randn([(1 << 18) / div, 128], DType::F32, 3), 5.0),
        ),
        ("emb.d".into(), randn([(1 << 19) / div, 32], DType::F16, 4)),
    ]
}

fn bench(c: &mut Criterion) {
    let tables = tables();
    let cfg = DataNormConfig::default();
    let bytes: usize = tables.iter().map(|(_, t)| t.size_in_bytes()).sum();
    let mut masks: Vec<Mask> = tables
        .iter()
        .map(|(_, t)| Mask::ones(t.shape().to_vec()))
        .collect();
    let views: Vec<BudgetTensor<'_>> = tables
        .iter()
        .map(|(n, t)| BudgetTensor::new(n, t.view(), &cfg))
        .collect();
    let budget = GlobalBudget::new(0.5).unwrap();
    let mut g = c.benchmark_group("global_budget");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("read", |b| {
        b.iter(|| {
            tables
                .iter()
                .map(|(_, t)| {
                    t.as_bytes()
                        .par_chunks(1 << 16)
                        .map(|c| c.iter().map(|&x| x as u64).sum::<u64>())
                        .sum::<u64>()
                })
                .sum::<u64>()
        })
    });
    g.bench_function("datanorm_per_tensor", |b| {
        b.iter(|| {
            for ((n, t), m) in tables.iter().zip(&mut masks) {
                compute_mask(n, t.view(), &cfg, m).unwrap();
            }
        })
    });
    g.bench_function("budget_select", |b| {
        b.iter(|| budget.select(&views).unwrap())
    });
    g.bench_function("budget_select_and_masks", |b| {
        b.iter(|| {
            let sel = budget.select(&views).unwrap();
            for ((n, t), m) in tables.iter().zip(&mut masks) {
                sel.mask(n, t.view(), &cfg, m).unwrap();
            }
            sel
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
