//! Saved state: in-memory and on-disk round trips, strict and non-strict loading, and hostile files.

use std::collections::BTreeMap;

use data_sparsifier::random::{randn, Rng};
use data_sparsifier::state::FORMAT;
use data_sparsifier::{
    AddOptions, Config, DType, DataSparsifier, Error, LoadOptions, Mask, Parameter, Result,
    SquashOptions, StateDict, Tensor, TensorView, UpdateMask, Version,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

/// Keeps elements whose |x| is at least a per-name threshold, and counts steps.
struct Threshold;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Cfg {
    threshold: f64,
}
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    threshold: Option<f64>,
}
impl Config for Cfg {
    type Patch = Patch;
    fn apply(&mut self, p: &Patch) {
        if let Some(t) = p.threshold {
            self.threshold = t;
        }
    }
}
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Steps {
    steps: u32,
}
impl UpdateMask for Threshold {
    type Config = Cfg;
    type State = Steps;
    fn name(&self) -> &'static str {
        "Threshold"
    }
    fn validate(&self, name: &str, c: &Cfg) -> Result<()> {
        if !c.threshold.is_finite() || c.threshold < 0.0 {
            return Err(Error::invalid_config(
                name,
                "threshold",
                c.threshold,
                "a finite value >= 0",
            ));
        }
        Ok(())
    }
    fn update_mask(
        &self,
        _: &str,
        data: TensorView<'_>,
        c: &Cfg,
        s: &mut Steps,
        mask: &mut Mask,
    ) -> Result<()> {
        s.steps += 1;
        mask.keep_where(&data, |x| x.abs() >= c.threshold)
    }
}

fn sparsifier() -> DataSparsifier<Threshold> {
    DataSparsifier::new(Threshold, Cfg { threshold: 0.5 }).unwrap()
}

fn populated(seed: u64) -> (DataSparsifier<Threshold>, Parameter) {
    let mut sp = sparsifier();
    let p = Parameter::new(randn([6, 4], DType::F32, seed));
    sp.add_data("param", &p).unwrap();
    sp.add_data_with(
        "half",
        randn([3, 5], DType::F16, seed + 1),
        AddOptions::patched(Patch {
            threshold: Some(1.0),
        }),
    )
    .unwrap();
    sp.add_data("bf", randn([7], DType::BF16, seed + 2))
        .unwrap();
    sp.add_data("dbl", randn([2, 2], DType::F64, seed + 3))
        .unwrap();
    sp.add_data("empty", randn([0, 3], DType::F32, 0)).unwrap();
    sp.step().unwrap();
    sp.squash_mask(Some(&["dbl"]), SquashOptions::default())
        .unwrap();
    (sp, p)
}

#[test]
fn file_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.safetensors");
    let (sp, _) = populated(1);
    let extra = BTreeMap::from([(
        "scheduler".to_string(),
        serde_json::json!({"last_epoch": 3}),
    )]);
    sp.save_state_with_extra(&path, &extra).unwrap();

    let mut fresh = sparsifier();
    let got_extra = fresh.load_state(&path, LoadOptions::default()).unwrap();
    assert_eq!(got_extra, extra);
    assert_eq!(fresh.state_dict().unwrap(), sp.state_dict().unwrap());
    assert!(!fresh.is_parametrized("dbl").unwrap());
    assert!(matches!(
        fresh.get_data("dbl", Version::Original),
        Err(Error::Squashed { .. })
    ));
    // A loaded sparsifier keeps working.
    fresh.step().unwrap_err(); // "dbl" is squashed, as in the original
    fresh.remove_data("dbl").unwrap();
    fresh.step().unwrap();
    assert_eq!(fresh.state("param").unwrap().steps, 2);

    // StateDict::save / load agree with save_state.
    let path2 = dir.path().join("state2.safetensors");
    sp.state_dict().unwrap().save(&path2).unwrap();
    assert_eq!(
        StateDict::<Cfg, Steps>::load(&path2).unwrap().entries,
        sp.state_dict().unwrap().entries
    );
}

