//! A rule's config schema: the keys, their types, ranges, defaults and documentation.
//!
//! Front ends derive everything they show about a config from it: the CLI's `--set KEY=VALUE` and
//! its dedicated flags, the TOML keys, the one-line messages for a value of the wrong type, and the
//! report. A rule's own [`validate`](super::Rule::validate) still has the last word on a whole
//! config (cross-field checks, rule-specific messages).

use serde_json::{Map, Value};

/// The type (and range) of one config key.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FieldKind {
    /// A finite number in `[min, max]`.
    Float {
        /// Smallest valid value.
        min: f64,
        /// Largest valid value.
        max: f64,
    },
    /// A non-negative integer; with `nullable`, also `null` (unset, the rule's documented meaning).
    Count {
        /// Whether `null` is valid.
        nullable: bool,
    },
    /// A pair of positive integers `[rows, cols]`, written `RxC` on a command line.
    Shape2,
    /// One of a fixed set of strings (canonical spellings). Any case is accepted, and `-` for `_`.
    Choice {
        /// The canonical spellings.
        choices: &'static [&'static str],
        /// What a value is, for messages ("a norm").
        what: &'static str,
    },
}

/// One config key.
///
/// ```
/// use data_sparsifier::rule::{Field, FieldKind};
/// let f = Field::new("threshold", FieldKind::Float { min: 0.0, max: f64::MAX }, 0.1, "zero |x| below this");
/// assert_eq!(f.parse_text("0.25").unwrap(), serde_json::json!(0.25));
/// assert!(f.parse_text("-1").unwrap_err().contains("outside"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// The key, as in the config's serde form (and the TOML file).
    pub key: &'static str,
    /// Its type and range.
    pub kind: FieldKind,
    /// Its default value.
    pub default: Value,
    /// One line of documentation (the CLI's `--help` text).
    pub doc: &'static str,
    /// A dedicated command-line flag (its long name without `--`), besides `--set KEY=VALUE`.
    pub flag: Option<&'static str>,
    /// The placeholder of the value in `--help` (`F`, `HxW`, ...).
    pub value_name: &'static str,
}

impl Field {
    /// A field without a dedicated flag.
    pub fn new(
        key: &'static str,
        kind: FieldKind,
        default: impl Into<Value>,
        doc: &'static str,
    ) -> Self {
        let value_name = match &kind {
            FieldKind::Float { .. } => "F",
            FieldKind::Count { .. } => "N",
            FieldKind::Shape2 => "RxC",
            FieldKind::Choice { .. } => "NAME",
        };
        Field {
            key,
            kind,
            default: default.into(),
            doc,
            flag: None,
            value_name,
        }
    }
    /// Gives the field a dedicated command-line flag (`--NAME VALUE`).
    pub fn flag(mut self, name: &'static str, value_name: &'static str) -> Self {
        self.flag = Some(name);
        self.value_name = value_name;
        self
    }

    /// The command-line spelling of the choices (`l1 or l2`, `error or rank-last`).
    fn choices_text(choices: &[&str]) -> String {
        let c: Vec<String> = choices
            .iter()
            .map(|c| c.to_ascii_lowercase().replace('_', "-"))
            .collect();
        c.join(" or ")
    }

