//! ResNet backbones: "Deep Residual Learning for Image Recognition" (He et al., 2016) and the
//! V1c / V1d variants of "Bag of Tricks for Image Classification" (He et al., 2019).
//!
//! Matches, key for key and number for number:
//! - torchvision `models/resnet.py` (`resnet18`..`resnet152`, V1b/V1.5: stride on the 3x3 conv);
//! - mmseg `models/backbones/resnet.py` (`ResNet`, `ResNetV1c` deep stem `stem.{0,1,3,4,6,7}`,
//!   `ResNetV1d` with average-pool shortcuts, `contract_dilation`, `multi_grid`);
//! - timm `models/resnet.py` (`resnet50d` etc.: deep stem `conv1.{0,1,3,4,6}` + `bn1`, average-pool
//!   shortcuts with timm's same-padded pool in dilated stages, `output_stride` 8 / 16).
//!
//! Dilated networks for segmentation replace the strides of the last stages by dilation:
//! output stride 8 = strides (1, 2, 1, 1), dilations (1, 1, 2, 4); output stride 16 = strides
//! (1, 2, 2, 1), dilations (1, 1, 1, 2). With `contract_dilation` the first block of a dilated
//! stage uses half the dilation (mmseg; timm and torchvision do the same implicitly).
//!
//! # Shapes
//! Input `N x 3 x H x W`. Outputs C2..C5 at strides 4, 8, 16, 32 (less when dilated), with
//! 256 / 512 / 1024 / 2048 channels (bottleneck) or 64 / 128 / 256 / 512 (basic blocks). Odd sizes
//! follow PyTorch's rounding (`floor((H + 2p - k) / s) + 1` at each strided layer).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_backbones::{ResNet, ResNetConfig};
//! use segkit_core::Backbone;
//! let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
//! let net = ResNet::new(&ResNetConfig::torchvision(18), vb).unwrap();
//! let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
//! let out = net.forward(&x, false).unwrap();
//! assert_eq!(out.c5.dims(), &[1, 512, 2, 2]);
//! assert_eq!(net.feature_specs()[3].stride, 32);
//! ```

use candle_core::Tensor;
use candle_nn::VarBuilder;
use segkit_core::nn::{ConvModuleConfig, ConvNormAct, Norm};
use segkit_core::ops::{self, Activation};
use segkit_core::{Backbone, FeatureSpec};

use crate::{Error, Result};

/// The stem (the layers before the first stage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type")]
pub enum Stem {
    /// One 7x7 stride-2 conv with 64 channels (torchvision, V1b).
    Standard,
    /// Three 3x3 convs `3 -> width -> width -> 2 * width` (V1c / V1d "deep stem").
    /// mmseg's `stem_channels = 64` is `width = 32`; timm's `stem_width = 32` likewise.
    Deep {
        /// Width of the first two convs (the stem outputs twice this).
        width: usize,
    },
}

/// Whose state-dict layout (and shortcut-pooling convention) to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KeyStyle {
    /// torchvision: `conv1`, `bn1`, `layerN.i.downsample.{0,1}`. Standard stem only.
    Torchvision,
    /// timm: deep stem `conv1.{0,1,3,4,6}` + `bn1`; average-pool shortcut
    /// `downsample.{1,2}` with a 2x2 pool (same-padded with stride 1 in dilated stages).
    Timm,
    /// mmseg: deep stem `stem.{0,1,3,4,6,7}`; average-pool shortcut `downsample.{1,2}` with a
    /// `stride x stride` pool.
    Mmseg,
}

