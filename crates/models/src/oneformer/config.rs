//! [`OneFormerConfig`]: the whole model's configuration, parsed from a transformers
//! `config.json` (+ `preprocessor_config.json`) or built by a preset.

use std::path::Path;

use segkit_backbones::{ResNetConfig, SwinConfig};
use segkit_necks::MsDeformAttnPixelDecoderConfig;
use segkit_oneformer::decoder::TransformerDecoderConfig;
use segkit_oneformer::text_mapper::TextMapperConfig;
use serde_json::Value;

use crate::{Error, Result};

/// Image preprocessing of OneFormer (transformers' `OneFormerImageProcessor` fields).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct OneFormerPreprocessConfig {
    /// Resize so that the shorter side is `shortest_edge` ...
    pub shortest_edge: usize,
    /// ... unless the longer side would exceed `longest_edge` (then that side gets it).
    pub longest_edge: usize,
    /// Multiply 8-bit pixels by `rescale_factor` first (`do_rescale`).
    pub do_rescale: bool,
    /// The rescale factor, 1/255.
    pub rescale_factor: f64,
    /// Per-channel mean (RGB) subtracted after rescaling.
    pub image_mean: [f64; 3],
    /// Per-channel std (RGB) divided by after subtracting the mean.
    pub image_std: [f64; 3],
}

impl Default for OneFormerPreprocessConfig {
    /// The shi-labs ADE20K processors: shortest edge 512, longest 2048, ImageNet mean / std on
    /// pixels rescaled to [0, 1].
    fn default() -> Self {
        Self {
            shortest_edge: 512,
            longest_edge: 2048,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            image_mean: [0.485, 0.456, 0.406],
            image_std: [0.229, 0.224, 0.225],
        }
    }
}

impl OneFormerPreprocessConfig {
    /// Reads the fields of a `preprocessor_config.json` (missing fields keep their defaults;
    /// `size` may be `{"shortest_edge", "longest_edge"}` or an int).
    pub fn from_json(v: &Value) -> Result<Self> {
        let mut c = Self::default();
        if let Some(size) = v.get("size") {
            match size {
                Value::Number(n) => {
                    c.shortest_edge = n.as_u64().unwrap_or(512) as usize;
                }
                Value::Object(o) => {
                    if let Some(s) = o.get("shortest_edge").and_then(Value::as_u64) {
                        c.shortest_edge = s as usize;
                    }
                    if let Some(l) = o.get("longest_edge").and_then(Value::as_u64) {
                        c.longest_edge = l as usize;
                    }
                }
                _ => {}
            }
        }
        if let Some(m) = v.get("max_size").and_then(Value::as_u64) {
            c.longest_edge = m as usize;
        }
        if let Some(b) = v.get("do_rescale").and_then(Value::as_bool) {
            c.do_rescale = b;
        }
        if let Some(f) = v.get("rescale_factor").and_then(Value::as_f64) {
            c.rescale_factor = f;
        }
        let triple = |k: &str| -> Result<Option<[f64; 3]>> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => serde_json::from_value::<[f64; 3]>(x.clone())
                    .map(Some)
                    .map_err(|e| Error::InvalidConfig(format!("preprocessor `{k}`: {e}"))),
            }
        };
        if let Some(m) = triple("image_mean")? {
            c.image_mean = m;
        }
        if let Some(s) = triple("image_std")? {
            c.image_std = s;
        }
        if c.shortest_edge == 0 || c.image_std.iter().any(|s| *s <= 0.0) {
            return Err(Error::InvalidConfig(format!(
                "preprocessor: shortest_edge must be positive and std > 0: {c:?}"
            )));
        }
        Ok(c)
    }

    /// transformers' `get_size_with_aspect_ratio(image_size, shortest_edge, longest_edge)`:
    /// `(height, width)` after resizing an image of `(height, width)` (the processor then
    /// resizes with torchvision's antialiased bilinear filter).
    pub fn output_size(&self, (height, width): (usize, usize)) -> (usize, usize) {
        let mut size = self.shortest_edge;
        let max_size = self.longest_edge as f64;
        let (mn, mx) = (height.min(width) as f64, height.max(width) as f64);
        let mut raw = None;
        if mx / mn * size as f64 > max_size {
            let r = max_size * mn / mx;
            raw = Some(r);
            size = r.round_ties_even() as usize; // Python round()
        }
        if (height <= width && height == size) || (width <= height && width == size) {
            (height, width)
        } else if width < height {
            let oh = match raw {
                Some(r) => (r * height as f64 / width as f64) as usize,
                None => (size as f64 * height as f64 / width as f64) as usize,
            };
            (oh, size)
        } else {
            let ow = match raw {
                Some(r) => (r * width as f64 / height as f64) as usize,
                None => (size as f64 * width as f64 / height as f64) as usize,
            };
            (size, ow)
        }
    }
}

