//! WideResNet38-A2 (Wu, Shen, van den Hengel, "Wider or Deeper: Revisiting the ResNet Model for
//! Visual Recognition", 2016), the regular stream of Gated-SCNN, as the official code's
//! `network/wider_resnet.py` (`WiderResNetA2`, `wider_resnet38_a2(dilation=True)`,
//! nv-tlabs/GSCNN, itself from mapillary/inplace_abn) builds it.
//!
//! Pre-activation ("identity mapping") residual blocks, no biases anywhere:
//! `a = ReLU(BN(x))` (`bn1.0`), the residual branch `convs` runs on `a`, the shortcut is
//! `proj_conv(a)` (1x1, strided) when the shape changes and `x` otherwise; the block returns
//! the raw sum. Two-conv blocks: `convs.conv1` (3x3, strided) -> `convs.bn2.0` + ReLU ->
//! `convs.conv2` (3x3). Bottleneck blocks (mod6, mod7): `convs.conv1` (1x1, strided) ->
//! `convs.bn2.0` -> `convs.conv2` (3x3) -> `convs.bn3.0` -> `Dropout2d` (0.3 in mod6, 0.5 in
//! mod7) -> `convs.conv3` (1x1).
//!
//! | module | blocks | channels | input | stride (dilated) | dilation |
//! |---|---|---|---|---|---|
//! | `mod1` | 3x3 conv 3->64 | 64 | image | 1 | - |
//! | `mod2` | 3 | 128, 128 | `pool2`(m1), max-pool 3/2/1 | 2 | 1 |
//! | `mod3` | 3 | 256, 256 | `pool3`(m2) | 4 | 1 |
//! | `mod4` | 6 (first strided) | 512, 512 | m3 | 8 | 1 |
//! | `mod5` | 3 | 512, 1024 | m4 | 8 | 2 |
//! | `mod6` | 1 | 512, 1024, 2048 | m5 | 8 | 4 |
//! | `mod7` | 1 | 1024, 2048, 4096 | m6 | 8 | 4 |
//!
//! Without dilation the first blocks of mod4, mod5 and mod6 are strided (output stride 32).
//! The reference's `bn_out` and classifier are not part of this backbone (Gated-SCNN keeps only
//! `mod1`..`mod7`, `pool2`, `pool3`; m7 is the raw residual sum), so the keys are exactly those
//! of a Gated-SCNN checkpoint below its `module.` prefix: `mod1.conv1.weight`,
//! `mod2.block1.bn1.0.weight`, `mod2.block1.convs.conv1.weight`, `mod2.block1.proj_conv.weight`,
//! `mod7.block1.convs.bn3.0.running_var`, ...
//!
//! # Shapes
//! `N x 3 x H x W` -> m1..m7: `64 x H x W`, `128 x H/2`, `256 x H/4`, `512 x H/8`,
//! `1024 x H/8`, `2048 x H/8`, `4096 x H/8` (sizes as PyTorch's max-pool / strided conv
//! round them: `ceil(H / 2)` per step).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_backbones::{WideResNet, WideResNetConfig};
//! use segkit_core::Backbone;
//! let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
//! let net = WideResNet::new(&WideResNetConfig::wrn38_a2(), vb).unwrap();
//! assert_eq!(net.feature_specs()[6].channels, 4096);
//! let x = Tensor::zeros((1, 3, 17, 19), DType::F32, &Device::Cpu).unwrap();
//! let o = net.forward(&x, false).unwrap();
//! assert_eq!(o.m7.dims(), &[1, 4096, 3, 3]);
//! ```

use candle_core::Tensor;
use candle_nn::VarBuilder;
use segkit_core::nn::{BatchNormAct, ConvModuleConfig, ConvNormAct};
use segkit_core::ops::{self, Activation};
use segkit_core::{Backbone, FeatureSpec};

use crate::{Error, Result};

