//! The candle integration: zero-copy reads, in-place squash seen through the model's own weight
//! handles, every float dtype, strided layouts, state loading, the candle EmbeddingBag.
#![cfg(feature = "candle")]

use candle_core::{DType as CDType, Device, IndexOp, Module, Tensor as CTensor, Var};
use candle_nn::{VarBuilder, VarMap};
use data_sparsifier::candle::{self as dc, CandleTensor, EmbeddingBag};
use data_sparsifier::hooks::{Model, PostTrainingDataSparsity};
use data_sparsifier::norm::{DataNormConfig, DataNormPatch, DataNormSparsifier};
use data_sparsifier::random::randn;
use data_sparsifier::{
    embedding::BagMode, embedding::Bags, tensor::ExternalTensor, AddOptions, DType, DataKind,
    Error, LoadOptions, Mask, Parameter, SquashOptions, Tensor, Version,
};

const CPU: Device = Device::Cpu;

fn cfg() -> DataNormConfig {
    DataNormConfig::default() // level 0.5, (1, 4) blocks
}

fn flat_f32(t: &CTensor) -> Vec<f32> {
    t.to_dtype(CDType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The mask DataNorm computes for the same values held natively.
fn native_mask(values: &Tensor, config: &DataNormConfig) -> Mask {
    let mut sp = DataNormSparsifier::data_norm(config.clone()).unwrap();
    sp.add_data("x", values.clone()).unwrap();
    sp.step().unwrap();
    sp.get_mask("x").unwrap().clone()
}

#[test]
fn squash_is_visible_through_the_models_own_weight_handles() {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, CDType::F32, &CPU);
    let lin = candle_nn::linear(16, 8, vb.pp("fc")).unwrap();
    let x = CTensor::randn(0f32, 1.0, (3, 16), &CPU).unwrap();
    let before = lin.weight().copy().unwrap();

    let mut sp = DataNormSparsifier::data_norm(cfg()).unwrap();
    sp.add_data("fc_weight", dc::tensor(lin.weight()).unwrap())
        .unwrap();
    sp.step().unwrap();
    let mask = sp.get_mask("fc_weight").unwrap().clone();
    assert_eq!(mask.count_zeroed(), 64);
    // Nothing is written before the squash.
    assert_eq!(flat_f32(lin.weight()), flat_f32(&before));

    sp.squash_mask(None, SquashOptions::default()).unwrap();
    let want: Vec<f32> = flat_f32(&before)
        .iter()
        .enumerate()
        .map(|(i, &v)| if mask.get(i) { v } else { 0.0 })
        .collect();
    // the module's weight, the VarMap's Var, and the module's forward all see the sparse weights
    assert_eq!(flat_f32(lin.weight()), want);
    let var = vm.data().lock().unwrap()["fc.weight"].clone();
    assert_eq!(flat_f32(var.as_tensor()), want);
    let sparse_w = CTensor::from_vec(want, (8, 16), &CPU).unwrap();
    let manual = x
        .matmul(&sparse_w.t().unwrap())
        .unwrap()
        .broadcast_add(lin.bias().unwrap())
        .unwrap();
    assert_eq!(flat_f32(&lin.forward(&x).unwrap()), flat_f32(&manual));
}

#[test]
fn step_sees_training_updates() {
    let w = Var::randn(0f32, 1.0, (4, 8), &CPU).unwrap();
    let mut sp = DataNormSparsifier::data_norm(cfg()).unwrap();
    sp.add_data("w", dc::var(&w).unwrap()).unwrap();
    assert_eq!(sp.kind("w").unwrap(), DataKind::Parameter);
    sp.step().unwrap();
    let m1 = sp.get_mask("w").unwrap().clone();

    // An optimizer step changes the Var in place.
    let grads = w
        .as_tensor()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let mut opt = candle_nn::SGD::new(vec![w.clone()], 0.9).unwrap();
    use candle_nn::Optimizer;
    opt.step(&grads).unwrap();
    // Zero the first kept (1, 4) block and make the first pruned one large, so the mask must
    // change whatever the random start was.
    let mut vals = flat_f32(w.as_tensor());
    let kept = (0..8).find(|&b| m1.get(b * 4)).unwrap();
    let pruned = (0..8).find(|&b| !m1.get(b * 4)).unwrap();
    vals[kept * 4..kept * 4 + 4]
        .iter_mut()
        .for_each(|v| *v = 0.0);
    vals[pruned * 4..pruned * 4 + 4]
        .iter_mut()
        .for_each(|v| *v = 100.0);
    w.set(&CTensor::from_vec(vals.clone(), (4, 8), &CPU).unwrap())
        .unwrap();
    sp.step().unwrap();
    let m2 = sp.get_mask("w").unwrap().clone();
    let native = Tensor::from_vec(vals, [4, 8]).unwrap();
    assert_eq!(m2, native_mask(&native, &cfg()));
    assert_ne!(m1, m2);
    assert_eq!(
        sp.get_data("w", Version::Original).unwrap(),
        native,
        "the original read back is the Var's current value"
    );
}

#[test]
fn every_float_dtype_matches_the_native_sparsifier() {
    let config = DataNormConfig {
        sparsity_level: 0.6,
        sparse_block_shape: (2, 3),
        zeros_per_block: Some(4),
        ..Default::default()
    };
    for dtype in DType::ALL {
        let native = randn([9, 14], dtype, 7);
        let ct = dc::to_candle(&native, &CPU).unwrap();
        assert_eq!(ct.dtype(), dc::dtype_to_candle(dtype));
        let mut sp = DataNormSparsifier::data_norm(config.clone()).unwrap();
        sp.add_data("t", dc::tensor(&ct).unwrap()).unwrap();
        sp.step().unwrap();
        let mask = sp.get_mask("t").unwrap().clone();
        assert_eq!(mask, native_mask(&native, &config), "{dtype}");
        let masked = dc::masked(&sp, "t", &CPU).unwrap();
        assert_eq!(
            dc::from_candle(&masked).unwrap(),
            native.masked(&mask).unwrap()
        );
        sp.squash_mask(None, SquashOptions::default()).unwrap();
        assert_eq!(
            dc::from_candle(&ct).unwrap(),
            native.masked(&mask).unwrap(),
            "{dtype}"
        );
    }
}

#[test]
fn offset_and_strided_layouts() {
    let base = CTensor::arange(0f32, 60.0, &CPU)
        .unwrap()
        .reshape((6, 10))
        .unwrap();
    let base = Var::from_tensor(&base).unwrap();
    // A view with a start offset: rows 2..5 (contiguous, offset 20).
    let rows = base.narrow(0, 2, 3).unwrap();
    // A strided view: the transpose of rows 0..2 (10 x 2).
    let tr = base.narrow(0, 0, 2).unwrap().t().unwrap();
    assert!(!tr.is_contiguous());

    for (name, view) in [("rows", &rows), ("tr", &tr)] {
        let native = dc::from_candle(view).unwrap();
        let c = CandleTensor::new(view).unwrap();
        assert_eq!(c.shape(), view.dims());
        let mut seen = None;
        c.read(&mut |v| {
            seen = Some(v.to_tensor());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.unwrap(), native, "{name}");
    }
    let mut sp = DataNormSparsifier::data_norm(cfg()).unwrap();
    sp.add_data("rows", dc::tensor(&rows).unwrap()).unwrap();
    sp.add_data_with(
        "tr",
        dc::tensor(&tr).unwrap(),
        AddOptions::patched(DataNormPatch::new().block(1, 2)),
    )
    .unwrap();
    sp.step().unwrap();
    let (mr, mt) = (
        sp.get_mask("rows").unwrap().clone(),
        sp.get_mask("tr").unwrap().clone(),
    );
    let before = flat_f32(base.as_tensor());
    sp.squash_mask(None, SquashOptions::default()).unwrap();
    let after = flat_f32(base.as_tensor());
    // Expected: base with the two views' masks applied at their storage positions.
    let mut want = before.clone();
    for i in 0..30 {
        if !mr.get(i) {
            want[20 + i] = 0.0;
        }
    }
    for i in 0..20 {
        // tr[r][c] = base[c][r]
        let (r, c) = (i / 2, i % 2);
        if !mt.get(i) {
            want[c * 10 + r] = 0.0;
        }
    }
    assert_eq!(after, want);
    assert!(after[50..].iter().zip(&before[50..]).all(|(a, b)| a == b));
}

#[test]
fn broadcast_views_are_refused() {
    let row = CTensor::new(&[1f32, 2., 3., 4.], &CPU).unwrap();
    let b = row.broadcast_as((3, 4)).unwrap();
    assert_eq!(b.stride(), &[0, 1]);
    let left = row.broadcast_left(2).unwrap();
    let col = CTensor::new(&[[1f32], [2.]], &CPU)
        .unwrap()
        .broadcast_as((2, 5))
        .unwrap();
    for view in [&b, &left, &col] {
        for err in [
            CandleTensor::new(view).unwrap_err(),
            dc::tensor(view).unwrap_err(),
        ] {
            assert!(matches!(err, Error::External { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains("stride 0"), "{msg}");
            assert!(msg.contains(&format!("{:?}", view.dims())), "{msg}");
            assert!(
                msg.contains(".contiguous()") && msg.contains(".copy()"),
                "{msg}"
            );
        }
    }
    // A size-1 dim with stride 0 aliases nothing.
    let one = row.broadcast_as((1, 4)).unwrap();
    assert_eq!(one.stride(), &[0, 1]);
    assert_eq!(CandleTensor::new(&one).unwrap().shape(), vec![1, 4]);

    // The suggested fix: the copy is sparsified to exactly mask · data; the source is untouched.
    let owned = b.contiguous().unwrap();
    let native = dc::from_candle(&b).unwrap();
    let config = DataNormConfig {
        sparse_block_shape: (1, 2),
        ..cfg()
    };
    let mut sp = DataNormSparsifier::data_norm(config.clone()).unwrap();
    sp.add_data("b", dc::tensor(&owned).unwrap()).unwrap();
    sp.step().unwrap();
    let mask = sp.get_mask("b").unwrap().clone();
    assert_eq!(mask, native_mask(&native, &config));
    sp.squash_mask(None, SquashOptions::default()).unwrap();
    assert_eq!(
        dc::from_candle(&owned).unwrap(),
        native.masked(&mask).unwrap()
    );
    assert_eq!(flat_f32(&row), vec![1., 2., 3., 4.]);
}

#[test]
fn unsupported_dtypes_are_errors() {
    let t = CTensor::new(&[1u32, 2, 3], &CPU).unwrap();
    assert!(matches!(
        dc::tensor(&t),
        Err(Error::UnsupportedDType { .. })
    ));
    let t = CTensor::new(&[1i64, 2, 3], &CPU).unwrap();
    assert!(matches!(
        CandleTensor::new(&t),
        Err(Error::UnsupportedDType { .. })
    ));
}

#[test]
fn candle_embedding_weight_is_sparsified_in_place() {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, CDType::F32, &CPU);
    let emb = candle_nn::embedding(20, 8, vb.pp("emb")).unwrap();
    let mut sp = DataNormSparsifier::data_norm(DataNormConfig {
        sparsity_level: 0.5,
        sparse_block_shape: (1, 8), // whole rows
        ..Default::default()
    })
    .unwrap();
    sp.add_data("emb", dc::embedding(&emb).unwrap()).unwrap();
    assert_eq!(sp.kind("emb").unwrap(), DataKind::Embedding);
    sp.step().unwrap();
    sp.squash_mask(None, SquashOptions::default()).unwrap();
    let mask = sp.get_mask("emb").unwrap();
    let ids = CTensor::new(&(0u32..20).collect::<Vec<_>>()[..], &CPU).unwrap();
    let out = emb.forward(&ids).unwrap();
    let mut zero_rows = 0;
    for r in 0..20 {
        let row = flat_f32(&out.i(r).unwrap());
        let kept = mask.get(r * 8);
        assert!(row.iter().all(|&v| (v == 0.0) != kept));
        zero_rows += usize::from(!kept);
    }
    assert_eq!(zero_rows, 10);
}

#[test]
fn load_state_writes_into_candle_storage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    let w = Var::randn(0f64, 1.0, (4, 4), &CPU).unwrap();
    let saved = flat_f32(w.as_tensor());
    let mut sp = DataNormSparsifier::data_norm(cfg()).unwrap();
    sp.add_data("w", dc::var(&w).unwrap()).unwrap();
    sp.step().unwrap();
    sp.save_state(&path).unwrap();
    w.set(&CTensor::zeros((4, 4), CDType::F64, &CPU).unwrap())
        .unwrap();
    sp.load_state(&path, LoadOptions::default()).unwrap();
    assert_eq!(flat_f32(w.as_tensor()), saved);
    // a wrong dtype or shape is refused
    let c = CandleTensor::new(w.as_tensor()).unwrap();
    assert!(c.assign(&Tensor::zeros(DType::F32, [4, 4])).is_err());
    assert!(c.assign(&Tensor::zeros(DType::F64, [2, 8])).is_err());
}

#[test]
fn mask_tensor_trains_through_the_mask() {
    let w = Var::from_vec(vec![1f32, 2., 3., 4.], (2, 2), &CPU).unwrap();
    let mut m = Mask::ones([2, 2]);
    m.set(1, false);
    let mt = dc::mask_tensor(&m, CDType::F32, &CPU).unwrap();
    assert_eq!(flat_f32(&mt), vec![1., 0., 1., 1.]);
    let y = w.as_tensor().mul(&mt).unwrap().sum_all().unwrap();
    let g = y.backward().unwrap();
    assert_eq!(flat_f32(g.get(&w).unwrap()), vec![1., 0., 1., 1.]);
}

#[test]
fn varmap_is_a_model_for_the_hooks() {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, CDType::F32, &CPU);
    let _l1 = candle_nn::linear_no_bias(16, 8, vb.pp("a")).unwrap();
    let _l2 = candle_nn::linear_no_bias(8, 4, vb.pp("b")).unwrap();
    let names: Vec<String> = vm
        .named_parameters()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, vec!["a.weight", "b.weight"]);
    let before = flat_f32(
        &vm.data().lock().unwrap()["a.weight"]
            .as_tensor()
            .copy()
            .unwrap(),
    );

    let mut cb = PostTrainingDataSparsity::new(|| DataNormSparsifier::data_norm(cfg()));
    data_sparsifier::hooks::TrainingHooks::on_fit_end(&mut cb, &vm).unwrap();
    let copy = cb.sparsified().unwrap();
    let a = flat_f32(copy.data().lock().unwrap()["a.weight"].as_tensor());
    assert_eq!(a.iter().filter(|&&v| v == 0.0).count(), 64);
    // the trained model is untouched
    assert_eq!(
        flat_f32(vm.data().lock().unwrap()["a.weight"].as_tensor()),
        before
    );
}

