//! Compact tables: round trips (compact → expand equals the squashed dense table, through
//! memory and through a file) and lookups (compact equals dense, bit for bit), proptested over
//! shapes, blocks, levels and dtypes; the reader's checks on tampered files.

use data_sparsifier::compact::{
    expand, CompactEmbedding, CompactEmbeddingBag, CompactFile, CompactOptions, CompactSink,
    CompactTable, Encoding, RemapPolicy, METADATA_KEY,
};
use data_sparsifier::embedding::{BagMode, Bags};
use data_sparsifier::format::safetensors::SafetensorsSource;
use data_sparsifier::format::{CommitMode, FileDType, TensorInfo, TensorSink, TensorSource};
use data_sparsifier::random::Rng;
use data_sparsifier::{DType, Embedding, EmbeddingBag, Error, Mask, Tensor};
use proptest::prelude::*;

/// A table whose values include -0.0, NaN-free, of `dtype`.
fn table(rows: usize, cols: usize, dtype: DType, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let v: Vec<f64> = (0..rows * cols)
        .map(|i| {
            if i % 7 == 3 {
                -0.0
            } else {
                (rng.uniform() - 0.5) * 8.0
            }
        })
        .collect();
    Tensor::from_f64s(&v, dtype, [rows, cols]).unwrap()
}

/// A mask of `(br, bc)` blocks, each kept with probability `1 - level`; with `cellwise`, each
/// cell of a kept block is then dropped with probability 1/4 (a mask that is not block-shaped).
fn block_mask(
    rows: usize,
    cols: usize,
    br: usize,
    bc: usize,
    level: f64,
    cellwise: bool,
    seed: u64,
) -> Mask {
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut m = Mask::zeros([rows, cols]);
    for r0 in (0..rows).step_by(br) {
        for c0 in (0..cols).step_by(bc) {
            if rng.uniform() >= level {
                m.keep_block(r0..(r0 + br).min(rows), c0..(c0 + bc).min(cols));
            }
        }
    }
    if cellwise {
        for i in 0..rows * cols {
            if rng.uniform() < 0.25 {
                m.set(i, false);
            }
        }
    }
    m
}

fn squashed(w: &Tensor, m: &Mask) -> Tensor {
    let mut t = w.clone();
    t.apply_mask(m).unwrap();
    t
}

fn bits(t: &Tensor) -> Vec<u8> {
    t.as_bytes().to_vec()
}

fn dtype() -> impl Strategy<Value = DType> {
    prop::sample::select(DType::ALL.to_vec())
}

fn remap() -> impl Strategy<Value = RemapPolicy> {
    prop::sample::select(vec![
        RemapPolicy::Auto,
        RemapPolicy::Always,
        RemapPolicy::Never,
    ])
}