    /// Parses a command-line value (`--set KEY=VALUE` or the field's flag) into its JSON form,
    /// checking the type and the range. The error is a phrase naming the value and the fix.
    pub fn parse_text(&self, s: &str) -> Result<Value, String> {
        let t = s.trim();
        match &self.kind {
            FieldKind::Float { min, max } => {
                let range = range_text(*min, *max);
                let v: f64 = t
                    .parse()
                    .ok()
                    .filter(|v: &f64| !v.is_nan())
                    .ok_or_else(|| format!("{s:?} is not a number: give a value in {range}"))?;
                if !(*min..=*max).contains(&v) {
                    return Err(format!("{v} is outside {range}: give a value in {range}"));
                }
                Ok(Value::from(v))
            }
            FieldKind::Count { nullable } => {
                if *nullable && matches!(t, "none" | "null" | "unset") {
                    return Ok(Value::Null);
                }
                t.parse::<u64>()
                    .map(Value::from)
                    .map_err(|_| format!("{s:?} is not a whole number: give 0 or more, e.g. 2"))
            }
            FieldKind::Shape2 => {
                let bad =
                    || format!("{s:?} is not a block shape: write rows x cols, e.g. 1x4 or 4x4");
                let (h, w) = t.split_once(['x', 'X', ',']).ok_or_else(bad)?;
                let h: u64 = h.trim().parse().map_err(|_| bad())?;
                let w: u64 = w.trim().parse().map_err(|_| bad())?;
                if h == 0 || w == 0 {
                    return Err(format!("{s:?}: both block dimensions must be at least 1"));
                }
                Ok(serde_json::json!([h, w]))
            }
            FieldKind::Choice { choices, what } => canonical_choice(choices, t)
                .map(Value::from)
                .ok_or_else(|| format!("{s:?} is not {what}: use {}", Self::choices_text(choices))),
        }
    }

    /// Checks the type of a JSON value (from a config file, or a binding) and returns it in
    /// canonical form (choices in their canonical spelling). Ranges are checked by
    /// [`Schema::validate`] and the rule, so that a file's error can point at the line that set it.
    pub fn check_type(&self, v: &Value) -> Result<Value, String> {
        let want = match &self.kind {
            FieldKind::Float { .. } if v.is_number() => return Ok(v.clone()),
            FieldKind::Float { .. } => "a number".to_string(),
            FieldKind::Count { nullable } if v.is_u64() || (*nullable && v.is_null()) => {
                return Ok(v.clone())
            }
            FieldKind::Count { .. } => "a whole number, 0 or more".to_string(),
            FieldKind::Shape2 => match v.as_array().map(|a| a.as_slice()) {
                Some([h, w]) if h.is_u64() && w.is_u64() => return Ok(v.clone()),
                _ => "a pair of whole numbers [rows, cols], e.g. [1, 4]".to_string(),
            },
            FieldKind::Choice { choices, .. } => {
                if let Some(c) = v.as_str().and_then(|s| canonical_choice(choices, s.trim())) {
                    return Ok(Value::from(c));
                }
                format!("one of {}", quoted(choices))
            }
        };
        Err(format!("expected {want}, got {}", shown(v)))
    }

    /// Checks a value's range (after [`check_type`](Self::check_type)).
    fn check_range(&self, v: &Value) -> Result<(), String> {
        match (&self.kind, v.as_f64()) {
            (FieldKind::Float { min, max }, Some(x)) if !(*min..=*max).contains(&x) => {
                Err(format!("expected a value in {}", range_text(*min, *max)))
            }
            (FieldKind::Shape2, _) if v.as_array().is_some_and(|a| a.iter().any(|d| d == 0)) => {
                Err("expected both block dimensions > 0".into())
            }
            _ => Ok(()),
        }
    }
}

fn range_text(min: f64, max: f64) -> String {
    if max == f64::MAX || max == f64::INFINITY {
        format!("[{min}, inf)")
    } else {
        format!("[{min}, {max}]")
    }
}

fn quoted(choices: &[&str]) -> String {
    let c: Vec<String> = choices.iter().map(|c| format!("{c:?}")).collect();
    c.join(", ")
}

fn shown(v: &Value) -> String {
    match v {
        Value::Null => "nothing (null)".into(),
        other => other.to_string(),
    }
}

