//! Port of the base-class tests of PyTorch's `test/ao/sparsity/test_data_sparsifier.py`
//! (`TestBaseDataSparsifier`, reference §8.1), plus the behaviour this crate adds or fixes.

use data_sparsifier::random::randn;
use data_sparsifier::DType;
use data_sparsifier::{
    embedding::BagMode, embedding::Bags, AddOptions, Config, Data, DataKind, DataSparsifier,
    Embedding, EmbeddingBag, Error, LoadOptions, Mask, Parameter, Result, SquashOptions, Tensor,
    TensorView, UpdateMask, Version,
};
use serde::{Deserialize, Serialize};

/// A squash that drops the mask without writing `mask · data` (PyTorch's `leave_parametrized=False`).
const DROP_MASK: SquashOptions = SquashOptions {
    leave_parametrized: false,
};

/// PyTorch's `ImplementedSparsifier`: zeroes the first row (or first element of 1-D data) and counts
/// steps in its per-name state.
struct Implemented;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct TestConfig {
    test: i64,
}
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestPatch {
    test: Option<i64>,
}
impl Config for TestConfig {
    type Patch = TestPatch;
    fn apply(&mut self, p: &TestPatch) {
        if let Some(t) = p.test {
            self.test = t;
        }
    }
}
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct StepCount {
    step_count: u64,
}

impl UpdateMask for Implemented {
    type Config = TestConfig;
    type State = StepCount;
    fn name(&self) -> &'static str {
        "ImplementedSparsifier"
    }
    fn validate(&self, name: &str, c: &TestConfig) -> Result<()> {
        if c.test < 0 {
            return Err(Error::invalid_config(name, "test", c.test, "must be >= 0"));
        }
        Ok(())
    }
    fn update_mask(
        &self,
        _name: &str,
        data: TensorView<'_>,
        _c: &TestConfig,
        state: &mut StepCount,
        mask: &mut Mask,
    ) -> Result<()> {
        let first = match data.shape() {
            [] => 1,
            [n] => n.min(&1).to_owned(),
            [_, w, ..] => *w,
        };
        mask.zero_range(0..first);
        state.step_count += 1;
        Ok(())
    }
}

fn patch(test: i64) -> TestPatch {
    TestPatch { test: Some(test) }
}

