//! What every decode head shares, as mmseg's `BaseDecodeHead`
//! (`mmseg/models/decode_heads/decode_head.py`): input selection (`in_index`,
//! `input_transform`), the classifier `conv_seg` behind a `Dropout2d`, and the common settings
//! (`channels`, `num_classes`, `norm_cfg`, `act_cfg`, `align_corners`).
//!
//! # Shapes
//! A head receives one `N x C_i x H_i x W_i` map per input spec. With no transform it uses
//! `inputs[in_index]`; `resize_concat` bilinearly resizes the selected maps to the first one's
//! size and concatenates them (channels add up); `multiple_select` hands the selected maps to
//! the head as a list (EncNet). The classifier maps `N x channels x h x w` to
//! `N x num_classes x h x w`.
//!
//! ```
//! use segkit_heads::{DecodeHeadConfig, InIndex};
//! let cfg = DecodeHeadConfig::mmseg(512, 19, InIndex::One(3));
//! assert_eq!(cfg.dropout_ratio, 0.1);
//! let json = serde_json::to_string(&cfg).unwrap();
//! assert!(json.contains("\"in_index\":3"));
//! ```

use candle_core::Tensor;
use candle_nn::VarBuilder;
use segkit_core::init;
use segkit_core::nn::Norm;
use segkit_core::ops::{self, Activation, Conv2dParams};
use segkit_core::FeatureSpec;

use crate::{Error, Result};

/// Which input feature map(s) a head reads (mmseg `in_index`): one index, or a list for
/// `input_transform = resize_concat / multiple_select`. Negative indices count from the end,
/// as in Python.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum InIndex {
    /// One map (`in_index: 3`).
    One(i64),
    /// Several maps (`in_index: [1, 2, 3]`).
    Many(Vec<i64>),
}

/// How several selected maps are combined (mmseg `input_transform`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputTransform {
    /// Resize every selected map to the first one's size (bilinear, `align_corners` from the
    /// config) and concatenate along channels (`'resize_concat'`, HRNet's FCN head).
    ResizeConcat,
    /// Pass the selected maps to the head as a list (`'multiple_select'`, EncNet).
    MultipleSelect,
}

fn default_dropout() -> f32 {
    0.1
}
fn default_in_index() -> InIndex {
    InIndex::One(-1)
}
fn default_norm() -> Option<Norm> {
    Some(Norm::batch_norm())
}
fn default_act() -> Activation {
    Activation::Relu
}

/// Settings every decode head shares (mmseg `BaseDecodeHead`'s arguments). The input channels
/// are not here: they come from the input specs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeHeadConfig {
    /// Width of the head: channels of its intermediate features, fed to the classifier
    /// (mmseg `channels`; 512 for the main heads, 256 for the auxiliary FCN head).
    pub channels: usize,
    /// Number of classes: output channels of the 1x1 classifier `conv_seg` (19 for
    /// Cityscapes, 150 for ADE20K).
    pub num_classes: usize,
    /// Probability of zeroing a whole channel before each classifier (`Dropout2d`, active only
    /// in training). Default 0.1; 0 removes the dropout.
    #[serde(default = "default_dropout")]
    pub dropout_ratio: f32,
    /// The input map(s) to read. Default -1 (the last map).
    #[serde(default = "default_in_index")]
    pub in_index: InIndex,
    /// How several selected maps are combined; `None` for a single map. Default `None`.
    #[serde(default)]
    pub input_transform: Option<InputTransform>,
    /// Normalisation in the head's ConvModules (mmseg `norm_cfg`; the configs use SyncBN,
    /// which is BatchNorm at inference). Default BatchNorm; `null` means none (then the convs
    /// have biases, mmcv's `bias='auto'`).
    #[serde(default = "default_norm")]
    pub norm: Option<Norm>,
    /// Activation in the head's ConvModules (mmseg `act_cfg`). Default ReLU.
    #[serde(default = "default_act")]
    pub act: Activation,
    /// `align_corners` of the head's bilinear resizes (and of the logits' upsampling by the
    /// segmentor). Default false; mmseg's `*-769x769` Cityscapes configs use true.
    #[serde(default)]
    pub align_corners: bool,
    /// What the selected input(s) were designed to be, one spec per selected map: the
    /// presets set it (`DaHeadConfig::danet_r50_d8`: 2048 channels at stride 8). Building the
    /// head on features whose channels or stride differ fails with
    /// [`segkit_core::Error::Miswired`] naming both, instead of running on the wrong map.
    /// `None` (the default, and what JSON without the field gives) checks nothing: set it to
    /// `None` to use a preset head on other features on purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub designed_for: Option<Vec<FeatureSpec>>,
}

