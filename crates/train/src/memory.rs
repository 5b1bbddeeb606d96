//! The training memory estimate: a run whose sizes cannot fit is refused before its first
//! batch is allocated, with an error naming the config file, the field that sets the size,
//! the estimate and the limit.
//!
//! # The estimate
//!
//! `bytes = SAFETY * (params * 4 * (STATE_COPIES + optimizer_states)
//!                    + batch_size * H * W * activation_bytes_per_pixel(model))`
//!
//! - `H x W` is an upper bound of a collated training batch's size: the training images' size
//!   (the first training image's stands for the dataset's) carried through the pipeline —
//!   a `Resize` / `RandomResize` sets it (its largest ratio; with `keep_ratio` both sides may
//!   reach the long edge), `RandomCrop` caps it, `Pad` raises it — then raised to the data
//!   preprocessor's `size`;
//! - `activation_bytes_per_pixel` is the slope of the peak resident memory of training steps
//!   over the input's pixels (backbone + class maps), measured once per model family by
//!   `crates/train/tests/memory_calibration.rs` (see [`activation_bytes_per_pixel`] for the
//!   numbers) — it holds the forward activations that autograd keeps, the backward pass's
//!   gradients of them, and the kernels' scratch;
//! - `params * 4 * (STATE_COPIES + optimizer_states)`: the weights, their gradients and
//!   the copies the step and the evaluation model make, plus the optimizer's buffers
//!   (SGD's momentum: 1; AdamW's two moments: 2);
//! - `SAFETY` (1.25) covers the allocator's fragmentation and what the calibration missed.
//!
//! The limit is [`segkit_models::encoder_decoder::inference::memory_limit`]: the
//! `SEGKIT_MEMORY_LIMIT` environment variable (`24G`, `512M`, bytes; `off` disables the
//! check), else the kernel's `MemAvailable` (lowered to a cgroup's headroom).

use std::path::Path;

use segkit_data::augment::Transform;
use segkit_models::encoder_decoder::inference::{fmt_bytes, memory_limit};
use segkit_models::{BackboneConfig, HeadConfig, NeckConfig, SegmentorConfig};

use crate::config::{OptimizerConfig, TrainConfig};
use crate::{TrainError, TrainResult};

/// Headroom multiplied into the whole estimate.
pub const SAFETY: f64 = 1.25;

/// Copies of the parameters besides the optimizer's buffers: the weights, their gradients,
/// the summed gradients and the evaluation model's copy.
pub const STATE_COPIES: u64 = 4;

/// The largest size `(h, w)` a training sample can have after `pipeline`, for images of
/// `native` size, and the field that set it (`"the training images"` when no transform
/// changes it).
pub fn pipeline_size_bound(
    pipeline: &[Transform],
    native: (usize, usize),
) -> ((usize, usize), String) {
    let (mut h, mut w) = native;
    let mut field = "the training images' size".to_string();
    let mul = |v: usize, r: f64| ((v as f64) * r.max(0.0)).ceil().min(usize::MAX as f64) as usize;
    for (i, t) in pipeline.iter().enumerate() {
        match t {
            Transform::RandomResize {
                scale,
                ratio_range,
                keep_ratio,
            } => {
                let r = ratio_range[0].max(ratio_range[1]);
                (h, w) = resized(*scale, r, *keep_ratio, mul);
                field = format!("pipeline[{i}] RandomResize scale {scale:?} x ratio {r}");
            }
            Transform::Resize { scale, keep_ratio } => {
                (h, w) = resized(*scale, 1.0, *keep_ratio, mul);
                field = format!("pipeline[{i}] Resize scale {scale:?}");
            }
            Transform::RandomCrop { crop_size, .. } if crop_size[0] < h || crop_size[1] < w => {
                (h, w) = (h.min(crop_size[0]), w.min(crop_size[1]));
                field = format!("pipeline[{i}] RandomCrop crop_size {crop_size:?}");
            }
            Transform::Pad {
                size,
                size_divisor,
                pad_to_square,
                ..
            } => {
                if let Some([pw, ph]) = size {
                    (h, w) = (h.max(*ph), w.max(*pw));
                }
                if *pad_to_square {
                    (h, w) = (h.max(w), h.max(w));
                }
                if let Some(d) = size_divisor.filter(|d| *d > 0) {
                    (h, w) = (
                        h.div_ceil(d).saturating_mul(d),
                        w.div_ceil(d).saturating_mul(d),
                    );
                }
                field = format!("pipeline[{i}] Pad");
            }
            _ => {}
        }
    }
    ((h, w), field)
}

