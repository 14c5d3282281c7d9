//! The global sparsity budget against a sort-based oracle, DataNorm's own per-tensor result, and
//! itself split over two separate processes.

mod common;

use std::path::Path;
use std::process::Command;

use common::oracle::{block_scores, mask_of_pruned, rows_cols};
use data_sparsifier::norm::budget::{
    BudgetTensor, GlobalBudget, Normalization, Resolution, Selection, Survey, Tally,
};
use data_sparsifier::norm::{compute_mask, pruned_block_count, DataNormConfig, NanPolicy, Norm};
use data_sparsifier::random::{randn, Rng};
use data_sparsifier::{with_dtype, DType, Error, Mask, Tensor};
use proptest::prelude::*;

/// One table of a test budget.
#[derive(Debug)]
struct Table {
    name: String,
    data: Tensor,
    cfg: DataNormConfig,
}

fn tensors(tables: &[Table]) -> Vec<BudgetTensor<'_>> {
    tables
        .iter()
        .map(|t| BudgetTensor::new(&t.name, t.data.view(), &t.cfg))
        .collect()
}

/// NaN-last sort key.
fn nan_last(v: f64) -> (bool, f64) {
    (v.is_nan(), if v.is_nan() { 0.0 } else { v })
}

/// The documented rule, naively: every block's normalized score, one full sort by (normalized
/// score NaN last, tensor name, raw score, block index), the first k pruned. Returns per table
/// the pruned block count and the mask.
fn oracle(tables: &[Table], level: f64, norm: Normalization) -> Vec<(u64, Vec<u8>)> {
    let mut all = Vec::new();
    for (ti, t) in tables.iter().enumerate() {
        let (h, w) = rows_cols(&t.data);
        let scores = with_dtype!(t.data.dtype(), T => block_scores::<T>(t.data.as_slice::<T>().unwrap(), h, w, &t.cfg));
        let finite: Vec<f64> = scores.iter().copied().filter(|s| s.is_finite()).collect();
        let mean: f64 = finite.iter().map(|&s| s / finite.len() as f64).sum();
        let scale = match norm {
            Normalization::Mean if mean > 0.0 && mean.is_finite() => mean,
            _ => 1.0,
        };
        for (b, &s) in scores.iter().enumerate() {
            all.push((s / scale, t.name.clone(), s, b, ti));
        }
    }
    all.sort_by(|a, b| {
        nan_last(a.0)
            .partial_cmp(&nan_last(b.0))
            .unwrap()
            .then_with(|| a.1.cmp(&b.1))
            .then_with(|| nan_last(a.2).partial_cmp(&nan_last(b.2)).unwrap())
            .then_with(|| a.3.cmp(&b.3))
    });
    let k = pruned_block_count(level, all.len());
    let mut pruned: Vec<Vec<usize>> = vec![Vec::new(); tables.len()];
    for e in &all[..k] {
        pruned[e.4].push(e.3);
    }
    tables
        .iter()
        .zip(pruned)
        .map(|(t, p)| {
            let (h, w) = rows_cols(&t.data);
            let m = with_dtype!(t.data.dtype(), T => mask_of_pruned::<T>(t.data.as_slice::<T>().unwrap(), h, w, &t.cfg, &p));
            (p.len() as u64, m)
        })
        .collect()
}

/// The budget's selection and masks, per table.
fn run(tables: &[Table], budget: GlobalBudget) -> (Selection, Vec<(u64, Vec<u8>)>) {
    let sel = budget.select(&tensors(tables)).unwrap();
    let out = tables
        .iter()
        .map(|t| {
            let mut m = Mask::zeros(t.data.shape().to_vec());
            sel.mask(&t.name, t.data.view(), &t.cfg, &mut m).unwrap();
            (sel.get(&t.name).unwrap().pruned_blocks, m.to_dense_u8())
        })
        .collect();
    (sel, out)
}

