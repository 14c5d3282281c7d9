//! Usage example 2: sparsifying a trained candle model's embeddings, in place.
//!
//! A candle model (an `EmbeddingBag` of 100 features × 32 dims, then two linear layers to 10
//! classes) is trained on a small synthetic task until its loss falls. Its embedding weight is then
//! added to a `DataNormSparsifier` **without copying**, stepped and squashed: the model's own
//! weight storage now holds the sparse table, and its `forward` uses it. Accuracy is printed
//! before training, after training, and after sparsification.
//!
//! Run: `cargo run -p data-sparsifier --example sparsify_embeddings --features candle`

use candle_core::{DType as CDType, Device, Module, Tensor as CTensor, Var};
use candle_nn::{Linear, Optimizer};
use data_sparsifier::candle::{self as dc, EmbeddingBag};
use data_sparsifier::norm::{DataNormConfig, DataNormSparsifier};
use data_sparsifier::random::{randn, Rng};
use data_sparsifier::{embedding::BagMode, embedding::Bags, DType, Result, SquashOptions};

const FEATURES: usize = 100;
const EMB_DIM: usize = 32;
const HIDDEN: usize = 64;
const CLASSES: usize = 10;
const BAG: usize = 6;

struct Model {
    bag: EmbeddingBag,
    fc1: Linear,
    fc2: Linear,
}

impl Model {
    fn forward(&self, indices: &[i64]) -> Result<CTensor> {
        let e = self
            .bag
            .forward(indices, Bags::Fixed { bag_size: BAG }, None)?;
        let h = self.fc1.forward(&e)?.relu()?;
        Ok(self.fc2.forward(&h)?)
    }
}

/// A seeded N(0, scale²) variable (candle's CPU generator cannot be seeded).
fn var(shape: [usize; 2], scale: f64, seed: u64, dev: &Device) -> Result<Var> {
    let t = dc::to_candle(&randn(shape, DType::F32, seed), dev)?.affine(scale, 0.0)?;
    Ok(Var::from_tensor(&t)?)
}

/// Each sample: a class `c` and a bag of 6 features, 4 of them "about" `c` (feature % 10 == c).
fn dataset(n: usize, rng: &mut Rng) -> (Vec<i64>, Vec<u32>) {
    let mut idx = Vec::with_capacity(n * BAG);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let c = rng.below(CLASSES as u64);
        for j in 0..BAG {
            let f = if j < 4 {
                c + 10 * rng.below(10)
            } else {
                rng.below(FEATURES as u64)
            };
            idx.push(f as i64);
        }
        labels.push(c as u32);
    }
    (idx, labels)
}

