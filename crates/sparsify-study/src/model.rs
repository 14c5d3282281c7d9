//! The DLRM-shaped model in candle: bottom MLP, one embedding table per categorical feature,
//! dot interaction without self-interaction, top MLP, sigmoid, BCE loss (reference §7).

use candle_core::{Device, Module, Tensor as CTensor, Var};
use candle_nn::{Linear, Optimizer, ParamsAdamW};
use data_sparsifier::random::Rng;
use data_sparsifier::Tensor;
use indicatif::ProgressBar;

use crate::data::Split;
use crate::error::Result;

/// Embedding dimension (`m_spa`).
pub const DIM: usize = 16;

/// The layer sizes of a DLRM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Bottom MLP sizes, input first (`ln_bot`).
    pub bottom: Vec<usize>,
    /// Rows of each table (`ln_emb`).
    pub table_rows: Vec<usize>,
    /// Top MLP sizes, input first (`ln_top`).
    pub top: Vec<usize>,
}

impl Spec {
    /// The seed's DLRM over `n_dense` dense features and these tables: bottom
    /// `[n_dense, 512, 256, 64, 16]`, top `[16 + F(F-1)/2, 512, 256, 1]` with `F = tables + 1`
    /// (`[367, 512, 256, 1]` for Criteo's 26 tables).
    ///
    /// ```
    /// let spec = sparsify_study::model::Spec::dlrm(13, vec![10; 26]);
    /// assert_eq!(spec.bottom, vec![13, 512, 256, 64, 16]);
    /// assert_eq!(spec.top, vec![367, 512, 256, 1]);
    /// ```
    pub fn dlrm(n_dense: usize, table_rows: Vec<usize>) -> Spec {
        let f = table_rows.len() + 1;
        Spec {
            bottom: vec![n_dense, 512, 256, 64, DIM],
            top: vec![DIM + f * (f - 1) / 2, 512, 256, 1],
            table_rows,
        }
    }
}

/// How to train.
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    /// Passes over the training split.
    pub epochs: usize,
    /// Samples per step.
    pub batch: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Seed of the sample order.
    pub seed: u64,
}

/// What training did.
#[derive(Debug, Clone, Copy)]
pub struct TrainReport {
    /// Optimizer steps.
    pub steps: usize,
    /// Mean loss of the first and the last 10% of steps.
    pub first_loss: f64,
    /// See `first_loss`.
    pub last_loss: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// A DLRM: the weights are candle `Var`s, so the model trains.
pub struct Dlrm {
    bottom: Vec<(Var, Var)>,
    top: Vec<(Var, Var)>,
    tables: Vec<Var>,
    /// Indices of the strictly lower triangle of the `F × F` interaction matrix, flattened.
    tri: CTensor,
    spec: Spec,
}

fn seeded(shape: (usize, usize), f: impl FnMut() -> f32, dev: &Device) -> Result<Var> {
    let v: Vec<f32> = std::iter::repeat_with(f).take(shape.0 * shape.1).collect();
    Ok(Var::from_tensor(&CTensor::from_vec(v, shape, dev)?)?)
}

fn mlp(sizes: &[usize], rng: &mut Rng, dev: &Device) -> Result<Vec<(Var, Var)>> {
    sizes
        .windows(2)
        .map(|w| {
            let (m, n) = (w[0], w[1]);
            // DLRM's init: W ~ N(0, 2/(m+n)), b ~ N(0, 1/n).
            let sw = (2.0 / (m + n) as f64).sqrt();
            let sb = (1.0 / n as f64).sqrt();
            let wv = seeded((n, m), || (rng.normal() * sw) as f32, dev)?;
            let bv = seeded((1, n), || (rng.normal() * sb) as f32, dev)?;
            Ok((wv, bv))
        })
        .collect()
}

fn linear(l: &(Var, Var)) -> Result<Linear> {
    Ok(Linear::new(
        l.0.as_tensor().clone(),
        Some(l.1.as_tensor().flatten_all()?),
    ))
}

fn to_tensor(v: &CTensor) -> Result<Tensor> {
    let dims = v.dims().to_vec();
    Ok(Tensor::from_vec(v.flatten_all()?.to_vec1::<f32>()?, dims)?)
}

impl Dlrm {
    /// A freshly initialized model (DLRM's init; tables uniform in `±sqrt(1/rows)`), seeded.
    pub fn new(spec: Spec, seed: u64) -> Result<Self> {
        let dev = Device::Cpu;
        let mut rng = Rng::new(seed);
        let bottom = mlp(&spec.bottom, &mut rng, &dev)?;
        let top = mlp(&spec.top, &mut rng, &dev)?;
        let tables = spec
            .table_rows
            .iter()
            .map(|&n| {
                let a = (1.0 / n as f64).sqrt();
                seeded((n, DIM), || ((2.0 * rng.uniform() - 1.0) * a) as f32, &dev)
            })
            .collect::<Result<Vec<_>>>()?;
        let f = spec.table_rows.len() + 1;
        let tri: Vec<u32> = (0..f)
            .flat_map(|i| (0..i).map(move |j| (i * f + j) as u32))
            .collect();
        let tri = CTensor::from_vec(tri.clone(), tri.len(), &dev)?;
        Ok(Dlrm {
            bottom,
            top,
            tables,
            tri,
            spec,
        })
    }