/// Configuration of a [`ResNet`]. Fields missing from a JSON config take torchvision
/// ResNet-50's values ([`ResNetConfig::default`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResNetConfig {
    /// Depth: 18 or 34 (basic blocks), 50, 101 or 152 (bottlenecks).
    pub depth: usize,
    /// The stem.
    pub stem: Stem,
    /// Average-pool + 1x1 conv shortcuts instead of strided 1x1 convs (V1d). Default false.
    pub avg_down: bool,
    /// Key naming and shortcut-pool convention of the reference.
    pub key_style: KeyStyle,
    /// Stride of each of the four stages. Default (1, 2, 2, 2).
    pub strides: [usize; 4],
    /// Dilation of each of the four stages. Default (1, 1, 1, 1).
    pub dilations: [usize; 4],
    /// First block of a dilated stage uses half the dilation (mmseg `contract_dilation`).
    pub contract_dilation: bool,
    /// Absolute dilations of the last stage's blocks (DANet's multi-grid, e.g. (4, 8, 16)).
    pub multi_grid: Option<Vec<usize>>,
    /// Stages kept frozen: -1 none, 0 the stem, k the stem and stages 1..=k (BatchNorm in eval
    /// mode and no gradient there, as mmseg's `frozen_stages`).
    pub frozen_stages: i32,
    /// Keep every BatchNorm in eval mode even in training (mmseg `norm_eval`).
    pub norm_eval: bool,
    /// BatchNorm epsilon. Default 1e-5.
    pub bn_eps: f64,
    /// Width of the first stage (mmseg `base_channels`): stage `i` has `base_channels * 2^i`
    /// planes (times 4 at a bottleneck's output). Default 64, every published ResNet; smaller
    /// values make narrow networks (segkit's demo model uses 16).
    pub base_channels: usize,
}

impl Default for ResNetConfig {
    /// torchvision's ResNet-50.
    fn default() -> Self {
        Self::torchvision(50)
    }
}

impl ResNetConfig {
    /// torchvision's `resnet{depth}`.
    pub fn torchvision(depth: usize) -> Self {
        Self {
            depth,
            stem: Stem::Standard,
            avg_down: false,
            key_style: KeyStyle::Torchvision,
            strides: [1, 2, 2, 2],
            dilations: [1, 1, 1, 1],
            contract_dilation: true,
            multi_grid: None,
            frozen_stages: -1,
            norm_eval: false,
            bn_eps: 1e-5,
            base_channels: 64,
        }
    }

    /// timm's `resnet{depth}d` (deep stem of width 32, average-pool shortcuts) at
    /// `output_stride` 8, 16 or 32.
    pub fn timm_d(depth: usize, output_stride: usize) -> Result<Self> {
        Self {
            stem: Stem::Deep { width: 32 },
            avg_down: true,
            key_style: KeyStyle::Timm,
            ..Self::torchvision(depth)
        }
        .with_output_stride(output_stride)
    }

    /// mmseg's `ResNetV1c` (deep stem, `stem_channels = 64`) as the `*-d8` segmentation
    /// configs use it: strides (1, 2, 1, 1), dilations (1, 1, 2, 4), contracted dilation.
    pub fn mmseg_v1c(depth: usize) -> Self {
        Self {
            stem: Stem::Deep { width: 32 },
            key_style: KeyStyle::Mmseg,
            strides: [1, 2, 1, 1],
            dilations: [1, 1, 2, 4],
            contract_dilation: true,
            ..Self::torchvision(depth)
        }
    }

    /// mmseg's `ResNetV1d` (deep stem and average-pool shortcuts), output stride 8.
    pub fn mmseg_v1d(depth: usize) -> Self {
        Self {
            avg_down: true,
            ..Self::mmseg_v1c(depth)
        }
    }

    /// Sets strides and dilations for output stride 8, 16 or 32 (dilation replaces the
    /// stride of the last stages).
    pub fn with_output_stride(mut self, output_stride: usize) -> Result<Self> {
        (self.strides, self.dilations) = match output_stride {
            8 => ([1, 2, 1, 1], [1, 1, 2, 4]),
            16 => ([1, 2, 2, 1], [1, 1, 1, 2]),
            32 => ([1, 2, 2, 2], [1, 1, 1, 1]),
            o => {
                return Err(Error::InvalidConfig(format!(
                    "output stride must be 8, 16 or 32, got {o}"
                )))
            }
        };
        Ok(self)
    }