/// One test case: `data_list` (default config) and `data_with_config`.
struct Case {
    data_list: Vec<(&'static str, Data)>,
    with_config: Vec<(&'static str, Data, i64)>,
    defaults: i64,
}

fn make(case: &Case) -> DataSparsifier<Implemented> {
    let mut sp = DataSparsifier::new(
        Implemented,
        TestConfig {
            test: case.defaults,
        },
    )
    .unwrap()
    .with_data(case.data_list.iter().map(|(n, d)| (*n, d.clone())))
    .unwrap();
    assert_eq!(sp.len(), case.data_list.len());
    for (n, d, t) in &case.with_config {
        sp.add_data_with(n, d.clone(), AddOptions::patched(patch(*t)))
            .unwrap();
    }
    sp
}

fn expected_configs(case: &Case) -> Vec<(&'static str, i64)> {
    case.data_list
        .iter()
        .map(|(n, _)| (*n, case.defaults))
        .chain(case.with_config.iter().map(|(n, _, t)| (*n, *t)))
        .collect()
}

fn original_of(d: &Data) -> Tensor {
    match d {
        Data::Tensor(t) => t.clone(),
        Data::Parameter(p) => p.snapshot(),
        Data::Embedding(e) => e.weight().snapshot(),
        Data::EmbeddingBag(e) => e.weight().snapshot(),
        Data::External(..) => unreachable!(),
    }
}

fn check_constructor(case: &Case) {
    let sp = make(case);
    let expected = expected_configs(case);
    assert_eq!(sp.len(), expected.len());
    for (name, test) in expected {
        assert_eq!(sp.config(name).unwrap(), &TestConfig { test });
    }
    assert_eq!(
        sp.names().collect::<Vec<_>>(),
        expected_configs(case)
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
    );
}

fn check_squash_mask(case: &Case) {
    let mut sp = make(case);
    for (name, _) in expected_configs(case) {
        assert!(sp.is_parametrized(name).unwrap());
    }
    sp.step().unwrap();
    sp.squash_mask(None, SquashOptions::default()).unwrap();
    for (name, _) in expected_configs(case) {
        assert!(!sp.is_parametrized(name).unwrap());
        assert!(matches!(
            sp.get_data(name, Version::Original),
            Err(Error::Squashed { .. })
        ));
        // The masked data is still there, and equals the mask applied.
        let masked = sp.get_data(name, Version::Masked).unwrap();
        assert_eq!(
            masked.zero_fraction() > 0.0,
            sp.get_mask(name).unwrap().count_zeroed() > 0
        );
    }
}

fn check_add_data(case: &Case) {
    let mut sp = make(case);
    let all: Vec<(&str, Data)> = case
        .data_list
        .iter()
        .map(|(n, d)| (*n, d.clone()))
        .chain(case.with_config.iter().map(|(n, d, _)| (*n, d.clone())))
        .collect();
    for (i, (name, data1)) in all.iter().enumerate() {
        let old = original_of(data1);
        assert_eq!(sp.get_data(name, Version::Original).unwrap(), old);
        sp.step().unwrap();
        let mask = sp.get_mask(name).unwrap().clone();
        let data2 = randn(old.shape().to_vec(), old.dtype(), 100 + i as u64);
        // Replace with the same kind of data.
        let new: Data = match data1 {
            Data::Tensor(_) => Data::Tensor(data2.clone()),
            Data::Parameter(_) => Data::Parameter(Parameter::new(data2.clone())),
            Data::Embedding(_) => Data::Embedding(Embedding::from_weight(data2.clone()).unwrap()),
            Data::EmbeddingBag(_) => {
                Data::EmbeddingBag(EmbeddingBag::from_weight(data2.clone(), BagMode::Sum).unwrap())
            }
            Data::External(..) => unreachable!(),
        };
        sp.add_data(name, new).unwrap();
        assert_eq!(sp.get_data(name, Version::Original).unwrap(), data2);
        assert_eq!(
            sp.get_mask(name).unwrap(),
            &mask,
            "reuse_mask keeps the mask"
        );
        assert_eq!(original_of(data1), old, "replaced data is not modified");
        let expected = expected_configs(case)[i].1;
        assert_eq!(
            sp.config(name).unwrap().test,
            expected,
            "old config retained"
        );
    }
}

fn check_step(case: &Case) {
    let mut sp = make(case);
    let all: Vec<(&str, Tensor)> = case
        .data_list
        .iter()
        .map(|(n, d)| (*n, original_of(d)))
        .chain(
            case.with_config
                .iter()
                .map(|(n, d, _)| (*n, original_of(d))),
        )
        .collect();
    let first_row = |t: &Tensor| match t.shape() {
        [n] => (*n).min(1),
        [_, w] => *w,
        _ => 1,
    };
    for (name, data) in &all {
        assert_eq!(&sp.get_data(name, Version::Masked).unwrap(), data);
        assert_eq!(&sp.get_data(name, Version::Original).unwrap(), data);
        let m = sp.get_mask(name).unwrap();
        assert!((0..first_row(data)).all(|i| m.get(i)));
    }
    for _ in 0..3 {
        sp.step().unwrap();
    }
    for (name, data) in &all {
        let sparsified = sp.get_data(name, Version::Masked).unwrap().to_f64_vec();
        assert!(sparsified[..first_row(data)].iter().all(|x| *x == 0.0));
        assert_eq!(&sp.get_data(name, Version::Original).unwrap(), data);
        let m = sp.get_mask(name).unwrap();
        assert!((0..first_row(data)).all(|i| !m.get(i)));
        assert_eq!(sp.state(name).unwrap().step_count, 3);
    }
}

fn check_state_dict(case: &Case) {
    let mut s1 = make(case);
    let (n0, d0) = &case.data_list[0];
    let mut s2 = DataSparsifier::new(
        Implemented,
        TestConfig {
            test: case.defaults,
        },
    )
    .unwrap()
    .with_data([(*n0, d0.clone())])
    .unwrap();
    s1.step().unwrap();
    let sd = s1.state_dict().unwrap();
    assert_ne!(s1.state(n0).unwrap(), s2.state(n0).unwrap());
    assert_ne!(s1.get_mask(n0).unwrap(), s2.get_mask(n0).unwrap());
    s2.load_state_dict(sd.clone(), LoadOptions::default())
        .unwrap();
    assert_eq!(s1.len(), s2.len());
    for e in &sd.entries {
        let n = e.name.as_str();
        assert_eq!(s1.config(n).unwrap(), s2.config(n).unwrap());
        assert_eq!(s1.get_mask(n).unwrap(), s2.get_mask(n).unwrap());
        assert_eq!(s1.state(n).unwrap(), s2.state(n).unwrap());
        assert_eq!(
            s1.get_data(n, Version::Masked).unwrap(),
            s2.get_data(n, Version::Masked).unwrap()
        );
        assert_eq!(
            s1.is_parametrized(n).unwrap(),
            s2.is_parametrized(n).unwrap()
        );
        assert_eq!(s1.kind(n).unwrap(), s2.kind(n).unwrap());
    }
    // The saved state is a snapshot: a later step does not show through it.
    s1.step().unwrap();
    assert_eq!(sd.entries[0].state.step_count, 1);
}

fn check_memory_reference(case: &Case) {
    let sp = make(case);
    let all = case
        .data_list
        .iter()
        .map(|(n, d)| (*n, d))
        .chain(case.with_config.iter().map(|(n, d, _)| (*n, d)));
    for (i, (name, data)) in all.enumerate() {
        let handle = match data {
            Data::Tensor(_) => continue, // a plain tensor is moved into the sparsifier
            Data::Parameter(p) => p.clone(),
            Data::Embedding(e) => e.weight().clone(),
            Data::EmbeddingBag(e) => e.weight().clone(),
            Data::External(..) => unreachable!(),
        };
        // `weight.data = weight + randn(shape)`: the sparsifier sees the caller's new values.
        let old = handle.snapshot();
        let noise = randn(old.shape().to_vec(), old.dtype(), 7 + i as u64);
        let sum: Vec<f64> = old
            .to_f64_vec()
            .iter()
            .zip(noise.to_f64_vec())
            .map(|(a, b)| a + b)
            .collect();
        handle.set(Tensor::from_f64s(&sum, old.dtype(), old.shape().to_vec()).unwrap());
        assert!(sp
            .data_handle(name)
            .unwrap()
            .as_parameter()
            .unwrap()
            .ptr_eq(&handle));
        assert_eq!(
            sp.get_data(name, Version::Original).unwrap(),
            handle.snapshot()
        );
    }
}

fn run_all_checks(case: Case) {
    check_constructor(&case);
    check_squash_mask(&fresh(&case));
    check_add_data(&fresh(&case));
    check_step(&fresh(&case));
    check_state_dict(&fresh(&case));
    check_memory_reference(&fresh(&case));
}

/// Deep copies of the case's data, so checks that squash do not affect each other (PyTorch's tests
/// share and mutate their inputs; §9 item 15).
fn fresh(case: &Case) -> Case {
    let copy = |d: &Data| -> Data {
        match d {
            Data::Tensor(t) => Data::Tensor(t.clone()),
            Data::Parameter(p) => Data::Parameter(Parameter::new(p.snapshot())),
            Data::Embedding(e) => {
                Data::Embedding(Embedding::from_weight(e.weight().snapshot()).unwrap())
            }
            Data::EmbeddingBag(e) => Data::EmbeddingBag(
                EmbeddingBag::from_weight(e.weight().snapshot(), e.mode()).unwrap(),
            ),
            Data::External(..) => unreachable!(),
        }
    };
    Case {
        data_list: case.data_list.iter().map(|(n, d)| (*n, copy(d))).collect(),
        with_config: case
            .with_config
            .iter()
            .map(|(n, d, t)| (*n, copy(d), *t))
            .collect(),
        defaults: case.defaults,
    }
}

#[test]
fn test_tensors() {
    let t = |shape: [usize; 2], seed| Data::Tensor(randn(shape, DType::F32, seed));
    run_all_checks(Case {
        data_list: vec![
            ("tensor1", t([3, 3], 1)),
            ("tensor2", t([4, 4], 2)),
            ("tensor3", t([5, 5], 3)),
        ],
        with_config: vec![("tensor4", t([1, 1], 4), 7), ("tensor5", t([4, 4], 5), 8)],
        defaults: 3,
    });
}

#[test]
fn test_nn_parameters() {
    let p =
        |shape: [usize; 2], seed| Data::Parameter(Parameter::new(randn(shape, DType::F32, seed)));
    run_all_checks(Case {
        data_list: vec![
            ("param1", p([3, 3], 1)),
            ("param2", p([4, 4], 2)),
            ("param3", p([5, 5], 3)),
        ],
        with_config: vec![("param4", p([1, 1], 4), 7), ("param5", p([4, 4], 5), 8)],
        defaults: 3,
    });
}

#[test]
fn test_nn_embeddings() {
    let e = |n, seed| Data::Embedding(Embedding::new(n, 3, DType::F32, None, seed).unwrap());
    let b = |n, seed| {
        Data::EmbeddingBag(EmbeddingBag::new(n, 3, DType::F32, BagMode::Mean, None, seed).unwrap())
    };
    run_all_checks(Case {
        data_list: vec![
            ("emb1", e(10, 1)),
            ("emb1_bag", b(10, 2)),
            ("emb2", e(20, 3)),
            ("emb2_bag", b(20, 4)),
        ],
        with_config: vec![("emb3", e(15, 5), 7), ("emb3_bag", b(20, 6), 8)],
        defaults: 3,
    });
}

#[test]
fn every_dtype_works() {
    for dtype in DType::ALL {
        run_all_checks(Case {
            data_list: vec![("a", Data::Tensor(randn([4, 5], dtype, 1)))],
            with_config: vec![(
                "b",
                Data::Parameter(Parameter::new(randn([3, 2], dtype, 2))),
                4,
            )],
            defaults: 1,
        });
    }
}

fn sparsifier() -> DataSparsifier<Implemented> {
    DataSparsifier::new(Implemented, TestConfig { test: 3 }).unwrap()
}

#[test]
fn squash_is_seen_by_every_holder_of_a_parameter_and_an_embedding() {
    let mut sp = sparsifier();
    let param = Parameter::new(Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]).unwrap());
    let model_view = param.clone(); // e.g. a model holding the same parameter
    let emb = Embedding::from_weight(
        Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [3, 2]).unwrap(),
    )
    .unwrap();
    let bag = EmbeddingBag::from_parameter(emb.weight().clone(), BagMode::Sum, None).unwrap();
    sp.add_data("param", &param).unwrap();
    sp.add_data("emb", &emb).unwrap();
    sp.step().unwrap();
    // Before the squash the holders still see the dense values.
    assert_eq!(emb.forward(&[0]).unwrap().to_f64_vec(), vec![1.0, 2.0]);
    sp.squash_mask(None, SquashOptions::default()).unwrap();
    assert_eq!(model_view.read().to_f64_vec(), vec![0.0, 0.0, 3.0, 4.0]);
    assert_eq!(
        emb.forward(&[0, 2]).unwrap().to_f64_vec(),
        vec![0.0, 0.0, 5.0, 6.0]
    );
    let out = bag
        .forward(&[0, 1], Bags::Fixed { bag_size: 2 }, None)
        .unwrap();
    assert_eq!(out.to_f64_vec(), vec![3.0, 4.0]);
}

