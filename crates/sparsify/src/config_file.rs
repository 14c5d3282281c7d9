//! The `--config FILE.toml` file, and how a tensor's config is resolved.
//!
//! ```toml
//! # the mask rule (optional; `--rule` overrides it): "datanorm" (the default) or "magnitude"
//! rule = "datanorm"
//!
//! # one sparsity budget over every selected tensor (optional; `--global-sparsity` overrides
//! # it): the lowest-scoring blocks across all of them are pruned, and each tensor's
//! # sparsity_level follows from it (so none may be set). docs/global-budget.md
//! # global_sparsity = 0.8
//! # global_normalization = "mean"   # "mean" (the default) or "none" (raw scores)
//!
//! # defaults for every selected tensor (any key of the rule may be left out)
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
//! The keys are the rule's config keys ([`Schema`]): this file knows none of them; a rule
//! registered in the library is configurable here as it is.
//!
//! Precedence, lowest first: the rule's defaults, the file's `[defaults]`, command-line flags
//! (`--set KEY=VALUE` and the rule's own flags), the file's glob overrides that match the tensor
//! (in file order), its exact-name override.
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

use data_sparsifier::norm::budget::{GlobalBudget, Normalization};

use data_sparsifier::rule::{merge, Registry, Rule, Schema};
use globset::GlobMatcher;
use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use crate::checkpoint::TensorEntry;
use crate::cli::FlagPatch;
use crate::error::{CliError, Result};
use crate::select::{compile, is_glob, some_names};

/// One table of config keys (`[defaults]` or an override), with where each key is.
#[derive(Debug, Clone)]
pub struct PatchTable {
    /// `[defaults]` or `[tensors."NAME"]`.
    pub label: String,
    /// The line of the table's header (or first key).
    pub line: usize,
    /// The keys it sets, their lines and their values as JSON (or why a value has no JSON form).
    pub keys: Vec<(String, usize, std::result::Result<Value, String>)>,
}

impl PatchTable {
    fn line_of(&self, key: &str) -> usize {
        self.keys
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, l, _)| *l)
            .unwrap_or(self.line)
    }
    fn sets(&self, key: &str) -> bool {
        self.keys.iter().any(|(k, _, _)| k == key)
    }
    /// The table as a config patch of `rule`: every key one of its schema's, of the right type
    /// (values in canonical spelling); an error names the file, the key's line and the key.
    pub fn patch(&self, rule: &dyn Rule, file: &str) -> Result<Value> {
        let schema = rule.schema();
        let mut out = serde_json::Map::new();
        for (k, line, v) in &self.keys {
            let at = |message: String| CliError::ConfigFile {
                file: file.to_string(),
                line: *line,
                message: format!("{} key `{k}`: {message}", self.label),
            };
            let v = v.clone().map_err(at)?;
            let v = match schema.field(k) {
                Some(f) => f.check_type(&v).map_err(at)?,
                None if schema.is_open() => v,
                None => {
                    return Err(at(format!(
                        "rule {} has no key `{k}`; its keys are {}",
                        rule.kind(),
                        schema.keys_text()
                    )))
                }
            };
            out.insert(k.clone(), v);
        }
        Ok(Value::Object(out))
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
    /// The `rule = "..."` key and its line.
    pub rule: Option<(String, usize)>,
    /// The `global_sparsity = F` key and its line.
    pub global_sparsity: Option<(f64, usize)>,
    /// The `global_normalization = "..."` key and its line.
    pub global_normalization: Option<(Normalization, usize)>,
    /// The `[defaults]` table.
    pub defaults: Option<PatchTable>,
    /// The `[tensors."..."]` tables, in file order.
    pub overrides: Vec<Override>,
}

type RawTable = BTreeMap<String, Spanned<toml::Value>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    rule: Option<Spanned<String>>,
    global_sparsity: Option<Spanned<toml::Value>>,
    global_normalization: Option<Spanned<String>>,
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

