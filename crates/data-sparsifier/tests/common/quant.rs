//! The 200 golden PyTorch `post_training_sparse_quantize` cases of
//! `tests/data/conformance/quant/` (see the README there): loading. Shared by
//! `tests/quant_conformance.rs` (`mod common`) and `examples/quant_error.rs` (`#[path]`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use data_sparsifier::{DataNormConfig, Tensor};
use safetensors::SafeTensors;

use super::golden::config_from_meta;

pub fn quant_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/conformance/quant")
}

/// One table (`emb` or `bag`) of a golden case.
pub struct Table {
    pub weight: Tensor,
    pub mask: Option<Vec<u8>>,
    pub qweight: Vec<u8>,
    pub scales: Vec<f64>,
    pub zero_points: Vec<f64>,
    pub dequant: Vec<f32>,
}

pub struct QuantCase {
    pub file: String,
    pub meta: HashMap<String, String>,
    pub config: DataNormConfig,
    pub sparsify_first: bool,
    pub emb: Table,
    pub bag: Table,
    pub indices: Vec<i64>,
    pub offsets: Vec<i64>,
    pub forward: Vec<f32>,
}

fn le_vec<T: Copy>(bytes: &[u8], size: usize, f: impl Fn(&[u8]) -> T) -> Vec<T> {
    bytes.chunks_exact(size).map(f).collect()
}

pub fn load(path: &Path) -> QuantCase {
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{file}: {e}"));
    let (_, md) = SafeTensors::read_metadata(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
    let meta = md.metadata().clone().expect("metadata");
    let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
    let raw = |n: &str| {
        st.tensor(n)
            .unwrap_or_else(|e| panic!("{file}: {n}: {e}"))
            .data()
            .to_vec()
    };
    let f32s = |n: &str| le_vec(&raw(n), 4, |b| f32::from_le_bytes(b.try_into().unwrap()));
    let f64s = |n: &str| le_vec(&raw(n), 8, |b| f64::from_le_bytes(b.try_into().unwrap()));
    let i64s = |n: &str| le_vec(&raw(n), 8, |b| i64::from_le_bytes(b.try_into().unwrap()));
    let sparsify_first = meta["sparsify_first"] == "true";
    let table = |t: &str| {
        let w = st.tensor(&format!("{t}.weight")).unwrap();
        Table {
            weight: Tensor::from_vec(f32s(&format!("{t}.weight")), w.shape().to_vec()).unwrap(),
            mask: sparsify_first.then(|| raw(&format!("{t}.mask"))),
            qweight: raw(&format!("{t}.qweight")),
            scales: f64s(&format!("{t}.scales")),
            zero_points: f64s(&format!("{t}.zero_points")),
            dequant: f32s(&format!("{t}.dequant")),
        }
    };
    QuantCase {
        config: config_from_meta(&file, &meta),
        sparsify_first,
        emb: table("emb"),
        bag: table("bag"),
        indices: i64s("bag.indices"),
        offsets: i64s("bag.offsets"),
        forward: f32s("bag.forward"),
        meta,
        file,
    }
}

pub fn case_paths() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(quant_dir())
        .expect("quant case directory")
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("quant_") && n.ends_with(".safetensors")
        })
        .collect();
    paths.sort();
    paths
}
