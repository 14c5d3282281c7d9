//! The real binary on real files in a temp dir.

mod common;

use std::path::Path;

use common::*;
use data_sparsifier::norm::{pruned_block_count, DataNormSparsifier};
use data_sparsifier::LoadOptions;
use data_sparsifier::Mask;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

fn ok(args: &[&str]) -> (String, String) {
    let out = sparsify().args(args).output().unwrap();
    let (o, e) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "args {args:?}: {e}");
    (o, e)
}

/// Elements of a tensor as byte chunks.
fn elems(bytes: &[u8], dtype: Dtype) -> Vec<&[u8]> {
    bytes.chunks(dtype.size()).collect()
}

#[test]
fn round_trip_run_then_inspect() {
    let (dir, input) = setup();
    let out = dir.path().join("out.safetensors");
    let masks = dir.path().join("masks.safetensors");
    let state = dir.path().join("state.safetensors");
    let (stdout, stderr) = ok(&[
        "run",
        s(&input),
        "-o",
        s(&out),
        "--sparsity-level",
        "0.5",
        "--norm",
        "l2",
        "--masks",
        s(&masks),
        "--state",
        s(&state),
        "--report",
        "json",
    ]);
    // The plan is announced on stderr before the work, naming each selected tensor.
    assert!(stderr.contains("sparsifying 4"), "{stderr}");
    for name in ["z.emb", "m.table", "b.w", "late"] {
        assert!(stderr.contains(name), "{stderr}");
    }
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let names: Vec<&str> = report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["z.emb", "m.table", "b.w", "late"]);
    assert!(report["totals"]["gbps"].as_f64().is_some());
    assert_eq!(
        report["totals"]["bytes"].as_u64().unwrap(),
        std::fs::metadata(&input).unwrap().len()
    );
    // "late" sits after a 3-byte tensor: copied, not mapped.
    assert_eq!(report["tensors"][3]["zero_copy"], Value::Bool(false));
    assert_eq!(report["tensors"][0]["zero_copy"], Value::Bool(true));

    let inb = std::fs::read(&input).unwrap();
    let outb = std::fs::read(&out).unwrap();
    let mb = std::fs::read(&masks).unwrap();
    let (ih, imeta) = header(&inb);
    let (oh, ometa) = header(&outb);
    // Same names, dtypes, shapes, and order.
    let strip = |h: &[Entry]| {
        h.iter()
            .map(|(n, d, s, _)| (n.clone(), *d, s.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&ih), strip(&oh));
    assert_eq!(
        strip(&oh).iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
        ["z.emb", "a.bias", "m.table", "ids", "b.w", "pad", "late"]
    );
    // Metadata kept, one key added.
    assert_eq!(ometa.len(), imeta.len() + 1);
    assert_eq!(ometa["format"], "pt");
    assert_eq!(ometa["note"], "keep me");
    let added: Value = serde_json::from_str(&ometa["sparsify"]).unwrap();
    assert_eq!(added["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(added["tensors"]["z.emb"]["sparsity_level"], 0.5);
    assert_eq!(added["tensors"]["z.emb"]["norm"], "L2");
    assert!(added["tensors"].get("a.bias").is_none());

    // Loads with the safetensors crate (the parser PyTorch's loader uses).
    let ist = SafeTensors::deserialize(&inb).unwrap();
    let ost = SafeTensors::deserialize(&outb).unwrap();
    let mst = SafeTensors::deserialize(&mb).unwrap();
    // ...and with the safetensors version candle loads files with.
    for bytes in [&outb, &mb] {
        let c = safetensors_candle::SafeTensors::deserialize(bytes).unwrap();
        let o = SafeTensors::deserialize(bytes).unwrap();
        assert_eq!(c.len(), o.len());
        for (name, v) in c.tensors() {
            assert_eq!(v.data(), o.tensor(&name).unwrap().data());
            assert_eq!(v.shape(), o.tensor(&name).unwrap().shape());
        }
    }
    assert_eq!(mst.len(), 4);
    for name in ["a.bias", "ids", "pad"] {
        assert_eq!(
            ist.tensor(name).unwrap().data(),
            ost.tensor(name).unwrap().data(),
            "{name}"
        );
        assert!(mst.tensor(name).is_err());
    }
    for name in ["z.emb", "m.table", "b.w", "late"] {
        let (i, o, m) = (
            ist.tensor(name).unwrap(),
            ost.tensor(name).unwrap(),
            mst.tensor(name).unwrap(),
        );
        assert_eq!(m.dtype(), Dtype::U8);
        assert_eq!(m.shape(), i.shape());
        let (ie, oe) = (elems(i.data(), i.dtype()), elems(o.data(), o.dtype()));
        let mut zeroed = 0;
        for ((a, b), &k) in ie.iter().zip(&oe).zip(m.data()) {
            assert!(k <= 1);
            if k == 1 {
                assert_eq!(a, b, "{name}: kept element changed");
            } else {
                assert!(b.iter().all(|&x| x == 0), "{name}: zeroed element not +0");
                zeroed += 1;
            }
        }
        // Achieved sparsity matches the config: round(0.5 * blocks) whole 1x4 blocks.
        let numel: usize = i.shape().iter().product();
        let blocks = numel / 4;
        assert_eq!(zeroed, pruned_block_count(0.5, blocks) * 4, "{name}");
        let r = report["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap();
        assert!((r["sparsity"].as_f64().unwrap() - zeroed as f64 / numel as f64).abs() < 1e-12);
    }

    // The state reloads into DataNormSparsifier, with the original data and the masks.
    let mut sp = DataNormSparsifier::data_norm(Default::default()).unwrap();
    let extra = sp.load_state(&state, LoadOptions::default()).unwrap();
    assert_eq!(extra["sparsify"]["names"]["z_emb"], "z.emb");
    assert_eq!(
        sp.names().collect::<Vec<_>>(),
        ["z_emb", "m_table", "b_w", "late"]
    );
    for (name, st) in [
        ("z.emb", "z_emb"),
        ("m.table", "m_table"),
        ("b.w", "b_w"),
        ("late", "late"),
    ] {
        let i = ist.tensor(name).unwrap();
        let m = mst.tensor(name).unwrap();
        assert_eq!(
            sp.get_mask(st).unwrap(),
            &Mask::from_dense_u8(i.shape().to_vec(), m.data()).unwrap()
        );
        let orig = sp.get_data(st, data_sparsifier::Version::Original).unwrap();
        assert_eq!(orig.as_bytes(), i.data());
        assert_eq!(sp.config(st).unwrap().sparsity_level, 0.5);
        assert!(sp.is_parametrized(st).unwrap());
    }
    // Stepping the reloaded sparsifier reproduces the same masks.
    let before: Vec<Mask> = sp
        .names()
        .map(|n| sp.get_mask(n).unwrap().clone())
        .collect();
    sp.step().unwrap();
    let after: Vec<Mask> = sp
        .names()
        .map(|n| sp.get_mask(n).unwrap().clone())
        .collect();
    assert_eq!(before, after);

    // inspect shows the zeros, and the added metadata.
    let (stdout, _) = ok(&["inspect", s(&out), "--report", "json"]);
    let r: Value = serde_json::from_str(&stdout).unwrap();
    let z = r["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "z.emb")
        .unwrap();
    assert!((z["zero_fraction"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    assert_eq!(r["tensors"][3]["name"], "ids");
    assert!(r["metadata"]["sparsify"].is_string());
    let (text, _) = ok(&["inspect", s(&out)]);
    assert!(
        text.contains("z.emb") && text.contains("50.0%") && text.contains("total:"),
        "{text}"
    );
}

#[test]
fn selection_by_glob_includes_1d_and_excludes() {
    let (dir, input) = setup();
    let out = dir.path().join("o.safetensors");
    let (stdout, _) = ok(&[
        "run",
        s(&input),
        "-o",
        s(&out),
        "--tensors",
        "*.*",
        "--exclude",
        "m.*",
        "-q",
        "--report",
        "json",
    ]);
    let r: Value = serde_json::from_str(&stdout).unwrap();
    let names: Vec<&str> = r["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["z.emb", "a.bias", "b.w"]);
    // A text report goes to stdout; --quiet silences stderr.
    let out2 = dir.path().join("o2.safetensors");
    let (stdout, stderr) = ok(&["run", s(&input), "-o", s(&out2), "-q", "--tensors", "late"]);
    assert!(
        stdout.contains("late") && stdout.contains("total:"),
        "{stdout}"
    );
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn named_nd_and_0d_tensors_are_sparsified_as_2d() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    write(
        &input,
        &[
            t("conv", Dtype::F32, &[2, 3, 8], 1),
            t("scale", Dtype::F32, &[], 2),
        ],
        &[],
    );
    let (out, masks) = (dir.path().join("o.st"), dir.path().join("m.st"));
    let state = dir.path().join("s.st");
    ok(&[
        "run",
        s(&input),
        "-o",
        s(&out),
        "--tensors",
        "conv",
        "--tensors",
        "scale",
        "--masks",
        s(&masks),
        "--state",
        s(&state),
        "-q",
    ]);
    // The state holds the 2-D view each tensor was sparsified as (DataNormSparsifier takes at most
    // 2-D data) and records the real shapes.
    let mut sp = DataNormSparsifier::data_norm(Default::default()).unwrap();
    let extra = sp.load_state(&state, LoadOptions::default()).unwrap();
    let data = |n: &str| sp.get_data(n, data_sparsifier::Version::Original).unwrap();
    assert_eq!(data("conv").shape(), &[6, 8]);
    assert_eq!(data("scale").shape(), &[] as &[usize]);
    assert_eq!(
        extra["sparsify"]["shapes"],
        serde_json::json!({"conv": [2, 3, 8], "scale": []})
    );
    assert_eq!(sp.get_mask("conv").unwrap().count_zeroed(), 24);
    let mb = std::fs::read(&masks).unwrap();
    let m = SafeTensors::deserialize(&mb).unwrap();
    assert_eq!(m.tensor("conv").unwrap().shape(), &[2, 3, 8]);
    assert_eq!(m.tensor("scale").unwrap().shape(), &[] as &[usize]);
    assert_eq!(
        m.tensor("conv")
            .unwrap()
            .data()
            .iter()
            .filter(|&&b| b == 0)
            .count(),
        24
    );
}

#[test]
fn no_overwrite_without_force_and_distinct_paths() {
    let (dir, input) = setup();
    let out = dir.path().join("out.safetensors");
    ok(&["run", s(&input), "-o", s(&out), "-q"]);
    let first = std::fs::read(&out).unwrap();
    let e = fails(&["run", s(&input), "-o", s(&out), "--sparsity-level", "0.9"]);
    assert!(e.contains("already exists") && e.contains("--force"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), first);
    ok(&[
        "run",
        s(&input),
        "-o",
        s(&out),
        "--sparsity-level",
        "0.9",
        "--force",
        "-q",
    ]);
    assert_ne!(std::fs::read(&out).unwrap(), first);

    // The output may never be the input, even with --force or through another spelling.
    let before = std::fs::read(&input).unwrap();
    let e = fails(&["run", s(&input), "-o", s(&input), "--force"]);
    assert!(e.contains("same file"), "{e}");
    let other = format!("{}/./in.safetensors", dir.path().display());
    fails(&["run", s(&input), "-o", &other, "--force"]);
    assert_eq!(std::fs::read(&input).unwrap(), before);
    let m = dir.path().join("m.safetensors");
    let e = fails(&["run", s(&input), "-o", s(&m), "--masks", s(&m)]);
    assert!(e.contains("--masks") && e.contains("same file"), "{e}");
    let e = fails(&[
        "run",
        s(&input),
        "-o",
        s(&m),
        "--state",
        s(&input),
        "--force",
    ]);
    assert!(e.contains("--state"), "{e}");
    let e = fails(&[
        "run",
        s(&input),
        "-o",
        s(&m),
        "--masks",
        s(&out),
        "--state",
        s(&out),
        "--force",
    ]);
    assert!(e.contains("same file"), "{e}");
    // No temp files are left behind by failed runs.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn config_file_precedence() {
    let (dir, input) = setup();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[defaults]\nsparsity_level = 0.25\nnorm = \"L2\"\nsparse_block_shape = [2, 4]\n\n\
         [tensors.\"*.*\"]\nzeros_per_block = 2\n\n[tensors.\"m.table\"]\nsparsity_level = 1.0\nzeros_per_block = 4\n",
    )
    .unwrap();
    let out = dir.path().join("o.safetensors");
    let (stdout, _) = ok(&[
        "run",
        s(&input),
        "-o",
        s(&out),
        "--config",
        s(&cfg),
        "--sparsity-level",
        "0.75",
        "--norm",
        "l1",
        "-q",
        "--report",
        "json",
    ]);
    let r: Value = serde_json::from_str(&stdout).unwrap();
    let cfg_of = |n: &str| reported(&r, n)["config"].clone();
    // Flags beat the file's defaults; the block shape comes from the file.
    assert_eq!(cfg_of("late")["sparsity_level"], 0.75);
    assert_eq!(cfg_of("late")["norm"], "L1");
    assert_eq!(
        cfg_of("late")["sparse_block_shape"],
        serde_json::json!([2, 4])
    );
    assert_eq!(cfg_of("late")["zeros_per_block"], Value::Null);
    // The glob override applies, and the exact name beats the glob.
    assert_eq!(cfg_of("z.emb")["zeros_per_block"], 2);
    assert_eq!(cfg_of("z.emb")["sparsity_level"], 0.75);
    assert_eq!(cfg_of("m.table")["sparsity_level"], 1.0);
    assert_eq!(cfg_of("m.table")["zeros_per_block"], 4);
    // The per-tensor configs are recorded in the output.
    let (_, meta) = header(&std::fs::read(&out).unwrap());
    let added: Value = serde_json::from_str(&meta["sparsify"]).unwrap();
    assert_eq!(added["tensors"]["m.table"]["sparsity_level"], 1.0);
    let m = r["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "m.table")
        .unwrap();
    // sl 1.0 with 4 of each 2x4 block's 8 elements zeroed: exactly half.
    assert_eq!(m["sparsity"], 0.5);
}

#[test]
fn config_file_errors_name_file_line_and_key() {
    let (dir, input) = setup();
    let out = dir.path().join("o.safetensors");
    let cases = [
        (
            "[defaults]\nnorm = \"L2\"\nsparsity = 0.5\n",
            ":3:",
            "`sparsity`",
        ),
        (
            "[defaults]\nnorm = \"L2\"\n\nsparsity_level = 2.0\n",
            ":4:",
            "sparsity_level",
        ),
        ("[defaults]\nnorm = \"L7\"\n", ":2:", "`norm`"),
        (
            "[defaults]\nnorm = \"L2\"\nsparsity_level = nan\n",
            ":3:",
            "`sparsity_level`",
        ),
        (
            "[defaults]\nsparsity_level = -inf\n",
            ":2:",
            "`sparsity_level`",
        ),
        (
            "[defaults]\nsparse_block_shape = [1, 4]\n[tensors.\"z.emb\"]\nzeros_per_block = 5\n",
            ":4:",
            "zeros_per_block",
        ),
        ("\n[tensors.\"nope\"]\nnorm = \"L1\"\n", ":2:", "\"nope\""),
        ("[tensors.\"q*\"]\nnorm = \"L1\"\n", ":1:", "\"q*\""),
        (
            "[tensors.\"a.bias\"]\nnorm = \"L1\"\n",
            ":1:",
            "not selected",
        ),
        ("sparsity_level = 0.5\n", ":1:", "[defaults]"),
        ("[defaults\n", ":1:", ""),
    ];
    for (i, (text, line, key)) in cases.iter().enumerate() {
        let cfg = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&cfg, text).unwrap();
        let e = fails(&["run", s(&input), "-o", s(&out), "--config", s(&cfg)]);
        assert!(e.contains(&format!("c{i}.toml{line}")), "case {i}: {e}");
        assert!(e.contains(key), "case {i}: {e}");
    }
    let e = fails(&["run", s(&input), "-o", s(&out), "--config", "/no/such.toml"]);
    assert!(e.contains("/no/such.toml"), "{e}");
    let e = fails(&["run", s(&input), "-o", s(&out), "--config", s(dir.path())]);
    assert!(e.contains("is a directory") && e.contains("TOML"), "{e}");
    // A binary file (here the checkpoint itself) is not UTF-8 text.
    let e = fails(&["run", s(&input), "-o", s(&out), "--config", s(&input)]);
    assert!(e.contains("not UTF-8") && e.contains("TOML"), "{e}");
    // Values may be spelled as the flags spell them.
    let cfg = dir.path().join("spell.toml");
    std::fs::write(
        &cfg,
        "[defaults]\nnorm = \"l2\"\nnan_policy = \"rank-last\"\n",
    )
    .unwrap();
    let (stdout, _) = ok(&[
        "run",
        s(&input),
        "-o",
        s(&out),
        "--config",
        s(&cfg),
        "-q",
        "--report",
        "json",
    ]);
    let r: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["tensors"][0]["config"]["norm"], "L2");
    assert_eq!(r["tensors"][0]["config"]["nan_policy"], "rank_last");
    std::fs::remove_file(&out).unwrap();
    assert!(!out.exists());
}

#[test]
fn every_error_is_one_line_and_exit_2() {
    let (dir, input) = setup();
    let out = dir.path().join("o.safetensors");
    let o = s(&out);
    let e = fails(&["run", "/no/such/file.safetensors", "-o", o]);
    assert!(e.contains("does not exist"), "{e}");
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"this is not a safetensors file at all").unwrap();
    let e = fails(&["run", s(&junk), "-o", o]);
    assert!(e.contains("not a valid safetensors file"), "{e}");
    fails(&["inspect", s(&junk)]);
    let bytes = std::fs::read(&input).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let e = fails(&["run", s(&cut), "-o", o]);
    assert!(e.contains("truncated"), "{e}");
    fails(&["inspect", s(&cut)]);
    let empty = dir.path().join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    fails(&["inspect", s(&empty)]);
    let e = fails(&["run", s(&input), "-o", o, "--tensors", "nothing*"]);
    assert!(
        e.contains("matches no tensor") && e.contains("inspect"),
        "{e}"
    );
    let e = fails(&["run", s(&input), "-o", o, "--exclude", "nothing"]);
    assert!(e.contains("matches no tensor"), "{e}");
    let e = fails(&["run", s(&input), "-o", o, "--tensors", "ids"]);
    assert!(e.contains("not floating point") && e.contains("ids"), "{e}");
    for bad in [
        &["--block", "0x4"][..],
        &["--block", "four"],
        &["--norm", "l3"],
        &["--sparsity-level", "1.5"],
        &["--sparsity-level", "x"],
        &["--zeros-per-block=-1"],
        &["--nan-policy", "ignore"],
        &["--report", "xml"],
        &["--bogus"],
    ] {
        let mut args = vec!["run", s(&input), "-o", o];
        args.extend_from_slice(bad);
        let e = fails(&args);
        let flag = bad[0].split('=').next().unwrap();
        assert!(e.contains(flag), "{bad:?}: {e}");
    }
    let e = fails(&["run", s(&input), "-o", o, "--zeros-per-block", "5"]);
    assert!(e.contains("--zeros-per-block"), "{e}");
    assert!(!e.contains("None") && e.contains("unset"), "{e}");
    fails(&["run", s(&input)]);
    let e = fails(&["run", s(&input), "-o", "/no/such/dir/o.safetensors"]);
    assert!(e.contains("does not exist"), "{e}");
    fails(&["inspect", "/no/such/file"]);
    fails(&["bench", "--rows", "x"]);
    fails(&["bench", "--repeat", "0"]);
    // Tables too large to allocate (or to address) are errors naming the size, not aborts.
    for rows in ["100000000000", "2305843009213693952"] {
        let e = fails(&["bench", "--rows", rows, "--cols", "64"]);
        assert!(e.contains(rows) && e.contains("smaller --rows"), "{e}");
    }
    assert!(!out.exists());
}

#[test]
fn nan_data_is_an_error_unless_ranked_last() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    let mut v = t("w", Dtype::F32, &[4, 8], 1);
    v.bytes[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    write(&input, &[v], &[]);
    let out = dir.path().join("o.safetensors");
    let e = fails(&["run", s(&input), "-o", s(&out), "-q"]);
    assert!(e.contains("NaN") && e.contains("\"w\""), "{e}");
    assert!(e.contains("--nan-policy rank-last"), "{e}");
    // Without --quiet the plan comes first; the error is still one line, the last.
    let out2 = sparsify()
        .args(["run", s(&input), "-o", s(&out)])
        .output()
        .unwrap();
    assert_eq!(out2.status.code(), Some(2));
    let err = String::from_utf8(out2.stderr).unwrap();
    assert_eq!(err.lines().filter(|l| l.starts_with("error: ")).count(), 1);
    assert!(err.lines().last().unwrap().starts_with("error: "));
    assert!(!out.exists());
    ok(&[
        "run",
        s(&input),
        "-o",
        s(&out),
        "--nan-policy",
        "rank-last",
        "-q",
    ]);
}

#[test]
fn bench_reports_json_fields() {
    let (stdout, _) = ok(&[
        "bench",
        "--rows",
        "64",
        "--cols",
        "16",
        "--repeat",
        "3",
        "--dtype",
        "bf16",
        "--block",
        "2x4",
        "--norm",
        "l2",
        "--sparsity-level",
        "0.75",
        "--report",
        "json",
    ]);
    let r: Value = serde_json::from_str(&stdout).unwrap();
    for k in [
        "step_seconds",
        "squash_seconds",
        "step_gbps",
        "squash_gbps",
        "peak_extra_bytes",
        "peak_extra_fraction",
    ] {
        assert!(r[k].as_f64().is_some(), "{k}: {r}");
    }
    assert_eq!(r["bytes"], 64 * 16 * 2);
    assert_eq!(r["repeat"], 3);
    assert_eq!(r["dtype"], "bf16");
    assert_eq!(r["config"]["sparse_block_shape"], serde_json::json!([2, 4]));
    assert_eq!(r["sparsity"], 0.75);
    // The binary installs the counting allocator: at least the mask was counted.
    assert!(r["peak_extra_bytes"].as_u64().unwrap() >= 64 * 16 / 8);
    let (text, _) = ok(&["bench", "--rows", "8", "--cols", "8", "--repeat", "1"]);
    assert!(
        text.contains("step") && text.contains("GB/s") && text.contains("peak extra"),
        "{text}"
    );
}

#[test]
fn demo_writes_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("demo");
    let (stdout, stderr) = ok(&[
        "demo",
        "--out",
        s(&d),
        "--report",
        "json",
        "--scale",
        "0.01",
    ]);
    assert!(stderr.contains("sparsify run"), "{stderr}");
    let r: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["run"]["tensors"].as_array().unwrap().len(), 12);
    let inb = std::fs::read(d.join("dlrm.safetensors")).unwrap();
    let outb = std::fs::read(d.join("dlrm.sparse.safetensors")).unwrap();
    let (i, o) = (
        SafeTensors::deserialize(&inb).unwrap(),
        SafeTensors::deserialize(&outb).unwrap(),
    );
    for n in ["bot_l.0.bias", "top_l.0.bias", "train_step"] {
        assert_eq!(i.tensor(n).unwrap().data(), o.tensor(n).unwrap().data());
    }
    for q in r["quality"].as_array().unwrap() {
        if q["name"].as_str().unwrap().starts_with("emb_l") {
            assert!((q["sparsity"].as_f64().unwrap() - 0.8).abs() < 0.01);
            // Far better than the 20% a random 80% pruning keeps (the tables are tiny here).
            assert!(q["energy_kept"].as_f64().unwrap() > 0.5, "{q}");
        }
    }
    // A second demo into the same directory refuses to overwrite without --force.
    let e = fails(&["demo", "--out", s(&d), "--scale", "0.01"]);
    assert!(e.contains("--force"), "{e}");
    let (text, _) = ok(&["demo", "--out", s(&d), "--force", "-q", "--scale", "0.01"]);
    assert!(
        text.contains("energy kept") && text.contains("dlrm.sparse.safetensors"),
        "{text}"
    );
}

#[test]
fn memory_is_about_one_tensor_not_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    // 12 tables of 1 MB (f32 256x1024): 12 MB in all.
    let names = [
        "t00", "t01", "t02", "t03", "t04", "t05", "t06", "t07", "t08", "t09", "t10", "t11",
    ];
    let ts: Vec<T> = names
        .iter()
        .enumerate()
        .map(|(i, n)| t(n, Dtype::F32, &[256, 1024], i as u64))
        .collect();
    write(&input, &ts, &[]);
    let (out, masks) = (dir.path().join("o.st"), dir.path().join("m.st"));
    let (stdout, _) = ok(&[
        "run",
        s(&input),
        "-o",
        s(&out),
        "--masks",
        s(&masks),
        "-q",
        "--report",
        "json",
    ]);
    let r: Value = serde_json::from_str(&stdout).unwrap();
    let peak = r["totals"]["peak_alloc_bytes"].as_u64().unwrap();
    // One squash chunk (at most the 1 MB tensor), its mask, the two 1 MiB write buffers, the 1 MiB
    // dense-mask chunk, and the kernel's per-block codes: far below the 12 MB checkpoint.
    assert!(peak < 6_000_000, "peak heap {peak} bytes");
}

#[test]
fn a_large_tensor_is_streamed_through_a_small_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.safetensors");
    // One 32 MB f32 table: the squashed output is never held whole.
    write(&input, &[t("emb", Dtype::F32, &[131_072, 64], 5)], &[]);
    let out = dir.path().join("o.st");
    let (stdout, _) = ok(&["run", s(&input), "-o", s(&out), "-q", "--report", "json"]);
    let r: Value = serde_json::from_str(&stdout).unwrap();
    let peak = r["totals"]["peak_alloc_bytes"].as_u64().unwrap();
    // Bit mask 1 MB + block codes 2 MB + one 4 MiB squash chunk + 2 MiB of write buffers.
    assert!(
        peak < 12_000_000,
        "peak heap {peak} bytes for a 32 MB tensor"
    );
    let a = std::fs::read(&input).unwrap();
    let b = std::fs::read(&out).unwrap();
    let (sa, sb) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    let (x, y) = (sa.tensor("emb").unwrap(), sb.tensor("emb").unwrap());
    let xs: &[f32] = bytemuck::cast_slice(x.data());
    let ys: &[f32] = bytemuck::cast_slice(y.data());
    assert!(xs.iter().zip(ys).all(|(a, b)| b == a || *b == 0.0));
    let zeros = ys.iter().filter(|v| **v == 0.0).count();
    assert_eq!(zeros, xs.len() / 2, "half of the (1,4) blocks are zeroed");
}

#[test]
fn state_names_that_collide_and_directory_outputs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    write(
        &input,
        &[
            t("a.b", Dtype::F32, &[4, 4], 1),
            t("a_b", Dtype::F32, &[4, 4], 2),
        ],
        &[],
    );
    let (out, st) = (dir.path().join("o.st"), dir.path().join("s.st"));
    let e = fails(&["run", s(&input), "-o", s(&out), "--state", s(&st)]);
    assert!(
        e.contains("\"a.b\"") && e.contains("\"a_b\"") && e.contains("--state"),
        "{e}"
    );
    assert!(!out.exists() && !st.exists());
    // Without the clash it works, and the state reloads.
    ok(&[
        "run",
        s(&input),
        "-o",
        s(&out),
        "--state",
        s(&st),
        "--exclude",
        "a_b",
        "-q",
    ]);
    let mut sp = DataNormSparsifier::data_norm(Default::default()).unwrap();
    sp.load_state(&st, LoadOptions::default()).unwrap();
    assert_eq!(sp.names().collect::<Vec<_>>(), ["a_b"]);
    let e = fails(&["run", s(&input), "-o", s(dir.path()), "--force"]);
    assert!(e.contains("directory"), "{e}");
}

