//! Classification training for [`Classifier`]s (PSSL's ensemble members): mini-batch SGD /
//! AdamW ([`Optimizer`], update for update as PyTorch's) on the cross-entropy of the logits,
//! and top-1 accuracy as the metric.
//!
//! This is the small in-memory loop (epochs over tensors, no checkpoints) that the PSSL demo's
//! ensemble uses; `segkit train` trains classifiers through the [`crate::Trainer`] instead
//! ([`crate::classify_task`]: datasets on disk, pipeline, schedule, checkpoints and resume).
//!
//! The samples are held in memory (`N x 3 x H x W` 0-255 pixels + class ids): the ensemble's
//! images are small (Fashion-MNIST items, 28x28 on textured canvases). Data order is a seeded
//! permutation per epoch; the initial weights are drawn from the seed as the segmentation trainer
//! draws them.
//!
//! # Shapes
//! - `images`: `N x 3 x H x W` f32 in 0..=255; `classes`: `N` ids below `num_classes`.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use segkit_models::classifier::{Classifier, ClassifierConfig};

use crate::{Optimizer, OptimizerConfig, TrainError, TrainResult};

/// How to train a classifier.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassifyConfig {
    /// The optimizer (its `lr` is the base rate of a poly(0.9) decay to 0).
    pub optimizer: OptimizerConfig,
    /// Epochs over the samples.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Seed of the data order and of the thread's random source (dropout). The weights'
    /// initialisation is drawn from the seed (`segkit_core::init::mmseg_value`).
    pub seed: u64,
}

/// A trained classifier: its weights and the training curve.
pub struct Trained {
    /// The model.
    pub model: Classifier,
    /// Its variables (save with `VarMap::save` to a `model.safetensors`).
    pub varmap: VarMap,
    /// Mean training loss per epoch.
    pub epoch_loss: Vec<f64>,
}

fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut s = seed;
    for i in (1..n).rev() {
        let r = segkit_core::random::splitmix64(&mut s);
        idx.swap(i, (r % (i as u64 + 1)) as usize);
    }
    idx
}

fn cross_entropy(logits: &Tensor, targets: &Tensor) -> TrainResult<Tensor> {
    let lsm = candle_nn::ops::log_softmax(logits, 1)?;
    let picked = lsm.gather(&targets.unsqueeze(1)?, 1)?;
    Ok(picked.mean_all()?.neg()?)
}

/// Trains a fresh classifier of `cfg` on `images` / `classes` (initial weights drawn from
/// `tc.seed`, as the segmentation trainer draws them). Each step runs on a worker of rayon's
/// pool ([`segkit_core::runtime::on_pool`]), as the trainer's steps do; the results do not
/// depend on the thread that calls this.
pub fn train_classifier(
    cfg: &ClassifierConfig,
    tc: &ClassifyConfig,
    images: &Tensor,
    classes: &[u32],
    log: &mut dyn FnMut(usize, f64),
) -> TrainResult<Trained> {
    let dev = images.device().clone();
    let n = images.dim(0)?;
    if n != classes.len() || n == 0 || tc.batch_size == 0 {
        return Err(bad(format!(
            "{n} images, {} classes, batch size {}",
            classes.len(),
            tc.batch_size
        )));
    }
    if let Some(c) = classes.iter().find(|c| **c as usize >= cfg.num_classes) {
        return Err(bad(format!("class {c} of {} classes", cfg.num_classes)));
    }
    segkit_core::random::set_thread_state(Some(tc.seed));
    let varmap = VarMap::new();
    let model = Classifier::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    let params: BTreeMap<String, Var> = varmap
        .data()
        .lock()
        .map_err(|_| bad("variable map poisoned".into()))?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Seeded initial weights, as the segmentation trainer draws them.
    for (name, var) in &params {
        var.set(&crate::init::init_value(name, var.dims(), tc.seed, None)?)?;
    }
    let mut opt = Optimizer::new(&tc.optimizer);
    let steps_per_epoch = n.div_ceil(tc.batch_size);
    let total = (tc.epochs * steps_per_epoch).max(1);
    let mut epoch_loss = Vec::with_capacity(tc.epochs);
    let mut step = 0;
    // The dropout stream, seeded above; each step draws from it on the thread it runs on.
    let mut rng = segkit_core::random::thread_state().unwrap_or(tc.seed);
    for epoch in 0..tc.epochs {
        let order = permutation(n, tc.seed.wrapping_add(epoch as u64));
        let mut sum = 0.0;
        for chunk in order.chunks(tc.batch_size) {
            let idx: Vec<u32> = chunk.iter().map(|i| *i as u32).collect();
            let idx = Tensor::new(idx.as_slice(), &dev)?;
            let x = model.normalize(&images.index_select(&idx, 0)?)?;
            let t: Vec<u32> = chunk.iter().map(|i| classes[*i]).collect();
            let t = Tensor::new(t.as_slice(), &dev)?;
            let lr = tc.optimizer.lr() * (1.0 - step as f64 / total as f64).powf(0.9);
            // The step runs on a worker of rayon's pool, as `Trainer::step` runs it
            // (`segkit_core::runtime::on_pool`); the seeded dropout stream goes with it and
            // comes back, so the draws are those of a loop on the caller's thread.
            let loss = segkit_core::runtime::on_pool(|| {
                segkit_core::random::with_thread_state(&mut rng, || -> TrainResult<f32> {
                    let loss = cross_entropy(&model.forward_t(&x, true)?, &t)?;
                    let grads = loss.backward()?;
                    let named: HashMap<String, Tensor> = params
                        .iter()
                        .filter_map(|(k, v)| {
                            grads.get(v.as_tensor()).map(|g| (k.clone(), g.clone()))
                        })
                        .collect();
                    opt.step(&params, &named, lr)?;
                    Ok(loss.to_scalar::<f32>()?)
                })
            });
            sum += loss? as f64;
            step += 1;
        }
        let mean = sum / steps_per_epoch as f64;
        log(epoch, mean);
        epoch_loss.push(mean);
    }
    segkit_core::random::set_thread_state(None);
    Ok(Trained {
        model,
        varmap,
        epoch_loss,
    })
}

