//! The segmentation side: the demo PSPNet-R50 ([`r50_config`]: the demo preset's PSP head
//! and FCN auxiliary head, 11 classes, on a dilated ResNetV1c-50 at a quarter width)
//! pre-trained on PSSL labels with the weighted cross-entropy (1.0 per class, 0.1
//! background), then fine-tuned on the demo canvases, against (a) from scratch and (b) the
//! backbone of a classifier with the same body, under the same fine-tuning budget; every
//! run seeded (initialisation, data order, flips).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use segkit::backbones::{ResNetConfig, Stem};
use segkit::losses::{pssl_class_weight, CrossEntropyLossConfig, LossConfig, OutputLosses};
use segkit::models::encoder_decoder::demo::demo_config;
use segkit::models::{BackboneConfig, SegmentorConfig};
use segkit::train::config::{ModelSpec, ScheduleConfig, WarmupConfig};
use segkit::train::{EvalResult, TrainConfig, TrainError, TrainResult, Trainer};

use crate::demo_data as demo;

/// The weighted cross-entropy of PSSL on the demo's 11 classes (background 0: 0.1, every
/// class 1.0; mean over the non-ignored pixels, as torch's `CrossEntropyLoss(weight)`).
fn pssl_ce(loss_weight: f64) -> LossConfig {
    LossConfig::CrossEntropy(CrossEntropyLossConfig {
        use_sigmoid: false,
        class_weight: Some(pssl_class_weight(11, 0, 0.1)),
        loss_weight,
        loss_name: "loss_ce".into(),
        avg_non_ignore: true,
    })
}

/// Name of the demo PSPNet-R50.
pub const R50_NAME: &str = "segkit_demo_r50v1c_w16_psp_fashion-128x128";

/// The body of the demo PSPNet-R50: mmseg's ResNetV1c-50 (deep stem, dilations 1 / 1 / 2 /
/// 4, output stride 8) at a quarter width: `stem_channels` 16 (deep-stem convs of 8, 8, 16)
/// and `base_channels` 16, so the four stages output 64 / 128 / 256 / 512 channels
/// (bottleneck widths 16 / 32 / 64 / 128, expansion 4).
pub fn r50_body() -> ResNetConfig {
    ResNetConfig {
        stem: Stem::Deep { width: 8 },
        base_channels: 16,
        ..ResNetConfig::mmseg_v1c(50)
    }
}

/// The demo PSPNet-R50: the demo preset (PSP head of 32 channels on C5, FCN auxiliary head
/// of 32 on C4, 11 classes, 128 x 128 input) with [`r50_body`] as its backbone.
pub fn r50_config() -> SegmentorConfig {
    let mut c = demo_config();
    c.name = R50_NAME.into();
    c.backbone = BackboneConfig::ResNet(r50_body());
    c
}

/// The demo PSPNet-R50 for PSSL pre-training: [`r50_config`] without the fixed 128 x 128
/// input (the single-item images are smaller; every weight has the same shape), with the
/// PSSL loss on the decode head (1.0) and the auxiliary head (0.4).
pub fn pssl_model_config() -> SegmentorConfig {
    let mut c = r50_config();
    c.name = "segkit_demo_r50v1c_w16_psp_pssl-pretrain".into();
    c.data_preprocessor.size = None;
    c.losses.decode_head = Some(vec![OutputLosses::new("logits", vec![pssl_ce(1.0)])]);
    c.losses.auxiliary_head = Some(vec![OutputLosses::new("logits", vec![pssl_ce(0.4)])]);
    c
}

/// What one segmentation run records.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SegRun {
    /// Run name (the arm: `pssl_pretrain`, `pssl`, `scratch`, `classifier_backbone`).
    pub name: String,
    /// Seed of the run (initialisation, data order, flips).
    #[serde(default)]
    pub seed: u64,
    /// Initial weights.
    pub init: String,
    /// Iterations (batch 8).
    pub iterations: usize,
    /// Final loss.
    pub final_loss: f64,
    /// Wall-clock seconds (final evaluation included).
    pub seconds: f64,
    /// The final evaluation.
    pub eval: EvalResult,
    /// The final weights.
    pub model_path: PathBuf,
}