#[test]
fn squash_some_names_and_leave_parametrized_false() {
    let mut sp = sparsifier();
    let a = Parameter::new(randn([2, 3], DType::F32, 1));
    let b = Parameter::new(randn([2, 3], DType::F32, 2));
    let c = Parameter::new(randn([2, 3], DType::F32, 3));
    let (a0, b0) = (a.snapshot(), b.snapshot());
    sp.add_data("a", &a).unwrap();
    sp.add_data("b", &b).unwrap();
    sp.add_data("c", &c).unwrap();
    sp.step().unwrap();
    sp.squash_mask(Some(&["a"]), SquashOptions::default())
        .unwrap();
    sp.squash_mask(Some(&["b"]), DROP_MASK).unwrap();
    assert_eq!(a.snapshot(), a0.masked(sp.get_mask("a").unwrap()).unwrap());
    assert_eq!(
        b.snapshot(),
        b0,
        "leave_parametrized = false leaves the data untouched"
    );
    assert!(sp.is_parametrized("c").unwrap());
    assert!(!sp.is_parametrized("a").unwrap() && !sp.is_parametrized("b").unwrap());
    // The mask survives a squash.
    assert_eq!(sp.get_mask("a").unwrap().count_zeroed(), 3);
    // Squashing twice, or an unknown name, is an error that changes nothing.
    let before = c.snapshot();
    assert!(matches!(
        sp.squash_mask(Some(&["c", "a"]), SquashOptions::default()),
        Err(Error::Squashed { .. })
    ));
    assert!(matches!(
        sp.squash_mask(Some(&["c", "nope"]), SquashOptions::default()),
        Err(Error::UnknownName { .. })
    ));
    assert_eq!(c.snapshot(), before);
    assert!(sp.is_parametrized("c").unwrap());
    // step reaches a squashed entry: error, and no mask changes.
    assert!(matches!(sp.step(), Err(Error::Squashed { .. })));
    assert_eq!(sp.state("c").unwrap().step_count, 1);
    // Replacing a squashed name fails.
    assert!(matches!(
        sp.add_data("a", Parameter::new(randn([2, 3], DType::F32, 9))),
        Err(Error::Squashed { .. })
    ));
}

