//! Gated-SCNN (Takikawa et al., "Gated-SCNN: Gated Shape CNNs for Semantic Segmentation",
//! ICCV 2019), assembled as the official code's `network/gscnn.py` (nv-tlabs/GSCNN) wires it:
//! a regular stream (WideResNet38-A2, or a dilated ResNet-50/101 at output stride 8), the shape
//! stream with three gated convolutions, the fusion of its edge map with a Canny map, an ASPP
//! with an edge branch and the DeepLabV3+-style decoder (parts in `segkit_heads::gscnn`).
//!
//! # Contract for training and `segkit dump` (stable names)
//! - [`Gscnn::new`]`(cfg: &GscnnConfig, vb)`; [`GscnnConfig`] has `backbone` (`wrn38`,
//!   `resnet50-d8`, `resnet101-d8`), `num_classes`, `canny` (`as_released`: the normalised
//!   tensor cast to uint8 as the official code does, or `image8bit`: Canny on the 8-bit image
//!   recovered with `mean` / `std`) and `shape_stream` (`false`: regular stream + ASPP without
//!   the edge branch, no `edge` output — the with/without comparison).
//! - [`Gscnn::forward_t`]`(x, canny: Option<&Tensor>, train) -> GscnnOutput`: `x` is the
//!   normalised `N x 3 x H x W` batch; `canny` an `N x 1 x H x W` map with values 0 / 255 (as
//!   `cv2.Canny` returns them, not rescaled); `None` computes it from `x` per `cfg.canny`.
//! - [`GscnnOutput`]: `seg` (`N x K x H x W` logits at input size, before softmax), `edge`
//!   (`Option`, `N x 1 x H x W`, the shape stream's `edge_out`, already sigmoided),
//!   `alphas` (`Option<[Tensor; 3]>`, the gates' `N x 1 x H x W` attention maps).
//! - `Model::forward_named` returns, in this order: `seg`, then with the shape stream
//!   `edge`, `alpha1`, `alpha2`, `alpha3`.
//!
//! Checkpoint keys are the official module's state-dict keys (`mod1.conv1.weight`,
//! `mod2.block1.bn1.0.weight`, `gate1._gate_conv.0.weight`, `aspp.edge_conv.0.weight`,
//! `final_seg.6.weight`, ...); a released checkpoint (`{state_dict, optimizer, epoch,
//! mean_iu}` with `module.`-prefixed keys) is read by [`checkpoint`].

mod checkpoint;
pub mod config;
mod model_impl;

pub use checkpoint::{load_state_dict, OFFICIAL_KEY_GROUPS};
pub use config::{CannyInput, GscnnBackbone, GscnnConfig, GSCNN_PRESETS};
pub use model_impl::GscnnPrediction;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use image::RgbImage;
use segkit_backbones::{ResNet, WideResNet};
use segkit_core::Backbone;
use segkit_heads::gscnn::GscnnHead;

use crate::{Error, Result};

/// Every output of a [`Gscnn`] forward pass.
#[derive(Debug, Clone)]
pub struct GscnnOutput {
    /// Class logits `N x K x H x W` at the input size, before softmax.
    pub seg: Tensor,
    /// `edge_out`: the shape stream's sigmoided boundary map `N x 1 x H x W` (with the shape
    /// stream).
    pub edge: Option<Tensor>,
    /// The gates' attention maps `gate1`..`gate3`, each `N x 1 x H x W`.
    pub alphas: Option<[Tensor; 3]>,
    /// The fused edge map `sigmoid(cw(cat[edge, canny]))` the ASPP's edge branch reads.
    pub acts: Option<Tensor>,
}

impl GscnnOutput {
    /// The outputs by name: `seg`, then (with the shape stream) `edge`, `alpha1`, `alpha2`,
    /// `alpha3`, `acts`.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("seg".to_string(), self.seg.clone())];
        if let Some(e) = &self.edge {
            v.push(("edge".into(), e.clone()));
        }
        if let Some(a) = &self.alphas {
            for (i, t) in a.iter().enumerate() {
                v.push((format!("alpha{}", i + 1), t.clone()));
            }
        }
        if let Some(a) = &self.acts {
            v.push(("acts".into(), a.clone()));
        }
        v
    }
}

/// A Gated-SCNN model (see the module docs).
pub struct Gscnn {
    cfg: GscnnConfig,
    backbone: Box<dyn Backbone>,
    head: GscnnHead,
    device: Device,
}