/// Writes `w` (masked) and a raw tensor through a CompactSink and reads the file back.
fn via_file(w: &Tensor, m: &Mask, opts: CompactOptions) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    let infos = [
        TensorInfo::new("ids", FileDType::U8, [3]),
        TensorInfo::new("emb.w", w.dtype().into(), w.shape().to_vec()),
    ];
    let mut sink: Box<dyn TensorSink> =
        Box::new(CompactSink::create(&path, &infos, None, opts).unwrap());
    sink.write_raw("ids", &[1, 2, 3]).unwrap();
    sink.write_masked("emb.w", w.view(), m).unwrap();
    sink.finish()
        .unwrap()
        .commit(CommitMode::NoClobber)
        .unwrap();
    (dir, path)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn compact_expands_to_the_squashed_table(
        rows in 0usize..40, cols in 0usize..20, br in 1usize..4, bc in 1usize..9,
        level in 0.0f64..1.0, cellwise in any::<bool>(), dt in dtype(), policy in remap(),
        width in prop::option::of(1usize..9), seed in any::<u64>(),
    ) {
        let w = table(rows, cols, dt, seed);
        let m = block_mask(rows, cols, br, bc, level, cellwise, seed);
        let want = squashed(&w, &m);
        let opts = CompactOptions {
            block_width: width.filter(|&b| b <= cols.max(1)),
            remap: policy,
            ..Default::default()
        };
        let t = CompactTable::encode(w.view(), &m, &opts).unwrap();
        prop_assert_eq!(bits(&t.to_tensor().unwrap()), bits(&want));
        prop_assert_eq!(t.info().remap, policy == RemapPolicy::Always && cols > 0 || t.info().remap);
        if !cellwise && bc <= cols {
            // At the mask's own block width no pruned cell is stored; the chosen width is no larger.
            let own = CompactOptions { block_width: Some(bc), remap: RemapPolicy::Never, ..Default::default() };
            let own = CompactTable::encode(w.view(), &m, &own).unwrap();
            prop_assert_eq!(own.info().values, m.count_kept());
            if opts.block_width.is_none() && policy == RemapPolicy::Never && bc.is_power_of_two() {
                prop_assert!(t.stored_bytes() * 8 <= own.stored_bytes() * 8 + 8);
            }
        }
        // Through a file: the reader's table, and the dense file `expand` writes.
        let (dir, path) = via_file(&w, &m, opts);
        let src = SafetensorsSource::read(&path).unwrap();
        let file = CompactFile::read(&src, "c").unwrap();
        let back = file.table("emb.w").unwrap();
        prop_assert_eq!(back.info(), t.info());
        prop_assert_eq!(bits(&back.to_tensor().unwrap()), bits(&want));
        let dense = dir.path().join("d.safetensors");
        expand(&file, &dense).unwrap().commit(CommitMode::NoClobber).unwrap();
        let d = SafetensorsSource::read(&dense).unwrap();
        prop_assert_eq!(d.tensors().iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), vec!["ids", "emb.w"]);
        prop_assert_eq!(d.bytes(0), &[1u8, 2, 3][..]);
        prop_assert_eq!(&d.tensors()[1].shape, &vec![rows, cols]);
        prop_assert_eq!(d.bytes(1), want.as_bytes());
        prop_assert!(d.metadata().is_none_or(|m| !m.contains_key(METADATA_KEY)));
    }

    #[test]
    fn lookups_over_compact_equal_lookups_over_dense(
        rows in 1usize..30, cols in 1usize..12, bc in 1usize..6, level in 0.0f64..1.0,
        cellwise in any::<bool>(), dt in dtype(), policy in remap(),
        mode in prop::sample::select(vec![BagMode::Sum, BagMode::Mean, BagMode::Max]),
        padding in prop::option::of(-3i64..3), weighted in any::<bool>(),
        last in any::<bool>(), idx in prop::collection::vec(0usize..1000, 0..40),
        cuts in prop::collection::vec(0usize..1000, 0..6), seed in any::<u64>(),
    ) {
        let w = table(rows, cols, dt, seed);
        let m = block_mask(rows, cols, 1, bc, level, cellwise, seed);
        let opts = CompactOptions { remap: policy, ..Default::default() };
        let t = CompactTable::encode(w.view(), &m, &opts).unwrap();
        let dense_w = squashed(&w, &m);
        let indices: Vec<i64> = idx.iter().map(|&i| (i % rows) as i64).collect();
        let padding = padding.filter(|&p| p < rows as i64 && p >= -(rows as i64));
        // Embedding.
        let emb = CompactEmbedding::new(&t, padding).unwrap();
        let dense = Embedding::from_parameter(dense_w.clone().into(), padding).unwrap();
        prop_assert_eq!(bits(&emb.forward(&indices).unwrap()), bits(&dense.forward(&indices).unwrap()));
        // EmbeddingBag, by offsets (sorted cuts, empty bags included).
        let mut offsets: Vec<i64> = std::iter::once(0).chain(cuts.iter().map(|&c| (c % (indices.len() + 1)) as i64)).collect();
        offsets.sort_unstable();
        if last {
            offsets.push(indices.len() as i64);
        }
        let bags = Bags::Offsets { offsets: &offsets, include_last_offset: last };
        let psw: Option<Vec<f64>> = (weighted && mode == BagMode::Sum)
            .then(|| indices.iter().enumerate().map(|(i, _)| i as f64 * 0.5 - 3.0).collect());
        let cbag = CompactEmbeddingBag::new(&t, mode, padding).unwrap();
        let dbag = EmbeddingBag::from_parameter(dense_w.into(), mode, padding).unwrap();
        let a = cbag.forward(&indices, bags, psw.as_deref()).unwrap();
        let b = dbag.forward(&indices, bags, psw.as_deref()).unwrap();
        prop_assert_eq!(a.shape(), b.shape());
        prop_assert_eq!(bits(&a), bits(&b));
    }
}

