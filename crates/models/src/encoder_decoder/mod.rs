//! mmseg's `EncoderDecoder` (`mmseg/models/segmentors/encoder_decoder.py`): backbone ->
//! optional neck -> decode head, plus an optional auxiliary head that only training uses.
//!
//! Weights live under mmseg's state-dict prefixes `backbone.`, `neck.`, `decode_head.` and
//! `auxiliary_head.`, so mmseg checkpoints load without renames
//! ([`EncoderDecoder::from_checkpoint`]); loading is strict (every checkpoint key used, every
//! model key found) and a mismatch is an [`Error::Checkpoint`] naming the model, the key and,
//! for a wrong shape, both shapes.
//!
//! # Shapes
//! Input `N x 3 x H x W` (normalised, see [`crate::image::to_tensor`]). The decode head's
//! logits are `N x K x ceil(H / s) x ceil(W / s)` at its output stride `s` (8 for the `-d8`
//! models and for FastFCN's JPU); [`EncoderDecoder::encode_decode`] resizes them to `H x W`.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_models::{EncoderDecoder, SegmentorConfig};
//! let cfg = SegmentorConfig::from_json(
//!     r#"{"name": "tiny", "backbone": {"type": "ResNet", "depth": 18},
//!         "decode_head": {"type": "FCNHead", "base": {"channels": 8, "num_classes": 3}}}"#,
//! )
//! .unwrap();
//! let model = EncoderDecoder::new(&cfg, candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu)).unwrap();
//! let x = Tensor::zeros((1, 3, 64, 96), DType::F32, &Device::Cpu).unwrap();
//! let out = model.forward_t(&x, false).unwrap();
//! assert_eq!(out.logits.dims(), &[1, 3, 2, 3]); // stride 32
//! assert_eq!(model.encode_decode(&x).unwrap().dims(), &[1, 3, 64, 96]);
//! ```

pub mod backbone;
pub mod config;
pub mod demo;
pub mod heads;
pub mod inference;
pub mod neck;
pub mod presets;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use segkit_core::checkpoint::{self, StateDict};
use segkit_core::{Backbone, FeatureSpec, Neck};
use segkit_heads::{AsppHead, DaHead, EncHead, FcnHead, PspHead};

use crate::{Error, Result};
use config::{HeadConfig, SegmentorConfig};

/// A built decode or auxiliary head (boxed: the heads differ much in size).
enum Head {
    Fcn(Box<FcnHead>),
    Psp(Box<PspHead>),
    Da(Box<DaHead>),
    Aspp(Box<AsppHead>),
    Enc(Box<EncHead>),
}

/// All outputs of one head.
struct HeadOutput {
    main: Tensor,
    pam: Option<Tensor>,
    cam: Option<Tensor>,
    se: Option<Tensor>,
}

impl Head {
    fn new(cfg: &HeadConfig, inputs: &[FeatureSpec], vb: VarBuilder<'_>) -> Result<Self> {
        Ok(match cfg {
            HeadConfig::Fcn(c) => Head::Fcn(Box::new(FcnHead::new(c, inputs, vb)?)),
            HeadConfig::Psp(c) => Head::Psp(Box::new(PspHead::new(c, inputs, vb)?)),
            HeadConfig::Da(c) => Head::Da(Box::new(DaHead::new(c, inputs, vb)?)),
            HeadConfig::Aspp(c) => Head::Aspp(Box::new(AsppHead::new(c, inputs, vb)?)),
            HeadConfig::Enc(c) => Head::Enc(Box::new(EncHead::new(c, inputs, vb)?)),
        })
    }

    fn output_stride(&self) -> usize {
        use segkit_core::DecodeHead;
        match self {
            Head::Fcn(h) => h.output_stride(),
            Head::Psp(h) => h.output_stride(),
            Head::Da(h) => h.output_stride(),
            Head::Aspp(h) => h.output_stride(),
            Head::Enc(h) => h.output_stride(),
        }
    }