/// Runs the crate's own EmbeddingBag (the reference semantics) and the candle one.
fn both(
    w: &Tensor,
    mode: BagMode,
    padding: Option<i64>,
    idx: &[i64],
    bags: Bags<'_>,
    psw: Option<&[f64]>,
) -> (Tensor, Tensor) {
    let native =
        data_sparsifier::EmbeddingBag::from_parameter(Parameter::new(w.clone()), mode, padding)
            .unwrap()
            .forward(idx, bags, psw)
            .unwrap();
    let cw = dc::to_candle(w, &CPU).unwrap();
    let mut bag = EmbeddingBag::new(cw.clone(), mode).unwrap();
    if let Some(p) = padding {
        bag = bag.with_padding_idx(p).unwrap();
    }
    let cpsw = psw.map(|p| {
        CTensor::from_vec(p.to_vec(), p.len(), &CPU)
            .unwrap()
            .to_dtype(cw.dtype())
            .unwrap()
    });
    let out = bag.forward(idx, bags, cpsw.as_ref()).unwrap();
    (native, dc::from_candle(&out).unwrap())
}

#[test]
fn embedding_bag_matches_the_reference_semantics() {
    let idx = [3i64, 0, 7, 7, 1, 9, 2, 0];
    let offsets = Bags::Offsets {
        offsets: &[0, 3, 3, 6],
        include_last_offset: false,
    };
    let last = Bags::Offsets {
        offsets: &[0, 2, 5, 8],
        include_last_offset: true,
    };
    let fixed = Bags::Fixed { bag_size: 4 };
    let psw = [0.5, -1.0, 2.0, 0.25, 1.5, 3.0, -0.5, 1.0];
    for dtype in DType::ALL {
        let w = randn([10, 6], dtype, 3);
        for mode in [BagMode::Sum, BagMode::Mean] {
            for bags in [offsets, last, fixed] {
                for padding in [None, Some(7), Some(-1)] {
                    let (a, b) = both(&w, mode, padding, &idx, bags, None);
                    let close = a
                        .to_f64_vec()
                        .iter()
                        .zip(b.to_f64_vec())
                        .all(|(x, y)| (x - y).abs() <= 1e-6 * (1.0 + x.abs()));
                    assert!(
                        close,
                        "{dtype} {mode:?} {bags:?} {padding:?}: {a:?} vs {b:?}"
                    );
                    assert_eq!(a.dtype(), b.dtype());
                    assert_eq!(a.shape(), b.shape());
                }
            }
            if mode == BagMode::Sum {
                // Every dtype, halves included (the weights are exact in f16 and bf16).
                for padding in [None, Some(0)] {
                    let (a, b) = both(&w, mode, padding, &idx, offsets, Some(&psw));
                    let close = a
                        .to_f64_vec()
                        .iter()
                        .zip(b.to_f64_vec())
                        .all(|(x, y)| (x - y).abs() <= 1e-6 * (1.0 + x.abs()));
                    assert!(close, "{dtype} psw {padding:?}: {a:?} vs {b:?}");
                    assert_eq!(a.dtype(), b.dtype());
                }
            }
        }
    }
}

