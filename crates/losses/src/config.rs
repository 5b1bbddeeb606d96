//! Loss configurations per named head output, in mmseg's `loss_decode` shape.
//!
//! Reference: mmseg 1.2.2 `mmseg/models/losses/cross_entropy_loss.py` (`CrossEntropyLoss`:
//! `use_sigmoid`, `class_weight`, `loss_weight`, `loss_name`, `avg_non_ignore`),
//! `mmseg/models/decode_heads/decode_head.py` (`BaseDecodeHead.loss_by_feat`: the logits
//! resized bilinearly to the label with the head's `align_corners`, then every loss of
//! `loss_decode`, those with the same `loss_name` summed), `da_head.py` (`DAHead.loss_by_feat`:
//! the same losses on the fused, PAM and CAM logits, logged under the prefixes `pam_cam.`,
//! `pam.`, `cam.`) and `enc_head.py` (`EncHead.loss_by_feat`: `loss_se`, a sigmoid
//! cross-entropy of the class-presence logits against the classes each label map contains).
//!
//! A head output is scored by an [`OutputLosses`]: the output's name, an optional prefix of
//! the logged names and a list of [`LossConfig`]s. [`OutputLosses::forward`] builds the target
//! the output's [`OutputKind`] calls for (the label map, or the classes it contains) and
//! returns one `(name, loss)` per distinct `loss_name`.
//!
//! ```
//! use segkit_losses::{LossConfig, OutputLosses};
//! // mmseg's DAHead: CE on the fused logits, logged as `pam_cam.loss_ce`.
//! let json = r#"{"output": "logits", "prefix": "pam_cam",
//!                "losses": [{"type": "CrossEntropyLoss", "loss_weight": 1.0}]}"#;
//! let o: OutputLosses = serde_json::from_str(json).unwrap();
//! assert_eq!(o.losses, [LossConfig::cross_entropy(1.0)]);
//! assert_eq!(o.loss_key(&o.losses[0]), "pam_cam.loss_ce");
//! let e = serde_json::from_str::<LossConfig>(r#"{"type": "FocalLoss"}"#).unwrap_err();
//! assert!(e.to_string().contains("CrossEntropyLoss"), "{e}");
//! ```

use candle_core::{DType, Tensor};
use segkit_core::OutputKind;
use serde::{Deserialize, Serialize};

use crate::util::labels_i64;
use crate::{BinaryCrossEntropyLoss, CrossEntropyLoss, Error, Result};

fn default_weight() -> f64 {
    1.0
}
fn default_ce_name() -> String {
    "loss_ce".into()
}

/// mmseg's `CrossEntropyLoss` options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossEntropyLossConfig {
    /// An independent sigmoid per class (binary cross-entropy against one-hot or 0/1 targets)
    /// instead of a softmax over the classes. Default false; EncNet's SE loss uses true.
    #[serde(default)]
    pub use_sigmoid: bool,
    /// Per-class weights (softmax: PyTorch's `weight`, also in the averaging factor; sigmoid:
    /// PyTorch's `pos_weight`). Default none (all ones).
    #[serde(default)]
    pub class_weight: Option<Vec<f32>>,
    /// Factor on the loss (mmseg `loss_weight`: 1.0 for decode heads, 0.4 for the auxiliary
    /// FCN head, 0.2 for EncNet's SE loss). Default 1.0.
    #[serde(default = "default_weight")]
    pub loss_weight: f64,
    /// Name the loss is logged under (mmseg `loss_name`); losses of one output with the same
    /// name are summed. Default `loss_ce`.
    #[serde(default = "default_ce_name")]
    pub loss_name: String,
    /// Average over the non-ignored elements only (PyTorch's `mean`); false (mmseg's
    /// default) averages over all elements. Default false.
    #[serde(default)]
    pub avg_non_ignore: bool,
}

/// One loss (mmseg's `loss_decode` entry), tagged by mmseg's type name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum LossConfig {
    /// mmseg `CrossEntropyLoss` (softmax, or sigmoid with `use_sigmoid`).
    #[serde(rename = "CrossEntropyLoss")]
    CrossEntropy(CrossEntropyLossConfig),
}

