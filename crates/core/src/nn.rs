//! Shared layers: convolution + normalisation + activation blocks, `LayerNorm2d`, `Mlp`.
//!
//! Parameter names follow mmcv's `ConvModule` (`conv.weight`, `bn.running_mean`, `gn.weight`)
//! so that mmseg checkpoints load without renames; [`ConvNormAct::new_with_paths`] takes the
//! conv and norm paths separately for torchvision-style layouts (`conv1` + `bn1`).
//!
//! In inference mode (`train = false`) a BatchNorm is folded into the convolution: on CPU
//! (f32) segkit's kernels multiply the weights by the per-channel scale as they pack them and
//! add the shift in their output pass, so no folded weight copy is kept (ResNet-50 would hold
//! a second ~94 MB of weights); other devices fold the weights once and cache them. The bias
//! add and activation are fused into the convolution kernel ([`crate::ops::conv2d`]).

use std::sync::OnceLock;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use crate::ops::{self, Activation, Conv2dParams};
use crate::{Error, Result};

mod affine;
mod batch_norm;
mod conv_init;
mod layer_norm;
mod mlp;
mod residual;
pub use batch_norm::BatchNormAct;
pub use conv_init::ConvInit;
pub use layer_norm::{sine_position_embedding, LayerNorm, LayerNorm2d};
pub use mlp::{Mlp, MlpKeys};

/// Normalisation after a convolution.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type")]
pub enum Norm {
    /// BatchNorm2d (`bn.weight`, `bn.bias`, `bn.running_mean`, `bn.running_var`).
    BatchNorm {
        /// Epsilon added to the variance. Default 1e-5.
        eps: f64,
        /// Momentum of the running-statistics update in training. Default 0.1.
        momentum: f64,
    },
    /// GroupNorm (`gn.weight`, `gn.bias`).
    GroupNorm {
        /// Number of groups. Default 32.
        groups: usize,
        /// Epsilon. Default 1e-5.
        eps: f64,
    },
}

impl Norm {
    /// BatchNorm with PyTorch's defaults (eps 1e-5, momentum 0.1).
    pub const fn batch_norm() -> Self {
        Norm::BatchNorm {
            eps: 1e-5,
            momentum: 0.1,
        }
    }
    /// GroupNorm with `groups` groups and eps 1e-5.
    pub const fn group_norm(groups: usize) -> Self {
        Norm::GroupNorm { groups, eps: 1e-5 }
    }
    /// The key mmcv's ConvModule uses for this norm (`bn` or `gn`).
    pub fn mmcv_name(&self) -> &'static str {
        match self {
            Norm::BatchNorm { .. } => "bn",
            Norm::GroupNorm { .. } => "gn",
        }
    }
}

/// Configuration of a [`ConvNormAct`] / mmcv `ConvModule`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConvModuleConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Square kernel size.
    pub kernel_size: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
    /// Dilation of the kernel.
    pub dilation: usize,
    /// Channel groups (`in_channels` for a depthwise conv).
    pub groups: usize,
    /// Whether the conv has a bias. mmcv's `bias='auto'` means "no bias when a norm follows";
    /// [`ConvModuleConfig::new`] applies that rule.
    pub bias: bool,
    /// Normalisation after the conv, if any.
    pub norm: Option<Norm>,
    /// Activation after the norm, if any.
    pub act: Activation,
}