/// Configuration of a [`WideResNet`] (A2 variant).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WideResNetConfig {
    /// Residual blocks in mod2..mod7. WRN38: `[3, 3, 6, 3, 1, 1]`.
    pub structure: [usize; 6],
    /// Dilate mod5 (2) and mod6 / mod7 (4) instead of striding: output stride 8 (the
    /// reference's `dilation=True`, what Gated-SCNN uses); else output stride 32.
    pub dilation: bool,
    /// BatchNorm epsilon. Default 1e-5 (PyTorch's).
    pub bn_eps: f64,
}

impl WideResNetConfig {
    /// `wider_resnet38_a2(dilation=True)`: the Gated-SCNN regular stream, output stride 8.
    pub fn wrn38_a2() -> Self {
        Self {
            structure: [3, 3, 6, 3, 1, 1],
            dilation: true,
            bn_eps: 1e-5,
        }
    }

    /// Channels of each module's blocks (two entries: two 3x3 convs; three: bottleneck).
    const CHANNELS: [&'static [usize]; 6] = [
        &[128, 128],
        &[256, 256],
        &[512, 512],
        &[512, 1024],
        &[512, 1024, 2048],
        &[1024, 2048, 4096],
    ];

    /// (stride of the first block, dilation) of module `mod_id` (0 = mod2), as the reference.
    fn stride_dilation(&self, mod_id: usize) -> (usize, usize) {
        if self.dilation {
            let dil = match mod_id {
                3 => 2,
                4 | 5 => 4,
                _ => 1,
            };
            (if mod_id == 2 { 2 } else { 1 }, dil)
        } else {
            (if (2..=4).contains(&mod_id) { 2 } else { 1 }, 1)
        }
    }

    /// Channels and stride of m1..m7.
    pub fn feature_specs(&self) -> Vec<FeatureSpec> {
        let mut v = vec![FeatureSpec::new(64, 1)];
        let mut stride = 1;
        for (mod_id, ch) in Self::CHANNELS.iter().enumerate() {
            if mod_id < 2 {
                stride *= 2; // pool2, pool3
            }
            stride *= self.stride_dilation(mod_id).0;
            v.push(FeatureSpec::new(ch[ch.len() - 1], stride));
        }
        v
    }

    fn validate(&self) -> Result<()> {
        if self.structure.contains(&0) {
            return Err(Error::InvalidConfig(format!(
                "WideResNet structure needs at least one block per module, got {:?}",
                self.structure
            )));
        }
        if self.bn_eps.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Err(Error::InvalidConfig(format!(
                "WideResNet bn_eps must be positive, got {}",
                self.bn_eps
            )));
        }
        Ok(())
    }
}

impl Default for WideResNetConfig {
    fn default() -> Self {
        Self::wrn38_a2()
    }
}

/// The seven feature maps of a [`WideResNet`] (m7 is the raw residual sum, no `bn_out`).
#[derive(Debug, Clone)]
pub struct WideResNetOutput {
    /// `mod1`: 64 channels, stride 1.
    pub m1: Tensor,
    /// `mod2`: 128 channels, stride 2.
    pub m2: Tensor,
    /// `mod3`: 256 channels, stride 4.
    pub m3: Tensor,
    /// `mod4`: 512 channels, stride 8.
    pub m4: Tensor,
    /// `mod5`: 1024 channels.
    pub m5: Tensor,
    /// `mod6`: 2048 channels.
    pub m6: Tensor,
    /// `mod7`: 4096 channels.
    pub m7: Tensor,
}

impl WideResNetOutput {
    /// The maps as a vector, m1 first.
    pub fn into_vec(self) -> Vec<Tensor> {
        vec![
            self.m1, self.m2, self.m3, self.m4, self.m5, self.m6, self.m7,
        ]
    }
}

/// One `IdentityResidualBlock`.
struct Block {
    bn1: BatchNormAct,
    /// conv1 with bn2 + ReLU folded (inference) or applied (training).
    conv1: ConvNormAct,
    /// conv2 alone (two-conv block) or with bn3 + ReLU (bottleneck).
    conv2: ConvNormAct,
    /// Bottleneck: conv3 after the dropout.
    conv3: Option<ConvNormAct>,
    proj: Option<ConvNormAct>,
    dropout: f32,
}

