//! Properties of the quantizers: our rowwise codecs (round trip within half a step, pruned cells
//! exactly 0, constant rows exact, FBGEMM row layout, typed errors on NaN / inf / bad buffers /
//! bad stored parameters, empty rows and tables) and PyTorch's form (typed errors, empty tables,
//! the lookups against the dequantized rows), and `post_training_sparse_quantize`'s checks.

use data_sparsifier::embedding::{BagMode, Bags};
use data_sparsifier::quant::{
    post_training_sparse_quantize, EmbeddingModule, MaskedRowwiseTable, QuantError,
    QuantizedEmbedding, QuantizedEmbeddingBag, QuantizedTable, RowCodec, RowParams,
    SparseQuantizeOptions,
};
use data_sparsifier::{
    DType, Data, DataNormConfig, DataNormSparsifier, Embedding, EmbeddingBag, Error, Mask,
    Parameter, Tensor,
};
use proptest::prelude::*;

/// Every codec (a new one joins these properties by joining `RowCodec::ALL`).
fn codec() -> impl Strategy<Value = RowCodec> {
    prop::sample::select(RowCodec::ALL.to_vec())
}

/// Finite f32 values of mixed magnitude, inside the f16 range so int4 / int2 can encode them.
fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        -1.0f32..1.0,
        -1000.0f32..1000.0,
        (-1.0e-3f32..1.0e-3),
        Just(0.0f32),
        Just(-0.0f32),
    ]
}