#[test]
fn bad_indices_are_typed_errors() {
    let w = table(4, 3, DType::F32, 1);
    let m = block_mask(4, 3, 1, 1, 0.5, false, 1);
    let t = CompactTable::encode(w.view(), &m, &CompactOptions::default()).unwrap();
    let bag = CompactEmbeddingBag::new(&t, BagMode::Sum, None).unwrap();
    for bad in [4i64, -1, i64::MAX, i64::MIN] {
        assert!(matches!(
            bag.forward(&[0, bad], Bags::Fixed { bag_size: 2 }, None),
            Err(Error::IndexOutOfRange { index, position: 1, .. }) if index == bad
        ));
        assert!(matches!(
            CompactEmbedding::new(&t, None).unwrap().forward(&[bad]),
            Err(Error::IndexOutOfRange { .. })
        ));
    }
    let offsets = Bags::Offsets {
        offsets: &[0, 3],
        include_last_offset: false,
    };
    assert!(matches!(
        bag.forward(&[0], offsets, None),
        Err(Error::InvalidLookup { .. })
    ));
    assert!(CompactEmbeddingBag::new(&t, BagMode::Sum, Some(4)).is_err());
    // Not 2-D: refused like the dense modules.
    let v = Tensor::from_vec(vec![1.0f32, 2.0], [2]).unwrap();
    let t1 = CompactTable::encode(v.view(), &Mask::ones([2]), &CompactOptions::default()).unwrap();
    assert!(matches!(
        CompactEmbedding::new(&t1, None),
        Err(Error::InvalidLookup { .. })
    ));
}

/// A compact file's bytes with a (1, 4)-blocked table that has pruned rows and a remap.
fn sample_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let w = table(40, 16, DType::F32, 9);
    let m = block_mask(40, 16, 1, 4, 0.8, false, 9);
    let opts = CompactOptions {
        remap: RemapPolicy::Always,
        ..Default::default()
    };
    via_file(&w, &m, opts)
}