#[test]
fn embedding_bag_half_precision_accumulates_in_f32() {
    // 1 + 256 * 2^-11 in f16: accumulated in f16 each tiny term is rounded away.
    let n = 256usize;
    let mut vals = vec![half::f16::from_f32(1.0)];
    vals.extend(std::iter::repeat(half::f16::from_f32(2f32.powi(-11))).take(n));
    let w = CTensor::from_vec(vals, (n + 1, 1), &CPU).unwrap();
    let bag = EmbeddingBag::new(w.clone(), BagMode::Sum).unwrap();
    let idx: Vec<i64> = (0..=n as i64).collect();
    let out = bag
        .forward(&idx, Bags::Fixed { bag_size: n + 1 }, None)
        .unwrap();
    assert_eq!(out.dtype(), CDType::F16);
    assert_eq!(flat_f32(&out), vec![1.125]);
    // candle's own f16 sum loses the small terms.
    let naive = w
        .sum_all()
        .unwrap()
        .to_dtype(CDType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(naive, 1.0);
}

#[test]
fn embedding_bag_per_sample_weights_in_half_precision() {
    let n = 256usize;
    for cdtype in [CDType::F16, CDType::BF16] {
        // Row 0 is 1, the others 1 too, weighted by 2^-11 (bf16: 2^-9): accumulated in half
        // precision each small term would round away (1 + 2^-11 is 1 in f16, 1 + 2^-9 in bf16).
        let small = if cdtype == CDType::F16 {
            2f32.powi(-11)
        } else {
            2f32.powi(-9)
        };
        let w = CTensor::ones((n + 1, 2), CDType::F32, &CPU)
            .unwrap()
            .to_dtype(cdtype)
            .unwrap();
        let mut pw = vec![1f32];
        pw.extend(std::iter::repeat(small).take(n));
        let idx: Vec<i64> = (0..=n as i64).collect();
        let bags = Bags::Fixed { bag_size: n + 1 };
        let bag = EmbeddingBag::new(w.clone(), BagMode::Sum).unwrap();
        let want = 1.0 + n as f32 * small; // 1.125 or 1.5, exact in both
                                           // per_sample_weights in the table's dtype, and in f32.
        for psw_dtype in [cdtype, CDType::F32] {
            let psw = CTensor::from_vec(pw.clone(), n + 1, &CPU)
                .unwrap()
                .to_dtype(psw_dtype)
                .unwrap();
            let out = bag.forward(&idx, bags, Some(&psw)).unwrap();
            assert_eq!(out.dtype(), cdtype);
            assert_eq!(flat_f32(&out), vec![want, want], "{cdtype:?} {psw_dtype:?}");
        }
        // The same as the crate's own EmbeddingBag, with weights not exact in half precision
        // passed as f32 (candle) and as those f32 values (native).
        let table = randn([10, 6], dc::dtype_from_candle(cdtype).unwrap(), 21);
        let cw = dc::to_candle(&table, &CPU).unwrap();
        let idx = [3i64, 0, 7, 7, 1, 9, 2, 0];
        let pw: Vec<f32> = vec![0.1, -1.3, 2.7, 0.33, 1.9, 3.1, -0.45, 1.01];
        let offsets = Bags::Offsets {
            offsets: &[0, 3, 3, 6],
            include_last_offset: false,
        };
        for padding in [None, Some(7)] {
            let native = data_sparsifier::EmbeddingBag::from_parameter(
                Parameter::new(table.clone()),
                BagMode::Sum,
                padding,
            )
            .unwrap()
            .forward(
                &idx,
                offsets,
                Some(&pw.iter().map(|&x| f64::from(x)).collect::<Vec<_>>()),
            )
            .unwrap();
            let mut bag = EmbeddingBag::new(cw.clone(), BagMode::Sum).unwrap();
            if let Some(p) = padding {
                bag = bag.with_padding_idx(p).unwrap();
            }
            let psw = CTensor::from_vec(pw.clone(), pw.len(), &CPU).unwrap();
            let out = bag.forward(&idx, offsets, Some(&psw)).unwrap();
            assert_eq!(out.dtype(), cdtype);
            let out = dc::from_candle(&out).unwrap();
            // Both multiply and sum in f32, in index order, and round to the half type once.
            assert_eq!(out, native, "{cdtype:?} {padding:?}");
        }
    }
}

#[test]
fn embedding_bag_errors() {
    let w = CTensor::zeros((4, 2), CDType::F32, &CPU).unwrap();
    assert!(EmbeddingBag::new(w.clone(), BagMode::Max).is_err());
    assert!(
        EmbeddingBag::new(CTensor::zeros(4, CDType::F32, &CPU).unwrap(), BagMode::Sum).is_err()
    );
    let mean = EmbeddingBag::new(w.clone(), BagMode::Mean).unwrap();
    let psw = CTensor::ones(2, CDType::F32, &CPU).unwrap();
    let bags = Bags::Fixed { bag_size: 2 };
    assert!(matches!(
        mean.forward(&[0, 1], bags, Some(&psw)),
        Err(Error::InvalidLookup { .. })
    ));
    let sum = EmbeddingBag::new(w, BagMode::Sum).unwrap();
    assert!(matches!(
        sum.forward(&[0, 4], bags, None),
        Err(Error::IndexOutOfRange { .. })
    ));
    assert!(sum
        .forward(
            &[0, 1],
            bags,
            Some(&CTensor::ones(3, CDType::F32, &CPU).unwrap())
        )
        .is_err());
    assert!(sum.forward(&[0, 1, 2], bags, None).is_err());
    assert!(sum.clone().with_padding_idx(4).is_err());
}

#[test]
fn embedding_bag_gradients() {
    let w = Var::from_vec((0..8).map(|x| x as f32).collect(), (4, 2), &CPU).unwrap();
    let psw = Var::from_vec(vec![2f32, 3., -1.], 3, &CPU).unwrap();
    let bag = EmbeddingBag::new(w.as_tensor().clone(), BagMode::Sum).unwrap();
    let bags = Bags::Offsets {
        offsets: &[0, 2],
        include_last_offset: false,
    };
    let out = bag
        .forward(&[1, 1, 3], bags, Some(psw.as_tensor()))
        .unwrap();
    // bag 0: 2*w1 + 3*w1 = 5*w1 = [10, 15]; bag 1: -w3 = [-6, -7]
    assert_eq!(
        out.to_vec2::<f32>().unwrap(),
        vec![vec![10., 15.], vec![-6., -7.]]
    );
    let g = out.sum_all().unwrap().backward().unwrap();
    assert_eq!(
        g.get(&w).unwrap().to_vec2::<f32>().unwrap(),
        vec![vec![0., 0.], vec![5., 5.], vec![0., 0.], vec![-1., -1.]]
    );
    // d/dpsw_j = sum of the row picked by j
    assert_eq!(
        g.get(&psw).unwrap().to_vec1::<f32>().unwrap(),
        vec![5., 5., 13.]
    );
}

#[test]
fn embedding_bag_trains_and_is_sparsified_in_place() {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, CDType::F32, &CPU);
    let bag = EmbeddingBag::from_var_builder(30, 4, BagMode::Mean, vb.pp("bag")).unwrap();
    // Seeded start and target (candle's CPU generator cannot be seeded), so the test is
    // deterministic.
    vm.all_vars()[0]
        .set(&dc::to_candle(&randn([30, 4], DType::F32, 31), &CPU).unwrap())
        .unwrap();
    // Regress each bag's output onto a fixed target.
    let idx: Vec<i64> = (0..60).map(|i| (i * 7 % 30) as i64).collect();
    let bags = Bags::Fixed { bag_size: 3 };
    let target = dc::to_candle(&randn([20, 4], DType::F32, 32), &CPU).unwrap();
    let mut opt = candle_nn::SGD::new(vm.all_vars(), 20.0).unwrap();
    use candle_nn::Optimizer;
    let loss = |b: &EmbeddingBag| {
        b.forward(&idx, bags, None)
            .unwrap()
            .sub(&target)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
    };
    let l0 = loss(&bag).to_scalar::<f32>().unwrap();
    for _ in 0..50 {
        opt.backward_step(&loss(&bag)).unwrap();
    }
    let l1 = loss(&bag).to_scalar::<f32>().unwrap();
    assert!(l1 < 0.5 * l0, "{l0} -> {l1}");

    let mut sp = DataNormSparsifier::data_norm(DataNormConfig {
        sparsity_level: 0.5,
        sparse_block_shape: (1, 4),
        ..Default::default()
    })
    .unwrap();
    sp.add_data("bag", dc::embedding_bag(&bag).unwrap())
        .unwrap();
    sp.step().unwrap();
    sp.squash_mask(None, SquashOptions::default()).unwrap();
    let zero_rows = (0..30)
        .filter(|&r| {
            flat_f32(&bag.weight().i(r).unwrap())
                .iter()
                .all(|&v| v == 0.0)
        })
        .count();
    assert_eq!(zero_rows, 15);
}