    fn forward(&self, feats: &[Tensor], train: bool) -> Result<HeadOutput> {
        let plain = |main| HeadOutput {
            main,
            pam: None,
            cam: None,
            se: None,
        };
        Ok(match self {
            Head::Fcn(h) => plain(h.forward(feats, train)?),
            Head::Psp(h) => plain(h.forward(feats, train)?),
            Head::Aspp(h) => plain(h.forward(feats, train)?),
            Head::Da(h) => {
                let o = h.forward(feats, train)?;
                HeadOutput {
                    main: o.fused,
                    pam: Some(o.pam),
                    cam: Some(o.cam),
                    se: None,
                }
            }
            Head::Enc(h) => {
                let o = h.forward(feats, train)?;
                HeadOutput {
                    main: o.seg,
                    pam: None,
                    cam: None,
                    se: o.se,
                }
            }
        })
    }
}

/// Every output of an [`EncoderDecoder`] forward pass, at the heads' output strides.
#[derive(Debug, Clone)]
pub struct SegmentorOutput {
    /// The decode head's logits `N x K x h x w` (DANet: the fused PAM + CAM logits).
    pub logits: Tensor,
    /// The auxiliary head's logits, when the model has one.
    pub aux_logits: Option<Tensor>,
    /// DANet's position-attention branch logits.
    pub pam_logits: Option<Tensor>,
    /// DANet's channel-attention branch logits.
    pub cam_logits: Option<Tensor>,
    /// EncNet's semantic-encoding (class presence) logits `N x K`.
    pub se_logits: Option<Tensor>,
}

impl SegmentorOutput {
    /// The outputs that are present, by name (`logits`, `aux_logits`, `pam_logits`,
    /// `cam_logits`, `se_logits`), in that order.
    pub fn named(&self) -> Vec<(&'static str, &Tensor)> {
        let mut v = vec![("logits", &self.logits)];
        for (name, t) in [
            ("aux_logits", &self.aux_logits),
            ("pam_logits", &self.pam_logits),
            ("cam_logits", &self.cam_logits),
            ("se_logits", &self.se_logits),
        ] {
            if let Some(t) = t {
                v.push((name, t));
            }
        }
        v
    }
}

/// mmseg's encoder-decoder segmentor.
pub struct EncoderDecoder {
    cfg: SegmentorConfig,
    device: Device,
    backbone: Box<dyn Backbone>,
    neck: Option<Box<dyn Neck>>,
    decode_head: Head,
    auxiliary_head: Option<Head>,
}