impl ConvModuleConfig {
    /// A `k x k` conv with stride 1, padding `k / 2`, BatchNorm and ReLU; bias off (mmcv `auto`).
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel_size,
            stride: 1,
            padding: kernel_size / 2,
            dilation: 1,
            groups: 1,
            bias: false,
            norm: Some(Norm::batch_norm()),
            act: Activation::Relu,
        }
    }
    /// Sets the stride.
    pub fn stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }
    /// Sets the padding.
    pub fn padding(mut self, padding: usize) -> Self {
        self.padding = padding;
        self
    }
    /// Sets the dilation and the padding that keeps the size (`dilation * (k - 1) / 2`).
    pub fn dilation(mut self, dilation: usize) -> Self {
        self.dilation = dilation;
        self.padding = dilation * (self.kernel_size - 1) / 2;
        self
    }
    /// Sets the channel groups.
    pub fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }
    /// Sets the norm; as mmcv's `bias='auto'`, the bias is on exactly when there is no norm.
    pub fn norm(mut self, norm: Option<Norm>) -> Self {
        self.norm = norm;
        self.bias = norm.is_none();
        self
    }
    /// Forces the conv bias on or off.
    pub fn bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
    /// Sets the activation.
    pub fn act(mut self, act: Activation) -> Self {
        self.act = act;
        self
    }

    fn params(&self) -> Conv2dParams {
        Conv2dParams {
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.kernel_size == 0 || self.stride == 0 || self.dilation == 0 || self.groups == 0 {
            return Err(Error::InvalidConfig(format!(
                "conv kernel_size, stride, dilation and groups must be positive: {self:?}"
            )));
        }
        let g = self.groups;
        if !self.in_channels.is_multiple_of(g) || !self.out_channels.is_multiple_of(g) {
            return Err(Error::InvalidConfig(format!(
                "conv channels {} -> {} are not divisible by groups {}",
                self.in_channels, self.out_channels, self.groups
            )));
        }
        if let Some(Norm::GroupNorm { groups, .. }) = self.norm {
            if groups == 0 || !self.out_channels.is_multiple_of(groups) {
                return Err(Error::InvalidConfig(format!(
                    "GroupNorm groups {groups} do not divide {} channels",
                    self.out_channels
                )));
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
enum NormLayer {
    Batch {
        bn: candle_nn::BatchNorm,
        weight: Tensor,
        bias: Tensor,
        mean: Tensor,
        var: Tensor,
        eps: f64,
    },
    Group {
        weight: Tensor,
        bias: Tensor,
        groups: usize,
        eps: f64,
    },
}

/// Convolution, optional normalisation and optional activation: mmcv's `ConvModule`.
///
/// # Shapes
/// `N x in_channels x H x W` -> `N x out_channels x H' x W'` with
/// `H' = (H + 2p - d(k-1) - 1) / s + 1`.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use segkit_core::nn::{ConvModule, ConvModuleConfig};
/// let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
/// let m = ConvModule::new(&ConvModuleConfig::new(3, 8, 3).stride(2), vb).unwrap();
/// let y = m.forward_t(&Tensor::zeros((1, 3, 9, 9), DType::F32, &Device::Cpu).unwrap(), false).unwrap();
/// assert_eq!(y.dims(), &[1, 8, 5, 5]);
/// ```
#[derive(Debug)]
pub struct ConvNormAct {
    cfg: ConvModuleConfig,
    weight: Tensor,
    bias: Option<Tensor>,
    norm: Option<NormLayer>,
    folded: OnceLock<(Tensor, Option<Tensor>)>,
    /// An inference BatchNorm as per-channel `scale` and `shift` (f32, cached): the CPU
    /// kernels apply them while packing the weights, so no folded weight copy is kept.
    affine: OnceLock<(Vec<f64>, Vec<f32>)>,
}

/// mmcv's name for [`ConvNormAct`] with its key layout (`conv`, `bn` / `gn`).
pub type ConvModule = ConvNormAct;

impl ConvNormAct {
    /// Loads a ConvModule with mmcv key names: `conv.weight`, `conv.bias`, `bn.*` / `gn.*`.
    pub fn new(cfg: &ConvModuleConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let norm_vb = vb.pp(cfg.norm.map(|n| n.mmcv_name()).unwrap_or("bn"));
        Self::new_with_paths(cfg, vb.pp("conv"), norm_vb)
    }

    /// Loads the conv from `conv_vb` (`weight`, `bias`) and the norm from `norm_vb`
    /// (torchvision style: `conv1` and `bn1`).
    pub fn new_with_paths(
        cfg: &ConvModuleConfig,
        conv_vb: VarBuilder<'_>,
        norm_vb: VarBuilder<'_>,
    ) -> Result<Self> {
        Self::new_with_init(cfg, conv_vb, norm_vb, ConvInit::MMCV)
    }

    /// [`ConvNormAct::new_with_paths`] whose parameters, when the `VarBuilder` creates them
    /// (a `VarMap`), start as `init` says; a checkpoint's `VarBuilder` ignores it.
    pub fn new_with_init(
        cfg: &ConvModuleConfig,
        conv_vb: VarBuilder<'_>,
        norm_vb: VarBuilder<'_>,
        init: ConvInit,
    ) -> Result<Self> {
        cfg.validate()?;
        crate::runtime::configure_cpu_threads();
        let k = cfg.kernel_size;
        let weight = conv_vb.get_with_hints(
            (cfg.out_channels, cfg.in_channels / cfg.groups, k, k),
            "weight",
            init.weight,
        )?;
        let bias = if cfg.bias {
            let fan_in = cfg.in_channels / cfg.groups * k * k;
            Some(conv_vb.get_with_hints(cfg.out_channels, "bias", init.bias(fan_in))?)
        } else {
            None
        };
        let c = cfg.out_channels;
        let nget = |name: &str| {
            norm_vb.get_with_hints(c, name, crate::init::norm_param(name, init.zero_norm))
        };
        let norm = match cfg.norm {
            None => None,
            Some(Norm::BatchNorm { eps, momentum }) => {
                let weight = nget("weight")?;
                let bias = nget("bias")?;
                let mean = nget("running_mean")?;
                let var = nget("running_var")?;
                // Training updates the running statistics in place (they share storage with
                // `mean` / `var`, e.g. a VarMap's variables), as PyTorch:
                // `r = (1 - momentum) r + momentum s`, with the unbiased batch variance.
                let bn = candle_nn::BatchNorm::new_with_momentum(
                    c,
                    mean.clone(),
                    var.clone(),
                    weight.clone(),
                    bias.clone(),
                    eps,
                    momentum,
                )?;
                Some(NormLayer::Batch {
                    bn,
                    weight,
                    bias,
                    mean,
                    var,
                    eps,
                })
            }
            Some(Norm::GroupNorm { groups, eps }) => {
                let (weight, bias) = (nget("weight")?, nget("bias")?);
                for t in [&weight, &bias] {
                    if t.dims() != [c] {
                        return Err(Error::shape("ConvModule gn", &[c], t.dims()));
                    }
                }
                Some(NormLayer::Group {
                    weight,
                    bias,
                    groups,
                    eps,
                })
            }
        };
        Ok(Self {
            cfg: cfg.clone(),
            weight,
            bias,
            norm,
            folded: OnceLock::new(),
            affine: OnceLock::new(),
        })
    }

    /// The configuration this block was built from.
    pub fn config(&self) -> &ConvModuleConfig {
        &self.cfg
    }

    /// The same block with another activation (e.g. none before a residual add).
    pub fn with_activation(mut self, act: Activation) -> Self {
        self.cfg.act = act;
        self
    }

    /// The raw convolution weight (`out x in/groups x k x k`).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Weight and bias with an inference BatchNorm folded in (cached after the first call,
    /// unless the weights are variables that training may still change).
    fn folded(&self) -> Result<std::borrow::Cow<'_, (Tensor, Option<Tensor>)>> {
        if let Some(f) = self.folded.get() {
            return Ok(std::borrow::Cow::Borrowed(f));
        }
        let f = self.fold()?;
        if self.weight.is_variable() {
            return Ok(std::borrow::Cow::Owned(f));
        }
        Ok(std::borrow::Cow::Borrowed(self.folded.get_or_init(|| f)))
    }

    fn fold(&self) -> Result<(Tensor, Option<Tensor>)> {
        let f = match &self.norm {
            Some(NormLayer::Batch {
                weight,
                bias,
                mean,
                var,
                eps,
                ..
            }) => {
                // scale = gamma / sqrt(var + eps); w' = w * scale; b' = (b - mean) * scale + beta
                let dt = self.weight.dtype();
                let scale = weight
                    .to_dtype(DType::F64)?
                    .broadcast_div(&(var.to_dtype(DType::F64)? + *eps)?.sqrt()?)?;
                let w = self
                    .weight
                    .to_dtype(DType::F64)?
                    .broadcast_mul(&scale.reshape((scale.elem_count(), 1, 1, 1))?)?
                    .to_dtype(dt)?;
                let b0 = match &self.bias {
                    Some(b) => b.to_dtype(DType::F64)?,
                    None => mean.zeros_like()?.to_dtype(DType::F64)?,
                };
                let b = ((b0 - mean.to_dtype(DType::F64)?)?.mul(&scale)?
                    + bias.to_dtype(DType::F64)?)?
                .to_dtype(dt)?;
                (w, Some(b))
            }
            _ => (self.weight.clone(), self.bias.clone()),
        };
        Ok(f)
    }

    /// Runs conv -> norm -> activation. `train` uses batch statistics for BatchNorm.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_act(x, train, self.cfg.act)
    }

    /// [`ConvNormAct::forward_t`] of the channel concatenation of `a` and `b`; in training with
    /// BatchNorm autograd keeps `a` and `b`, not the concatenation ([`ops::conv2d_cat`]).
    pub fn forward_cat_t(&self, a: &Tensor, b: &Tensor, train: bool) -> Result<Tensor> {
        let Some(NormLayer::Batch { bn, .. }) = self.norm.as_ref().filter(|_| train) else {
            return self.forward_t(&Tensor::cat(&[a, b], 1)?, train);
        };
        let (w, bias, p) = (&self.weight, self.bias.as_ref(), self.cfg.params());
        let y = ops::conv2d_cat(a, b, w, bias, p, Activation::None)?;
        ops::batch_norm_train(&y, bn, self.cfg.act)
    }
    /// [`ConvNormAct::forward_t`] with activation `act` instead of the configured one.
    fn forward_act(&self, x: &Tensor, train: bool, act: Activation) -> Result<Tensor> {
        let p = self.cfg.params();
        match (&self.norm, train) {
            (Some(NormLayer::Batch { .. }), false) => {
                if let Some(a) = self.affine()? {
                    let y = ops::conv2d_affine_cpu(x, &self.weight, &a.0, &a.1, p, act)?;
                    if let Some(y) = y {
                        return Ok(y);
                    }
                }
                let f = self.folded()?;
                ops::conv2d(x, &f.0, f.1.as_ref(), p, act)
            }
            (None, _) => {
                let f = self.folded()?;
                ops::conv2d(x, &f.0, f.1.as_ref(), p, act)
            }
            (Some(NormLayer::Batch { bn, .. }), true) => {
                ops::conv_bn_train(x, &self.weight, self.bias.as_ref(), bn, p, act)
            }
            (
                Some(NormLayer::Group {
                    weight,
                    bias,
                    groups,
                    eps,
                }),
                _,
            ) => {
                let y = ops::conv2d(x, &self.weight, self.bias.as_ref(), p, Activation::None)?;
                ops::group_norm(&y, *groups, weight, bias, *eps, act)
            }
        }
    }
}

/// Depthwise-separable ConvModule as mmcv's `DepthwiseSeparableConvModule`: a depthwise
/// `k x k` ConvModule (`depthwise_conv.*`) followed by a pointwise 1x1 ConvModule
/// (`pointwise_conv.*`), each with its own norm and activation.
#[derive(Debug)]
pub struct DepthwiseSeparableConvModule {
    depthwise: ConvNormAct,
    pointwise: ConvNormAct,
}

impl DepthwiseSeparableConvModule {
    /// Builds it from the depthwise conv's config (its `groups` and `out_channels` are forced to
    /// `in_channels`) and the pointwise output channels, norm and activation.
    pub fn new(
        depthwise: &ConvModuleConfig,
        out_channels: usize,
        pointwise_norm: Option<Norm>,
        pointwise_act: Activation,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let mut dw = depthwise.clone();
        dw.out_channels = dw.in_channels;
        dw.groups = dw.in_channels;
        let pw = ConvModuleConfig::new(dw.in_channels, out_channels, 1)
            .norm(pointwise_norm)
            .act(pointwise_act);
        Ok(Self {
            depthwise: ConvNormAct::new(&dw, vb.pp("depthwise_conv"))?,
            pointwise: ConvNormAct::new(&pw, vb.pp("pointwise_conv"))?,
        })
    }

    /// Depthwise then pointwise.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.depthwise.forward_t(x, train)?;
        self.pointwise.forward_t(&y, train)
    }
}
