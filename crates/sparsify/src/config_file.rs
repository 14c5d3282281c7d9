//! The `--config FILE.toml` file, and how a tensor's config is resolved.
//!
//! ```toml
//! # defaults for every selected tensor (any key may be left out)
//! [defaults]
//! sparsity_level = 0.8
//! sparse_block_shape = [1, 4]
//! zeros_per_block = 4        # leave out for the whole block
//! norm = "L2"                # "L1" or "L2", any case, as --norm
//! nan_policy = "error"       # "error" or "rank_last" ("rank-last" too, as --nan-policy)
//!
//! # per-tensor overrides, by exact name or glob (the per-name configs of `add_data`)
//! [tensors."top_l.*.weight"]
//! sparsity_level = 1.0
//! zeros_per_block = 2
//!
//! [tensors."emb_l.0.weight"]
//! sparsity_level = 0.9
//! ```
//!
//! Precedence, lowest first: built-in defaults, the file's `[defaults]`, command-line flags, the
//! file's glob overrides that match the tensor (in file order), its exact-name override.
//!
//! A `[tensors."..."]` key that is exactly a tensor's name is that tensor's exact-name override,
//! even if it contains glob characters (`[tensors."layer[0].w"]`); otherwise a key with `*`, `?`,
//! `[` or `{` is a glob.
//!
//! Every mistake is an error naming the file, the line and the key: an unknown key, a value of the
//! wrong type or out of range, an override naming a tensor the input does not hold (or a glob that
//! matches none), and an exact-name override of a tensor that is not selected.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use data_sparsifier::Config;
use globset::GlobMatcher;
use serde::Deserialize;
use toml::Spanned;

use crate::checkpoint::TensorEntry;
use crate::error::{CliError, Result};
use crate::select::{compile, is_glob, some_names};
use data_sparsifier::norm::{DataNormConfig, DataNormPatch, NanPolicy, Norm};

/// One table of patch keys (`[defaults]` or an override), with where each key is.
#[derive(Debug, Clone)]
pub struct PatchTable {
    /// `[defaults]` or `[tensors."NAME"]`.
    pub label: String,
    /// The line of the table's header (or first key).
    pub line: usize,
    /// The keys it sets and their lines.
    pub keys: Vec<(String, usize)>,
    /// The patch.
    pub patch: DataNormPatch,
}

impl PatchTable {
    fn line_of(&self, key: &str) -> usize {
        self.keys
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, l)| *l)
            .unwrap_or(self.line)
    }
}

/// A per-tensor override.
#[derive(Debug, Clone)]
pub struct Override {
    /// The name or glob.
    pub pattern: String,
    /// The compiled glob if the pattern has glob characters, or why it is not a valid glob. Used
    /// only when no tensor has the pattern as its exact name (the exact name wins).
    pub glob: Option<std::result::Result<GlobMatcher, String>>,
    /// Its keys.
    pub table: PatchTable,
}

/// What an override applies to in a given checkpoint.
enum Target<'a> {
    /// The tensor of this index, named exactly by the pattern.
    Exact(usize),
    /// The tensors this glob matches.
    Glob(&'a GlobMatcher),
}

/// A parsed config file.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// The file's path as shown in messages.
    pub path: String,
    /// The `[defaults]` table.
    pub defaults: Option<PatchTable>,
    /// The `[tensors."..."]` tables, in file order.
    pub overrides: Vec<Override>,
}

