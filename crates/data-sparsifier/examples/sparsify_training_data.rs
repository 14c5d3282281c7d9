//! Usage example 3: sparsifying the training data inside a training loop.
//!
//! Each input batch (a candle tensor) is added to the sparsifier under the same name, replacing the
//! previous batch while keeping its config; the sparsifier steps, and the model is fed the
//! sparsified batch. A data scheduler raises the data sparsity level from 0.25 to 0.75 over the
//! first epochs. The caller's batches are never modified (no squash): the sparsifier holds them
//! without copying and hands back `mask · batch` as a new tensor.
//!
//! Run: `cargo run -p data-sparsifier --example sparsify_training_data --features candle`

use candle_core::{DType as CDType, Device, Module, Tensor as CTensor, Var};
use candle_nn::{Linear, Optimizer};
use data_sparsifier::candle as dc;
use data_sparsifier::norm::pruned_block_count;
use data_sparsifier::norm::{DataNormConfig, DataNormSparsifier};
use data_sparsifier::random::Rng;
use data_sparsifier::scheduler::{DataScheduler, LinearSchedule};
use data_sparsifier::Result;

const FEATURES: usize = 32; // 8 blocks of 4
const CLASSES: usize = 4;
const BATCH: usize = 64;
const BATCHES: usize = 8;
const EPOCHS: u64 = 6;
const NAME: &str = "train_data";

/// Class `c` puts a strong signal (+2.5) on features `4c..4c+4`; every feature has N(0, 1) noise.
fn batch(rng: &mut Rng, dev: &Device) -> Result<(CTensor, CTensor)> {
    let mut x = Vec::with_capacity(BATCH * FEATURES);
    let mut y = Vec::with_capacity(BATCH);
    for _ in 0..BATCH {
        let c = rng.below(CLASSES as u64) as usize;
        for f in 0..FEATURES {
            let signal = if f / 4 == c { 2.5 } else { 0.0 };
            x.push((signal + rng.normal()) as f32);
        }
        y.push(c as u32);
    }
    Ok((
        CTensor::from_vec(x, (BATCH, FEATURES), dev)?,
        CTensor::from_vec(y, BATCH, dev)?,
    ))
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    let mut rng = Rng::new(7);
    let data: Vec<(CTensor, CTensor)> = (0..BATCHES)
        .map(|_| batch(&mut rng, &dev))
        .collect::<Result<_>>()?;
    let (test_x, test_y) = batch(&mut rng, &dev)?;

    let w = Var::zeros((CLASSES, FEATURES), CDType::F32, &dev)?;
    let b = Var::zeros(CLASSES, CDType::F32, &dev)?;
    let model = Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
    let mut opt = candle_nn::SGD::new(vec![w, b], 0.1)?;

    // Level 0.25 at first; blocks of 4 features of one sample.
    let mut sparsifier = DataNormSparsifier::data_norm(DataNormConfig {
        sparsity_level: 0.25,
        sparse_block_shape: (1, 4),
        ..Default::default()
    })?;
    // The scheduler needs the entry to exist: register the first batch.
    sparsifier.add_data(NAME, dc::tensor(&data[0].0)?)?;
    let schedule = LinearSchedule {
        start_value: None,
        end_value: 0.75,
        start_epoch: 0,
        num_epochs: 3,
    };
    let mut scheduler =
        DataScheduler::new(&mut sparsifier, DataNormConfig::SPARSITY_LEVEL, schedule)?;

    let mut first_loss = None;
    let mut last_loss = 0.0;
    for epoch in 0..EPOCHS {
        let level = sparsifier.config(NAME)?.sparsity_level;
        let mut epoch_loss = 0.0;
        for (x, y) in &data {
            let original: Vec<f32> = x.flatten_all()?.to_vec1()?;
            // Same name: the batch replaces the previous one, keeping the (scheduled) config.
            sparsifier.add_data(NAME, dc::tensor(x)?)?;
            sparsifier.step()?; // the mask of this batch
            let xs = dc::masked(&sparsifier, NAME, &dev)?;

            // The fed batch is mask · batch, with round(level · blocks) blocks of 4 zeroed.
            let fed: Vec<f32> = xs.flatten_all()?.to_vec1()?;
            let mask = sparsifier.get_mask(NAME)?;
            assert!(fed
                .iter()
                .zip(&original)
                .enumerate()
                .all(|(i, (&f, &o))| f == if mask.get(i) { o } else { 0.0 }));
            let blocks = BATCH * FEATURES / 4;
            assert_eq!(mask.count_zeroed(), 4 * pruned_block_count(level, blocks));
            // ...and the caller's batch is untouched.
            assert_eq!(x.flatten_all()?.to_vec1::<f32>()?, original);

            let loss = candle_nn::loss::cross_entropy(&model.forward(&xs)?, y)?;
            opt.backward_step(&loss)?;
            epoch_loss += loss.to_scalar::<f32>()? / BATCHES as f32;
        }
        let first = *first_loss.get_or_insert(epoch_loss);
        last_loss = epoch_loss;
        println!(
            "epoch {epoch}: data sparsity level {level:.3}, mean loss {epoch_loss:.4} (first epoch {first:.4})"
        );
        // The sparsifier stepped on every batch, so the scheduler does not warn.
        assert!(scheduler.step(&mut sparsifier)?.warning().is_none());
    }
    assert_eq!(sparsifier.config(NAME)?.sparsity_level, 0.75);
    let first = first_loss.unwrap_or(0.0);
    assert!(
        last_loss < 0.5 * first,
        "the loss must fall: {first} -> {last_loss}"
    );

    // Evaluate on sparsified test data (the same level as in training).
    sparsifier.add_data(NAME, dc::tensor(&test_x)?)?;
    sparsifier.step()?;
    let pred = model
        .forward(&dc::masked(&sparsifier, NAME, &dev)?)?
        .argmax(1)?
        .to_vec1::<u32>()?;
    let labels = test_y.to_vec1::<u32>()?;
    let acc = pred.iter().zip(&labels).filter(|(p, l)| p == l).count() as f64 / BATCH as f64;
    println!("test accuracy on 75%-sparse inputs: {:.1}%", 100.0 * acc);
    assert!(acc > 0.9, "accuracy {acc}");
    println!("ok");
    Ok(())
}
