//! EmbeddingBag over a compact table against the dense f32 bag, in looked-up rows per second.
//!
//! `cargo bench -p data-sparsifier --bench compact` (about a minute). One 1M × 64 f32 table of
//! N(0, 1) values, sparsified by DataNorm at level 0.8 with (1, 4) blocks; 2048 bags of 20
//! Zipf-distributed indices (exponent 1.05, the hot rows scattered over the table), sum mode:
//!
//! * `dense_f32`: `EmbeddingBag` over the squashed dense table (what `sparsify run` writes);
//! * `compact_f32`, `compact_int8`, `compact_int4`: `CompactEmbeddingBag` over the compact
//!   table, read zero-copy from the file `sparsify run --format compact [--quantize]` writes;
//! * `compact_f32_in_memory`, `compact_int8_in_memory`: the same tables as encoded, on the heap
//!   (to tell the file map's cost from the format's).
//!
//! Every case runs in the same process on the same indices, so the ratios of their rows/s are
//! side by side. `COMPACT_BENCH_ROWS=65536` runs a smaller table.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use data_sparsifier::compact::{
    CompactEmbeddingBag, CompactFile, CompactOptions, CompactSink, Encoding,
};
use data_sparsifier::embedding::{BagMode, Bags};
use data_sparsifier::format::safetensors::SafetensorsSource;
use data_sparsifier::format::{CommitMode, FileDType, TensorInfo, TensorSink};
use data_sparsifier::norm::{compute_mask, DataNormConfig};
use data_sparsifier::random::{randn, Rng};
use data_sparsifier::{DType, EmbeddingBag, Mask};

const BAGS: usize = 2048;
const BAG: usize = 20;

/// `n` Zipf(1.05) indices over `rows` rows: rank k with probability ∝ 1 / k^1.05 (inverse CDF),
/// rank k mapped to row (k · a large odd number) mod rows, so hot rows are spread out.
fn zipf_indices(rows: usize, n: usize, seed: u64) -> Vec<i64> {
    let mut cdf = Vec::with_capacity(rows);
    let mut acc = 0.0f64;
    for k in 1..=rows {
        acc += 1.0 / (k as f64).powf(1.05);
        cdf.push(acc);
    }
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let u = rng.uniform() * acc;
            let k = cdf.partition_point(|&c| c < u).min(rows - 1);
            ((k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15 | 1) % rows as u64) as i64
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let rows: usize = std::env::var("COMPACT_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 20);
    let cols = 64;
    let table = randn([rows, cols], DType::F32, 3);
    let config = DataNormConfig {
        sparsity_level: 0.8,
        sparse_block_shape: (1, 4),
        ..Default::default()
    };
    let mut mask = Mask::ones([rows, cols]);
    compute_mask("emb", table.view(), &config, &mut mask).unwrap();
    let mut dense = table.clone();
    dense.apply_mask(&mask).unwrap();
    let indices = zipf_indices(rows, BAGS * BAG, 11);
    let bags = Bags::Fixed { bag_size: BAG };

    let dir = tempfile::tempdir().unwrap();
    let infos = [TensorInfo::new("emb", FileDType::F32, [rows, cols])];
    let sources: Vec<(Encoding, SafetensorsSource)> =
        [Encoding::F32, Encoding::Int8, Encoding::Int4]
            .into_iter()
            .map(|enc| {
                let path = dir.path().join(format!("{enc}.safetensors"));
                let opts = CompactOptions {
                    encoding: Some(enc),
                    ..Default::default()
                };
                let mut sink: Box<dyn TensorSink> =
                    Box::new(CompactSink::create(&path, &infos, None, opts).unwrap());
                sink.write_masked("emb", table.view(), &mask).unwrap();
                sink.finish()
                    .unwrap()
                    .commit(CommitMode::NoClobber)
                    .unwrap();
                // SAFETY: the file is this benchmark's own, in its temp dir, and nothing changes it.
                (enc, unsafe { SafetensorsSource::open(&path) }.unwrap())
            })
            .collect();

    let mut g = c.benchmark_group("embedding_bag_1Mx64_level0.8");
    g.throughput(Throughput::Elements((BAGS * BAG) as u64));
    g.sample_size(30)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    let dense_bag = EmbeddingBag::from_weight(dense, BagMode::Sum).unwrap();
    g.bench_function("dense_f32", |b| {
        b.iter(|| dense_bag.forward(&indices, bags, None).unwrap())
    });
    // The same tables encoded in memory (heap pages), to tell the file map's cost from the format's.
    for enc in [Encoding::F32, Encoding::Int8] {
        let opts = CompactOptions {
            encoding: Some(enc),
            ..Default::default()
        };
        let t = data_sparsifier::compact::CompactTable::encode(table.view(), &mask, &opts).unwrap();
        let bag = CompactEmbeddingBag::new(&t, BagMode::Sum, None).unwrap();
        g.bench_function(format!("compact_{enc}_in_memory"), |b| {
            b.iter(|| bag.forward(&indices, bags, None).unwrap())
        });
    }
    for (enc, src) in &sources {
        let file = CompactFile::read(src, "bench").unwrap();
        let t = file.table("emb").unwrap();
        assert!(t.is_zero_copy());
        let bag = CompactEmbeddingBag::new(t, BagMode::Sum, None).unwrap();
        g.bench_function(format!("compact_{enc}"), |b| {
            b.iter(|| bag.forward(&indices, bags, None).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
