//! PANet (Liu et al., "Path Aggregation Network for Instance Segmentation", CVPR 2018),
//! assembled as the official code's `Generalized_RCNN` (ShuLiu1993/PANet,
//! `lib/modeling/model_builder.py`) wires `configs/panet/e2e_panet_R-50-FPN_2x_mask.yaml`:
//! - `Conv_Body`: the caffe-style ResNet body ([`segkit_backbones::CaffeResNet`], keys
//!   `Conv_Body.conv_body.*`) and the GN FPN with the bottom-up path and P6
//!   ([`segkit_necks::PanetFpn`], `Conv_Body.*`), giving N2..N6;
//! - `RPN`: Detectron's FPN RPN on N2..N6 with test-time proposals
//!   ([`segkit_heads::RpnHead`], `RPN.*`);
//! - `Box_Head` / `Box_Outs` and `Mask_Head` / `Mask_Outs`: the RoI heads with adaptive feature
//!   pooling from N2..N5 and the mask head's fully-connected fusion, and Detectron's test-time
//!   post-processing (`lib/core/test.py`: per-class score threshold and NMS, top 100, masks
//!   pasted into the image).
//!
//! The input is Detectron's test blob ([`preprocess`]: BGR minus the pixel means, shorter side
//! 1000 / longer side at most 1400, zero-padded to a multiple of 32). Boxes and masks come back
//! in the original image's pixels.
//!
//! Checkpoint keys are the official module's state-dict keys, so the released
//! `panet_mask_step179999.pth` (PyTorch 0.4, legacy serialization, `{.., model, optimizer}`)
//! loads by a format change ([`checkpoint`]; [`OFFICIAL_KEY_GROUPS`] accounts for every key).
//!
//! # Shapes
//! [`Panet::forward_features`]: `1 x 3 x Hp x Wp` blob -> N2..N6 (`1 x 256 x Hp/4 x Wp/4` ..
//! `1 x 256 x ceil(Hp/64) x ceil(Wp/64)`). One image per forward pass, as the official test
//! code runs it.

pub mod checkpoint;
pub mod config;
mod model_impl;
pub mod preprocess;
pub mod train;

pub use checkpoint::{load_state_dict, official_keys, OFFICIAL_KEY_GROUPS};
pub use config::{coco_detection_meta, PanetConfig, PanetInput, PANET_DEMO_PRESET, PANET_PRESETS};
pub use preprocess::{image_blob, PanetBlob};
pub use segkit_heads::panet::{Detections, PanetRoiHeadsOutput};
pub use train::{PanetLosses, PanetTrainConfig, PanetTrainImage};

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use segkit_backbones::CaffeResNet;
use segkit_core::{Backbone, Neck};
use segkit_heads::panet::PanetRoiHeads;
use segkit_heads::{RpnHead, RpnHeadOutput, RpnProposals};
use segkit_necks::PanetFpn;

use crate::Result;

/// Number of RoI levels (N2..N5) the box and mask heads pool from.
const ROI_LEVELS: usize = 4;

/// The pyramid and the RPN of one forward pass.
#[derive(Debug, Clone)]
pub struct PanetFeatures {
    /// N2..N6 (finest first): the bottom-up path's outputs and P6.
    pub levels: Vec<Tensor>,
    /// The RPN's raw outputs on N2..N6.
    pub rpn: RpnHeadOutput,
}

/// Every stage of one image's forward pass ([`Panet::forward_blob`]).
#[derive(Debug, Clone)]
pub struct PanetOutput {
    /// N2..N6 and the RPN's raw outputs.
    pub features: PanetFeatures,
    /// The RPN's test-time proposals (network-input pixels).
    pub proposals: RpnProposals,
    /// The RoI heads' outputs and the detections (original-image pixels).
    pub heads: PanetRoiHeadsOutput,
}

/// A PANet model (see the module docs).
pub struct Panet {
    cfg: PanetConfig,
    body: CaffeResNet,
    fpn: PanetFpn,
    rpn: RpnHead,
    heads: PanetRoiHeads,
    device: Device,
}