/// A pipe's write end whose read end is already closed: writing to it fails with EPIPE.
#[cfg(unix)]
fn closed_pipe() -> std::process::Stdio {
    let mut reader = std::process::Command::new("true")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let w = reader.stdin.take().unwrap();
    reader.wait().unwrap();
    std::process::Stdio::from(w)
}

#[cfg(unix)]
#[test]
fn a_closed_stderr_or_stdout_is_not_a_crash() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let (dir, input) = setup();
    // Runs with stdout and/or stderr closed; returns the exit status (never a signal).
    let run = |args: &[&str], close_out: bool, close_err: bool| {
        let pipe = |closed: bool| if closed { closed_pipe() } else { Stdio::null() };
        let st = std::process::Command::new(env!("CARGO_BIN_EXE_sparsify"))
            .args(args)
            .stdout(pipe(close_out))
            .stderr(pipe(close_err))
            .status()
            .unwrap();
        assert_eq!(st.signal(), None, "{args:?}: killed by a signal");
        st.code().unwrap()
    };
    let (o1, o2, o3) = (
        dir.path().join("o1.st"),
        dir.path().join("o2.st"),
        dir.path().join("o3.st"),
    );
    // Errors: the tool's own, and clap's (one line, and the usage of a bare command).
    assert_eq!(run(&["run", "/no/such.st", "-o", s(&o1)], false, true), 2);
    assert_eq!(run(&["run", s(&input), "--bogus"], false, true), 2);
    assert_eq!(run(&[], false, true), 2);
    // The plan on stderr, the report on stdout.
    assert_eq!(run(&["run", s(&input), "-o", s(&o1)], false, true), 0);
    assert_eq!(run(&["run", s(&input), "-o", s(&o2)], true, true), 0);
    // --report json: the table on stderr, the JSON on stdout.
    let json = ["run", s(&input), "-o", s(&o3), "--report", "json"];
    assert_eq!(run(&json, true, true), 0);
    for o in [&o1, &o2, &o3] {
        assert!(o.exists(), "{}", o.display());
    }
    assert_eq!(run(&["inspect", s(&input)], true, true), 0);
    assert_eq!(
        run(&["inspect", s(&input), "--report", "json"], true, false),
        0
    );
}