#[test]
fn names_are_validated() {
    let mut sp = sparsifier();
    let t = || randn([2, 2], DType::F32, 0);
    for bad in ["", "emb.weight", "a/b"] {
        let err = sp.add_data(bad, t()).unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{bad:?}: {err}");
    }
    assert!(
        sp.is_empty(),
        "nothing is registered when a name is rejected"
    );
    let msg = sp.add_data("emb.weight", t()).unwrap_err().to_string();
    assert!(
        msg.contains("emb_weight"),
        "the error says how to fix it: {msg}"
    );
    sp.add_data("x", t()).unwrap();
    let err = sp.add_data("x", Parameter::new(t())).unwrap_err();
    assert!(matches!(
        err,
        Error::KindChange {
            existing: "tensor",
            new: "parameter",
            ..
        }
    ));
    assert!(matches!(
        sp.get_mask("nope"),
        Err(Error::UnknownName { ref known, .. }) if known == "x"
    ));
}

#[test]
fn failed_replace_leaves_the_old_entry_intact() {
    let mut sp = sparsifier();
    let old = randn([2, 2], DType::F32, 1);
    sp.add_data_with("x", old.clone(), AddOptions::patched(patch(5)))
        .unwrap();
    sp.step().unwrap();
    let mask = sp.get_mask("x").unwrap().clone();
    // Shape mismatch with reuse_mask.
    let err = sp.add_data("x", randn([3, 2], DType::F32, 2)).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }));
    assert!(err.to_string().contains("reuse_mask"));
    // Invalid config in the patch.
    let err = sp
        .add_data_with(
            "x",
            randn([2, 2], DType::F32, 2),
            AddOptions::patched(patch(-1)),
        )
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { key: "test", .. }));
    assert_eq!(sp.get_data("x", Version::Original).unwrap(), old);
    assert_eq!(sp.get_mask("x").unwrap(), &mask);
    assert_eq!(sp.config("x").unwrap().test, 5);
    // reuse_mask = false starts a fresh mask of the new shape, keeping the old config + patch.
    sp.add_data_with(
        "x",
        randn([3, 2], DType::F32, 2),
        AddOptions {
            reuse_mask: false,
            ..AddOptions::default()
        },
    )
    .unwrap();
    assert_eq!(sp.get_mask("x").unwrap(), &Mask::ones([3, 2]));
    assert_eq!(sp.config("x").unwrap().test, 5);
    assert_eq!(
        sp.state("x").unwrap().step_count,
        1,
        "per-name state survives a replace"
    );
}