fn io(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Runs `cfg` in a fresh output directory (an earlier run's files there are removed).
fn run(name: &str, init: &str, cfg: TrainConfig) -> TrainResult<SegRun> {
    let seed = cfg.seed;
    let out = cfg.output_dir.clone();
    if out.exists() {
        std::fs::remove_dir_all(&out).map_err(|e| io(&out, e))?;
    }
    let t = Instant::now();
    eprintln!(
        "xtask: segmentation run `{name}` seed {seed} ({} iterations, from {init})",
        cfg.iterations
    );
    let mut trainer = Trainer::new(cfg)?.quiet(true);
    let s = trainer.run()?;
    let r = SegRun {
        name: name.into(),
        seed,
        init: init.into(),
        iterations: s.iterations,
        final_loss: s.final_loss,
        seconds: t.elapsed().as_secs_f64(),
        eval: s.eval,
        model_path: s.model_path,
    };
    eprintln!(
        "xtask: `{name}` seed {seed}: mIoU {:.2}, aAcc {:.2} on {} images ({:.0} s)",
        100.0 * r.eval.miou,
        100.0 * r.eval.aacc,
        r.eval.num_images,
        r.seconds
    );
    Ok(r)
}

/// Warm-up of `iterations`: 100 iterations as the demo recipe, at most a tenth of the run.
fn schedule(iterations: usize) -> ScheduleConfig {
    let mut s = demo::demo_train_config(Path::new(""), Path::new(""), iterations).schedule;
    s.warmup = Some(WarmupConfig {
        iters: (iterations / 10).clamp(1, 100),
        start_factor: 0.1,
    });
    s
}

/// PSSL pre-training on the `custom` dataset at `data` (training split: PSSL labels; val
/// split: the held-out images' true labels), `iterations` of batch 8 with the demo recipe's
/// optimizer and flips, seeded by `seed`.
pub fn pretrain(
    data: &Path,
    out: &Path,
    iterations: usize,
    val: usize,
    seed: u64,
) -> TrainResult<SegRun> {
    let mut cfg = demo::demo_train_config(data, out, iterations);
    cfg.seed = seed;
    cfg.model = ModelSpec::Config {
        config: Box::new(pssl_model_config()),
    };
    cfg.schedule = schedule(iterations);
    cfg.aux_loss_weight = None;
    cfg.eval_interval = 0;
    cfg.val_limit = Some(val);
    run("pssl_pretrain", &format!("random (seed {seed})"), cfg)
}

/// The fine-tuning config: the demo recipe on the canvases at `data` with the demo
/// PSPNet-R50, `iterations`, the first `val` validation canvases, initial weights from
/// `load_from`, seed `seed`.
pub fn finetune_config(
    data: &Path,
    out: &Path,
    iterations: usize,
    val: usize,
    load_from: Option<PathBuf>,
    seed: u64,
) -> TrainConfig {
    let mut cfg = demo::demo_train_config(data, out, iterations);
    cfg.model = ModelSpec::Config {
        config: Box::new(r50_config()),
    };
    cfg.seed = seed;
    cfg.schedule = schedule(iterations);
    cfg.eval_interval = 0;
    cfg.val_limit = Some(val);
    cfg.load_from = load_from;
    cfg
}

/// Fine-tunes with seed `seed` from `load_from` (`None`: from scratch).
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    name: &str,
    init: &str,
    data: &Path,
    out: &Path,
    iterations: usize,
    val: usize,
    load_from: Option<PathBuf>,
    seed: u64,
) -> TrainResult<SegRun> {
    run(
        name,
        init,
        finetune_config(data, out, iterations, val, load_from, seed),
    )
}

/// Writes to `path` the demo PSPNet-R50's initial weights (the from-scratch run's of seed
/// `seed`) with
/// every `backbone.*` tensor replaced by the classifier variable of the same name without
/// the prefix (`fc.*` is not used); fails naming a backbone key the classifier lacks or
/// whose shape differs.
pub fn backbone_init(
    data: &Path,
    scratch: &Path,
    classifier: &HashMap<String, Tensor>,
    path: &Path,
    seed: u64,
) -> TrainResult<usize> {
    let cfg = finetune_config(data, scratch, 1, 1, None, seed);
    let weights = Trainer::new(cfg)?.quiet(true).weights()?;
    let mut out = HashMap::new();
    let mut replaced = 0;
    for (k, v) in weights {
        let t = match k.strip_prefix("backbone.") {
            Some(rest) => {
                let c = classifier
                    .get(rest)
                    .ok_or_else(|| io(path, format!("the classifier has no `{rest}` for `{k}`")))?;
                if c.dims() != v.dims() {
                    return Err(io(
                        path,
                        format!("`{k}`: {:?} vs the classifier's {:?}", v.dims(), c.dims()),
                    ));
                }
                replaced += 1;
                c.clone()
            }
            None => v,
        };
        out.insert(k, t);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    candle_core::safetensors::save(&out, path).map_err(|e| io(path, e))?;
    Ok(replaced)
}