/// A TOML value as JSON; a non-finite float has none (JSON has no NaN or infinity).
fn to_json(v: &toml::Value) -> std::result::Result<Value, String> {
    Ok(match v {
        toml::Value::String(s) => Value::from(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| format!("{f} is not a finite number: give a finite value"))?,
        toml::Value::Boolean(b) => Value::from(*b),
        toml::Value::Datetime(d) => Value::from(d.to_string()),
        toml::Value::Array(a) => Value::Array(
            a.iter()
                .map(to_json)
                .collect::<std::result::Result<_, _>>()?,
        ),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| Ok((k.clone(), to_json(v)?)))
                .collect::<std::result::Result<_, String>>()?,
        ),
    })
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

    /// Parses config text; `path` is used in messages. The keys are checked against the file's
    /// rule (or the default rule), so that a mistake is reported before any tensor is read.
    pub fn parse(text: &str, path: &str) -> Result<Self> {
        let err = |span: Option<Range<usize>>, message: String| CliError::ConfigFile {
            file: path.to_string(),
            line: span.map(|s| line_of(text, s.start)).unwrap_or(1),
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let mut message = e.message().trim().to_string();
            if is_misplaced_key(&message) {
                message.push_str(": put config keys under [defaults], or under [tensors.\"NAME\"] for one tensor");
            }
            err(e.span(), message)
        })?;
        let table = |label: String, line: usize, raw: &RawTable| -> PatchTable {
            let mut entries: Vec<_> = raw.iter().collect();
            entries.sort_by_key(|(_, v)| v.span().start);
            let keys = entries
                .into_iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        line_of(text, v.span().start),
                        to_json(v.get_ref()),
                    )
                })
                .collect();
            PatchTable { label, line, keys }
        };
        let defaults = raw.defaults.as_ref().map(|d| {
            table(
                "[defaults]".into(),
                line_of(text, d.span().start),
                d.get_ref(),
            )
        });
        let mut overrides = Vec::new();
        if let Some(ts) = &raw.tensors {
            let mut list: Vec<_> = ts.iter().collect();
            list.sort_by_key(|(_, v)| v.span().start);
            for (k, v) in list {
                let pattern = k.clone();
                let label = format!("[tensors.{pattern:?}]");
                let glob = is_glob(&pattern)
                    .then(|| compile(&pattern, "tensor pattern").map_err(|e| e.to_string()));
                let table = table(label, line_of(text, v.span().start), v.get_ref());
                overrides.push(Override {
                    pattern,
                    glob,
                    table,
                });
            }
        }
        let global_sparsity = match raw.global_sparsity {
            Some(g) => {
                let span = g.span();
                let bad = || {
                    err(
                        Some(span.clone()),
                        format!(
                            "global_sparsity = {}: give the fraction of all blocks to prune, a number in [0, 1]",
                            g.get_ref()
                        ),
                    )
                };
                let v = match g.get_ref() {
                    toml::Value::Float(f) => *f,
                    toml::Value::Integer(i) => *i as f64,
                    _ => return Err(bad()),
                };
                GlobalBudget::new(v).map_err(|_| bad())?;
                Some((v, line_of(text, span.start)))
            }
            None => None,
        };
        let global_normalization = match raw.global_normalization {
            Some(n) => {
                let span = n.span();
                let v: Normalization = n.get_ref().parse().map_err(|_| {
                    err(
                        Some(span.clone()),
                        format!(
                            "global_normalization = {:?}: give \"mean\" (each score over its tensor's mean block score) or \"none\" (raw scores)",
                            n.get_ref()
                        ),
                    )
                })?;
                Some((v, line_of(text, span.start)))
            }
            None => None,
        };
        if let (Some((_, line)), None) = (&global_normalization, &global_sparsity) {
            return Err(CliError::ConfigFile {
                file: path.to_string(),
                line: *line,
                message: "global_normalization without global_sparsity does nothing: set global_sparsity too, or remove it".into(),
            });
        }
        let file = ConfigFile {
            path: path.to_string(),
            rule: raw
                .rule
                .map(|r| (r.get_ref().clone(), line_of(text, r.span().start))),
            global_sparsity,
            global_normalization,
            defaults,
            overrides,
        };
        let rule = choose_rule(&Registry::builtin(), None, Some(&file))?;
        file.check(rule.as_ref())?;
        Ok(file)
    }

    /// Checks every table's keys against `rule`.
    pub fn check(&self, rule: &dyn Rule) -> Result<()> {
        for t in self.tables() {
            t.patch(rule, &self.path)?;
        }
        Ok(())
    }
    /// The first table that sets `key`: (its label, the key's line).
    pub fn first_setting(&self, key: &str) -> Option<(&str, usize)> {
        self.tables().find_map(|t| {
            t.keys
                .iter()
                .find(|(k, _, _)| k == key)
                .map(|(_, line, _)| (t.label.as_str(), *line))
        })
    }
    fn tables(&self) -> impl Iterator<Item = &PatchTable> {
        self.defaults
            .iter()
            .chain(self.overrides.iter().map(|o| &o.table))
    }
}