/// Top-1 accuracy of `model` on `images` / `classes`, in batches of `batch`.
pub fn accuracy(
    model: &Classifier,
    images: &Tensor,
    classes: &[u32],
    batch: usize,
) -> TrainResult<f64> {
    let n = images.dim(0)?;
    if n == 0 || n != classes.len() {
        return Err(bad(format!("{n} images for {} classes", classes.len())));
    }
    let mut right = 0usize;
    let mut start = 0;
    while start < n {
        let len = batch.max(1).min(n - start);
        let x = model.normalize(&images.narrow(0, start, len)?)?;
        let pred = model.forward_t(&x, false)?.argmax(1)?.to_vec1::<u32>()?;
        right += pred
            .iter()
            .zip(&classes[start..start + len])
            .filter(|(p, c)| p == c)
            .count();
        start += len;
    }
    Ok(right as f64 / n as f64)
}

fn bad(reason: String) -> TrainError {
    segkit_core::Error::InvalidConfig(format!("classification training: {reason}")).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two classes that differ in brightness: a narrow ResNet-18 learns them (100 % for
    /// each of ten seeds when this test was written; the test runs one).
    #[test]
    fn learns_a_separable_task() {
        let dev = Device::Cpu;
        let (n, side) = (32, 32);
        let mut px = Vec::with_capacity(n * 3 * side * side);
        let mut cls = Vec::with_capacity(n);
        for i in 0..n {
            let c = (i % 2) as u32;
            let base = if c == 0 { 40.0 } else { 210.0 };
            for j in 0..3 * side * side {
                px.push(base + ((i * 7 + j * 13) % 31) as f32);
            }
            cls.push(c);
        }
        let images = Tensor::from_vec(px, (n, 3, side, side), &dev).unwrap();
        let cfg = ClassifierConfig::resnet("t", 18, 4, 2);
        let tc = ClassifyConfig {
            optimizer: OptimizerConfig::AdamW {
                lr: 0.002,
                betas: [0.9, 0.999],
                eps: 1e-8,
                weight_decay: 0.01,
                decay_norm_and_bias: false,
            },
            epochs: 16,
            batch_size: 8,
            seed: 1,
        };
        let t = train_classifier(&cfg, &tc, &images, &cls, &mut |_, _| {}).unwrap();
        assert!(
            t.epoch_loss.last().unwrap() < &(0.5 * t.epoch_loss[0]),
            "{:?}",
            t.epoch_loss
        );
        assert_eq!(accuracy(&t.model, &images, &cls, 16).unwrap(), 1.0);
        // Called from a worker of rayon's pool the steps run inline, on that thread: the
        // same losses as from this thread, whose steps hop to a worker and back.
        let tc = ClassifyConfig { epochs: 2, ..tc };
        let here = train_classifier(&cfg, &tc, &images, &cls, &mut |_, _| {}).unwrap();
        let on_worker = segkit_core::runtime::on_pool(|| {
            train_classifier(&cfg, &tc, &images, &cls, &mut |_, _| {}).unwrap()
        });
        assert_eq!(here.epoch_loss, on_worker.epoch_loss);
    }
}
