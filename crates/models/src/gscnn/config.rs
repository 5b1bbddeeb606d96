//! [`GscnnConfig`]: a Gated-SCNN model — regular stream, head settings, Canny input mode,
//! normalisation and class names — and its presets.

use segkit_backbones::{ResNetConfig, WideResNetConfig};
use segkit_core::FeatureSpec;
use segkit_heads::gscnn::GscnnHeadConfig;
use serde::{Deserialize, Serialize};

pub use segkit_data::edges::CannyInput;

use crate::datasets::DatasetMeta;
use crate::{Error, Result};

/// The regular stream of a Gated-SCNN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GscnnBackbone {
    /// WideResNet38-A2 at output stride 8 (the official model): shape input m1 (stride 1),
    /// fine map m2 (stride 2), side outputs on m3 / m4 / m7, ASPP on m7.
    #[serde(rename = "wrn38")]
    Wrn38,
    /// torchvision ResNet-50 dilated to output stride 8 (`replace_stride_with_dilation =
    /// [False, True, True]`): shape input and fine map c2 (stride 4), side outputs on c3 / c4
    /// / c5, ASPP on c5 (segkit's wiring; the official code has only WRN38).
    #[serde(rename = "resnet50-d8")]
    ResNet50D8,
    /// ResNet-101, wired as [`GscnnBackbone::ResNet50D8`].
    #[serde(rename = "resnet101-d8")]
    ResNet101D8,
}

impl GscnnBackbone {
    /// The ResNet config of a ResNet regular stream (`None` for WRN38).
    pub fn resnet(&self) -> Result<Option<ResNetConfig>> {
        let depth = match self {
            GscnnBackbone::Wrn38 => return Ok(None),
            GscnnBackbone::ResNet50D8 => 50,
            GscnnBackbone::ResNet101D8 => 101,
        };
        Ok(Some(
            ResNetConfig::torchvision(depth).with_output_stride(8)?,
        ))
    }

    /// Which backbone outputs feed the head's `[shape, fine, side1, side2, deep]` inputs.
    pub fn head_inputs(&self) -> [usize; 5] {
        match self {
            GscnnBackbone::Wrn38 => [0, 1, 2, 3, 6],
            _ => [0, 0, 1, 2, 3],
        }
    }

    /// The specs of the head's five inputs, from the backbone's specs.
    pub fn head_specs(&self, specs: &[FeatureSpec]) -> Result<Vec<FeatureSpec>> {
        self.head_inputs()
            .iter()
            .map(|&i| {
                specs.get(i).copied().ok_or_else(|| {
                    Error::InvalidConfig(format!("regular stream has no output {i}"))
                })
            })
            .collect()
    }

    /// WRN38's config, for [`GscnnBackbone::Wrn38`].
    pub fn wide_resnet(&self) -> Option<WideResNetConfig> {
        (*self == GscnnBackbone::Wrn38).then(WideResNetConfig::wrn38_a2)
    }
}

/// A Gated-SCNN model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GscnnConfig {
    /// The model's name (the preset's).
    pub name: String,
    /// The regular stream.
    pub backbone: GscnnBackbone,
    /// Number of classes.
    pub num_classes: usize,
    /// Run the shape stream (the paper's model); `false`: regular stream + ASPP without the
    /// edge branch, no `edge` output.
    pub shape_stream: bool,
    /// How the Canny map is computed from the normalised input (segkit-data's
    /// [`CannyInput`]: `as_released`, the official checkpoint's, or `image8bit`).
    pub canny: CannyInput,
    /// Per-channel RGB mean on the 0..1 scale (torchvision `Normalize`; ImageNet's
    /// 0.485, 0.456, 0.406).
    pub mean: [f64; 3],
    /// Per-channel RGB standard deviation on the 0..1 scale (0.229, 0.224, 0.225).
    pub std: [f64; 3],
    /// Class names and palette.
    #[serde(default)]
    pub meta: DatasetMeta,
    /// A ResNet regular stream in place of the backbone's torchvision config (e.g. a small
    /// ResNet-18 at a reduced base width, dilated to output stride 8: segkit-train's demo
    /// network); ResNet backbones only, wired as they are. `None`: the backbone's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regular: Option<ResNetConfig>,
    /// Head widths and ASPP rates in place of the official ones (its `num_classes` and
    /// `shape_stream` are the model's). `None`: [`GscnnHeadConfig::official`].
    #[serde(default, rename = "head", skip_serializing_if = "Option::is_none")]
    pub head_config: Option<GscnnHeadConfig>,
}

/// The preset names, in the table's order.
pub const GSCNN_PRESETS: [&str; 2] = ["gscnn_wrn38_cityscapes", "gscnn_r101-d8_cityscapes"];

impl GscnnConfig {
    /// The official Cityscapes model: WRN38, 19 classes, Canny as released, ImageNet
    /// normalisation (`best_cityscapes_checkpoint.pth` loads into it).
    pub fn wrn38_cityscapes() -> Self {
        Self {
            name: GSCNN_PRESETS[0].into(),
            backbone: GscnnBackbone::Wrn38,
            num_classes: 19,
            shape_stream: true,
            canny: CannyInput::AsReleased,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            meta: DatasetMeta::cityscapes(),
            regular: None,
            head_config: None,
        }
    }