impl DecodeHeadConfig {
    /// The settings of mmseg's segmentation configs: dropout 0.1, (Sync)BN, ReLU,
    /// `align_corners = false`, `in_index` as given, no input transform.
    pub fn mmseg(channels: usize, num_classes: usize, in_index: InIndex) -> Self {
        Self {
            channels,
            num_classes,
            dropout_ratio: 0.1,
            in_index,
            input_transform: None,
            norm: default_norm(),
            act: Activation::Relu,
            align_corners: false,
            designed_for: None,
        }
    }

    /// The same settings, designed for input(s) `specs` (see
    /// [`DecodeHeadConfig::designed_for`]).
    pub fn designed_for(mut self, specs: &[FeatureSpec]) -> Self {
        self.designed_for = Some(specs.to_vec());
        self
    }

    /// Checks the selected inputs against [`DecodeHeadConfig::designed_for`].
    fn check_designed_for(
        &self,
        what: &str,
        inputs: &[FeatureSpec],
        indices: &[usize],
    ) -> Result<()> {
        let Some(want) = &self.designed_for else {
            return Ok(());
        };
        let got: Vec<FeatureSpec> = indices.iter().map(|&i| inputs[i]).collect();
        if got == *want {
            return Ok(());
        }
        let show = |v: &[FeatureSpec]| {
            let s: Vec<String> = v
                .iter()
                .map(|s| format!("{} channels at stride {}", s.channels, s.stride))
                .collect();
            s.join(", ")
        };
        let all: Vec<String> = inputs
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{i}: {}@{}", s.channels, s.stride))
            .collect();
        let mut problem = format!(
            "designed for {}, but the selected input(s) {indices:?} have {}",
            show(want),
            show(&got)
        );
        let channels_differ = got.iter().zip(want).any(|(g, w)| g.channels != w.channels);
        let strides_differ = got.iter().zip(want).any(|(g, w)| g.stride != w.stride);
        if channels_differ {
            problem.push_str(" (channel mismatch)");
        }
        if strides_differ {
            problem.push_str(" (stride mismatch)");
        }
        problem.push_str(&format!(
            "; inputs (channels@stride): [{}]. Pick the right input with `in_index`, give the \
             head the features it was designed for, or set `designed_for` to None to use it on \
             these on purpose",
            all.join(", ")
        ));
        Err(Error::Miswired {
            component: format!("{what} (`in_index` {:?})", self.in_index),
            problem,
        })
    }

    fn validate(&self, what: &str) -> Result<()> {
        if self.channels == 0 || self.num_classes == 0 {
            return Err(Error::InvalidConfig(format!(
                "{what}: channels and num_classes must be positive, got {} and {}",
                self.channels, self.num_classes
            )));
        }
        if !(0.0..=1.0).contains(&self.dropout_ratio) {
            return Err(Error::InvalidConfig(format!(
                "{what}: dropout_ratio must be in [0, 1], got {}",
                self.dropout_ratio
            )));
        }
        Ok(())
    }
}

/// The resolved input selection of a head.
#[derive(Debug, Clone)]
pub(crate) struct HeadInputs {
    what: &'static str,
    all: Vec<FeatureSpec>,
    indices: Vec<usize>,
    transform: Option<InputTransform>,
    align_corners: bool,
}

