//! Gated-SCNN's head: everything above the regular stream (Takikawa et al., "Gated-SCNN: Gated
//! Shape CNNs for Semantic Segmentation", ICCV 2019), as the official code
//! (`network/gscnn.py`, `my_functionals/GatedSpatialConv.py`, nv-tlabs/GSCNN) computes it at
//! inference — which differs from the paper in places (the Canny input, see below).
//!
//! - [`ShapeStream`]: side outputs `dsn3` / `dsn4` / `dsn7`, three `BasicBlock`s, three
//!   [`GatedSpatialConv`]s, `fuse`, sigmoid -> `edge_out`;
//! - the fusion with an image-gradient map: `acts = sigmoid(cw(cat[edge_out, canny]))`, `cw`
//!   a 1x1 conv 2 -> 1 without bias; `canny` is `cv2.Canny`'s 0 / 255 output, not rescaled;
//! - [`GscnnAspp`] with image pooling and the edge branch on `acts`, then [`GscnnDecoder`]
//!   (`bot_aspp`, `bot_fine`, `final_seg`); the logits are upsampled to the input size with
//!   `align_corners=False` (the reference's `interpolate` default).
//!
//! Inputs, by role, as five [`FeatureSpec`]s / maps: `[shape, fine, side1, side2, deep]` —
//! WRN38: `[m1, m2, m3, m4, m7]` (the reference); a dilated ResNet: `[c2, c2, c3, c4, c5]`.
//! `deep` is also the ASPP input. With `shape_stream = false` the head is the regular
//! stream's ASPP (without the edge branch) and decoder only.
//!
//! Keys (the reference module's, below its `module.` prefix): `dsn1`, `dsn3`, `dsn4`, `dsn7`,
//! `res1`..`res3`, `d1`..`d3`, `gate1`..`gate3`, `fuse`, `cw`, `aspp.{img_conv,edge_conv}.{0,1}`,
//! `aspp.features.{0..3}.{0,1}`, `bot_fine`, `bot_aspp`, `final_seg.{0,1,3,4,6}`.
//!
//! # Shapes
//! maps of the five specs for an `H x W` image, `canny` `N x 1 x H x W` -> `seg`
//! `N x K x H x W`, `edge` and three gates `N x 1 x H x W`.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_core::FeatureSpec;
//! use segkit_heads::gscnn::{GscnnHead, GscnnHeadConfig};
//! let dev = Device::Cpu;
//! let specs = [(64, 1), (128, 2), (256, 4), (512, 8), (4096, 8)].map(|(c, s)| FeatureSpec::new(c, s));
//! let vb = candle_nn::VarBuilder::zeros(DType::F32, &dev);
//! let head = GscnnHead::new(&GscnnHeadConfig::official(19), &specs, vb).unwrap();
//! let (h, w) = (17usize, 23usize);
//! let feats: Vec<Tensor> = specs
//!     .iter()
//!     .map(|s| Tensor::zeros((1, s.channels, h.div_ceil(s.stride), w.div_ceil(s.stride)), DType::F32, &dev).unwrap())
//!     .collect();
//! let canny = Tensor::zeros((1, 1, h, w), DType::F32, &dev).unwrap();
//! let o = head.forward_t(&feats, Some(&canny), (h, w), false).unwrap();
//! assert_eq!(o.seg.dims(), &[1, 19, 17, 23]);
//! assert_eq!(o.edge.unwrap().dims(), &[1, 1, 17, 23]);
//! ```

mod aspp;
mod gcl;
mod shape_stream;

pub use aspp::{GscnnAspp, GscnnDecoder};
pub use gcl::{GatedSpatialConv, GclOutput};
pub use shape_stream::{ShapeStream, ShapeStreamOutput};

use candle_core::Tensor;
use candle_nn::VarBuilder;
use segkit_core::nn::{ConvModuleConfig, ConvNormAct, Norm};
use segkit_core::ops::{self, Activation};
use segkit_core::FeatureSpec;