fn canonical_choice(choices: &[&'static str], s: &str) -> Option<&'static str> {
    let s = s.replace('-', "_");
    choices.iter().copied().find(|c| c.eq_ignore_ascii_case(&s))
}

/// The config schema of a rule: its fields in order.
///
/// ```
/// use data_sparsifier::rule::{Field, FieldKind, Schema};
/// let s = Schema::new(vec![Field::new("threshold", FieldKind::Float { min: 0.0, max: f64::MAX }, 0.1, "cut-off")]);
/// assert_eq!(s.defaults(), serde_json::json!({"threshold": 0.1}));
/// assert!(s.validate("w", &serde_json::json!({"threshold": 0.5})).is_ok());
/// assert!(s.validate("w", &serde_json::json!({"threshold": -1.0})).is_err());
/// assert!(s.validate("w", &serde_json::json!({"treshold": 1.0})).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Schema {
    fields: Vec<Field>,
    open: bool,
}

impl Schema {
    /// A schema of these fields.
    pub fn new(fields: Vec<Field>) -> Self {
        Schema {
            fields,
            open: false,
        }
    }

    /// A schema that describes nothing and accepts any key: what a typed rule has that does not
    /// describe its config ([`UpdateMask::schema`](crate::UpdateMask::schema)). Its configs are
    /// checked only by the rule's own `validate`; front ends take its values as JSON.
    ///
    /// ```
    /// use data_sparsifier::rule::Schema;
    /// let s = Schema::open();
    /// assert!(s.is_open() && s.fields().is_empty());
    /// assert!(s.validate("w", &serde_json::json!({"anything": 1})).is_ok());
    /// ```
    pub fn open() -> Self {
        Schema {
            fields: Vec::new(),
            open: true,
        }
    }
    /// Whether this is an [`open`](Self::open) schema.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The fields, in order.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }
    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.fields.iter().map(|f| f.key)
    }
    /// The field of `key`.
    pub fn field(&self, key: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.key == key)
    }
    /// The default config: every field's default.
    pub fn defaults(&self) -> Value {
        Value::Object(
            self.fields
                .iter()
                .map(|f| (f.key.to_string(), f.default.clone()))
                .collect(),
        )
    }

    /// The keys as `` `a`, `b` `` for messages.
    pub fn keys_text(&self) -> String {
        let k: Vec<String> = self.keys().map(|k| format!("`{k}`")).collect();
        k.join(", ")
    }

    /// The field of `key`, or an [`Error::UnknownConfigKey`](crate::Error::UnknownConfigKey).
    pub fn require(&self, name: &str, key: &str) -> crate::Result<&Field> {
        self.field(key)
            .ok_or_else(|| crate::Error::UnknownConfigKey {
                name: name.to_string(),
                key: key.to_string(),
                known: self.keys_text(),
            })
    }

    /// Checks a whole config of entry `name`: a JSON object whose every key is a field, of the
    /// field's type and in its range. Errors are [`Error::UnknownConfigKey`](crate::Error) and
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig).
    pub fn validate(&self, name: &str, config: &Value) -> crate::Result<()> {
        let Some(map) = config.as_object() else {
            return Err(crate::Error::invalid_config(
                name,
                "config",
                shown(config),
                "expected an object of config keys",
            ));
        };
        if self.open {
            return Ok(());
        }
        for (k, v) in map {
            let f = self.require(name, k)?;
            f.check_type(v)
                .and_then(|_| f.check_range(v))
                .map_err(|e| crate::Error::invalid_config(name, f.key, shown(v), e))?;
        }
        Ok(())
    }
}

/// Overlays the keys of `patch` (a JSON object; `null` or anything else changes nothing) on
/// `config`, which becomes an object if it is not one.
///
/// ```
/// use data_sparsifier::rule::merge;
/// let mut c = serde_json::json!({"a": 1, "b": 2});
/// merge(&mut c, &serde_json::json!({"b": 3}));
/// assert_eq!(c, serde_json::json!({"a": 1, "b": 3}));
/// ```
pub fn merge(config: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        return;
    };
    if !config.is_object() {
        *config = Value::Object(Map::new());
    }
    if let Value::Object(c) = config {
        for (k, v) in p {
            c.insert(k.clone(), v.clone());
        }
    }
}
