//! Times `EmbeddingBag` (sum, fixed bags) over a dense table and over its compact forms, on
//! indices from a file, for `scripts/lookup_speed.py` (which puts PyTorch's bags on the same
//! table and indices beside these figures).
//!
//! ```text
//! cargo run --release -p data-sparsifier --example lookup_speed -- DENSE INDICES BAG ROUNDS [COMPACT...]
//! ```
//!
//! * `DENSE`: a safetensors file whose tensor `emb` is the (squashed) dense table;
//! * `INDICES`: little-endian int64 indices (numpy's `tofile`), a whole number of bags of `BAG`;
//! * `COMPACT`: files `sparsify run --format compact [--quantize]` wrote, each with a table `emb`.
//!
//! Every case is timed once per round, in turn, for `ROUNDS` rounds; one JSON line per case
//! gives its median seconds per forward and looked-up rows per second. Each table is timed with
//! `forward` (a new output tensor per call, as PyTorch's ops make one) and with `forward_into`
//! (`*_into`: the previous output reused, an inference loop's steady state).

use std::cell::RefCell;
use std::time::Instant;

use data_sparsifier::compact::{CompactEmbeddingBag, CompactFile};
use data_sparsifier::embedding::{BagMode, Bags};
use data_sparsifier::format::safetensors::SafetensorsSource;
use data_sparsifier::format::TensorSource;
use data_sparsifier::{DType, EmbeddingBag, Tensor};

type Forward<'a> = Box<dyn Fn() -> Tensor + 'a>;

/// A dense or a compact bag.
enum Lookup<'t> {
    Dense(&'t EmbeddingBag),
    Compact(CompactEmbeddingBag<'t, 't>),
}

impl Lookup<'_> {
    fn forward(&self, indices: &[i64], bags: Bags<'_>) -> Tensor {
        match self {
            Lookup::Dense(b) => b.forward(indices, bags, None),
            Lookup::Compact(b) => b.forward(indices, bags, None),
        }
        .expect("forward")
    }
    fn forward_into(&self, indices: &[i64], bags: Bags<'_>, out: &mut Tensor) {
        match self {
            Lookup::Dense(b) => b.forward_into(indices, bags, None, out),
            Lookup::Compact(b) => b.forward_into(indices, bags, None, out),
        }
        .expect("forward")
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dense, indices, bag, rounds, compact @ ..] = &args[..] else {
        return Err("usage: lookup_speed DENSE INDICES BAG ROUNDS [COMPACT...]".into());
    };
    let bag: usize = bag.parse()?;
    let rounds: usize = rounds.parse()?;
    let bytes = std::fs::read(indices)?;
    let indices: Vec<i64> = bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    let bags = Bags::Fixed { bag_size: bag };
    let indices = &indices[..];

    let src = SafetensorsSource::read(dense)?;
    let at = src
        .tensors()
        .iter()
        .position(|t| t.name == "emb")
        .ok_or("DENSE has no tensor emb")?;
    let shape = src.tensors()[at].shape.clone();
    let table = src.data(at)?.view(&shape)?.to_tensor();
    let dense_huge = EmbeddingBag::from_weight(table.with_huge_pages(), BagMode::Sum)?;
    let dense_bag = EmbeddingBag::from_weight(table, BagMode::Sum)?;

    let sources: Vec<(String, SafetensorsSource)> = compact
        .iter()
        .map(|p| Ok((p.clone(), SafetensorsSource::read(p)?)))
        .collect::<Result<_, data_sparsifier::Error>>()?;
    let files: Vec<(String, CompactFile<'_, SafetensorsSource>)> = sources
        .iter()
        .map(|(p, s)| Ok((p.clone(), CompactFile::read(s, p)?)))
        .collect::<Result<_, data_sparsifier::Error>>()?;
    // Each table as read (the dense one a heap copy, the compact ones mapped from their files)
    // and copied into huge pages (`*_huge_pages`: `with_huge_pages`, as numpy, and so the
    // PyTorch side here, backs large arrays); each with `forward` (a new output per call, as
    // PyTorch's ops make one) and `forward_into` (`*_into`: the previous output reused).
    let huge: Vec<_> = files
        .iter()
        .map(|(_, f)| f.table("emb").map(|t| t.with_huge_pages()))
        .collect::<Option<_>>()
        .ok_or("a COMPACT file has no table emb")?;
    let mut bags_by_name: Vec<(String, Lookup<'_>)> = vec![
        ("dense_f32".into(), Lookup::Dense(&dense_bag)),
        ("dense_f32_huge_pages".into(), Lookup::Dense(&dense_huge)),
    ];
    for (_, file) in &files {
        let t = file.table("emb").ok_or("a COMPACT file has no table emb")?;
        let name = format!("compact_{}", t.info().encoding);
        bags_by_name.push((
            name,
            Lookup::Compact(CompactEmbeddingBag::new(t, BagMode::Sum, None)?),
        ));
    }
    for t in &huge {
        let name = format!("compact_{}_huge_pages", t.info().encoding);
        bags_by_name.push((
            name,
            Lookup::Compact(CompactEmbeddingBag::new(t, BagMode::Sum, None)?),
        ));
    }
    let mut cases: Vec<(String, Forward<'_>)> = Vec::new();
    for (name, lookup) in &bags_by_name {
        cases.push((
            name.clone(),
            Box::new(move || lookup.forward(indices, bags)),
        ));
        let out = RefCell::new(Tensor::zeros(DType::F32, [0]));
        cases.push((
            format!("{name}_into"),
            Box::new(move || {
                lookup.forward_into(indices, bags, &mut out.borrow_mut());
                Tensor::zeros(DType::F32, [0])
            }),
        ));
    }
    for (_, f) in &cases {
        std::hint::black_box(f());
    }
    let mut times = vec![Vec::with_capacity(rounds); cases.len()];
    for _ in 0..rounds {
        for ((_, f), t) in cases.iter().zip(&mut times) {
            let start = Instant::now();
            std::hint::black_box(f());
            t.push(start.elapsed().as_secs_f64());
        }
    }
    for ((name, _), mut t) in cases.iter().zip(times) {
        t.sort_by(f64::total_cmp);
        let median = t[t.len() / 2];
        println!(
            "{{\"case\": \"{name}\", \"seconds\": {median:.9}, \"rows_per_s\": {:.1}}}",
            indices.len() as f64 / median
        );
    }
    Ok(())
}