#[test]
fn shapes_are_kept_exactly() {
    let mut sp = sparsifier();
    sp.add_data("row", randn([10], DType::F32, 1)).unwrap();
    sp.add_data("col", randn([10, 1], DType::F32, 2)).unwrap();
    sp.add_data("scalar", randn(Vec::<usize>::new(), DType::F32, 3))
        .unwrap();
    sp.add_data("empty", randn([0, 4], DType::F32, 4)).unwrap();
    sp.step().unwrap();
    assert_eq!(sp.get_mask("row").unwrap().shape(), &[10]);
    assert_eq!(sp.get_mask("col").unwrap().shape(), &[10, 1]);
    assert_eq!(sp.get_mask("scalar").unwrap().shape(), &[] as &[usize]);
    assert_eq!(sp.get_mask("empty").unwrap().len(), 0);
    // (10, 1) is ten rows of one column: the first row is one element.
    assert_eq!(sp.get_mask("col").unwrap().count_zeroed(), 1);
    sp.squash_mask(None, SquashOptions::default()).unwrap();
    let err = sp
        .add_data("cube", randn([2, 3, 4], DType::F32, 5))
        .unwrap_err();
    assert!(matches!(err, Error::UnsupportedShape { .. }));
    assert!(err.to_string().contains("[2, 3, 4]"));
}

