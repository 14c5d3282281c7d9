//! The study's data: a seeded Criteo-shaped generator with a hidden teacher, and MovieLens-100k.
//!
//! A [`Dataset`] holds a training and a held-out [`Split`]: per sample, `n_dense` dense features
//! and one categorical id per embedding table (each table's lookup is a bag of one id, as in the
//! seed's Criteo loader), and a 0/1 click label.

use std::path::{Path, PathBuf};
use std::process::Command;

use data_sparsifier::random::Rng;

use crate::error::{Result, StudyError};

/// Criteo Kaggle's 26 table sizes (`ln_emb`, reference §7): 33,762,577 rows.
pub const CRITEO_ROWS: [usize; 26] = [
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
];

/// Criteo's dense features.
pub const CRITEO_DENSE: usize = 13;

/// One split: row-major dense features, ids per table, labels.
#[derive(Debug, Clone, Default)]
pub struct Split {
    /// `len × n_dense` dense features.
    pub dense: Vec<f32>,
    /// `ids[t][s]`: sample `s`'s row in table `t`.
    pub ids: Vec<Vec<u32>>,
    /// 1.0 for a click, 0.0 otherwise.
    pub labels: Vec<f32>,
}

impl Split {
    /// Samples in the split.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether the split has no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    fn with_tables(tables: usize) -> Self {
        Split {
            ids: vec![Vec::new(); tables],
            ..Default::default()
        }
    }
}

/// A dataset for the study.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// `synthetic` or `movielens`.
    pub name: &'static str,
    /// Dense features per sample.
    pub n_dense: usize,
    /// Rows of each embedding table.
    pub table_rows: Vec<usize>,
    /// The training split.
    pub train: Split,
    /// The held-out split (the fixed forward-time batch too).
    pub test: Split,
    /// The AUC of the true click probabilities on the test split (synthetic only): the ceiling.
    pub ceiling_auc: Option<f64>,
}

/// How big the synthetic data is.
#[derive(Debug, Clone, Copy)]
pub struct SyntheticSize {
    /// Each table's rows are `min(Criteo's, cap)`; `None`: Criteo's own.
    pub cap: Option<usize>,
    /// Training samples.
    pub train: usize,
    /// Test samples.
    pub test: usize,
}

