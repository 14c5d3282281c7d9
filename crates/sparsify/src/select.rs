//! Which tensors of a checkpoint are sparsified.
//!
//! * With no `--tensors`: every floating-point tensor with exactly 2 dims.
//! * With `--tensors GLOB` (repeatable): every tensor matching any of them, whatever its rank
//!   (1-D, 0-D and N-D tensors are sparsified only when named this way).
//! * `--exclude GLOB` (repeatable) then removes tensors.
//!
//! Globs match whole names; `*` also matches `.` and `/` (so `emb_l.*` matches `emb_l.0.weight`).
//! A pattern that is exactly a tensor's name selects that tensor only, even when it contains glob
//! characters (`layer[0].w` is the tensor `layer[0].w`, not a character class): the exact name
//! wins over the glob reading.
//! Every glob must match at least one tensor, selecting a non-float tensor is an error, and so is
//! an empty selection: each of these is almost always a typo.

use globset::{Glob, GlobMatcher};

use crate::checkpoint::TensorEntry;
use crate::error::{CliError, Result};

/// Whether a config-file key or a pattern is a glob rather than a plain name.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', ']', '{', '}'])
}

/// Compiles a glob; `what` names where it came from (e.g. `--tensors`).
pub fn compile(pattern: &str, what: &str) -> Result<GlobMatcher> {
    Glob::new(pattern)
        .map(|g| g.compile_matcher())
        .map_err(|e| CliError::Selection(format!("{what} {pattern:?} is not a valid glob: {e}")))
}

/// A short list of names for error messages.
pub fn some_names(tensors: &[TensorEntry]) -> String {
    let mut names: Vec<&str> = tensors.iter().take(6).map(|t| t.name.as_str()).collect();
    if tensors.len() > 6 {
        names.push("...");
    }
    if names.is_empty() {
        "the file holds no tensors".into()
    } else {
        format!("it holds {}: {}", tensors.len(), names.join(", "))
    }
}

/// The indices (into `tensors`, file order) of the tensors to sparsify.
pub fn select(
    tensors: &[TensorEntry],
    include: &[String],
    exclude: &[String],
    source: &str,
) -> Result<Vec<usize>> {
    let hint = format!("run `sparsify inspect {source}` to list the tensors");
    let mut selected = vec![include.is_empty(); tensors.len()];
    if include.is_empty() {
        for (s, t) in selected.iter_mut().zip(tensors) {
            *s = t.dtype.float().is_some() && t.shape.len() == 2;
        }
    }
    // Each pattern sets (include) or clears (exclude) the tensors it matches, and must match one.
    for (patterns, flag, value) in [(include, "--tensors", true), (exclude, "--exclude", false)] {
        for pat in patterns {
            let mut any = false;
            if let Some(i) = tensors.iter().position(|t| t.name == *pat) {
                selected[i] = value;
                any = true;
            } else {
                let m = compile(pat, flag)?;
                for (s, t) in selected.iter_mut().zip(tensors) {
                    if m.is_match(&t.name) {
                        *s = value;
                        any = true;
                    }
                }
            }
            if !any {
                return Err(CliError::Selection(format!(
                    "{flag} {pat:?} matches no tensor in {source} ({}); {hint}",
                    some_names(tensors)
                )));
            }
        }
    }
    let idx: Vec<usize> = (0..tensors.len()).filter(|&i| selected[i]).collect();
    if let Some(t) = idx
        .iter()
        .map(|&i| &tensors[i])
        .find(|t| t.dtype.float().is_none())
    {
        return Err(CliError::Selection(format!(
            "tensor {:?} is {}, not floating point: only F32, F64, F16 and BF16 tensors can be sparsified; narrow --tensors or add --exclude {:?}",
            t.name, t.dtype, t.name
        )));
    }
    if idx.is_empty() {
        return Err(CliError::Selection(
            if include.is_empty() && exclude.is_empty() {
                format!(
                "{source} has no 2-D floating-point tensor to sparsify by default ({}); name tensors with --tensors GLOB",
                some_names(tensors)
            )
            } else {
                format!("--tensors/--exclude leave no tensor to sparsify in {source}; {hint}")
            },
        ));
    }
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use data_sparsifier::format::FileDType as Dtype;

    fn t(name: &str, dtype: Dtype, shape: &[usize]) -> TensorEntry {
        TensorEntry::new(name, dtype, shape.to_vec())
    }

    fn names(ts: &[TensorEntry], idx: &[usize]) -> Vec<String> {
        idx.iter().map(|&i| ts[i].name.clone()).collect()
    }

    #[test]
    fn default_is_2d_floats_and_globs_add_and_remove() {
        let ts = vec![
            t("emb.0.weight", Dtype::F32, &[10, 4]),
            t("emb.1.weight", Dtype::BF16, &[10, 4]),
            t("fc.bias", Dtype::F32, &[4]),
            t("conv", Dtype::F32, &[2, 2, 2]),
            t("steps", Dtype::I64, &[2, 2]),
        ];
        let s = select(&ts, &[], &[], "x").unwrap();
        assert_eq!(names(&ts, &s), ["emb.0.weight", "emb.1.weight"]);
        let s = select(
            &ts,
            &["emb.*".into(), "fc.bias".into()],
            &["*.1.*".into()],
            "x",
        )
        .unwrap();
        assert_eq!(names(&ts, &s), ["emb.0.weight", "fc.bias"]);
        assert!(select(&ts, &["nope*".into()], &[], "x").is_err());
        assert!(select(&ts, &[], &["nope".into()], "x").is_err());
        let e = select(&ts, &["*".into()], &[], "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"steps\"") && e.contains("--exclude"), "{e}");
        assert!(select(&ts, &[], &["emb*".into()], "x").is_err());
        assert!(select(&ts, &["[".into()], &[], "x").is_err());
    }

    #[test]
    fn an_exact_name_wins_over_the_glob_reading() {
        let ts = vec![
            t("layer[0].w", Dtype::F32, &[4, 4]),
            t("layer0.w", Dtype::F32, &[4, 4]),
            t("a*b", Dtype::F32, &[4]),
            t("axb", Dtype::F32, &[4]),
            t("odd[", Dtype::F32, &[4]),
            t("{x}", Dtype::F32, &[4]),
        ];
        let sel = |inc: &[&str], exc: &[&str]| {
            let inc: Vec<String> = inc.iter().map(|s| s.to_string()).collect();
            let exc: Vec<String> = exc.iter().map(|s| s.to_string()).collect();
            names(&ts, &select(&ts, &inc, &exc, "x").unwrap())
        };
        assert_eq!(sel(&["layer[0].w"], &[]), ["layer[0].w"]);
        assert_eq!(sel(&["a*b"], &[]), ["a*b"]);
        assert_eq!(sel(&["odd["], &[]), ["odd["]);
        assert_eq!(sel(&["{x}"], &[]), ["{x}"]);
        assert_eq!(sel(&["layer*"], &["layer[0].w"]), ["layer0.w"]);
        // Not a name: still a glob.
        assert_eq!(sel(&["layer[0]*"], &[]), ["layer0.w"]);
        assert_eq!(sel(&["a?b"], &[]), ["a*b", "axb"]);
    }
}