/// Gradual pruning of a live candle model: Zhu & Gupta raises the level each epoch, the forward
/// pass trains through the current mask, and the final squash leaves the model's own Var sparse.
#[test]
fn gradual_pruning_trains_through_the_mask_then_squashes() {
    use candle_nn::Optimizer;
    use data_sparsifier::scheduler::{DataScheduler, ZhuGupta};
    let x = dc::to_candle(&randn([64, 16], DType::F32, 11), &CPU).unwrap();
    let w_true = dc::to_candle(&randn([4, 16], DType::F32, 12), &CPU).unwrap();
    let y = x.matmul(&w_true.t().unwrap()).unwrap();
    let w =
        Var::from_tensor(&dc::to_candle(&randn([4, 16], DType::F32, 13), &CPU).unwrap()).unwrap();

    let mut sp = DataNormSparsifier::data_norm(cfg()).unwrap();
    sp.add_data("w", dc::var(&w).unwrap()).unwrap();
    let zg = ZhuGupta::new(Some(0.0), 0.75, 1, 4, 1).unwrap();
    let mut sched = DataScheduler::new(&mut sp, DataNormConfig::SPARSITY_LEVEL, zg).unwrap();
    let mut opt = candle_nn::SGD::new(vec![w.clone()], 0.05).unwrap();
    let loss = |mask: &Mask| {
        let m = dc::mask_tensor(mask, CDType::F32, &CPU).unwrap();
        let wm = w.as_tensor().mul(&m).unwrap();
        x.matmul(&wm.t().unwrap())
            .unwrap()
            .sub(&y)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
    };
    let mut levels = vec![];
    for _epoch in 0..7 {
        sp.step().unwrap();
        let mask = sp.get_mask("w").unwrap().clone();
        for _ in 0..20 {
            opt.backward_step(&loss(&mask)).unwrap();
        }
        let _ = sched.step(&mut sp).unwrap();
        levels.push(sp.config("w").unwrap().sparsity_level);
    }
    assert_eq!(levels[levels.len() - 1], 0.75);
    assert!(levels.windows(2).all(|p| p[1] >= p[0]));
    sp.step().unwrap();
    let mask = sp.get_mask("w").unwrap().clone();
    let masked_loss = loss(&mask).to_scalar::<f32>().unwrap();
    sp.squash_mask(None, SquashOptions::default()).unwrap();
    // 75% of the 16 blocks of 4 are zero in the Var itself; the plain forward equals the masked one.
    assert_eq!(
        flat_f32(w.as_tensor())
            .iter()
            .filter(|&&v| v == 0.0)
            .count(),
        48
    );
    let plain = x
        .matmul(&w.as_tensor().t().unwrap())
        .unwrap()
        .sub(&y)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(plain, masked_loss);
}