/// The half-step bound of one decoded cell: `scale / 2`, plus the f32 rounding of the decoded value
/// and of the fused multiply-add (one ulp of the larger magnitude).
fn bound(p: RowParams, x: f32, y: f32) -> f32 {
    p.scale / 2.0 + 2.0 * f32::EPSILON * x.abs().max(y.abs()).max(p.bias.abs())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn encode_decode_is_within_half_a_step(codec in codec(), values in prop::collection::vec(value(), 0..70)) {
        let mut codes = vec![0u8; codec.code_bytes(values.len())];
        let p = codec.encode_row(&values, &mut codes).unwrap();
        prop_assert!(p.scale >= 0.0 && p.scale.is_finite() && p.bias.is_finite());
        let mut back = vec![0f32; values.len()];
        codec.decode_row(&codes, p, &mut back).unwrap();
        for (i, (&x, &y)) in values.iter().zip(&back).enumerate() {
            prop_assert!((x - y).abs() <= bound(p, x, y), "cell {}: {} -> {} with {:?}", i, x, y, p);
        }
        // The fused row holds the same codes, then the stored parameters, which read back equal.
        let mut row = vec![0u8; codec.bytes_per_row(values.len())];
        let p2 = codec.encode_fused_row(&values, &mut row).unwrap();
        prop_assert_eq!(p, p2);
        prop_assert_eq!(&row[..codes.len()], &codes[..]);
        let mut back2 = vec![0f32; values.len()];
        prop_assert_eq!(codec.decode_fused_row(&row, &mut back2).unwrap(), p);
        prop_assert_eq!(back, back2);
    }

    #[test]
    fn all_equal_rows_decode_exactly(codec in codec(), v in value(), n in 1usize..40) {
        let values = vec![v; n];
        let mut codes = vec![0u8; codec.code_bytes(n)];
        let p = codec.encode_row(&values, &mut codes).unwrap();
        let mut back = vec![1f32; n];
        codec.decode_row(&codes, p, &mut back).unwrap();
        if codec == RowCodec::Int8 || half::f16::from_f32(v).to_f32() == v {
            prop_assert!(back.iter().all(|&y| y == v), "{} -> {:?}", v, back);
        } else {
            // An f16 bias cannot hold every f32: within half a step of the f16 grid.
            prop_assert!(back.iter().all(|&y| (y - v).abs() <= bound(p, v, y)));
        }
    }

    #[test]
    fn masked_tables_prune_to_exact_zeros(
        codec in codec(),
        rows in 0usize..6,
        cols in 0usize..20,
        seed in any::<u64>(),
    ) {
        let mut rng = seed | 1;
        let mut next = move || { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; rng };
        let values: Vec<f32> = (0..rows * cols).map(|_| (next() % 20001) as f32 / 100.0 - 100.0).collect();
        let keep: Vec<u8> = (0..rows * cols).map(|_| u8::from(next() % 3 != 0)).collect();
        let t = Tensor::from_vec(values.clone(), [rows, cols]).unwrap();
        let mask = Mask::from_dense_u8([rows, cols], &keep).unwrap();
        let q = MaskedRowwiseTable::encode(codec, "t", &t, Some(&mask)).unwrap();
        let back = q.dequantize();
        let back = back.as_slice::<f32>().unwrap();
        prop_assert_eq!(back.len(), rows * cols);
        for r in 0..rows {
            let p = q.params()[r];
            for c in 0..cols {
                let i = r * cols + c;
                if keep[i] == 0 {
                    prop_assert_eq!(back[i].to_bits(), 0u32, "pruned cell ({}, {}) is {}", r, c, back[i]);
                } else {
                    prop_assert!((back[i] - values[i]).abs() <= bound(p, values[i], back[i]));
                }
            }
            // The row's range comes from its kept cells only.
            let kept: Vec<f32> = (0..cols).filter(|&c| keep[r * cols + c] == 1).map(|c| values[r * cols + c]).collect();
            let mut codes = vec![0u8; codec.code_bytes(kept.len())];
            prop_assert_eq!(codec.encode_row(&kept, &mut codes).unwrap(), p);
            prop_assert_eq!(q.row_codes(r), &codes[..]);
        }
        let bytes: usize = (0..rows).map(|r| q.row_codes(r).len() + codec.param_bytes()).sum();
        prop_assert_eq!(q.nbytes(), bytes);
    }

    #[test]
    fn non_finite_values_are_typed_errors(codec in codec(), n in 1usize..20, at in 0usize..20, which in 0usize..3) {
        let at = at % n;
        let bad = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][which];
        let mut values = vec![0.5f32; n];
        values[at] = bad;
        let mut codes = vec![0u8; codec.code_bytes(n)];
        let err = codec.encode_row(&values, &mut codes).unwrap_err();
        prop_assert!(matches!(err, QuantError::NonFinite { index, .. } if index == at), "{:?}", err);
        let msg = err.to_string();
        prop_assert!(!msg.contains('\n') && msg.contains("not finite") && msg.contains("replace"));
        // Table level: the error names the data, the row and the column.
        let t = Tensor::from_vec(values.clone(), [1, n]).unwrap();
        let err = MaskedRowwiseTable::encode(codec, "emb", &t, None).unwrap_err();
        prop_assert!(err.to_string().contains("\"emb\" row 0"), "{}", err);
        let err = QuantizedTable::quantize("emb", &t).unwrap_err();
        prop_assert!(matches!(&err, Error::Quant(QuantError::NonFinite { index, .. }) if *index == at), "{:?}", err);
    }

    #[test]
    fn pytorch_lookups_equal_the_prepacked_rows(rows in 1usize..8, cols in 0usize..12, seed in any::<u64>()) {
        let w = data_sparsifier::random::randn([rows, cols], DType::F32, seed);
        let q = QuantizedTable::quantize("w", &w).unwrap();
        // Every row of the prepacked table, decoded as an int8 fused row, is within f32 rounding of
        // the dequantized row (bias = -zp·scale is rounded once).
        let packed = q.prepack();
        let d = q.dequantize();
        let d = d.as_slice::<f32>().unwrap();
        let emb = QuantizedEmbedding::new(q.clone(), None).unwrap();
        let idx: Vec<i64> = (0..rows as i64).collect();
        let looked = emb.forward(&idx).unwrap();
        let looked = looked.as_slice::<f32>().unwrap();
        for r in 0..rows {
            let mut row = vec![0f32; cols];
            RowCodec::Int8.decode_fused_row(&packed[r * (cols + 8)..(r + 1) * (cols + 8)], &mut row).unwrap();
            prop_assert_eq!(&row[..], &looked[r * cols..(r + 1) * cols]);
            for c in 0..cols {
                let tol = 4.0 * f32::EPSILON * (q.scales()[r] * 255.0 + d[r * cols + c].abs());
                prop_assert!((row[c] - d[r * cols + c]).abs() <= tol);
            }
        }
        // Sum of one-row bags equals the Embedding lookup, mean of a bag of one too.
        for mode in [BagMode::Sum, BagMode::Mean, BagMode::Max] {
            let bag = QuantizedEmbeddingBag::new(q.clone(), mode, None).unwrap();
            let out = bag.forward(&idx, Bags::Fixed { bag_size: 1 }, None).unwrap();
            prop_assert_eq!(out.as_slice::<f32>().unwrap(), looked);
        }
    }
}

