//! Gated-SCNN's ASPP with an edge branch and its DeepLabV3+-style decoder, as the official
//! `network/gscnn.py` (`_AtrousSpatialPyramidPoolingModule`, `GSCNN.bot_*` / `final_seg`,
//! nv-tlabs/GSCNN) builds them.
//!
//! ASPP on the deepest map `x` (`C` channels): image pooling (global average pool ->
//! `img_conv` = 1x1 conv without bias, BN, ReLU -> bilinear upsample with
//! `align_corners=True`), the edge branch (the fused edge map `acts` resized to `x`'s size
//! with `align_corners=True` -> `edge_conv` = 1x1 conv 1 -> 256, BN, ReLU), then
//! `features.0` (1x1) and `features.{1,2,3}` (3x3 with dilation = padding = 12 / 24 / 36 at
//! output stride 8), each conv without bias + BN + ReLU; concatenated in that order (1536
//! channels; 1280 without the edge branch).
//!
//! Decoder: `bot_aspp` (1x1, no bias, no BN) on the ASPP output, upsampled to the fine map's
//! size (`align_corners=True`), after `bot_fine` (1x1 -> 48, no bias) on the fine map;
//! `final_seg` = 3x3 conv + BN + ReLU (`final_seg.0`, `.1`), 3x3 conv + BN + ReLU (`.3`,
//! `.4`), 1x1 conv to the classes without bias (`.6`).
//!
//! # Shapes
//! ASPP: `N x C x h x w` (+ `N x 1 x H x W` edge map) -> `N x (5 or 6) * 256 x h x w`.
//! Decoder: that and the fine map `N x C_f x h_f x w_f` -> `N x K x h_f x w_f`.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use segkit_core::nn::{ConvModuleConfig, ConvNormAct, Norm};
use segkit_core::ops::{self, Activation};

use super::shape_stream::upsample;
use crate::Result;

/// The ASPP with optional edge branch (see the module docs).
pub struct GscnnAspp {
    img_conv: ConvNormAct,
    edge_conv: Option<ConvNormAct>,
    features: Vec<ConvNormAct>,
}

impl GscnnAspp {
    /// ASPP over `in_channels`, `channels` per branch, 3x3 branches at `rates`, the edge
    /// branch when `edge` is set.
    pub fn new(
        in_channels: usize,
        channels: usize,
        rates: &[usize],
        edge: bool,
        norm: Norm,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let module = |i: usize, k: usize, vb: VarBuilder<'_>| -> Result<ConvNormAct> {
            let cfg = ConvModuleConfig::new(i, channels, k).norm(Some(norm));
            ConvNormAct::new_with_paths(&cfg, vb.pp(0), vb.pp(1))
        };
        let f = vb.pp("features");
        let mut features = vec![module(in_channels, 1, f.pp(0))?];
        for (j, &r) in rates.iter().enumerate() {
            let cfg = ConvModuleConfig::new(in_channels, channels, 3)
                .dilation(r)
                .norm(Some(norm));
            let b = f.pp(j + 1);
            features.push(ConvNormAct::new_with_paths(&cfg, b.pp(0), b.pp(1))?);
        }
        Ok(Self {
            img_conv: module(in_channels, 1, vb.pp("img_conv"))?,
            edge_conv: if edge {
                Some(module(1, 1, vb.pp("edge_conv"))?)
            } else {
                None
            },
            features,
        })
    }

    /// Channels of the concatenated output.
    pub fn out_channels(&self) -> usize {
        let c = self.img_conv.config().out_channels;
        c * (1 + self.features.len() + usize::from(self.edge_conv.is_some()))
    }

    /// Runs the ASPP on `x`; `edge` (the fused `N x 1 x H x W` edge map) is required iff the
    /// edge branch exists.
    pub fn forward_t(&self, x: &Tensor, edge: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let pooled = ops::adaptive_avg_pool2d(x, (1, 1))?;
        let img = self.img_conv.forward_t(&pooled, train)?;
        let mut parts = vec![ops::resize_bilinear(&img, (h, w), true)?];
        match (&self.edge_conv, edge) {
            (Some(conv), Some(e)) => {
                parts.push(conv.forward_t(&upsample(e, (h, w), true)?, train)?);
            }
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                return Err(crate::Error::InvalidConfig(
                    "the Gated-SCNN ASPP takes an edge map exactly when it has its edge branch"
                        .into(),
                ))
            }
        }
        for f in &self.features {
            parts.push(f.forward_t(x, train)?);
        }
        Ok(Tensor::cat(&parts, 1)?)
    }
}

/// `bot_aspp`, `bot_fine` and `final_seg` (see the module docs).
pub struct GscnnDecoder {
    bot_aspp: ConvNormAct,
    bot_fine: ConvNormAct,
    final_seg: [ConvNormAct; 3],
}

impl GscnnDecoder {
    /// The decoder from the ASPP's and the fine map's channels.
    pub fn new(
        aspp_channels: usize,
        fine_channels: usize,
        dims: (usize, usize, usize),
        num_classes: usize,
        norm: Norm,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let (bot, fine, mid) = dims;
        let plain = |i: usize, o: usize, k: usize, vb: VarBuilder<'_>| -> Result<ConvNormAct> {
            let cfg = ConvModuleConfig::new(i, o, k)
                .norm(None)
                .bias(false)
                .act(Activation::None);
            let none = vb.pp("none");
            ConvNormAct::new_with_paths(&cfg, vb, none)
        };
        let fs = vb.pp("final_seg");
        let c3 = |i: usize, a: usize| -> Result<ConvNormAct> {
            let cfg = ConvModuleConfig::new(i, mid, 3).norm(Some(norm));
            ConvNormAct::new_with_paths(&cfg, fs.pp(a), fs.pp(a + 1))
        };
        Ok(Self {
            bot_aspp: plain(aspp_channels, bot, 1, vb.pp("bot_aspp"))?,
            bot_fine: plain(fine_channels, fine, 1, vb.pp("bot_fine"))?,
            final_seg: [
                c3(fine + bot, 0)?,
                c3(mid, 3)?,
                plain(mid, num_classes, 1, fs.pp(6))?,
            ],
        })
    }

    /// Logits at the fine map's size from the ASPP output and the fine map.
    pub fn forward_t(&self, aspp: &Tensor, fine: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = fine.dims4()?;
        let up = self.bot_aspp.forward_t(aspp, train)?;
        let fine = self.bot_fine.forward_t(fine, train)?;
        let up = upsample(&up, (h, w), true)?;
        let mut y = Tensor::cat(&[&fine, &up], 1)?;
        for conv in &self.final_seg {
            y = conv.forward_t(&y, train)?;
        }
        Ok(y)
    }
}
