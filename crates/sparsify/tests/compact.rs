//! `run --format compact`, `expand` and `inspect` on real files with the real binary.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

fn ok(args: &[&str]) -> String {
    ok_stdout(args)
}

/// Exit status 2, one stderr line starting `error: `, no output file.
fn fails_writing_nothing(args: &[&str], output: &Path) -> String {
    let err = fails(args);
    assert!(!output.exists(), "{} was written", output.display());
    err
}

/// `sparsify run INPUT -o OUT --format compact EXTRA..`, which must succeed.
fn run_compact(input: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec!["run", s(input), "-o", s(out), "--format", "compact"];
    args.extend_from_slice(extra);
    ok(&args)
}

/// The `inspect --report json` entry of compact table `name` in `file`.
fn inspected_table(file: &Path, name: &str) -> Value {
    let json: Value = serde_json::from_str(&ok(&["inspect", s(file), "--report", "json"])).unwrap();
    let tables = json["compact"].as_array().unwrap();
    tables.iter().find(|t| t["name"] == name).unwrap().clone()
}

/// Every tensor (name, dtype, shape, bytes), in file order.
fn tensors(path: &Path) -> Vec<(String, String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let (entries, _) = header(&bytes);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    entries
        .into_iter()
        .map(|(n, d, shape, _)| {
            let data = st.tensor(&n).unwrap().data().to_vec();
            (n, format!("{d:?}"), shape, data)
        })
        .collect()
}

#[test]
fn expand_of_compact_equals_the_dense_run_bit_for_bit() {
    let (dir, input) = setup();
    let dense = dir.path().join("dense.safetensors");
    let compact = dir.path().join("compact.safetensors");
    let expanded = dir.path().join("expanded.safetensors");
    // f32, f16 and bf16 tables, 1-D and unaligned tensors, an integer tensor kept as it is.
    let common = [
        "--tensors",
        "*",
        "--exclude",
        "ids",
        "--exclude",
        "pad",
        "--sparsity-level",
        "0.8",
        "--block",
        "1x4",
        "-q",
    ];
    let mut args = vec!["run", s(&input), "-o", s(&dense)];
    args.extend(common);
    ok(&args);
    run_compact(&input, &compact, &common);
    ok(&["expand", s(&compact), "-o", s(&expanded), "-q"]);
    assert_eq!(tensors(&expanded), tensors(&dense));
    let (_, meta) = header(&std::fs::read(&expanded).unwrap());
    assert_eq!(meta.get("note").map(String::as_str), Some("keep me"));
    assert!(!meta.contains_key(data_sparsifier::compact::METADATA_KEY));
    // The compact file is smaller, and sparsify's metadata records each table's encoding.
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(
        len(&compact) < len(&dense),
        "{} vs {}",
        len(&compact),
        len(&dense)
    );
    let (_, meta) = header(&std::fs::read(&compact).unwrap());
    let ours: Value = serde_json::from_str(&meta["sparsify"]).unwrap();
    assert_eq!(ours["format"], "compact");
    assert_eq!(ours["encodings"]["m.table"], "f16");
    assert_eq!(ours["encodings"]["b.w"], "bf16");
    assert_eq!(ours["encodings"]["z.emb"], "f32");
}

#[test]
fn inspect_shows_each_compact_table() {
    let (dir, input) = setup();
    let compact = dir.path().join("c.safetensors");
    run_compact(
        &input,
        &compact,
        &["--sparsity-level", "0.75", "--block", "1x4", "-q"],
    );
    let text = ok(&["inspect", s(&compact)]);
    assert!(
        text.contains("compact table") && text.contains("z.emb") && text.contains("f16"),
        "{text}"
    );
    let emb = inspected_table(&compact, "z.emb");
    assert_eq!(emb["encoding"], "f32");
    assert_eq!(emb["block_width"], 4);
    assert!(
        (emb["density"].as_f64().unwrap() - 0.25).abs() < 0.01,
        "{emb}"
    );
    let ratio = emb["ratio"].as_f64().unwrap();
    assert!(ratio > 0.25 && ratio < 0.30, "{emb}");
    assert_eq!(emb["dense_bytes"], 64 * 16 * 4);
}