type RawTable = BTreeMap<String, Spanned<toml::Value>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    defaults: Option<Spanned<RawTable>>,
    tensors: Option<BTreeMap<String, Spanned<RawTable>>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl ConfigFile {
    /// Reads and parses `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let not_found = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::NotFound {
                CliError::Usage(format!(
                    "config file {shown} does not exist: check the --config path"
                ))
            } else {
                CliError::io(path, e)
            }
        };
        let meta = std::fs::metadata(path).map_err(not_found)?;
        if meta.is_dir() {
            return Err(CliError::Usage(format!(
                "--config {shown} is a directory: give the path of a TOML file"
            )));
        }
        if !meta.is_file() {
            return Err(CliError::Usage(format!(
                "--config {shown} is not a regular file (a FIFO, socket or device?): give the path of a TOML file"
            )));
        }
        let bytes = std::fs::read(path).map_err(not_found)?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            CliError::ConfigFile {
                file: shown.clone(),
                line,
                message: format!(
                    "not UTF-8 text (invalid byte at offset {at}): --config takes a TOML file saved as UTF-8"
                ),
            }
        })?;
        Self::parse(&text, &shown)
    }

    /// Parses config text; `path` is used in messages.
    pub fn parse(text: &str, path: &str) -> Result<Self> {
        let err = |span: Option<Range<usize>>, message: String| CliError::ConfigFile {
            file: path.to_string(),
            line: span.map(|s| line_of(text, s.start)).unwrap_or(1),
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let mut message = e.message().trim().to_string();
            let top_key = patch_keys()
                .into_iter()
                .find(|k| message.starts_with(&format!("unknown field `{k}`, expected `defaults`")));
            if top_key.is_some() {
                message.push_str(": put config keys under [defaults], or under [tensors.\"NAME\"] for one tensor");
            }
            err(e.span(), message)
        })?;
        let table = |label: String, line: usize, raw: &RawTable| -> Result<PatchTable> {
            let mut keys = Vec::new();
            let mut all = toml::Table::new();
            let mut entries: Vec<_> = raw.iter().collect();
            entries.sort_by_key(|(_, v)| v.span().start);
            for (k, v) in entries {
                let key_line = line_of(text, v.span().start);
                let value = same_spellings_as_flags(k, v.get_ref());
                let mut one = toml::Table::new();
                one.insert(k.clone(), value.clone());
                toml::Value::Table(one)
                    .try_into::<DataNormPatch>()
                    .map_err(|e| CliError::ConfigFile {
                        file: path.to_string(),
                        line: key_line,
                        message: format!("{label} key `{k}`: {}", e.message().trim()),
                    })?;
                keys.push((k.clone(), key_line));
                all.insert(k.clone(), value);
            }
            let patch = toml::Value::Table(all)
                .try_into::<DataNormPatch>()
                .map_err(|e| CliError::ConfigFile {
                    file: path.to_string(),
                    line,
                    message: format!("{label}: {}", e.message().trim()),
                })?;
            Ok(PatchTable {
                label,
                line,
                keys,
                patch,
            })
        };
        let defaults = match &raw.defaults {
            Some(d) => Some(table(
                "[defaults]".into(),
                line_of(text, d.span().start),
                d.get_ref(),
            )?),
            None => None,
        };
        let mut overrides = Vec::new();
        if let Some(ts) = &raw.tensors {
            let mut list: Vec<_> = ts.iter().collect();
            list.sort_by_key(|(_, v)| v.span().start);
            for (k, v) in list {
                let pattern = k.clone();
                let label = format!("[tensors.{pattern:?}]");
                let line = line_of(text, v.span().start);
                let glob = is_glob(&pattern)
                    .then(|| compile(&pattern, "tensor pattern").map_err(|e| e.to_string()));
                let table = table(label, line, v.get_ref())?;
                overrides.push(Override {
                    pattern,
                    glob,
                    table,
                });
            }
        }
        Ok(ConfigFile {
            path: path.to_string(),
            defaults,
            overrides,
        })
    }
}

/// A value as the patch's serde form spells it, where the flags' spelling differs: `norm` in any
/// case (`l2`, `L2`), `nan_policy` as `rank-last` or `rank_last` in any case. Anything else,
/// invalid values included (so that the error shows them as written), is returned as is.
fn same_spellings_as_flags(key: &str, value: &toml::Value) -> toml::Value {
    if let toml::Value::String(s) = value {
        let s = s.trim();
        let canonical = match key {
            "norm" => s
                .to_ascii_uppercase()
                .parse::<Norm>()
                .ok()
                .map(|n| n.to_string()),
            "nan_policy" => s
                .to_ascii_lowercase()
                .parse::<NanPolicy>()
                .ok()
                .map(|p| p.to_string()),
            _ => None,
        };
        if let Some(c) = canonical {
            return toml::Value::String(c);
        }
    }
    value.clone()
}