/// The files this project writes (the CLI's output, masks and state all go through
/// `SafetensorsWriter`) load with candle's own safetensors loader, every dtype, in a layout whose
/// tensor order is not the sorted one the `safetensors` crate would pick.
#[test]
fn candle_loads_files_written_by_the_streaming_writer() {
    use data_sparsifier::format::safetensors::SafetensorsWriter;
    use data_sparsifier::format::{FileDType, TensorInfo};
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("written.safetensors");
    let tensors: Vec<(&str, Tensor)> = DType::ALL
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            (
                ["z_f32", "a_f64", "m_f16", "b_bf16"][i],
                randn([3, 5], d, i as u64),
            )
        })
        .collect();
    let mut headers: Vec<TensorInfo> = tensors
        .iter()
        .map(|(n, t)| TensorInfo::new(*n, t.dtype().into(), t.shape()))
        .collect();
    headers.push(TensorInfo::new("mask", FileDType::U8, [2, 2]));
    let meta = BTreeMap::from([("sparsify".to_string(), "{\"version\":\"x\"}".to_string())]);
    let mut w = SafetensorsWriter::create(&path, &headers, Some(&meta)).unwrap();
    for (_, t) in &tensors {
        w.write(t.as_bytes()).unwrap();
    }
    w.write(&[1, 0, 0, 1]).unwrap();
    w.finish().unwrap();

    let loaded = candle_core::safetensors::load(&path, &CPU).unwrap();
    assert_eq!(loaded.len(), 5);
    for (name, t) in &tensors {
        let c = &loaded[*name];
        assert_eq!(c.dims(), t.shape(), "{name}");
        let values: Vec<f64> = c
            .to_dtype(CDType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(values, t.to_f64_vec(), "{name}");
    }
    let mask: Vec<u8> = loaded["mask"].flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(mask, vec![1, 0, 0, 1]);
}