#[test]
fn empty_rows_and_tables() {
    for codec in RowCodec::ALL {
        let p = codec.encode_row(&[], &mut []).unwrap();
        assert_eq!(p, RowParams::default());
        codec.decode_row(&[], p, &mut []).unwrap();
        let mut row = vec![0u8; codec.bytes_per_row(0)];
        codec.encode_fused_row(&[], &mut row).unwrap();
        for shape in [[0, 4], [3, 0], [0, 0]] {
            let t = Tensor::zeros(DType::F32, shape);
            let q = MaskedRowwiseTable::encode(codec, "t", &t, None).unwrap();
            assert_eq!(q.dequantize().shape(), &shape);
        }
    }
    for shape in [[0, 4], [3, 0]] {
        let t = Tensor::zeros(DType::F32, shape);
        let q = QuantizedTable::quantize("t", &t).unwrap();
        assert_eq!(q.dequantize().shape(), &shape);
        assert_eq!(q.scales().len(), shape[0]);
    }
    let err = QuantizedTable::quantize("t", &Tensor::zeros(DType::F32, [4])).unwrap_err();
    assert!(
        matches!(err, Error::Quant(QuantError::NotATable { .. })),
        "{err}"
    );
}

#[test]
fn bad_buffers_and_stored_parameters_are_typed_errors() {
    let c = RowCodec::Int4;
    assert!(matches!(
        c.encode_row(&[1.0, 2.0, 3.0], &mut [0u8; 1]),
        Err(QuantError::BufferSize {
            expected: 2,
            actual: 1,
            ..
        })
    ));
    assert!(c
        .decode_row(&[0u8; 3], RowParams::default(), &mut [0f32; 2])
        .is_err());
    assert!(c.decode_fused_row(&[0u8; 3], &mut [0f32; 2]).is_err());
    for (scale, bias) in [
        (f32::NAN, 0.0),
        (-1.0, 0.0),
        (f32::INFINITY, 0.0),
        (1.0, f32::NAN),
    ] {
        for codec in RowCodec::ALL {
            let mut b = vec![0u8; codec.param_bytes()];
            match codec {
                RowCodec::Int8 => {
                    b[..4].copy_from_slice(&scale.to_le_bytes());
                    b[4..].copy_from_slice(&bias.to_le_bytes());
                }
                _ => {
                    b[..2].copy_from_slice(&half::f16::from_f32(scale).to_le_bytes());
                    b[2..].copy_from_slice(&half::f16::from_f32(bias).to_le_bytes());
                }
            }
            let err = codec.read_params(&b).unwrap_err();
            assert!(matches!(err, QuantError::BadParams { .. }), "{err}");
        }
    }
    // int4 / int2 parameters are f16: a row beyond its range needs int8.
    let err = RowCodec::Int4
        .encode_row(&[-1.0e6, 0.0], &mut [0u8])
        .unwrap_err();
    assert!(matches!(err, QuantError::OutOfRange { .. }), "{err}");
    assert!(err.to_string().contains("use int8"));
    assert!(RowCodec::Int8
        .encode_row(&[-1.0e6, 0.0], &mut [0u8; 2])
        .is_ok());
    assert!(matches!(
        "int16".parse::<RowCodec>(),
        Err(QuantError::UnknownCodec { .. })
    ));
}

#[test]
fn ours_is_not_widened_by_zeros_but_pytorchs_is() {
    // A row of values in [10, 11] with pruned zeros: PyTorch's step is 11/255, ours at most 1/252
    // (its grid search may use up to 3 fewer steps over the kept range).
    let values = [0.0f32, 10.0, 10.25, 0.0, 10.5, 11.0];
    let keep = [0u8, 1, 1, 0, 1, 1];
    let t = Tensor::from_vec(values.to_vec(), [1, 6]).unwrap();
    let ours = MaskedRowwiseTable::encode(
        RowCodec::Int8,
        "t",
        &t,
        Some(&Mask::from_dense_u8([1, 6], &keep).unwrap()),
    )
    .unwrap();
    let theirs = QuantizedTable::quantize("t", &t).unwrap();
    assert!(ours.params()[0].scale <= 1.0 / 252.0 * 1.000001);
    assert!(theirs.scales()[0] >= 11.0 / 255.0 * 0.99999);
    let d = ours.dequantize();
    assert_eq!(d.as_slice::<f32>().unwrap()[0], 0.0);
}