/// Whether a TOML error is a config key at the top level (where only `rule`, `[defaults]` and
/// `[tensors]` belong).
fn is_misplaced_key(message: &str) -> bool {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return false;
    };
    let key = rest.split('`').next().unwrap_or_default();
    let registry = Registry::builtin();
    let known = registry
        .kinds()
        .filter_map(|k| registry.create(k).ok())
        .any(|r| r.schema().field(key).is_some());
    known
}

/// The rule of a run: `--rule` if given, else the config file's `rule`, else the default.
pub fn choose_rule(
    registry: &Registry,
    flag: Option<&str>,
    file: Option<&ConfigFile>,
) -> Result<Box<dyn Rule>> {
    if let Some(kind) = flag {
        return registry
            .create(kind)
            .map_err(|e| CliError::Usage(format!("--rule {kind:?}: {e}")));
    }
    match file.and_then(|f| f.rule.as_ref().map(|r| (f, r))) {
        Some((f, (kind, line))) => registry.create(kind).map_err(|e| CliError::ConfigFile {
            file: f.path.clone(),
            line: *line,
            message: format!("key `rule`: {e}"),
        }),
        None => registry
            .create(Registry::DEFAULT)
            .map_err(|e| CliError::lib("the default rule", e)),
    }
}

/// The configs of a run: the base (defaults, file defaults, flags) and each selected tensor's.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The config every selected tensor starts from.
    pub base: Value,
    /// Each selected tensor's config, complete and validated, in selection order.
    pub configs: Vec<Value>,
}

/// Where a config value came from, to point an invalid value at where it was set.
struct Blame<'a> {
    file: Option<&'a ConfigFile>,
    flags: &'a FlagPatch,
}

impl Blame<'_> {
    fn error(&self, name: &str, e: data_sparsifier::Error, overrides: &[&Override]) -> CliError {
        let key = match &e {
            data_sparsifier::Error::InvalidConfig { key, .. } => *key,
            _ => return CliError::lib(format!("config of {name:?}"), e),
        };
        let f = self.file.map(|f| f.path.clone()).unwrap_or_default();
        let at = |t: &PatchTable| CliError::ConfigFile {
            file: f.clone(),
            line: t.line_of(key),
            message: format!("{} key `{key}`: {e}", t.label),
        };
        if let Some(o) = overrides.iter().rev().find(|o| o.table.sets(key)) {
            return at(&o.table);
        }
        if let Some(flag) = self.flags.origin(key) {
            return CliError::Usage(format!("{flag}: {e}"));
        }
        match self
            .file
            .and_then(|f| f.defaults.as_ref())
            .filter(|d| d.sets(key))
        {
            Some(d) => at(d),
            None => CliError::Usage(e.to_string()),
        }
    }
}