#[test]
fn names_with_glob_characters_are_selected_and_overridden_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    write(
        &input,
        &[
            t("layer[0].w", Dtype::F32, &[8, 8], 1),
            t("layer0.w", Dtype::F32, &[8, 8], 2),
        ],
        &[],
    );
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[defaults]\nsparsity_level = 0.25\n[tensors.\"layer[0].w\"]\nsparsity_level = 0.75\n",
    )
    .unwrap();
    let out = dir.path().join("o.st");
    let (stdout, _) = ok(&[
        "run",
        s(&input),
        "-o",
        s(&out),
        "--tensors",
        "layer[0].w",
        "--config",
        s(&cfg),
        "-q",
        "--report",
        "json",
    ]);
    let r: Value = serde_json::from_str(&stdout).unwrap();
    let ts = r["tensors"].as_array().unwrap();
    assert_eq!(ts.len(), 1, "{r}");
    assert_eq!(ts[0]["name"], "layer[0].w");
    assert_eq!(ts[0]["config"]["sparsity_level"], 0.75);
}

#[cfg(unix)]
#[test]
fn a_dangling_symlink_output_is_not_replaced_without_force() {
    let (dir, input) = setup();
    let out = dir.path().join("o.st");
    std::os::unix::fs::symlink("nowhere", &out).unwrap();
    let e = fails(&["run", s(&input), "-o", s(&out)]);
    assert!(e.contains("already exists") && e.contains("--force"), "{e}");
    assert_eq!(std::fs::read_link(&out).unwrap(), Path::new("nowhere"));
    let masks = dir.path().join("m.st");
    std::os::unix::fs::symlink("nowhere", &masks).unwrap();
    let fresh = dir.path().join("fresh.st");
    let e = fails(&["run", s(&input), "-o", s(&fresh), "--masks", s(&masks)]);
    assert!(e.contains("m.st") && e.contains("already exists"), "{e}");
    assert!(std::fs::symlink_metadata(&fresh).is_err());
    // --force replaces the link itself (not its target).
    ok(&["run", s(&input), "-o", s(&out), "--force", "-q"]);
    assert!(std::fs::symlink_metadata(&out).unwrap().is_file());
    assert!(!dir.path().join("nowhere").exists());
}