fn resized(
    scale: [usize; 2],
    r: f64,
    keep_ratio: bool,
    mul: impl Fn(usize, f64) -> usize,
) -> (usize, usize) {
    if keep_ratio {
        // The long side reaches at most max(scale); either side may be the long one.
        let long = mul(scale[0].max(scale[1]), r);
        (long, long)
    } else {
        (mul(scale[1], r), mul(scale[0], r))
    }
}

/// Peak memory of a training step per input pixel of one sample (bytes): a backbone / neck
/// figure (scaled by the ResNet's width, `base_channels / 64`), `DA_HEAD_BYTES` for DANet's
/// attention head, plus `CLASS_MAP_BYTES` per class per class-map output (DANet has three
/// decode outputs, every other head one, the auxiliary head one more). The class maps are
/// small since the losses score the heads' low-resolution logits without resizing them
/// (`CrossEntropyLoss::forward_resized`); before that they were 40 bytes per class and output.
///
/// Measured with `tests/memory_calibration.rs` (CPU, f32, SGD, batch 2, square inputs; the
/// peak `VmHWM` of two steps; KiB per sample pixel, the slope between 192 and 320 pixels;
/// 2026-12-06, after the resized cross-entropy and the Winograd limit of 4096 x 512):
///
/// | preset (classes)                      | slope 192->320 | peak KiB at 192 |
/// |---------------------------------------|----------------|-----------------|
/// | segkit demo r18 width 16 (11)         | 0.53           | 80548           |
/// | pspnet r50-d8 ADE20K (150)            | 5.46           | 1255740         |
/// | pspnet r50-d8 Cityscapes (19)         | 5.20           | 1259780         |
/// | pspnet r101-d8 ADE20K                 | 9.30           | 1646720         |
/// | danet r50-d8 ADE20K                   | 6.26           | 1169584         |
/// | danet r50-d8 Cityscapes               | 6.09           | 1141956         |
/// | danet r101-d8 ADE20K                  | 9.55           | 1602820         |
/// | fastfcn r50-d32 JPU + PSP ADE20K      | 5.12           | 1366568         |
/// | fastfcn r50-d32 JPU + ASPP ADE20K     | 4.82           | 1533780         |
/// | fastfcn r50-d32 JPU + Enc ADE20K      | 4.56           | 1129052         |
///
/// (The peak includes the parameters' share, which the estimate counts separately; the
/// constants below sit above every slope.) A backbone outside the table (Swin) takes
/// `UNKNOWN_BACKBONE`.
pub fn activation_bytes_per_pixel(cfg: &SegmentorConfig) -> u64 {
    let jpu = matches!(cfg.neck, Some(NeckConfig::Jpu(_)));
    let backbone = match &cfg.backbone {
        BackboneConfig::ResNet(r) => {
            let dilated = r.strides.iter().filter(|&&s| s == 1).count() >= 2;
            let base = match (r.depth, dilated && !jpu) {
                (d, _) if d <= 18 => R18,
                (d, _) if d <= 34 => R34,
                (d, true) if d <= 50 => R50_D8,
                (d, false) if d <= 50 => R50_D32_JPU,
                (_, true) => R101_D8,
                (_, false) => R101_D8 * R50_D32_JPU / R50_D8,
            };
            base.saturating_mul(r.base_channels as u64) / 64
        }
        #[allow(unreachable_patterns)]
        _ => UNKNOWN_BACKBONE,
    };
    let (maps, head) = match &cfg.decode_head {
        HeadConfig::Da(_) => (3, DA_HEAD_BYTES),
        _ => (1, 0),
    };
    let maps = maps + u64::from(cfg.auxiliary_head.is_some());
    backbone + head + CLASS_MAP_BYTES * maps * cfg.num_classes() as u64
}

