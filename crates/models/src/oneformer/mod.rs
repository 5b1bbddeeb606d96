//! OneFormer (Jain et al., CVPR 2023) assembled from segkit's parts: the Swin or ResNet backbone
//! (segkit-backbones, HF key layouts), the multi-scale deformable-attention pixel decoder
//! (segkit-necks) and the task-conditioned transformer decoder, text mapper, tokenizer and
//! post-processing (segkit-oneformer). Channels flow as `FeatureSpec`s: the backbone's specs
//! build the pixel decoder, whose output specs build the transformer decoder.
//!
//! Weight paths are transformers' `OneFormerForUniversalSegmentation` state-dict keys
//! (`model.pixel_level_module.encoder.*`, `model.pixel_level_module.decoder.*`,
//! `model.transformer_module.*`, `model.task_encoder.*`, `model.text_mapper.*`,
//! `criterion.*`), so a directory written by `save_pretrained` or downloaded from the hub
//! (shi-labs/oneformer_*) loads unchanged ([`OneFormer::from_hf_dir`]).
//!
//! # Shapes
//! `pixel_values: B x 3 x H x W` (normalised), `task_inputs: B x 77` (token ids as floats) ->
//! class logits `B x N x (K + 1)` and mask logits `B x N x ceil(H/4) x ceil(W/4)`.

mod config;
mod model_impl;
pub mod presets;

pub use config::{OneFormerBackboneConfig, OneFormerConfig, OneFormerPreprocessConfig};
/// OneFormer's criterion settings: segkit-losses' config, the one home of these fields.
pub use segkit_losses::OneFormerLossConfig;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use segkit_backbones::{ResNet, Swin};
use segkit_core::checkpoint::{self, StateDict};
use segkit_core::{Backbone, Neck};
use segkit_necks::MsDeformAttnPixelDecoder;
use segkit_oneformer::decoder::{StagePrediction, TransformerDecoder};
use segkit_oneformer::postprocess::{
    self, InstanceConfig, PanopticConfig, SegmentationResult, SemanticResult, TaskType,
};
use segkit_oneformer::text_mapper::TextMapper;
use segkit_oneformer::tokenizer::{Task, TaskTokenizer};

use crate::{Error, Result};

/// Everything [`OneFormer::forward`] computes (HF's `OneFormerForUniversalSegmentationOutput`
/// fields that segkit uses).
#[derive(Debug, Clone)]
pub struct OneFormerOutput {
    /// `B x N x (K + 1)`: class logits of the last decoder stage ("no object" last).
    pub class_queries_logits: Tensor,
    /// `B x N x H/4 x W/4`: mask logits of the last decoder stage.
    pub masks_queries_logits: Tensor,
    /// The earlier decoder stages, for auxiliary losses.
    pub auxiliary: Vec<StagePrediction>,
    /// `B x N x C`: the queries the contrastive loss compares with `text_queries`.
    pub contrastive_queries: Tensor,
    /// `B x (T + n_ctx) x C`: the text mapper's queries, when text inputs were given.
    pub text_queries: Option<Tensor>,
    /// `B x C`: the task token.
    pub task_token: Tensor,
    /// The pixel decoder's stride-4 mask features `B x mask_dim x H/4 x W/4`.
    pub mask_features: Tensor,
}

/// A OneFormer model: Swin or ResNet backbone, pixel decoder, transformer decoder and (when the
/// checkpoint has it) the text mapper.
pub struct OneFormer {
    cfg: OneFormerConfig,
    backbone: Encoder,
    pixel_decoder: MsDeformAttnPixelDecoder,
    decoder: TransformerDecoder,
    text_mapper: Option<TextMapper>,
    logit_scale: Option<Tensor>,
    tokenizer: TaskTokenizer,
    device: Device,
}

/// Post-processing settings of [`OneFormer::predict_image`] (transformers' defaults).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PredictOptions {
    /// Instance post-processing (its `task` is set from the task that ran).
    pub instance: InstanceConfig,
    /// Panoptic post-processing.
    pub panoptic: PanopticConfig,
}

/// The post-processed result of one image, by task.
#[derive(Debug, Clone)]
pub enum OneFormerPrediction {
    /// A class per pixel.
    Semantic(SemanticResult),
    /// Segment ids per pixel and the instance list.
    Instance(SegmentationResult),
    /// Segment ids per pixel and the panoptic segments (stuff fused per class).
    Panoptic(SegmentationResult),
}