impl std::fmt::Debug for EncoderDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncoderDecoder")
            .field("name", &self.cfg.name)
            .field("num_classes", &self.num_classes())
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl EncoderDecoder {
    /// Builds the segmentor, loading weights from `vb` under mmseg's prefixes (`backbone`,
    /// `neck`, `decode_head`, `auxiliary_head`).
    pub fn new(cfg: &SegmentorConfig, vb: VarBuilder<'_>) -> Result<Self> {
        cfg.validate()?;
        let device = vb.device().clone();
        let backbone = cfg.backbone.build(vb.pp("backbone"))?;
        let mut specs = backbone.feature_specs();
        let neck = match &cfg.neck {
            None => None,
            Some(n) => Some(n.build(&specs, vb.pp("neck"))?),
        };
        if let Some(n) = &neck {
            specs = n.output_specs();
        }
        let decode_head = Head::new(&cfg.decode_head, &specs, vb.pp("decode_head"))?;
        let auxiliary_head = match &cfg.auxiliary_head {
            Some(c) => Some(Head::new(c, &specs, vb.pp("auxiliary_head"))?),
            None => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            device,
            backbone,
            neck,
            decode_head,
            auxiliary_head,
        })
    }

    /// Builds the segmentor from a state dict with mmseg's keys, strictly (every key of `sd`
    /// used — BatchNorm's `num_batches_tracked` aside — and every weight found with its
    /// shape). Weights are converted to f32 on `device`.
    ///
    /// A mismatch is an [`Error::Checkpoint`] whose `source` names the key (and both shapes
    /// for a wrong shape, e.g. `decode_head.conv_seg.weight` for another class count).
    pub fn from_state_dict(cfg: &SegmentorConfig, sd: &StateDict, device: &Device) -> Result<Self> {
        Self::load(cfg, sd, device, Path::new("<state dict>"))
    }

    /// Reads an mmseg checkpoint (a model-zoo `.pth` with `{meta, state_dict, ..}`, a plain
    /// state dict, or a `.safetensors` written by `cargo xtask convert`) and builds the
    /// segmentor from it, strictly (see [`EncoderDecoder::from_state_dict`]).
    ///
    /// Every failure — unreadable file, missing key, wrong shape, unused keys — is an
    /// [`Error::Checkpoint`] naming the model (`cfg.name`) and the file.
    pub fn from_checkpoint(
        cfg: &SegmentorConfig,
        path: impl AsRef<Path>,
        device: &Device,
    ) -> Result<Self> {
        let path = path.as_ref();
        let sd = StateDict::load(path).map_err(|source| Error::Checkpoint {
            model: cfg.name.clone(),
            checkpoint: path.to_path_buf(),
            source: Box::new(source),
        })?;
        Self::load(cfg, &sd, device, path)
    }

    fn load(cfg: &SegmentorConfig, sd: &StateDict, device: &Device, path: &Path) -> Result<Self> {
        cfg.validate()?;
        checkpoint::load_model(sd, DType::F32, device, |vb| Self::new(cfg, vb)).map_err(|e| match e
        {
            Error::Core(
                source @ (segkit_core::Error::MissingWeight { .. }
                | segkit_core::Error::ShapeMismatch { .. }
                | segkit_core::Error::UnexpectedWeights { .. }),
            ) => Error::Checkpoint {
                model: cfg.name.clone(),
                checkpoint: path.to_path_buf(),
                source: Box::new(source),
            },
            other => other,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SegmentorConfig {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.cfg.num_classes()
    }

    /// Output stride of the decode head's logits.
    pub fn output_stride(&self) -> usize {
        self.decode_head.output_stride()
    }

    /// The backbone (and neck) features the heads read (mmseg `extract_feat`).
    pub fn extract_feat(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let feats = self.backbone.forward_features(x, train)?;
        Ok(match &self.neck {
            Some(n) => n.forward_t(&feats, train)?,
            None => feats,
        })
    }

    /// Runs every head, the auxiliary one included, on `x` (`N x 3 x H x W`, normalised).
    /// `train` selects BatchNorm batch statistics and enables dropout.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<SegmentorOutput> {
        let feats = self.extract_feat(x, train)?;
        let main = self.decode_head.forward(&feats, train)?;
        let aux_logits = match &self.auxiliary_head {
            Some(h) => Some(h.forward(&feats, train)?.main),
            None => None,
        };
        Ok(SegmentorOutput {
            logits: main.main,
            aux_logits,
            pam_logits: main.pam,
            cam_logits: main.cam,
            se_logits: main.se,
        })
    }

    /// The decode head's logits at its output stride (the auxiliary head is not run).
    pub fn logits(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let feats = self.extract_feat(x, train)?;
        Ok(self.decode_head.forward(&feats, train)?.main)
    }

    /// mmseg `encode_decode` in inference mode: the decode head's logits bilinearly resized
    /// to the input's `H x W` (`align_corners` of the decode head).
    pub fn encode_decode(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let logits = self.logits(x, false)?;
        if logits.dims()[2..] == [h, w] {
            return Ok(logits);
        }
        Ok(segkit_core::ops::resize_bilinear(
            &logits,
            (h, w),
            self.cfg.align_corners(),
        )?)
    }
}