/// Rewrites the compact metadata of the file at `path` with `edit`, keeping the tensors.
fn with_meta(path: &std::path::Path, edit: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = header["__metadata__"][METADATA_KEY]
        .as_str()
        .unwrap()
        .to_string();
    let mut v: serde_json::Value = serde_json::from_str(&meta).unwrap();
    edit(&mut v);
    header["__metadata__"][METADATA_KEY] = serde_json::Value::String(v.to_string());
    let mut h = serde_json::to_vec(&header).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

fn read_err(bytes: Vec<u8>) -> Error {
    match SafetensorsSource::from_bytes(bytes, "t") {
        Err(e) => e,
        Ok(src) => match CompactFile::read(&src, "t") {
            Err(e) => e,
            Ok(_) => panic!("a tampered file was accepted"),
        },
    }
}

#[test]
fn tampered_files_are_refused() {
    let (_dir, path) = sample_file();
    let src = SafetensorsSource::read(&path).unwrap();
    let file = CompactFile::read(&src, "c").unwrap();
    let t = file.table("emb.w").unwrap();
    assert!(
        t.remap().unwrap().contains(&-1),
        "the sample has pruned rows"
    );
    assert!(t.is_zero_copy());
    // Wrong sizes in the metadata.
    for (key, delta) in [
        ("values", 1i64),
        ("stored_rows", -1),
        ("rows", 1),
        ("block_width", 1),
    ] {
        let bytes = with_meta(&path, |v| {
            let x = &mut v["tables"]["emb.w"][key];
            *x = serde_json::json!(x.as_i64().unwrap() + delta);
        });
        assert!(
            matches!(read_err(bytes), Error::InvalidCompact { .. }),
            "{key}"
        );
    }
    let bytes = with_meta(&path, |v| v["tables"]["emb.w"]["encoding"] = "f16".into());
    assert!(matches!(read_err(bytes), Error::InvalidCompact { .. }));
    let bytes = with_meta(&path, |v| v["version"] = 2.into());
    assert!(matches!(read_err(bytes), Error::InvalidCompact { .. }));
    let bytes = with_meta(&path, |v| v["order"] = serde_json::json!(["ids"]));
    assert!(matches!(read_err(bytes), Error::InvalidCompact { .. }));
    // A remap entry out of range.
    let remap = src
        .tensors()
        .iter()
        .position(|t| t.name == "emb.w@remap")
        .unwrap();
    let at = src.range(remap).start;
    let mut bytes = std::fs::read(&path).unwrap();
    let first = (0..40).find(|&r| t.remap().unwrap()[r] >= 0).unwrap();
    bytes[at + 4 * first..at + 4 * first + 4].copy_from_slice(&1000i32.to_le_bytes());
    let e = read_err(bytes);
    assert!(e.to_string().contains("remap"), "{e}");
    // Truncated.
    let bytes = std::fs::read(&path).unwrap();
    for cut in [bytes.len() - 1, bytes.len() / 2, 10] {
        read_err(bytes[..cut].to_vec());
    }
    // Not compact.
    let dense = SafetensorsSource::from_bytes(
        {
            let h = br#"{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
            let mut b = (h.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(h);
            b.push(0);
            b
        },
        "dense",
    )
    .unwrap();
    assert!(matches!(
        CompactFile::read(&dense, "dense"),
        Err(Error::NotCompact { .. })
    ));
}

#[test]
fn block_width_is_chosen_from_the_mask() {
    let w = table(64, 64, DType::F32, 3);
    let m = block_mask(64, 64, 1, 4, 0.8, false, 3);
    let t = CompactTable::encode(w.view(), &m, &CompactOptions::default()).unwrap();
    assert_eq!(t.info().block_width, 4);
    assert!(
        !t.info().remap,
        "a remap does not pay for f32 rows of 16 blocks"
    );
    let opts = CompactOptions {
        block_width: Some(65),
        ..Default::default()
    };
    assert!(CompactTable::encode(w.view(), &m, &opts).is_err());
}

fn quantized() -> impl Strategy<Value = Encoding> {
    prop::sample::select(vec![Encoding::Int8, Encoding::Int4, Encoding::Int2])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn quantized_tables_expand_within_half_a_step_and_look_up_as_expanded(
        rows in 1usize..30, cols in 1usize..20, bc in 1usize..9, level in 0.0f64..1.0,
        cellwise in any::<bool>(), dt in dtype(), enc in quantized(), policy in remap(),
        idx in prop::collection::vec(0usize..1000, 0..30), seed in any::<u64>(),
    ) {
        let w = table(rows, cols, dt, seed);
        let m = block_mask(rows, cols, 1, bc, level, cellwise, seed);
        let opts = CompactOptions { encoding: Some(enc), remap: policy, ..Default::default() };
        let (dir, path) = via_file(&w, &m, opts);
        let src = SafetensorsSource::read(&path).unwrap();
        let file = CompactFile::read(&src, "c").unwrap();
        let t = file.table("emb.w").unwrap();
        prop_assert!(t.is_zero_copy());
        let back = t.to_tensor().unwrap();
        prop_assert_eq!(back.dtype(), dt);
        let (want, got) = (squashed(&w, &m).to_f64_vec(), back.to_f64_vec());
        let params = t.params().unwrap();
        for r in 0..rows {
            // The row's step: its stored row's scale (a pruned row has none).
            let step = t.stored_row_of(r).map_or(0.0, |s| f64::from(params[s].scale));
            for c in 0..cols {
                let i = r * cols + c;
                if !m.get(i) {
                    prop_assert_eq!(got[i].to_bits(), 0.0f64.to_bits(), "pruned cell {} not exactly 0", i);
                } else {
                    let tol = step / 2.0 + want[i].abs().max(got[i].abs()) * dtype_eps(dt) + 1e-6;
                    prop_assert!((got[i] - want[i]).abs() <= tol, "cell {}: {} vs {} (step {})", i, got[i], want[i], step);
                }
            }
        }
        // Through expand, and lookups over the compact table equal lookups over the expanded one.
        let dense = dir.path().join("d.safetensors");
        expand(&file, &dense).unwrap().commit(CommitMode::NoClobber).unwrap();
        let d = SafetensorsSource::read(&dense).unwrap();
        prop_assert_eq!(d.bytes(1), back.as_bytes());
        let indices: Vec<i64> = idx.iter().map(|&i| (i % rows) as i64).collect();
        let bags = Bags::Fixed { bag_size: 1 };
        for mode in [BagMode::Sum, BagMode::Mean, BagMode::Max] {
            let a = CompactEmbeddingBag::new(t, mode, None).unwrap().forward(&indices, bags, None).unwrap();
            let b = EmbeddingBag::from_weight(back.clone(), mode).unwrap().forward(&indices, bags, None).unwrap();
            prop_assert_eq!(bits(&a), bits(&b));
        }
    }
}

/// Relative rounding of a dtype (the expanded values are rounded to the table's dtype).
fn dtype_eps(d: DType) -> f64 {
    match d {
        DType::F32 => f32::EPSILON as f64,
        DType::F64 => f32::EPSILON as f64,
        DType::F16 => 1.0 / 1024.0,
        DType::BF16 => 1.0 / 128.0,
    }
}

#[test]
fn quantized_sizes_and_bad_params() {
    // int8 at level 0.8, (1, 4) blocks: codes, f32 params, mask.
    let w = table(256, 64, DType::F32, 5);
    let m = block_mask(256, 64, 1, 4, 0.8, false, 5);
    for (enc, per_row) in [
        (Encoding::Int8, 8),
        (Encoding::Int4, 4),
        (Encoding::Int2, 4),
    ] {
        let opts = CompactOptions {
            encoding: Some(enc),
            ..Default::default()
        };
        let t = CompactTable::encode(w.view(), &m, &opts).unwrap();
        assert_eq!(t.info().block_width, 4);
        assert_eq!(t.params().unwrap().len(), t.info().stored_rows);
        assert!(t.stored_bytes() >= t.info().stored_rows * per_row);
    }
    // NaN data cannot be quantized: a typed error.
    let nan = Tensor::from_vec(vec![f32::NAN, 1.0], [1, 2]).unwrap();
    let opts = CompactOptions {
        encoding: Some(Encoding::Int8),
        ..Default::default()
    };
    assert!(matches!(
        CompactTable::encode(nan.view(), &Mask::ones([1, 2]), &opts),
        Err(Error::Quant(_))
    ));
    // A NaN or negative scale in the file is refused.
    let (_dir, path) = via_file(&w, &m, opts);
    let src = SafetensorsSource::read(&path).unwrap();
    let p = src
        .tensors()
        .iter()
        .position(|t| t.name == "emb.w@params")
        .unwrap();
    let at = src.range(p).start;
    for bad in [f32::NAN, -1.0, f32::INFINITY] {
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at..at + 4].copy_from_slice(&bad.to_le_bytes());
        let e = read_err(bytes);
        assert!(
            matches!(e, Error::InvalidCompact { .. }) && e.to_string().contains("scale"),
            "{e}"
        );
    }
}

#[test]
fn sum_skips_pruned_cells_only_where_that_is_exact() {
    // -0.0 kept values, pruned cells, and weights that are 0, negative, infinite and NaN: the
    // compact sum equals the dense one bit for bit (0 · inf = NaN in a pruned cell too).
    let w = Tensor::from_vec(vec![-0.0f32, 1.0, 0.0, -2.0, -0.0, 3.0, 0.5, -0.0], [2, 4]).unwrap();
    let m = Mask::from_dense_u8([2, 4], &[1, 1, 0, 0, 1, 0, 1, 1]).unwrap();
    let t = CompactTable::encode(w.view(), &m, &CompactOptions::default()).unwrap();
    let dense = EmbeddingBag::from_weight(squashed(&w, &m), BagMode::Sum).unwrap();
    let bag = CompactEmbeddingBag::new(&t, BagMode::Sum, None).unwrap();
    for psw in [
        [1.0, 1.0],
        [0.0, -1.0],
        [f64::INFINITY, 1.0],
        [f64::NAN, -0.0],
        [-1.0, f64::NEG_INFINITY],
    ] {
        let a = bag
            .forward(&[0, 1], Bags::Fixed { bag_size: 2 }, Some(&psw))
            .unwrap();
        let b = dense
            .forward(&[0, 1], Bags::Fixed { bag_size: 2 }, Some(&psw))
            .unwrap();
        assert_eq!(bits(&a), bits(&b), "{psw:?}");
    }
}

/// The lookup kernels' every route: block widths 1 to 64 (16 and 32 included), more than 32
/// blocks a row (the route without the row locator), a narrower last block, every encoding,
/// a remap or none, weights or none, and more bags than one parallel task takes; each equal
/// bit for bit to the dense bag over the expanded table.
#[test]
fn every_kernel_route_looks_up_as_the_expanded_table() {
    let mut rng = Rng::new(9);
    let rows = 300;
    let indices: Vec<i64> = (0..4000)
        .map(|_| (rng.next_u64() % rows as u64) as i64)
        .collect();
    let psw: Vec<f64> = (0..indices.len())
        .map(|i| (i % 7) as f64 * 0.25 - 0.5)
        .collect();
    let offsets: Vec<i64> = (0..indices.len() as i64).step_by(13).collect();
    let bags = Bags::Offsets {
        offsets: &offsets,
        include_last_offset: false,
    };
    for (cols, bc) in [
        (64, 1),
        (64, 2),
        (64, 4),
        (64, 8),
        (64, 16),
        (64, 32),
        (64, 64),
        (40, 8),
        (30, 4),
        (200, 1),
    ] {
        for dt in [DType::F32, DType::BF16] {
            let w = table(rows, cols, dt, cols as u64);
            let m = block_mask(rows, cols, 1, bc, 0.7, false, bc as u64);
            for enc in [
                None,
                Some(Encoding::Int8),
                Some(Encoding::Int4),
                Some(Encoding::Int2),
            ] {
                for policy in [RemapPolicy::Never, RemapPolicy::Always] {
                    let opts = CompactOptions {
                        encoding: enc,
                        block_width: Some(bc.min(cols)),
                        remap: policy,
                    };
                    let t = CompactTable::encode(w.view(), &m, &opts).unwrap();
                    let expanded = t.to_tensor().unwrap();
                    for (mode, weights) in [
                        (BagMode::Sum, None),
                        (BagMode::Sum, Some(&psw[..])),
                        (BagMode::Mean, None),
                        (BagMode::Max, None),
                    ] {
                        let a = CompactEmbeddingBag::new(&t, mode, Some(3))
                            .unwrap()
                            .forward(&indices, bags, weights)
                            .unwrap();
                        let b =
                            EmbeddingBag::from_parameter(expanded.clone().into(), mode, Some(3))
                                .unwrap()
                                .forward(&indices, bags, weights)
                                .unwrap();
                        assert_eq!(bits(&a), bits(&b), "cols {cols}, block {bc}, {dt}, {enc:?}, {policy:?}, {mode:?}, weighted {}", weights.is_some());
                    }
                }
            }
        }
    }
}