impl HeadInputs {
    /// Resolves `cfg.in_index` against `inputs`. `transform` is the transform the head uses
    /// (the config's, or `MultipleSelect` forced by EncNet).
    pub(crate) fn new(
        what: &'static str,
        cfg: &DecodeHeadConfig,
        transform: Option<InputTransform>,
        inputs: &[FeatureSpec],
    ) -> Result<Self> {
        cfg.validate(what)?;
        let n = inputs.len() as i64;
        let resolve = |i: i64| -> Result<usize> {
            let j = if i < 0 { i + n } else { i };
            if (0..n).contains(&j) {
                Ok(j as usize)
            } else {
                Err(Error::InvalidConfig(format!(
                    "{what}: in_index {i} is out of range for {n} input feature map(s)"
                )))
            }
        };
        let indices = match (&cfg.in_index, transform) {
            (InIndex::One(i), None) => vec![resolve(*i)?],
            (InIndex::Many(v), Some(_)) if !v.is_empty() => {
                v.iter().map(|&i| resolve(i)).collect::<Result<Vec<_>>>()?
            }
            (idx, t) => {
                return Err(Error::InvalidConfig(format!(
                    "{what}: in_index {idx:?} does not fit input_transform {t:?} (one index \
                     without a transform, a non-empty list with resize_concat / multiple_select)"
                )))
            }
        };
        if inputs.iter().any(|s| s.channels == 0 || s.stride == 0) {
            return Err(Error::InvalidConfig(format!(
                "{what}: input specs need positive channels and strides, got {inputs:?}"
            )));
        }
        cfg.check_designed_for(what, inputs, &indices)?;
        Ok(Self {
            what,
            all: inputs.to_vec(),
            indices,
            transform,
            align_corners: cfg.align_corners,
        })
    }

    /// Specs of the selected maps, in selection order.
    pub(crate) fn selected(&self) -> Vec<FeatureSpec> {
        self.indices.iter().map(|&i| self.all[i]).collect()
    }

    /// Channels of the single map the head sees (the sum for `resize_concat`).
    pub(crate) fn channels(&self) -> usize {
        self.selected().iter().map(|s| s.channels).sum()
    }

    /// Stride of the first selected map (the size `resize_concat` resizes to).
    pub(crate) fn first_stride(&self) -> usize {
        self.all[self.indices[0]].stride
    }

    /// Checks `features` against the specs and returns the selected maps.
    pub(crate) fn select(&self, features: &[Tensor]) -> Result<Vec<Tensor>> {
        if features.len() != self.all.len() {
            return Err(Error::WrongInputCount {
                what: self.what,
                expected: self.all.len(),
                got: features.len(),
            });
        }
        let mut batch = None;
        let mut out = Vec::with_capacity(self.indices.len());
        for &i in &self.indices {
            let t = &features[i];
            let want = self.all[i].channels;
            let &[n, c, h, w] = t.dims() else {
                return Err(segkit_core::Error::shape(
                    format!("{} input {i} (N x C x H x W)", self.what),
                    &[1, want, 1, 1],
                    t.dims(),
                ));
            };
            if c != want {
                return Err(segkit_core::Error::shape(
                    format!("{} input {i} channels", self.what),
                    &[want],
                    &[c],
                ));
            }
            if h == 0 || w == 0 {
                return Err(segkit_core::Error::InvalidArgument(format!(
                    "{} input {i} has an empty spatial size {h} x {w}",
                    self.what
                )));
            }
            if *batch.get_or_insert(n) != n {
                return Err(segkit_core::Error::shape(
                    format!("{} input {i} batch size", self.what),
                    &[batch.unwrap_or(n)],
                    &[n],
                ));
            }
            out.push(t.clone());
        }
        Ok(out)
    }

