//! The OneFormer training-step case of `segkit bench` (`train_oneformer_swin_t`, issue 15):
//! one step of segkit-train's `OneFormerTask` as the trainer runs it — targets, forward pass
//! with the text mapper and every loss (`losses`), backward, gradient clipping and AdamW with
//! OneFormer's parameter groups — next to transformers' `OneFormerForUniversalSegmentation`
//! (`tests/parity/bench_torch_train.py`, same case name).
//!
//! Model: the `oneformer_ade20k_swin_tiny` architecture (Swin-T, 150 queries, 150 classes,
//! 6 pixel-decoder encoder layers, 10 decoder layers = 9 auxiliary layers, text mapper width
//! 256 with 6 layers, 16 context embeddings, 134 text entries per image), class names
//! `class_{i}` and classes 10..149 things (transformers' side reads the same through its
//! `class_info_file`), dropout and drop path 0 on both sides, synthetic weights for every
//! variable (tests/parity/synth.py's values). Task: panoptic for every image (both sides).
//!
//! Batch: `--batch` images of `--size` x `--size` (`synthetic_input("input")`), each with the
//! panoptic segments of [`segments`]: two stuff bands (classes 0 and 1) and three thing
//! rectangles drawn over them.
//!
//! Optimizer: AdamW (lr 1e-4, weight decay 0.05, betas (0.9, 0.999), eps 1e-8) with
//! OneFormer's groups ([`segkit::train::oneformer::param_group`]: backbone lr x 0.1, no decay
//! for norms, embeddings and Swin's position tables), after clipping all gradients together
//! at L2 norm 0.01 (`TrainModel::clip_grad`), the learning rate of step 1 of the trainer (no
//! schedule: the step's work does not depend on it).
//!
//! Phases and peaks as the other training cases (`bench/train.rs`): `fwd` = targets, forward
//! and losses, `bwd` = backward and the gradients collected, `opt` = clipping and AdamW.
//! `first_loss` (the first step's total, before any update) checks that both sides train the
//! same model on the same targets: it differs only by the point draws (transformers'
//! `torch.rand` is not seeded here), 175.857 (segkit) vs 175.79-175.84 at 1x3x128x128.
//!
//! Memory: transformers' text mapper encodes 134 x 77 tokens per image whatever the crop
//! (~1.5 GB of its graph); segkit's encodes each distinct entry once (at most 6 of the 134
//! here: the five segments' entries and the padding). At batch 1 and 128 x 128 segkit
//! peaks at ~2.4 GB, PyTorch at ~3.6 GB. Run this case with `--size 128 --batch 1` on a
//! shared 24 GB machine (the defaults of the other training cases, 512 and batch 2, need well
//! over 12 GB on PyTorch's side).

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use segkit::data::InstanceAnnotation;
use segkit::models::oneformer::OneFormerBackboneConfig;
use segkit::train::config::OptimizerConfig;
use segkit::train::data::Batch;
use segkit::train::oneformer::{OneFormerSpec, OneFormerTask};
use segkit::train::{Optimizer, TrainModel};
use segkit::OneFormerConfig;
use segkit_core::testing::{synthetic_input, synthetic_tensor};

use super::status_mb;
use super::train::{mark, ms, print_report, Phases};
use crate::CliError;

/// The case's name and description.
pub const CASE: (&str, &str) = (
    "train_oneformer_swin_t",
    "OneFormer Swin-T (ADE20K architecture) AdamW training step, panoptic task, --batch x 3 x --size x --size",
);

/// AdamW's learning rate (OneFormer's `SOLVER.BASE_LR`).
const LR: f64 = 1e-4;