/// OneFormer's backbone: transformers' `SwinBackbone` (the shi-labs checkpoints) or
/// `ResNetBackbone` (the official repo's R50 configs), both returning four stages (strides 4-32).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type")]
pub enum OneFormerBackboneConfig {
    /// `backbone_config.model_type == "swin"`: HF `SwinBackbone` keys.
    Swin(SwinConfig),
    /// `backbone_config.model_type == "resnet"`: HF `ResNetBackbone` (keys
    /// `embedder.embedder.*`, `encoder.stages.{s}.layers.{l}.{layer.{k},shortcut}.*`), which is
    /// torchvision's ResNet (v1.5, stride in the 3x3) under other names; segkit builds its
    /// torchvision-layout ResNet and renames the keys (a rename table, no weight changes).
    ResNet(ResNetConfig),
}

impl OneFormerBackboneConfig {
    fn validate(&self) -> Result<()> {
        match self {
            Self::Swin(c) => Ok(c.validate()?),
            Self::ResNet(_) => Ok(()),
        }
    }

    /// transformers' `ResNetConfig` (JSON) -> segkit's torchvision-layout ResNet, for the
    /// architectures torchvision has (depth 18/34 basic, 50/101/152 bottleneck, stem width 64,
    /// widths 256..2048 or 64..512, v1.5 strides, all four stages returned).
    fn hf_resnet(v: &Value, name: &str) -> Result<Self> {
        let bad = |m: String| {
            Err(Error::InvalidConfig(format!(
                "{name}: ResNet backbone: {m}"
            )))
        };
        let arr = |k: &str| -> Vec<u64> {
            v.get(k)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default()
        };
        let depths = arr("depths");
        let depths = if depths.is_empty() {
            vec![3, 4, 6, 3]
        } else {
            depths
        };
        let layer = v
            .get("layer_type")
            .and_then(Value::as_str)
            .unwrap_or("bottleneck");
        let depth = match (layer, depths.as_slice()) {
            ("basic", [2, 2, 2, 2]) => 18,
            ("basic", [3, 4, 6, 3]) => 34,
            ("bottleneck", [3, 4, 6, 3]) => 50,
            ("bottleneck", [3, 4, 23, 3]) => 101,
            ("bottleneck", [3, 8, 36, 3]) => 152,
            _ => {
                return bad(format!(
                    "layer_type `{layer}` with depths {depths:?} is not a torchvision ResNet"
                ))
            }
        };
        let emb = v
            .get("embedding_size")
            .and_then(Value::as_u64)
            .unwrap_or(64);
        let hidden = arr("hidden_sizes");
        let want: Vec<u64> = if depth < 50 {
            vec![64, 128, 256, 512]
        } else {
            vec![256, 512, 1024, 2048]
        };
        if emb != 64 || (!hidden.is_empty() && hidden != want) {
            return bad(format!("embedding_size {emb} / hidden_sizes {hidden:?} differ from torchvision's 64 / {want:?}"));
        }
        let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
        if flag("downsample_in_bottleneck") || flag("downsample_in_first_stage") {
            return bad("downsample_in_bottleneck / downsample_in_first_stage are not supported (torchvision v1.5 layout only)".into());
        }
        if v.get("hidden_act")
            .and_then(Value::as_str)
            .is_some_and(|a| a != "relu")
        {
            return bad("hidden_act must be relu".into());
        }
        let outs: Vec<String> = v
            .get("out_features")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if !outs.is_empty() && outs != ["stage1", "stage2", "stage3", "stage4"] {
            return bad(format!(
                "out_features {outs:?}: OneFormer needs stage1..stage4"
            ));
        }
        Ok(Self::ResNet(ResNetConfig::torchvision(depth)))
    }
}