    /// The single map a one-input head works on: `inputs[in_index]`, or the resized
    /// concatenation of the selected maps (`resize_concat`).
    pub(crate) fn single(&self, features: &[Tensor]) -> Result<Tensor> {
        if self.transform == Some(InputTransform::MultipleSelect) {
            return Err(Error::InvalidConfig(format!(
                "{} takes one map, not a multiple_select list",
                self.what
            )));
        }
        let mut xs = self.select(features)?;
        if xs.len() == 1 {
            return Ok(xs.swap_remove(0));
        }
        let (_, _, h, w) = xs[0].dims4()?;
        for x in xs.iter_mut().skip(1) {
            if x.dims()[2..] != [h, w] {
                *x = ops::resize_bilinear(x, (h, w), self.align_corners)?;
            }
        }
        Ok(Tensor::cat(&xs, 1)?)
    }
}

/// Checks that a one-input head was not configured with `multiple_select`.
pub(crate) fn single_input_transform(
    what: &str,
    cfg: &DecodeHeadConfig,
) -> Result<Option<InputTransform>> {
    match cfg.input_transform {
        Some(InputTransform::MultipleSelect) => Err(Error::InvalidConfig(format!(
            "{what} works on one map: use input_transform None or resize_concat"
        ))),
        t => Ok(t),
    }
}

/// `Dropout2d(p)` as PyTorch: in training, each channel of each sample is zeroed with
/// probability `p` and the kept ones are scaled by `1 / (1 - p)`; identity otherwise. The
/// mask comes from [`segkit_core::random::uniform`] (reproducible when the thread is seeded).
/// See [`segkit_core::ops::dropout2d`], which this calls.
///
/// # Shapes
/// `N x C x H x W` -> same.
pub fn dropout2d(x: &Tensor, p: f32, train: bool) -> Result<Tensor> {
    segkit_core::ops::dropout2d(x, p, train)
}

/// `softmax` over the last dimension: candle's fused kernel at inference, composed
/// differentiable ops when `x` records gradients (the fused kernel has no backward pass).
pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        Ok(candle_nn::ops::softmax(x, candle_core::D::Minus1)?)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(x)?)
    }
}

/// A `Dropout2d` followed by a 1x1 classifier with bias (mmseg `cls_seg` with `conv_seg`, or
/// DANet's `pam_conv_seg` / `cam_conv_seg`).
pub(crate) struct ClsSeg {
    p: f32,
    weight: Tensor,
    bias: Tensor,
}

impl ClsSeg {
    /// Loads `weight` (`num_classes x channels x 1 x 1`) and `bias` from `vb`; created
    /// (a `VarMap`) as mmseg's `conv_seg`: N(0, 0.01), bias 0.
    pub(crate) fn new(
        channels: usize,
        num_classes: usize,
        dropout: f32,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        Self::with_init(
            channels,
            num_classes,
            dropout,
            vb,
            init::normal(0.01),
            init::ZERO,
        )
    }

    /// [`ClsSeg::new`] created with PyTorch's default `nn.Conv2d` initialisation (DANet's
    /// `pam_conv_seg` / `cam_conv_seg`, which mmseg's `conv_seg` override does not reach).
    pub(crate) fn new_torch_default(
        channels: usize,
        num_classes: usize,
        dropout: f32,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let (w, b) = (
            init::torch_default_weight(),
            init::torch_default_bias(channels),
        );
        Self::with_init(channels, num_classes, dropout, vb, w, b)
    }

    fn with_init(
        channels: usize,
        num_classes: usize,
        dropout: f32,
        vb: VarBuilder<'_>,
        weight: init::Init,
        bias: init::Init,
    ) -> Result<Self> {
        Ok(Self {
            p: dropout,
            weight: vb.get_with_hints((num_classes, channels, 1, 1), "weight", weight)?,
            bias: vb.get_with_hints(num_classes, "bias", bias)?,
        })
    }

