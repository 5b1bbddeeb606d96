//! The training losses of a segmentor: every configured loss of every head output, named as
//! mmseg logs them, and their total (mmseg `EncoderDecoder.loss` + `parse_losses`).
//!
//! For each head (decode `decode.`, auxiliary `aux.`) and each of its [`OutputLosses`]
//! ([`SegmentorConfig::head_losses`]: the model config's lists, or mmseg's defaults for the
//! head type), the output is scored as mmseg's `loss_by_feat` does: per-pixel logits resized
//! bilinearly to the label map with the head's `align_corners`, class-presence logits against
//! the classes each label map contains. The names are mmseg's keys: DANet
//! `decode.pam_cam.loss_ce`, `decode.pam.loss_ce`, `decode.cam.loss_ce`, `aux.loss_ce`;
//! EncNet `decode.loss_ce`, `decode.loss_se`, `aux.loss_ce`. The total is their sum.
//!
//! The trainer calls [`LossPlan::compute`] each step; [`compute`] is the same with the model
//! config's losses as they are.
//!
//! ```
//! use segkit_models::SegmentorConfig;
//! use segkit_train::losses::LossPlan;
//! let cfg = SegmentorConfig::preset("danet_r50-d8_cityscapes-512x1024").unwrap();
//! let plan = LossPlan::new(&cfg, None).unwrap();
//! assert_eq!(
//!     plan.names(),
//!     ["decode.pam_cam.loss_ce", "decode.pam.loss_ce", "decode.cam.loss_ce", "aux.loss_ce"]
//! );
//! ```

use candle_core::Tensor;
use segkit_core::OutputKind;
use segkit_losses::OutputLosses;
use segkit_models::encoder_decoder::heads::HeadRole;
use segkit_models::{SegmentorConfig, SegmentorOutput};

use crate::{TrainError, TrainResult};

/// The losses of one forward pass.
#[derive(Debug, Clone)]
pub struct NamedLosses {
    /// The sum of every loss (what `backward` starts from), a scalar.
    pub total: Tensor,
    /// Every loss by mmseg's name, in the order of [`LossPlan::names`], each a scalar.
    pub items: Vec<(String, Tensor)>,
}

impl NamedLosses {
    /// The loss named `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.items.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// One head output and its losses.
#[derive(Debug, Clone)]
struct Scored {
    role: HeadRole,
    kind: OutputKind,
    align_corners: bool,
    losses: OutputLosses,
}

/// Which losses a segmentor trains with, resolved and checked once.
#[derive(Debug, Clone)]
pub struct LossPlan {
    outputs: Vec<Scored>,
    names: Vec<String>,
}

impl LossPlan {
    /// The losses of `cfg` ([`SegmentorConfig::head_losses`]). With `aux_loss_weight`, every
    /// auxiliary-head loss takes that weight instead (the training config's
    /// `aux_loss_weight`); 0 drops them.
    pub fn new(cfg: &SegmentorConfig, aux_loss_weight: Option<f64>) -> TrainResult<Self> {
        cfg.validate()?;
        let mut outputs = Vec::new();
        for (role, head, list) in cfg.head_losses() {
            let specs = head.outputs();
            for mut losses in list {
                if let (HeadRole::Auxiliary, Some(w)) = (role, aux_loss_weight) {
                    if w == 0.0 {
                        continue;
                    }
                    for l in &mut losses.losses {
                        l.set_loss_weight(w);
                    }
                }
                let kind = specs
                    .iter()
                    .find(|s| s.name == losses.output)
                    .map(|s| s.kind)
                    .ok_or_else(|| TrainError::Config {
                        path: "<model config>".into(),
                        reason: format!("no head output `{}` to score", losses.output),
                    })?;
                outputs.push(Scored {
                    role,
                    kind,
                    align_corners: head.align_corners(),
                    losses,
                });
            }
        }
        let mut names: Vec<String> = Vec::new();
        for o in &outputs {
            for l in &o.losses.losses {
                let n = format!("{}.{}", o.role.loss_prefix(), o.losses.loss_key(l));
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        if names.is_empty() {
            return Err(TrainError::Config {
                path: "<model config>".into(),
                reason: format!("model `{}` has no loss to train with", cfg.name),
            });
        }
        Ok(Self { outputs, names })
    }

    /// The names of the losses, in the order [`LossPlan::compute`] returns them.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Every loss of `out` against the label map `labels` (`N x H x W` integer, at the input
    /// size; `ignore_index` unlabelled), and their total. Losses with the same name are summed
    /// (mmseg: losses of one head with the same `loss_name`).
    pub fn compute(
        &self,
        out: &SegmentorOutput,
        labels: &Tensor,
        ignore_index: i64,
    ) -> TrainResult<NamedLosses> {
        let mut items: Vec<(String, Tensor)> = Vec::with_capacity(self.names.len());
        for o in &self.outputs {
            let pred = out
                .head(o.role)
                .and_then(|h| h.get(&o.losses.output))
                .ok_or_else(|| TrainError::Config {
                    path: "<model config>".into(),
                    reason: format!(
                        "the {} head returned no output `{}`",
                        o.role.loss_prefix(),
                        o.losses.output
                    ),
                })?;
            let values = o
                .losses
                .forward(o.kind, pred, labels, ignore_index, o.align_corners)?;
            for (key, v) in values {
                let name = format!("{}.{key}", o.role.loss_prefix());
                match items.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, acc)) => *acc = (&*acc + v)?,
                    None => items.push((name, v)),
                }
            }
        }
        let mut total: Option<Tensor> = None;
        for (_, v) in &items {
            total = Some(match total {
                Some(t) => (t + v)?,
                None => v.clone(),
            });
        }
        let total = match total {
            Some(t) => t,
            None => Tensor::zeros((), candle_core::DType::F32, labels.device())?,
        };
        Ok(NamedLosses { total, items })
    }
}

/// Every configured loss of `out` (the model config's lists, or mmseg's defaults) against
/// `labels`, and their total: [`LossPlan::new`]`(cfg, None)` then [`LossPlan::compute`], the
/// code path of the trainer.
pub fn compute(
    cfg: &SegmentorConfig,
    out: &SegmentorOutput,
    labels: &Tensor,
    ignore_index: i64,
) -> TrainResult<NamedLosses> {
    LossPlan::new(cfg, None)?.compute(out, labels, ignore_index)
}