#[test]
fn post_training_sparse_quantize_over_candle_modules() {
    use data_sparsifier::quant::{
        post_training_sparse_quantize, EmbeddingModule, QuantizedModule, QuantizedTable,
        SparseQuantizeOptions,
    };
    let emb_w = Var::randn(0f32, 1.0, (6, 8), &CPU).unwrap();
    let bag_w = Var::randn(0f32, 1.0, (5, 8), &CPU).unwrap();
    let emb = candle_nn::Embedding::new(emb_w.as_tensor().clone(), 8);
    let bag = EmbeddingBag::new(bag_w.as_tensor().clone(), BagMode::Mean)
        .unwrap()
        .with_padding_idx(0)
        .unwrap();
    let model: Vec<(&str, EmbeddingModule)> = vec![("emb", emb.into()), ("tower.bag", bag.into())];
    let mut sp = DataNormSparsifier::data_norm(cfg()).unwrap();
    let out =
        post_training_sparse_quantize(&model, &mut sp, &SparseQuantizeOptions::default()).unwrap();
    assert_eq!(out[1].0, "tower_bag");
    // The candle weights were squashed in place; the quantized tables are those of the squashed
    // weights, and the bag keeps its mode and padding row.
    let squashed = flat_f32(emb_w.as_tensor());
    assert_eq!(squashed.iter().filter(|x| **x == 0.0).count(), 24);
    let want =
        QuantizedTable::quantize("emb", &Tensor::from_vec(squashed, [6, 8]).unwrap()).unwrap();
    assert_eq!(out[0].1.table(), &want);
    match &out[1].1 {
        QuantizedModule::EmbeddingBag(b) => {
            assert_eq!((b.mode(), b.padding_idx()), (BagMode::Mean, Some(0)))
        }
        other => panic!("{other:?}"),
    }
}