fn model() -> Vec<(&'static str, EmbeddingModule)> {
    vec![
        (
            "emb",
            Embedding::new(6, 8, DType::F32, None, 1).unwrap().into(),
        ),
        (
            "tower.bag",
            EmbeddingBag::new(5, 8, DType::F16, BagMode::Mean, Some(0), 2)
                .unwrap()
                .into(),
        ),
        (
            "fc.weight",
            EmbeddingModule::Other(Data::from(Parameter::new(Tensor::zeros(
                DType::F32,
                [2, 2],
            )))),
        ),
    ]
}

fn sparsifier() -> DataNormSparsifier {
    DataNormSparsifier::data_norm(DataNormConfig {
        sparsity_level: 0.5,
        sparse_block_shape: (1, 2),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn post_training_selection_names_and_errors() {
    let m = model();
    let mut sp = sparsifier();
    let out =
        post_training_sparse_quantize(&m, &mut sp, &SparseQuantizeOptions::default()).unwrap();
    let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["emb", "tower_bag"]); // the linear weight is skipped
    match &out[1].1 {
        data_sparsifier::quant::QuantizedModule::EmbeddingBag(b) => {
            assert_eq!((b.mode(), b.padding_idx()), (BagMode::Mean, Some(0)));
        }
        other => panic!("{other:?}"),
    }
    // sparsify_first squashed into the modules' own weights.
    if let EmbeddingModule::Embedding(e) = &m[0].1 {
        assert!((e.weight().read().zero_fraction() - 0.5).abs() < 1e-9);
    }

    let sel = |names: &'static [&'static str]| SparseQuantizeOptions {
        sparsify_first: false,
        select: Some(names),
    };
    let err = post_training_sparse_quantize(&model(), &mut sparsifier(), &sel(&["fc.weight"]))
        .unwrap_err();
    assert!(
        matches!(err, Error::Quant(QuantError::NotAnEmbedding { .. })),
        "{err}"
    );
    let err =
        post_training_sparse_quantize(&model(), &mut sparsifier(), &sel(&["nope"])).unwrap_err();
    assert!(matches!(err, Error::UnknownName { .. }), "{err}");
    let err = post_training_sparse_quantize(&model(), &mut sparsifier(), &sel(&["emb", "emb"]))
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateName { .. }), "{err}");
    let twins: Vec<(&str, EmbeddingModule)> = vec![
        (
            "a.b",
            Embedding::new(2, 2, DType::F32, None, 1).unwrap().into(),
        ),
        (
            "a_b",
            Embedding::new(2, 2, DType::F32, None, 2).unwrap().into(),
        ),
    ];
    let err =
        post_training_sparse_quantize(&twins, &mut sparsifier(), &Default::default()).unwrap_err();
    assert!(matches!(err, Error::DuplicateName { .. }), "{err}");

    // quantize first leaves the modules' weights alone.
    let m = model();
    let before = match &m[0].1 {
        EmbeddingModule::Embedding(e) => e.weight().snapshot(),
        _ => unreachable!(),
    };
    let out = post_training_sparse_quantize(&m, &mut sparsifier(), &sel(&["emb"])).unwrap();
    assert_eq!(out.len(), 1);
    match &m[0].1 {
        EmbeddingModule::Embedding(e) => assert_eq!(e.weight().snapshot(), before),
        _ => unreachable!(),
    }
}

#[test]
fn post_training_refuses_nan_before_changing_anything() {
    let emb = Embedding::new(4, 4, DType::F32, None, 1).unwrap();
    emb.weight().write().as_slice_mut::<f32>().unwrap()[6] = f32::NAN;
    let m: Vec<(&str, EmbeddingModule)> = vec![
        (
            "ok",
            Embedding::new(4, 4, DType::F32, None, 2).unwrap().into(),
        ),
        ("bad.emb", emb.into()),
    ];
    let mut sp = sparsifier();
    let err = post_training_sparse_quantize(&m, &mut sp, &Default::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("\"bad.emb\" row 1") && msg.contains("position 2") && msg.contains("NaN"),
        "{msg}"
    );
    assert!(sp.is_empty(), "nothing was added to the sparsifier");
    if let EmbeddingModule::Embedding(e) = &m[0].1 {
        assert_eq!(
            e.weight().read().zero_fraction(),
            0.0,
            "nothing was squashed"
        );
    }
}