    /// Number of blocks per stage and whether they are bottlenecks.
    pub fn layout(&self) -> Result<([usize; 4], bool)> {
        Ok(match self.depth {
            18 => ([2, 2, 2, 2], false),
            34 => ([3, 4, 6, 3], false),
            50 => ([3, 4, 6, 3], true),
            101 => ([3, 4, 23, 3], true),
            152 => ([3, 8, 36, 3], true),
            d => {
                return Err(Error::InvalidConfig(format!(
                    "ResNet depth must be one of 18, 34, 50, 101, 152, got {d}"
                )))
            }
        })
    }

    fn validate(&self) -> Result<()> {
        let (blocks, _) = self.layout()?;
        if self.base_channels == 0 {
            return Err(Error::InvalidConfig(
                "ResNet base_channels must be positive".into(),
            ));
        }
        if self.strides.contains(&0) || self.dilations.contains(&0) {
            return Err(Error::InvalidConfig(
                "ResNet strides and dilations must be positive".into(),
            ));
        }
        if let (Stem::Deep { .. }, KeyStyle::Torchvision) = (self.stem, self.key_style) {
            return Err(Error::InvalidConfig(
                "torchvision key style has no deep stem; use KeyStyle::Mmseg or KeyStyle::Timm"
                    .into(),
            ));
        }
        if let Stem::Deep { width: 0 } = self.stem {
            return Err(Error::InvalidConfig(
                "deep stem width must be positive".into(),
            ));
        }
        if let Some(mg) = &self.multi_grid {
            if mg.len() != blocks[3] || mg.contains(&0) {
                return Err(Error::InvalidConfig(format!(
                    "multi_grid needs {} positive dilations (one per block of the last stage), got {mg:?}",
                    blocks[3]
                )));
            }
        }
        if self.frozen_stages > 4 || self.frozen_stages < -1 {
            return Err(Error::InvalidConfig(format!(
                "frozen_stages must be in -1..=4, got {}",
                self.frozen_stages
            )));
        }
        Ok(())
    }

    /// Channels and strides of C2..C5 for this configuration.
    pub fn feature_specs(&self) -> Result<Vec<FeatureSpec>> {
        let (_, bottleneck) = self.layout()?;
        let exp = if bottleneck { 4 } else { 1 };
        let mut stride = 4;
        Ok((0..4)
            .map(|i| {
                stride *= self.strides[i];
                FeatureSpec::new(self.base_channels * (1 << i) * exp, stride)
            })
            .collect())
    }
}

fn bn(eps: f64) -> Option<Norm> {
    Some(Norm::BatchNorm { eps, momentum: 0.1 })
}

/// How the shortcut of a block's first layer pools before its 1x1 conv.
#[derive(Debug, Clone, Copy)]
enum ShortcutPool {
    None,
    /// `AvgPool2d(k, s, ceil_mode=True, count_include_pad=False)`.
    Avg {
        kernel: usize,
        stride: usize,
    },
    /// timm's `AvgPool2dSame(2, 1)`: zero-pad one row/column at the end, then a 2x2 mean.
    AvgSame,
}

struct Shortcut {
    pool: ShortcutPool,
    conv: ConvNormAct,
}

impl Shortcut {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = match self.pool {
            ShortcutPool::None => x.clone(),
            ShortcutPool::Avg { kernel: 1, .. } => x.clone(),
            ShortcutPool::Avg { kernel, stride } => {
                ops::avg_pool2d(x, kernel, stride, 0, true, false)?
            }
            ShortcutPool::AvgSame => {
                let x = x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?;
                ops::avg_pool2d(&x, 2, 1, 0, true, false)?
            }
        };
        Ok(self.conv.forward_t(&x, train)?)
    }
}

struct Block {
    convs: Vec<ConvNormAct>,
    shortcut: Option<Shortcut>,
}

impl Block {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        for c in &self.convs {
            y = c.forward_t(&y, train)?;
        }
        let identity = match &self.shortcut {
            Some(s) => s.forward(x, train)?,
            None => x.clone(),
        };
        Ok(ops::add_act(&y, &identity, Activation::Relu)?)
    }
}

struct StemLayers {
    convs: Vec<ConvNormAct>,
}

/// The four feature maps of a ResNet.
#[derive(Debug, Clone)]
pub struct ResNetOutput {
    /// Stage 1 output (stride 4).
    pub c2: Tensor,
    /// Stage 2 output.
    pub c3: Tensor,
    /// Stage 3 output.
    pub c4: Tensor,
    /// Stage 4 output.
    pub c5: Tensor,
}