impl Block {
    fn new(
        cfg: &WideResNetConfig,
        in_ch: usize,
        ch: &[usize],
        (stride, dil): (usize, usize),
        dropout: f32,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let bn = Some(segkit_core::nn::Norm::BatchNorm {
            eps: cfg.bn_eps,
            momentum: 0.1,
        });
        let c = vb.pp("convs");
        let plain =
            |i: usize, o: usize, k: usize| ConvModuleConfig::new(i, o, k).norm(None).bias(false);
        let bottleneck = ch.len() == 3;
        let (conv1, conv2, conv3) = if bottleneck {
            let c1 = ConvModuleConfig::new(in_ch, ch[0], 1)
                .stride(stride)
                .norm(bn);
            let c2 = ConvModuleConfig::new(ch[0], ch[1], 3)
                .dilation(dil)
                .norm(bn);
            let c3 = plain(ch[1], ch[2], 1).act(Activation::None);
            (
                ConvNormAct::new_with_paths(&c1, c.pp("conv1"), c.pp("bn2").pp(0))?,
                ConvNormAct::new_with_paths(&c2, c.pp("conv2"), c.pp("bn3").pp(0))?,
                Some(ConvNormAct::new_with_paths(
                    &c3,
                    c.pp("conv3"),
                    c.pp("none"),
                )?),
            )
        } else {
            let c1 = ConvModuleConfig::new(in_ch, ch[0], 3)
                .dilation(dil)
                .stride(stride)
                .norm(bn);
            let c2 = plain(ch[0], ch[1], 3).dilation(dil).act(Activation::None);
            (
                ConvNormAct::new_with_paths(&c1, c.pp("conv1"), c.pp("bn2").pp(0))?,
                ConvNormAct::new_with_paths(&c2, c.pp("conv2"), c.pp("none"))?,
                None,
            )
        };
        let out = ch[ch.len() - 1];
        let proj = if stride != 1 || in_ch != out {
            let p = plain(in_ch, out, 1).stride(stride).act(Activation::None);
            Some(ConvNormAct::new_with_paths(
                &p,
                vb.pp("proj_conv"),
                vb.pp("none"),
            )?)
        } else {
            None
        };
        Ok(Self {
            bn1: BatchNormAct::new(in_ch, cfg.bn_eps, Activation::Relu, vb.pp("bn1").pp(0))?,
            conv1,
            conv2,
            conv3,
            proj,
            dropout,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let a = self.bn1.forward_t(x, train)?;
        let shortcut = match &self.proj {
            Some(p) => p.forward_t(&a, train)?,
            None => x.clone(),
        };
        let h = self.conv1.forward_t(&a, train)?;
        let mut h = self.conv2.forward_t(&h, train)?;
        if let Some(c3) = &self.conv3 {
            h = segkit_core::ops::dropout2d(&h, self.dropout, train)?;
            h = c3.forward_t(&h, train)?;
        }
        // `h` is the last conv's fresh output: the sum goes into its buffer.
        ops::add_act_in_place(h, &shortcut, Activation::None)
    }
}

/// WideResNet-A2 returning m1..m7 (see the module docs).
pub struct WideResNet {
    cfg: WideResNetConfig,
    mod1: ConvNormAct,
    mods: Vec<Vec<Block>>,
}

impl WideResNet {
    /// Builds the network, loading every parameter from `vb` under the reference's key names.
    pub fn new(cfg: &WideResNetConfig, vb: VarBuilder<'_>) -> Result<Self> {
        cfg.validate()?;
        let m1 = ConvModuleConfig::new(3, 64, 3)
            .norm(None)
            .bias(false)
            .act(Activation::None);
        let mod1 = ConvNormAct::new_with_paths(&m1, vb.pp("mod1").pp("conv1"), vb.pp("none"))?;
        let mut in_ch = 64;
        let mut mods = Vec::with_capacity(6);
        for (mod_id, (&num, ch)) in cfg
            .structure
            .iter()
            .zip(WideResNetConfig::CHANNELS)
            .enumerate()
        {
            let (stride, dil) = cfg.stride_dilation(mod_id);
            let dropout = match mod_id {
                4 => 0.3,
                5 => 0.5,
                _ => 0.0,
            };
            let mvb = vb.pp(format!("mod{}", mod_id + 2));
            let mut blocks = Vec::with_capacity(num);
            for b in 0..num {
                let s = if b == 0 { stride } else { 1 };
                let bvb = mvb.pp(format!("block{}", b + 1));
                blocks.push(Block::new(cfg, in_ch, ch, (s, dil), dropout, bvb)?);
                in_ch = ch[ch.len() - 1];
            }
            mods.push(blocks);
        }
        Ok(Self {
            cfg: cfg.clone(),
            mod1,
            mods,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &WideResNetConfig {
        &self.cfg
    }

    /// Runs the network; `train` selects BatchNorm batch statistics and enables dropout.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<WideResNetOutput> {
        match x.dims() {
            [_, 3, h, w] if *h > 0 && *w > 0 => {}
            d => {
                return Err(segkit_core::Error::shape(
                    "WideResNet input (N x 3 x H x W)",
                    &[1, 3, 224, 224],
                    d,
                ))
            }
        }
        let mut y = self.mod1.forward_t(x, train)?;
        let mut outs = vec![y.clone()];
        for (mod_id, blocks) in self.mods.iter().enumerate() {
            if mod_id < 2 {
                y = ops::max_pool2d(&y, 3, 2, 1, false)?; // pool2, pool3
            }
            for b in blocks {
                y = b.forward(&y, train)?;
            }
            outs.push(y.clone());
        }
        let mut it = outs.into_iter();
        let mut next = || {
            it.next()
                .ok_or_else(|| Error::InvalidConfig("WideResNet has seven outputs".into()))
        };
        Ok(WideResNetOutput {
            m1: next()?,
            m2: next()?,
            m3: next()?,
            m4: next()?,
            m5: next()?,
            m6: next()?,
            m7: next()?,
        })
    }
}

impl Backbone for WideResNet {
    fn feature_specs(&self) -> Vec<FeatureSpec> {
        self.cfg.feature_specs()
    }

    fn feature_names(&self) -> Vec<String> {
        (1..=7).map(|i| format!("m{i}")).collect()
    }

    fn forward_features(&self, x: &Tensor, train: bool) -> segkit_core::Result<Vec<Tensor>> {
        Ok(self.forward(x, train)?.into_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn specs_follow_the_reference_strides() {
        let s = WideResNetConfig::wrn38_a2().feature_specs();
        let cs: Vec<_> = s.iter().map(|f| (f.channels, f.stride)).collect();
        assert_eq!(
            cs,
            [
                (64, 1),
                (128, 2),
                (256, 4),
                (512, 8),
                (1024, 8),
                (2048, 8),
                (4096, 8)
            ]
        );
        let cfg = WideResNetConfig {
            dilation: false,
            ..WideResNetConfig::wrn38_a2()
        };
        let st: Vec<_> = cfg.feature_specs().iter().map(|f| f.stride).collect();
        assert_eq!(st, [1, 2, 4, 8, 16, 32, 32]);
    }

    #[test]
    fn bad_input_and_config_are_errors() {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let mut cfg = WideResNetConfig::wrn38_a2();
        cfg.structure[2] = 0;
        assert!(WideResNet::new(&cfg, vb.clone()).is_err());
        let net = WideResNet::new(&WideResNetConfig::wrn38_a2(), vb).unwrap();
        let x = Tensor::zeros((1, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
        assert!(net.forward(&x, false).is_err());
    }
}