use crate::{Error, Result};

/// Configuration of a [`GscnnHead`]; [`GscnnHeadConfig::official`] is the reference's.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GscnnHeadConfig {
    /// Number of classes (19 for Cityscapes).
    pub num_classes: usize,
    /// Run the shape stream, the Canny fusion and the ASPP's edge branch (the paper's model);
    /// `false` leaves the regular stream's ASPP and decoder only (the ablation baseline).
    pub shape_stream: bool,
    /// Shape-stream widths after `d1`, `d2`, `d3`. Official: (32, 16, 8).
    pub shape_widths: [usize; 3],
    /// Channels of each ASPP branch. Official: 256.
    pub aspp_channels: usize,
    /// Dilations of the three 3x3 ASPP branches. Official at output stride 8: (12, 24, 36).
    pub aspp_rates: Vec<usize>,
    /// Output channels of `bot_aspp`. Official: 256.
    pub bot_aspp_channels: usize,
    /// Output channels of `bot_fine` (the low-level skip). Official: 48.
    pub bot_fine_channels: usize,
    /// Channels of `final_seg`'s 3x3 convs. Official: 256.
    pub decoder_channels: usize,
    /// BatchNorm epsilon. Default 1e-5 (PyTorch's).
    pub bn_eps: f64,
}

impl GscnnHeadConfig {
    /// The official head: widths 32/16/8, ASPP 256 at rates 12/24/36, decoder 256 + 48.
    pub fn official(num_classes: usize) -> Self {
        Self {
            num_classes,
            shape_stream: true,
            shape_widths: [32, 16, 8],
            aspp_channels: 256,
            aspp_rates: vec![12, 24, 36],
            bot_aspp_channels: 256,
            bot_fine_channels: 48,
            decoder_channels: 256,
            bn_eps: 1e-5,
        }
    }

    fn validate(&self, inputs: &[FeatureSpec]) -> Result<()> {
        if inputs.len() != 5 {
            return Err(Error::InvalidConfig(format!(
                "the Gated-SCNN head takes five input specs [shape, fine, side1, side2, deep], \
                 got {}",
                inputs.len()
            )));
        }
        let zero = |v: &[usize]| v.contains(&0);
        if self.num_classes == 0
            || zero(&self.shape_widths)
            || zero(&self.aspp_rates)
            || zero(&[
                self.aspp_channels,
                self.bot_aspp_channels,
                self.bot_fine_channels,
                self.decoder_channels,
            ])
            || inputs.iter().any(|s| s.channels == 0 || s.stride == 0)
        {
            return Err(Error::InvalidConfig(format!(
                "Gated-SCNN head: classes, widths, rates, channels and input specs must be \
                 positive: {self:?}, inputs {inputs:?}"
            )));
        }
        Ok(())
    }
}

/// Every output of a [`GscnnHead`].
#[derive(Debug, Clone)]
pub struct GscnnHeadOutput {
    /// Class logits at the input size, before softmax.
    pub seg: Tensor,
    /// `edge_out`, the shape stream's sigmoided boundary map (with the shape stream).
    pub edge: Option<Tensor>,
    /// The gates' attention maps `gate1`..`gate3` (with the shape stream).
    pub alphas: Option<[Tensor; 3]>,
    /// The fused edge map `sigmoid(cw(cat[edge, canny]))` the ASPP's edge branch reads (with
    /// the shape stream).
    pub acts: Option<Tensor>,
}

/// The Gated-SCNN head (see the module docs).
pub struct GscnnHead {
    cfg: GscnnHeadConfig,
    inputs: Vec<FeatureSpec>,
    shape: Option<(ShapeStream, ConvNormAct)>,
    aspp: GscnnAspp,
    decoder: GscnnDecoder,
}