/// What each override applies to: the tensor it names exactly, else the tensors its glob
/// matches; every override must apply to at least one tensor, and an exact one to a selected one.
fn targets<'a>(
    file: Option<&'a ConfigFile>,
    tensors: &[TensorEntry],
    selected: &[usize],
    source: &str,
) -> Result<Vec<(&'a Override, Target<'a>)>> {
    let Some(file) = file else {
        return Ok(Vec::new());
    };
    let err = |o: &Override, message: String| CliError::ConfigFile {
        file: file.path.clone(),
        line: o.table.line,
        message: format!("{}: {message}", o.table.label),
    };
    let mut out = Vec::with_capacity(file.overrides.len());
    for o in &file.overrides {
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
            Target::Exact(i) if !selected.contains(&i) => {
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
        out.push((o, target));
    }
    Ok(out)
}

/// Resolves the config of every selected tensor under `rule`. See the module docs for the
/// precedence.
pub fn resolve(
    file: Option<&ConfigFile>,
    rule: &dyn Rule,
    flags: &FlagPatch,
    tensors: &[TensorEntry],
    selected: &[usize],
    source: &str,
) -> Result<Resolved> {
    let blame = Blame { file, flags };
    let path = file.map(|f| f.path.as_str()).unwrap_or_default();
    let mut base = rule.defaults();
    if let Some(d) = file.and_then(|f| f.defaults.as_ref()) {
        merge(&mut base, &d.patch(rule, path)?);
    }
    merge(&mut base, flags.patch());
    let base = rule
        .canonical("defaults", &base)
        .map_err(|e| blame.error("defaults", e, &[]))?;
    let targets = targets(file, tensors, selected, source)?;
    let patches: Vec<Value> = targets
        .iter()
        .map(|(o, _)| o.table.patch(rule, path))
        .collect::<Result<_>>()?;
    let mut configs = Vec::with_capacity(selected.len());
    for &i in selected {
        let name = &tensors[i].name;
        // Matching globs in file order, then the exact-name override.
        let globs = targets
            .iter()
            .enumerate()
            .filter(|(_, (_, t))| matches!(t, Target::Glob(g) if g.is_match(name)));
        let exact = targets
            .iter()
            .enumerate()
            .filter(|(_, (_, t))| matches!(t, Target::Exact(j) if *j == i));
        let mut c = base.clone();
        let mut applied: Vec<&Override> = Vec::new();
        for (k, (o, _)) in globs.chain(exact) {
            merge(&mut c, &patches[k]);
            applied.push(o);
        }
        let c = rule
            .canonical(name, &c)
            .map_err(|e| blame.error(name, e, &applied))?;
        configs.push(c);
    }
    Ok(Resolved { base, configs })
}

/// The keys of a schema as `--set` takes them, for messages.
pub fn keys_hint(schema: &Schema) -> String {
    if schema.is_open() {
        "any key (values are JSON)".into()
    } else {
        schema.keys_text()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::RuleFlags;
    use data_sparsifier::format::FileDType;
    use serde_json::json;

    fn ts() -> Vec<TensorEntry> {
        ["emb.0", "emb.1", "fc", "bias"]
            .iter()
            .map(|n| TensorEntry::new(*n, FileDType::F32, [4, 4]))
            .collect()
    }

    fn datanorm() -> Box<dyn Rule> {
        Registry::builtin().create("datanorm").unwrap()
    }

    /// The patch of dedicated flags `(key, flag, value)` for datanorm.
    fn flags(set: &[(&str, &str, Value)]) -> FlagPatch {
        let f = RuleFlags {
            flags: set
                .iter()
                .map(|(k, f, v)| (k.to_string(), f.to_string(), v.clone()))
                .collect(),
            ..Default::default()
        };
        f.patch_for(datanorm().as_ref()).unwrap()
    }

    fn res(f: Option<&ConfigFile>, fl: &FlagPatch, sel: &[usize]) -> Result<Resolved> {
        resolve(f, datanorm().as_ref(), fl, &ts(), sel, "in")
    }

    fn levels(r: &Resolved) -> Vec<f64> {
        r.configs
            .iter()
            .map(|c| c["sparsity_level"].as_f64().unwrap())
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
        let fl = flags(&[("sparsity_level", "--sparsity-level", json!(0.3))]);
        let r = res(Some(&f), &fl, &[0, 1, 2]).unwrap();
        assert_eq!(r.base["sparsity_level"], 0.3);
        assert_eq!(r.base["norm"], "L2");
        assert_eq!(levels(&r), [0.9, 0.1, 0.3]);
        // Every config is complete and canonical (an integer level is a float).
        let f = ConfigFile::parse("[defaults]\nsparsity_level = 1\n", "c.toml").unwrap();
        let r = res(Some(&f), &FlagPatch::default(), &[0]).unwrap();
        assert_eq!(
            serde_json::to_string(&r.configs[0]).unwrap(),
            r#"{"sparsity_level":1.0,"sparse_block_shape":[1,4],"zeros_per_block":null,"norm":"L1","nan_policy":"error"}"#
        );
    }

    #[test]
    fn the_rule_comes_from_the_flag_then_the_file() {
        let f = ConfigFile::parse(
            "rule = \"magnitude\"\n[defaults]\nthreshold = 0.25\n",
            "c.toml",
        )
        .unwrap();
        let registry = Registry::builtin();
        assert_eq!(
            choose_rule(&registry, None, Some(&f)).unwrap().kind(),
            "magnitude"
        );
        assert_eq!(
            choose_rule(&registry, None, None).unwrap().kind(),
            "datanorm"
        );
        let rule = choose_rule(&registry, Some("magnitude"), None).unwrap();
        let r = resolve(
            Some(&f),
            rule.as_ref(),
            &FlagPatch::default(),
            &ts(),
            &[0],
            "in",
        )
        .unwrap();
        assert_eq!(r.configs[0], json!({"threshold": 0.25}));
        // --rule overrides the file: then its keys must be the flag's rule's.
        let dn = choose_rule(&registry, Some("datanorm"), Some(&f)).unwrap();
        let e = f.check(dn.as_ref()).unwrap_err().to_string();
        assert!(
            e.starts_with("c.toml:3:") && e.contains("`threshold`"),
            "{e}"
        );
        let m = msg("\nrule = \"nope\"\n");
        assert!(
            m.starts_with("c.toml:2:") && m.contains("datanorm, magnitude"),
            "{m}"
        );
        let e = choose_rule(&registry, Some("nope"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--rule") && e.contains("magnitude"), "{e}");
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
        let e = res(Some(&f), &FlagPatch::default(), &[0])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("c.toml:4:") && e.contains("sparsity_level"),
            "{e}"
        );
        let f = ConfigFile::parse("[tensors.\"fc\"]\nzeros_per_block = 9\n", "c.toml").unwrap();
        let e = res(Some(&f), &FlagPatch::default(), &[2])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("c.toml:2:") && e.contains("zeros_per_block"),
            "{e}"
        );
        let f = ConfigFile::parse("\n[tensors.\"nope\"]\nnorm = \"L1\"\n", "c.toml").unwrap();
        let e = res(Some(&f), &FlagPatch::default(), &[0])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:2:") && e.contains("\"nope\""), "{e}");
        let f = ConfigFile::parse("[tensors.\"x*\"]\nnorm = \"L1\"\n", "c.toml").unwrap();
        assert!(res(Some(&f), &FlagPatch::default(), &[0]).is_err());
        let f = ConfigFile::parse("[tensors.\"bias\"]\nnorm = \"L1\"\n", "c.toml").unwrap();
        let e = res(Some(&f), &FlagPatch::default(), &[0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not selected"), "{e}");
        let fl = flags(&[("zeros_per_block", "--zeros-per-block", json!(9))]);
        let e = res(None, &fl, &[0]).unwrap_err().to_string();
        assert!(e.starts_with("--zeros-per-block"), "{e}");
    }

    #[test]
    fn an_exact_name_with_glob_characters_is_an_exact_override() {
        let mut ts = ts();
        for (t, n) in ts.iter_mut().zip(["layer[0].w", "layer0.w", "odd[", "fc"]) {
            t.name = n.into();
        }
        let rule = datanorm();
        let none = FlagPatch::default();
        let text = "[tensors.\"layer*\"]\nsparsity_level = 0.9\n\
                    [tensors.\"layer[0].w\"]\nsparsity_level = 0.1\n\
                    [tensors.\"odd[\"]\nsparsity_level = 0.2\n";
        let f = ConfigFile::parse(text, "c.toml").unwrap();
        let r = resolve(Some(&f), rule.as_ref(), &none, &ts, &[0, 1, 2], "in").unwrap();
        // The exact name beats the glob `layer*`, and is not read as the class `[0]`
        // (which would also match `layer0.w`); an invalid glob that is a name is fine.
        assert_eq!(levels(&r), [0.1, 0.9, 0.2]);
        // An exact-name override of an unselected tensor is still an error.
        let e = resolve(Some(&f), rule.as_ref(), &none, &ts, &[1, 2], "in")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("c.toml:3:") && e.contains("not selected"),
            "{e}"
        );
        // A pattern that is no name and no valid glob is an error at its line.
        let f = ConfigFile::parse("\n[tensors.\"x[\"]\nnorm = \"L1\"\n", "c.toml").unwrap();
        let e = resolve(Some(&f), rule.as_ref(), &none, &ts, &[0], "in")
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
            let p = f
                .defaults
                .unwrap()
                .patch(datanorm().as_ref(), "c.toml")
                .unwrap();
            assert_eq!(p["norm"], "L2", "{text}");
            assert_eq!(p["nan_policy"], "rank_last", "{text}");
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
    fn flag_origins_are_read_per_key() {
        let fl = flags(&[("sparsity_level", "--sparsity-level", json!(0.5))]);
        assert_eq!(fl.origin("sparsity_level"), Some("--sparsity-level"));
        assert_eq!(fl.origin("norm"), None);
        assert_eq!(FlagPatch::default().origin("sparsity_level"), None);
    }

    #[test]
    fn non_finite_levels_are_blamed_on_their_line_and_key() {
        // JSON (the config's form) has no NaN or infinity: the file is refused where it says it.
        for v in ["nan", "inf", "-inf", "+inf"] {
            let e = msg(&format!(
                "[defaults]\nnorm = \"L1\"\nsparsity_level = {v}\n"
            ));
            assert!(
                e.starts_with("c.toml:3:") && e.contains("`sparsity_level`"),
                "{v}: {e}"
            );
            let e = msg(&format!("[tensors.\"fc\"]\n\nsparsity_level = {v}\n"));
            assert!(
                e.starts_with("c.toml:3:") && e.contains("`sparsity_level`"),
                "{v}: {e}"
            );
        }
    }
}