#[test]
fn the_file_is_plain_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    let (sp, p) = populated(2);
    sp.save_state(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let data = st.tensor("data/param").unwrap();
    assert_eq!(data.dtype(), safetensors::Dtype::F32);
    assert_eq!(data.shape(), &[6, 4]);
    assert_eq!(data.data(), p.read().as_bytes());
    let mask = st.tensor("mask/param").unwrap();
    assert_eq!(mask.dtype(), safetensors::Dtype::U8);
    assert_eq!(mask.shape(), &[3]);
    // Unpack the bits by hand, as a reader without this library would.
    let m = sp.get_mask("param").unwrap();
    for i in 0..24 {
        assert_eq!((mask.data()[i / 8] >> (i % 8)) & 1 == 1, m.get(i));
    }
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["format"], FORMAT);
    assert_eq!(meta["format_version"], "1");
    let json: serde_json::Value = serde_json::from_str(&meta["state"]).unwrap();
    assert_eq!(json["entries"][1]["config"]["threshold"], 1.0);
    assert_eq!(json["entries"][0]["kind"], "parameter");
}

#[test]
fn strict_replaces_and_non_strict_merges() {
    let (sp, _) = populated(3);
    let sd = sp.state_dict().unwrap();

    let mut other = sparsifier();
    other
        .add_data("mine", randn([2, 2], DType::F32, 9))
        .unwrap();
    other
        .load_state_dict(sd.clone(), LoadOptions { strict: false })
        .unwrap();
    assert_eq!(
        other.names().collect::<Vec<_>>(),
        vec!["mine", "param", "half", "bf", "dbl", "empty"]
    );

    let mut strict = sparsifier();
    strict
        .add_data("mine", randn([2, 2], DType::F32, 9))
        .unwrap();
    strict
        .load_state_dict(sd.clone(), LoadOptions::default())
        .unwrap();
    assert!(!strict.contains("mine"));
    assert_eq!(strict.len(), 5);

    // Non-strict with an overlapping name replaces that entry (PyTorch raises KeyError).
    let mut overlap = sparsifier();
    overlap
        .add_data("param", randn([1, 1], DType::F64, 9))
        .unwrap();
    overlap
        .load_state_dict(sd, LoadOptions { strict: false })
        .unwrap();
    assert_eq!(
        overlap
            .get_data("param", Version::Original)
            .unwrap()
            .shape(),
        &[6, 4]
    );
}

#[test]
fn loading_restores_into_the_live_parameter() {
    let (sp, _) = populated(4);
    let sd = sp.state_dict().unwrap();
    // A "model" holding its own parameter of the same name, shape and dtype.
    let mut resumed = sparsifier();
    let model_param = Parameter::new(Tensor::zeros(DType::F32, [6, 4]));
    resumed.add_data("param", &model_param).unwrap();
    resumed
        .load_state_dict(sd.clone(), LoadOptions::default())
        .unwrap();
    assert_eq!(model_param.snapshot(), sd.entries[0].data);
    assert!(resumed
        .data_handle("param")
        .unwrap()
        .as_parameter()
        .unwrap()
        .ptr_eq(&model_param));
}

#[test]
fn invalid_states_change_nothing() {
    let (sp, _) = populated(5);
    let mut sd = sp.state_dict().unwrap();
    sd.entries[1].config.threshold = -1.0;
    let mut target = sparsifier();
    target
        .add_data("keep", randn([2, 2], DType::F32, 1))
        .unwrap();
    assert!(matches!(
        target.load_state_dict(sd, LoadOptions::default()),
        Err(Error::InvalidConfig { .. })
    ));
    assert_eq!(target.names().collect::<Vec<_>>(), vec!["keep"]);

    let mut sd = sp.state_dict().unwrap();
    sd.entries[0].mask = Mask::ones([5]);
    assert!(matches!(
        target.load_state_dict(sd, LoadOptions::default()),
        Err(Error::ShapeMismatch { .. })
    ));
    let mut sd = sp.state_dict().unwrap();
    let dup = sd.entries[0].clone();
    sd.entries.push(dup);
    assert!(target.load_state_dict(sd, LoadOptions::default()).is_err());
    assert_eq!(target.len(), 1);
}

fn saved_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    populated(6).0.save_state(&path).unwrap();
    std::fs::read(&path).unwrap()
}

fn load_bytes(bytes: &[u8]) -> Result<StateDict<Cfg, Steps>> {
    StateDict::<Cfg, Steps>::from_bytes(bytes, "test")
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = saved_bytes();
    assert!(load_bytes(&bytes).is_ok());
    for cut in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
        assert!(load_bytes(&bytes[..cut]).is_err(), "truncated at {cut}");
    }
}