impl LossConfig {
    /// Softmax cross-entropy `loss_ce` with weight `loss_weight` (mmseg's decode-head default).
    pub fn cross_entropy(loss_weight: f64) -> Self {
        LossConfig::CrossEntropy(CrossEntropyLossConfig {
            use_sigmoid: false,
            class_weight: None,
            loss_weight,
            loss_name: default_ce_name(),
            avg_non_ignore: false,
        })
    }

    /// Sigmoid cross-entropy with weight `loss_weight`, logged as `loss_name` (EncNet's SE
    /// loss: `sigmoid_cross_entropy(0.2, "loss_se")`).
    pub fn sigmoid_cross_entropy(loss_weight: f64, loss_name: &str) -> Self {
        LossConfig::CrossEntropy(CrossEntropyLossConfig {
            use_sigmoid: true,
            class_weight: None,
            loss_weight,
            loss_name: loss_name.into(),
            avg_non_ignore: false,
        })
    }

    /// The name the loss is logged under (`loss_ce`, `loss_se`, ...).
    pub fn loss_name(&self) -> &str {
        match self {
            LossConfig::CrossEntropy(c) => &c.loss_name,
        }
    }

    /// The factor on the loss.
    pub fn loss_weight(&self) -> f64 {
        match self {
            LossConfig::CrossEntropy(c) => c.loss_weight,
        }
    }

    /// Sets the factor on the loss.
    pub fn set_loss_weight(&mut self, w: f64) {
        match self {
            LossConfig::CrossEntropy(c) => c.loss_weight = w,
        }
    }

    /// Checks the loss against the output it scores: `num_classes` classes, of kind `kind`.
    pub fn validate(&self, num_classes: usize, kind: OutputKind) -> Result<()> {
        let LossConfig::CrossEntropy(c) = self;
        if !c.loss_weight.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "`{}`: loss_weight must be finite, got {}",
                c.loss_name, c.loss_weight
            )));
        }
        if c.loss_name.is_empty() {
            return Err(Error::InvalidArgument("loss_name must not be empty".into()));
        }
        if let Some(w) = &c.class_weight {
            if w.len() != num_classes || w.iter().any(|v| !v.is_finite()) {
                return Err(Error::InvalidArgument(format!(
                    "`{}`: class_weight needs {num_classes} finite values (one per class), got {}",
                    c.loss_name,
                    w.len()
                )));
            }
        }
        if kind == OutputKind::ClassPresence && !c.use_sigmoid {
            return Err(Error::InvalidArgument(format!(
                "`{}`: a class-presence output (N x K logits against the classes each image \
                 contains) is scored with use_sigmoid = true",
                c.loss_name
            )));
        }
        Ok(())
    }

    /// The loss of `pred` against `target`; `ignore_index` marks target elements without a
    /// label. Softmax: [`CrossEntropyLoss`]; sigmoid: [`BinaryCrossEntropyLoss`].
    pub fn forward(&self, pred: &Tensor, target: &Tensor, ignore_index: i64) -> Result<Tensor> {
        let LossConfig::CrossEntropy(c) = self;
        if c.use_sigmoid {
            BinaryCrossEntropyLoss {
                ignore_index,
                class_weight: c.class_weight.clone(),
                avg_non_ignore: c.avg_non_ignore,
                loss_weight: c.loss_weight,
            }
            .forward(pred, target)
        } else {
            CrossEntropyLoss {
                ignore_index,
                class_weight: c.class_weight.clone(),
                avg_non_ignore: c.avg_non_ignore,
                loss_weight: c.loss_weight,
            }
            .forward(pred, target)
        }
    }

    /// The loss of the `N x C x h x w` logits `pred` resized bilinearly (`align_corners`) to the
    /// `N x H x W` label map `target`, as mmseg's `loss_by_feat`. Softmax:
    /// [`CrossEntropyLoss::forward_resized`], which never builds the resized logits; sigmoid:
    /// resized first, then [`BinaryCrossEntropyLoss`].
    pub fn forward_resized(
        &self,
        pred: &Tensor,
        target: &Tensor,
        ignore_index: i64,
        align_corners: bool,
    ) -> Result<Tensor> {
        let LossConfig::CrossEntropy(c) = self;
        if c.use_sigmoid {
            let (_, h, w) = target.dims3()?;
            let up = segkit_core::ops::resize_bilinear(pred, (h, w), align_corners)?;
            return self.forward(&up, target, ignore_index);
        }
        CrossEntropyLoss {
            ignore_index,
            class_weight: c.class_weight.clone(),
            avg_non_ignore: c.avg_non_ignore,
            loss_weight: c.loss_weight,
        }
        .forward_resized(pred, target, align_corners)
    }
}

