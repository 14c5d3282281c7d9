//! `--global-sparsity F` / `global_sparsity = F`: one budget over every selected tensor, through
//! the real binary.

mod common;

use common::*;
use data_sparsifier::norm::budget::{BudgetTensor, GlobalBudget, Normalization};
use data_sparsifier::norm::DataNormConfig;
use data_sparsifier::{Mask, Tensor};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

fn report(args: &[&str]) -> Value {
    let out = sparsify()
        .args(args)
        .args(["-q", "--report", "json"])
        .output()
        .unwrap();
    let e = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "args {args:?}: {e}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// f32 values as a tensor.
fn f32s(bytes: &[u8], shape: &[usize]) -> Tensor {
    let v: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Tensor::from_vec(v, shape.to_vec()).unwrap()
}

/// Integer-valued f32 data (many equal block scores, within and across tensors).
fn ints(name: &'static str, shape: &[usize], seed: u64, scale: f32) -> T {
    let n: usize = shape.iter().product();
    let mut rng = data_sparsifier::random::Rng::new(seed);
    let bytes = (0..n)
        .flat_map(|_| ((rng.normal() * 3.0).round() as f32 * scale).to_le_bytes())
        .collect();
    T {
        name,
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        bytes,
    }
}

#[test]
fn the_budget_prunes_exactly_k_across_tensors_with_the_librarys_masks() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    // File order is not name order; different scales and block shapes; a tensor left out.
    let tensors = vec![
        ints("z.user", &[96, 16], 1, 0.01),
        ints("a.item", &[40, 32], 2, 5.0),
        ints("m.tail", &[33, 12], 3, 1.0),
        t("ids", Dtype::I64, &[4], 4),
    ];
    write(&input, &tensors, &[]);
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "global_sparsity = 0.63\n[defaults]\nsparse_block_shape = [1, 4]\n[tensors.\"m.tail\"]\nsparse_block_shape = [3, 3]\nzeros_per_block = 4\n",
    )
    .unwrap();
    for (norm, extra) in [
        (Normalization::Mean, None),
        (Normalization::None, Some("none")),
    ] {
        let out = dir.path().join(format!("out-{norm}.safetensors"));
        let mut args = vec!["run", s(&input), "-o", s(&out), "--config", s(&cfg)];
        if let Some(n) = extra {
            args.extend(["--global-normalization", n]);
        }
        let r = report(&args);
        // The library over the same tables: the same selection, mask for mask.
        let block = |n: &str| if n == "m.tail" { (3, 3) } else { (1, 4) };
        let configs: Vec<DataNormConfig> = tensors[..3]
            .iter()
            .map(|t| DataNormConfig {
                sparse_block_shape: block(t.name),
                zeros_per_block: (t.name == "m.tail").then_some(4),
                ..Default::default()
            })
            .collect();
        let data: Vec<Tensor> = tensors[..3]
            .iter()
            .map(|t| f32s(&t.bytes, &t.shape))
            .collect();
        let bt: Vec<BudgetTensor> = (0..3)
            .map(|i| BudgetTensor::new(tensors[i].name, data[i].view(), &configs[i]))
            .collect();
        let sel = GlobalBudget::new(0.63)
            .unwrap()
            .with_normalization(norm)
            .select(&bt)
            .unwrap();
        let total = 96 * 4 + 40 * 8 + 11 * 4;
        let k = (0.63f64 * total as f64).round_ties_even() as u64;
        assert_eq!(sel.pruned_blocks(), k);
        let g = &r["global"];
        assert_eq!(g["total_blocks"], total);
        assert_eq!(g["pruned_blocks"], k);
        assert_eq!(g["normalization"], norm.to_string());
        assert_eq!(g["level"], 0.63);
        let written = std::fs::read(&out).unwrap();
        let written = SafeTensors::deserialize(&written).unwrap();
        let mut sum = 0;
        for (i, t) in tensors[..3].iter().enumerate() {
            let row = reported(&r, t.name);
            let lv = sel.get(t.name).unwrap();
            assert_eq!(row["pruned_blocks"], lv.pruned_blocks, "{}", t.name);
            assert_eq!(row["blocks"], lv.blocks);
            assert_eq!(row["config"]["sparsity_level"], lv.level(), "{}", t.name);
            sum += lv.pruned_blocks;
            let mut mask = Mask::ones(t.shape.clone());
            sel.mask(t.name, data[i].view(), &configs[i], &mut mask)
                .unwrap();
            let mut expect: Vec<f32> = data[i].as_slice::<f32>().unwrap().to_vec();
            mask.apply(&mut expect);
            assert_eq!(
                f32s(written.tensor(t.name).unwrap().data(), &t.shape).to_f64_vec(),
                expect.iter().map(|&x| x as f64).collect::<Vec<_>>(),
                "{} ({norm})",
                t.name
            );
        }
        assert_eq!(sum, k);
        assert_eq!(written.tensor("ids").unwrap().data(), tensors[3].bytes);
    }
}

#[test]
fn ties_across_tensors_go_by_tensor_name_not_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    // Two identical tables, "b" first in the file: every score is tied across them.
    let table = ints("b", &[4, 4], 9, 1.0).bytes;
    let mk = |name| T {
        name,
        dtype: Dtype::F32,
        shape: vec![4, 4],
        bytes: table.clone(),
    };
    write(&input, &[mk("b"), mk("a")], &[]);
    let out = dir.path().join("o.safetensors");
    // k = 5 of 8 blocks: the fifth-lowest is tied between "a" and "b"; "a" (byte order) goes first.
    let r = report(&[
        "run",
        s(&input),
        "-o",
        s(&out),
        "--global-sparsity",
        "0.625",
    ]);
    let pruned = |n: &str| reported(&r, n)["pruned_blocks"].clone();
    assert_eq!((pruned("a"), pruned("b")), (3.into(), 2.into()));
}