/// The configuration of a whole OneFormer model. The component configs keep transformers'
/// field names, so `config.json` maps onto them directly.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneFormerConfig {
    /// A name for messages (the preset or the directory).
    pub name: String,
    /// The backbone (`backbone_config`).
    pub backbone: OneFormerBackboneConfig,
    /// The multi-scale deformable-attention pixel decoder.
    pub pixel_decoder: MsDeformAttnPixelDecoderConfig,
    /// Task MLP, query transformer, masked-attention decoder and predictions.
    pub decoder: TransformerDecoderConfig,
    /// The training-time text mapper.
    pub text_mapper: TextMapperConfig,
    /// Whether the model carries the text mapper (HF's `is_training`).
    pub is_training: bool,
    /// Class names by id (`id2label`), `decoder.num_labels` of them.
    pub labels: Vec<String>,
    /// Image preprocessing.
    pub preprocess: OneFormerPreprocessConfig,
    /// Loss weights and matcher / sampling settings (HF's names).
    pub loss: OneFormerLossConfig,
}

/// OneFormer's training settings from `config.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct OneFormerLossConfig {
    /// Weight of the "no object" class in the classification loss. 0.1.
    pub no_object_weight: f64,
    /// Classification loss weight (and matcher cost). 2.0.
    pub class_weight: f64,
    /// Sigmoid cross-entropy mask loss weight. 5.0.
    pub mask_weight: f64,
    /// Dice loss weight. 5.0.
    pub dice_weight: f64,
    /// Query-text contrastive loss weight. 0.5.
    pub contrastive_weight: f64,
    /// Initial temperature of the contrastive loss (`logit_scale = log(1 / t)`). 0.07.
    pub contrastive_temperature: Option<f64>,
    /// Points sampled per mask for the mask losses. 12544.
    pub train_num_points: usize,
    /// Oversampling of candidate points. 3.0.
    pub oversample_ratio: f64,
    /// Fraction of points chosen by uncertainty. 0.75.
    pub importance_sample_ratio: f64,
}