/// A table of small integers (many ties, zeros) times `scale`, with NaN every `nan_every` cells.
#[allow(clippy::too_many_arguments)]
fn int_table(
    name: &str,
    dtype: DType,
    shape: Vec<usize>,
    levels: u64,
    scale: f64,
    nan_every: usize,
    seed: u64,
    cfg: DataNormConfig,
) -> Table {
    let n: usize = shape.iter().product();
    let mut rng = Rng::new(seed);
    let v: Vec<f64> = (0..n)
        .map(|i| {
            if nan_every > 0 && i % nan_every == nan_every / 2 {
                f64::NAN
            } else {
                (rng.below(levels) as f64 - (levels / 2) as f64) * scale
            }
        })
        .collect();
    Table {
        name: name.to_string(),
        data: Tensor::from_f64s(&v, dtype, shape).unwrap(),
        cfg,
    }
}

const DTYPES: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

fn table_strategy(l2: bool) -> impl Strategy<Value = Table> {
    (
        (0usize..4, 1usize..24, 1usize..24, 1usize..4, 1usize..6),
        (1u64..6, 0usize..3, 0usize..30, any::<bool>(), any::<u64>()),
        (0usize..26, prop_oneof![Just(0usize), 2usize..40]),
    )
        .prop_map(
            move |((d, h, w, bh, bw), (levels, sc, zpb, one_d, seed), (name, nan_every))| {
                let cfg = DataNormConfig {
                    sparse_block_shape: (bh, bw),
                    zeros_per_block: Some(zpb.min(bh * bw)),
                    norm: if l2 { Norm::L2 } else { Norm::L1 },
                    nan_policy: NanPolicy::RankLast,
                    ..Default::default()
                };
                let shape = if one_d { vec![h * w] } else { vec![h, w] };
                let name = format!("{}{seed}", (b'a' + name as u8) as char);
                let scale = [1.0, 0.25, 8.0][sc];
                int_table(&name, DTYPES[d], shape, levels, scale, nan_every, seed, cfg)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]
    #[test]
    fn masks_match_the_sort_oracle(
        (tables, level, mean) in any::<bool>().prop_flat_map(|l2| (
            proptest::collection::vec(table_strategy(l2), 1..5),
            prop_oneof![Just(0.0f64), Just(1.0), Just(0.5), 0.0f64..=1.0],
            any::<bool>(),
        ))
    ) {
        let mut names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        prop_assume!(names.len() == tables.len());
        let norm = if mean { Normalization::Mean } else { Normalization::None };
        let (sel, got) = run(&tables, GlobalBudget::new(level).unwrap().with_normalization(norm));
        let want = oracle(&tables, level, norm);
        let total: usize = tables.iter().map(|t| {
            let (h, w) = rows_cols(&t.data);
            h.div_ceil(t.cfg.sparse_block_shape.0) * w.div_ceil(t.cfg.sparse_block_shape.1)
        }).sum();
        prop_assert_eq!(sel.pruned_blocks(), pruned_block_count(level, total) as u64);
        prop_assert_eq!(sel.total_blocks(), total as u64);
        for ((t, g), w) in tables.iter().zip(&got).zip(&want) {
            prop_assert_eq!(g, w, "table {} ({:?} {:?})", t.name, t.data.dtype(), t.cfg);
        }
    }
}

#[test]
fn ties_go_across_tensors_by_name_whatever_the_order_given() {
    // Three tables of equal blocks: 12 blocks, 6 pruned; "a" first (4), then "b" (2), "c" none.
    let cfg = DataNormConfig::default();
    let mk = |name: &str| Table {
        name: name.to_string(),
        data: Tensor::from_vec(vec![1.0f32; 16], [4, 4]).unwrap(),
        cfg: cfg.clone(),
    };
    for order in [["b", "a", "c"], ["c", "b", "a"], ["a", "b", "c"]] {
        let tables: Vec<Table> = order.iter().map(|n| mk(n)).collect();
        for norm in [Normalization::None, Normalization::Mean] {
            let (sel, masks) = run(
                &tables,
                GlobalBudget::new(0.5).unwrap().with_normalization(norm),
            );
            let got: Vec<(&str, u64)> = sel
                .tensors()
                .iter()
                .map(|t| (t.name.as_str(), t.pruned_blocks))
                .collect();
            assert_eq!(got, [("a", 4), ("b", 2), ("c", 0)]);
            // Within "b", the lowest block indices go first: its first two rows.
            let b = order.iter().position(|&n| n == "b").unwrap();
            assert_eq!(masks[b].1[..8], [0; 8]);
            assert_eq!(masks[b].1[8..], [1; 8]);
        }
    }
}

#[test]
fn a_single_tensor_gets_data_norms_own_mask() {
    // Every dtype, sizes on both sides of the survey's full sample (16 384 blocks) and of the
    // kernel's sampled fast path (32 768 blocks), whole and partial zeroing, edge blocks.
    type Case = (&'static [usize], (usize, usize), Option<usize>);
    let cases: [Case; 5] = [
        (&[300, 64], (1, 4), None),
        (&[600, 256], (1, 4), Some(2)),
        (&[257, 130], (2, 3), Some(4)),
        (&[70_001], (1, 4), None),
        (&[129, 515], (4, 4), Some(5)),
    ];
    for (ci, (shape, block, zpb)) in cases.into_iter().enumerate() {
        for (di, dtype) in DTYPES.into_iter().enumerate() {
            let data = randn(shape.to_vec(), dtype, (ci * 10 + di) as u64);
            for (norm, level) in [(Norm::L1, 0.3), (Norm::L2, 0.71)] {
                let cfg = DataNormConfig {
                    sparsity_level: level,
                    sparse_block_shape: block,
                    zeros_per_block: zpb,
                    norm,
                    ..Default::default()
                };
                let mut want = Mask::ones(shape.to_vec());
                compute_mask("t", data.view(), &cfg, &mut want).unwrap();
                for nz in [Normalization::None, Normalization::Mean] {
                    let t = [BudgetTensor::new("t", data.view(), &cfg)];
                    let sel = GlobalBudget::new(level)
                        .unwrap()
                        .with_normalization(nz)
                        .select(&t)
                        .unwrap();
                    let mut got = Mask::zeros(shape.to_vec());
                    sel.mask("t", data.view(), &cfg, &mut got).unwrap();
                    assert_eq!(
                        got, want,
                        "{shape:?} {block:?} {zpb:?} {dtype:?} {norm:?} {nz:?}"
                    );
                    assert_eq!(sel.rounds(), 1, "{shape:?} {dtype:?}: the bracket missed");
                }
            }
        }
    }
}

#[test]
fn levels_zero_and_one() {
    let tables = [
        int_table(
            "a",
            DType::F32,
            vec![9, 7],
            4,
            1.0,
            0,
            1,
            DataNormConfig::default(),
        ),
        int_table(
            "b",
            DType::BF16,
            vec![5, 8],
            3,
            2.0,
            0,
            2,
            DataNormConfig {
                sparse_block_shape: (1, 4),
                zeros_per_block: Some(2),
                ..Default::default()
            },
        ),
    ];
    let (sel, masks) = run(&tables, GlobalBudget::new(0.0).unwrap());
    assert_eq!(sel.pruned_blocks(), 0);
    assert!(masks
        .iter()
        .all(|(k, m)| *k == 0 && m.iter().all(|&b| b == 1)));
    let (sel, masks) = run(&tables, GlobalBudget::new(1.0).unwrap());
    assert_eq!(sel.pruned_blocks(), sel.total_blocks());
    assert!(masks[0].1.iter().all(|&b| b == 0));
    // 2 of every 4 cells of "b" survive (2:4).
    assert_eq!(masks[1].1.iter().filter(|&&b| b == 1).count(), 20);
    assert_eq!(masks, oracle(&tables, 1.0, Normalization::Mean));
}

#[test]
fn nan_blocks_rank_last_across_tensors_or_are_an_error() {
    let rank_last = DataNormConfig {
        nan_policy: NanPolicy::RankLast,
        ..Default::default()
    };
    let mut a = vec![1.0f32; 8];
    a[1] = f32::NAN; // block 0 of "a" is NaN
    let mut b = vec![2.0f32; 8];
    b[6] = f32::NAN; // block 1 of "b" is NaN
    let tables = [
        Table {
            name: "b".into(),
            data: Tensor::from_vec(b, [8]).unwrap(),
            cfg: rank_last.clone(),
        },
        Table {
            name: "a".into(),
            data: Tensor::from_vec(a, [8]).unwrap(),
            cfg: rank_last.clone(),
        },
    ];
    // 4 blocks, 2 of them NaN; at 0.75 both numbers and then the first NaN block by name ("a").
    let (sel, masks) = run(&tables, GlobalBudget::new(0.75).unwrap());
    assert_eq!(sel.get("a").unwrap().pruned_blocks, 2);
    assert_eq!(sel.get("b").unwrap().pruned_blocks, 1);
    assert_eq!(masks, oracle(&tables, 0.75, Normalization::Mean));

    let strict = Table {
        name: "s".into(),
        data: Tensor::from_vec(vec![1.0f32, 2.0, f32::NAN, 4.0], [2, 2]).unwrap(),
        cfg: DataNormConfig::default(),
    };
    let err = GlobalBudget::new(0.5)
        .unwrap()
        .select(&tensors(std::slice::from_ref(&strict)))
        .unwrap_err();
    assert!(
        matches!(err, Error::NanInData { ref name, index: 2, row: 1, col: 0 } if name == "s"),
        "{err}"
    );
}

#[test]
fn bad_input_is_a_one_line_error() {
    let one_line = |e: Error| {
        let s = e.to_string();
        assert!(!s.contains('\n'), "{s}");
        s
    };
    for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
        let e = GlobalBudget::new(bad).unwrap_err();
        assert!(matches!(
            e,
            Error::InvalidConfig {
                key: "global_sparsity",
                ..
            }
        ));
        one_line(e);
    }
    let t = Tensor::from_vec(vec![1.0f32; 16], [4, 4]).unwrap();
    let cfg = DataNormConfig::default();
    let budget = GlobalBudget::new(0.5).unwrap();
    // Mixed norms.
    let l2 = DataNormConfig {
        norm: Norm::L2,
        ..Default::default()
    };
    let e = budget
        .select(&[
            BudgetTensor::new("a", t.view(), &cfg),
            BudgetTensor::new("b", t.view(), &l2),
        ])
        .unwrap_err();
    assert!(matches!(e, Error::BudgetMismatch { .. }));
    assert!(one_line(e).contains("\"b\""));
    // A tensor tallied or masked with another shape or block than it was surveyed with.
    let mut s = budget.survey();
    s.add("a", t.view(), &cfg).unwrap();
    let plan = s.plan().unwrap();
    let other = Tensor::from_vec(vec![1.0f32; 16], [2, 8]).unwrap();
    let e = plan.tally().add("a", other.view(), &cfg).unwrap_err();
    assert!(matches!(e, Error::BudgetMismatch { .. }));
    assert!(one_line(e).contains("4x4"));
    let e = plan.tally().add("zzz", t.view(), &cfg).unwrap_err();
    assert!(one_line(e).contains("\"zzz\""));
    // A tally missing a tensor of the plan.
    let mut s2 = budget.survey();
    s2.add("a", t.view(), &cfg).unwrap();
    s2.add("b", t.view(), &cfg).unwrap();
    let mut tally = s2.plan().unwrap().tally();
    tally.add("a", t.view(), &cfg).unwrap();
    let e = tally.resolve().unwrap_err();
    assert!(one_line(e).contains("\"b\""));
    // Merging states of different budgets, or the same tensor twice.
    let mut other_level = GlobalBudget::new(0.25).unwrap().survey();
    other_level.add("b", t.view(), &cfg).unwrap();
    let e = s.clone().merge(other_level).unwrap_err();
    assert!(matches!(e, Error::BudgetMismatch { .. }));
    one_line(e);
    let e = s.clone().merge(s.clone()).unwrap_err();
    assert!(matches!(e, Error::DuplicateName { .. }));
    one_line(e);
    let other_plan = s2.plan().unwrap().tally();
    let e = plan.tally().merge(other_plan).unwrap_err();
    assert!(matches!(e, Error::BudgetMismatch { .. }));
    // Masking a tensor the budget never saw, or with another block shape.
    let sel = budget
        .select(&[BudgetTensor::new("a", t.view(), &cfg)])
        .unwrap();
    let mut m = Mask::ones([4, 4]);
    assert!(matches!(
        sel.mask("b", t.view(), &cfg, &mut m),
        Err(Error::BudgetMismatch { .. })
    ));
    let square = DataNormConfig {
        sparse_block_shape: (2, 2),
        ..Default::default()
    };
    let e = sel.mask("a", t.view(), &square, &mut m).unwrap_err();
    assert!(one_line(e).contains("(1, 4)"));
    // 3-D data.
    let cube = Tensor::from_vec(vec![1.0f32; 8], [2, 2, 2]).unwrap();
    let e = budget.survey().add("cube", cube.view(), &cfg).unwrap_err();
    assert!(matches!(e, Error::UnsupportedShape { .. }));
}

// ---------------------------------------------------------------------------------------------
// Two processes: each holds two of four tables; the states travel as JSON files.

/// The four tables, split over ranks 0 and 1.
fn shard_tables(rank: usize) -> Vec<Table> {
    let mk = |name: &str, data: Tensor, block, zpb| Table {
        name: name.to_string(),
        data,
        cfg: DataNormConfig {
            sparse_block_shape: block,
            zeros_per_block: zpb,
            nan_policy: NanPolicy::RankLast,
            ..Default::default()
        },
    };
    let scaled = |t: Tensor, s: f64, dtype| {
        let v: Vec<f64> = t.to_f64_vec().iter().map(|x| x * s).collect();
        Tensor::from_f64s(&v, dtype, t.shape().to_vec()).unwrap()
    };
    let mut with_zero_rows = scaled(randn([400, 200], DType::F32, 7), 0.01, DType::F32);
    if let Some(v) = with_zero_rows.as_slice_mut::<f32>() {
        v[..200 * 40].fill(0.0);
    }
    let ints = int_table(
        "b.int",
        DType::BF16,
        vec![90, 33],
        5,
        1.0,
        97,
        3,
        DataNormConfig::default(),
    );
    match rank {
        0 => vec![
            mk("emb.small", with_zero_rows, (1, 4), None),
            mk("b.int", ints.data, (2, 3), Some(4)),
        ],
        _ => vec![
            mk(
                "emb.big",
                scaled(randn([300, 128], DType::F32, 8), 3.0, DType::F16),
                (1, 4),
                Some(2),
            ),
            mk("z.f64", randn([50, 10], DType::F64, 9), (2, 2), None),
        ],
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// One stage of one rank, in a separate process (see `two_processes_agree_with_one`).
#[test]
#[ignore = "a worker process of two_processes_agree_with_one"]
fn budget_worker() {
    let dir = std::path::PathBuf::from(std::env::var("BUDGET_DIR").unwrap());
    let rank: usize = std::env::var("BUDGET_RANK").unwrap().parse().unwrap();
    let stage = std::env::var("BUDGET_STAGE").unwrap();
    let tables = shard_tables(rank);
    let budget = GlobalBudget::new(0.6).unwrap();
    let out = match stage.as_str() {
        "survey" => {
            let mut s = budget.survey();
            for t in &tables {
                s.add(&t.name, t.data.view(), &t.cfg).unwrap();
            }
            serde_json::to_vec(&s).unwrap()
        }
        "tally" => {
            let plan: data_sparsifier::norm::budget::Plan = read_json(&dir.join("plan.json"));
            let mut tally = plan.tally();
            for t in &tables {
                tally.add(&t.name, t.data.view(), &t.cfg).unwrap();
            }
            serde_json::to_vec(&tally).unwrap()
        }
        _ => {
            let sel: Selection = read_json(&dir.join("selection.json"));
            let masks: Vec<(String, Vec<u8>)> = tables
                .iter()
                .map(|t| {
                    let mut m = Mask::ones(t.data.shape().to_vec());
                    sel.mask(&t.name, t.data.view(), &t.cfg, &mut m).unwrap();
                    (t.name.clone(), m.to_dense_u8())
                })
                .collect();
            serde_json::to_vec(&masks).unwrap()
        }
    };
    std::fs::write(dir.join(format!("{stage}-{rank}.json")), out).unwrap();
}

#[test]
fn two_processes_agree_with_one() {
    let dir = tempfile::tempdir().unwrap();
    let stage = |stage: &str| {
        for rank in 0..2 {
            let out = Command::new(std::env::current_exe().unwrap())
                .args(["budget_worker", "--exact", "--ignored", "--quiet"])
                .env("BUDGET_DIR", dir.path())
                .env("BUDGET_RANK", rank.to_string())
                .env("BUDGET_STAGE", stage)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "worker {rank} failed at {stage}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    stage("survey");
    let mut survey: Survey = read_json(&dir.path().join("survey-1.json"));
    survey
        .merge(read_json(&dir.path().join("survey-0.json")))
        .unwrap();
    let mut plan = survey.plan().unwrap();
    let selection = loop {
        std::fs::write(
            dir.path().join("plan.json"),
            serde_json::to_vec(&plan).unwrap(),
        )
        .unwrap();
        stage("tally");
        let mut tally: Tally = read_json(&dir.path().join("tally-0.json"));
        tally
            .merge(read_json(&dir.path().join("tally-1.json")))
            .unwrap();
        match tally.resolve().unwrap() {
            Resolution::Done(s) => break s,
            Resolution::Refine(p) => plan = p,
        }
    };
    std::fs::write(
        dir.path().join("selection.json"),
        serde_json::to_vec(&selection).unwrap(),
    )
    .unwrap();
    stage("mask");
    let mut got: Vec<(String, Vec<u8>)> = read_json(&dir.path().join("mask-0.json"));
    got.extend(read_json::<Vec<(String, Vec<u8>)>>(
        &dir.path().join("mask-1.json"),
    ));

    // One process over all four tables.
    let all: Vec<Table> = shard_tables(0).into_iter().chain(shard_tables(1)).collect();
    let (one, want) = run(&all, GlobalBudget::new(0.6).unwrap());
    assert_eq!(selection, one);
    let want: Vec<(String, Vec<u8>)> = all
        .iter()
        .map(|t| t.name.clone())
        .zip(want.into_iter().map(|w| w.1))
        .collect();
    assert_eq!(got, want);
    // The budget is spread unevenly: the per-table levels differ, the total is exact.
    let levels: Vec<f64> = one.tensors().iter().map(|t| t.level()).collect();
    assert!(levels.iter().any(|&l| (l - 0.6).abs() > 0.01), "{levels:?}");
    assert_eq!(
        one.pruned_blocks(),
        pruned_block_count(0.6, one.total_blocks() as usize) as u64
    );
}