fn usage(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

/// The panoptic segments `(class, mask)` of image `i` of a batch at `s` x `s`: an id map
/// with stuff band 1 (class 0) on rows `< 3s/8 + i s/16`, stuff band 2 (class 1) below, then
/// things `k = 0, 1, 2` (classes 10, 11, 12 on even images, 10, 10, 11 on odd ones) as the
/// squares `[s/8 + k s/4 + i s/32, + s/5) x [s/16 + k s/4 + i s/16, + s/5)` (clipped to the
/// image), each drawn over what came before. tests/parity/bench_torch_train.py draws the same.
pub fn segments(i: usize, s: usize) -> Vec<(u32, Vec<bool>)> {
    let mut ids = vec![0u8; s * s];
    let band = 3 * s / 8 + i * s / 16;
    for (p, id) in ids.iter_mut().enumerate() {
        *id = if p / s < band { 1 } else { 2 };
    }
    let mut classes = vec![0u32, 1];
    let things: [u32; 3] = if i.is_multiple_of(2) {
        [10, 11, 12]
    } else {
        [10, 10, 11]
    };
    for (k, &c) in things.iter().enumerate() {
        let (y0, x0, side) = (
            s / 8 + k * s / 4 + i * s / 32,
            s / 16 + k * s / 4 + i * s / 16,
            s / 5,
        );
        for y in y0..(y0 + side).min(s) {
            for x in x0..(x0 + side).min(s) {
                ids[y * s + x] = 3 + k as u8;
            }
        }
        classes.push(c);
    }
    classes
        .into_iter()
        .enumerate()
        .map(|(j, c)| (c, ids.iter().map(|&v| v as usize == j + 1).collect()))
        .filter(|(_, m): &(u32, Vec<bool>)| m.iter().any(|&b| b))
        .collect()
}

/// The model spec: the Swin-T ADE20K architecture, dropout and drop path 0, classes
/// `class_{i}`, things 10..149, panoptic task only.
fn spec() -> OneFormerSpec {
    let mut cfg = OneFormerConfig::ade20k_swin_tiny();
    cfg.decoder.dropout = 0.0;
    cfg.pixel_decoder.dropout = 0.0;
    if let OneFormerBackboneConfig::Swin(s) = &mut cfg.backbone {
        s.drop_path_rate = 0.0;
    }
    let k = cfg.labels.len();
    cfg.labels = (0..k).map(|i| format!("class_{i}")).collect();
    let mut spec = OneFormerSpec::new(cfg);
    spec.tasks = vec!["panoptic".into()];
    spec.thing_classes = Some((10..k).collect());
    spec
}

/// Everything one step needs, built once.
struct Step {
    task: OneFormerTask,
    params: BTreeMap<String, Var>,
    opt: Optimizer,
    batch: Batch,
    rng: u64,
}

fn build(size: usize, batch: usize) -> Result<Step, CliError> {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let task = OneFormerTask::new(spec(), VarBuilder::from_varmap(&varmap, DType::F32, &dev))
        .map_err(usage)?;
    let params: BTreeMap<String, Var> = varmap
        .data()
        .lock()
        .map_err(|_| usage("poisoned VarMap lock"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Synthetic weights (the values tests/parity/synth.py gives transformers' checkpoint).
    for (k, v) in &params {
        v.set(&synthetic_tensor(k, v.shape(), DType::F32, &dev)?)?;
    }
    let groups = params
        .keys()
        .map(|k| (k.clone(), task.param_group(k)))
        .collect();
    let opt = Optimizer::new(&OptimizerConfig::AdamW {
        lr: LR,
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.05,
        // OneFormer decays biases; norms and embeddings get decay_mult 0 from the groups.
        decay_norm_and_bias: true,
    })
    .with_groups(groups);
    let images = synthetic_input("input", (batch, 3, size, size), &dev)?;
    let mut labels = vec![255u32; batch * size * size];
    let mut instances = Vec::with_capacity(batch);
    for i in 0..batch {
        let segs = segments(i, size);
        for (c, m) in &segs {
            for (p, _) in m.iter().enumerate().filter(|(_, &b)| b) {
                labels[i * size * size + p] = *c;
            }
        }
        instances.push(
            segs.into_iter()
                .map(|(class_id, mask)| InstanceAnnotation {
                    class_id,
                    mask,
                    iscrowd: false,
                })
                .collect(),
        );
    }
    let labels = Tensor::from_vec(labels, (batch, size, size), &dev)?;
    Ok(Step {
        task,
        params,
        opt,
        batch: Batch {
            images,
            labels,
            instances,
        },
        rng: 0,
    })
}

/// One step, phase by phase, as `Trainer::step` runs it (accumulate 1).
fn step(s: &mut Step) -> Result<Phases, CliError> {
    let mut p = Phases::default();
    let t = mark();
    let losses = s.task.losses(&s.batch, 255, &mut s.rng).map_err(usage)?;
    let loss = losses.total;
    drop(losses.items);
    p.loss = f64::from(loss.to_scalar::<f32>()?);
    p.fwd_ms = ms(t);
    p.fwd_mb = status_mb("VmHWM:");
    if std::env::var_os("SEGKIT_BENCH_GRAPH").is_some() {
        super::train::graph_census(&loss);
    }
    let t = mark();
    let g = loss.backward()?;
    let mut grads: HashMap<String, Tensor> = s
        .params
        .iter()
        .filter_map(|(n, v)| g.get(v.as_tensor()).map(|t| (n.clone(), t.clone())))
        .collect();
    drop(g);
    drop(loss);
    p.bwd_ms = ms(t);
    p.bwd_mb = status_mb("VmHWM:");
    let t = mark();
    if let Some(c) = s.task.clip_grad() {
        segkit::train::optim::clip_grad_norm(&mut grads, &c).map_err(usage)?;
    }
    s.opt.step(&s.params, &grads, LR).map_err(usage)?;
    drop(grads);
    p.opt_ms = ms(t);
    p.opt_mb = status_mb("VmHWM:");
    Ok(p)
}

/// Runs the case and prints its JSON line (the fields of the other training cases, plus
/// `first_loss`: the total loss of the first step, before any update).
pub fn run(
    size: usize,
    batch: usize,
    runs: usize,
    warmup: usize,
    pool: &str,
) -> Result<(), CliError> {
    let case = CASE.0;
    let mut s = build(size, batch)?;
    let rss_before = status_mb("VmRSS:");
    let mut first_loss = f64::NAN;
    // As `Trainer::step` runs a step: on a worker of rayon's pool.
    let one = |s: &mut Step| segkit_core::runtime::on_pool(|| step(s));
    for _ in 0..warmup {
        let p = one(&mut s)?;
        if first_loss.is_nan() {
            first_loss = p.loss;
        }
    }
    let mut all = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let p = one(&mut s)?;
        if first_loss.is_nan() {
            first_loss = p.loss;
        }
        all.push(p);
    }
    let extra = format!(", \"first_loss\": {first_loss:.4}");
    print_report(case, [batch, size, size], &all, rss_before, pool, &extra);
    Ok(())
}
