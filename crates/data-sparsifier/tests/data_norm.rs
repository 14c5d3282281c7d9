//! DataNorm behaviour: the worked example of the reference (§2.4), the DataNormSparsifier tests of
//! PyTorch's `test_data_sparsifier.py` (§8.1) ported, configs, NaN policy, shapes, dtypes, and
//! property tests against a naive oracle that sorts everything stably.

use data_sparsifier::dtype::{bf16, f16};
use data_sparsifier::norm::{
    compute_mask, pruned_block_count, DataNorm, DataNormConfig, DataNormPatch, DataNormSparsifier,
    NanPolicy, Norm,
};
use data_sparsifier::random::randn;
use data_sparsifier::{
    embedding::BagMode, AddOptions, DType, DataSparsifier, Embedding, EmbeddingBag, Error,
    LoadOptions, Mask, Parameter, SquashOptions, Tensor, UpdateMask, Version,
};
use proptest::prelude::*;

mod common;
use common::oracle::oracle;

// ---------------------------------------------------------------------------------------------
// Helpers and the oracle
// ---------------------------------------------------------------------------------------------

fn t32(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape.to_vec()).unwrap()
}

fn cfg(sl: f64, block: (usize, usize), zpb: Option<usize>, norm: Norm) -> DataNormConfig {
    DataNormConfig {
        sparsity_level: sl,
        sparse_block_shape: block,
        zeros_per_block: zpb,
        norm,
        nan_policy: NanPolicy::Error,
    }
}

/// The mask of `data` under `config`, through the standalone kernel.
fn mask_of(data: &Tensor, config: &DataNormConfig) -> Vec<u8> {
    let mut m = Mask::ones(data.shape().to_vec());
    compute_mask("t", data.view(), config, &mut m).unwrap();
    m.to_dense_u8()
}

/// The mask through the container (`add_data` + `step`).
fn container_mask(data: &Tensor, config: &DataNormConfig) -> Vec<u8> {
    let mut sp = DataNormSparsifier::data_norm(config.clone()).unwrap();
    sp.add_data("t", data.clone()).unwrap();
    sp.step().unwrap();
    sp.get_mask("t").unwrap().to_dense_u8()
}

/// PyTorch's `_get_bounds_on_actual_sparsity`.
fn bounds_on_actual_sparsity(c: &DataNormConfig, shape: &[usize]) -> (f64, f64) {
    let zpb = c.zeros_per_block_effective();
    if zpb == 0 {
        return (1.0, 1.0);
    }
    let (h, w) = match shape {
        [n] => (1, *n),
        [a, b] => (*a, *b),
        _ => panic!(),
    };
    let (bh, bw) = c.sparse_block_shape;
    let nb = h.div_ceil(bh) * w.div_ceil(bw);
    let k = (nb as f64 * c.sparsity_level).round_ties_even();
    let vpb = (bh * bw) as f64;
    let round3 = |v: f64| (v * 1000.0).round() / 1000.0;
    let lo = round3(k / (h * w) as f64);
    let hi = round3((k * vpb.min(zpb as f64) / (h * w) as f64).min(1.0));
    (lo, hi)
}

fn sparsity(m: &Mask) -> f64 {
    ((1.0 - m.density()) * 1000.0).round() / 1000.0
}

// ---------------------------------------------------------------------------------------------
// §2.4 worked example
// ---------------------------------------------------------------------------------------------

const EXAMPLE: [f32; 15] = [
    0.9, -0.1, 0.4, 2.0, -0.3, //
    0.2, 0.5, -1.5, 0.05, 0.6, //
    -0.7, 0.01, 0.3, -0.2, 1.1,
];

fn example_mask(norm: Norm, zpb: usize) -> Vec<u8> {
    let c = cfg(0.5, (2, 2), Some(zpb), norm);
    let t = t32(&EXAMPLE, &[3, 5]);
    let a = mask_of(&t, &c);
    assert_eq!(a, container_mask(&t, &c));
    assert_eq!(a, oracle(&t, &c));
    a
}

#[test]
fn worked_example_l1() {
    #[rustfmt::skip]
    let cases: [(usize, [u8; 15]); 4] = [
        (4, [0,0,1,1,1, 0,0,1,1,1, 0,0,0,0,1]),
        (3, [1,0,1,1,1, 0,0,1,1,1, 0,0,0,0,1]),
        (2, [1,0,1,1,1, 0,1,1,1,1, 0,0,0,0,1]),
        (1, [1,0,1,1,1, 1,1,1,1,1, 1,0,1,0,1]),
    ];
    for (zpb, want) in cases {
        assert_eq!(example_mask(Norm::L1, zpb), want, "L1 zpb={zpb}");
    }
    // zeros_per_block = None is the whole block, like 4.
    let t = t32(&EXAMPLE, &[3, 5]);
    assert_eq!(
        mask_of(&t, &cfg(0.5, (2, 2), None, Norm::L1)),
        example_mask(Norm::L1, 4)
    );
}

#[test]
fn worked_example_l2() {
    #[rustfmt::skip]
    let whole = [1,1,1,1,0, 1,1,1,1,0, 0,0,0,0,1];
    for zpb in [4, 3, 2] {
        assert_eq!(example_mask(Norm::L2, zpb), whole, "L2 zpb={zpb}");
    }
    #[rustfmt::skip]
    let one = [1,1,1,1,0, 1,1,1,1,1, 1,0,1,0,1];
    assert_eq!(example_mask(Norm::L2, 1), one);
}

