//! Gated-SCNN training: the four losses of nv-tlabs/GSCNN's `JointEdgeSegLoss` (segmentation,
//! edge x 20, edge attention, dual task) with the edge ground truth made on the fly from each
//! batch's label map ([`edge_targets`]: `edge_utils.py`'s one-hot + distance transform,
//! radius 2), trained by the main [`crate::Trainer`] ([`GscnnTask`], a
//! [`crate::task::TrainModel`]): checkpoints with exact resume (the Gumbel noise's stream
//! included), periodic evaluation with mIoU and the boundary F-score, the memory guard,
//! `segkit train`.
//!
//! The training config names a Gated-SCNN as `{"type": "Gscnn", "preset": ...}` or
//! `{"type": "Gscnn", "config": {...}}` ([`GscnnSpec`]: overrides of classes and shape
//! stream, the dual-task loss `as_released` or `as_paper`, loss weights, edge radius,
//! boundary tolerances), or as a Gated-SCNN preset name / model file in `Preset` / `File`.
//!
//! [`gscnn_losses`] is the loss step of any Gated-SCNN forward pass; [`train_gscnn_into`]
//! runs a [`GscnnRunConfig`] through the trainer (what `cargo xtask gscnn-demo` runs, with
//! and without the shape stream, to compare mIoU and boundary F-score).
//!
//! Without the shape stream there is no edge output: the loss is the segmentation loss alone
//! (the paper's baseline, a DeepLabV3+-style network trained with the same seg loss).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Tensor};
use segkit_backbones::ResNetConfig;
use segkit_data::edges::EdgeTargetConfig;
use segkit_data::metrics::BoundaryTolerance;
use segkit_heads::gscnn::GscnnHeadConfig;
use segkit_losses::JointEdgeSegLoss;
use segkit_models::gscnn::{GscnnBackbone, GscnnConfig};
use serde::{Deserialize, Serialize};

use crate::config::{DatasetConfig, ModelSpec, OptimizerConfig, ScheduleConfig, TrainConfig};
use crate::losses::NamedLosses;
use crate::TrainResult;

mod spec;
mod task;
#[cfg(test)]
mod tests;

pub use spec::{GscnnSpec, GscnnTraining, DEMO_PRESET, OFFICIAL_BOUNDARY_TOLERANCES};
pub use task::{activation_bytes_per_pixel, boundary_key, GscnnTask};

/// The binary edge targets (`N x 1 x H x W` f32, 1 on edges) of a label batch (`N x H x W`,
/// u8 / u32 / i64): [`segkit_data::edges::edge_target`] per image.
pub fn edge_targets(labels: &Tensor, cfg: &EdgeTargetConfig) -> TrainResult<Tensor> {
    let (n, h, w) = labels.dims3()?;
    let v: Vec<u32> = labels
        .to_dtype(DType::U32)?
        .flatten_all()?
        .to_vec1::<u32>()?;
    let mut out = Vec::with_capacity(n * h * w);
    for img in v.chunks(h * w) {
        out.extend(cfg.edges(img, h, w)?.into_iter().map(f32::from));
    }
    Ok(Tensor::from_vec(out, (n, 1, h, w), labels.device())?)
}

/// The Gated-SCNN losses of one forward pass, named as the official `losses` dict: with an
/// edge map, `seg_loss`, `edge_loss` (x `20 * edge_weight`), `att_loss` and `dual_loss`
/// ([`JointEdgeSegLoss`]; the edge targets from `labels` by `edge_cfg`, the dual-task loss's
/// Gumbel noise from `uniform`, `N x C x H x W` in `[0, 1)`); without one (no shape stream),
/// `seg_loss` alone.
pub fn gscnn_losses(
    seg: &Tensor,
    edge: Option<&Tensor>,
    labels: &Tensor,
    loss: &JointEdgeSegLoss,
    edge_cfg: &EdgeTargetConfig,
    uniform: Option<&Tensor>,
) -> TrainResult<NamedLosses> {
    let items: Vec<(String, Tensor)> = match edge {
        Some(e) => {
            let et = edge_targets(labels, edge_cfg)?;
            let l = loss.forward(seg, e, labels, &et, uniform)?;
            vec![
                ("seg_loss".into(), l.seg),
                ("edge_loss".into(), l.edge),
                ("att_loss".into(), l.att),
                ("dual_loss".into(), l.dual),
            ]
        }
        None => {
            let ce = segkit_losses::ImageBasedCrossEntropyLoss {
                num_classes: loss.num_classes,
                ignore_index: loss.ignore_index,
                upper_bound: loss.upper_bound,
                norm: false,
                batch_weighting: loss.batch_weighting,
            };
            vec![(
                "seg_loss".into(),
                (ce.forward(seg, labels)? * loss.seg_weight)?,
            )]
        }
    };
    let mut total = items[0].1.clone();
    for (_, t) in &items[1..] {
        total = (total + t)?;
    }
    Ok(NamedLosses { total, items })
}

