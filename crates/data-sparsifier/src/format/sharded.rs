//! Sharded checkpoints, as Hugging Face ships them: `model-0000N-of-0000M.safetensors` files in one
//! folder and a `model.safetensors.index.json` naming the shard of every tensor:
//!
//! ```json
//! {"metadata": {"total_size": 123456}, "weight_map": {"emb.weight": "model-00001-of-00002.safetensors", ...}}
//! ```
//!
//! [`ShardIndex`] reads, checks and writes that index. Reading is strict, because a loader that
//! trusts a wrong index loads the wrong data or none: a tensor named twice, a shard name that is
//! not a plain file name of the folder (`../x`, `/abs`), and, through
//! [`ShardIndex::check_shard`], a shard holding a tensor the index puts elsewhere or lacking one
//! it is said to hold, are each an [`Error::InvalidIndex`] that names the tensor, the shard and
//! the fix. The shards themselves are ordinary safetensors files, read and written by
//! [`safetensors`](super::safetensors); several outputs commit together through
//! [`Staged`](super::Staged).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::TensorInfo;
use crate::error::{Error, Result};

/// How an index file's name ends (`model.safetensors.index.json`).
pub const INDEX_SUFFIX: &str = ".safetensors.index.json";

/// The index of the usual file name, for outputs that have no other name to follow.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Largest index file read (an index of a million tensors is about 100 MB).
const MAX_INDEX_BYTES: u64 = 1 << 30;

/// Whether `path` names a shard index: its file name ends with `.index.json`.
///
/// ```
/// use data_sparsifier::format::sharded::is_index_path;
/// assert!(is_index_path("ckpt/model.safetensors.index.json".as_ref()));
/// assert!(!is_index_path("model.safetensors".as_ref()));
/// ```
pub fn is_index_path(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".index.json"))
}

/// A checked shard index: every tensor's shard, the index's `metadata`.
///
/// ```
/// use data_sparsifier::format::sharded::ShardIndex;
/// use data_sparsifier::format::{FileDType, TensorInfo};
/// let json = br#"{"metadata": {"total_size": 48},
///   "weight_map": {"b": "model-00002-of-00002.safetensors", "a": "model-00001-of-00002.safetensors"}}"#;
/// let index = ShardIndex::parse(json, "model.safetensors.index.json").unwrap();
/// assert_eq!(index.shards(), ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]);
/// assert_eq!(index.shard_of("b"), Some("model-00002-of-00002.safetensors"));
/// // A shard must hold exactly the tensors the index gives it.
/// let a = [TensorInfo::new("a", FileDType::F32, [2, 3])];
/// index.check_shard("model-00001-of-00002.safetensors", &a).unwrap();
/// let err = index.check_shard("model-00002-of-00002.safetensors", &a).unwrap_err().to_string();
/// assert!(err.contains("\"a\""), "{err}");
/// // A tensor named twice is refused, not silently merged.
/// let twice = br#"{"weight_map": {"a": "x.safetensors", "a": "y.safetensors"}}"#;
/// assert!(ShardIndex::parse(twice, "i.json").unwrap_err().to_string().contains("twice"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ShardIndex {
    metadata: Map<String, Value>,
    /// Tensor name → shard file name.
    shard_of: BTreeMap<String, String>,
    /// The index's name in errors.
    name: String,
}

