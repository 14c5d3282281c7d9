//! The 300 golden PyTorch `DataNormSparsifier` cases of `tests/data/conformance/data_norm/` (see
//! the README there): loading, and the README's two rules (exact, or tie-equivalent). Shared by
//! `tests/conformance.rs` (`mod common`) and the crate's unit tests (`#[path]`), which reach the
//! crate as `data_sparsifier` either way.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use data_sparsifier::norm::{pruned_block_count, DataNormConfig, Norm};
use data_sparsifier::{DType, Tensor};
use safetensors::SafeTensors;

pub struct Case {
    pub file: String,
    pub data: Tensor,
    pub want: Vec<u8>,
    pub config: DataNormConfig,
    pub exact: bool,
    pub meta: HashMap<String, String>,
}

pub fn case_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/conformance/data_norm")
}

pub fn load(path: &Path) -> Case {
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{file}: {e}"));
    let (_, md) = SafeTensors::read_metadata(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
    let meta = md
        .metadata()
        .clone()
        .unwrap_or_else(|| panic!("{file}: no metadata"));
    let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
    let d = st.tensor("data").unwrap_or_else(|e| panic!("{file}: {e}"));
    let m = st.tensor("mask").unwrap_or_else(|e| panic!("{file}: {e}"));
    assert_eq!(m.dtype(), safetensors::Dtype::U8, "{file}: mask dtype");
    assert_eq!(m.shape(), d.shape(), "{file}: mask shape");
    let dtype: DType = format!("{:?}", d.dtype())
        .parse()
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    let data = Tensor::from_le_bytes(dtype, d.shape().to_vec(), d.data()).unwrap();
    let get = |k: &str| {
        meta.get(k)
            .unwrap_or_else(|| panic!("{file}: metadata key {k} missing"))
            .clone()
    };
    let config = config_from_meta(&file, &meta);
    let exact = match get("exact").as_str() {
        "true" => true,
        "false" => false,
        other => panic!("{file}: exact = {other}"),
    };
    Case {
        file,
        data,
        want: m.data().to_vec(),
        config,
        exact,
        meta,
    }
}

/// The `DataNormConfig` of a golden case's `__metadata__` (`sparsity_level`, `sparse_block_shape`
/// as `"h,w"`, `zeros_per_block`, `norm`): shared by the data_norm and the quant cases.
pub fn config_from_meta(file: &str, meta: &HashMap<String, String>) -> DataNormConfig {
    let get = |k: &str| {
        meta.get(k)
            .unwrap_or_else(|| panic!("{file}: metadata key {k} missing"))
            .clone()
    };
    let block: Vec<usize> = get("sparse_block_shape")
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    DataNormConfig {
        sparsity_level: get("sparsity_level").parse().unwrap(),
        sparse_block_shape: (block[0], block[1]),
        zeros_per_block: Some(get("zeros_per_block").parse().unwrap()),
        norm: get("norm").parse().unwrap(),
        ..Default::default()
    }
}

/// Relative tolerance for comparing scores computed here (in f64) with PyTorch's.
fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-12,
        DType::F32 => 1e-5,
        DType::F16 => 2e-3,
        DType::BF16 => 1.6e-2,
    }
}

fn le(a: f64, b: f64, tol: f64) -> bool {
    a <= b + tol * a.abs().max(b.abs()).max(f64::MIN_POSITIVE)
}

/// The README's tie-equivalence rules. Returns a description of the first violation.
pub fn tie_equivalent(case: &Case, got: &[u8]) -> Result<(), String> {
    let shape = case.data.shape();
    let (h, w) = match shape {
        [] => (1, 1),
        [n] => (1, *n),
        [a, b] => (*a, *b),
        _ => return Err("not 2-D".into()),
    };
    let (bh, bw) = case.config.sparse_block_shape;
    let zpb = case.config.zeros_per_block_effective();
    let x = case.data.to_f64_vec();
    let cell = |v: f64| match case.config.norm {
        Norm::L1 => v.abs(),
        Norm::L2 => v * v,
    };
    let tol = tolerance(case.data.dtype());
    let (nbr, nbc) = (h.div_ceil(bh), w.div_ceil(bw));
    let k = pruned_block_count(case.config.sparsity_level, nbr * nbc);
    let mut pruned = Vec::new();
    let mut kept = Vec::new();
    for br in 0..nbr {
        for bc in 0..nbc {
            let cells: Vec<usize> = (br * bh..((br + 1) * bh).min(h))
                .flat_map(|r| (bc * bw..((bc + 1) * bw).min(w)).map(move |c| r * w + c))
                .collect();
            let score = cells.iter().map(|&i| cell(x[i])).sum::<f64>() / cells.len() as f64;
            let zeros: Vec<usize> = cells.iter().copied().filter(|&i| got[i] == 0).collect();
            if zeros.is_empty() {
                kept.push(score);
                continue;
            }
            if zeros.len() != zpb.min(cells.len()) {
                return Err(format!(
                    "block ({br},{bc}) has {} zeros, expected {}",
                    zeros.len(),
                    zpb.min(cells.len())
                ));
            }
            let max_zero = zeros.iter().map(|&i| cell(x[i])).fold(f64::MIN, f64::max);
            let min_kept = cells
                .iter()
                .filter(|&&i| got[i] != 0)
                .map(|&i| cell(x[i]))
                .fold(f64::MAX, f64::min);
            if !le(max_zero, min_kept, tol) {
                return Err(format!(
                    "block ({br},{bc}) zeroes a cell of {max_zero} but keeps one of {min_kept}"
                ));
            }
            pruned.push(score);
        }
    }
    let expected_pruned = if zpb == 0 { 0 } else { k };
    if pruned.len() != expected_pruned {
        return Err(format!(
            "{} blocks pruned, expected {expected_pruned}",
            pruned.len()
        ));
    }
    let max_pruned = pruned.iter().copied().fold(f64::MIN, f64::max);
    let min_kept = kept.iter().copied().fold(f64::MAX, f64::min);
    if !pruned.is_empty() && !kept.is_empty() && !le(max_pruned, min_kept, tol) {
        return Err(format!(
            "a kept block scores {min_kept}, below a pruned one at {max_pruned}"
        ));
    }
    Ok(())
}

fn describe_diff(want: &[u8], got: &[u8]) -> String {
    let diffs: Vec<usize> = (0..want.len()).filter(|&i| want[i] != got[i]).collect();
    format!(
        "{} of {} cells differ, first at flat index {:?}",
        diffs.len(),
        want.len(),
        diffs.first()
    )
}

pub fn check(case: &Case, got: &[u8], how: &str, failures: &mut Vec<String>) {
    if case.exact {
        if got != case.want {
            failures.push(format!(
                "{} ({how}, exact, {:?}): {}",
                case.file,
                case.meta,
                describe_diff(&case.want, got)
            ));
        }
    } else {
        if let Err(e) = tie_equivalent(case, &case.want) {
            failures.push(format!(
                "{}: the golden mask itself fails the tie rules: {e}",
                case.file
            ));
        }
        if let Err(e) = tie_equivalent(case, got) {
            failures.push(format!(
                "{} ({how}, tie-equivalent, {:?}): {e}",
                case.file, case.meta
            ));
        }
    }
}

/// The paths of every golden case, sorted.
pub fn case_paths() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(case_dir())
        .expect("conformance case directory")
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("case_") && n.ends_with(".safetensors")
        })
        .collect();
    paths.sort();
    paths
}