impl ResNetOutput {
    /// The maps as a vector, C2 first.
    pub fn into_vec(self) -> Vec<Tensor> {
        vec![self.c2, self.c3, self.c4, self.c5]
    }
}

/// A ResNet backbone returning C2..C5 (no classifier).
pub struct ResNet {
    cfg: ResNetConfig,
    stem: StemLayers,
    stages: Vec<Vec<Block>>,
    specs: Vec<FeatureSpec>,
}

impl ResNet {
    /// Builds the network, loading every parameter from `vb` under the reference's key names.
    pub fn new(cfg: &ResNetConfig, vb: VarBuilder<'_>) -> Result<Self> {
        cfg.validate()?;
        let (blocks, bottleneck) = cfg.layout()?;
        let norm = bn(cfg.bn_eps);
        let stem = match cfg.stem {
            Stem::Standard => {
                let c = ConvModuleConfig::new(3, 64, 7)
                    .stride(2)
                    .padding(3)
                    .norm(norm)
                    .bias(false);
                StemLayers {
                    convs: vec![ConvNormAct::new_with_paths(
                        &c,
                        vb.pp("conv1"),
                        vb.pp("bn1"),
                    )?],
                }
            }
            Stem::Deep { width } => {
                let chans = [(3, width, 2), (width, width, 1), (width, 2 * width, 1)];
                let paths: [(String, String); 3] = match cfg.key_style {
                    KeyStyle::Mmseg => [
                        ("stem.0".into(), "stem.1".into()),
                        ("stem.3".into(), "stem.4".into()),
                        ("stem.6".into(), "stem.7".into()),
                    ],
                    _ => [
                        ("conv1.0".into(), "conv1.1".into()),
                        ("conv1.3".into(), "conv1.4".into()),
                        ("conv1.6".into(), "bn1".into()),
                    ],
                };
                let mut convs = Vec::with_capacity(3);
                for ((cin, cout, s), (cp, np)) in chans.into_iter().zip(paths.iter()) {
                    let c = ConvModuleConfig::new(cin, cout, 3)
                        .stride(s)
                        .norm(norm)
                        .bias(false);
                    convs.push(ConvNormAct::new_with_paths(&c, vb.pp(cp), vb.pp(np))?);
                }
                StemLayers { convs }
            }
        };
        let exp = if bottleneck { 4 } else { 1 };
        let mut inplanes = match cfg.stem {
            Stem::Standard => 64,
            Stem::Deep { width } => 2 * width,
        };
        let mut stages = Vec::with_capacity(4);
        for (si, &nb) in blocks.iter().enumerate() {
            let planes = cfg.base_channels << si;
            let stride = cfg.strides[si];
            let dilation = cfg.dilations[si];
            let multi_grid = if si == 3 {
                cfg.multi_grid.as_ref()
            } else {
                None
            };
            let svb = vb.pp(format!("layer{}", si + 1));
            let mut stage = Vec::with_capacity(nb);
            for bi in 0..nb {
                let d = match multi_grid {
                    Some(mg) => mg[bi],
                    None if bi == 0 && dilation > 1 && cfg.contract_dilation => dilation / 2,
                    None => dilation,
                };
                let s = if bi == 0 { stride } else { 1 };
                let bvb = svb.pp(bi);
                let mut convs = Vec::with_capacity(3);
                let conv = |cin, cout, k, s, dil: usize, i: usize| -> Result<ConvNormAct> {
                    let c = ConvModuleConfig::new(cin, cout, k)
                        .stride(s)
                        .dilation(dil)
                        .norm(norm)
                        .bias(false);
                    Ok(ConvNormAct::new_with_paths(
                        &c,
                        bvb.pp(format!("conv{i}")),
                        bvb.pp(format!("bn{i}")),
                    )?)
                };
                if bottleneck {
                    convs.push(conv(inplanes, planes, 1, 1, 1, 1)?);
                    convs.push(conv(planes, planes, 3, s, d, 2)?);
                    let mut last = conv(planes, planes * exp, 1, 1, 1, 3)?;
                    last = last.with_activation(Activation::None);
                    convs.push(last);
                } else {
                    // mmseg's BasicBlock dilates only its first conv; timm dilates both.
                    let d2 = match cfg.key_style {
                        KeyStyle::Timm => dilation,
                        _ => 1,
                    };
                    convs.push(conv(inplanes, planes, 3, s, d, 1)?);
                    convs
                        .push(conv(planes, planes, 3, 1, d2, 2)?.with_activation(Activation::None));
                }
                let shortcut = if bi == 0 && (s != 1 || inplanes != planes * exp) {
                    let dvb = bvb.pp("downsample");
                    let (pool, conv_stride, ci, ni) = if cfg.avg_down {
                        let pool = match cfg.key_style {
                            KeyStyle::Timm if s == 1 && dilation == 1 => ShortcutPool::None,
                            KeyStyle::Timm if dilation > 1 => ShortcutPool::AvgSame,
                            KeyStyle::Timm => ShortcutPool::Avg {
                                kernel: 2,
                                stride: s,
                            },
                            _ => ShortcutPool::Avg {
                                kernel: s,
                                stride: s,
                            },
                        };
                        (pool, 1, 1, 2)
                    } else {
                        (ShortcutPool::None, s, 0, 1)
                    };
                    let c = ConvModuleConfig::new(inplanes, planes * exp, 1)
                        .stride(conv_stride)
                        .norm(norm)
                        .bias(false)
                        .act(Activation::None);
                    Some(Shortcut {
                        pool,
                        conv: ConvNormAct::new_with_paths(&c, dvb.pp(ci), dvb.pp(ni))?,
                    })
                } else {
                    None
                };
                stage.push(Block { convs, shortcut });
                inplanes = planes * exp;
            }
            stages.push(stage);
        }
        Ok(Self {
            cfg: cfg.clone(),
            stem,
            stages,
            specs: cfg.feature_specs()?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ResNetConfig {
        &self.cfg
    }

    fn stage_train(&self, stage: i32, train: bool) -> bool {
        train && !self.cfg.norm_eval && stage > self.cfg.frozen_stages
    }

    /// Runs the network; `train` selects batch statistics for BatchNorm outside frozen stages.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<ResNetOutput> {
        let (_, c, h, w) = x.dims4().map_err(|_| {
            segkit_core::Error::shape("ResNet input (N x 3 x H x W)", &[1, 3, 224, 224], x.dims())
        })?;
        if c != 3 || h == 0 || w == 0 {
            return Err(segkit_core::Error::shape("ResNet input channels", &[3], &[c]).into());
        }
        let t = self.stage_train(0, train);
        let mut y = x.clone();
        for conv in &self.stem.convs {
            y = conv.forward_t(&y, t)?;
        }
        y = ops::max_pool2d(&y, 3, 2, 1, false)?;
        if self.cfg.frozen_stages >= 0 && train {
            y = y.detach();
        }
        let mut outs = Vec::with_capacity(4);
        for (i, stage) in self.stages.iter().enumerate() {
            let t = self.stage_train(i as i32 + 1, train);
            for block in stage {
                y = block.forward(&y, t)?;
            }
            if train && (i as i32 + 1) <= self.cfg.frozen_stages {
                y = y.detach();
            }
            outs.push(y.clone());
        }
        let mut it = outs.into_iter();
        let mut next = || {
            it.next()
                .ok_or_else(|| Error::InvalidConfig("ResNet has four stages".into()))
        };
        Ok(ResNetOutput {
            c2: next()?,
            c3: next()?,
            c4: next()?,
            c5: next()?,
        })
    }
}

impl Backbone for ResNet {
    fn feature_specs(&self) -> Vec<FeatureSpec> {
        self.specs.clone()
    }

    fn feature_names(&self) -> Vec<String> {
        ["c2", "c3", "c4", "c5"].map(String::from).to_vec()
    }

    fn forward_features(&self, x: &Tensor, train: bool) -> segkit_core::Result<Vec<Tensor>> {
        Ok(self.forward(x, train)?.into_vec())
    }
}