/// The candle inference bag over a compact table: the crate's compact bag's answer (the dense
/// bag's over the expanded table) as a candle tensor, for every encoding, through `forward_bags`
/// and as a `Module` over a 2-D batch; bad input is an error, never a panic.
#[test]
fn compact_embedding_bag_for_candle_equals_the_dense_bag_over_the_expanded_table() {
    use data_sparsifier::compact::{CompactOptions, CompactTable, Encoding};
    use data_sparsifier::embedding::{BagMode, Bags};
    use data_sparsifier::{EmbeddingBag as DenseBag, Mask};

    let rows = 50;
    let w = data_sparsifier::random::randn([rows, 8], data_sparsifier::DType::F32, 4);
    let keep: Vec<u8> = (0..rows * 8).map(|i| u8::from((i / 4) % 3 != 0)).collect();
    let mask = Mask::from_dense_u8([rows, 8], &keep).unwrap();
    let indices: Vec<i64> = (0..60).map(|i| (i * 7 % rows) as i64).collect();
    let dev = candle_core::Device::Cpu;
    for enc in [
        None,
        Some(Encoding::Int8),
        Some(Encoding::Int4),
        Some(Encoding::Int2),
    ] {
        let opts = CompactOptions {
            encoding: enc,
            ..Default::default()
        };
        let t = CompactTable::encode(w.view(), &mask, &opts).unwrap();
        for mode in [BagMode::Sum, BagMode::Mean, BagMode::Max] {
            let bag =
                data_sparsifier::candle::CompactEmbeddingBag::new(&t, mode, Some(3), &dev).unwrap();
            let dense =
                DenseBag::from_parameter(t.to_tensor().unwrap().into(), mode, Some(3)).unwrap();
            let bags = Bags::Offsets {
                offsets: &[0, 5, 5, 40],
                include_last_offset: false,
            };
            let want = dense.forward(&indices, bags, None).unwrap();
            let got = bag.forward_bags(&indices, bags, None).unwrap();
            assert_eq!(got.dims(), want.shape());
            assert_eq!(
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.as_slice::<f32>().unwrap()
            );
            // As a Module: [batch, bag] indices, one bag a row.
            let xs = candle_core::Tensor::from_vec(indices.clone(), (12, 5), &dev).unwrap();
            let want = dense
                .forward(&indices, Bags::Fixed { bag_size: 5 }, None)
                .unwrap();
            let got = bag.forward(&xs).unwrap();
            assert_eq!(
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.as_slice::<f32>().unwrap()
            );
            // Bad input: an error.
            assert!(bag
                .forward(&candle_core::Tensor::new(&[1u32, 2], &dev).unwrap())
                .is_err());
            assert!(bag
                .forward(&candle_core::Tensor::new(&[[0.5f32]], &dev).unwrap())
                .is_err());
            assert!(bag
                .forward(&candle_core::Tensor::new(&[[rows as u32]], &dev).unwrap())
                .is_err());
            assert!(bag
                .forward_bags(&[-1], Bags::Fixed { bag_size: 1 }, None)
                .is_err());
        }
    }
}
