//! Mask rules chosen at run time: the object-safe [`Rule`] trait, its config [`Schema`], the
//! [`TypedRule`] adapter from the typed [`UpdateMask`], and the [`Registry`] from a kind name to a
//! rule.
//!
//! A rule's config goes in and out as JSON ([`serde_json::Value`], an object of the schema's keys),
//! so the container, the CLI and language bindings can all hold any rule as a `Box<dyn Rule>`:
//! [`DataSparsifier<Box<dyn Rule>>`](crate::DataSparsifier) is the container over a rule picked
//! at run time ([`Registry::sparsifier`]), with every feature of the typed one (per-name configs,
//! steps, squash, saved state in the same file format).
//!
//! A Rust sparsifier is still one trait and one function ([`UpdateMask::update_mask`]); wrap it
//! in a [`TypedRule`] to register it:
//!
//! ```
//! use data_sparsifier::rule::{Registry, TypedRule};
//! use data_sparsifier::{Config, Mask, Result, Tensor, TensorView, UpdateMask};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
//! struct Every { every: u64 }
//! impl Config for Every {
//!     type Patch = Option<u64>;
//!     fn apply(&mut self, p: &Option<u64>) { if let Some(e) = *p { self.every = e; } }
//! }
//! /// Zeroes every `every`-th element.
//! struct Strided;
//! impl UpdateMask for Strided {
//!     type Config = Every;
//!     type State = ();
//!     fn name(&self) -> &str { "Strided" }
//!     fn update_mask(&self, _: &str, d: TensorView<'_>, c: &Every, _: &mut (), m: &mut Mask) -> Result<()> {
//!         m.fill(true);
//!         for i in (0..d.numel()).step_by(c.every.max(1) as usize) { m.set(i, false); }
//!         Ok(())
//!     }
//! }
//!
//! let mut registry = Registry::builtin();
//! registry.register(|| Box::new(TypedRule::new("strided", Strided, Every { every: 2 }))).unwrap();
//! let mut sp = registry.sparsifier("strided", &serde_json::json!({"every": 3})).unwrap();
//! sp.add_data("x", Tensor::from_vec(vec![1.0f32; 6], [6]).unwrap()).unwrap();
//! sp.step().unwrap();
//! assert_eq!(sp.get_mask("x").unwrap().to_dense_u8(), vec![0, 1, 1, 0, 1, 1]);
//! assert_eq!(registry.kinds().collect::<Vec<_>>(), ["datanorm", "magnitude", "strided"]);
//! ```

mod schema;

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

pub use crate::magnitude::{Magnitude, MagnitudeConfig};
pub use schema::{merge, Field, FieldKind, Schema};

use crate::error::{Error, Result};
use crate::mask::Mask;
use crate::sparsifier::{Config, DataSparsifier, UpdateMask};
use crate::tensor::TensorView;

/// A mask rule with a JSON config: what the container, the CLI and bindings hold as
/// `Box<dyn Rule>`. Implement [`UpdateMask`] and wrap it in a [`TypedRule`] rather than
/// implementing this directly, unless the rule is defined outside Rust (a Python class).
pub trait Rule: Send + Sync {
    /// The registry name (`"datanorm"`, `"magnitude"`): what `--rule` and `rule = ".."` take.
    fn kind(&self) -> &str;
    /// The name saved in state files and shown by `Display` (`"DataNormSparsifier"`).
    fn name(&self) -> &str;
    /// The config schema.
    fn schema(&self) -> &Schema;
    /// The default config (a JSON object).
    fn defaults(&self) -> Value;
    /// Whether data of more than two dims is accepted.
    fn supports_nd(&self) -> bool {
        false
    }
    /// Checks the whole config of entry `name`.
    fn validate(&self, name: &str, config: &Value) -> Result<()>;
    /// The config of entry `name` complete and in canonical form (the defaults for missing keys,
    /// numbers as the rule stores them), after [`validate`](Self::validate).
    fn canonical(&self, name: &str, config: &Value) -> Result<Value> {
        self.validate(name, config)?;
        let mut full = self.defaults();
        merge(&mut full, config);
        Ok(full)
    }
    /// A warning about a valid config that is almost always a slip (a phrase), if any.
    fn lint(&self, config: &Value) -> Option<String> {
        let _ = config;
        None
    }
    /// The config in one short phrase, for reports.
    fn describe(&self, config: &Value) -> String {
        describe_json(config)
    }
    /// Rewrites `mask` for `data`; see [`UpdateMask::update_mask`].
    fn update_mask(
        &self,
        name: &str,
        data: TensorView<'_>,
        config: &Value,
        state: &mut Value,
        mask: &mut Mask,
    ) -> Result<()>;
}