/// The names of the files in `dir`, sorted.
fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn a_failure_mid_stream_leaves_no_output_and_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    // "a" is streamed into the output and masks temp files before "w" fails on its NaN.
    let mut w = t("w", Dtype::F32, &[4, 8], 2);
    w.bytes[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    write(&input, &[t("a", Dtype::F32, &[256, 64], 1), w], &[]);
    let (out, masks, state) = (
        dir.path().join("o.st"),
        dir.path().join("m.st"),
        dir.path().join("s.st"),
    );
    let mut args = vec!["run", s(&input), "-o", s(&out), "--masks", s(&masks)];
    args.extend(["--state", s(&state), "-q"]);
    let e = fails(&args);
    assert!(e.contains("NaN") && e.contains("\"w\""), "{e}");
    assert_eq!(dir_names(dir.path()), ["in.safetensors"]);
    // With --force over existing outputs: they are left as they were.
    for p in [&out, &masks, &state] {
        std::fs::write(p, b"old").unwrap();
    }
    args.push("--force");
    fails(&args);
    assert_eq!(
        dir_names(dir.path()),
        ["in.safetensors", "m.st", "o.st", "s.st"]
    );
    for p in [&out, &masks, &state] {
        assert_eq!(std::fs::read(p).unwrap(), b"old");
    }
}