impl GscnnHead {
    /// Builds the head over the five input specs `[shape, fine, side1, side2, deep]`.
    pub fn new(cfg: &GscnnHeadConfig, inputs: &[FeatureSpec], vb: VarBuilder<'_>) -> Result<Self> {
        cfg.validate(inputs)?;
        let norm = Norm::BatchNorm {
            eps: cfg.bn_eps,
            momentum: 0.1,
        };
        let (shape_in, fine, deep) = (inputs[0], inputs[1], inputs[4]);
        let shape = if cfg.shape_stream {
            let sides = [inputs[2], inputs[3], deep];
            let stream = ShapeStream::new(
                shape_in,
                sides,
                cfg.shape_widths,
                norm,
                cfg.bn_eps,
                vb.clone(),
            )?;
            let cw = ConvModuleConfig::new(2, 1, 1)
                .norm(None)
                .bias(false)
                .act(Activation::Sigmoid);
            let cw = ConvNormAct::new_with_paths(&cw, vb.pp("cw"), vb.pp("none"))?;
            Some((stream, cw))
        } else {
            None
        };
        let aspp = GscnnAspp::new(
            deep.channels,
            cfg.aspp_channels,
            &cfg.aspp_rates,
            cfg.shape_stream,
            norm,
            vb.pp("aspp"),
        )?;
        let dims = (
            cfg.bot_aspp_channels,
            cfg.bot_fine_channels,
            cfg.decoder_channels,
        );
        let decoder = GscnnDecoder::new(
            aspp.out_channels(),
            fine.channels,
            dims,
            cfg.num_classes,
            norm,
            vb,
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            inputs: inputs.to_vec(),
            shape,
            aspp,
            decoder,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GscnnHeadConfig {
        &self.cfg
    }

    /// Runs the head on the five maps for an image of `size = (H, W)`. `canny` (`N x 1 x H x W`,
    /// 0 / 255) is required with the shape stream and ignored without it.
    pub fn forward_t(
        &self,
        features: &[Tensor],
        canny: Option<&Tensor>,
        size: (usize, usize),
        train: bool,
    ) -> Result<GscnnHeadOutput> {
        if features.len() != self.inputs.len() {
            return Err(Error::WrongInputCount {
                what: "GscnnHead",
                expected: self.inputs.len(),
                got: features.len(),
            });
        }
        for (f, s) in features.iter().zip(&self.inputs) {
            if f.rank() != 4 || f.dim(1)? != s.channels {
                return Err(segkit_core::Error::shape(
                    "Gated-SCNN head input",
                    &[1, s.channels, 1, 1],
                    f.dims(),
                ));
            }
        }
        let (shape_in, fine, deep) = (&features[0], &features[1], &features[4]);
        let (x, edge, alphas, acts) = match &self.shape {
            Some((stream, cw)) => {
                let canny = canny.ok_or_else(|| {
                    Error::InvalidConfig("the Gated-SCNN shape stream needs a Canny map".into())
                })?;
                let n = shape_in.dim(0)?;
                if canny.dims() != [n, 1, size.0, size.1] {
                    return Err(segkit_core::Error::shape(
                        "Gated-SCNN Canny map",
                        &[n, 1, size.0, size.1],
                        canny.dims(),
                    ));
                }
                let sides = [&features[2], &features[3], deep];
                let s = stream.forward_t(shape_in, sides, size, train)?;
                let cat = Tensor::cat(&[&s.edge, &canny.to_dtype(s.edge.dtype())?], 1)?;
                let acts = cw.forward_t(&cat, train)?;
                let x = self.aspp.forward_t(deep, Some(&acts), train)?;
                (x, Some(s.edge), Some(s.alphas), Some(acts))
            }
            None => (self.aspp.forward_t(deep, None, train)?, None, None, None),
        };
        let dec = self.decoder.forward_t(&x, fine, train)?;
        let seg = ops::resize_bilinear(&dec, size, false)?;
        Ok(GscnnHeadOutput {
            seg,
            edge,
            alphas,
            acts,
        })
    }
}