/// Rewrites the `state` JSON of a saved file.
fn with_state_json(bytes: &[u8], edit: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    let mut meta = meta.metadata().clone().unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&meta["state"]).unwrap();
    edit(&mut json);
    meta.insert("state".into(), json.to_string());
    let tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        st.tensors().into_iter().collect();
    safetensors::serialize(tensors, &Some(meta)).unwrap()
}

#[test]
fn tampered_metadata_is_an_error() {
    let bytes = saved_bytes();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "shape",
            Box::new(|j| j["entries"][0]["shape"] = serde_json::json!([4, 6])),
        ),
        (
            "dtype",
            Box::new(|j| j["entries"][0]["dtype"] = serde_json::json!("f64")),
        ),
        (
            "name",
            Box::new(|j| j["entries"][0]["name"] = serde_json::json!("a.b")),
        ),
        (
            "unknown",
            Box::new(|j| j["entries"][0]["name"] = serde_json::json!("ghost")),
        ),
        (
            "config",
            Box::new(|j| j["entries"][0]["config"] = serde_json::json!({"thresh": 1})),
        ),
        ("field", Box::new(|j| j["surprise"] = serde_json::json!(1))),
        (
            "dropped",
            Box::new(|j| {
                j["entries"].as_array_mut().unwrap().pop();
            }),
        ),
    ];
    for (what, edit) in cases {
        let tampered = with_state_json(&bytes, edit);
        let err = load_bytes(&tampered).unwrap_err();
        assert!(
            matches!(err, Error::InvalidState { .. } | Error::InvalidName { .. }),
            "{what}: {err}"
        );
    }
}