/// The losses of one named head output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputLosses {
    /// The head output they score (`logits`; DANet's `pam` / `cam`; EncNet's `se`).
    pub output: String,
    /// Prefix of the logged names, as mmseg's `add_prefix` (DANet logs `pam_cam.loss_ce` for
    /// its fused logits). Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The losses (mmseg `loss_decode`, a list); those with the same `loss_name` are summed.
    pub losses: Vec<LossConfig>,
}

impl OutputLosses {
    /// `losses` on `output`, without a prefix.
    pub fn new(output: &str, losses: Vec<LossConfig>) -> Self {
        Self {
            output: output.into(),
            prefix: None,
            losses,
        }
    }

    /// The same, logged under `prefix.`.
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The name `loss` is logged under: `{prefix}.{loss_name}`, or `{loss_name}`.
    pub fn loss_key(&self, loss: &LossConfig) -> String {
        match &self.prefix {
            Some(p) => format!("{p}.{}", loss.loss_name()),
            None => loss.loss_name().to_string(),
        }
    }

    /// Scores `pred`, an output of kind `kind`, against the label map `labels`
    /// (`N x H x W`, integer; `ignore_index` unlabelled): per-pixel logits are resized
    /// bilinearly to `H x W` (with `align_corners`) first; class-presence logits are compared
    /// with [`class_presence`]`(labels)`. Returns one `(key, loss)` per distinct key, in the
    /// order the keys first appear.
    pub fn forward(
        &self,
        kind: OutputKind,
        pred: &Tensor,
        labels: &Tensor,
        ignore_index: i64,
        align_corners: bool,
    ) -> Result<Vec<(String, Tensor)>> {
        let (_, h, w) = labels.dims3().map_err(|_| {
            Error::InvalidArgument(format!(
                "labels must be N x H x W, got shape {:?}",
                labels.dims()
            ))
        })?;
        // Per-pixel logits at another size are scored resized (`resize` = Some), which the
        // softmax losses do without building the resized map.
        let (target, ignore, resize) = match kind {
            OutputKind::PixelLogits => {
                let (_, _, ph, pw) = pred.dims4()?;
                let resize = ((ph, pw) != (h, w)).then_some(align_corners);
                (labels.clone(), ignore_index, resize)
            }
            OutputKind::ClassPresence => {
                let (_, k) = pred.dims2()?;
                // mmseg calls `loss_se_decode` without an ignore index (-100).
                (class_presence(labels, k)?, -100, None)
            }
        };
        let mut out: Vec<(String, Tensor)> = Vec::with_capacity(self.losses.len());
        for loss in &self.losses {
            let key = self.loss_key(loss);
            let v = match resize {
                Some(ac) => loss.forward_resized(pred, &target, ignore, ac)?,
                None => loss.forward(pred, &target, ignore)?,
            };
            match out.iter_mut().find(|(k, _)| *k == key) {
                Some((_, acc)) => *acc = (&*acc + v)?,
                None => out.push((key, v)),
            }
        }
        Ok(out)
    }
}

