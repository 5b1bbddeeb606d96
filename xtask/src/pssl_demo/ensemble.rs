//! The ensemble: 15 small 10-class classifiers of different backbones (ResNet-18/34/50 at
//! several widths, a ResNet-D, small Swins, and the demo segmentation model's own dilated
//! ResNetV1c-18 backbone), trained on single-item images with
//! `segkit::train::classify::train_classifier`, each with its own seed.

use std::time::Instant;

use candle_core::Tensor;
use rayon::prelude::*;
use segkit::backbones::{ResNetConfig, SwinConfig};
use segkit::models::classifier::{ClassifierBackbone, ClassifierConfig};
use segkit::models::{BackboneConfig, SegmentorConfig};
use segkit::train::classify::{accuracy, train_classifier, ClassifyConfig, Trained};
use segkit::train::{OptimizerConfig, TrainResult};

/// Name of the member whose backbone is the R18 demo preset's (dilated ResNetV1c-18 at
/// width 16; the first recorded run's baseline (b), now one member among 15).
pub const DEMO_BACKBONE_MEMBER: &str = "demo_r18v1c_w16_d8";

/// One ensemble member before training.
#[derive(Debug, Clone)]
pub struct Member {
    /// The classifier.
    pub cfg: ClassifierConfig,
    /// Seed of its initialisation and data order.
    pub seed: u64,
    /// Base learning rate (AdamW).
    pub lr: f64,
}

/// A trained member and its record.
pub struct TrainedMember {
    /// The model, its variables and its loss curve.
    pub trained: Trained,
    /// The record.
    pub record: MemberRecord,
}

/// What the results file records of a member.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MemberRecord {
    /// Name (backbone, depth, width, seed).
    pub name: String,
    /// Seed.
    pub seed: u64,
    /// Parameters (BatchNorm statistics excluded).
    pub parameters: usize,
    /// Top-1 accuracy on the held-out single-item images.
    pub heldout_accuracy: f64,
    /// Mean training loss of the last epoch.
    pub final_loss: f64,
    /// Wall-clock seconds of its training.
    pub train_seconds: f64,
}

/// The demo segmentation model's backbone config (dilated ResNetV1c-18, width 16).
pub fn demo_backbone() -> ResNetConfig {
    let cfg: SegmentorConfig = segkit::models::encoder_decoder::demo::demo_config();
    match cfg.backbone {
        BackboneConfig::ResNet(r) => r,
        _ => unreachable!("the demo model has a ResNet backbone"),
    }
}

fn narrow_resnet(depth: usize, width: usize, avg_down: bool, seed: u64) -> Member {
    let d = if avg_down { "d" } else { "" };
    let mut cfg =
        ClassifierConfig::resnet(&format!("r{depth}{d}_w{width}_s{seed}"), depth, width, 10);
    if let ClassifierBackbone::ResNet(r) = &mut cfg.backbone {
        r.avg_down = avg_down;
    }
    Member {
        cfg,
        seed,
        lr: 3e-3,
    }
}

fn small_swin(embed: usize, heads: [usize; 3], seed: u64, size: usize) -> Member {
    let swin = SwinConfig {
        embed_dim: embed,
        depths: vec![2, 2, 2],
        num_heads: heads.to_vec(),
        window_size: 4,
        image_size: [size, size],
        // No drop path: the members are explained in training mode (see
        // `labels::differentiable_mode`), which must then be the inference function.
        drop_path_rate: 0.0,
        ..SwinConfig::default()
    };
    let name = format!("swin_e{embed}_w4_s{seed}");
    Member {
        cfg: ClassifierConfig::swin(&name, swin, 10),
        seed,
        lr: 1e-3,
    }
}

/// The 15 members for images of side `size` (at least 64 for the Swins' three stages of
/// windows of 4 at patch 4; smaller sizes drop the Swins).
pub fn members(size: usize) -> Vec<Member> {
    let mut demo = ClassifierConfig::resnet(DEMO_BACKBONE_MEMBER, 18, 16, 10);
    demo.backbone = ClassifierBackbone::ResNet(demo_backbone());
    let mut v = vec![Member {
        cfg: demo,
        seed: 100,
        lr: 3e-3,
    }];
    for (depth, width, d, seed) in [
        (18, 8, false, 1),
        (18, 8, false, 2),
        (18, 8, false, 3),
        (18, 16, false, 4),
        (18, 16, false, 5),
        (18, 12, false, 6),
        (34, 8, false, 7),
        (34, 8, false, 8),
        (50, 8, false, 9),
        (50, 8, false, 10),
        (18, 8, true, 11),
    ] {
        v.push(narrow_resnet(depth, width, d, seed));
    }
    if size >= 64 {
        v.push(small_swin(16, [1, 2, 4], 12, size));
        v.push(small_swin(16, [1, 2, 4], 13, size));
        v.push(small_swin(24, [2, 4, 8], 14, size));
    } else {
        v.extend(
            [(18, 8, false, 12), (18, 8, false, 13), (34, 8, false, 14)]
                .map(|(depth, width, d, seed)| narrow_resnet(depth, width, d, seed)),
        );
    }
    v
}

/// Trains `members` on `images` / `classes` (`epochs` epochs, batch `batch`, AdamW with the
/// member's rate, poly decay) two at a time, and scores each on `heldout`.
pub fn train_members(
    members: &[Member],
    images: &Tensor,
    classes: &[u32],
    heldout: (&Tensor, &[u32]),
    epochs: usize,
    batch: usize,
) -> TrainResult<Vec<TrainedMember>> {
    members
        .par_iter()
        .map(|m| {
            let t = Instant::now();
            let tc = ClassifyConfig {
                optimizer: OptimizerConfig::AdamW {
                    lr: m.lr,
                    betas: [0.9, 0.999],
                    eps: 1e-8,
                    weight_decay: 0.01,
                    decay_norm_and_bias: false,
                },
                epochs,
                batch_size: batch,
                seed: m.seed,
            };
            let trained = train_classifier(&m.cfg, &tc, images, classes, &mut |_, _| {})?;
            let acc = accuracy(&trained.model, heldout.0, heldout.1, 64)?;
            let parameters = trained
                .varmap
                .data()
                .lock()
                .map(|vars| {
                    vars.iter()
                        .filter(|(k, _)| {
                            !k.ends_with("running_mean") && !k.ends_with("running_var")
                        })
                        .map(|(_, v)| v.elem_count())
                        .sum()
                })
                .unwrap_or(0);
            let record = MemberRecord {
                name: m.cfg.name.clone(),
                seed: m.seed,
                parameters,
                heldout_accuracy: acc,
                final_loss: trained.epoch_loss.last().copied().unwrap_or(f64::NAN),
                train_seconds: t.elapsed().as_secs_f64(),
            };
            eprintln!(
                "xtask: classifier {} ({} parameters): held-out accuracy {:.1}% ({:.0} s)",
                record.name,
                record.parameters,
                100.0 * acc,
                record.train_seconds
            );
            Ok(TrainedMember { trained, record })
        })
        .collect()
}