impl OneFormer {
    /// Builds the model from `vb` at the root of an HF state dict. The text mapper is built
    /// when `cfg.is_training` (as transformers does).
    pub fn new(cfg: &OneFormerConfig, vb: VarBuilder<'_>) -> Result<Self> {
        cfg.validate()?;
        let device = vb.device().clone();
        let m = vb.pp("model");
        let plm = m.pp("pixel_level_module");
        let backbone = match &cfg.backbone {
            OneFormerBackboneConfig::Swin(sc) => {
                let sw = Swin::new(sc, plm.pp("encoder"))?;
                // transformers >= 5 keeps a whole SwinModel inside SwinBackbone and saves its
                // final LayerNorm (`encoder.swin.layernorm`), which the backbone never applies;
                // checkpoints written by transformers 4 (the shi-labs hub repos) lack it.
                let unused_norm = plm.pp("encoder").pp("swin").pp("layernorm");
                if unused_norm.contains_tensor("weight") {
                    let c = sc.stage_dim(sc.num_stages() - 1);
                    let _ = unused_norm.get(c, "weight")?;
                    let _ = unused_norm.get(c, "bias")?;
                }
                Encoder::Swin(sw)
            }
            OneFormerBackboneConfig::ResNet(rc) => {
                Encoder::ResNet(ResNet::new(rc, plm.pp("encoder"))?)
            }
        };
        let pixel_decoder = MsDeformAttnPixelDecoder::new(
            &cfg.pixel_decoder,
            &backbone.feature_specs(),
            plm.pp("decoder"),
        )?;
        let decoder =
            TransformerDecoder::new(&cfg.decoder, &pixel_decoder.output_specs(), m.clone())
                .map_err(oneformer_err)?;
        // As transformers: the text mapper exists iff `is_training`.
        let text_mapper = if cfg.is_training {
            Some(TextMapper::new(&cfg.text_mapper, m.pp("text_mapper")).map_err(oneformer_err)?)
        } else {
            None
        };
        let c = vb.pp("criterion");
        // HF's criterion owns a learnable `logit_scale` = ln(1 / contrastive_temperature); a
        // model built for training (e.g. on a VarMap) creates it with that value.
        let temperature = cfg.loss.contrastive_temperature.filter(|_| cfg.is_training);
        let logit_scale = if c.contains_tensor("logit_scale") {
            Some(c.get((), "logit_scale")?)
        } else if let Some(t) = temperature {
            let init = candle_nn::Init::Const((1.0 / t).ln());
            Some(c.get_with_hints((), "logit_scale", init)?)
        } else {
            None
        };
        if c.contains_tensor("empty_weight") {
            // The no-object class weight (a buffer HF saves); segkit takes it from the config.
            let _ = c.get(cfg.decoder.num_labels + 1, "empty_weight")?;
        }
        Ok(Self {
            cfg: cfg.clone(),
            backbone,
            pixel_decoder,
            decoder,
            text_mapper,
            logit_scale,
            tokenizer: TaskTokenizer::clip_default().map_err(oneformer_err)?,
            device,
        })
    }

    /// Replaces the task tokenizer (e.g. one read from a checkpoint's vocab.json / merges.txt).
    pub fn with_tokenizer(mut self, tokenizer: TaskTokenizer) -> Self {
        self.tokenizer = tokenizer;
        self
    }

    /// The task tokenizer.
    pub fn tokenizer(&self) -> &TaskTokenizer {
        &self.tokenizer
    }

    /// Builds the model from a state dict with HF's keys, strictly: every key used and every
    /// weight found with its shape (errors name the key).
    pub fn from_state_dict(cfg: &OneFormerConfig, sd: &StateDict, device: &Device) -> Result<Self> {
        Self::load(cfg, sd, device, Path::new("<state dict>"))
    }