#[test]
fn worked_example_in_every_dtype() {
    // The example's values are far enough apart to rank the same in every precision.
    let t = t32(&EXAMPLE, &[3, 5]);
    for dtype in DType::ALL {
        let td = t.to_dtype(dtype);
        for norm in [Norm::L1, Norm::L2] {
            for zpb in 1..=4 {
                let c = cfg(0.5, (2, 2), Some(zpb), norm);
                assert_eq!(
                    mask_of(&td, &c),
                    example_mask(norm, zpb),
                    "{dtype} {norm} {zpb}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Other verified cases of the reference
// ---------------------------------------------------------------------------------------------

#[test]
fn n_of_m_2_of_4() {
    // 2:4 = level 1.0, block (1, 4), 2 zeros per block: exactly 2 zeros per group of 4, on the two
    // smallest |x|.
    let t = randn([64, 32], DType::F32, 11);
    let c = cfg(1.0, (1, 4), Some(2), Norm::L1);
    let m = mask_of(&t, &c);
    let x = t.to_f64_vec();
    for g in 0..(64 * 32 / 4) {
        let cells = &x[g * 4..g * 4 + 4];
        let bits = &m[g * 4..g * 4 + 4];
        assert_eq!(bits.iter().filter(|&&b| b == 0).count(), 2);
        let max_zero = (0..4)
            .filter(|&i| bits[i] == 0)
            .map(|i| cells[i].abs())
            .fold(0.0, f64::max);
        let min_kept = (0..4)
            .filter(|&i| bits[i] == 1)
            .map(|i| cells[i].abs())
            .fold(f64::MAX, f64::min);
        assert!(max_zero <= min_kept);
    }
    assert_eq!(m, oracle(&t, &c));
}

#[test]
fn level_extremes_and_block_bigger_than_data() {
    let t = randn([4, 4], DType::F32, 3);
    for sl in [1.0, 0.99] {
        assert!(mask_of(&t, &cfg(sl, (1, 1), None, Norm::L1))
            .iter()
            .all(|&b| b == 0));
    }
    assert!(mask_of(&t, &cfg(0.0, (1, 4), None, Norm::L1))
        .iter()
        .all(|&b| b == 1));
    // A (4,4) block over 2x3 data: one partial block with 6 real cells.
    let t = t32(&[0.5, -0.1, 0.3, 0.9, -0.2, 0.7], &[2, 3]);
    assert_eq!(mask_of(&t, &cfg(1.0, (4, 4), Some(16), Norm::L1)), [0; 6]);
    assert_eq!(
        mask_of(&t, &cfg(1.0, (4, 4), Some(5), Norm::L1)),
        [0, 0, 0, 1, 0, 0]
    );
}

#[test]
fn ties_go_to_the_lowest_index() {
    // 8 equal blocks at 0.5: blocks 0-3 (PyTorch agrees for <= 16 elements).
    let t = t32(&[1.0; 8], &[1, 8]);
    assert_eq!(
        mask_of(&t, &cfg(0.5, (1, 1), None, Norm::L1)),
        [0, 0, 0, 0, 1, 1, 1, 1]
    );
    // 40 equal blocks: blocks 0-19 (PyTorch's unstable sort happens to prune 20-39).
    let t = t32(&[2.0; 40], &[1, 40]);
    let m = mask_of(&t, &cfg(0.5, (1, 1), None, Norm::L1));
    assert!(m[..20].iter().all(|&b| b == 0) && m[20..].iter().all(|&b| b == 1));
    // Inside a block: [5,5,5,5] with 2 zeros zeroes positions 0 and 1.
    let t = t32(&[5.0, 5.0, 5.0, 5.0], &[1, 4]);
    assert_eq!(
        mask_of(&t, &cfg(1.0, (1, 4), Some(2), Norm::L1)),
        [0, 0, 1, 1]
    );
    // Equal |x| of opposite signs are ties too.
    let t = t32(&[-3.0, 3.0, 1.0, -1.0], &[1, 4]);
    assert_eq!(
        mask_of(&t, &cfg(1.0, (1, 4), Some(3), Norm::L2)),
        [0, 1, 0, 0]
    );
}

#[test]
fn ties_on_large_tables_use_the_fast_path_and_still_go_to_the_lowest_index() {
    // More blocks than the direct-selection limit, with heavy ties (scores 0, 1, 2 and 3), so
    // the sampled interval, the tie budgets per task and the block codes are all exercised.
    for (rows, levels, sl) in [
        (1200usize, 4u64, 0.5),
        (700, 2, 0.3),
        (600, 1, 0.7),
        (900, 50, 0.9),
    ] {
        let mut s = 7u64;
        let v: Vec<f32> = (0..rows * 256)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) % levels) as f32
            })
            .collect();
        let t = t32(&v, &[rows, 256]);
        for (block, zpb) in [((1, 1), None), ((1, 2), Some(1)), ((2, 2), Some(3))] {
            let c = cfg(sl, block, zpb, Norm::L1);
            assert_eq!(mask_of(&t, &c), oracle(&t, &c), "{rows} {levels} {block:?}");
        }
    }
}

#[test]
fn large_continuous_tables_match_the_oracle() {
    for (rows, cols, block, zpb, norm) in [
        (4096usize, 64usize, (1, 4), None, Norm::L1),
        (2048, 64, (1, 4), Some(2), Norm::L2),
        (2048, 64, (1, 4), Some(3), Norm::L1),
        (1024, 128, (1, 2), Some(1), Norm::L1),
        (1024, 128, (1, 8), Some(5), Norm::L2),
        (1000, 70, (1, 2), Some(1), Norm::L2),
        (1024, 130, (2, 2), Some(3), Norm::L1),
        (512, 65, (4, 4), Some(5), Norm::L1),
        (300, 300, (1, 1), None, Norm::L2),
        (300, 300, (3, 5), None, Norm::L2),
    ] {
        let t = randn([rows, cols], DType::F32, rows as u64);
        for sl in [0.1, 0.5, 0.95] {
            let c = cfg(sl, block, zpb, norm);
            assert_eq!(
                mask_of(&t, &c),
                oracle(&t, &c),
                "{rows}x{cols} {block:?} {sl}"
            );
        }
    }
    let t = randn([1200, 128], DType::BF16, 5);
    let c = cfg(0.6, (1, 4), None, Norm::L2);
    assert_eq!(mask_of(&t, &c), oracle(&t, &c));
    let t = randn([1200, 128], DType::F16, 5);
    assert_eq!(mask_of(&t, &c), oracle(&t, &c));
    let t = randn([1200, 128], DType::F64, 6);
    assert_eq!(mask_of(&t, &c), oracle(&t, &c));
}

// ---------------------------------------------------------------------------------------------
// Block counts (end of §8.1) and k
// ---------------------------------------------------------------------------------------------

#[test]
fn pruned_block_count_table() {
    // (data shape, block, level) -> pruned blocks, from the reference.
    type Row = ((usize, usize), (usize, usize), f64, usize, usize);
    let table: [Row; 12] = [
        ((1, 10), (1, 4), 0.5, 3, 2),
        ((1, 5), (1, 4), 0.5, 2, 1),
        ((4, 4), (1, 4), 0.5, 4, 2),
        ((1, 2), (2, 3), 0.7, 1, 1),
        ((4, 4), (2, 3), 0.3, 4, 1),
        ((1, 8), (1, 4), 0.5, 2, 1),
        ((5, 5), (1, 4), 0.5, 10, 5),
        ((10, 10), (2, 3), 0.7, 20, 14),
        ((10, 3), (1, 4), 0.5, 10, 5),
        ((20, 3), (1, 4), 0.5, 20, 10),
        ((15, 3), (2, 3), 0.7, 8, 6),
        ((20, 3), (2, 3), 0.3, 10, 3),
    ];
    for ((h, w), (bh, bw), sl, nb, k) in table {
        assert_eq!(h.div_ceil(bh) * w.div_ceil(bw), nb);
        assert_eq!(pruned_block_count(sl, nb), k, "{h}x{w} {bh}x{bw} {sl}");
        // The kernel prunes exactly that many whole blocks.
        let t = randn([h, w], DType::F32, 1);
        let m = mask_of(&t, &cfg(sl, (bh, bw), None, Norm::L1));
        let zeros = m.iter().filter(|&&b| b == 0).count();
        let (lo, hi) = bounds_on_actual_sparsity(&cfg(sl, (bh, bw), None, Norm::L1), &[h, w]);
        let s = ((zeros as f64 / (h * w) as f64) * 1000.0).round() / 1000.0;
        assert!(lo <= s && s <= hi, "{h}x{w}: {s} not in [{lo}, {hi}]");
    }
    assert_eq!(
        [1, 3, 5, 7, 9].map(|n| pruned_block_count(0.5, n)),
        [0, 2, 2, 4, 4]
    );
    assert_eq!(pruned_block_count(0.7, 20), 14);
    assert_eq!(pruned_block_count(0.29, 100), 29);
    assert_eq!(pruned_block_count(0.0, 100), 0);
    assert_eq!(pruned_block_count(1.0, 100), 100);
    assert_eq!(pruned_block_count(f64::NAN, 100), 0);
    assert_eq!(pruned_block_count(0.5, 0), 0);
}

// ---------------------------------------------------------------------------------------------
// Port of TestNormDataSparsifiers (test_data_sparsifier.py)
// ---------------------------------------------------------------------------------------------

/// One entry of a test: the data as handed to the sparsifier, and a way to read the caller's copy.
#[derive(Clone)]
enum Item {
    Tensor(Tensor),
    Param(Parameter),
    Emb(Embedding),
    Bag(EmbeddingBag),
}

impl Item {
    fn add(&self, sp: &mut DataNormSparsifier, name: &str, patch: Option<&DataNormPatch>) {
        let p = patch.cloned().unwrap_or_default();
        match self {
            Item::Tensor(t) => sp
                .add_data_with(name, t.clone(), AddOptions::patched(p.clone()))
                .map(|_| ()),
            Item::Param(x) => sp
                .add_data_with(name, x, AddOptions::patched(p.clone()))
                .map(|_| ()),
            Item::Emb(x) => sp
                .add_data_with(name, x, AddOptions::patched(p.clone()))
                .map(|_| ()),
            Item::Bag(x) => sp
                .add_data_with(name, x, AddOptions::patched(p.clone()))
                .map(|_| ()),
        }
        .unwrap();
    }
    fn shape(&self) -> Vec<usize> {
        match self {
            Item::Tensor(t) => t.shape().to_vec(),
            Item::Param(p) => p.shape(),
            Item::Emb(e) => e.weight().shape(),
            Item::Bag(e) => e.weight().shape(),
        }
    }
}

fn patch(sl: f64, block: (usize, usize), zpb: usize) -> DataNormPatch {
    DataNormPatch::new()
        .sparsity_level(sl)
        .sparse_block_shape(block)
        .zeros_per_block(zpb)
}

/// The class defaults of the tests: {0.5, (1,4), 4}.
fn defaults(norm: Norm) -> DataNormConfig {
    cfg(0.5, (1, 4), Some(4), norm)
}

fn make(
    data_list: &[(&str, Item)],
    with_config: &[(&str, Item, DataNormPatch)],
    norm: Norm,
) -> DataNormSparsifier {
    let mut sp = DataNormSparsifier::data_norm(defaults(norm)).unwrap();
    for (n, d) in data_list {
        d.add(&mut sp, n, None);
    }
    assert_eq!(sp.len(), data_list.len());
    for (n, d, p) in with_config {
        d.add(&mut sp, n, Some(p));
    }
    sp
}

fn expected_config(norm: Norm, p: Option<&DataNormPatch>) -> DataNormConfig {
    let mut c = defaults(norm);
    if let Some(p) = p {
        data_sparsifier::Config::apply(&mut c, p);
    }
    c
}

fn check_constructor(data_list: &[(&str, Item)], wc: &[(&str, Item, DataNormPatch)], norm: Norm) {
    let sp = make(data_list, wc, norm);
    assert_eq!(sp.len(), data_list.len() + wc.len());
    for (n, _) in data_list {
        assert_eq!(sp.config(n).unwrap(), &expected_config(norm, None));
    }
    for (n, _, p) in wc {
        assert_eq!(sp.config(n).unwrap(), &expected_config(norm, Some(p)));
    }
}

fn check_squash_mask(data_list: &[(&str, Item)], wc: &[(&str, Item, DataNormPatch)], norm: Norm) {
    let mut sp = make(data_list, wc, norm);
    let names: Vec<String> = sp.names().map(String::from).collect();
    for n in &names {
        assert!(sp.contains(n) && sp.is_parametrized(n).unwrap());
    }
    sp.step().unwrap();
    sp.squash_mask(None, SquashOptions::default()).unwrap();
    for n in &names {
        assert!(!sp.is_parametrized(n).unwrap());
        assert!(matches!(
            sp.get_data(n, Version::Original),
            Err(Error::Squashed { .. })
        ));
    }
}

fn check_add_data(data_list: &[(&str, Item)], wc: &[(&str, Item, DataNormPatch)], norm: Norm) {
    let mut sp = make(data_list, wc, norm);
    let entries: Vec<(String, Item, Option<DataNormPatch>)> = data_list
        .iter()
        .map(|(n, d)| (n.to_string(), d.clone(), None))
        .chain(
            wc.iter()
                .map(|(n, d, p)| (n.to_string(), d.clone(), Some(p.clone()))),
        )
        .collect();
    for (i, (name, _, p)) in entries.iter().enumerate() {
        let before = sp.get_data(name, Version::Original).unwrap();
        sp.step().unwrap();
        let mask = sp.get_mask(name).unwrap().clone();
        let new = randn(before.shape().to_vec(), before.dtype(), 100 + i as u64);
        let new_item = match &entries[i].1 {
            Item::Tensor(_) => Item::Tensor(new.clone()),
            Item::Param(_) => Item::Param(Parameter::new(new.clone())),
            Item::Emb(_) => Item::Emb(Embedding::from_weight(new.clone()).unwrap()),
            Item::Bag(_) => {
                Item::Bag(EmbeddingBag::from_weight(new.clone(), BagMode::Mean).unwrap())
            }
        };
        new_item.add(&mut sp, name, None);
        assert_eq!(sp.get_data(name, Version::Original).unwrap(), new);
        // The mask and the config are kept (reuse_mask = true).
        assert_eq!(sp.get_mask(name).unwrap(), &mask);
        assert_eq!(sp.config(name).unwrap(), &expected_config(norm, p.as_ref()));
        // The replaced data was not modified.
        let old_caller = match &entries[i].1 {
            Item::Tensor(t) => t.clone(),
            Item::Param(x) => x.snapshot(),
            Item::Emb(e) => e.weight().snapshot(),
            Item::Bag(e) => e.weight().snapshot(),
        };
        assert_eq!(old_caller, before);
    }
}

/// PyTorch's `check_state_dict`: `s1` holds everything and steps, `s2` holds only the first entry;
/// after `s2.load_state_dict(s1.state_dict())` both agree on every entry's mask, config, masked
/// data and parametrized flag. Here one entry of `s1` is also squashed (detached, data untouched)
/// so that both values of the flag go through the round trip, and the file format
/// (`save_state` / `load_state`) gives the same state.
fn check_state_dict(data_list: &[(&str, Item)], wc: &[(&str, Item, DataNormPatch)], norm: Norm) {
    let mut s1 = make(data_list, wc, norm);
    let mut s2 = make(&data_list[..1], &[], norm);
    s1.step().unwrap();
    let squashed = wc[wc.len() - 1].0;
    s1.squash_mask(
        Some(&[squashed]),
        SquashOptions {
            leave_parametrized: false,
        },
    )
    .unwrap();
    let sd = s1.state_dict().unwrap();
    let n0 = data_list[0].0;
    assert_ne!(sd, s2.state_dict().unwrap());
    assert_ne!(s1.get_mask(n0).unwrap(), s2.get_mask(n0).unwrap());

    s2.load_state_dict(sd.clone(), LoadOptions::default())
        .unwrap();
    assert_eq!(s2.len(), s1.len());
    assert_eq!(sd.entries.len(), s1.len());
    for e in &sd.entries {
        let n = e.name.as_str();
        assert_eq!(s2.get_mask(n).unwrap(), &e.mask, "{n}");
        assert_eq!(s1.get_mask(n).unwrap(), s2.get_mask(n).unwrap(), "{n}");
        assert_eq!(s1.config(n).unwrap(), s2.config(n).unwrap(), "{n}");
        assert_eq!(s2.config(n).unwrap().norm, norm, "{n}");
        assert_eq!(
            s1.get_data(n, Version::Masked).ok(),
            s2.get_data(n, Version::Masked).ok(),
            "{n}"
        );
        assert_eq!(
            s1.is_parametrized(n).unwrap(),
            s2.is_parametrized(n).unwrap(),
            "{n}"
        );
        assert_eq!(s2.is_parametrized(n).unwrap(), n != squashed, "{n}");
    }
    assert_eq!(s2.state_dict().unwrap(), sd);

    // Through the file: the same state.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("norm.safetensors");
    s1.save_state(&path).unwrap();
    let mut s3 = make(&data_list[..1], &[], norm);
    s3.load_state(&path, LoadOptions::default()).unwrap();
    assert_eq!(s3.state_dict().unwrap(), sd);
}

fn check_step(data_list: &[(&str, Item)], wc: &[(&str, Item, DataNormPatch)], norm: Norm) {
    let mut sp = make(data_list, wc, norm);
    let names: Vec<String> = sp.names().map(String::from).collect();
    for n in &names {
        assert_eq!(sp.get_mask(n).unwrap().sparsity(), 0.0);
    }
    sp.step().unwrap();
    for n in &names {
        let m = sp.get_mask(n).unwrap();
        let (lb, ub) = bounds_on_actual_sparsity(sp.config(n).unwrap(), m.shape());
        let s = sparsity(m);
        assert!(lb <= s && s <= ub, "{n}: sparsity {s} not in [{lb}, {ub}]");
        assert!(s > 0.0, "{n}");
    }
    // 100 iterations of replace + step on fresh 20x20 data.
    let mut sp = DataNormSparsifier::data_norm(cfg(0.5, (1, 4), Some(4), norm)).unwrap();
    for i in 0..100 {
        sp.add_data("test_data", randn([20, 20], DType::F32, 1000 + i))
            .unwrap();
        sp.step().unwrap();
        assert!(sparsity(sp.get_mask("test_data").unwrap()) > 0.0);
    }
}

fn check_step_2_of_4(norm: Norm) {
    let mut sp = DataNormSparsifier::data_norm(cfg(1.0, (1, 4), Some(2), norm)).unwrap();
    sp.add_data("test_data", randn([4, 4], DType::F32, 24))
        .unwrap();
    sp.step().unwrap();
    let m = sp.get_mask("test_data").unwrap();
    assert!((m.sparsity() - 0.5).abs() < 0.005);
    // As in PyTorch: every 1x4 group of the mask, sorted, is [0, 0, 1, 1]; and here also the
    // zeros sit on the two smallest |x| of the group.
    let bits = m.to_dense_u8();
    let x = sp
        .get_data("test_data", Version::Original)
        .unwrap()
        .to_f64_vec();
    for (g, xs) in bits.chunks(4).zip(x.chunks(4)) {
        let mut sorted = g.to_vec();
        sorted.sort();
        assert_eq!(sorted, [0, 0, 1, 1]);
        let max_zero = (0..4)
            .filter(|&i| g[i] == 0)
            .map(|i| xs[i].abs())
            .fold(0.0, f64::max);
        let min_kept = (0..4)
            .filter(|&i| g[i] == 1)
            .map(|i| xs[i].abs())
            .fold(f64::MAX, f64::min);
        assert!(max_zero <= min_kept);
    }
}

fn check_sparsity_level(
    data_list: &[(&str, Item)],
    wc: &[(&str, Item, DataNormPatch)],
    norm: Norm,
) {
    let levels = [-1.0, 0.0, 0.5, 1.0, 2.0];
    let blocks = [(1, 1), (1, 4), (2, 2), (4, 1)];
    let zpbs = [0, 1, 2, 3, 4];
    let mut sp = DataNormSparsifier::data_norm(defaults(norm)).unwrap();
    for (n, d) in data_list {
        d.add(&mut sp, n, None);
    }
    let data = &wc[0].1;
    let mut idx = 0;
    let mut added = 0;
    let mut rejected = 0;
    for &sl in &levels {
        for &b in &blocks {
            for &z in &zpbs {
                if z > b.0 * b.1 {
                    continue;
                }
                let name = format!("{}_{idx}", wc[0].0);
                idx += 1;
                let p = patch(sl, b, z);
                let r = match data {
                    Item::Tensor(t) => sp
                        .add_data_with(&name, t.clone(), AddOptions::patched(p.clone()))
                        .map(|_| ()),
                    Item::Param(x) => sp
                        .add_data_with(&name, x, AddOptions::patched(p.clone()))
                        .map(|_| ()),
                    Item::Emb(x) => sp
                        .add_data_with(&name, x, AddOptions::patched(p.clone()))
                        .map(|_| ()),
                    Item::Bag(x) => sp
                        .add_data_with(&name, x, AddOptions::patched(p.clone()))
                        .map(|_| ()),
                };
                if (0.0..=1.0).contains(&sl) {
                    r.unwrap();
                    added += 1;
                } else {
                    // PyTorch silently prunes for negative levels; here they are refused.
                    assert!(
                        matches!(
                            r,
                            Err(Error::InvalidConfig {
                                key: "sparsity_level",
                                ..
                            })
                        ),
                        "{sl}"
                    );
                    rejected += 1;
                }
            }
        }
    }
    assert_eq!(added + rejected, 85);
    assert_eq!(rejected, 34);
    sp.step().unwrap();
    sp.squash_mask(None, SquashOptions::default()).unwrap();
}

fn check_memory_reference(
    data_list: &[(&str, Item)],
    wc: &[(&str, Item, DataNormPatch)],
    norm: Norm,
) {
    let sp = make(data_list, wc, norm);
    for (n, d) in data_list
        .iter()
        .map(|(n, d)| (n, d))
        .chain(wc.iter().map(|(n, d, _)| (n, d)))
    {
        let handle = match d {
            Item::Tensor(_) => continue, // moved in: no caller handle
            Item::Param(x) => x.clone(),
            Item::Emb(e) => e.weight().clone(),
            Item::Bag(e) => e.weight().clone(),
        };
        let shape = d.shape();
        let new = randn(shape, DType::F32, 77);
        handle.set(new.clone());
        assert_eq!(sp.get_data(n, Version::Original).unwrap(), new);
    }
}

fn run_all_checks(data_list: &[(&str, Item)], wc: &[(&str, Item, DataNormPatch)]) {
    for norm in [Norm::L1, Norm::L2] {
        check_constructor(data_list, wc, norm);
        check_squash_mask(data_list, wc, norm);
        check_add_data(data_list, wc, norm);
        check_state_dict(data_list, wc, norm);
        check_step(data_list, wc, norm);
        check_step_2_of_4(norm);
        check_sparsity_level(data_list, wc, norm);
        check_memory_reference(data_list, wc, norm);
    }
}

#[test]
fn norm_tensors() {
    let r = |shape: [usize; 2], seed| Item::Tensor(randn(shape, DType::F32, seed));
    let data_list = [
        ("tensor1", r([1, 10], 1)),
        ("tensor2", r([4, 4], 2)),
        ("tensor3", r([1, 5], 3)),
    ];
    let wc = [
        ("tensor4", r([1, 2], 4), patch(0.7, (2, 3), 6)),
        ("tensor5", r([4, 4], 5), patch(0.3, (2, 3), 6)),
    ];
    run_all_checks(&data_list, &wc);
}

#[test]
fn norm_parameters() {
    let p = |shape: [usize; 2], seed| Item::Param(Parameter::new(randn(shape, DType::F32, seed)));
    let data_list = [
        ("param1", p([1, 8], 1)),
        ("param2", p([4, 4], 2)),
        ("param3", p([5, 5], 3)),
    ];
    let wc = [
        ("param4", p([10, 10], 4), patch(0.7, (2, 3), 6)),
        ("param5", p([4, 4], 5), patch(0.3, (2, 3), 6)),
    ];
    run_all_checks(&data_list, &wc);
}

#[test]
fn norm_embeddings() {
    let e = |n, seed| Item::Emb(Embedding::new(n, 3, DType::F32, None, seed).unwrap());
    let b = |n, seed| {
        Item::Bag(EmbeddingBag::new(n, 3, DType::F32, BagMode::Mean, None, seed).unwrap())
    };
    let data_list = [
        ("emb1", e(10, 1)),
        ("emb1_bag", b(10, 2)),
        ("emb2", e(20, 3)),
        ("emb2_bag", b(20, 4)),
    ];
    let wc = [
        ("emb3", e(15, 5), patch(0.7, (2, 3), 6)),
        ("emb3_bag", b(20, 6), patch(0.3, (2, 3), 6)),
    ];
    run_all_checks(&data_list, &wc);
}

// ---------------------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_configs_are_invalid_config_errors() {
    let bad = [
        (cfg(-0.5, (1, 4), None, Norm::L1), "sparsity_level"),
        (cfg(1.5, (1, 4), None, Norm::L1), "sparsity_level"),
        (cfg(f64::NAN, (1, 4), None, Norm::L1), "sparsity_level"),
        (cfg(f64::INFINITY, (1, 4), None, Norm::L1), "sparsity_level"),
        (cfg(0.5, (0, 4), None, Norm::L1), "sparse_block_shape"),
        (cfg(0.5, (4, 0), None, Norm::L1), "sparse_block_shape"),
        (
            cfg(0.5, (usize::MAX, 2), None, Norm::L1),
            "sparse_block_shape",
        ),
        (cfg(0.5, (2, 2), Some(5), Norm::L1), "zeros_per_block"),
    ];
    for (c, key) in bad {
        let e = c.validate("w").unwrap_err();
        assert!(
            matches!(e, Error::InvalidConfig { key: k, .. } if k == key),
            "{c:?}: {e}"
        );
        // Refused at construction, at add_data, at step (after config_mut) and by the kernel.
        assert!(DataNormSparsifier::data_norm(c.clone()).is_err());
        let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
        let p = DataNormPatch {
            sparsity_level: Some(c.sparsity_level),
            sparse_block_shape: Some(c.sparse_block_shape),
            zeros_per_block: c.zeros_per_block,
            ..Default::default()
        };
        let r = sp
            .add_data_with("w", t32(&[1.0; 8], &[2, 4]), AddOptions::patched(p.clone()))
            .map(|_| ());
        assert!(matches!(r, Err(Error::InvalidConfig { .. })));
        assert!(!sp.contains("w"));
        sp.add_data("w", t32(&[1.0; 8], &[2, 4])).unwrap();
        *sp.config_mut("w").unwrap() = c.clone();
        assert!(matches!(sp.step(), Err(Error::InvalidConfig { .. })));
        assert_eq!(sp.get_mask("w").unwrap().count_kept(), 8, "mask untouched");
        let t = t32(&[1.0; 8], &[2, 4]);
        let mut m = Mask::ones([2, 4]);
        assert!(matches!(
            compute_mask("w", t.view(), &c, &mut m),
            Err(Error::InvalidConfig { .. })
        ));
    }
    // The error names the data and the offending value.
    let msg = cfg(2.0, (1, 4), None, Norm::L1)
        .validate("emb_table")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("emb_table") && msg.contains("sparsity_level") && msg.contains('2'));
}