fn accuracy(model: &Model, idx: &[i64], labels: &[u32]) -> Result<f64> {
    let pred = model.forward(idx)?.argmax(1)?.to_vec1::<u32>()?;
    let hits = pred.iter().zip(labels).filter(|(p, l)| p == l).count();
    Ok(hits as f64 / labels.len() as f64)
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    let emb_w = var([FEATURES, EMB_DIM], 1.0, 1, &dev)?;
    let w1 = var([HIDDEN, EMB_DIM], (1.0 / EMB_DIM as f64).sqrt(), 2, &dev)?;
    let b1 = Var::zeros(HIDDEN, CDType::F32, &dev)?;
    let w2 = var([CLASSES, HIDDEN], (1.0 / HIDDEN as f64).sqrt(), 3, &dev)?;
    let b2 = Var::zeros(CLASSES, CDType::F32, &dev)?;
    let model = Model {
        bag: EmbeddingBag::new(emb_w.as_tensor().clone(), BagMode::Mean)?,
        fc1: Linear::new(w1.as_tensor().clone(), Some(b1.as_tensor().clone())),
        fc2: Linear::new(w2.as_tensor().clone(), Some(b2.as_tensor().clone())),
    };

    let mut rng = Rng::new(42);
    let (train_idx, train_y) = dataset(2000, &mut rng);
    let (test_idx, test_y) = dataset(500, &mut rng);
    let train_labels = CTensor::new(train_y.as_slice(), &dev)?;

    let acc_untrained = accuracy(&model, &test_idx, &test_y)?;
    println!("accuracy before training: {:.1}%", 100.0 * acc_untrained);

    let vars = vec![emb_w.clone(), w1, b1, w2, b2];
    let mut opt = candle_nn::AdamW::new_lr(vars, 0.01)?;
    let loss_of = |m: &Model| -> Result<CTensor> {
        Ok(candle_nn::loss::cross_entropy(
            &m.forward(&train_idx)?,
            &train_labels,
        )?)
    };
    let first_loss = loss_of(&model)?.to_scalar::<f32>()?;
    let mut loss = first_loss;
    for epoch in 1..=100 {
        let l = loss_of(&model)?;
        opt.backward_step(&l)?;
        loss = l.to_scalar::<f32>()?;
        if epoch % 25 == 0 {
            println!("epoch {epoch:3}: loss {loss:.4}");
        }
    }
    assert!(
        loss < 0.2 * first_loss,
        "the loss must fall: {first_loss} -> {loss}"
    );
    let acc_dense = accuracy(&model, &test_idx, &test_y)?;
    println!(
        "accuracy after training:  {:.1}% (loss {first_loss:.3} -> {loss:.3})",
        100.0 * acc_dense
    );
    assert!(acc_dense > 0.9, "trained accuracy {acc_dense}");

    // Sparsify the embedding table: the sparsifier holds the model's own storage (no copy).
    let config = DataNormConfig {
        sparsity_level: 0.5,
        sparse_block_shape: (1, 4),
        ..Default::default()
    };
    let mut sparsifier = DataNormSparsifier::data_norm(config)?;
    sparsifier.add_data("bag_weight", dc::embedding_bag(&model.bag)?)?;
    sparsifier.step()?;
    let dense_logits = model.forward(&test_idx)?;
    let expected_table = dc::masked(&sparsifier, "bag_weight", &dev)?; // mask · weight, a copy
    sparsifier.squash_mask(None, SquashOptions::default())?;

    // The model's own weight (and the Var the optimizer holds) now is the sparse table...
    let table: Vec<f32> = model.bag.weight().flatten_all()?.to_vec1()?;
    let zeros = table.iter().filter(|&&x| x == 0.0).count();
    println!(
        "embedding table {FEATURES}x{EMB_DIM}: {zeros} of {} weights are zero after squash_mask",
        table.len()
    );
    assert_eq!(zeros, FEATURES * EMB_DIM / 2);
    assert_eq!(table, expected_table.flatten_all()?.to_vec1::<f32>()?);
    assert_eq!(
        emb_w.as_tensor().flatten_all()?.to_vec1::<f32>()?,
        table,
        "the Var sees the squash"
    );

    // ...and its forward uses it: same logits as a model built on the masked copy.
    let reference = Model {
        bag: EmbeddingBag::new(expected_table, BagMode::Mean)?,
        fc1: model.fc1.clone(),
        fc2: model.fc2.clone(),
    };
    let sparse_logits = model.forward(&test_idx)?;
    assert_eq!(
        sparse_logits.flatten_all()?.to_vec1::<f32>()?,
        reference
            .forward(&test_idx)?
            .flatten_all()?
            .to_vec1::<f32>()?
    );
    let changed = (dense_logits - &sparse_logits)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(changed > 0.0);

    let acc_sparse = accuracy(&model, &test_idx, &test_y)?;
    println!(
        "accuracy after sparsifying 50% of the embedding blocks: {:.1}% (dense {:.1}%)",
        100.0 * acc_sparse,
        100.0 * acc_dense
    );
    assert!(acc_sparse > 0.8, "sparse accuracy {acc_sparse}");
    println!("ok");
    Ok(())
}
