//! Corrupted, truncated and mutated files: `run` and `inspect` return errors, never panic.

mod common;

use std::path::Path;

use common::*;
use data_sparsifier::format::safetensors::SafetensorsSource;
use proptest::prelude::*;
use safetensors::Dtype;
use sparsify::run::{run, RunOptions, Ui};

fn valid_file() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.safetensors");
    write(
        &p,
        &[
            t("w", Dtype::F32, &[4, 8], 1),
            t("b", Dtype::F32, &[8], 2),
            t("h", Dtype::F16, &[2, 4], 3),
            t("i", Dtype::I64, &[2], 4),
        ],
        &[("format", "pt")],
    );
    std::fs::read(p).unwrap()
}

/// Runs `inspect` and `run` in-process on `bytes`; both must return (Ok or Err) without panicking.
fn exercise(dir: &Path, bytes: &[u8]) -> (bool, bool) {
    let input = dir.join("in.safetensors");
    std::fs::write(&input, bytes).unwrap();
    let inspected = sparsify::inspect::inspect(&input).is_ok();
    let ran = run(
        &RunOptions {
            input: input.clone(),
            output: dir.join("out.safetensors"),
            masks: Some(dir.join("masks.safetensors")),
            state: Some(dir.join("state.safetensors")),
            tensors: vec!["*".into()],
            exclude: vec!["i".into()],
            force: true,
            ..Default::default()
        },
        Ui { quiet: true },
    )
    .is_ok();
    (inspected, ran)
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Splice(usize, Vec<u8>),
    HeaderLen(u64),
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    mutation_within(400)
}

/// Mutations at positions below `n`.
fn mutation_within(n: usize) -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0usize..n).prop_map(Mutation::Truncate),
        (0usize..n, 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (0usize..n, proptest::collection::vec(any::<u8>(), 1..12))
            .prop_map(|(i, v)| Mutation::Splice(i, v)),
        prop_oneof![Just(0u64), Just(u64::MAX), Just(1 << 40), 0u64..n as u64]
            .prop_map(Mutation::HeaderLen),
        proptest::collection::vec(any::<u8>(), 1..16).prop_map(Mutation::Append),
    ]
}

fn apply(mut b: Vec<u8>, m: &Mutation) -> Vec<u8> {
    match m {
        Mutation::Truncate(n) => b.truncate(*n % (b.len() + 1)),
        Mutation::Flip(i, x) => {
            let n = b.len();
            if n > 0 {
                b[i % n] ^= x;
            }
        }
        Mutation::Splice(i, v) => {
            let i = i % (b.len() + 1);
            let end = (i + v.len()).min(b.len());
            b.splice(i..end, v.iter().copied());
        }
        Mutation::HeaderLen(n) => {
            if b.len() >= 8 {
                b[..8].copy_from_slice(&n.to_le_bytes());
            }
        }
        Mutation::Append(v) => b.extend(v),
    }
    b
}

/// Header texts that are valid JSON but lie about the data.
fn with_header(json: &str, data_len: usize) -> Vec<u8> {
    let mut b = (json.len() as u64).to_le_bytes().to_vec();
    b.extend(json.as_bytes());
    b.extend(vec![0u8; data_len]);
    b
}