#[test]
fn zero_zeros_per_block_is_accepted_with_a_warning() {
    let (dir, input) = setup();
    let out = dir.path().join("o.st");
    let (stdout, stderr) = ok(&[
        "run",
        s(&input),
        "-o",
        s(&out),
        "--zeros-per-block",
        "0",
        "--report",
        "json",
    ]);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("zeros_per_block is 0") && warnings[0].contains("\"z.emb\""),
        "{stderr}"
    );
    let r: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["totals"]["sparsity"], 0.0);
    // Nothing zeroed: the tensor data is the input's.
    let (a, b) = (std::fs::read(&input).unwrap(), std::fs::read(&out).unwrap());
    let (sa, sb) = (
        SafeTensors::deserialize(&a).unwrap(),
        SafeTensors::deserialize(&b).unwrap(),
    );
    for (name, v) in sa.tensors() {
        assert_eq!(v.data(), sb.tensor(&name).unwrap().data(), "{name}");
    }
    // --quiet silences it, like all chatter.
    let out2 = dir.path().join("o2.st");
    let (_, stderr) = ok(&[
        "run",
        s(&input),
        "-o",
        s(&out2),
        "--zeros-per-block",
        "0",
        "-q",
    ]);
    assert!(stderr.is_empty(), "{stderr}");
}