impl Panet {
    /// Builds the model with its weights under `vb` in the official key names
    /// (`Conv_Body.conv_body.res1.conv1.weight`, `RPN.FPN_RPN_conv.weight`, ...).
    pub fn new(cfg: &PanetConfig, vb: VarBuilder<'_>) -> Result<Self> {
        cfg.validate()?;
        let device = vb.device().clone();
        let body = CaffeResNet::new(&cfg.backbone, vb.pp("Conv_Body.conv_body"))?;
        let fpn = PanetFpn::new(&cfg.fpn, &body.feature_specs(), vb.pp("Conv_Body"))?;
        let specs = fpn.output_specs();
        let rpn = RpnHead::new(&cfg.rpn, &specs, vb.pp("RPN"))?;
        let roi_specs = specs.get(..ROI_LEVELS).ok_or_else(|| {
            crate::Error::InvalidConfig(format!(
                "{}: the pyramid has {} levels, the RoI heads need N2..N5",
                cfg.name,
                specs.len()
            ))
        })?;
        let heads = PanetRoiHeads::new(&cfg.roi_heads, roi_specs, vb)?;
        Ok(Self {
            cfg: cfg.clone(),
            body,
            fpn,
            rpn,
            heads,
            device,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PanetConfig {
        &self.cfg
    }

    /// The device of the weights.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the body, the pyramid and the RPN head on a blob (`1 x 3 x Hp x Wp`, Hp and Wp
    /// multiples of 32).
    pub fn forward_features(&self, x: &Tensor) -> Result<PanetFeatures> {
        let c = self.body.forward_features(x, false)?;
        let levels = self.fpn.forward_t(&c, false)?;
        let rpn = self.rpn.forward_t(&levels, false)?;
        Ok(PanetFeatures { levels, rpn })
    }

    /// The test-time proposals of image `image` of the batch (`im_info` as
    /// [`PanetBlob::im_info`]).
    pub fn proposals(
        &self,
        feats: &PanetFeatures,
        image: usize,
        im_info: [f32; 3],
    ) -> Result<RpnProposals> {
        Ok(self.rpn.proposals(&feats.rpn, image, im_info)?)
    }

    /// The whole test-time pipeline on a blob holding one image: pyramid, RPN proposals
    /// (`im_info` as [`PanetBlob::im_info`]), box head, post-processing, mask head and pasted
    /// masks. `im_scale` is network input / original image and `image_size` the original
    /// `(height, width)`, which the detections are clipped to and the masks pasted into.
    pub fn forward_blob(
        &self,
        x: &Tensor,
        im_info: [f32; 3],
        im_scale: f64,
        image_size: (usize, usize),
    ) -> Result<PanetOutput> {
        match x.dims() {
            [1, 3, h, w] if *h > 0 && *w > 0 => {}
            d => {
                return Err(
                    segkit_core::Error::shape("PANet input blob", &[1, 3, 800, 1216], d).into(),
                )
            }
        }
        let features = self.forward_features(x)?;
        let proposals = self.proposals(&features, 0, im_info)?;
        let heads = self.heads.forward_test(
            &features.levels[..ROI_LEVELS],
            &proposals.boxes,
            0,
            im_scale,
            image_size,
        )?;
        Ok(PanetOutput {
            features,
            proposals,
            heads,
        })
    }

    /// Detects the instances of `image` (RGB): Detectron's blob ([`image_blob`]), the
    /// pipeline, boxes and masks in the image's pixels.
    ///
    /// Errors: [`crate::Error::BadImage`] for an empty image.
    pub fn detect(&self, image: &image::RgbImage) -> Result<Detections> {
        let blob = image_blob(image, &self.cfg.input, &self.device)?;
        let out = self.forward_blob(&blob.data, blob.im_info, blob.scale, blob.original)?;
        Ok(out.heads.detections)
    }
}