#[test]
fn step_is_skipped_while_mask_update_is_disabled() {
    let mut sp = sparsifier();
    sp.add_data("x", randn([2, 2], DType::F32, 1)).unwrap();
    sp.set_mask_update_enabled(false);
    sp.step().unwrap();
    assert_eq!(sp.state("x").unwrap().step_count, 0);
    assert_eq!(sp.get_mask("x").unwrap().count_zeroed(), 0);
    sp.set_mask_update_enabled(true);
    sp.step().unwrap();
    assert_eq!(sp.state("x").unwrap().step_count, 1);
}

#[test]
fn invalid_defaults_and_configs_are_rejected_before_any_change() {
    assert!(DataSparsifier::new(Implemented, TestConfig { test: -1 }).is_err());
    let mut sp = sparsifier();
    sp.add_data("x", randn([2, 2], DType::F32, 1)).unwrap();
    sp.config_mut("x").unwrap().test = -4;
    assert!(matches!(sp.step(), Err(Error::InvalidConfig { .. })));
    assert_eq!(sp.state("x").unwrap().step_count, 0);
}

#[test]
fn remove_and_display() {
    let mut sp = sparsifier();
    let p = Parameter::new(randn([2, 2], DType::F32, 1));
    sp.add_data("p", &p).unwrap();
    sp.add_data_with(
        "t",
        randn([1, 3], DType::F32, 2),
        AddOptions::patched(patch(9)),
    )
    .unwrap();
    let text = sp.to_string();
    assert!(text.starts_with("ImplementedSparsifier ("), "{text}");
    assert!(text.contains("\tData Group\n\t    name: p"));
    assert!(text.contains("test: 9"));
    let h = sp.remove_data("p").unwrap();
    assert!(h.as_parameter().unwrap().ptr_eq(&p));
    assert_eq!(sp.names().collect::<Vec<_>>(), vec!["t"]);
    assert!(sp.remove_data("p").is_err());
}

#[test]
fn add_data_returns_the_sparsified_view() {
    let mut sp = sparsifier();
    let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]).unwrap();
    let view = sp.add_data("x", t.clone()).unwrap();
    assert_eq!(view.shape(), vec![2, 2]);
    assert_eq!(view.to_tensor().unwrap(), t);
    sp.step().unwrap();
    let view = sp.masked("x").unwrap();
    assert_eq!(view.get_f64(0), Some(0.0));
    assert_eq!(view.get_f64(3), Some(4.0));
    assert_eq!(
        view.to_tensor().unwrap().to_f64_vec(),
        vec![0.0, 0.0, 3.0, 4.0]
    );
}

#[test]
fn data_kinds_are_reported() {
    let mut sp = sparsifier();
    sp.add_data("t", randn([2, 2], DType::F32, 1)).unwrap();
    sp.add_data("p", Parameter::new(randn([2, 2], DType::F32, 1)))
        .unwrap();
    sp.add_data("e", Embedding::new(4, 2, DType::F32, None, 0).unwrap())
        .unwrap();
    sp.add_data(
        "b",
        EmbeddingBag::new(4, 2, DType::F32, BagMode::Max, None, 0).unwrap(),
    )
    .unwrap();
    let kinds: Vec<DataKind> = sp.names().map(|n| sp.kind(n).unwrap()).collect();
    assert_eq!(
        kinds,
        vec![
            DataKind::Tensor,
            DataKind::Parameter,
            DataKind::Embedding,
            DataKind::EmbeddingBag
        ]
    );
}