#[test]
fn bad_compact_input_is_one_line_status_2_and_no_output() {
    let (dir, input) = setup();
    let out = dir.path().join("out.safetensors");
    // expand of a file that is not compact.
    let e = fails_writing_nothing(&["expand", s(&input), "-o", s(&out)], &out);
    assert!(e.contains("not a compact file"), "{e}");
    // A tampered compact file: a remap out of range, values cut short.
    let compact = dir.path().join("c.safetensors");
    run_compact(&input, &compact, &["--sparsity-level", "0.8", "-q"]);
    let bytes = std::fs::read(&compact).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    // The metadata claims one value fewer than the block mask keeps.
    let mut head: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let key = data_sparsifier::compact::METADATA_KEY;
    let mut meta: Value =
        serde_json::from_str(head["__metadata__"][key].as_str().unwrap()).unwrap();
    let values = meta["tables"]["z.emb"]["values"].as_u64().unwrap();
    meta["tables"]["z.emb"]["values"] = (values - 1).into();
    head["__metadata__"][key] = meta.to_string().into();
    let tampered = head.to_string();
    let bad = dir.path().join("bad.safetensors");
    let mut b2 = (tampered.len() as u64).to_le_bytes().to_vec();
    b2.extend_from_slice(tampered.as_bytes());
    b2.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&bad, &b2).unwrap();
    let e = fails_writing_nothing(&["expand", s(&bad), "-o", s(&out)], &out);
    assert!(e.contains("z.emb"), "{e}");
    fails_writing_nothing(&["inspect", s(&bad)], &out);
    // Truncated.
    std::fs::write(&bad, &bytes[..bytes.len() - 3]).unwrap();
    fails_writing_nothing(&["expand", s(&bad), "-o", s(&out)], &out);
}

#[test]
fn quantize_writes_int8_int4_and_int2_tables_that_expand_and_inspect() {
    let (dir, input) = setup();
    for code in ["int8", "int4", "int2"] {
        let compact = dir.path().join(format!("{code}.safetensors"));
        let expanded = dir.path().join(format!("{code}.dense.safetensors"));
        let args = [
            "--quantize",
            code,
            "--sparsity-level",
            "0.8",
            "--block",
            "1x4",
            "-q",
        ];
        run_compact(&input, &compact, &args);
        ok(&["expand", s(&compact), "-o", s(&expanded), "-q"]);
        let emb = inspected_table(&compact, "z.emb");
        assert_eq!(emb["encoding"], code);
        let ratio = emb["ratio"].as_f64().unwrap();
        // 16 columns: the per-row parameters weigh more than on 64 (see examples/compact_sizes.rs).
        assert!(ratio < if code == "int8" { 0.19 } else { 0.11 }, "{emb}");
        let (_, meta) = header(&std::fs::read(&compact).unwrap());
        let ours: Value = serde_json::from_str(&meta["sparsify"]).unwrap();
        assert_eq!(ours["encodings"]["m.table"], code);
        // The expanded file has the input's tensors, dtypes and shapes; pruned cells exactly 0.
        let dense = tensors(&expanded);
        let names: Vec<_> = dense
            .iter()
            .map(|t| (t.0.clone(), t.1.clone(), t.2.clone()))
            .collect();
        let want: Vec<_> = tensors(&input)
            .iter()
            .map(|t| (t.0.clone(), t.1.clone(), t.2.clone()))
            .collect();
        assert_eq!(names, want);
    }
}

#[test]
fn quantize_needs_compact_and_float_tensors() {
    let (dir, input) = setup();
    let out = dir.path().join("out.safetensors");
    let e = fails_writing_nothing(
        &["run", s(&input), "-o", s(&out), "--quantize", "int8"],
        &out,
    );
    assert!(e.contains("--format compact"), "{e}");
    // An integer tensor selected for quantizing.
    let e = fails_writing_nothing(
        &[
            "run",
            s(&input),
            "-o",
            s(&out),
            "--format",
            "compact",
            "--quantize",
            "int4",
            "--tensors",
            "ids",
        ],
        &out,
    );
    assert!(e.contains("ids") && e.contains("floating point"), "{e}");
    let e = fails_writing_nothing(
        &[
            "run",
            s(&input),
            "-o",
            s(&out),
            "--format",
            "compact",
            "--quantize",
            "int3",
        ],
        &out,
    );
    assert!(e.contains("int3"), "{e}");
}
