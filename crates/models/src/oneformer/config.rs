//! [`OneFormerConfig`]: the whole model's configuration, parsed from a transformers
//! `config.json` (+ `preprocessor_config.json`) or built by a preset.

use std::path::Path;

use segkit_backbones::{ResNetConfig, SwinConfig};
use segkit_core::FeatureSpec;
use segkit_losses::OneFormerLossConfig;
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
        c.check_memory()?;
        Ok(c)
    }

    /// Refuses edges whose resized image cannot fit: a resized image has at most
    /// `longest_edge x min(shortest_edge, longest_edge)` pixels, and at least its 8-bit copy
    /// and the f32 input tensor (15 bytes a pixel) are allocated for it — compared with
    /// [`crate::encoder_decoder::inference::memory_limit`] before any image is resized.
    ///
    /// Errors: [`Error::InvalidConfig`] naming `preprocessor_config.json`'s `size` fields,
    /// the estimate and the limit.
    pub fn check_memory(&self) -> Result<()> {
        use crate::encoder_decoder::inference::{fmt_bytes, memory_limit};
        let Some(limit) = memory_limit()? else {
            return Ok(());
        };
        let long = self.longest_edge as u64;
        let short = (self.shortest_edge as u64).min(long.max(1));
        let est = long.max(short).saturating_mul(short).saturating_mul(15);
        if est > limit.bytes {
            return Err(Error::InvalidConfig(format!(
                "preprocessor_config.json: `size` shortest_edge {} / longest_edge {} resizes an \
                 image to up to {} x {} pixels: an estimated {} (the image and input tensor \
                 alone) is more than the memory limit {} ({})",
                self.shortest_edge,
                self.longest_edge,
                long.max(short),
                short,
                fmt_bytes(est),
                fmt_bytes(limit.bytes),
                limit.source
            )));
        }
        Ok(())
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
    /// `backbone_config.model_type == "resnet"`: HF `ResNetBackbone`, torchvision's ResNet
    /// (v1.5, stride in the 3x3) under HF's keys (`embedder.embedder.*`,
    /// `encoder.stages.{s}.layers.{l}.{layer.{k},shortcut}.*`), which segkit's ResNet loads
    /// directly with `key_style: Hf`.
    ResNet(ResNetConfig),
}

impl OneFormerBackboneConfig {
    fn validate(&self) -> Result<()> {
        match self {
            Self::Swin(c) => Ok(c.validate()?),
            Self::ResNet(_) => Ok(()),
        }
    }

    /// The specs of the backbone's four outputs, finest first.
    pub fn feature_specs(&self) -> Result<Vec<FeatureSpec>> {
        Ok(match self {
            Self::Swin(c) => c.feature_specs()?,
            Self::ResNet(c) => c.feature_specs()?,
        })
    }

    /// transformers' `ResNetConfig` (JSON) -> segkit's ResNet with HF's key layout, for the
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
        Ok(Self::ResNet(ResNetConfig::hf(depth)))
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
    /// The training criterion: loss weights, matcher and point-sampling settings
    /// (segkit-losses' config; `loss.num_classes` equals `decoder.num_labels`).
    pub loss: OneFormerLossConfig,
}

/// transformers' `OneFormerConfig` fields that configure the criterion (HF's names, which
/// segkit-losses' [`OneFormerLossConfig`] accepts as aliases of its own).
const HF_LOSS_FIELDS: [&str; 9] = [
    "no_object_weight",
    "class_weight",
    "mask_weight",
    "dice_weight",
    "contrastive_weight",
    "contrastive_temperature",
    "train_num_points",
    "oversample_ratio",
    "importance_sample_ratio",
];

/// The criterion's settings from an HF `config.json`: its [`HF_LOSS_FIELDS`] (missing ones keep
/// OneFormer's defaults), for `num_labels` classes.
fn hf_loss(v: &Value, num_labels: usize) -> Result<OneFormerLossConfig> {
    let mut m: serde_json::Map<String, Value> = HF_LOSS_FIELDS
        .iter()
        .filter_map(|&k| v.get(k).map(|x| (k.to_string(), x.clone())))
        .collect();
    m.insert("num_classes".into(), num_labels.into());
    parse(&Value::Object(m), "loss")
}

fn parse<T: serde::de::DeserializeOwned>(v: &Value, what: &str) -> Result<T> {
    serde_json::from_value(v.clone())
        .map_err(|e| Error::InvalidConfig(format!("OneFormer config ({what}): {e}")))
}