#[test]
fn crafted_headers_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let max = usize::MAX;
    let cases = [
        with_header(
            &format!(r#"{{"w":{{"dtype":"U8","shape":[{max}],"data_offsets":[0,{max}]}}}}"#),
            4,
        ),
        with_header(
            r#"{"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}}"#,
            0,
        ),
        with_header(
            r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"v":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            8,
        ),
        with_header(
            r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            12,
        ),
        with_header(
            r#"{"w":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}}"#,
            8,
        ),
        with_header(
            r#"{"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#,
            8,
        ),
        with_header(r#"{"w":{"dtype":"F32","shape":[2]}}"#, 8),
        with_header(
            r#"{"__metadata__":{"a":1},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            8,
        ),
        with_header(r#"[1,2,3]"#, 0),
        with_header("{\"w\":", 0),
        with_header("", 0),
        vec![0xff; 7],
        vec![],
    ];
    for (i, b) in cases.iter().enumerate() {
        assert!(
            SafetensorsSource::from_bytes(b.clone(), "case").is_err(),
            "case {i}"
        );
        assert_eq!(exercise(dir.path(), b), (false, false), "case {i}");
    }
    // And through the binary: one error line, exit 2.
    for b in &cases[..3] {
        let p = dir.path().join("bad.safetensors");
        std::fs::write(&p, b).unwrap();
        let out = assert_cmd::Command::cargo_bin("sparsify")
            .unwrap()
            .args(["inspect", p.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("error: ") && err.contains("not a valid safetensors file"),
            "{err}"
        );
    }
}

/// The valid file through `run --format compact`.
fn valid_compact_file() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    std::fs::write(&input, valid_file()).unwrap();
    let output = dir.path().join("c.safetensors");
    run(
        &RunOptions {
            input,
            output: output.clone(),
            tensors: vec!["*".into()],
            exclude: vec!["i".into()],
            format: sparsify::cli::OutputFormat::Compact,
            ..Default::default()
        },
        Ui { quiet: true },
    )
    .unwrap();
    std::fs::read(output).unwrap()
}

/// `expand` and `inspect` in-process on compact `bytes`, and lookups over every table the
/// library reads from them (good and bad indices); none may panic. Returns whether expand worked.
fn exercise_compact(dir: &Path, bytes: &[u8]) -> bool {
    use data_sparsifier::compact::{CompactEmbeddingBag, CompactFile};
    use data_sparsifier::embedding::{BagMode, Bags};
    let input = dir.join("c.safetensors");
    std::fs::write(&input, bytes).unwrap();
    let _ = sparsify::inspect::inspect(&input);
    let expanded = sparsify::expand::expand(&input, &dir.join("d.safetensors"), true).is_ok();
    if let Ok(src) = SafetensorsSource::from_bytes(bytes.to_vec(), "c") {
        if let Ok(file) = CompactFile::read(&src, "c") {
            assert!(expanded, "the library reads what expand refused");
            for (_, t) in file.tables() {
                for mode in [BagMode::Sum, BagMode::Mean, BagMode::Max] {
                    if let Ok(bag) = CompactEmbeddingBag::new(t, mode, None) {
                        let rows = t.info().rows as i64;
                        let idx = [0, rows - 1, rows / 2, rows, -1];
                        let _ = bag.forward(&idx, Bags::Fixed { bag_size: 1 }, None);
                        let _ = bag.forward(&idx[..3], Bags::Fixed { bag_size: 3 }, None);
                    }
                }
            }
        }
    }
    expanded
}

#[test]
fn the_valid_compact_file_works() {
    let dir = tempfile::tempdir().unwrap();
    assert!(exercise_compact(dir.path(), &valid_compact_file()));
}

#[test]
fn the_valid_file_works() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(exercise(dir.path(), &valid_file()), (true, true));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn mutated_files_never_panic(ms in proptest::collection::vec(mutation(), 1..4)) {
        let dir = tempfile::tempdir().unwrap();
        let b = ms.iter().fold(valid_file(), apply);
        let (inspected, ran) = exercise(dir.path(), &b);
        // Whatever parses must parse the same way for both commands.
        if ran {
            prop_assert!(inspected);
        }
    }

    #[test]
    fn mutated_compact_files_never_panic(ms in proptest::collection::vec(mutation_within(2500), 1..4)) {
        let dir = tempfile::tempdir().unwrap();
        let b = ms.iter().fold(valid_compact_file(), apply);
        exercise_compact(dir.path(), &b);
    }

    #[test]
    fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = SafetensorsSource::from_bytes(b.clone(), "random");
        let dir = tempfile::tempdir().unwrap();
        prop_assert_eq!(exercise(dir.path(), &b), (false, false));
    }
}