/// ResNet-18 at width 64 (the demo model, width 16, measures a quarter of it).
const R18: u64 = 3_200;
/// ResNet-34: R18 scaled by the blocks at each stride.
const R34: u64 = 5_200;
/// ResNet-50 with dilated stages 3 and 4 (output stride 8) and PSPNet's head.
const R50_D8: u64 = 5_600;
/// ResNet-50 at output stride 32 with FastFCN's JPU.
const R50_D32_JPU: u64 = 5_000;
/// ResNet-101 at output stride 8.
const R101_D8: u64 = 9_600;
/// DANet's position and channel attention head, over the backbone's figure.
const DA_HEAD_BYTES: u64 = 800;
/// Per class and class-map output.
const CLASS_MAP_BYTES: u64 = 2;
/// Any other backbone: above every measured figure.
const UNKNOWN_BACKBONE: u64 = 60_000;

/// The estimate of a training run's peak memory (bytes) with `params` parameters (see the
/// module docs), and the batch size `(h, w)` it assumes.
pub fn training_bytes(
    cfg: &TrainConfig,
    model: &SegmentorConfig,
    params: u64,
    batch_hw: (usize, usize),
) -> u64 {
    estimate_bytes(cfg, activation_bytes_per_pixel(model), params, batch_hw)
}

/// [`training_bytes`] with the model's activation figure given (`bytes_per_pixel`).
pub fn estimate_bytes(
    cfg: &TrainConfig,
    bytes_per_pixel: u64,
    params: u64,
    batch_hw: (usize, usize),
) -> u64 {
    let states = match cfg.optimizer {
        OptimizerConfig::Sgd { .. } => 1,
        OptimizerConfig::AdamW { .. } => 2,
    };
    let fixed = params.saturating_mul(4 * (STATE_COPIES + states)) as f64;
    let pixels = (cfg.batch_size as f64) * (batch_hw.0 as f64) * (batch_hw.1 as f64);
    let act = pixels * bytes_per_pixel as f64;
    (SAFETY * (fixed + act)).min(u64::MAX as f64) as u64
}

/// Refuses a run whose estimate exceeds the memory limit: a [`TrainError::TooLarge`] naming
/// `path` (the config file), the batch size and the field that sets the sample size.
pub fn check_training_memory(
    cfg: &TrainConfig,
    model: &SegmentorConfig,
    params: u64,
    native: (usize, usize),
    path: &Path,
) -> TrainResult<()> {
    check_training_memory_of(
        cfg,
        activation_bytes_per_pixel(model),
        model.data_preprocessor.size,
        params,
        native,
        path,
    )
}