/// Which classes each image's label map contains (mmseg `EncHead._convert_to_onehot_labels`,
/// `histc` over `0..num_classes`): an `N x num_classes` f32 tensor of 0 / 1. Values outside
/// `0..num_classes` (the ignore index) count for no class.
///
/// # Shapes
/// `labels`: `N x ..` integer -> `N x num_classes`.
pub fn class_presence(labels: &Tensor, num_classes: usize) -> Result<Tensor> {
    let n = labels.dims().first().copied().ok_or_else(|| {
        Error::InvalidArgument("labels must have a batch dimension, got a scalar".into())
    })?;
    let v = labels_i64("labels", labels)?;
    let per = v.len().checked_div(n).unwrap_or(0);
    let mut out = vec![0f32; n * num_classes];
    for (i, chunk) in v.chunks(per.max(1)).enumerate().take(n) {
        for &l in chunk {
            if l >= 0 && (l as u64) < num_classes as u64 {
                out[i * num_classes + l as usize] = 1.0;
            }
        }
    }
    Ok(Tensor::from_vec(out, (n, num_classes), labels.device())?.to_dtype(DType::F32)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn json_defaults_are_mmseg_defaults() {
        let c: LossConfig = serde_json::from_str(r#"{"type": "CrossEntropyLoss"}"#).unwrap();
        assert_eq!(c, LossConfig::cross_entropy(1.0));
        let c: LossConfig = serde_json::from_str(
            r#"{"type": "CrossEntropyLoss", "use_sigmoid": true, "loss_weight": 0.2,
                "loss_name": "loss_se"}"#,
        )
        .unwrap();
        assert_eq!(c, LossConfig::sigmoid_cross_entropy(0.2, "loss_se"));
        let e = serde_json::from_str::<LossConfig>(
            r#"{"type": "CrossEntropyLoss", "loss_wieght": 0.2}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("loss_wieght"), "{e}");
    }

    #[test]
    fn presence_ignores_out_of_range_labels() {
        let l = Tensor::new(&[[[0u8, 2], [255, 2]], [[1, 1], [1, 255]]], &Device::Cpu).unwrap();
        let p = class_presence(&l, 3).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(p, [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]);
    }

    #[test]
    fn validation_names_the_problem() {
        let mut c = LossConfig::cross_entropy(1.0);
        assert!(c.validate(3, OutputKind::PixelLogits).is_ok());
        let e = c.validate(3, OutputKind::ClassPresence).unwrap_err();
        assert!(e.to_string().contains("use_sigmoid"), "{e}");
        let LossConfig::CrossEntropy(ce) = &mut c;
        ce.class_weight = Some(vec![1.0, 2.0]);
        let e = c.validate(3, OutputKind::PixelLogits).unwrap_err();
        assert!(e.to_string().contains("3 finite values"), "{e}");
    }

    #[test]
    fn same_names_are_summed_and_logits_resized() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(
            &Tensor::arange(0f32, 12.0, &dev)
                .unwrap()
                .reshape((1, 3, 2, 2))
                .unwrap(),
        )
        .unwrap();
        let y = Tensor::new(&[[[0u32, 1, 2, 255], [2, 2, 1, 0]]], &dev)
            .unwrap()
            .reshape((1, 2, 4))
            .unwrap();
        let one = OutputLosses::new("logits", vec![LossConfig::cross_entropy(1.0)]);
        let two = OutputLosses::new(
            "logits",
            vec![
                LossConfig::cross_entropy(1.0),
                LossConfig::cross_entropy(0.5),
            ],
        )
        .prefixed("pam");
        let a = one
            .forward(OutputKind::PixelLogits, x.as_tensor(), &y, 255, false)
            .unwrap();
        let b = two
            .forward(OutputKind::PixelLogits, x.as_tensor(), &y, 255, false)
            .unwrap();
        assert_eq!(a[0].0, "loss_ce");
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].0, "pam.loss_ce");
        let (va, vb) = (
            a[0].1.to_scalar::<f32>().unwrap(),
            b[0].1.to_scalar::<f32>().unwrap(),
        );
        assert!(va > 0.0 && (vb - 1.5 * va).abs() < 1e-6, "{va} {vb}");
        let up = segkit_core::ops::resize_bilinear(x.as_tensor(), (2, 4), false).unwrap();
        let direct = CrossEntropyLoss::mmseg().forward(&up, &y).unwrap();
        assert_eq!(direct.to_scalar::<f32>().unwrap(), va);
    }
}