#[test]
fn masked_reads_after_a_squash_return_the_data_as_it_is() {
    // PyTorch: after remove_parametrizations the container attribute is the plain tensor: the
    // squashed values with leave_parametrized, the untouched data without.
    let mut sp = sparsifier();
    let a = Parameter::new(randn([2, 3], DType::F32, 1));
    let b = Parameter::new(randn([2, 3], DType::F32, 2));
    let b0 = b.snapshot();
    sp.add_data("a", &a).unwrap();
    sp.add_data("b", &b).unwrap();
    sp.step().unwrap();
    sp.squash_mask(Some(&["a"]), SquashOptions::default())
        .unwrap();
    sp.squash_mask(Some(&["b"]), DROP_MASK).unwrap();
    assert_eq!(sp.get_data("a", Version::Masked).unwrap(), a.snapshot());
    assert_eq!(sp.get_data("b", Version::Masked).unwrap(), b0);
    let view = sp.masked("b").unwrap();
    assert!(!view.is_parametrized());
    assert_eq!(view.get_f64(0), b0.view().data().get_f64(0));
    // The mask stays readable, with its zeroed first row.
    assert_eq!(sp.get_mask("b").unwrap().count_zeroed(), 3);
}

#[test]
fn squash_with_a_repeated_name_changes_nothing() {
    let mut sp = sparsifier();
    let a = Parameter::new(randn([2, 3], DType::F32, 1));
    let a0 = a.snapshot();
    sp.add_data("a", &a).unwrap();
    sp.step().unwrap();
    let err = sp
        .squash_mask(Some(&["a", "a"]), SquashOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateName { .. }), "{err}");
    assert!(err.to_string().contains("\"a\""), "{err}");
    assert_eq!(a.snapshot(), a0);
    assert!(sp.is_parametrized("a").unwrap());
}

#[test]
fn data_that_changes_shape_behind_the_sparsifier_is_an_error_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let mut sp = sparsifier();
    let p = Parameter::new(randn([2, 3], DType::F32, 1));
    sp.add_data("w", &p).unwrap();
    sp.step().unwrap();
    let mask_before = sp.get_mask("w").unwrap().clone();
    // Another holder replaces the tensor with one of another shape (PyTorch: `.data = ...`).
    let replacement = randn([3, 3], DType::F32, 2);
    p.set(replacement.clone());

    let names_w = |e: Error| {
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
        assert!(e.to_string().contains("\"w\""), "{e}");
    };
    names_w(sp.get_data("w", Version::Masked).unwrap_err());
    names_w(sp.masked("w").unwrap().to_tensor().unwrap_err());
    assert_eq!(sp.masked("w").unwrap().get_f64(0), None);
    names_w(sp.step().unwrap_err());
    assert_eq!(
        sp.get_mask("w").unwrap(),
        &mask_before,
        "a refused step changes no mask"
    );
    assert_eq!(sp.state("w").unwrap().step_count, 1);
    names_w(sp.squash_mask(None, SquashOptions::default()).unwrap_err());
    assert_eq!(p.snapshot(), replacement, "a refused squash writes nothing");
    names_w(sp.state_dict().unwrap_err());
    let path = dir.path().join("s.safetensors");
    names_w(sp.save_state(&path).unwrap_err());
    assert!(!path.exists());
    // The original is still readable, and re-adding with a fresh mask recovers.
    assert_eq!(sp.get_data("w", Version::Original).unwrap(), replacement);
    sp.add_data_with(
        "w",
        &p,
        AddOptions {
            reuse_mask: false,
            ..AddOptions::default()
        },
    )
    .unwrap();
    sp.step().unwrap();
    assert_eq!(sp.get_mask("w").unwrap().count_zeroed(), 3);
}

