//! Conformance with PyTorch's `post_training_sparse_quantize`: the 200 golden cases in
//! `tests/data/conformance/quant/` (see the README there).
//!
//! * Quantization itself, on the case's own `weight * mask` (sparsify first) or on the untouched
//!   weight (quantize first): `qweight` (`int_repr`), `scales`, `zero_points` and `dequant` equal
//!   bit for bit, and the quantized `EmbeddingBag` forward (sum) equal bit for bit.
//! * `sparsify_first = false`: the mask comes from our DataNormSparsifier on our dequantized table,
//!   judged by the tie-equivalence rule of the data_norm README; the re-quantized table must then
//!   equal PyTorch's.
//! * The library API `post_training_sparse_quantize` over an `Embedding` and an `EmbeddingBag` holding
//!   the case's weights: its masks are tie-equivalent to PyTorch's, and where the mask is PyTorch's
//!   its tables equal PyTorch's bit for bit.

use data_sparsifier::embedding::{BagMode, Bags};
use data_sparsifier::norm::{pruned_block_count, DataNormSparsifier, Norm};
use data_sparsifier::quant::{
    post_training_sparse_quantize, EmbeddingModule, QuantizedEmbeddingBag, QuantizedModule,
    QuantizedTable, SparseQuantizeOptions,
};
use data_sparsifier::{DataNormConfig, Embedding, EmbeddingBag, Tensor};

mod common;
use common::golden::{tie_equivalent, Case};
use common::quant::{case_paths, load, quant_dir, QuantCase, Table};