#[test]
fn edge_valid_configs() {
    // zpb = 0 keeps everything; zpb = block size is the whole block; level 0 and 1.
    let t = randn([6, 6], DType::F32, 9);
    assert!(mask_of(&t, &cfg(1.0, (2, 2), Some(0), Norm::L1))
        .iter()
        .all(|&b| b == 1));
    assert_eq!(
        mask_of(&t, &cfg(0.5, (2, 2), Some(4), Norm::L1)),
        mask_of(&t, &cfg(0.5, (2, 2), None, Norm::L1))
    );
    assert!(cfg(0.0, (1, 1), Some(1), Norm::L2).validate("x").is_ok());
    assert!(cfg(1.0, (3, 7), Some(21), Norm::L2).validate("x").is_ok());
}

#[test]
fn config_serde_and_patches() {
    let c = DataNormConfig {
        sparsity_level: 0.7,
        sparse_block_shape: (2, 3),
        zeros_per_block: Some(6),
        norm: Norm::L2,
        nan_policy: NanPolicy::RankLast,
    };
    let s = serde_json::to_string(&c).unwrap();
    assert_eq!(
        s,
        r#"{"sparsity_level":0.7,"sparse_block_shape":[2,3],"zeros_per_block":6,"norm":"L2","nan_policy":"rank_last"}"#
    );
    assert_eq!(serde_json::from_str::<DataNormConfig>(&s).unwrap(), c);
    assert!(serde_json::from_str::<DataNormConfig>(r#"{"norm":"L3"}"#).is_err());
    assert!(serde_json::from_str::<DataNormPatch>(r#"{"level":1}"#).is_err());
    let p = DataNormPatch::new()
        .sparsity_level(0.7)
        .block(2, 3)
        .zeros_per_block(6)
        .norm(Norm::L2)
        .nan_policy(NanPolicy::RankLast);
    let mut d = DataNormConfig::default();
    data_sparsifier::Config::apply(&mut d, &p);
    assert_eq!(d, c);
    // Replacing keeps the old config and applies the new patch on top (norm is per data here).
    let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    sp.add_data_with("a", t32(&[1.0; 4], &[1, 4]), AddOptions::patched(p.clone()))
        .unwrap();
    sp.add_data_with(
        "a",
        t32(&[2.0; 4], &[1, 4]),
        AddOptions::patched(DataNormPatch::new().norm(Norm::L1)),
    )
    .unwrap();
    assert_eq!(
        sp.config("a").unwrap(),
        &DataNormConfig {
            norm: Norm::L1,
            ..c.clone()
        }
    );
    assert_eq!("L1".parse::<Norm>().unwrap(), Norm::L1);
    assert_eq!("l2".parse::<Norm>().unwrap(), Norm::L2);
    assert!(matches!(
        "L3".parse::<Norm>(),
        Err(Error::InvalidConfig { .. })
    ));
    assert_eq!(Norm::L2.to_string(), "L2");
    assert_eq!(DataNorm::new().name(), "DataNormSparsifier");
}

// ---------------------------------------------------------------------------------------------
// NaN policy
// ---------------------------------------------------------------------------------------------

#[test]
fn nan_is_an_error_by_default_and_leaves_the_mask_alone() {
    let mut v = vec![1.0f32; 24];
    v[13] = f32::NAN;
    let t = t32(&v, &[4, 6]);
    for (sl, zpb) in [(0.5, None), (0.0, None), (1.0, Some(2)), (0.5, Some(0))] {
        let c = cfg(sl, (1, 4), zpb, Norm::L1);
        let mut m = Mask::zeros([4, 6]);
        m.set(5, true);
        let before = m.clone();
        let e = compute_mask("tbl", t.view(), &c, &mut m).unwrap_err();
        match &e {
            Error::NanInData {
                name,
                index,
                row,
                col,
            } => {
                assert_eq!((name.as_str(), *index, *row, *col), ("tbl", 13, 2, 1));
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("rank_last"));
        assert_eq!(m, before);
    }
    // The fast path (many blocks) reports the first NaN too.
    let mut big = randn([300, 256], DType::F32, 1);
    big.as_slice_mut::<f32>().unwrap()[70_001] = f32::NAN;
    big.as_slice_mut::<f32>().unwrap()[70_500] = f32::NAN;
    let mut m = Mask::ones([300, 256]);
    let e = compute_mask("big", big.view(), &cfg(0.5, (1, 1), None, Norm::L2), &mut m);
    assert!(matches!(
        e,
        Err(Error::NanInData {
            index: 70_001,
            row: 273,
            col: 113,
            ..
        })
    ));
    // Through the container: step fails and names the data.
    let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    sp.add_data("tbl", t).unwrap();
    assert!(matches!(sp.step(), Err(Error::NanInData { .. })));
}

#[test]
fn nan_rank_last_is_pytorch_behaviour() {
    let rl = |sl, block, zpb| DataNormConfig {
        nan_policy: NanPolicy::RankLast,
        ..cfg(sl, block, zpb, Norm::L1)
    };
    let t = t32(&[f32::NAN, 1.0, 2.0, 3.0], &[1, 4]);
    // Verified on torch: [[nan,1,2,3]], (1,1) blocks, 0.5 -> [1,0,0,1]; 0.75 -> [1,0,0,0].
    assert_eq!(mask_of(&t, &rl(0.5, (1, 1), None)), [1, 0, 0, 1]);
    assert_eq!(mask_of(&t, &rl(0.75, (1, 1), None)), [1, 0, 0, 0]);
    assert_eq!(mask_of(&t, &rl(1.0, (1, 1), None)), [0, 0, 0, 0]);
    // NaN cells are zeroed after every number inside a pruned block.
    let t = t32(&[f32::NAN, 5.0, 1.0, 2.0], &[1, 4]);
    assert_eq!(mask_of(&t, &rl(1.0, (1, 4), Some(3))), [1, 0, 0, 0]);
    assert_eq!(mask_of(&t, &rl(1.0, (1, 4), Some(2)),), [1, 1, 0, 0]);
    // NaN blocks are pruned last, lowest index first among them.
    let t = t32(&[f32::NAN, 1.0, 9.0, f32::NAN, 0.5, 7.0], &[2, 3]);
    let c = DataNormConfig {
        norm: Norm::L2,
        ..rl(0.5, (1, 3), None)
    };
    // Both blocks are NaN and one must be pruned: the lower index goes.
    assert_eq!(mask_of(&t, &c), [0, 0, 0, 1, 1, 1]);
    assert_eq!(
        mask_of(
            &t,
            &DataNormConfig {
                sparsity_level: 1.0,
                ..c.clone()
            }
        ),
        [0; 6]
    );
    let t = t32(&[f32::NAN, 1.0, 9.0, 3.0, 0.5, 7.0], &[2, 3]);
    assert_eq!(mask_of(&t, &c), [1, 1, 1, 0, 0, 0]);
    assert_eq!(mask_of(&t, &c), oracle(&t, &c));
}

#[test]
fn signed_zeros_tie_and_go_by_index() {
    // -0.0 and +0.0 have the same |x| and x²: equal scores, lowest index first, in every dtype.
    for dtype in DType::ALL {
        for norm in [Norm::L1, Norm::L2] {
            let t = Tensor::from_f64s(&[0.0, -0.0, -0.0, 0.0, 1.0, -1.0], dtype, [1, 6]).unwrap();
            // Blocks: four zeros of either sign, then ±1. Three pruned: blocks 0, 1 and 2.
            let m = mask_of(&t, &cfg(0.5, (1, 1), None, norm));
            assert_eq!(m, [0, 0, 0, 1, 1, 1], "{dtype} {norm}");
            assert_eq!(m, oracle(&t, &cfg(0.5, (1, 1), None, norm)));
            // Inside a block: [-0, +0] and [+0, -0] both zero cell 0.
            let t = Tensor::from_f64s(&[-0.0, 0.0, 0.0, -0.0], dtype, [1, 4]).unwrap();
            let c = cfg(1.0, (1, 2), Some(1), norm);
            assert_eq!(mask_of(&t, &c), [0, 1, 0, 1], "{dtype} {norm}");
            // Blocks of -0.0 and of +0.0 tie: the lower index is pruned, whatever the signs.
            let t = Tensor::from_f64s(&[0.0, 0.0, -0.0, -0.0], dtype, [1, 4]).unwrap();
            let c = cfg(0.5, (1, 2), None, norm);
            assert_eq!(mask_of(&t, &c), [0, 0, 1, 1], "{dtype} {norm}");
            let t = Tensor::from_f64s(&[-0.0, -0.0, 0.0, 0.0], dtype, [1, 4]).unwrap();
            assert_eq!(mask_of(&t, &c), [0, 0, 1, 1], "{dtype} {norm}");
        }
    }
}

#[test]
fn infinities_rank_above_numbers_and_below_nan() {
    let inf = f64::INFINITY;
    for dtype in DType::ALL {
        for norm in [Norm::L1, Norm::L2] {
            let c = |sl, block, zpb| DataNormConfig {
                nan_policy: NanPolicy::RankLast,
                ..cfg(sl, block, zpb, norm)
            };
            // +inf and -inf have the same |x|: they tie, lowest index first.
            let t = Tensor::from_f64s(&[1.0, inf, -inf, 2.0], dtype, [1, 4]).unwrap();
            assert_eq!(mask_of(&t, &c(0.5, (1, 1), None)), [0, 1, 1, 0], "{dtype}");
            assert_eq!(mask_of(&t, &c(0.75, (1, 1), None)), [0, 0, 1, 0], "{dtype}");
            let t = Tensor::from_f64s(&[1.0, -inf, inf, 2.0], dtype, [1, 4]).unwrap();
            assert_eq!(mask_of(&t, &c(0.75, (1, 1), None)), [0, 0, 1, 0], "{dtype}");
            // Inside a block: numbers, then the infinities by index.
            let t = Tensor::from_f64s(&[inf, 1.0, -inf, 2.0], dtype, [1, 4]).unwrap();
            assert_eq!(
                mask_of(&t, &c(1.0, (1, 4), Some(3))),
                [0, 0, 1, 0],
                "{dtype}"
            );
            // A block scoring +inf is pruned before a NaN block, and after every finite one.
            let nan = f64::NAN;
            let t = Tensor::from_f64s(&[nan, 0.0, inf, 1.0, 5.0, 5.0], dtype, [1, 6]).unwrap();
            assert_eq!(mask_of(&t, &c(1.0 / 3.0, (1, 2), None)), [1, 1, 1, 1, 0, 0]);
            assert_eq!(mask_of(&t, &c(2.0 / 3.0, (1, 2), None)), [1, 1, 0, 0, 0, 0]);
            assert_eq!(mask_of(&t, &c(1.0, (1, 2), None)), [0; 6]);
            // Inside a pruned block: inf is zeroed before NaN.
            let t = Tensor::from_f64s(&[nan, inf, 1.0, -inf], dtype, [1, 4]).unwrap();
            assert_eq!(
                mask_of(&t, &c(1.0, (1, 4), Some(2))),
                [1, 0, 0, 1],
                "{dtype}"
            );
            assert_eq!(
                mask_of(&t, &c(1.0, (1, 4), Some(3))),
                [1, 0, 0, 0],
                "{dtype}"
            );
            for zpb in 1..=4 {
                let cz = c(1.0, (1, 4), Some(zpb));
                assert_eq!(mask_of(&t, &cz), oracle(&t, &cz), "{dtype} {zpb}");
            }
        }
    }
}

#[test]
fn nan_in_a_partial_edge_block_is_zeroed_before_the_padding() {
    // 2x3 data, (2,2) blocks: the right-edge block holds column 2 only, (0,2) = 4 and (1,2) = NaN;
    // in PyTorch's padded block the padding cell (0,3) comes before the NaN cell in row-major
    // order. Here missing cells rank above every real cell, so with 2 zeros per block both real
    // cells of the edge block are zeroed (documented difference, NanPolicy docs).
    let t = t32(&[1.0, 2.0, 4.0, 3.0, 5.0, f32::NAN], &[2, 3]);
    let c = DataNormConfig {
        nan_policy: NanPolicy::RankLast,
        ..cfg(1.0, (2, 2), Some(2), Norm::L1)
    };
    // Left block: zeros on 1 and 2; edge block: 4, then the NaN.
    assert_eq!(mask_of(&t, &c), [0, 0, 0, 1, 1, 0]);
    assert_eq!(mask_of(&t, &c), oracle(&t, &c));
    // With one zero per block only the numeric cell goes.
    let c1 = DataNormConfig {
        zeros_per_block: Some(1),
        ..c.clone()
    };
    assert_eq!(mask_of(&t, &c1), [0, 1, 0, 1, 1, 1]);
}

// ---------------------------------------------------------------------------------------------
// Shapes and dtypes
// ---------------------------------------------------------------------------------------------

#[test]
fn empty_data_gives_an_empty_mask() {
    for shape in [vec![0usize, 5], vec![5, 0], vec![0], vec![0, 0]] {
        let t = Tensor::zeros(DType::F32, shape.clone());
        for sl in [0.0, 0.5, 1.0] {
            assert_eq!(
                mask_of(&t, &cfg(sl, (2, 2), Some(1), Norm::L1)),
                Vec::<u8>::new()
            );
        }
        let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
        sp.add_data("e", t).unwrap();
        sp.step().unwrap();
        assert_eq!(sp.get_mask("e").unwrap().shape(), &shape[..]);
        sp.squash_mask(None, SquashOptions::default()).unwrap();
    }
}

#[test]
fn one_d_column_and_scalar_data() {
    // 1-D (n,) is one row: same mask as (1, n), and it squashes fine (PyTorch breaks here).
    let v: Vec<f32> = (0..10).map(|i| ((i * 7) % 10) as f32 - 4.5).collect();
    let c = cfg(0.5, (1, 4), None, Norm::L1);
    let row = mask_of(&t32(&v, &[1, 10]), &c);
    assert_eq!(mask_of(&t32(&v, &[10]), &c), row);
    let mut sp = DataNormSparsifier::data_norm(c.clone()).unwrap();
    sp.add_data("v", t32(&v, &[10])).unwrap();
    sp.step().unwrap();
    assert_eq!(sp.get_mask("v").unwrap().shape(), &[10]);
    sp.squash_mask(None, SquashOptions::default()).unwrap();
    // (n, 1) is n rows of one column: a (1,4) block is one cell, a (4,1) block spans 4 rows.
    let col = t32(&v, &[10, 1]);
    let m = mask_of(&col, &cfg(0.5, (4, 1), None, Norm::L1));
    assert_eq!(m, oracle(&col, &cfg(0.5, (4, 1), None, Norm::L1)));
    assert_eq!(m, mask_of(&t32(&v, &[1, 10]), &c));
    let m = mask_of(&col, &cfg(0.5, (1, 4), None, Norm::L1));
    assert_eq!(m.iter().filter(|&&b| b == 0).count(), 5);
    // 0-D is 1x1: one block, pruned only at level > 0.5 (banker's rounding).
    let s = Tensor::from_vec(vec![3.0f32], Vec::<usize>::new()).unwrap();
    assert_eq!(mask_of(&s, &cfg(0.5, (1, 4), None, Norm::L1)), [1]);
    assert_eq!(mask_of(&s, &cfg(0.6, (1, 4), None, Norm::L1)), [0]);
    // 3-D is refused by the container and by the kernel.
    let t3 = Tensor::zeros(DType::F32, [2, 3, 4]);
    let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    assert!(matches!(
        sp.add_data("x", t3.clone()),
        Err(Error::UnsupportedShape { .. })
    ));
    let mut m = Mask::ones([2, 3, 4]);
    assert!(matches!(
        compute_mask("x", t3.view(), &DataNormConfig::default(), &mut m),
        Err(Error::UnsupportedShape { .. })
    ));
    // A mask of the wrong shape is refused.
    let mut m = Mask::ones([4, 4]);
    assert!(matches!(
        compute_mask(
            "x",
            t32(&[1.0; 16], &[2, 8]).view(),
            &DataNormConfig::default(),
            &mut m
        ),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn half_and_double_precision() {
    // Half-precision scores are rounded to the data type, so blocks whose means differ only below
    // f16 precision tie and the lower index is pruned.
    let a = [1.0f32, 1.0, 1.0, 1.0]; // mean 1.0
    let b = [1.0f32, 1.0, 1.0, 1.0 + 2.0f32.powi(-9)]; // mean 1 + 2^-11: rounds to 1.0 in f16
    let mut v = Vec::new();
    v.extend_from_slice(&b);
    v.extend_from_slice(&a);
    let t = t32(&v, &[1, 8]).to_dtype(DType::F16);
    assert_eq!(
        mask_of(&t, &cfg(0.5, (1, 4), None, Norm::L1)),
        [0, 0, 0, 0, 1, 1, 1, 1]
    );
    // In f32 the means differ and the smaller one (the second block) is pruned.
    let t = t32(&v, &[1, 8]);
    assert_eq!(
        mask_of(&t, &cfg(0.5, (1, 4), None, Norm::L1)),
        [1, 1, 1, 1, 0, 0, 0, 0]
    );
    // L2 on f16: x*x is rounded to f16 first: both squares underflow to 0, so L2 sees a tie (the
    // lower index is zeroed) where L1 does not.
    let t = Tensor::from_vec(
        vec![
            f16::from_f32(2.0f32.powi(-13)),
            f16::from_f32(-(2.0f32.powi(-14))),
        ],
        [1, 2],
    )
    .unwrap();
    assert_eq!(mask_of(&t, &cfg(1.0, (1, 2), Some(1), Norm::L2)), [0, 1]);
    assert_eq!(mask_of(&t, &cfg(1.0, (1, 2), Some(1), Norm::L1)), [1, 0]);
    for dtype in DType::ALL {
        let t = randn([37, 23], dtype, 4);
        for norm in [Norm::L1, Norm::L2] {
            let c = cfg(0.6, (2, 3), Some(4), norm);
            assert_eq!(mask_of(&t, &c), oracle(&t, &c), "{dtype} {norm}");
            assert_eq!(container_mask(&t, &c), oracle(&t, &c));
        }
    }
    let _ = bf16::ONE;
}

#[test]
fn squash_writes_the_mask_into_shared_handles() {
    let p = Parameter::new(t32(&EXAMPLE, &[3, 5]));
    let mut sp = DataSparsifier::new(DataNorm::new(), cfg(0.5, (2, 2), None, Norm::L1)).unwrap();
    sp.add_data("w", &p).unwrap();
    sp.step().unwrap();
    sp.squash_mask(None, SquashOptions::default()).unwrap();
    let got = p.snapshot().to_f64_vec();
    let m = example_mask(Norm::L1, 4);
    for i in 0..15 {
        assert_eq!(got[i], if m[i] == 1 { EXAMPLE[i] as f64 } else { 0.0 });
    }
    // Steps recompute from scratch: idempotent for unchanged data.
    let mut sp = DataNormSparsifier::data_norm(cfg(0.5, (1, 2), Some(1), Norm::L2)).unwrap();
    sp.add_data("x", randn([9, 9], DType::F32, 2)).unwrap();
    sp.step().unwrap();
    let first = sp.get_mask("x").unwrap().clone();
    sp.step().unwrap();
    assert_eq!(sp.get_mask("x").unwrap(), &first);
}

// ---------------------------------------------------------------------------------------------
// Property tests against the oracle
// ---------------------------------------------------------------------------------------------

fn data_strategy() -> impl Strategy<Value = (usize, usize, Vec<f64>)> {
    (0usize..24, 0usize..24, 0u8..4).prop_flat_map(|(h, w, kind)| {
        let n = h * w;
        let v = match kind {
            // Continuous.
            0 => proptest::collection::vec(-3.0f64..3.0, n).boxed(),
            // Small integers: many ties.
            1 => proptest::collection::vec((-3i32..=3).prop_map(|x| x as f64), n).boxed(),
            // Mostly zeros.
            2 => proptest::collection::vec(prop_oneof![4 => Just(0.0f64), 1 => -2.0f64..2.0], n)
                .boxed(),
            // Wide magnitudes (underflow / overflow in half precision).
            _ => proptest::collection::vec(
                (-20i32..20, any::<bool>()).prop_map(|(e, s)| {
                    let v = 2f64.powi(e) * 1.3;
                    if s {
                        -v
                    } else {
                        v
                    }
                }),
                n,
            )
            .boxed(),
        };
        (Just(h), Just(w), v)
    })
}

fn config_strategy() -> impl Strategy<Value = DataNormConfig> {
    (
        prop_oneof![
            Just(0.0f64),
            Just(0.5),
            Just(1.0),
            Just(0.25),
            Just(1.0 / 3.0),
            0.0f64..=1.0
        ],
        1usize..6,
        1usize..6,
        any::<bool>(),
        0usize..40,
        any::<bool>(),
    )
        .prop_map(|(sl, bh, bw, none, z, l2)| DataNormConfig {
            sparsity_level: sl,
            sparse_block_shape: (bh, bw),
            zeros_per_block: if none { None } else { Some(z % (bh * bw + 1)) },
            norm: if l2 { Norm::L2 } else { Norm::L1 },
            nan_policy: NanPolicy::RankLast,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn kernel_matches_the_oracle(
        (h, w, v) in data_strategy(),
        c in config_strategy(),
        dtype in prop_oneof![Just(DType::F32), Just(DType::F64), Just(DType::F16), Just(DType::BF16)],
        one_d in any::<bool>(),
        nans in proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
    ) {
        let mut v = v;
        if !v.is_empty() {
            let n = v.len();
            for i in &nans {
                v[i.index(n)] = f64::NAN;
            }
        }
        let shape = if one_d && h == 1 { vec![w] } else { vec![h, w] };
        let t = Tensor::from_f64s(&v, dtype, shape).unwrap();
        let got = mask_of(&t, &c);
        prop_assert_eq!(&got, &oracle(&t, &c));
        prop_assert_eq!(&got, &container_mask(&t, &c));
        // Invariants: pruned-block count and zeros per block.
        if c.zeros_per_block_effective() > 0 && h * w > 0 {
            let (bh, bw) = c.sparse_block_shape;
            let nb = h.div_ceil(bh) * w.div_ceil(bw);
            let k = pruned_block_count(c.sparsity_level, nb);
            let mut pruned = 0;
            for br in 0..h.div_ceil(bh) {
                for bc in 0..w.div_ceil(bw) {
                    let cells: Vec<usize> = (br * bh..((br + 1) * bh).min(h))
                        .flat_map(|r| (bc * bw..((bc + 1) * bw).min(w)).map(move |col| r * w + col))
                        .collect();
                    let z = cells.iter().filter(|&&i| got[i] == 0).count();
                    if z > 0 {
                        pruned += 1;
                        prop_assert_eq!(z, c.zeros_per_block_effective().min(cells.len()));
                    }
                }
            }
            prop_assert_eq!(pruned, k);
        }
    }

    #[test]
    fn error_policy_agrees_with_rank_last_on_clean_data((h, w, v) in data_strategy(), c in config_strategy()) {
        let t = Tensor::from_f64s(&v, DType::F32, vec![h, w]).unwrap();
        let strict = DataNormConfig { nan_policy: NanPolicy::Error, ..c.clone() };
        prop_assert_eq!(mask_of(&t, &strict), mask_of(&t, &c));
    }
}

#[test]
fn mask_apply_zeroes_exactly_the_cleared_bits_in_every_dtype() {
    // Squash goes through `Mask::apply`, which masks the elements' bits word by word.
    for n in [0usize, 1, 5, 63, 64, 65, 200, 1000] {
        let mut s = n as u64 + 1;
        let bits: Vec<bool> = (0..n)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Some all-ones and all-zeros words too.
                match (i / 64) % 3 {
                    0 => (s >> 40) & 1 == 1,
                    1 => true,
                    _ => false,
                }
            })
            .collect();
        let m = Mask::from_bools([n], &bits).unwrap();
        for dtype in DType::ALL {
            let v: Vec<f64> = (0..n).map(|i| i as f64 - 7.5).collect();
            let mut t = Tensor::from_f64s(&v, dtype, [n]).unwrap();
            t.apply_mask(&m).unwrap();
            let got = t.to_f64_vec();
            for i in 0..n {
                let want = if bits[i] {
                    Tensor::from_f64s(&[v[i]], dtype, [1]).unwrap().to_f64_vec()[0]
                } else {
                    0.0
                };
                assert_eq!(got[i], want, "{dtype} n={n} i={i}");
            }
        }
    }
}

#[test]
fn the_kept_scratch_buffer_does_not_change_results() {
    // Different sizes in a row reuse (or replace) the kernel's kept buffer; results must not depend
    // on what it held.
    let c = cfg(0.5, (1, 2), Some(1), Norm::L1);
    let big = randn([600, 128], DType::F32, 8);
    let small = randn([300, 256], DType::F32, 9);
    let want_big = oracle(&big, &c);
    let want_small = oracle(&small, &c);
    let mut scratch = data_sparsifier::norm::Scratch::new();
    let with_scratch = |t: &Tensor, c: &DataNormConfig, s: &mut data_sparsifier::norm::Scratch| {
        let mut m = Mask::ones(t.shape().to_vec());
        data_sparsifier::norm::compute_mask_with("t", t.view(), c, &mut m, s).unwrap();
        m.to_dense_u8()
    };
    for _ in 0..2 {
        assert_eq!(with_scratch(&big, &c, &mut scratch), want_big);
        assert_eq!(with_scratch(&small, &c, &mut scratch), want_small);
        assert_eq!(mask_of(&small, &c), want_small);
        assert_eq!(
            with_scratch(&big, &cfg(0.5, (1, 4), None, Norm::L2), &mut scratch),
            oracle(&big, &cfg(0.5, (1, 4), None, Norm::L2))
        );
    }
    assert!(scratch.release() >= 600 * 128 / 2);
    assert_eq!(with_scratch(&small, &c, &mut scratch), want_small);
    // The rule keeps its scratch between steps: the same answers, and it can be released.
    let mut sp = DataNormSparsifier::data_norm(c.clone()).unwrap();
    sp.add_data("big", big.clone()).unwrap();
    sp.add_data("small", small.clone()).unwrap();
    for _ in 0..2 {
        sp.step().unwrap();
        assert_eq!(sp.get_mask("big").unwrap().to_dense_u8(), want_big);
        assert_eq!(sp.get_mask("small").unwrap().to_dense_u8(), want_small);
    }
    assert!(sp.updater().release_scratch() >= 600 * 128 / 2);
    assert_eq!(sp.updater().release_scratch(), 0);
}