/// `key=value` pairs of a JSON object, in order.
fn describe_json(config: &Value) -> String {
    match config {
        Value::Object(m) => {
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
            parts.join(" ")
        }
        other => other.to_string(),
    }
}

/// The adapter from a typed [`UpdateMask`] to a [`Rule`]: the config and state are converted to
/// and from JSON at the boundary (a few microseconds per step and entry).
///
/// ```
/// use data_sparsifier::rule::{Rule, TypedRule};
/// use data_sparsifier::{DataNorm, DataNormConfig};
/// let rule = TypedRule::new("datanorm", DataNorm::new(), DataNormConfig::default());
/// assert_eq!((rule.kind(), rule.name()), ("datanorm", "DataNormSparsifier"));
/// assert_eq!(rule.defaults()["sparsity_level"], 0.5);
/// assert!(rule.validate("w", &serde_json::json!({"sparsity_level": 2.0})).is_err());
/// ```
pub struct TypedRule<U: UpdateMask> {
    kind: String,
    updater: U,
    defaults: U::Config,
    schema: Schema,
}

impl<U: UpdateMask> TypedRule<U> {
    /// The rule `kind` over `updater`, whose default config is `defaults`. The schema is
    /// [`UpdateMask::schema`] (an open one if it gives none).
    pub fn new(kind: impl Into<String>, updater: U, defaults: U::Config) -> Self {
        let schema = updater.schema().unwrap_or_else(Schema::open);
        TypedRule {
            kind: kind.into(),
            updater,
            defaults,
            schema,
        }
    }
    /// The typed rule inside.
    pub fn updater(&self) -> &U {
        &self.updater
    }
    fn config(&self, name: &str, config: &Value) -> Result<U::Config> {
        // Missing keys take the defaults: a config is the defaults with its keys overlaid.
        let mut full = to_json(&self.defaults)?;
        merge(&mut full, config);
        serde_json::from_value(full).map_err(|e| Error::ConfigValue {
            name: name.to_string(),
            rule: self.kind.clone(),
            source: Box::new(e),
        })
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::invalid_state_from("cannot encode as JSON", e))
}

impl<U: UpdateMask> Rule for TypedRule<U> {
    fn kind(&self) -> &str {
        &self.kind
    }
    fn name(&self) -> &str {
        self.updater.name()
    }
    fn schema(&self) -> &Schema {
        &self.schema
    }
    fn defaults(&self) -> Value {
        to_json(&self.defaults).unwrap_or(Value::Null)
    }
    fn supports_nd(&self) -> bool {
        self.updater.supports_nd()
    }
    fn validate(&self, name: &str, config: &Value) -> Result<()> {
        // Types first (a clear message for a wrong-typed or unknown key), then the rule's own
        // checks with its own messages, then the schema's ranges for rules that check nothing.
        if let Some(map) = config.as_object() {
            for (k, v) in map {
                if let Some(f) = self.schema.field(k) {
                    f.check_type(v)
                        .map_err(|e| Error::invalid_config(name, f.key, v, e))?;
                } else if !self.schema.is_open() {
                    self.schema.require(name, k)?;
                }
            }
        }
        let typed = self.config(name, config)?;
        self.updater.validate(name, &typed)?;
        self.schema.validate(name, config)
    }
    fn canonical(&self, name: &str, config: &Value) -> Result<Value> {
        self.validate(name, config)?;
        to_json(&self.config(name, config)?)
    }
    fn describe(&self, config: &Value) -> String {
        match self.config("", config) {
            Ok(c) => self.updater.describe(&c),
            Err(_) => describe_json(config),
        }
    }
    fn lint(&self, config: &Value) -> Option<String> {
        self.config("", config)
            .ok()
            .and_then(|c| self.updater.lint(&c))
    }
    fn update_mask(
        &self,
        name: &str,
        data: TensorView<'_>,
        config: &Value,
        state: &mut Value,
        mask: &mut Mask,
    ) -> Result<()> {
        let config = self.config(name, config)?;
        let mut typed: U::State = if state.is_null() {
            U::State::default()
        } else {
            serde_json::from_value(state.clone()).map_err(|e| Error::ConfigValue {
                name: name.to_string(),
                rule: self.kind.clone(),
                source: Box::new(e),
            })?
        };
        self.updater
            .update_mask(name, data, &config, &mut typed, mask)?;
        *state = to_json(&typed)?;
        Ok(())
    }
}