    /// The layer sizes.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The bottom MLP (ReLU after every layer, as DLRM's `sigmoid_bot=-1`).
    pub fn bottom(&self, dense: &CTensor) -> Result<CTensor> {
        let mut x = dense.clone();
        for l in &self.bottom {
            x = linear(l)?.forward(&x)?.relu()?;
        }
        Ok(x)
    }

    /// Logits from the bottom output `x` (`[B, 16]`) and one `[B, 16]` embedding per table:
    /// dot interaction without self-interaction, then the top MLP (ReLU between layers).
    pub fn top(&self, x: &CTensor, embs: &[CTensor]) -> Result<CTensor> {
        let b = x.dims()[0];
        let f = embs.len() + 1;
        let mut feats = Vec::with_capacity(f);
        feats.push(x.unsqueeze(1)?);
        for e in embs {
            feats.push(e.unsqueeze(1)?);
        }
        let t = CTensor::cat(&feats, 1)?; // [B, F, d]
        let z = t.matmul(&t.t()?.contiguous()?)?.reshape((b, f * f))?;
        let zflat = z.index_select(&self.tri, 1)?;
        let mut h = CTensor::cat(&[x, &zflat], 1)?;
        let last = self.top.len() - 1;
        for (k, l) in self.top.iter().enumerate() {
            h = linear(l)?.forward(&h)?;
            if k != last {
                h = h.relu()?;
            }
        }
        Ok(h.squeeze(1)?)
    }

    /// Logits of a batch looked up in the model's own tables (differentiable: training uses it).
    fn logits(&self, dense: &CTensor, ids: &[CTensor]) -> Result<CTensor> {
        let embs = self
            .tables
            .iter()
            .zip(ids)
            .map(|(w, i)| Ok(w.as_tensor().index_select(i, 0)?))
            .collect::<Result<Vec<_>>>()?;
        self.top(&self.bottom(dense)?, &embs)
    }

    /// Trains with Adam (no weight decay) on BCE-with-logits, one tick of `bar` per step.
    pub fn train(
        &self,
        split: &Split,
        opts: TrainOptions,
        bar: &ProgressBar,
    ) -> Result<TrainReport> {
        let t0 = std::time::Instant::now();
        let vars: Vec<Var> = self
            .bottom
            .iter()
            .chain(&self.top)
            .flat_map(|(w, b)| [w.clone(), b.clone()])
            .chain(self.tables.iter().cloned())
            .collect();
        let params = ParamsAdamW {
            lr: opts.lr,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut opt = candle_nn::AdamW::new(vars, params)?;
        let mut rng = Rng::new(opts.seed);
        let mut order: Vec<usize> = (0..split.len()).collect();
        let n_dense = self.spec.bottom[0];
        let mut losses = Vec::new();
        for _ in 0..opts.epochs {
            for k in (1..order.len()).rev() {
                order.swap(k, rng.below(k as u64 + 1) as usize);
            }
            for idx in order.chunks(opts.batch.max(1)) {
                let (dense, ids, labels) = gather(split, idx, n_dense)?;
                let logits = self.logits(&dense, &ids)?;
                let loss = candle_nn::loss::binary_cross_entropy_with_logit(&logits, &labels)?;
                opt.backward_step(&loss)?;
                losses.push(loss.to_scalar::<f32>()? as f64);
                bar.inc(1);
            }
        }
        let tenth = (losses.len() / 10).max(1);
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
        Ok(TrainReport {
            steps: losses.len(),
            first_loss: mean(&losses[..tenth.min(losses.len())]),
            last_loss: mean(&losses[losses.len().saturating_sub(tenth)..]),
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// The trained tables, as the sparsifier's tensors (`[rows, 16]` f32), in table order.
    pub fn tables(&self) -> Result<Vec<Tensor>> {
        self.tables
            .iter()
            .map(|v| to_tensor(v.as_tensor()))
            .collect()
    }

    /// The MLP weights and biases under DLRM's state-dict names (`bot_l.0.weight`, …).
    pub fn mlp_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (prefix, layers) in [("bot_l", &self.bottom), ("top_l", &self.top)] {
            for (k, (w, b)) in layers.iter().enumerate() {
                out.push((
                    format!("{prefix}.{}.weight", 2 * k),
                    to_tensor(w.as_tensor())?,
                ));
                out.push((
                    format!("{prefix}.{}.bias", 2 * k),
                    to_tensor(&b.as_tensor().flatten_all()?)?,
                ));
            }
        }
        Ok(out)
    }
}

/// A batch of samples `idx`: dense `[B, n_dense]`, one `[B]` u32 id tensor per table, labels `[B]`.
pub fn gather(
    split: &Split,
    idx: &[usize],
    n_dense: usize,
) -> Result<(CTensor, Vec<CTensor>, CTensor)> {
    let dev = Device::Cpu;
    let mut dense = Vec::with_capacity(idx.len() * n_dense);
    for &s in idx {
        dense.extend_from_slice(&split.dense[s * n_dense..(s + 1) * n_dense]);
    }
    let dense = CTensor::from_vec(dense, (idx.len(), n_dense), &dev)?;
    let ids = split
        .ids
        .iter()
        .map(|t| {
            let v: Vec<u32> = idx.iter().map(|&s| t[s]).collect();
            Ok(CTensor::from_vec(v, idx.len(), &dev)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let labels: Vec<f32> = idx.iter().map(|&s| split.labels[s]).collect();
    let labels = CTensor::from_vec(labels, idx.len(), &dev)?;
    Ok((dense, ids, labels))
}