#[cfg(unix)]
#[test]
fn a_fifo_input_or_config_is_an_error_not_a_hang() {
    let (dir, input) = setup();
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipped: mkfifo is not available");
        return;
    }
    let out = dir.path().join("o.st");
    for args in [
        &["run", s(&fifo), "-o", s(&out)][..],
        &["inspect", s(&fifo)],
        &["run", s(&input), "-o", s(&out), "--config", s(&fifo)],
    ] {
        let e = fails(args);
        assert!(e.contains("not a regular file"), "{args:?}: {e}");
    }
    assert!(!out.exists());
}

/// `sparsify run INPUT -o OUTPUT ARGS... --report json`, its report.
fn run_json(input: &Path, output: &Path, args: &[&str]) -> Value {
    let mut all = vec!["run", s(input), "-o", s(output), "--report", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(&all).0).unwrap()
}

/// The f32 values of tensor `name` of a safetensors file.
fn f32s(bytes: &[u8], name: &str) -> Vec<f32> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::F32);
    t.data()
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A second rule, registered in the library only, reaches every part of the CLI: `--rule`,
/// `--set`, the report, the output, the masks and the state.
#[test]
fn the_magnitude_rule_end_to_end() {
    let (dir, input) = setup();
    let (out, masks, state) = (
        dir.path().join("o.st"),
        dir.path().join("m.st"),
        dir.path().join("s.st"),
    );
    let args = [
        "--rule",
        "magnitude",
        "--set",
        "threshold=0.5",
        "--masks",
        s(&masks),
        "--state",
        s(&state),
    ];
    let r = run_json(&input, &out, &args);
    // The text report shows the rule's own phrase for the config.
    let (text, _) = ok(&[
        "run",
        s(&input),
        "-o",
        s(&out),
        "--rule",
        "magnitude",
        "--set",
        "threshold=0.5",
        "--force",
        "-q",
    ]);
    assert!(text.contains("|x| < 0.5"), "{text}");
    assert_eq!(r["rule"], "magnitude");
    assert_eq!(r["tensors"][0]["name"], "z.emb");
    assert_eq!(
        r["tensors"][0]["config"],
        serde_json::json!({"threshold": 0.5})
    );
    // Every |x| < 0.5 is zeroed, everything else kept as it was.
    let (inb, outb) = (std::fs::read(&input).unwrap(), std::fs::read(&out).unwrap());
    let (a, b) = (f32s(&inb, "z.emb"), f32s(&outb, "z.emb"));
    let mut zeroed = 0;
    for (x, y) in a.iter().zip(&b) {
        if x.abs() < 0.5 {
            assert_eq!(*y, 0.0);
            zeroed += 1;
        } else {
            assert_eq!(x.to_bits(), y.to_bits());
        }
    }
    assert!(zeroed > 0 && zeroed < a.len());
    assert_eq!(r["tensors"][0]["zeroed"], zeroed);
    let (_, meta) = header(&outb);
    let added: Value = serde_json::from_str(&meta["sparsify"]).unwrap();
    assert_eq!(added["sparsifier"], "MagnitudeSparsifier");
    assert_eq!(added["tensors"]["z.emb"]["threshold"], 0.5);
    // The masks agree, and the state loads into a container over the registry's rule.
    let mb = std::fs::read(&masks).unwrap();
    let mst = SafeTensors::deserialize(&mb).unwrap();
    let dense = mst.tensor("z.emb").unwrap().data().to_vec();
    let registry = data_sparsifier::rule::Registry::builtin();
    let mut sp = registry
        .sparsifier("magnitude", &serde_json::json!({}))
        .unwrap();
    sp.load_state(&state, LoadOptions::default()).unwrap();
    assert_eq!(sp.get_mask("z_emb").unwrap().to_dense_u8(), dense);
    assert_eq!(sp.config("z_emb").unwrap()["threshold"], 0.5);
    // Stepping the loaded sparsifier gives the same mask again.
    sp.step().unwrap();
    assert_eq!(sp.get_mask("z_emb").unwrap().to_dense_u8(), dense);
}