impl Gscnn {
    /// Builds the model with its weights under `vb` (the official module's keys, no prefix).
    pub fn new(cfg: &GscnnConfig, vb: VarBuilder<'_>) -> Result<Self> {
        cfg.validate()?;
        let device = vb.device().clone();
        let backbone: Box<dyn Backbone> = match (cfg.backbone.wide_resnet(), cfg.resnet()?) {
            (Some(w), _) => Box::new(WideResNet::new(&w, vb.clone())?),
            (None, Some(r)) => Box::new(ResNet::new(&r, vb.clone())?),
            (None, None) => return Err(Error::InvalidConfig("no regular stream".into())),
        };
        let specs = cfg.backbone.head_specs(&backbone.feature_specs())?;
        let head = GscnnHead::new(&cfg.head(), &specs, vb)?;
        Ok(Self {
            cfg: cfg.clone(),
            backbone,
            head,
            device,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GscnnConfig {
        &self.cfg
    }

    /// The device of the weights.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the network on a normalised batch `x` (`N x 3 x H x W`). `canny` is the
    /// `N x 1 x H x W` Canny map (0 / 255); `None` computes it from `x` as `cfg.canny` says.
    /// `train` selects BatchNorm batch statistics and dropout.
    pub fn forward_t(
        &self,
        x: &Tensor,
        canny: Option<&Tensor>,
        train: bool,
    ) -> Result<GscnnOutput> {
        let (n, c, h, w) = x.dims4().map_err(|_| {
            segkit_core::Error::shape(
                "Gated-SCNN input (N x 3 x H x W)",
                &[1, 3, 512, 1024],
                x.dims(),
            )
        })?;
        if c != 3 || h == 0 || w == 0 {
            return Err(segkit_core::Error::shape(
                "Gated-SCNN input",
                &[n, 3, 512, 1024],
                x.dims(),
            )
            .into());
        }
        let computed;
        let canny = match (canny, self.cfg.shape_stream) {
            (Some(m), _) => Some(m),
            (None, true) => {
                computed = self.canny_map(x)?;
                Some(&computed)
            }
            (None, false) => None,
        };
        let feats = self.backbone.forward_features(x, train)?;
        let sel: Vec<Tensor> = self
            .cfg
            .backbone
            .head_inputs()
            .iter()
            .map(|&i| feats[i].clone())
            .collect();
        let o = self.head.forward_t(&sel, canny, (h, w), train)?;
        Ok(GscnnOutput {
            seg: o.seg,
            edge: o.edge,
            alphas: o.alphas,
            acts: o.acts,
        })
    }

    /// The `N x 1 x H x W` Canny map (0 / 255) of the normalised batch `x`:
    /// `cv2.Canny(img, 10, 100)` (segkit-data's [`segkit_data::edges::canny`]) on the 8-bit
    /// image `cfg.canny` says — the values cast to uint8 as released, or the image recovered
    /// with `mean` / `std`.
    pub fn canny_map(&self, x: &Tensor) -> Result<Tensor> {
        use segkit_data::edges;
        let (n, _, h, w) = x.dims4()?;
        let v: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let (mean, std) = (
            self.cfg.mean.map(|m| (m * 255.0) as f32),
            self.cfg.std.map(|s| (s * 255.0) as f32),
        );
        let data_err = |e: segkit_data::Error| Error::BadImage {
            what: "Gated-SCNN Canny input".into(),
            reason: e.to_string(),
        };
        let mut out = Vec::with_capacity(n * h * w);
        for chw in v.chunks(3 * h * w) {
            let img = match self.cfg.canny {
                CannyInput::AsReleased => edges::released_input(chw, h, w),
                CannyInput::Image8bit => edges::image8bit_input(chw, h, w, mean, std),
            }
            .map_err(data_err)?;
            let e = edges::canny(&img, h, w, 10.0, 100.0).map_err(data_err)?;
            out.extend(e.into_iter().map(f32::from));
        }
        Ok(Tensor::from_vec(out, (n, 1, h, w), &Device::Cpu)?.to_device(x.device())?)
    }

    /// A batch tensor of `image` as the official test pipeline makes it: `ToTensor` (x / 255)
    /// then `Normalize(mean, std)`, in f32, `1 x 3 x H x W` on the model's device.
    pub fn image_tensor(&self, image: &RgbImage) -> Result<Tensor> {
        let (w, h) = (image.width() as usize, image.height() as usize);
        if w == 0 || h == 0 {
            return Err(Error::BadImage {
                what: "<image>".into(),
                reason: format!("the image is empty ({w} x {h} pixels)"),
            });
        }
        let hw = w * h;
        let src = image.as_raw();
        let mut data = vec![0f32; 3 * hw];
        for c in 0..3 {
            let (m, s) = (self.cfg.mean[c] as f32, self.cfg.std[c] as f32);
            for (i, p) in data[c * hw..(c + 1) * hw].iter_mut().enumerate() {
                *p = (src[i * 3 + c] as f32 / 255.0 - m) / s;
            }
        }
        Ok(Tensor::from_vec(data, (1, 3, h, w), &self.device)?)
    }
}
