//! Size of a compact table against the dense one, uncompressed and after deflate (zip's
//! compression), for the f32, int8, int4 and int2 encodings.
//!
//! ```text
//! cargo run --release -p data-sparsifier --example compact_sizes            # 1M x 64 f32
//! cargo run --release -p data-sparsifier --example compact_sizes -- 65536   # fewer rows (CI)
//! ```
//!
//! The table is N(0, 1) f32, sparsified by DataNorm at level 0.8 with (1, 4) blocks (L1), and
//! written through the library's sinks: the dense file as `sparsify run` writes it
//! (`SquashedSink`), the compact ones as `sparsify run --format compact [--quantize]` does
//! (`CompactSink`). Every ratio is to the dense file's bytes, measured in this one run; the
//! deflated sizes use flate2 at its default level (zip's).

use std::io::Write;
use std::path::Path;

use data_sparsifier::compact::{CompactOptions, CompactSink, Encoding};
use data_sparsifier::format::safetensors::SquashedSink;
use data_sparsifier::format::{CommitMode, FileDType, TensorInfo, TensorSink};
use data_sparsifier::norm::{compute_mask, DataNormConfig};
use data_sparsifier::random::randn;
use data_sparsifier::{DType, Mask};

fn deflated(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&bytes).unwrap();
    z.finish().unwrap().len() as u64
}

fn main() {
    let rows: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("rows: a number"))
        .unwrap_or(1 << 20);
    let cols = 64;
    let table = randn([rows, cols], DType::F32, 7);
    let config = DataNormConfig {
        sparsity_level: 0.8,
        sparse_block_shape: (1, 4),
        ..Default::default()
    };
    let mut mask = Mask::ones([rows, cols]);
    compute_mask("emb", table.view(), &config, &mut mask).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let infos = [TensorInfo::new("emb", FileDType::F32, [rows, cols])];
    let write = |name: &str, sink: Box<dyn TensorSink>| {
        let mut sink = sink;
        sink.write_masked("emb", table.view(), &mask).unwrap();
        sink.finish().unwrap().commit(CommitMode::Replace).unwrap();
        dir.path().join(name)
    };
    let dense = dir.path().join("dense.safetensors");
    let dense = write(
        "dense.safetensors",
        Box::new(SquashedSink::create(&dense, &infos, None).unwrap()),
    );
    let (dense_len, dense_z) = (std::fs::metadata(&dense).unwrap().len(), deflated(&dense));
    println!(
        "{rows} x {cols} f32, DataNorm level 0.8, (1, 4) blocks: {:.1}% of cells kept",
        100.0 * mask.density()
    );
    println!("form          bytes   ratio  deflated  ratio (to the dense file)");
    println!(
        "dense    {dense_len:>10}  1.000x {dense_z:>9}  {:.3}x",
        dense_z as f64 / dense_len as f64
    );
    for enc in [
        Encoding::F32,
        Encoding::Int8,
        Encoding::Int4,
        Encoding::Int2,
    ] {
        let name = format!("{enc}.safetensors");
        let opts = CompactOptions {
            encoding: Some(enc),
            ..Default::default()
        };
        let path = dir.path().join(&name);
        let path = write(
            &name,
            Box::new(CompactSink::create(&path, &infos, None, opts).unwrap()),
        );
        let (len, z) = (std::fs::metadata(&path).unwrap().len(), deflated(&path));
        println!(
            "compact {:<5}{len:>9}  {:.3}x {z:>9}  {:.3}x",
            enc.name(),
            len as f64 / dense_len as f64,
            z as f64 / dense_len as f64
        );
    }
}