impl Config for Value {
    type Patch = Value;
    fn apply(&mut self, patch: &Value) {
        merge(self, patch);
    }
}

/// A rule held as a trait object is itself an [`UpdateMask`], with JSON configs and state, so
/// `DataSparsifier<Box<dyn Rule>>` is the container over a rule chosen at run time.
impl UpdateMask for Box<dyn Rule> {
    type Config = Value;
    type State = Value;
    fn name(&self) -> &str {
        (**self).name()
    }
    fn supports_nd(&self) -> bool {
        (**self).supports_nd()
    }
    fn validate(&self, name: &str, config: &Value) -> Result<()> {
        (**self).validate(name, config)
    }
    fn describe(&self, config: &Value) -> String {
        (**self).describe(config)
    }
    fn lint(&self, config: &Value) -> Option<String> {
        (**self).lint(config)
    }
    fn update_mask(
        &self,
        name: &str,
        data: TensorView<'_>,
        config: &Value,
        state: &mut Value,
        mask: &mut Mask,
    ) -> Result<()> {
        (**self).update_mask(name, data, config, state, mask)
    }
}

impl fmt::Debug for dyn Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field("kind", &self.kind())
            .field("name", &self.name())
            .finish()
    }
}

/// A container over a rule chosen at run time.
pub type DynSparsifier = DataSparsifier<Box<dyn Rule>>;

type Factory = Arc<dyn Fn() -> Box<dyn Rule> + Send + Sync>;

/// The rules by kind name. Each [`create`](Self::create) makes a fresh rule (a rule may own
/// scratch space, so two containers never share one).
///
/// ```
/// use data_sparsifier::rule::Registry;
/// use data_sparsifier::Tensor;
/// let registry = Registry::builtin();
/// let mut sp = registry.sparsifier("magnitude", &serde_json::json!({"threshold": 0.5})).unwrap();
/// sp.add_data("x", Tensor::from_vec(vec![0.1f32, -0.7, 0.4, 2.0], [4]).unwrap()).unwrap();
/// sp.step().unwrap();
/// assert_eq!(sp.get_mask("x").unwrap().to_dense_u8(), vec![0, 1, 0, 1]);
/// let err = registry.create("nope").unwrap_err().to_string();
/// assert!(err.contains("datanorm, magnitude"), "{err}");
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    rules: Vec<(String, Factory)>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }
    /// The built-in rules: `datanorm` ([`DataNorm`](crate::DataNorm), the default) and
    /// `magnitude` ([`Magnitude`]).
    pub fn builtin() -> Self {
        let mut r = Registry::new();
        r.add(crate::norm::rule);
        r.add(crate::magnitude::rule);
        r
    }
    fn add(&mut self, f: fn() -> Box<dyn Rule>) {
        let kind = f().kind().to_string();
        self.rules.push((kind, Arc::new(f)));
    }
    /// The kind of the built-in default rule.
    pub const DEFAULT: &'static str = "datanorm";

    /// Registers a rule under its [`kind`](Rule::kind); a kind already registered is an error.
    pub fn register(
        &mut self,
        factory: impl Fn() -> Box<dyn Rule> + Send + Sync + 'static,
    ) -> Result<()> {
        let kind = factory().kind().to_string();
        if self.rules.iter().any(|(k, _)| *k == kind) {
            return Err(Error::DuplicateName {
                name: kind,
                context: "the rule registry",
            });
        }
        self.rules.push((kind, Arc::new(factory)));
        Ok(())
    }
    /// The registered kinds, in registration order.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|(k, _)| k.as_str())
    }
    /// A fresh rule of `kind`; an unknown kind is an [`Error::UnknownRule`].
    pub fn create(&self, kind: &str) -> Result<Box<dyn Rule>> {
        self.rules
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, f)| f())
            .ok_or_else(|| Error::UnknownRule {
                kind: kind.to_string(),
                known: self.kinds().collect::<Vec<_>>().join(", "),
            })
    }
    /// A container over a fresh rule of `kind`, whose defaults are the rule's with `config`
    /// overlaid (validated).
    pub fn sparsifier(&self, kind: &str, config: &Value) -> Result<DynSparsifier> {
        let rule = self.create(kind)?;
        let mut defaults = rule.defaults();
        merge(&mut defaults, config);
        DataSparsifier::new(rule, defaults)
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.kinds()).finish()
    }
}