/// A Gated-SCNN training run (see [`train_gscnn_into`]; [`GscnnRunConfig::train_config`] is
/// its training config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GscnnRunConfig {
    /// A name for the run (logs).
    pub name: String,
    /// The network (a segkit-models Gated-SCNN config; its weights start from the seed).
    pub net: GscnnConfig,
    /// The losses (their `num_classes` is the model's).
    pub loss: JointEdgeSegLoss,
    /// The edge ground truth.
    pub edge_target: EdgeTargetConfig,
    /// The dataset; its classes must number `loss.num_classes`.
    pub dataset: DatasetConfig,
    /// Class names and palette (the `custom` layout takes them from here).
    pub meta: segkit_models::DatasetMeta,
    /// The training transforms.
    pub pipeline: Vec<crate::config::TransformConfig>,
    /// The optimizer.
    pub optimizer: OptimizerConfig,
    /// The learning-rate schedule.
    pub schedule: ScheduleConfig,
    /// Optimizer steps.
    pub iterations: usize,
    /// Images per step (at least 2: BatchNorm).
    pub batch_size: usize,
    /// Seed of initialisation, data order, augmentation, dropout and Gumbel noise.
    pub seed: u64,
    /// Validation images used (`None`: all).
    pub val_limit: Option<usize>,
    /// Boundary F-score tolerances reported.
    pub boundary_tolerances: Vec<BoundaryTolerance>,
}

/// What [`train_gscnn_into`] measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GscnnRunResult {
    /// The run's name.
    pub name: String,
    /// Trainable parameters.
    pub parameters: usize,
    /// Validation images.
    pub val_images: usize,
    /// Pixel accuracy.
    #[serde(rename = "aAcc")]
    pub aacc: f64,
    /// Mean IoU over classes (mmseg `IoUMetric`).
    #[serde(rename = "mIoU")]
    pub miou: f64,
    /// Per-class IoU.
    pub iou: Vec<f64>,
    /// `(tolerance, mean boundary F)` for each configured tolerance.
    pub boundary_f: Vec<(BoundaryTolerance, f64)>,
    /// Mean of each loss over the last 50 iterations, by name.
    pub final_losses: BTreeMap<String, f64>,
    /// Wall-clock seconds of the training loop.
    pub train_seconds: f64,
}

impl GscnnRunConfig {
    /// The training config of this run, writing into `output_dir`: the network, losses, edge
    /// ground truth and tolerances as a `{"type": "Gscnn"}` model; evaluation at the end
    /// only, batches of 8.
    pub fn train_config(&self, output_dir: &Path) -> TrainConfig {
        TrainConfig {
            model: ModelSpec::Gscnn(Box::new(GscnnSpec {
                config: Some(Box::new(self.net.clone())),
                meta: Some(self.meta.clone()),
                loss: Some(self.loss.clone()),
                edge_target: Some(self.edge_target),
                boundary_tolerances: Some(self.boundary_tolerances.clone()),
                ..GscnnSpec::default()
            })),
            dataset: self.dataset.clone(),
            pipeline: self.pipeline.clone(),
            optimizer: self.optimizer.clone(),
            paramwise_cfg: None,
            clip_grad: None,
            schedule: self.schedule.clone(),
            iterations: self.iterations,
            batch_size: self.batch_size,
            accumulate: 1,
            aux_loss_weight: None,
            eval_interval: 0,
            checkpoint_interval: 0,
            log_interval: 10,
            eval_batch_size: Some(8),
            val_limit: self.val_limit,
            seed: self.seed,
            load_from: None,
            pretrained: Vec::new(),
            output_dir: output_dir.to_path_buf(),
            source: None,
        }
    }
}