#[test]
fn the_rule_and_its_keys_come_from_the_config_file_too() {
    let (dir, input) = setup();
    let out = dir.path().join("o.st");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "rule = \"magnitude\"\n[defaults]\nthreshold = 0.5\n[tensors.\"late\"]\nthreshold = 10.0\n",
    )
    .unwrap();
    let r = run_json(&input, &out, &["--config", s(&cfg), "-q"]);
    assert_eq!(r["rule"], "magnitude");
    let late = r["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "late")
        .unwrap();
    assert_eq!(late["config"]["threshold"], 10.0);
    assert_eq!(late["sparsity"], 1.0); // standard normal data: every |x| < 10
                                       // --set beats the file's [defaults], not its per-tensor override.
    let r = run_json(
        &input,
        &out,
        &["--config", s(&cfg), "--set", "threshold=0", "--force", "-q"],
    );
    assert_eq!(r["tensors"][0]["sparsity"], 0.0);
    assert_eq!(
        r["tensors"].as_array().unwrap().last().unwrap()["sparsity"],
        1.0
    );
}

#[test]
fn rule_and_set_errors_name_the_flag_and_the_fix() {
    let (dir, input) = setup();
    let o = dir.path().join("o.st");
    let o = s(&o);
    let run = |extra: &[&str]| {
        let mut args = vec!["run", s(&input), "-o", o];
        args.extend_from_slice(extra);
        fails(&args)
    };
    let e = run(&["--rule", "nope"]);
    assert!(
        e.contains("--rule") && e.contains("datanorm, magnitude"),
        "{e}"
    );
    let e = run(&["--rule", "magnitude", "--set", "threshold=-1"]);
    assert!(
        e.contains("--set threshold") && e.contains("outside"),
        "{e}"
    );
    let e = run(&["--rule", "magnitude", "--set", "treshold=1"]);
    assert!(e.contains("treshold") && e.contains("`threshold`"), "{e}");
    let e = run(&["--rule", "magnitude", "--block", "1x4"]);
    assert!(e.contains("--block") && e.contains("magnitude"), "{e}");
    let e = run(&["--set", "threshold"]);
    assert!(e.contains("KEY=VALUE"), "{e}");
    // --set reaches every key of the default rule too, with the flags' parsers.
    let e = run(&["--set", "sparse_block_shape=0x4"]);
    assert!(e.contains("--set sparse_block_shape"), "{e}");
    let r = run_json(
        &input,
        Path::new(o),
        &["--set", "sparse_block_shape=2x4", "--set", "norm=l2", "-q"],
    );
    assert_eq!(
        r["tensors"][0]["config"]["sparse_block_shape"],
        serde_json::json!([2, 4])
    );
    assert_eq!(r["tensors"][0]["config"]["norm"], "L2");
}