    /// The same head on a torchvision ResNet-101 at output stride 8 (no released weights).
    pub fn r101_d8_cityscapes() -> Self {
        Self {
            name: GSCNN_PRESETS[1].into(),
            backbone: GscnnBackbone::ResNet101D8,
            ..Self::wrn38_cityscapes()
        }
    }

    /// The preset `name` ([`GSCNN_PRESETS`]).
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "gscnn_wrn38_cityscapes" => Ok(Self::wrn38_cityscapes()),
            "gscnn_r101-d8_cityscapes" => Ok(Self::r101_d8_cityscapes()),
            _ => Err(Error::UnknownPreset {
                name: name.into(),
                valid: GSCNN_PRESETS.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }

    /// The head's config.
    pub fn head(&self) -> GscnnHeadConfig {
        let base = match &self.head_config {
            Some(h) => h.clone(),
            None => GscnnHeadConfig::official(self.num_classes),
        };
        GscnnHeadConfig {
            num_classes: self.num_classes,
            shape_stream: self.shape_stream,
            ..base
        }
    }

    /// The ResNet config of a ResNet regular stream (`regular`, else the backbone's own;
    /// `None` for WRN38). Errors: `regular` with the WRN38 backbone.
    pub fn resnet(&self) -> Result<Option<ResNetConfig>> {
        match (&self.regular, self.backbone) {
            (Some(_), GscnnBackbone::Wrn38) => Err(Error::InvalidConfig(format!(
                "{}: `regular` (a ResNet regular stream) needs a ResNet backbone, not wrn38",
                self.name
            ))),
            (Some(r), _) => Ok(Some(r.clone())),
            (None, b) => b.resnet(),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.num_classes == 0 {
            return Err(Error::InvalidConfig(format!(
                "{}: num_classes must be positive",
                self.name
            )));
        }
        if self
            .std
            .iter()
            .any(|s| s.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater))
        {
            return Err(Error::InvalidConfig(format!(
                "{}: std must be positive, got {:?}",
                self.name, self.std
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelConfig;

    #[test]
    fn presets_parse_back_and_bad_configs_are_named() {
        for name in GSCNN_PRESETS {
            let cfg = ModelConfig::Gscnn(Box::new(GscnnConfig::preset(name).unwrap()));
            assert_eq!(ModelConfig::from_json(&cfg.to_json_pretty()).unwrap(), cfg);
        }
        let json = ModelConfig::Gscnn(Box::new(GscnnConfig::wrn38_cityscapes()))
            .to_json_pretty()
            .replace("\"wrn38\"", "\"vgg16\"");
        let e = ModelConfig::from_json(&json).unwrap_err().to_string();
        assert!(e.contains("vgg16") && e.contains("resnet101-d8"), "{e}");
        let e = GscnnConfig::preset("gscnn_r50").unwrap_err().to_string();
        assert!(e.contains("gscnn_wrn38_cityscapes"), "{e}");
        let bad = GscnnConfig {
            std: [0.2, 0.0, 0.2],
            ..GscnnConfig::wrn38_cityscapes()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("std"));
        let small = ResNetConfig::torchvision(18).with_output_stride(8).unwrap();
        let wrn_small = GscnnConfig {
            regular: Some(small.clone()),
            ..GscnnConfig::wrn38_cityscapes()
        };
        let e = wrn_small.resnet().unwrap_err().to_string();
        assert!(e.contains("regular") && e.contains("wrn38"), "{e}");
        let r18 = GscnnConfig {
            backbone: GscnnBackbone::ResNet50D8,
            regular: Some(small.clone()),
            head_config: Some(GscnnHeadConfig {
                aspp_channels: 32,
                ..GscnnHeadConfig::official(3)
            }),
            ..GscnnConfig::wrn38_cityscapes()
        };
        assert_eq!(r18.resnet().unwrap(), Some(small));
        assert_eq!((r18.head().num_classes, r18.head().aspp_channels), (19, 32));
        let m = ModelConfig::Gscnn(Box::new(r18));
        assert_eq!(ModelConfig::from_json(&m.to_json_pretty()).unwrap(), m);
    }

    #[test]
    fn resnet_streams_feed_the_head_by_role() {
        let specs = GscnnBackbone::ResNet101D8
            .resnet()
            .unwrap()
            .unwrap()
            .feature_specs()
            .unwrap();
        let head = GscnnBackbone::ResNet101D8.head_specs(&specs).unwrap();
        let cs: Vec<_> = head.iter().map(|s| (s.channels, s.stride)).collect();
        assert_eq!(cs, [(256, 4), (256, 4), (512, 8), (1024, 8), (2048, 8)]);
        assert!(GscnnBackbone::Wrn38.head_specs(&specs).is_err());
    }
}