/// The mean of each named value over the last `n` records.
fn tail_means(history: &[BTreeMap<String, f64>], n: usize) -> BTreeMap<String, f64> {
    let tail = &history[history.len().saturating_sub(n)..];
    let mut out = BTreeMap::new();
    for rec in tail {
        for (k, v) in rec {
            *out.entry(k.clone()).or_insert(0.0) += v / tail.len() as f64;
        }
    }
    out
}

/// Trains a Gated-SCNN as `cfg` says with the [`crate::Trainer`] (its checkpoints, log and
/// final model in `dir`: `model.safetensors` in the official key names and `config.json`
/// the tagged [`segkit_models::ModelConfig`], which `segkit infer --model dir` and
/// [`segkit_models::ModelConfig::load`] reload), and evaluates it on the validation split;
/// `progress` sees each iteration's losses (by name, and `loss`, their total). Returns the
/// result and the weights' path.
pub fn train_gscnn_into(
    cfg: &GscnnRunConfig,
    dir: &Path,
    mut progress: impl FnMut(usize, &BTreeMap<String, f64>),
) -> TrainResult<(GscnnRunResult, PathBuf)> {
    let mut trainer = crate::Trainer::new(cfg.train_config(dir))?.quiet(true);
    let parameters = trainer
        .weights()?
        .iter()
        .filter(|(k, _)| !(k.ends_with(".running_mean") || k.ends_with(".running_var")))
        .map(|(_, t)| t.elem_count())
        .sum();
    let mut history: Vec<BTreeMap<String, f64>> = Vec::new();
    let t0 = Instant::now();
    let mut train_seconds = 0.0;
    let summary = trainer.run_with(|rec| {
        let mut m = rec.losses.clone();
        m.insert("loss".into(), rec.loss);
        progress(rec.iter, &m);
        history.push(m);
        train_seconds = t0.elapsed().as_secs_f64();
    })?;
    let e = &summary.eval;
    let result = GscnnRunResult {
        name: cfg.name.clone(),
        parameters,
        val_images: e.num_images,
        aacc: e.aacc,
        miou: e.miou,
        iou: e.iou.iter().map(|v| v.unwrap_or(f64::NAN)).collect(),
        boundary_f: cfg
            .boundary_tolerances
            .iter()
            .map(|t| {
                (
                    *t,
                    e.extra.get(&boundary_key(t)).copied().unwrap_or(f64::NAN),
                )
            })
            .collect(),
        final_losses: tail_means(&history, 50),
        train_seconds,
    };
    Ok((result, summary.model_path))
}

/// The small Gated-SCNN of the demo comparison for `num_classes` classes, a
/// [`GscnnConfig`] that saves and reloads like the presets: a ResNet-18 regular stream at
/// base width 16 (deep stem of width 8, mmseg V1c layout) dilated to output stride 8, the
/// official shape stream (widths 32 / 16 / 8, three gates), ASPP / decoder at width 32 with
/// rates 4 / 8 / 12 (12 / 24 / 36 would see only padding on a 16 x 16 map), the official Canny
/// input (as released) and ImageNet normalisation.
pub fn demo_net(num_classes: usize, shape_stream: bool) -> TrainResult<GscnnConfig> {
    let regular = ResNetConfig {
        stem: segkit_backbones::Stem::Deep { width: 8 },
        key_style: segkit_backbones::KeyStyle::Mmseg,
        base_channels: 16,
        ..ResNetConfig::mmseg_v1c(18)
    }
    .with_output_stride(8)?;
    Ok(GscnnConfig {
        name: "gscnn_demo_r18-w16".into(),
        backbone: GscnnBackbone::ResNet50D8,
        num_classes,
        shape_stream,
        regular: Some(regular),
        head_config: Some(GscnnHeadConfig {
            aspp_channels: 32,
            aspp_rates: vec![4, 8, 12],
            bot_aspp_channels: 32,
            bot_fine_channels: 16,
            decoder_channels: 32,
            ..GscnnHeadConfig::official(num_classes)
        }),
        meta: segkit_models::DatasetMeta::default(),
        ..GscnnConfig::wrn38_cityscapes()
    })
}

/// A Gated-SCNN config's normalisation on the 0..255 scale (the collated batch's).
pub(crate) fn preprocessor(cfg: &GscnnConfig) -> segkit_models::DataPreprocessorConfig {
    segkit_models::DataPreprocessorConfig {
        mean: cfg.mean.map(|m| m * 255.0),
        std: cfg.std.map(|s| s * 255.0),
        ..Default::default()
    }
}
