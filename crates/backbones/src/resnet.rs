//! ResNet backbones: "Deep Residual Learning for Image Recognition" (He et al., 2016) and the
//! V1c / V1d variants of "Bag of Tricks for Image Classification" (He et al., 2019).
//!
//! Matches, key for key and number for number:
//! - torchvision `models/resnet.py` (`resnet18`..`resnet152`, V1b/V1.5: stride on the 3x3 conv);
//! - mmseg `models/backbones/resnet.py` (`ResNet`, `ResNetV1c` deep stem `stem.{0,1,3,4,6,7}`,
//!   `ResNetV1d` with average-pool shortcuts, `contract_dilation`, `multi_grid`);
//! - timm `models/resnet.py` (`resnet50d` etc.: deep stem `conv1.{0,1,3,4,6}` + `bn1`, average-pool
//!   shortcuts with timm's same-padded pool in dilated stages, `output_stride` 8 / 16).
//! - transformers `models/resnet/modeling_resnet.py` (`ResNetBackbone`: torchvision's network
//!   under the keys `embedder.embedder.*`, `encoder.stages.{s}.layers.{l}.{layer.{k},shortcut}.*`;
//!   [`KeyStyle::Hf`], as OneFormer's R50 checkpoints use it).
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
use segkit_core::nn::{ConvInit, ConvModuleConfig, ConvNormAct, Norm};
use segkit_core::ops::{self, Activation};
use segkit_core::{Backbone, FeatureSpec};

use crate::{Error, Result};

mod config;
pub use config::{KeyStyle, ResNetConfig, Stem};

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
        self.conv.forward_t(&x, train)
    }
}

struct Block {
    convs: Vec<ConvNormAct>,
    shortcut: Option<Shortcut>,
}

impl Block {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let identity = match &self.shortcut {
            Some(s) => s.forward(x, train)?,
            None => x.clone(),
        };
        let Some((last, first)) = self.convs.split_last() else {
            return ops::add_act(x, &identity, Activation::Relu);
        };
        let mut y = x.clone();
        for c in first {
            y = c.forward_t(&y, train)?;
        }
        // The last norm, the shortcut add and the ReLU in one op when training (the graph
        // keeps neither the normalised map nor the sum).
        last.forward_add_act(&y, &identity, Activation::Relu, train)
    }
}

struct StemLayers {
    convs: Vec<ConvNormAct>,
}

