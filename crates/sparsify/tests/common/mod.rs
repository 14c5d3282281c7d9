//! Helpers shared by the integration tests: small safetensors files in a chosen tensor order.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

use data_sparsifier::dtype::{bf16, f16};
use data_sparsifier::format::safetensors::SafetensorsWriter;
use data_sparsifier::format::{FileDType, TensorInfo};
use data_sparsifier::random::Rng;
use safetensors::Dtype;

/// The library's name for a safetensors dtype.
pub fn file_dtype(d: Dtype) -> FileDType {
    match d {
        Dtype::F32 => FileDType::F32,
        Dtype::F64 => FileDType::F64,
        Dtype::F16 => FileDType::F16,
        Dtype::BF16 => FileDType::BF16,
        Dtype::I64 => FileDType::I64,
        Dtype::I32 => FileDType::I32,
        Dtype::U8 => FileDType::U8,
        Dtype::BOOL => FileDType::Bool,
        other => panic!("unsupported {other:?}"),
    }
}

/// One tensor to write: name, dtype, shape, little-endian bytes.
pub struct T {
    pub name: &'static str,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// Random normal values of `dtype` as little-endian bytes.
pub fn randn_bytes(dtype: Dtype, n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for _ in 0..n {
        let x = rng.normal();
        match dtype {
            Dtype::F32 => out.extend((x as f32).to_le_bytes()),
            Dtype::F64 => out.extend(x.to_le_bytes()),
            Dtype::F16 => out.extend(f16::from_f64(x).to_le_bytes()),
            Dtype::BF16 => out.extend(bf16::from_f64(x).to_le_bytes()),
            Dtype::I64 => out.extend(((x * 100.0) as i64).to_le_bytes()),
            Dtype::U8 => out.push((x * 50.0) as u8),
            other => panic!("unsupported {other:?}"),
        }
    }
    out
}

/// A tensor of random values.
pub fn t(name: &'static str, dtype: Dtype, shape: &[usize], seed: u64) -> T {
    let n = shape.iter().product();
    T {
        name,
        dtype,
        shape: shape.to_vec(),
        bytes: randn_bytes(dtype, n, seed),
    }
}

/// Writes `tensors` in this order (data offsets follow it) with `metadata`.
pub fn write(path: &Path, tensors: &[T], metadata: &[(&str, &str)]) {
    let headers: Vec<TensorInfo> = tensors
        .iter()
        .map(|t| TensorInfo::new(t.name, file_dtype(t.dtype), t.shape.clone()))
        .collect();
    let meta: BTreeMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut w =
        SafetensorsWriter::create(path, &headers, (!meta.is_empty()).then_some(&meta)).unwrap();
    for t in tensors {
        w.write(&t.bytes).unwrap();
    }
    w.finish().unwrap();
}

/// The standard test checkpoint: tensors deliberately not in alphabetical order, a 1-D bias, an
/// integer tensor, f16/bf16 tables, and an f32 tensor made unaligned by a 3-byte U8 tensor before it.
pub fn checkpoint() -> Vec<T> {
    vec![
        t("z.emb", Dtype::F32, &[64, 16], 1),
        t("a.bias", Dtype::F32, &[16], 2),
        t("m.table", Dtype::F16, &[32, 8], 3),
        t("ids", Dtype::I64, &[4], 4),
        t("b.w", Dtype::BF16, &[8, 8], 5),
        t("pad", Dtype::U8, &[3], 6),
        t("late", Dtype::F32, &[10, 8], 7),
    ]
}

/// A temp dir with the standard checkpoint written as `in.safetensors`.
pub fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    write(
        &input,
        &checkpoint(),
        &[("format", "pt"), ("note", "keep me")],
    );
    (dir, input)
}

/// One header entry: name, dtype, shape, data offsets.
pub type Entry = (String, Dtype, Vec<usize>, (usize, usize));

/// Parsed header: entries sorted by offset, and the metadata.
pub fn header(bytes: &[u8]) -> (Vec<Entry>, BTreeMap<String, String>) {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    let mut v: Vec<_> = meta
        .tensors()
        .into_iter()
        .map(|(n, i)| (n, i.dtype, i.shape.clone(), i.data_offsets))
        .collect();
    v.sort_by_key(|x| x.3);
    let m = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    (v, m)
}

/// The binary under test.
pub fn sparsify() -> Command {
    Command::cargo_bin("sparsify").unwrap()
}

/// Runs and expects exit status 2 with exactly one stderr line starting `error: `; returns it.
pub fn fails(args: &[&str]) -> String {
    let out = sparsify().args(args).output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "args {args:?}: stderr {err}");
    assert_eq!(
        err.lines().count(),
        1,
        "args {args:?}: stderr must be one line: {err:?}"
    );
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// Runs and expects success; returns stdout.
pub fn ok_stdout(args: &[&str]) -> String {
    let out = sparsify().args(args).output().unwrap();
    let e = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "args {args:?}: {e}");
    String::from_utf8(out.stdout).unwrap()
}

/// A path as the `&str` an argument list takes.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The entry of tensor `name` in a `run --report json` report.
pub fn reported<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tensor {name:?} in the report"))
}