/// [`check_training_memory`] for any model: `bytes_per_pixel` its
/// [`crate::task::TrainModel::activation_bytes_per_pixel`], `pad_size` the size its batches
/// are padded to (`(h, w)`).
pub fn check_training_memory_of(
    cfg: &TrainConfig,
    bytes_per_pixel: u64,
    pad_size: Option<[usize; 2]>,
    params: u64,
    native: (usize, usize),
    path: &Path,
) -> TrainResult<()> {
    let limit = memory_limit()?;
    let (hw, field) = pipeline_size_bound(&cfg.pipeline, native);
    let (mut h, mut w) = hw;
    let mut field = field;
    if let Some([sh, sw]) = pad_size {
        if sh > h || sw > w {
            field = format!("the model's data_preprocessor.size {:?}", [sh, sw]);
        }
        (h, w) = (h.max(sh), w.max(sw));
    }
    let Some(limit) = limit else {
        return Ok(());
    };
    let est = estimate_bytes(cfg, bytes_per_pixel, params, (h, w));
    if est > limit.bytes {
        return Err(TrainError::TooLarge {
            path: path.to_path_buf(),
            field: format!(
                "batch_size {} x {h} x {w} samples ({field})",
                cfg.batch_size
            ),
            estimate: fmt_bytes(est),
            limit: format!("{} ({})", fmt_bytes(limit.bytes), limit.source),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(json: &str) -> Vec<Transform> {
        serde_json::from_str(json).unwrap()
    }

    /// The estimate stays above every measured peak (`VmHWM`, batch 2, SGD; see
    /// [`activation_bytes_per_pixel`]) and within 2.5 times it.
    #[test]
    fn estimates_cover_the_measured_peaks() {
        // (preset, parameters, input side, measured peak KiB)
        let cases = [
            (
                "segkit_demo_r18w16_psp_fashion-128x128",
                814_190,
                192,
                80_548,
            ),
            ("pspnet_r50-d8_ade20k-512x512", 49_135_244, 192, 1_255_740),
            ("pspnet_r50-d8_ade20k-512x512", 49_135_244, 320, 1_971_300),
            (
                "pspnet_r50-d8_cityscapes-512x1024",
                49_034_374,
                192,
                1_259_780,
            ),
            ("pspnet_r101-d8_ade20k-512x512", 68_179_596, 192, 1_646_720),
            ("danet_r50-d8_ade20k-512x512", 50_139_706, 192, 1_169_584),
            (
                "danet_r50-d8_cityscapes-512x1024",
                49_904_430,
                192,
                1_141_956,
            ),
            ("danet_r101-d8_ade20k-512x512", 69_184_058, 192, 1_602_820),
            (
                "fastfcn_r50-d32_jpu_psp_ade20k-512x512",
                68_890_252,
                192,
                1_366_568,
            ),
            (
                "fastfcn_r50-d32_jpu_aspp_ade20k-512x512",
                88_028_812,
                192,
                1_533_780,
            ),
            (
                "fastfcn_r50-d32_jpu_enc_ade20k-512x512",
                55_870_914,
                192,
                1_129_052,
            ),
        ];
        let cfg = TrainConfig::from_json(
            r#"{"model": {"type": "Preset", "name": "x"}, "dataset": {"type": "Custom",
                "root": "d"}, "optimizer": {"type": "SGD", "lr": 0.01}, "iterations": 1,
                "batch_size": 2, "output_dir": "o"}"#,
        )
        .unwrap();
        for (preset, params, side, peak_kib) in cases {
            let model = crate::resolve_preset(preset).unwrap();
            let est = training_bytes(&cfg, &model, params, (side, side)) as f64;
            let ratio = est / (peak_kib as f64 * 1024.0);
            assert!(
                (1.0..2.5).contains(&ratio),
                "{preset} at {side}: {ratio:.2}"
            );
        }
    }

    #[test]
    fn pipeline_bounds_follow_resize_crop_and_pad() {
        let p = pipeline(
            r#"[{"type": "RandomResize", "scale": [2048, 512], "ratio_range": [0.5, 2.0],
                 "keep_ratio": true},
                {"type": "RandomCrop", "crop_size": [512, 512]},
                {"type": "RandomFlip", "prob": 0.5}]"#,
        );
        let (hw, field) = pipeline_size_bound(&p, (300, 400));
        assert_eq!(hw, (512, 512));
        assert!(field.contains("pipeline[1] RandomCrop"), "{field}");
        let p = pipeline(r#"[{"type": "Resize", "scale": [100000, 50], "keep_ratio": false}]"#);
        assert_eq!(pipeline_size_bound(&p, (30, 40)).0, (50, 100000));
        let p =
            pipeline(r#"[{"type": "Pad", "size": [64, 48]}, {"type": "Pad", "size_divisor": 32}]"#);
        assert_eq!(pipeline_size_bound(&p, (30, 70)).0, (64, 96));
        assert_eq!(pipeline_size_bound(&[], (30, 70)).0, (30, 70));
    }
}
