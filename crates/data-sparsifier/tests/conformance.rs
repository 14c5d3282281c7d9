//! Conformance with PyTorch: the 300 golden `DataNormSparsifier` cases in
//! `tests/data/conformance/data_norm/` (see the README there).
//!
//! * `exact = true` cases must match bit for bit;
//! * `exact = false` cases (PyTorch's unstable sort decided a tie) must be *tie-equivalent*: same
//!   number of pruned blocks, no kept block scoring lower than a pruned one, and every pruned block
//!   zeroed on exactly `min(zeros_per_block, cells)` of its smallest cells.
//!
//! Every case runs through the container (`add_data` + `step`) and through the standalone
//! `compute_mask`.

use data_sparsifier::norm::{compute_mask, DataNormSparsifier};
use data_sparsifier::Mask;

mod common;
use common::golden::{case_dir, case_paths, check, load, tie_equivalent};

#[test]
fn all_300_golden_cases_conform() {
    let paths = case_paths();
    assert_eq!(
        paths.len(),
        300,
        "expected 300 golden cases in {:?}",
        case_dir()
    );

    let mut failures = Vec::new();
    let (mut exact, mut tie, mut tie_also_exact) = (0, 0, 0);
    for path in &paths {
        let case = load(path);
        // Through the container.
        let mut sp = DataNormSparsifier::data_norm(case.config.clone()).unwrap();
        sp.add_data("data", case.data.clone()).unwrap();
        sp.step()
            .unwrap_or_else(|e| panic!("{}: step failed: {e}", case.file));
        let got = sp.get_mask("data").unwrap().to_dense_u8();
        check(&case, &got, "container", &mut failures);
        // Standalone kernel, starting from a mask with garbage in it.
        let mut mask = Mask::zeros(case.data.shape().to_vec());
        mask.fill(false);
        compute_mask("data", case.data.view(), &case.config, &mut mask).unwrap();
        let got2 = mask.to_dense_u8();
        check(&case, &got2, "compute_mask", &mut failures);
        if case.exact {
            exact += 1;
        } else {
            tie += 1;
            tie_also_exact += (got == case.want) as usize;
        }
    }
    eprintln!(
        "conformance: {exact} exact cases, {tie} tie cases ({tie_also_exact} of which also match PyTorch's arbitrary tie order)"
    );
    assert_eq!((exact, tie), (286, 14), "case counts");
    assert!(
        failures.is_empty(),
        "{} conformance failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_tie_checker_rejects_wrong_masks() {
    // A sanity check of the checker itself on a tie case: flip one kept block to pruned.
    let path = case_dir().join("case_1_0011.safetensors");
    let case = load(&path);
    assert!(!case.exact);
    assert!(tie_equivalent(&case, &case.want).is_ok());
    let mut bad = case.want.clone();
    let i = bad.iter().position(|&b| b == 1).unwrap();
    bad[i] = 0;
    assert!(tie_equivalent(&case, &bad).is_err());
}