    /// Dropout (training only) then the classifier.
    pub(crate) fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = dropout2d(x, self.p, train)?;
        ops::conv2d(
            &x,
            &self.weight,
            Some(&self.bias),
            Conv2dParams::default(),
            Activation::None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn dropout2d_zeroes_whole_channels() {
        let x = Tensor::ones((4, 64, 3, 5), DType::F32, &Device::Cpu).unwrap();
        let eval = dropout2d(&x, 0.5, false).unwrap();
        assert_eq!(
            eval.sum_all().unwrap().to_scalar::<f32>().unwrap(),
            4.0 * 64.0 * 15.0
        );
        let y = dropout2d(&x, 0.5, true).unwrap();
        let v = y.flatten_from(2).unwrap().to_vec3::<f32>().unwrap();
        let mut zeros = 0;
        for plane in v.iter().flatten() {
            assert!(plane.iter().all(|&a| a == plane[0]), "channel not uniform");
            assert!(plane[0] == 0.0 || plane[0] == 2.0);
            zeros += (plane[0] == 0.0) as usize;
        }
        assert!(zeros > 64 && zeros < 192, "{zeros} of 256 channels dropped");
    }

    #[test]
    fn softmax_has_a_gradient_in_training() {
        let x = candle_core::Var::new(&[[1f32, 2.0, 0.5]], &Device::Cpu).unwrap();
        let fast = softmax_last_dim(&x.as_detached_tensor()).unwrap();
        let y = softmax_last_dim(x.as_tensor()).unwrap();
        let (a, b) = (fast.to_vec2::<f32>().unwrap(), y.to_vec2::<f32>().unwrap());
        for (p, q) in a[0].iter().zip(&b[0]) {
            assert!((p - q).abs() < 1e-6, "{a:?} vs {b:?}");
        }
        // d y_0 / d x = y_0 (e_0 - y)
        let g = y
            .narrow(1, 0, 1)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gx = g.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let y0 = b[0][0];
        let want = [y0 * (1.0 - y0), -y0 * b[0][1], -y0 * b[0][2]];
        for (p, q) in gx[0].iter().zip(want) {
            assert!((p - q).abs() < 1e-6, "{gx:?} vs {want:?}");
        }
    }

    #[test]
    fn in_index_resolution() {
        let specs = [FeatureSpec::new(8, 4), FeatureSpec::new(16, 8)];
        let cfg = DecodeHeadConfig::mmseg(4, 3, InIndex::One(-1));
        let s = HeadInputs::new("t", &cfg, None, &specs).unwrap();
        assert_eq!(s.channels(), 16);
        assert_eq!(s.first_stride(), 8);
        let bad = DecodeHeadConfig::mmseg(4, 3, InIndex::One(2));
        assert!(matches!(
            HeadInputs::new("t", &bad, None, &specs),
            Err(Error::InvalidConfig(_))
        ));
        let many = DecodeHeadConfig::mmseg(4, 3, InIndex::Many(vec![0, 1]));
        assert!(HeadInputs::new("t", &many, None, &specs).is_err());
        let s = HeadInputs::new("t", &many, Some(InputTransform::ResizeConcat), &specs).unwrap();
        assert_eq!(s.channels(), 24);
        assert_eq!(s.first_stride(), 4);
    }

    #[test]
    fn config_json() {
        let c: DecodeHeadConfig =
            serde_json::from_str(r#"{"channels": 512, "num_classes": 19, "in_index": [1, 2], "input_transform": "resize_concat"}"#)
                .unwrap();
        assert_eq!(c.in_index, InIndex::Many(vec![1, 2]));
        assert_eq!(c.input_transform, Some(InputTransform::ResizeConcat));
        assert_eq!(c.norm, Some(Norm::batch_norm()));
        let c: DecodeHeadConfig =
            serde_json::from_str(r#"{"channels": 8, "num_classes": 2, "norm": null}"#).unwrap();
        assert_eq!(c.norm, None);
        assert_eq!(c.in_index, InIndex::One(-1));
        assert!(serde_json::from_str::<DecodeHeadConfig>(
            r#"{"channels": 8, "num_classes": 2, "chanels": 3}"#
        )
        .is_err());
    }
}