impl OneFormerConfig {
    /// Parses a transformers OneFormer `config.json` (text). The backbone must be Swin or
    /// ResNet (`backbone_config.model_type`). HF's `conv_dim` / `mask_dim` configure the pixel
    /// decoder and stay declared in the transformer decoder's config, which checks them against
    /// the pixel decoder's specs; the criterion's fields go to [`OneFormerLossConfig`].
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
        let decoder_num_labels = decoder.num_labels;
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
            loss: hf_loss(&v, decoder_num_labels)?,
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

    /// Checks the parts against each other: the specs the backbone and the pixel decoder
    /// report fit the transformer decoder (a declared `conv_dim` / `mask_dim` that differs is
    /// an error naming both), and the class counts agree.
    pub fn validate(&self) -> Result<()> {
        self.backbone.validate()?;
        let specs = self
            .pixel_decoder
            .output_specs(&self.backbone.feature_specs()?)?;
        self.decoder
            .input_dims(&specs)
            .map_err(|e| Error::InvalidConfig(format!("{}: {e}", self.name)))?;
        if self.loss.num_classes != self.decoder.num_labels {
            return Err(Error::InvalidConfig(format!(
                "{}: loss.num_classes {} differs from decoder.num_labels {}",
                self.name, self.loss.num_classes, self.decoder.num_labels
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

#[cfg(test)]
mod tests {
    use super::*;
    use segkit_backbones::KeyStyle;

    #[test]
    fn absurd_preprocessor_sizes_are_refused() {
        let v: Value =
            serde_json::from_str(r#"{"size": {"shortest_edge": 200000, "longest_edge": 400000}}"#)
                .unwrap();
        let e = OneFormerPreprocessConfig::from_json(&v)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("preprocessor_config.json")
                && e.contains("shortest_edge 200000")
                && e.contains("memory limit"),
            "{e}"
        );
        // A huge shortest edge alone is capped by the default longest edge (2048).
        let v: Value = serde_json::from_str(r#"{"size": 200000}"#).unwrap();
        OneFormerPreprocessConfig::from_json(&v).unwrap();
    }

    /// A small HF config.json: ResNet-18 backbone, width 32, three classes.
    const HF: &str = r#"{
        "model_type": "oneformer", "conv_dim": 32, "mask_dim": 32, "hidden_dim": 32,
        "num_attention_heads": 4, "encoder_layers": 1, "decoder_layers": 3,
        "backbone_config": {"model_type": "resnet", "depths": [2, 2, 2, 2],
                            "layer_type": "basic", "hidden_sizes": [64, 128, 256, 512]},
        "id2label": {"0": "a", "1": "b", "2": "c"},
        "no_object_weight": 0.2, "train_num_points": 100, "class_weight": 3.0,
        "contrastive_temperature": null, "use_auxiliary_loss": true
    }"#;

    #[test]
    fn hf_fields_map_onto_the_parts() {
        let c = OneFormerConfig::from_hf_json("t", HF).unwrap();
        match &c.backbone {
            OneFormerBackboneConfig::ResNet(r) => {
                assert_eq!((r.depth, r.key_style), (18, KeyStyle::Hf))
            }
            other => panic!("expected ResNet, got {other:?}"),
        }
        assert_eq!(
            (c.decoder.conv_dim, c.decoder.mask_dim),
            (Some(32), Some(32))
        );
        assert_eq!(c.pixel_decoder.conv_dim, 32);
        // The criterion's settings under HF's names land in segkit-losses' config.
        let l = &c.loss;
        assert_eq!(l.num_classes, 3);
        assert_eq!((l.eos_coef, l.num_points, l.class_weight), (0.2, 100, 3.0));
        assert_eq!((l.mask_weight, l.contrastive_temperature), (5.0, None));
        // segkit's own serialisation round-trips.
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<OneFormerConfig>(&j).unwrap(), c);
    }

    #[test]
    fn declared_dims_are_checked_against_the_specs() {
        let mut c = OneFormerConfig::from_hf_json("t", HF).unwrap();
        c.decoder.mask_dim = Some(64);
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("`mask_dim` is 64") && e.contains("mask features (stride 4) has 32"),
            "{e}"
        );
        // A config.json whose decoder width does not match the pixel decoder's levels.
        let bad = HF.replace(r#""hidden_dim": 32"#, r#""hidden_dim": 64"#);
        let e = OneFormerConfig::from_hf_json("t", &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`hidden_dim` is 64") && e.contains("has 32"),
            "{e}"
        );
        let mut c = OneFormerConfig::from_hf_json("t", HF).unwrap();
        c.loss.num_classes = 4;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("num_classes"));
    }
}
