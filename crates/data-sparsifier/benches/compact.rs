//! EmbeddingBag over a compact table against the dense f32 bag, in looked-up rows per second.
//!
//! `cargo bench -p data-sparsifier --bench compact` (about two minutes). One 1M × 64 f32 table
//! of N(0, 1) values, sparsified by DataNorm at level 0.8 with (1, 4) blocks; 2048 bags of 20
//! Zipf-distributed indices (exponent 1.05, the hot rows scattered over the table), sum mode:
//!
//! * `dense_f32`: `EmbeddingBag` over the squashed dense table (what `sparsify run` writes);
//! * `compact_f32`, `compact_int8`, `compact_int4`, `compact_int2`: `CompactEmbeddingBag` over
//!   the compact table, read zero-copy from the file `sparsify run --format compact
//!   [--quantize]` writes;
//! * `*_huge_pages`: the same tables copied into memory backed by transparent huge pages
//!   (`Tensor::with_huge_pages`, `CompactTable::with_huge_pages`): a file map's page-cache
//!   pages and a plain heap copy are 4 KiB, so each cold row also misses the TLB.
//!
//! Criterion measures each case on its own, one after the other. Then a side-by-side table
//! times one forward of every case in turn, round after round (`COMPACT_BENCH_ROUNDS`, 200), and
//! gives each case's median and its ratio to the dense bag: the figure to quote, since this
//! machine's speed drifts between criterion's cases. `COMPACT_BENCH_ROWS=65536` runs a smaller
//! table; `COMPACT_BENCH_SKIP_SIDE_BY_SIDE=1` skips the table.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use data_sparsifier::compact::{
    CompactEmbeddingBag, CompactFile, CompactOptions, CompactSink, CompactTable, Encoding,
};
use data_sparsifier::embedding::{BagMode, Bags};
use data_sparsifier::format::safetensors::SafetensorsSource;
use data_sparsifier::format::{CommitMode, FileDType, TensorInfo, TensorSink};
use data_sparsifier::norm::{compute_mask, DataNormConfig};
use data_sparsifier::random::{randn, Rng};
use data_sparsifier::{DType, EmbeddingBag, Mask, Tensor};

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

/// The tables and indices every case reads.
struct Setup {
    dense: EmbeddingBag,
    dense_huge: EmbeddingBag,
    indices: Vec<i64>,
    files: Vec<(Encoding, SafetensorsSource)>,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
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

    let dir = tempfile::tempdir().unwrap();
    let infos = [TensorInfo::new("emb", FileDType::F32, [rows, cols])];
    let files = ENCODINGS
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
    Setup {
        dense_huge: EmbeddingBag::from_weight(dense.with_huge_pages(), BagMode::Sum).unwrap(),
        dense: EmbeddingBag::from_weight(dense, BagMode::Sum).unwrap(),
        indices,
        files,
        _dir: dir,
    }
}

const ENCODINGS: [Encoding; 4] = [
    Encoding::F32,
    Encoding::Int8,
    Encoding::Int4,
    Encoding::Int2,
];

/// Every case's forward, by name: the dense bag first.
fn cases<'s>(
    setup: &'s Setup,
    files: &'s [(Encoding, CompactFile<'s, SafetensorsSource>)],
    huge: &'s [CompactTable<'static>],
) -> Vec<(String, Box<dyn Fn() -> Tensor + 's>)> {
    let bags = Bags::Fixed { bag_size: BAG };
    let idx = &setup.indices;
    let mut out: Vec<(String, Box<dyn Fn() -> Tensor + 's>)> = vec![
        (
            "dense_f32".into(),
            Box::new(move || setup.dense.forward(idx, bags, None).unwrap()),
        ),
        (
            "dense_f32_huge_pages".into(),
            Box::new(move || setup.dense_huge.forward(idx, bags, None).unwrap()),
        ),
    ];
    for (enc, file) in files {
        let t = file.table("emb").unwrap();
        assert!(t.is_zero_copy());
        let bag = CompactEmbeddingBag::new(t, BagMode::Sum, None).unwrap();
        out.push((
            format!("compact_{enc}"),
            Box::new(move || bag.forward(idx, bags, None).unwrap()),
        ));
    }
    for t in huge {
        let bag = CompactEmbeddingBag::new(t, BagMode::Sum, None).unwrap();
        out.push((
            format!("compact_{}_huge_pages", t.info().encoding),
            Box::new(move || bag.forward(idx, bags, None).unwrap()),
        ));
    }
    out
}

/// The compact files, read, and their tables copied into huge pages.
fn tables(
    setup: &Setup,
) -> (
    Vec<(Encoding, CompactFile<'_, SafetensorsSource>)>,
    Vec<CompactTable<'static>>,
) {
    let files: Vec<_> = setup
        .files
        .iter()
        .map(|(enc, src)| (*enc, CompactFile::read(src, "bench").unwrap()))
        .collect();
    let huge = files
        .iter()
        .map(|(_, f)| f.table("emb").unwrap().with_huge_pages())
        .collect();
    (files, huge)
}

fn bench(c: &mut Criterion, setup: &Setup) {
    let (files, huge) = tables(setup);
    let mut g = c.benchmark_group("embedding_bag_1Mx64_level0.8");
    g.throughput(Throughput::Elements((BAGS * BAG) as u64));
    g.sample_size(30)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for (name, f) in cases(setup, &files, &huge) {
        g.bench_function(name, |b| b.iter(&f));
    }
    g.finish();
}

/// The cases measured in turn, round after round, so that every case sees the same machine
/// (this one's speed drifts by 2x from minute to minute): each round times one forward of every
/// case; the table gives each case's median rows/s and its ratio to the dense bag's.
fn side_by_side(setup: &Setup) {
    let rounds: usize = std::env::var("COMPACT_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let (files, huge) = tables(setup);
    let cases = cases(setup, &files, &huge);
    let mut times = vec![Vec::with_capacity(rounds); cases.len()];
    for (_, f) in &cases {
        std::hint::black_box(f()); // warm up: page in the tables
    }
    for _ in 0..rounds {
        for ((_, f), t) in cases.iter().zip(&mut times) {
            let start = Instant::now();
            std::hint::black_box(f());
            t.push(start.elapsed().as_secs_f64());
        }
    }
    let rows = (BAGS * BAG) as f64;
    let median = |t: &mut Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let medians: Vec<f64> = times.iter_mut().map(median).collect();
    println!("\nside by side, {rounds} interleaved rounds, median (one forward of {BAGS} bags of {BAG}):");
    println!("{:<26} {:>12} {:>14}", "case", "Mrows/s", "ratio to dense");
    for ((name, _), m) in cases.iter().zip(&medians) {
        println!(
            "{name:<26} {:>12.2} {:>14.3}",
            rows / m / 1e6,
            medians[0] / m
        );
    }
}

fn main() {
    let setup = setup();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &setup);
    c.final_summary();
    if std::env::var_os("COMPACT_BENCH_SKIP_SIDE_BY_SIDE").is_none() {
        side_by_side(&setup);
    }
}