#[test]
fn a_hand_set_mask_of_another_shape_is_refused() {
    let mut sp = sparsifier();
    let p = Parameter::new(randn([2, 3], DType::F32, 1));
    sp.add_data("w", &p).unwrap();
    *sp.get_mask_mut("w").unwrap() = Mask::ones([7]);
    assert!(matches!(
        sp.get_data("w", Version::Masked),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(sp.step(), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(
        sp.squash_mask(None, SquashOptions::default()),
        Err(Error::ShapeMismatch { .. })
    ));
    // Squashing without applying the mask needs no fitting mask.
    sp.squash_mask(None, DROP_MASK).unwrap();
    assert_eq!(sp.get_data("w", Version::Masked).unwrap(), p.snapshot());
}

/// Fails the way a buggy implementer might: a mask operation whose error does not name the data.
struct Failing;
impl UpdateMask for Failing {
    type Config = TestConfig;
    type State = StepCount;
    fn update_mask(
        &self,
        name: &str,
        _data: TensorView<'_>,
        _c: &TestConfig,
        state: &mut StepCount,
        mask: &mut Mask,
    ) -> Result<()> {
        state.step_count += 1;
        if name == "bad" {
            mask.and(&Mask::ones([1]))?;
        }
        mask.zero_range(0..1);
        Ok(())
    }
}

#[test]
fn update_mask_errors_name_the_data_and_do_not_count_a_step() {
    let mut sp = DataSparsifier::new(Failing, TestConfig { test: 0 }).unwrap();
    sp.add_data("good", randn([2, 2], DType::F32, 1)).unwrap();
    sp.add_data("bad", randn([2, 2], DType::F32, 2)).unwrap();
    let err = sp.step().unwrap_err();
    assert!(err.to_string().contains("\"bad\""), "{err}");
    assert_eq!(sp.step_count(), 0);
    // The entry before it was updated, as in PyTorch's loop.
    assert_eq!(sp.get_mask("good").unwrap().count_zeroed(), 1);
    assert_eq!(sp.get_mask("bad").unwrap().count_zeroed(), 0);
}

#[test]
fn huge_sizes_are_errors_not_panics() {
    assert!(Embedding::new(usize::MAX / 2, 4, DType::F32, None, 0).is_err());
    assert!(EmbeddingBag::new(1 << 40, 1 << 40, DType::F16, BagMode::Sum, None, 0).is_err());
    assert!(Mask::from_dense_u8([usize::MAX, 2], &[]).is_err());
    assert!(Mask::from_packed_bytes([usize::MAX, usize::MAX], &[]).is_err());
    assert!(Mask::from_bools([1 << 62, 8], &[true]).is_err());
}

/// Zeroes the first element of N-D data: an implementer that says it supports N-D.
struct AnyRank;
impl UpdateMask for AnyRank {
    type Config = TestConfig;
    type State = StepCount;
    fn supports_nd(&self) -> bool {
        true
    }
    fn update_mask(
        &self,
        _name: &str,
        _data: TensorView<'_>,
        _c: &TestConfig,
        state: &mut StepCount,
        mask: &mut Mask,
    ) -> Result<()> {
        mask.fill(true);
        mask.set(0, false);
        state.step_count += 1;
        Ok(())
    }
}

#[test]
fn an_implementer_that_supports_nd_gets_nd_data_with_its_shape() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    let conv = Parameter::new(randn([2, 3, 4], DType::F32, 5));
    let original = conv.snapshot();
    let mut sp = DataSparsifier::new(AnyRank, TestConfig { test: 0 }).unwrap();
    sp.add_data("conv", &conv).unwrap();
    sp.step().unwrap();
    assert_eq!(sp.get_mask("conv").unwrap().shape(), &[2, 3, 4]);
    sp.save_state(&path).unwrap();
    sp.squash_mask(None, SquashOptions::default()).unwrap();
    let squashed = conv.snapshot();
    assert_eq!(squashed.shape(), &[2, 3, 4]);
    assert_eq!(squashed.to_f64_vec()[0], 0.0);
    assert_eq!(squashed.to_f64_vec()[1..], original.to_f64_vec()[1..]);

    let mut back = DataSparsifier::new(AnyRank, TestConfig { test: 0 }).unwrap();
    back.load_state(&path, LoadOptions::default()).unwrap();
    assert_eq!(back.get_data("conv", Version::Original).unwrap(), original);
    assert_eq!(back.get_mask("conv").unwrap().count_zeroed(), 1);
    // The same data is refused by an implementer that does not support N-D.
    let err = sparsifier().add_data("conv", &conv).unwrap_err();
    assert!(matches!(err, Error::UnsupportedShape { .. }), "{err}");
    let mut two_d = sparsifier();
    assert!(matches!(
        two_d.load_state(&path, LoadOptions::default()),
        Err(Error::InvalidState { .. }) | Err(Error::UnsupportedShape { .. })
    ));
}