/// Zipf exponent of the ids of every table.
const ZIPF_S: f64 = 1.1;
/// Dimension of the teacher's hidden id vectors.
const TEACHER_DIM: usize = 4;
/// Table pairs whose ids interact in the teacher (a dot product of their hidden vectors).
const TEACHER_PAIRS: [(usize, usize); 6] = [(2, 3), (11, 15), (20, 23), (0, 9), (2, 11), (6, 25)];

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A standard normal that is a pure function of `key` (Box–Muller over two hashed uniforms), so
/// the teacher needs no memory per id, even at full scale.
fn hashed_normal(key: u64) -> f64 {
    let a = splitmix(key);
    let b = splitmix(a);
    let u1 = ((a >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let u2 = (b >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// The hidden click model: `sigmoid(logit)`, with a dense linear term, a per-id effect in every
/// table (stronger in the first tables) and dot-product interactions of a few table pairs.
struct Teacher {
    seed: u64,
    dense_w: Vec<f64>,
    table_w: Vec<f64>,
    dirs: Vec<[f64; TEACHER_DIM]>,
}

impl Teacher {
    fn new(seed: u64, tables: usize) -> Self {
        let mut rng = Rng::new(seed ^ 0x7EAC_4E55);
        let mut unit = || {
            let v: Vec<f64> = (0..TEACHER_DIM).map(|_| rng.normal()).collect();
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            std::array::from_fn(|k| v[k] / n)
        };
        let dirs = (0..tables).map(|_| unit()).collect();
        let mut rng = Rng::new(seed ^ 0xD3E5);
        let dense_w: Vec<f64> = (0..CRITEO_DENSE).map(|_| rng.normal()).collect();
        let norm = dense_w.iter().map(|x| x * x).sum::<f64>().sqrt();
        Teacher {
            seed,
            dense_w: dense_w.iter().map(|w| 0.6 * w / norm).collect(),
            table_w: (0..tables).map(|t| 0.6 * 0.9f64.powi(t as i32)).collect(),
            dirs,
        }
    }
    fn vector(&self, table: usize, id: u32) -> [f64; TEACHER_DIM] {
        let base = self.seed ^ ((table as u64) << 40) ^ ((id as u64) << 3);
        std::array::from_fn(|k| hashed_normal(base.wrapping_mul(31).wrapping_add(k as u64)))
    }
    fn probability(&self, dense: &[f32], ids: &[u32]) -> f64 {
        let mut z = -1.0;
        z += dense
            .iter()
            .zip(&self.dense_w)
            .map(|(&x, w)| x as f64 * w)
            .sum::<f64>();
        for (t, &id) in ids.iter().enumerate() {
            let v = self.vector(t, id);
            z += self.table_w[t] * v.iter().zip(&self.dirs[t]).map(|(a, b)| a * b).sum::<f64>();
        }
        for &(a, b) in &TEACHER_PAIRS {
            let (va, vb) = (self.vector(a, ids[a]), self.vector(b, ids[b]));
            z += 0.25 * va.iter().zip(&vb).map(|(x, y)| x * y).sum::<f64>();
        }
        1.0 / (1.0 + (-z).exp())
    }
}

/// A Zipf-like id in `0..n`: the floor of a continuous power law `x^-s` on `[1, n + 1)`, by its
/// inverse CDF, so id 0 is the most frequent.
fn zipf(rng: &mut Rng, n: usize, s: f64) -> u32 {
    let a = (n as f64 + 1.0).powf(1.0 - s) - 1.0;
    let x = (a * rng.uniform() + 1.0).powf(1.0 / (1.0 - s));
    ((x.floor() as usize).saturating_sub(1)).min(n - 1) as u32
}

/// The table sizes at a cap.
pub fn capped_rows(cap: Option<usize>) -> Vec<usize> {
    CRITEO_ROWS
        .iter()
        .map(|&n| cap.map_or(n, |c| n.min(c)))
        .collect()
}

/// The synthetic Criteo-shaped dataset: 13 dense features (standard normal), 26 Zipf-distributed
/// ids, clicks drawn from the hidden teacher. The same `seed` gives the same data.
pub fn synthetic(size: SyntheticSize, seed: u64) -> Dataset {
    let rows = capped_rows(size.cap);
    let teacher = Teacher::new(seed, rows.len());
    let mut rng = Rng::new(seed);
    let mut gen = |n: usize, probs: &mut Vec<f64>| {
        let mut split = Split::with_tables(rows.len());
        let mut ids = vec![0u32; rows.len()];
        for _ in 0..n {
            let start = split.dense.len();
            for _ in 0..CRITEO_DENSE {
                split.dense.push(rng.normal() as f32);
            }
            for (t, &r) in rows.iter().enumerate() {
                ids[t] = zipf(&mut rng, r, ZIPF_S);
                split.ids[t].push(ids[t]);
            }
            let p = teacher.probability(&split.dense[start..], &ids);
            probs.push(p);
            split.labels.push((rng.uniform() < p) as u8 as f32);
        }
        split
    };
    let train = gen(size.train, &mut Vec::new());
    let mut test_p = Vec::new();
    let test = gen(size.test, &mut test_p);
    let p32: Vec<f32> = test_p.iter().map(|&p| p as f32).collect();
    let ceiling = crate::metrics::roc_auc(&p32, &test.labels);
    Dataset {
        name: "synthetic",
        n_dense: CRITEO_DENSE,
        table_rows: rows,
        train,
        test,
        ceiling_auc: Some(ceiling),
    }
}

/// The wheel that ships MovieLens-100k, and the file inside it.
const RECBOLE: &str = "recbole==1.2.1";
const RECBOLE_WHEEL: &str = "recbole-1.2.1-py3-none-any.whl";
const ML_INTER: &str = "recbole/dataset_example/ml-100k/ml-100k.inter";

/// Where the study caches its download: `$XDG_CACHE_HOME` (or `~/.cache`)
/// `/data-sparsifier/study`.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("data-sparsifier").join("study")
}

/// The MovieLens-100k ratings file's text: from the cached recbole wheel, downloaded with
/// `pip download --no-deps` if absent, read with Python's `zipfile`. The data's licence forbids
/// redistribution, so it is never committed.
pub fn movielens_text(cache: &Path) -> Result<String> {
    let wheel = cache.join(RECBOLE_WHEEL);
    if !wheel.exists() {
        std::fs::create_dir_all(cache)
            .map_err(|e| StudyError::io(format!("creating {}", cache.display()), e))?;
        let out = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-q",
            ])
            .arg(RECBOLE)
            .arg("-d")
            .arg(cache)
            .output()
            .map_err(|e| StudyError::io("running python3 -m pip download".into(), e))?;
        if !out.status.success() || !wheel.exists() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(StudyError::Download(format!(
                "pip download {RECBOLE} failed ({}): {last}",
                out.status
            )));
        }
    }
    let script = "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&wheel)
        .arg(ML_INTER)
        .output()
        .map_err(|e| StudyError::io("running python3 to read the wheel".into(), e))?;
    if !out.status.success() {
        return Err(StudyError::Download(format!(
            "reading {ML_INTER} from {}: {}",
            wheel.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    String::from_utf8(out.stdout)
        .map_err(|_| StudyError::Data(format!("{ML_INTER} is not UTF-8 text")))
}

/// MovieLens-100k as a click dataset: a rating of 4 or more is a click. Two tables (users and
/// items, ids in order of first appearance) and one dense feature (the timestamp, standardized).
/// The ratings are shuffled with `seed`; the last `test` of them are held out.
pub fn movielens(text: &str, test: usize, seed: u64) -> Result<Dataset> {
    use std::collections::HashMap;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    if !header.starts_with("user_id") {
        return Err(StudyError::Data(format!(
            "ml-100k.inter: unexpected header {header:?}, expected user_id:token\titem_id:token\t..."
        )));
    }
    let (mut users, mut items) = (HashMap::new(), HashMap::new());
    let mut rows: Vec<(u32, u32, f32, f64)> = Vec::new();
    for (n, line) in lines.enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        let bad = || StudyError::Data(format!("ml-100k.inter line {}: {line:?}", n + 2));
        if f.len() < 4 {
            return Err(bad());
        }
        let next_u = users.len() as u32;
        let u = *users.entry(f[0].to_string()).or_insert(next_u);
        let next_i = items.len() as u32;
        let i = *items.entry(f[1].to_string()).or_insert(next_i);
        let rating: f32 = f[2].parse().map_err(|_| bad())?;
        let ts: f64 = f[3].parse().map_err(|_| bad())?;
        rows.push((u, i, rating, ts));
    }
    if rows.len() <= test {
        return Err(StudyError::Data(format!(
            "ml-100k.inter has {} ratings, fewer than the {test} to hold out",
            rows.len()
        )));
    }
    let mean = rows.iter().map(|r| r.3).sum::<f64>() / rows.len() as f64;
    let sd = (rows.iter().map(|r| (r.3 - mean).powi(2)).sum::<f64>() / rows.len() as f64).sqrt();
    let mut rng = Rng::new(seed);
    for k in (1..rows.len()).rev() {
        rows.swap(k, rng.below(k as u64 + 1) as usize);
    }
    let to_split = |part: &[(u32, u32, f32, f64)]| {
        let mut s = Split::with_tables(2);
        for &(u, i, r, ts) in part {
            s.dense.push(((ts - mean) / sd.max(1e-9)) as f32);
            s.ids[0].push(u);
            s.ids[1].push(i);
            s.labels.push((r >= 4.0) as u8 as f32);
        }
        s
    };
    let cut = rows.len() - test;
    Ok(Dataset {
        name: "movielens",
        n_dense: 1,
        table_rows: vec![users.len(), items.len()],
        train: to_split(&rows[..cut]),
        test: to_split(&rows[cut..]),
        ceiling_auc: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_is_seeded_zipf_and_learnable() {
        let size = SyntheticSize {
            cap: Some(1000),
            train: 2000,
            test: 4000,
        };
        let a = synthetic(size, 7);
        let b = synthetic(size, 7);
        assert_eq!(a.train.ids, b.train.ids);
        assert_eq!(a.test.labels, b.test.labels);
        assert_eq!(a.table_rows[2], 1000);
        assert_eq!(a.table_rows[8], 3);
        // Zipf: id 0 of a 1000-row table is far more frequent than uniform (1/1000).
        let zeros = a.train.ids[2].iter().filter(|&&i| i == 0).count();
        assert!(zeros > 100, "{zeros}");
        assert!(a
            .train
            .ids
            .iter()
            .zip(&a.table_rows)
            .all(|(ids, &n)| ids.iter().all(|&i| (i as usize) < n)));
        let rate = crate::metrics::base_rate(&a.test.labels);
        assert!((0.2..0.6).contains(&rate), "base rate {rate}");
        assert!(a.ceiling_auc.unwrap() > 0.75, "{:?}", a.ceiling_auc);
    }

    #[test]
    fn movielens_parses_and_splits() {
        let text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n\
                    196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n\
                    196\t377\t4\t880606923\n";
        let d = movielens(text, 1, 1).unwrap();
        assert_eq!(d.table_rows, vec![3, 3]);
        assert_eq!((d.train.len(), d.test.len()), (3, 1));
        assert_eq!(
            d.train.labels.iter().chain(&d.test.labels).sum::<f32>(),
            1.0
        );
        assert!(movielens("nope\n", 1, 1).is_err());
        assert!(movielens(text, 4, 1).is_err());
        let bad = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\tx\t3\n";
        assert!(movielens(bad, 0, 1)
            .unwrap_err()
            .to_string()
            .contains("line 2"));
    }
}