    /// Loads an HF model directory (`config.json`, `model.safetensors` or `pytorch_model.bin`
    /// (sharded or not), optional `preprocessor_config.json`): the layout `save_pretrained`
    /// writes and a hub download produces.
    pub fn from_hf_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg = OneFormerConfig::from_hf_dir(dir)?;
        let mut sd = StateDict::load(dir).map_err(|e| Error::checkpoint(&cfg.name, dir, e))?;
        if !cfg.is_training {
            // A checkpoint saved from a training run keeps the text mapper; transformers
            // ignores those weights when `is_training` is false, and so does segkit.
            let tm: Vec<String> = sd
                .keys()
                .filter(|k| k.starts_with("model.text_mapper."))
                .map(String::from)
                .collect();
            for k in tm {
                sd.remove(&k);
            }
        }
        let model = Self::load(&cfg, &sd, device, dir)?;
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if vocab.is_file() && merges.is_file() {
            let tok = TaskTokenizer::from_files(&vocab, &merges).map_err(oneformer_err)?;
            Ok(model.with_tokenizer(tok))
        } else {
            Ok(model)
        }
    }

    fn load(cfg: &OneFormerConfig, sd: &StateDict, device: &Device, path: &Path) -> Result<Self> {
        checkpoint::load_model(sd, DType::F32, device, |vb| Self::new(cfg, vb))
            .map_err(|e| e.in_checkpoint(&cfg.name, path))
    }

    /// The configuration.
    pub fn config(&self) -> &OneFormerConfig {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The text mapper, when the model has one.
    pub fn text_mapper(&self) -> Option<&TextMapper> {
        self.text_mapper.as_ref()
    }

    /// The contrastive loss' learned `logit_scale` (`criterion.logit_scale`), when the
    /// checkpoint has it.
    pub fn logit_scale(&self) -> Option<&Tensor> {
        self.logit_scale.as_ref()
    }

    /// The task inputs `1 x task_seq_len` of `task` ("the task is {task}", CLIP ids padded with
    /// 0, as floats), as `OneFormerProcessor` makes them.
    pub fn task_inputs(&self, task: Task) -> Result<Tensor> {
        self.tokenizer
            .task_inputs(task, self.cfg.decoder.task_seq_len, &self.device)
            .map_err(oneformer_err)
    }

    /// `OneFormerImageProcessor`'s image path for one RGB image: resize (shortest edge, longest
    /// edge; skipped when the size already fits), rescale, normalise. Returns `1 x 3 x H x W`.
    ///
    /// The processor resizes 8-bit images with torchvision's antialiased bilinear filter in
    /// fixed point; segkit runs the same filter in f32 and rounds to 8 bits, which can differ
    /// by one level on a few pixels. Parity tests feed images that need no resize.
    pub fn preprocess(&self, img: &::image::RgbImage) -> Result<Tensor> {
        let p = &self.cfg.preprocess;
        let (w, h) = (img.width() as usize, img.height() as usize);
        if w == 0 || h == 0 {
            return Err(Error::BadImage {
                what: "OneFormer input".into(),
                reason: "empty image".into(),
            });
        }
        let raw = Tensor::from_vec(img.as_raw().clone(), (h, w, 3), &Device::Cpu)?
            .permute((2, 0, 1))?
            .to_dtype(DType::F32)?
            .unsqueeze(0)?;
        let (oh, ow) = p.output_size((h, w));
        let x = if (oh, ow) != (h, w) {
            postprocess::resize_bilinear_antialias(&raw, (oh, ow))
                .map_err(oneformer_err)?
                .round()?
                .clamp(0f32, 255f32)?
        } else {
            raw
        };
        let scale = if p.do_rescale { p.rescale_factor } else { 1.0 };
        let mean: Vec<f32> = p.image_mean.iter().map(|&m| m as f32).collect();
        let std: Vec<f32> = p.image_std.iter().map(|&s| s as f32).collect();
        let mean = Tensor::from_vec(mean, (1, 3, 1, 1), &Device::Cpu)?;
        let std = Tensor::from_vec(std, (1, 3, 1, 1), &Device::Cpu)?;
        let x = (x * scale)?
            .to_dtype(DType::F32)?
            .broadcast_sub(&mean)?
            .broadcast_div(&std)?;
        Ok(x.to_device(&self.device)?)
    }

    /// Segments one image for `task`: preprocessing, the model, and transformers'
    /// post-processing for that task at the image's own size.
    pub fn predict_image(
        &self,
        img: &::image::DynamicImage,
        task: Task,
        opts: &PredictOptions,
    ) -> Result<OneFormerPrediction> {
        let rgb = crate::image::to_rgb8(img)?;
        let x = self.preprocess(&rgb)?;
        let out = self.forward_final(&x, &self.task_inputs(task)?)?;
        let target = [(rgb.height() as usize, rgb.width() as usize)];
        let (cls, masks) = (&out.class_queries_logits, &out.masks_queries_logits);
        let first = |mut v: Vec<SegmentationResult>| {
            v.pop()
                .ok_or_else(|| Error::InvalidConfig("post-processing returned no result".into()))
        };
        Ok(match task {
            Task::Semantic => OneFormerPrediction::Semantic(
                postprocess::post_process_semantic_segmentation(cls, masks, Some(&target))
                    .map_err(oneformer_err)?
                    .pop()
                    .ok_or_else(|| {
                        Error::InvalidConfig("post-processing returned no result".into())
                    })?,
            ),
            Task::Instance => {
                let mut c = opts.instance.clone();
                c.task = TaskType::Instance;
                OneFormerPrediction::Instance(first(
                    postprocess::post_process_instance_segmentation(cls, masks, &c, Some(&target))
                        .map_err(oneformer_err)?,
                )?)
            }
            Task::Panoptic => OneFormerPrediction::Panoptic(first(
                postprocess::post_process_panoptic_segmentation(
                    cls,
                    masks,
                    &opts.panoptic,
                    Some(&target),
                )
                .map_err(oneformer_err)?,
            )?),
        })
    }

    /// Runs the model. `text_inputs` (`B x T x 77` token ids) is encoded by the text mapper
    /// when given (an error if the model has none); `train` enables dropout and drop path.
    pub fn forward(
        &self,
        pixel_values: &Tensor,
        task_inputs: &Tensor,
        text_inputs: Option<&Tensor>,
        train: bool,
    ) -> Result<OneFormerOutput> {
        self.forward_impl(pixel_values, task_inputs, text_inputs, train, true)
    }

    /// Inference without the auxiliary stages (what [`predict_image`](Self::predict_image)
    /// runs): the same final predictions as [`forward`](Self::forward) with `train = false`
    /// and no text inputs, `auxiliary` empty, and each earlier stage's mask prediction freed
    /// as soon as the next stage has used it (see `TransformerDecoder::forward_final`).
    pub fn forward_final(
        &self,
        pixel_values: &Tensor,
        task_inputs: &Tensor,
    ) -> Result<OneFormerOutput> {
        self.forward_impl(pixel_values, task_inputs, None, false, false)
    }

    fn forward_impl(
        &self,
        pixel_values: &Tensor,
        task_inputs: &Tensor,
        text_inputs: Option<&Tensor>,
        train: bool,
        keep_auxiliary: bool,
    ) -> Result<OneFormerOutput> {
        let feats = self.backbone.forward(pixel_values, train)?;
        let pd = self.pixel_decoder.forward(&feats, train)?;
        let (ms, mf) = (&pd.multi_scale_features, &pd.mask_features);
        let out = if keep_auxiliary {
            self.decoder.forward(ms, mf, task_inputs, train)
        } else {
            self.decoder.forward_final(ms, mf, task_inputs)
        }
        .map_err(oneformer_err)?;
        let text_queries = match (text_inputs, &self.text_mapper) {
            (None, _) => None,
            (Some(t), Some(m)) => Some(m.forward(t, train).map_err(oneformer_err)?),
            (Some(_), None) => {
                return Err(Error::InvalidConfig(format!(
                    "{}: text inputs given but the model has no text mapper (is_training = false \
                     and no model.text_mapper.* weights)",
                    self.cfg.name
                )))
            }
        };
        Ok(OneFormerOutput {
            class_queries_logits: out.class_queries_logits,
            masks_queries_logits: out.masks_queries_logits,
            auxiliary: out.auxiliary,
            contrastive_queries: out.contrastive_queries,
            text_queries,
            task_token: out.task_token,
            mask_features: pd.mask_features,
        })
    }
}

/// The backbone of a [`OneFormer`].
enum Encoder {
    Swin(Swin),
    ResNet(ResNet),
}

impl Encoder {
    fn feature_specs(&self) -> Vec<segkit_core::FeatureSpec> {
        match self {
            Self::Swin(s) => s.feature_specs(),
            Self::ResNet(r) => r.feature_specs(),
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        Ok(match self {
            Self::Swin(s) => s.forward(x, train)?.into_vec(),
            Self::ResNet(r) => r.forward(x, train)?.into_vec(),
        })
    }
}

fn oneformer_err(e: segkit_oneformer::Error) -> Error {
    match e {
        segkit_oneformer::Error::InvalidConfig(m) => Error::InvalidConfig(m),
        e @ segkit_oneformer::Error::SpecMismatch { .. } => Error::InvalidConfig(e.to_string()),
        other => Error::Core(other),
    }
}