#[test]
fn a_budget_over_a_sharded_checkpoint_equals_the_one_file_budget() {
    let dir = tempfile::tempdir().unwrap();
    let parts = [
        vec![ints("t0", &[64, 8], 1, 1.0), ints("t1", &[16, 16], 2, 0.1)],
        vec![ints("t2", &[32, 8], 3, 10.0)],
    ];
    let ck = dir.path().join("ck");
    std::fs::create_dir(&ck).unwrap();
    let mut map = serde_json::Map::new();
    let mut all = Vec::new();
    for (j, p) in parts.into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", j + 1);
        write(&ck.join(&file), &p, &[]);
        for t in &p {
            map.insert(t.name.into(), Value::from(file.clone()));
        }
        all.extend(p);
    }
    std::fs::write(
        ck.join("model.safetensors.index.json"),
        serde_json::json!({"weight_map": map}).to_string(),
    )
    .unwrap();
    let whole = dir.path().join("whole.safetensors");
    write(&whole, &all, &[]);
    let (o1, o2) = (dir.path().join("o1.safetensors"), dir.path().join("o2"));
    let r1 = report(&["run", s(&whole), "-o", s(&o1), "--global-sparsity", "0.7"]);
    let r2 = report(&["run", s(&ck), "-o", s(&o2), "--global-sparsity", "0.7"]);
    assert_eq!(r1["global"]["pruned_blocks"], r2["global"]["pruned_blocks"]);
    let one = std::fs::read(&o1).unwrap();
    let one = SafeTensors::deserialize(&one).unwrap();
    for (j, names) in [vec!["t0", "t1"], vec!["t2"]].iter().enumerate() {
        let b =
            std::fs::read(o2.join(format!("model-0000{}-of-00002.safetensors", j + 1))).unwrap();
        let st = SafeTensors::deserialize(&b).unwrap();
        for n in names {
            assert_eq!(
                st.tensor(n).unwrap().data(),
                one.tensor(n).unwrap().data(),
                "{n}"
            );
        }
    }
}

#[test]
fn budget_errors_are_one_line_with_the_fix() {
    let (dir, input) = setup();
    let out = dir.path().join("o.safetensors");
    let run = |extra: &[&str]| {
        let mut a = vec!["run", s(&input), "-o", s(&out), "-q"];
        a.extend(extra);
        fails(&a)
    };
    assert!(run(&["--global-sparsity", "1.5"]).contains("in [0, 1]"));
    assert!(run(&["--global-sparsity", "NaN"]).contains("in [0, 1]"));
    assert!(
        run(&["--global-sparsity", "0.5", "--sparsity-level", "0.3"])
            .contains("drop --sparsity-level")
    );
    assert!(run(&["--global-normalization", "none"]).contains("give --global-sparsity"));
    assert!(run(&["--global-sparsity", "0.5", "--global-normalization", "rms"]).contains("mean"));
    assert!(run(&["--global-sparsity", "0.5", "--rule", "magnitude"]).contains("--rule datanorm"));
    let cfg = dir.path().join("c.toml");
    let with = |text: &str| {
        std::fs::write(&cfg, text).unwrap();
        run(&["--config", s(&cfg)])
    };
    let e = with("global_sparsity = 2\n");
    assert!(e.contains("c.toml:1:") && e.contains("in [0, 1]"), "{e}");
    let e = with("global_sparsity = \"high\"\n");
    assert!(e.contains("c.toml:1:"), "{e}");
    let e = with("global_sparsity = 0.5\n\n[tensors.\"late\"]\nsparsity_level = 0.9\n");
    assert!(
        e.contains("c.toml:4:") && e.contains("sparsity_level") && e.contains("remove it"),
        "{e}"
    );
    let e = with("global_normalization = \"none\"\n");
    assert!(
        e.contains("c.toml:1:") && e.contains("set global_sparsity"),
        "{e}"
    );
    let e = with("global_sparsity = 0.5\nglobal_normalization = \"rms\"\n");
    assert!(e.contains("c.toml:2:") && e.contains("\"mean\""), "{e}");
    // NaN: the usual message and fix, from the budget's first pass.
    let nan_in = dir.path().join("nan.safetensors");
    let mut w = t("w", Dtype::F32, &[4, 8], 2);
    w.bytes[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    write(&nan_in, &[w], &[]);
    let e = fails(&[
        "run",
        s(&nan_in),
        "-o",
        s(&out),
        "--global-sparsity",
        "0.5",
        "-q",
    ]);
    assert!(
        e.contains("NaN") && e.contains("--nan-policy rank-last"),
        "{e}"
    );
    assert!(!out.exists());
    // A flag overrides the file's level.
    std::fs::write(&cfg, "global_sparsity = 0.9\n").unwrap();
    let r = report(&[
        "run",
        s(&input),
        "-o",
        s(&out),
        "--config",
        s(&cfg),
        "--global-sparsity",
        "0.25",
    ]);
    assert_eq!(r["global"]["level"], 0.25);
}