#[test]
fn foreign_files_are_rejected_clearly() {
    let plain = safetensors::serialize(
        Vec::<(String, safetensors::tensor::TensorView<'_>)>::new(),
        &None,
    )
    .unwrap();
    let err = load_bytes(&plain).unwrap_err();
    assert!(
        err.to_string().contains("not a data-sparsifier state file"),
        "{err}"
    );
    assert!(matches!(
        load_bytes(b"garbage"),
        Err(Error::Safetensors { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    let err = StateDict::<Cfg, Steps>::load(dir.path().join("missing.safetensors")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_states_round_trip_through_a_file(
        shapes in proptest::collection::vec(proptest::collection::vec(0usize..6, 0..3), 1..5),
        seed in any::<u64>(),
        squash in any::<u8>(),
    ) {
        let mut rng = Rng::new(seed);
        let mut sp = sparsifier();
        for (i, shape) in shapes.iter().enumerate() {
            let dtype = DType::ALL[rng.below(4) as usize];
            let t = randn(shape.clone(), dtype, rng.next_u64());
            let patch = Patch { threshold: Some(rng.uniform() * 2.0) };
            sp.add_data_with(&format!("t{i}"), t, AddOptions::patched(patch.clone())).unwrap();
        }
        sp.step().unwrap();
        let names: Vec<String> = sp.names().map(String::from).collect();
        let to_squash: Vec<&str> = names.iter().enumerate()
            .filter(|(i, _)| (squash >> (i % 8)) & 1 == 1).map(|(_, n)| n.as_str()).collect();
        sp.squash_mask(Some(&to_squash), SquashOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.safetensors");
        sp.save_state(&path).unwrap();
        let loaded = StateDict::<Cfg, Steps>::load(&path).unwrap();
        prop_assert_eq!(&loaded, &sp.state_dict().unwrap());
        let mut back = sparsifier();
        back.load_state_dict(loaded, LoadOptions::default()).unwrap();
        prop_assert_eq!(back.state_dict().unwrap(), sp.state_dict().unwrap());
    }

    #[test]
    fn random_byte_flips_never_panic(pos in any::<prop::sample::Index>(), val in any::<u8>()) {
        let mut bytes = saved_bytes();
        let i = pos.index(bytes.len());
        bytes[i] = val;
        let _ = load_bytes(&bytes);
    }
}

#[test]
fn huge_header_offsets_are_an_error_not_a_panic() {
    // safetensors' own parser adds these offsets unchecked (a panic in debug builds).
    let header = br#"{"__metadata__":{"format":"data-sparsifier/state"},"data/x":{"dtype":"F32","shape":[4611686018427387903],"data_offsets":[0,18446744073709551612]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(&[0; 4]);
    assert!(matches!(load_bytes(&file), Err(Error::Safetensors { .. })));
}

/// §8.1 `check_state_dict` for `DataNormSparsifier`, plus PyTorch bug §9.6: a saved and reloaded
/// sparsifier keeps each entry's norm and keeps stepping.
#[test]
fn data_norm_state_round_trips_with_norms_and_masks() {
    use data_sparsifier::norm::{DataNormConfig, DataNormPatch, Norm};
    use data_sparsifier::DataNormSparsifier;
    let defaults = DataNormConfig {
        sparsity_level: 0.5,
        sparse_block_shape: (1, 4),
        zeros_per_block: Some(4),
        ..Default::default()
    };
    let mut s1 = DataNormSparsifier::data_norm(defaults.clone()).unwrap();
    let param = Parameter::new(randn([10, 10], DType::F32, 1));
    s1.add_data("tensor1", randn([1, 10], DType::F32, 2))
        .unwrap();
    s1.add_data("param", &param).unwrap();
    let l2 = DataNormPatch::new()
        .sparsity_level(0.7)
        .block(2, 3)
        .zeros_per_block(6)
        .norm(Norm::L2);
    s1.add_data_with(
        "emb",
        randn([15, 3], DType::BF16, 3),
        AddOptions::patched(l2.clone()),
    )
    .unwrap();
    let mut s2 = DataNormSparsifier::data_norm(defaults)
        .unwrap()
        .with_data([("tensor1", randn([1, 10], DType::F32, 2))])
        .unwrap();
    s1.step().unwrap();
    assert_ne!(
        s1.get_mask("tensor1").unwrap(),
        s2.get_mask("tensor1").unwrap()
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("norm.safetensors");
    s1.save_state(&path).unwrap();
    s2.load_state(&path, LoadOptions::default()).unwrap();
    assert_eq!(s2.len(), 3);
    for name in ["tensor1", "param", "emb"] {
        assert_eq!(s1.config(name).unwrap(), s2.config(name).unwrap());
        assert_eq!(s1.get_mask(name).unwrap(), s2.get_mask(name).unwrap());
        assert_eq!(
            s1.get_data(name, Version::Masked).unwrap(),
            s2.get_data(name, Version::Masked).unwrap()
        );
        assert_eq!(
            s1.is_parametrized(name).unwrap(),
            s2.is_parametrized(name).unwrap()
        );
    }
    assert_eq!(s2.config("emb").unwrap().norm, Norm::L2);
    // The reloaded sparsifier steps to the same masks (PyTorch's pickled copy cannot step at all).
    s2.step().unwrap();
    assert_eq!(s1.state_dict().unwrap(), s2.state_dict().unwrap());
}

#[test]
fn non_strict_replaces_in_place_and_appends_new_names() {
    let (sp, _) = populated(11);
    let sd = sp.state_dict().unwrap();
    let mut other = sparsifier();
    other
        .add_data("first", randn([2, 2], DType::F32, 1))
        .unwrap();
    other
        .add_data("half", randn([1, 1], DType::F32, 2))
        .unwrap();
    other
        .add_data("last", randn([2, 2], DType::F32, 3))
        .unwrap();
    other
        .load_state_dict(sd.clone(), LoadOptions { strict: false })
        .unwrap();
    assert_eq!(
        other.names().collect::<Vec<_>>(),
        vec!["first", "half", "last", "param", "bf", "dbl", "empty"]
    );
    assert_eq!(
        other.get_data("half", Version::Original).unwrap(),
        sd.entries[1].data
    );
}

#[test]
fn a_state_of_another_sparsifier_is_refused() {
    let (sp, _) = populated(12);
    let mut sd = sp.state_dict().unwrap();
    sd.sparsifier = "DataNormSparsifier".into();
    let mut target = sparsifier();
    target
        .add_data("keep", randn([2, 2], DType::F32, 1))
        .unwrap();
    let err = target
        .load_state_dict(sd, LoadOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("DataNormSparsifier"), "{err}");
    assert_eq!(target.names().collect::<Vec<_>>(), vec!["keep"]);
}

#[test]
fn an_embedding_table_must_be_2d() {
    let (sp, _) = populated(13);
    let mut sd = sp.state_dict().unwrap();
    // "bf" is a 1-D tensor; claim it is an embedding.
    sd.entries[2].kind = data_sparsifier::DataKind::Embedding;
    let mut target = sparsifier();
    let err = target
        .load_state_dict(sd, LoadOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("\"bf\""), "{err}");
    assert!(target.is_empty());
}

#[test]
fn mask_update_enabled_is_restored() {
    let (mut sp, _) = populated(14);
    sp.set_mask_update_enabled(false);
    let sd = sp.state_dict().unwrap();
    let mut target = sparsifier();
    target.load_state_dict(sd, LoadOptions::default()).unwrap();
    assert!(!target.mask_update_enabled());
}

#[test]
fn non_finite_configs_are_refused_at_save_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    let (mut sp, _) = populated(15);
    sp.config_mut("bf").unwrap().threshold = f64::INFINITY;
    let err = sp.save_state(&path).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    assert!(err.to_string().contains("\"bf\""), "{err}");
    assert!(!path.exists());
    let sd = sp.state_dict().unwrap();
    assert!(matches!(sd.save(&path), Err(Error::InvalidConfig { .. })));
    assert!(!path.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn an_entry_squashed_without_the_mask_saves_its_untouched_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    let mut sp = sparsifier();
    let raw = randn([4, 4], DType::F32, 16);
    sp.add_data("x", raw.clone()).unwrap();
    sp.step().unwrap();
    assert!(sp.get_mask("x").unwrap().count_zeroed() > 0);
    sp.squash_mask(
        None,
        SquashOptions {
            leave_parametrized: false,
        },
    )
    .unwrap();
    sp.save_state(&path).unwrap();
    let sd = StateDict::<Cfg, Steps>::load(&path).unwrap();
    assert_eq!(sd.entries[0].data, raw);
    assert!(!sd.entries[0].parametrized);
    let mut back = sparsifier();
    back.load_state(&path, LoadOptions::default()).unwrap();
    assert_eq!(back.get_data("x", Version::Masked).unwrap(), raw);
    assert!(back.get_data("x", Version::Original).is_err());
}

/// External storage whose writes can be made to fail (a GPU tensor, say).
#[derive(Debug)]
struct Flaky {
    data: std::sync::Mutex<Tensor>,
    fail: bool,
}
impl data_sparsifier::tensor::ExternalTensor for Flaky {
    fn shape(&self) -> Vec<usize> {
        self.data.lock().unwrap().shape().to_vec()
    }
    fn dtype(&self) -> DType {
        self.data.lock().unwrap().dtype()
    }
    fn read(&self, f: &mut dyn FnMut(TensorView<'_>) -> Result<()>) -> Result<()> {
        f(self.data.lock().unwrap().view())
    }
    fn apply_mask(&self, mask: &Mask) -> Result<()> {
        self.data.lock().unwrap().apply_mask(mask)
    }
    fn assign(&self, t: &Tensor) -> Result<()> {
        if self.fail {
            return Err(Error::External {
                framework: "flaky",
                message: "the tensor is on another device".into(),
            });
        }
        *self.data.lock().unwrap() = t.clone();
        Ok(())
    }
}

#[test]
fn a_failed_write_into_external_storage_leaves_the_sparsifier_as_it_was() {
    let (sp, _) = populated(17);
    let sd = sp.state_dict().unwrap();
    let mut target = sparsifier();
    let native = Parameter::new(Tensor::zeros(DType::F32, [6, 4]));
    target.add_data("param", &native).unwrap();
    let flaky = std::sync::Arc::new(Flaky {
        data: std::sync::Mutex::new(Tensor::zeros(DType::F16, [3, 5])),
        fail: true,
    });
    target
        .add_data(
            "half",
            data_sparsifier::Data::External(data_sparsifier::DataKind::Tensor, flaky.clone()),
        )
        .unwrap();
    let before = target.state_dict().unwrap();
    let err = target
        .load_state_dict(sd, LoadOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("\"half\""), "{err}");
    assert_eq!(target.state_dict().unwrap(), before);
    assert_eq!(native.snapshot(), Tensor::zeros(DType::F32, [6, 4]));
}