/// Where a block sits and its sizes.
struct BlockSpec {
    stage: usize,
    index: usize,
    inplanes: usize,
    planes: usize,
    expansion: usize,
    stride: usize,
    dilation: usize,
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
        let stem = Self::stem(cfg, &vb)?;
        let exp = if bottleneck { 4 } else { 1 };
        let mut inplanes = match cfg.stem {
            Stem::Standard => 64,
            Stem::Deep { width } => 2 * width,
        };
        let mut stages = Vec::with_capacity(4);
        for (si, &nb) in blocks.iter().enumerate() {
            let planes = cfg.base_channels << si;
            let mut stage = Vec::with_capacity(nb);
            for bi in 0..nb {
                let d = match cfg.multi_grid.as_ref().filter(|_| si == 3) {
                    Some(mg) => mg[bi],
                    None if bi == 0 && cfg.dilations[si] > 1 && cfg.contract_dilation => {
                        cfg.dilations[si] / 2
                    }
                    None => cfg.dilations[si],
                };
                let b = BlockSpec {
                    stage: si,
                    index: bi,
                    inplanes,
                    planes,
                    expansion: exp,
                    stride: if bi == 0 { cfg.strides[si] } else { 1 },
                    dilation: d,
                };
                stage.push(Self::block(cfg, &b, &vb)?);
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

    fn stem(cfg: &ResNetConfig, vb: &VarBuilder<'_>) -> Result<StemLayers> {
        let norm = bn(cfg.bn_eps);
        let convs = match cfg.stem {
            Stem::Standard => {
                let c = ConvModuleConfig::new(3, 64, 7)
                    .stride(2)
                    .padding(3)
                    .norm(norm)
                    .bias(false);
                let (cp, np) = match cfg.key_style {
                    KeyStyle::Hf => (
                        "embedder.embedder.convolution",
                        "embedder.embedder.normalization",
                    ),
                    _ => ("conv1", "bn1"),
                };
                vec![ConvNormAct::new_with_paths(&c, vb.pp(cp), vb.pp(np))?]
            }
            Stem::Deep { width } => {
                let chans = [(3, width, 2), (width, width, 1), (width, 2 * width, 1)];
                let paths = match cfg.key_style {
                    KeyStyle::Mmseg => [
                        ("stem.0", "stem.1"),
                        ("stem.3", "stem.4"),
                        ("stem.6", "stem.7"),
                    ],
                    _ => [
                        ("conv1.0", "conv1.1"),
                        ("conv1.3", "conv1.4"),
                        ("conv1.6", "bn1"),
                    ],
                };
                let mut convs = Vec::with_capacity(3);
                for ((cin, cout, s), (cp, np)) in chans.into_iter().zip(paths) {
                    let c = ConvModuleConfig::new(cin, cout, 3)
                        .stride(s)
                        .norm(norm)
                        .bias(false);
                    convs.push(ConvNormAct::new_with_paths(&c, vb.pp(cp), vb.pp(np))?);
                }
                convs
            }
        };
        Ok(StemLayers { convs })
    }

    fn block(cfg: &ResNetConfig, b: &BlockSpec, vb: &VarBuilder<'_>) -> Result<Block> {
        let (_, bottleneck) = cfg.layout()?;
        let norm = bn(cfg.bn_eps);
        let (s, d, planes) = (b.stride, b.dilation, b.planes);
        // Initialisation (a `VarMap`): Kaiming-normal fan_out convs and norms 1 / 0 in every
        // layout; mmseg (`zero_init_residual=True`) and timm (`zero_init_last=True`) start
        // the last norm of each block at 0, torchvision and HF at 1.
        let last = if bottleneck { 3 } else { 2 };
        let zero_last = matches!(cfg.key_style, KeyStyle::Mmseg | KeyStyle::Timm);
        let conv = |cin, cout, k, s, dil: usize, i: usize| -> Result<ConvNormAct> {
            let c = ConvModuleConfig::new(cin, cout, k)
                .stride(s)
                .dilation(dil)
                .norm(norm)
                .bias(false);
            let (cp, np) = cfg.key_style.block_conv_paths(b.stage, b.index, i);
            let init = if zero_last && i == last {
                ConvInit::MMCV.zero_norm()
            } else {
                ConvInit::MMCV
            };
            ConvNormAct::new_with_init(&c, vb.pp(cp), vb.pp(np), init)
        };
        let mut convs = Vec::with_capacity(3);
        if bottleneck {
            convs.push(conv(b.inplanes, planes, 1, 1, 1, 1)?);
            convs.push(conv(planes, planes, 3, s, d, 2)?);
            convs.push(
                conv(planes, planes * b.expansion, 1, 1, 1, 3)?.with_activation(Activation::None),
            );
        } else {
            // mmseg's BasicBlock dilates only its first conv; timm dilates both.
            let d2 = match cfg.key_style {
                KeyStyle::Timm => cfg.dilations[b.stage],
                _ => 1,
            };
            convs.push(conv(b.inplanes, planes, 3, s, d, 1)?);
            convs.push(conv(planes, planes, 3, 1, d2, 2)?.with_activation(Activation::None));
        }
        let shortcut = if b.index == 0 && (s != 1 || b.inplanes != planes * b.expansion) {
            Some(Self::shortcut(cfg, b, vb)?)
        } else {
            None
        };
        Ok(Block { convs, shortcut })
    }

    fn shortcut(cfg: &ResNetConfig, b: &BlockSpec, vb: &VarBuilder<'_>) -> Result<Shortcut> {
        let (s, dilation) = (b.stride, cfg.dilations[b.stage]);
        let (pool, conv_stride) = if cfg.avg_down {
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
            (pool, 1)
        } else {
            (ShortcutPool::None, s)
        };
        let c = ConvModuleConfig::new(b.inplanes, b.planes * b.expansion, 1)
            .stride(conv_stride)
            .norm(bn(cfg.bn_eps))
            .bias(false)
            .act(Activation::None);
        let (cp, np) = cfg.key_style.shortcut_paths(b.stage, b.index, cfg.avg_down);
        Ok(Shortcut {
            pool,
            conv: ConvNormAct::new_with_paths(&c, vb.pp(cp), vb.pp(np))?,
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
        let [c2, c3, c4, c5] = self.run(x, train, [true; 4])?;
        let stage = |t: Option<Tensor>| {
            t.ok_or_else(|| Error::InvalidConfig("ResNet has four stages".into()))
        };
        Ok(ResNetOutput {
            c2: stage(c2)?,
            c3: stage(c3)?,
            c4: stage(c4)?,
            c5: stage(c5)?,
        })
    }

    /// The network up to the last stage that `keep` asks for, returning the outputs of the
    /// stages it asks for: a stage's output that nobody asked for is dropped as soon as the
    /// next stage has read it, and no stage runs past the last one asked for.
    fn run(&self, x: &Tensor, train: bool, keep: [bool; 4]) -> Result<[Option<Tensor>; 4]> {
        let (_, c, h, w) = x.dims4().map_err(|_| {
            segkit_core::Error::shape("ResNet input (N x 3 x H x W)", &[1, 3, 224, 224], x.dims())
        })?;
        if c != 3 || h == 0 || w == 0 {
            return Err(segkit_core::Error::shape(
                "ResNet input channels",
                &[3],
                &[c],
            ));
        }
        let mut outs: [Option<Tensor>; 4] = Default::default();
        let Some(last) = keep.iter().rposition(|&k| k) else {
            return Ok(outs);
        };
        let t = self.stage_train(0, train);
        let mut y = x.clone();
        for conv in &self.stem.convs {
            y = conv.forward_t(&y, t)?;
        }
        y = ops::max_pool2d(&y, 3, 2, 1, false)?;
        if self.cfg.frozen_stages >= 0 && train {
            y = y.detach();
        }
        for (i, stage) in self.stages.iter().enumerate().take(last + 1) {
            let t = self.stage_train(i as i32 + 1, train);
            for block in stage {
                y = block.forward(&y, t)?;
            }
            if train && (i as i32 + 1) <= self.cfg.frozen_stages {
                y = y.detach();
            }
            if keep[i] {
                outs[i] = Some(y.clone());
            }
        }
        Ok(outs)
    }
}

impl Backbone for ResNet {
    fn feature_specs(&self) -> Vec<FeatureSpec> {
        self.specs.clone()
    }

    fn feature_names(&self) -> Vec<String> {
        let names = ["c2", "c3", "c4", "c5"];
        self.cfg
            .out_indices
            .iter()
            .map(|&i| names[i].to_string())
            .collect()
    }

    /// The outputs of the stages in [`ResNetConfig::out_indices`]; the other stages' outputs
    /// are dropped as the network goes, and the stages past the last index do not run.
    fn forward_features(&self, x: &Tensor, train: bool) -> segkit_core::Result<Vec<Tensor>> {
        let mut keep = [false; 4];
        for &i in &self.cfg.out_indices {
            if let Some(k) = keep.get_mut(i) {
                *k = true;
            }
        }
        let all = self.run(x, train, keep)?;
        Ok(self
            .cfg
            .out_indices
            .iter()
            .filter_map(|&i| all.get(i).cloned().flatten())
            .collect())
    }
}

/// The configuration and the output specs (the weights are not printed).
impl std::fmt::Debug for ResNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResNet")
            .field("config", &self.cfg)
            .field("feature_specs", &segkit_core::Backbone::feature_specs(self))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use segkit_core::testing::{synthetic_input, synthetic_var_builder};
    use segkit_core::Backbone;

    use super::{ResNet, ResNetConfig};

    /// `forward_features` returns, for any `out_indices`, exactly the stages `forward` returns
    /// (it only drops the others early and stops after the last one asked for). Synthetic
    /// weights depend on the key alone, so every network here has the same weights.
    #[test]
    fn forward_features_returns_the_stages_forward_computes() {
        let base = ResNetConfig {
            base_channels: 8,
            ..ResNetConfig::mmseg_v1c(18)
        };
        let x = synthetic_input("x", (1, 3, 48, 40), &Device::Cpu).unwrap();
        let full = ResNet::new(&base, synthetic_var_builder(DType::F32, &Device::Cpu))
            .unwrap()
            .forward(&x, false)
            .unwrap()
            .into_vec();
        for idx in [vec![0], vec![3], vec![1, 3], vec![0, 2], vec![0, 1, 2, 3]] {
            let cfg = base.clone().with_out_indices(&idx);
            let net = ResNet::new(&cfg, synthetic_var_builder(DType::F32, &Device::Cpu)).unwrap();
            let got = net.forward_features(&x, false).unwrap();
            assert_eq!(got.len(), idx.len(), "{idx:?}");
            let values =
                |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (g, &i) in got.iter().zip(&idx) {
                assert_eq!(g.dims(), full[i].dims(), "{idx:?} stage {i}");
                assert!(values(g) == values(&full[i]), "{idx:?} stage {i}");
            }
        }
    }
}