impl Default for OneFormerLossConfig {
    fn default() -> Self {
        Self {
            no_object_weight: 0.1,
            class_weight: 2.0,
            mask_weight: 5.0,
            dice_weight: 5.0,
            contrastive_weight: 0.5,
            contrastive_temperature: Some(0.07),
            train_num_points: 12544,
            oversample_ratio: 3.0,
            importance_sample_ratio: 0.75,
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: &Value, what: &str) -> Result<T> {
    serde_json::from_value(v.clone())
        .map_err(|e| Error::InvalidConfig(format!("OneFormer config ({what}): {e}")))
}

impl OneFormerConfig {
    /// Parses a transformers OneFormer `config.json` (text). The backbone must be Swin
    /// (`backbone_config.model_type == "swin"`).
    pub fn from_hf_json(name: &str, text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::InvalidConfig(format!("{name}: config.json is not JSON: {e}")))?;
        if let Some(t) = v.get("model_type").and_then(Value::as_str) {
            if t != "oneformer" {
                return Err(Error::InvalidConfig(format!(
                    "{name}: config.json is for model_type `{t}`, not `oneformer`"
                )));
            }
        }
        let bb = v.get("backbone_config").cloned().unwrap_or(Value::Null);
        let bt = bb
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("swin");
        let backbone = match bt {
            "swin" => {
                let sw: SwinConfig = if bb.is_null() {
                    SwinConfig::oneformer_swin_tiny()
                } else {
                    parse(&bb, "backbone_config")?
                };
                OneFormerBackboneConfig::Swin(
                    if sw.out_features.is_none() && sw.out_indices.is_none() {
                        sw.with_out_features(["stage1", "stage2", "stage3", "stage4"])
                    } else {
                        sw
                    },
                )
            }
            "resnet" => OneFormerBackboneConfig::hf_resnet(&bb, name)?,
            _ => {
                return Err(Error::InvalidConfig(format!(
                    "{name}: backbone `{bt}` is not supported; supported OneFormer backbones: \
                     swin, resnet"
                )))
            }
        };
        let mut labels: Vec<(usize, String)> = match v.get("id2label") {
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, n)| {
                    let id = k.parse::<usize>().map_err(|_| {
                        Error::InvalidConfig(format!(
                            "{name}: id2label key `{k}` is not an integer"
                        ))
                    })?;
                    Ok((id, n.as_str().unwrap_or_default().to_string()))
                })
                .collect::<Result<_>>()?,
            _ => Vec::new(),
        };
        labels.sort();
        if labels.iter().enumerate().any(|(i, (id, _))| i != *id) {
            return Err(Error::InvalidConfig(format!(
                "{name}: id2label ids must be 0..{} without gaps",
                labels.len()
            )));
        }
        let labels: Vec<String> = labels.into_iter().map(|(_, n)| n).collect();
        let mut decoder: TransformerDecoderConfig = parse(&v, "transformer decoder")?;
        if !labels.is_empty() {
            decoder.num_labels = labels.len();
        } else if let Some(n) = v.get("num_labels").and_then(Value::as_u64) {
            decoder.num_labels = n as usize;
        }
        let labels = if labels.is_empty() {
            (0..decoder.num_labels)
                .map(|i| format!("LABEL_{i}"))
                .collect()
        } else {
            labels
        };
        let cfg = Self {
            name: name.to_string(),
            backbone,
            pixel_decoder: parse(&v, "pixel decoder")?,
            decoder,
            text_mapper: parse(&v, "text mapper")?,
            is_training: v
                .get("is_training")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            labels,
            preprocess: OneFormerPreprocessConfig::default(),
            loss: parse(&v, "loss")?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads `config.json` and, when present, `preprocessor_config.json` of an HF model
    /// directory.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let read = |f: &str| -> Result<String> {
            let p = dir.join(f);
            std::fs::read_to_string(&p).map_err(|source| {
                Error::Core(segkit_core::Error::Io {
                    path: p.clone(),
                    source,
                })
            })
        };
        let mut cfg = Self::from_hf_json(&dir.display().to_string(), &read("config.json")?)?;
        if dir.join("preprocessor_config.json").is_file() {
            let text = read("preprocessor_config.json")?;
            let v: Value = serde_json::from_str(&text).map_err(|e| {
                Error::InvalidConfig(format!(
                    "{}: preprocessor_config.json is not JSON: {e}",
                    dir.display()
                ))
            })?;
            cfg.preprocess = OneFormerPreprocessConfig::from_json(&v)?;
        }
        Ok(cfg)
    }

    /// Checks the parts against each other.
    pub fn validate(&self) -> Result<()> {
        self.backbone.validate()?;
        self.decoder
            .validate()
            .map_err(|e| Error::InvalidConfig(e.to_string()))?;
        if self.pixel_decoder.conv_dim != self.decoder.conv_dim
            || self.pixel_decoder.mask_dim != self.decoder.mask_dim
        {
            return Err(Error::InvalidConfig(format!(
                "{}: pixel decoder conv_dim / mask_dim ({}, {}) differ from the decoder's ({}, {})",
                self.name,
                self.pixel_decoder.conv_dim,
                self.pixel_decoder.mask_dim,
                self.decoder.conv_dim,
                self.decoder.mask_dim
            )));
        }
        if self.labels.len() != self.decoder.num_labels {
            return Err(Error::InvalidConfig(format!(
                "{}: {} class names for {} classes",
                self.name,
                self.labels.len(),
                self.decoder.num_labels
            )));
        }
        Ok(())
    }
}