fn bits32(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn first_diff<T: PartialEq + std::fmt::Debug>(a: &[T], b: &[T]) -> String {
    match (0..a.len().min(b.len())).find(|&i| a[i] != b[i]) {
        Some(i) => format!(
            "{} of {} differ, first at {i}: ours {:?}, PyTorch {:?}",
            (0..a.len().min(b.len())).filter(|&i| a[i] != b[i]).count(),
            a.len(),
            a[i],
            b[i]
        ),
        None => format!("lengths {} vs {}", a.len(), b.len()),
    }
}

/// `qweight`, `scales`, `zero_points` (by value: PyTorch's zero point of a row whose minimum is
/// +0.0 is -0.0 and vice versa, the sign of a zero is not part of the contract) and `dequant`.
fn check_table(what: &str, q: &QuantizedTable, want: &Table, failures: &mut Vec<String>) {
    if q.int_repr() != want.qweight.as_slice() {
        failures.push(format!(
            "{what}: qweight {}",
            first_diff(q.int_repr(), &want.qweight)
        ));
    }
    if q.scales_f64() != want.scales {
        failures.push(format!(
            "{what}: scales {}",
            first_diff(&q.scales_f64(), &want.scales)
        ));
    }
    if q.zero_points_f64() != want.zero_points {
        failures.push(format!(
            "{what}: zero_points {}",
            first_diff(&q.zero_points_f64(), &want.zero_points)
        ));
    }
    let d = q.dequantize();
    let d = d.as_slice::<f32>().unwrap();
    // Bit for bit, except that -0.0 == 0.0 (the sign of a zero follows the zero point's).
    let same = d.len() == want.dequant.len() && d.iter().zip(&want.dequant).all(|(a, b)| a == b);
    if !same {
        failures.push(format!(
            "{what}: dequant {}",
            first_diff(&bits32(d), &bits32(&want.dequant))
        ));
    }
}

fn check_forward(c: &QuantCase, q: &QuantizedTable, how: &str, failures: &mut Vec<String>) {
    let bag = QuantizedEmbeddingBag::new(q.clone(), BagMode::Sum, None).unwrap();
    let bags = Bags::Offsets {
        offsets: &c.offsets,
        include_last_offset: false,
    };
    let out = bag.forward(&c.indices, bags, None).unwrap();
    let out = out.as_slice::<f32>().unwrap();
    if bits32(out) != bits32(&c.forward) {
        failures.push(format!(
            "{} ({how}): bag.forward {}",
            c.file,
            first_diff(&bits32(out), &bits32(&c.forward))
        ));
    }
}

fn masked(weight: &Tensor, mask: &[u8]) -> Tensor {
    let w = weight.as_slice::<f32>().unwrap();
    let v: Vec<f32> = w
        .iter()
        .zip(mask)
        .map(|(&x, &m)| x * f32::from(m))
        .collect();
    Tensor::from_vec(v, weight.shape().to_vec()).unwrap()
}

/// A data_norm-style case over `data`, for the tie-equivalence checker.
fn tie_case(c: &QuantCase, t: &str, data: Tensor) -> Case {
    Case {
        file: format!("{} {t}", c.file),
        data,
        want: Vec::new(),
        config: c.config.clone(),
        exact: false,
        meta: c.meta.clone(),
    }
}

/// Our DataNorm mask of `data`, through the sparsifier container.
fn our_mask(config: &DataNormConfig, data: &Tensor) -> Vec<u8> {
    let mut sp = DataNormSparsifier::data_norm(config.clone()).unwrap();
    sp.add_data("t", data.clone()).unwrap();
    sp.step().unwrap();
    sp.get_mask("t").unwrap().to_dense_u8()
}

/// Quantize first: the dequantized first pass has many exact ties (cells on one quantization
/// level), so PyTorch's unstable sort may prune other cells than ours. PyTorch's mask is read back
/// from its codes (a cell on the row's code of 0 was pruned, one on its first-pass code kept);
/// it must be tie-equivalent, and re-quantizing with it must give PyTorch's table. Returns the
/// table to compare with PyTorch's, and whether the masks differed.
fn resolve_ties(
    c: &QuantCase,
    t: &str,
    want: &Table,
    ours: QuantizedTable,
    mask: &[u8],
    failures: &mut Vec<String>,
) -> (QuantizedTable, bool) {
    if ours.int_repr() == want.qweight.as_slice() {
        return (ours, false);
    }
    let first = &QuantizedTable::quantize(t, &want.weight).unwrap();
    let deq = &first.dequantize();
    let (_, cols) = first.dims();
    let zero = Tensor::from_vec(vec![0f32; deq.numel()], deq.shape().to_vec()).unwrap();
    let q0 = QuantizedTable::quantize_with(t, &zero, first.scales(), first.zero_points()).unwrap();
    // Per cell: Some(true) PyTorch kept it, Some(false) pruned it, None either (the cell's code
    // is the row's code of 0, so both give the same table).
    let mut state: Vec<Option<bool>> = Vec::with_capacity(mask.len());
    for i in 0..mask.len() {
        let (g, f, z) = (want.qweight[i], first.int_repr()[i], q0.int_repr()[i]);
        state.push(if f == z {
            None
        } else if g == f {
            Some(true)
        } else if g == z {
            Some(false)
        } else {
            failures.push(format!(
                "{} {t}: PyTorch's code {g} at row {} col {} is neither the cell's code {f} nor the row's code of 0 ({z})",
                c.file,
                i / cols,
                i % cols
            ));
            return (ours, true);
        });
    }
    let mut theirs: Vec<u8> = state
        .iter()
        .zip(mask)
        .map(|(s, &m)| s.map_or(m, u8::from))
        .collect();
    let (bh, bw) = c.config.sparse_block_shape;
    if c.config.zeros_per_block_effective() >= bh * bw {
        // Whole blocks are pruned: a block is pruned if PyTorch pruned any of its cells, kept if
        // it kept any, and the undecided blocks are pruned lowest score first up to the budget.
        let rows = mask.len() / cols.max(1);
        let x = deq.to_f64_vec();
        let cell = |v: f64| match c.config.norm {
            Norm::L1 => v.abs(),
            Norm::L2 => v * v,
        };
        let (nbr, nbc) = (rows.div_ceil(bh), cols.div_ceil(bw));
        let cells_of = |b: usize| -> Vec<usize> {
            let (br, bc) = (b / nbc, b % nbc);
            (br * bh..((br + 1) * bh).min(rows))
                .flat_map(|r| (bc * bw..((bc + 1) * bw).min(cols)).map(move |col| r * cols + col))
                .collect()
        };
        let mut pruned = vec![false; nbr * nbc];
        let mut open = Vec::new();
        for (b, p) in pruned.iter_mut().enumerate() {
            let cs = cells_of(b);
            if cs.iter().any(|&i| state[i] == Some(false)) {
                *p = true;
            } else if cs.iter().all(|&i| state[i].is_none()) {
                let score = cs.iter().map(|&i| cell(x[i])).sum::<f64>() / cs.len() as f64;
                open.push((score, b));
            }
        }
        let k = pruned_block_count(c.config.sparsity_level, nbr * nbc);
        let known = pruned.iter().filter(|&&p| p).count();
        open.sort_by(|a, b| a.0.total_cmp(&b.0));
        for &(_, b) in open.iter().take(k.saturating_sub(known)) {
            pruned[b] = true;
        }
        for (b, &p) in pruned.iter().enumerate() {
            for i in cells_of(b) {
                theirs[i] = u8::from(!p);
            }
        }
    }
    if let Err(e) = tie_equivalent(&tie_case(c, t, deq.clone()), &theirs) {
        failures.push(format!("{} {t}: PyTorch's implied mask: {e}", c.file));
    }
    let m = masked(deq, &theirs);
    let q = QuantizedTable::quantize_with(t, &m, first.scales(), first.zero_points()).unwrap();
    (q, true)
}

#[test]
fn all_200_golden_quant_cases_conform() {
    let paths = case_paths();
    assert_eq!(paths.len(), 200, "expected 200 cases in {:?}", quant_dir());
    let mut failures = Vec::new();
    let (mut first, mut later, mut ties, mut api_exact, mut api_tie) = (0, 0, 0, 0, 0);
    for path in &paths {
        let c = load(path);
        let mut bag_table = None;
        for (t, want) in [("emb", &c.emb), ("bag", &c.bag)] {
            let what = format!("{} {t} ({:?})", c.file, c.meta);
            let q = if c.sparsify_first {
                first += 1;
                let input = masked(&want.weight, want.mask.as_ref().unwrap());
                QuantizedTable::quantize(t, &input).unwrap()
            } else {
                later += 1;
                let q1 = QuantizedTable::quantize(t, &want.weight).unwrap();
                let deq = q1.dequantize();
                let mask = our_mask(&c.config, &deq);
                if let Err(e) = tie_equivalent(&tie_case(&c, t, deq.clone()), &mask) {
                    failures.push(format!("{what}: our mask on the dequantized table: {e}"));
                }
                let m = masked(&deq, &mask);
                let q =
                    QuantizedTable::quantize_with(t, &m, q1.scales(), q1.zero_points()).unwrap();
                let (q, tie) = resolve_ties(&c, t, want, q, &mask, &mut failures);
                ties += tie as usize;
                q
            };
            check_table(&what, &q, want, &mut failures);
            if t == "bag" {
                bag_table = Some(q);
            }
        }
        check_forward(&c, bag_table.as_ref().unwrap(), "quantizer", &mut failures);

        // The library API over modules holding the case's weights.
        let model: Vec<(&str, EmbeddingModule)> = vec![
            (
                "emb",
                Embedding::from_weight(c.emb.weight.clone()).unwrap().into(),
            ),
            (
                "bag",
                EmbeddingBag::from_weight(c.bag.weight.clone(), BagMode::Sum)
                    .unwrap()
                    .into(),
            ),
        ];
        let mut sp = DataNormSparsifier::data_norm(c.config.clone()).unwrap();
        let opts = SparseQuantizeOptions {
            sparsify_first: c.sparsify_first,
            select: None,
        };
        let out = post_training_sparse_quantize(&model, &mut sp, &opts).unwrap();
        assert_eq!(out.len(), 2);
        for ((name, module), want) in out.iter().zip([&c.emb, &c.bag]) {
            let what = format!("{} {name} (API, {:?})", c.file, c.meta);
            let mask = sp.get_mask(name).unwrap().to_dense_u8();
            let table = match &want.mask {
                Some(m) => {
                    if let Err(e) = tie_equivalent(&tie_case(&c, name, want.weight.clone()), &mask)
                    {
                        failures.push(format!("{what}: mask: {e}"));
                    }
                    (*m == mask).then(|| module.table().clone())
                }
                None => {
                    let q1 = QuantizedTable::quantize(name, &want.weight).unwrap();
                    let deq = q1.dequantize();
                    if let Err(e) = tie_equivalent(&tie_case(&c, name, deq.clone()), &mask) {
                        failures.push(format!("{what}: mask on the dequantized table: {e}"));
                    }
                    let (q, tie) =
                        resolve_ties(&c, name, want, module.table().clone(), &mask, &mut failures);
                    (!tie).then_some(q)
                }
            };
            match table {
                Some(q) => {
                    api_exact += 1;
                    check_table(&what, &q, want, &mut failures);
                    if let QuantizedModule::EmbeddingBag(_) = module {
                        check_forward(&c, &q, "API", &mut failures);
                    }
                }
                None => api_tie += 1,
            }
        }
    }
    eprintln!(
        "quant conformance: {first} sparsify-first tables, {later} quantize-first tables ({ties} with a tie-equivalent mask other than PyTorch's); API: {api_exact} tables with PyTorch's mask, {api_tie} with a tie-equivalent one"
    );
    assert_eq!(first + later, 400);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures[..failures.len().min(40)].join("\n")
    );
}