/// `weight_map` as the file lists it, duplicates kept (serde_json's maps keep only the last).
struct Pairs(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Pairs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object mapping tensor names to shard file names")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Pairs, A::Error> {
                let mut v = Vec::new();
                while let Some(kv) = m.next_entry::<String, Value>()? {
                    v.push(kv);
                }
                Ok(Pairs(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
struct RawIndex {
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    weight_map: Option<Pairs>,
}

#[derive(Serialize)]
struct OutIndex<'a> {
    metadata: &'a Map<String, Value>,
    weight_map: &'a BTreeMap<String, String>,
}

/// Whether `shard` is a plain file name: no folder part, not `.` or `..`, not empty.
fn is_plain_file_name(shard: &str) -> bool {
    !shard.is_empty()
        && shard != "."
        && shard != ".."
        && !shard.contains(['/', '\\', '\0'])
        && !(shard.len() >= 2 && shard.as_bytes()[1] == b':')
}

impl ShardIndex {
    /// Reads and checks the index file at `path`.
    pub fn read(path: impl AsRef<Path>) -> Result<ShardIndex> {
        let path = path.as_ref();
        let len = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        let name = path.display().to_string();
        if len > MAX_INDEX_BYTES {
            return Err(Error::InvalidIndex {
                index: name,
                message: format!(
                    "{len} bytes is larger than any index ({MAX_INDEX_BYTES} at most): is it an index?"
                ),
                source: None,
            });
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        ShardIndex::parse(&bytes, &name)
    }

    /// Parses and checks an index's JSON; `name` names it in errors.
    pub fn parse(bytes: &[u8], name: &str) -> Result<ShardIndex> {
        let bad = |message: String| Error::InvalidIndex {
            index: name.to_string(),
            message,
            source: None,
        };
        let raw: RawIndex = serde_json::from_slice(bytes).map_err(|e| Error::InvalidIndex {
            index: name.to_string(),
            message: format!("not a valid index ({e}): an index is JSON with a \"weight_map\" object of tensor name → shard file name"),
            source: Some(e),
        })?;
        let Some(Pairs(pairs)) = raw.weight_map else {
            return Err(bad(
                "no \"weight_map\": an index maps every tensor name to its shard file under \"weight_map\"".into(),
            ));
        };
        ShardIndex::build(name, raw.metadata.unwrap_or_default(), pairs)
    }

    /// The checks every index passes, read or built.
    fn build(
        name: &str,
        metadata: Map<String, Value>,
        pairs: Vec<(String, Value)>,
    ) -> Result<ShardIndex> {
        let bad = |message: String| Error::InvalidIndex {
            index: name.to_string(),
            message,
            source: None,
        };
        let mut shard_of = BTreeMap::new();
        for (tensor, shard) in pairs {
            let Value::String(shard) = shard else {
                return Err(bad(format!(
                    "tensor {tensor:?} maps to {shard}, not to a shard file name: give the file name as a string"
                )));
            };
            if !is_plain_file_name(&shard) {
                return Err(bad(format!(
                    "tensor {tensor:?} maps to shard {shard:?}, which is not a file name in the index's folder: shards sit beside their index"
                )));
            }
            if let Some(first) = shard_of.insert(tensor.clone(), shard.clone()) {
                return Err(bad(format!(
                    "tensor {tensor:?} is named twice in \"weight_map\" (shards {first:?} and {shard:?}): a tensor is stored once; remove one entry"
                )));
            }
        }
        if shard_of.is_empty() {
            return Err(bad(
                "\"weight_map\" is empty: the index names no tensor, so there is nothing to read"
                    .into(),
            ));
        }
        Ok(ShardIndex {
            metadata,
            shard_of,
            name: name.to_string(),
        })
    }

    /// An index of `shard_of` (tensor name → shard file name) with `metadata`, for writing;
    /// `name` names it in errors.
    pub fn new(
        name: &str,
        metadata: Map<String, Value>,
        shard_of: impl IntoIterator<Item = (String, String)>,
    ) -> Result<ShardIndex> {
        let pairs = shard_of
            .into_iter()
            .map(|(t, s)| (t, Value::String(s)))
            .collect();
        ShardIndex::build(name, metadata, pairs)
    }

    /// The index's name (its path, as given).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The index's `metadata` object (`total_size`, and whatever its writer added).
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }

    /// The shard file names, each once, in file-name order (for `model-0000N-of-0000M` names,
    /// shard order).
    pub fn shards(&self) -> Vec<&str> {
        let mut s: Vec<&str> = self.shard_of.values().map(String::as_str).collect();
        s.sort_unstable();
        s.dedup();
        s
    }

    /// The shard holding `tensor`, if the index names it.
    pub fn shard_of(&self, tensor: &str) -> Option<&str> {
        self.shard_of.get(tensor).map(String::as_str)
    }

    /// Every tensor and its shard, by tensor name.
    pub fn weight_map(&self) -> &BTreeMap<String, String> {
        &self.shard_of
    }

    /// Number of tensors the index names.
    pub fn len(&self) -> usize {
        self.shard_of.len()
    }

    /// Whether the index names no tensor (never, for a parsed one).
    pub fn is_empty(&self) -> bool {
        self.shard_of.is_empty()
    }

    /// Checks that shard `shard` holds exactly the tensors the index gives it (`tensors`, the
    /// shard file's own list): a tensor the index puts elsewhere or does not list, or one it gives
    /// this shard that the file lacks, is an [`Error::InvalidIndex`].
    pub fn check_shard(&self, shard: &str, tensors: &[TensorInfo]) -> Result<()> {
        let bad = |message: String| Error::InvalidIndex {
            index: self.name.clone(),
            message,
            source: None,
        };
        let mut held: HashMap<&str, ()> = HashMap::with_capacity(tensors.len());
        for t in tensors {
            match self.shard_of(&t.name) {
                Some(s) if s == shard => {}
                Some(s) => {
                    return Err(bad(format!(
                        "shard {shard:?} holds tensor {:?}, but the index maps it to shard {s:?}: a tensor is stored in one shard; fix the index or remove the copy",
                        t.name
                    )))
                }
                None => {
                    return Err(bad(format!(
                        "shard {shard:?} holds tensor {:?}, which the index does not name: add it to \"weight_map\" (or regenerate the index)",
                        t.name
                    )))
                }
            }
            held.insert(t.name.as_str(), ());
        }
        for (t, s) in &self.shard_of {
            if s == shard && !held.contains_key(t.as_str()) {
                return Err(bad(format!(
                    "the index maps tensor {t:?} to shard {shard:?}, which does not hold it: restore the shard, or regenerate the index"
                )));
            }
        }
        Ok(())
    }

    /// The index as JSON, the way Hugging Face writes it: `metadata`, then `weight_map` by tensor
    /// name, indented by 2.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(&OutIndex {
            metadata: &self.metadata,
            weight_map: &self.shard_of,
        })
        .unwrap_or_default();
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::FileDType;

    fn err(json: &str) -> String {
        ShardIndex::parse(json.as_bytes(), "i.json")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_indexes_are_one_line_errors_with_the_fix() {
        assert!(err("{").contains("not a valid index"));
        assert!(err("[]").contains("not a valid index"));
        assert!(err(r#"{"metadata": {}}"#).contains("no \"weight_map\""));
        assert!(err(r#"{"weight_map": {}}"#).contains("is empty"));
        assert!(err(r#"{"weight_map": {"a": 3}}"#).contains("not to a shard file name"));
        for s in [
            "../x.safetensors",
            "/abs.safetensors",
            "d/x.safetensors",
            "..",
            "",
            "C:x",
        ] {
            let e = err(&format!(r#"{{"weight_map": {{"a": {s:?}}}}}"#));
            assert!(e.contains("not a file name"), "{s}: {e}");
        }
        let e = err(r#"{"weight_map": {"a": "x", "b": "x", "a": "y"}}"#);
        assert!(
            e.contains("\"a\" is named twice") && e.contains("remove one"),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }

    #[test]
    fn check_shard_names_every_mismatch() {
        let index = ShardIndex::parse(br#"{"weight_map": {"a": "s1", "b": "s2"}}"#, "i").unwrap();
        let t = |n: &str| TensorInfo::new(n, FileDType::F32, [1]);
        index.check_shard("s1", &[t("a")]).unwrap();
        let e = index.check_shard("s1", &[t("a"), t("b")]).unwrap_err();
        assert!(e.to_string().contains("maps it to shard \"s2\""), "{e}");
        let e = index.check_shard("s1", &[t("a"), t("c")]).unwrap_err();
        assert!(e.to_string().contains("does not name"), "{e}");
        let e = index.check_shard("s2", &[]).unwrap_err();
        assert!(e.to_string().contains("does not hold it"), "{e}");
    }

    #[test]
    fn written_index_reads_back() {
        let mut meta = Map::new();
        meta.insert("total_size".into(), Value::from(8u64));
        let index = ShardIndex::new(
            "out",
            meta,
            [
                ("b".to_string(), "s2".to_string()),
                ("a".into(), "s1".into()),
            ],
        )
        .unwrap();
        let json = index.to_json();
        assert!(json.find("\"a\"").unwrap() < json.find("\"b\"").unwrap());
        let back = ShardIndex::parse(json.as_bytes(), "out").unwrap();
        assert_eq!(back, index);
        assert_eq!(back.metadata()["total_size"], 8);
        assert!(ShardIndex::new("out", Map::new(), [("a".into(), "../x".into())]).is_err());
    }
}