/// The keys a patch can set (read from its serde form, so it follows the library's fields).
pub fn patch_keys() -> Vec<String> {
    match serde_json::to_value(DataNormPatch::default()) {
        Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Whether `patch` sets `key`, read from its `Option` fields directly (a serde round trip would
/// turn a set NaN or infinite `sparsity_level` into null, i.e. "not set"). The destructuring has no
/// `..`, so a new patch field fails to compile here until it is handled.
pub fn patch_sets(patch: &DataNormPatch, key: &str) -> bool {
    let DataNormPatch {
        sparsity_level,
        sparse_block_shape,
        zeros_per_block,
        norm,
        nan_policy,
    } = patch;
    match key {
        "sparsity_level" => sparsity_level.is_some(),
        "sparse_block_shape" => sparse_block_shape.is_some(),
        "zeros_per_block" => zeros_per_block.is_some(),
        "norm" => norm.is_some(),
        "nan_policy" => nan_policy.is_some(),
        _ => false,
    }
}

/// The command-line flag that sets a config key.
pub fn flag_of(key: &str) -> String {
    match key {
        "sparse_block_shape" => "--block".into(),
        other => format!("--{}", other.replace('_', "-")),
    }
}

/// Resolves the config of every selected tensor. See the module docs for the precedence.
pub fn resolve(
    file: Option<&ConfigFile>,
    flags: &DataNormPatch,
    tensors: &[TensorEntry],
    selected: &[usize],
    source: &str,
) -> Result<(DataNormConfig, Vec<DataNormConfig>)> {
    let mut base = DataNormConfig::default();
    let file_defaults = file.and_then(|f| f.defaults.as_ref());
    if let Some(d) = file_defaults {
        base.apply(&d.patch);
    }
    base.apply(flags);
    // Points an invalid value at where it was set.
    let blame = |name: &str, e: data_sparsifier::Error, overrides: &[&Override]| -> CliError {
        let key = match &e {
            data_sparsifier::Error::InvalidConfig { key, .. } => *key,
            _ => return CliError::lib(format!("config of {name:?}"), e),
        };
        let f = file.map(|f| f.path.clone()).unwrap_or_default();
        for o in overrides.iter().rev() {
            if patch_sets(&o.table.patch, key) {
                return CliError::ConfigFile {
                    file: f,
                    line: o.table.line_of(key),
                    message: format!("{} key `{key}`: {e}", o.table.label),
                };
            }
        }
        if patch_sets(flags, key) {
            return CliError::Usage(format!("{}: {e}", flag_of(key)));
        }
        if let Some(d) = file_defaults.filter(|d| patch_sets(&d.patch, key)) {
            return CliError::ConfigFile {
                file: f,
                line: d.line_of(key),
                message: format!("{} key `{key}`: {e}", d.label),
            };
        }
        CliError::Usage(e.to_string())
    };
    base.validate("defaults")
        .map_err(|e| blame("defaults", e, &[]))?;

    let overrides: &[Override] = file.map(|f| f.overrides.as_slice()).unwrap_or(&[]);
    let is_selected = {
        let mut v = vec![false; tensors.len()];
        selected.iter().for_each(|&i| v[i] = true);
        v
    };
    let f = file.map(|f| f.path.clone()).unwrap_or_default();
    let err = |o: &Override, message: String| CliError::ConfigFile {
        file: f.clone(),
        line: o.table.line,
        message: format!("{}: {message}", o.table.label),
    };
    // What each override applies to: the tensor it names exactly, else the tensors its glob
    // matches; every override must apply to at least one tensor.
    let mut targets = Vec::with_capacity(overrides.len());
    for o in overrides {
        let target = match (tensors.iter().position(|t| t.name == o.pattern), &o.glob) {
            (Some(i), _) => Target::Exact(i),
            (None, Some(Ok(g))) => Target::Glob(g),
            (None, Some(Err(e))) => return Err(err(o, e.clone())),
            (None, None) => {
                return Err(err(
                    o,
                    format!(
                        "there is no tensor named {:?} in {source} ({}); fix the name or remove the override",
                        o.pattern,
                        some_names(tensors)
                    ),
                ))
            }
        };
        match target {
            Target::Exact(i) if !is_selected[i] => {
                return Err(err(
                    o,
                    format!(
                        "tensor {:?} is not selected for sparsification: add --tensors {:?}, or remove the override",
                        o.pattern, o.pattern
                    ),
                ))
            }
            Target::Glob(g) if !tensors.iter().any(|t| g.is_match(&t.name)) => {
                return Err(err(
                    o,
                    format!(
                        "no tensor in {source} matches the glob {:?} ({}); fix the glob or remove the override",
                        o.pattern,
                        some_names(tensors)
                    ),
                ))
            }
            _ => {}
        }
        targets.push(target);
    }
    let mut configs = Vec::with_capacity(selected.len());
    for &i in selected {
        let name = &tensors[i].name;
        // Matching globs in file order, then the exact-name override.
        let mut applied: Vec<&Override> = overrides
            .iter()
            .zip(&targets)
            .filter(|(_, t)| matches!(t, Target::Glob(g) if g.is_match(name)))
            .map(|(o, _)| o)
            .collect();
        applied.extend(
            overrides
                .iter()
                .zip(&targets)
                .filter(|(_, t)| matches!(t, Target::Exact(j) if *j == i))
                .map(|(o, _)| o),
        );
        let mut c = base.clone();
        for o in &applied {
            c.apply(&o.table.patch);
        }
        c.validate(name).map_err(|e| blame(name, e, &applied))?;
        configs.push(c);
    }
    Ok((base, configs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use data_sparsifier::norm::Norm;
    use safetensors::Dtype;

    fn ts() -> Vec<TensorEntry> {
        ["emb.0", "emb.1", "fc", "bias"]
            .iter()
            .map(|n| TensorEntry {
                name: n.to_string(),
                dtype: Dtype::F32,
                shape: vec![4, 4],
                range: 0..0,
            })
            .collect()
    }

    fn msg(text: &str) -> String {
        ConfigFile::parse(text, "c.toml").unwrap_err().to_string()
    }

    #[test]
    fn precedence_defaults_flags_globs_exact() {
        let text = "[defaults]\nsparsity_level = 0.7\nnorm = \"L2\"\n\n[tensors.\"emb.*\"]\nsparsity_level = 0.9\n[tensors.\"emb.1\"]\nsparsity_level = 0.1\n";
        let f = ConfigFile::parse(text, "c.toml").unwrap();
        assert_eq!(f.overrides.len(), 2);
        let flags = DataNormPatch {
            sparsity_level: Some(0.3),
            ..Default::default()
        };
        let (base, cs) = resolve(Some(&f), &flags, &ts(), &[0, 1, 2], "in").unwrap();
        assert_eq!(base.sparsity_level, 0.3);
        assert_eq!(base.norm, Norm::L2);
        assert_eq!(
            cs.iter().map(|c| c.sparsity_level).collect::<Vec<_>>(),
            [0.9, 0.1, 0.3]
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let m = msg("[defaults]\nsparsity_level = 0.5\nsparsity = 0.3\n");
        assert!(
            m.starts_with("c.toml:3:") && m.contains("`sparsity`"),
            "{m}"
        );
        let m = msg("[defaults]\n\nnorm = \"L3\"\n");
        assert!(m.starts_with("c.toml:3:") && m.contains("`norm`"), "{m}");
        let m = msg("sparsity_level = 0.5\n");
        assert!(
            m.starts_with("c.toml:1:") && m.contains("[defaults]"),
            "{m}"
        );
        let m = msg("[defaults]\nsparsity_level = \n");
        assert!(m.starts_with("c.toml:2:"), "{m}");
        let m = msg("[tensors.\"a\"]\n[tensors.\"b\"]\nblock = [1, 2]\n");
        assert!(m.starts_with("c.toml:3:") && m.contains("`block`"), "{m}");

        let f = ConfigFile::parse(
            "[defaults]\nnorm = \"L1\"\n\nsparsity_level = 1.5\n",
            "c.toml",
        )
        .unwrap();
        let e = resolve(Some(&f), &Default::default(), &ts(), &[0], "in")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("c.toml:4:") && e.contains("sparsity_level"),
            "{e}"
        );
        let f = ConfigFile::parse("[tensors.\"fc\"]\nzeros_per_block = 9\n", "c.toml").unwrap();
        let e = resolve(Some(&f), &Default::default(), &ts(), &[2], "in")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("c.toml:2:") && e.contains("zeros_per_block"),
            "{e}"
        );
        let f = ConfigFile::parse("\n[tensors.\"nope\"]\nnorm = \"L1\"\n", "c.toml").unwrap();
        let e = resolve(Some(&f), &Default::default(), &ts(), &[0], "in")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:2:") && e.contains("\"nope\""), "{e}");
        let f = ConfigFile::parse("[tensors.\"x*\"]\nnorm = \"L1\"\n", "c.toml").unwrap();
        assert!(resolve(Some(&f), &Default::default(), &ts(), &[0], "in").is_err());
        let f = ConfigFile::parse("[tensors.\"bias\"]\nnorm = \"L1\"\n", "c.toml").unwrap();
        let e = resolve(Some(&f), &Default::default(), &ts(), &[0], "in")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not selected"), "{e}");
        let flags = DataNormPatch {
            zeros_per_block: Some(9),
            ..Default::default()
        };
        let e = resolve(None, &flags, &ts(), &[0], "in")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--zeros-per-block"), "{e}");
    }

    #[test]
    fn an_exact_name_with_glob_characters_is_an_exact_override() {
        let mut ts = ts();
        for (t, n) in ts.iter_mut().zip(["layer[0].w", "layer0.w", "odd[", "fc"]) {
            t.name = n.into();
        }
        let text = "[tensors.\"layer*\"]\nsparsity_level = 0.9\n\
                    [tensors.\"layer[0].w\"]\nsparsity_level = 0.1\n\
                    [tensors.\"odd[\"]\nsparsity_level = 0.2\n";
        let f = ConfigFile::parse(text, "c.toml").unwrap();
        let (_, cs) = resolve(Some(&f), &Default::default(), &ts, &[0, 1, 2], "in").unwrap();
        // The exact name beats the glob `layer*`, and is not read as the class `[0]`
        // (which would also match `layer0.w`); an invalid glob that is a name is fine.
        assert_eq!(
            cs.iter().map(|c| c.sparsity_level).collect::<Vec<_>>(),
            [0.1, 0.9, 0.2]
        );
        // An exact-name override of an unselected tensor is still an error.
        let e = resolve(Some(&f), &Default::default(), &ts, &[1, 2], "in")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("c.toml:3:") && e.contains("not selected"),
            "{e}"
        );
        // A pattern that is no name and no valid glob is an error at its line.
        let f = ConfigFile::parse("\n[tensors.\"x[\"]\nnorm = \"L1\"\n", "c.toml").unwrap();
        let e = resolve(Some(&f), &Default::default(), &ts, &[0], "in")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("c.toml:2:") && e.contains("not a valid glob"),
            "{e}"
        );
    }

    #[test]
    fn values_take_the_flags_spellings_too() {
        for (norm, nan) in [
            ("l2", "rank-last"),
            ("L2", "rank_last"),
            (" l2 ", "RANK-LAST"),
        ] {
            let text = format!("[defaults]\nnorm = {norm:?}\nnan_policy = {nan:?}\n");
            let f = ConfigFile::parse(&text, "c.toml").unwrap();
            let p = &f.defaults.unwrap().patch;
            assert_eq!(p.norm, Some(Norm::L2), "{text}");
            assert_eq!(p.nan_policy, Some(NanPolicy::RankLast), "{text}");
        }
        let m = msg("[defaults]\nnorm = \"l3\"\n");
        assert!(m.starts_with("c.toml:2:") && m.contains("l3"), "{m}");
        let m = msg("[defaults]\nnan_policy = \"ignore\"\n");
        assert!(m.starts_with("c.toml:2:") && m.contains("ignore"), "{m}");
    }

    #[test]
    fn unreadable_config_files_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let e = ConfigFile::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("is a directory") && e.contains("TOML file"),
            "{e}"
        );
        let bin = dir.path().join("bin.toml");
        std::fs::write(&bin, b"[defaults]\nnorm = \"\xff\"\n").unwrap();
        let e = ConfigFile::load(&bin).unwrap_err().to_string();
        assert!(
            e.contains("bin.toml:2:") && e.contains("not UTF-8") && e.contains("saved as UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn patch_sets_reads_the_option_fields() {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.5] {
            let p = DataNormPatch {
                sparsity_level: Some(v),
                ..Default::default()
            };
            assert!(patch_sets(&p, "sparsity_level"), "{v}");
            assert!(!patch_sets(&p, "norm"));
        }
        let all = DataNormPatch {
            sparsity_level: Some(0.1),
            sparse_block_shape: Some((1, 2)),
            zeros_per_block: Some(1),
            norm: Some(Norm::L2),
            nan_policy: Some(data_sparsifier::norm::NanPolicy::RankLast),
        };
        for k in patch_keys() {
            assert!(patch_sets(&all, &k), "{k}");
            assert!(!patch_sets(&DataNormPatch::default(), &k), "{k}");
        }
        assert!(!patch_sets(&all, "bogus"));
    }

    #[test]
    fn non_finite_levels_are_blamed_on_their_line_and_key() {
        for v in ["nan", "inf", "-inf", "+inf"] {
            let f = ConfigFile::parse(
                &format!("[defaults]\nnorm = \"L1\"\nsparsity_level = {v}\n"),
                "c.toml",
            )
            .unwrap();
            let e = resolve(Some(&f), &Default::default(), &ts(), &[0], "in")
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("c.toml:3:") && e.contains("`sparsity_level`"),
                "{v}: {e}"
            );
            let f = ConfigFile::parse(
                &format!("[tensors.\"fc\"]\n\nsparsity_level = {v}\n"),
                "c.toml",
            )
            .unwrap();
            let e = resolve(Some(&f), &Default::default(), &ts(), &[2], "in")
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("c.toml:3:") && e.contains("`sparsity_level`"),
                "{v}: {e}"
            );
        }
    }
}
