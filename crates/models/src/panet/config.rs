//! [`PanetConfig`]: a PANet model — caffe-style ResNet body, GN FPN with the bottom-up path,
//! Detectron's FPN RPN, the RoI heads, Detectron's test-time input and output settings, class
//! names — and its presets.

use segkit_backbones::CaffeResNetConfig;
use segkit_heads::panet::PanetRoiHeadsConfig;
use segkit_heads::RpnConfig;
use segkit_necks::PanetFpnConfig;
use serde::{Deserialize, Serialize};

use crate::datasets::DatasetMeta;
use crate::{Error, Result};

/// Detectron's test-time input settings (`cfg.TEST` and `cfg.FPN.COARSEST_STRIDE`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanetInput {
    /// Target length of the shorter side (`TEST.SCALE`; PANet's config: 1000).
    pub scale: usize,
    /// Cap on the longer side (`TEST.MAX_SIZE`; 1400): the scale is `max_size / longer side`
    /// when `round(scale * longer side)` would exceed it.
    pub max_size: usize,
    /// The blob is zero-padded bottom / right to a multiple of this (`FPN.COARSEST_STRIDE`, 32).
    pub size_divisibility: usize,
    /// BGR means subtracted from the 0..255 pixels (`PIXEL_MEANS`), no standard deviation.
    pub pixel_means_bgr: [f64; 3],
}

impl PanetInput {
    /// `e2e_panet_R-50-FPN_2x_mask.yaml`: shorter side 1000, longer side at most 1400, padding
    /// to 32, Detectron's pixel means.
    pub fn official() -> Self {
        Self {
            scale: 1000,
            max_size: 1400,
            size_divisibility: 32,
            pixel_means_bgr: segkit_backbones::PIXEL_MEANS_BGR.map(f64::from),
        }
    }

    /// Detectron's `get_target_scale` for an image of `height x width`:
    /// `scale / shorter`, or `max_size / longer` when `round(that * longer) > max_size`.
    pub fn target_scale(&self, height: usize, width: usize) -> f64 {
        let (lo, hi) = (height.min(width) as f64, height.max(width) as f64);
        let s = self.scale as f64 / lo;
        if (s * hi).round_ties_even() > self.max_size as f64 {
            self.max_size as f64 / hi
        } else {
            s
        }
    }
}

/// A PANet model (Liu et al., CVPR 2018) as the official code builds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanetConfig {
    /// The model's name (the preset's).
    pub name: String,
    /// The caffe-style ResNet body (`Conv_Body.conv_body.*`).
    pub backbone: CaffeResNetConfig,
    /// The GN FPN with the bottom-up path (`Conv_Body.*`).
    pub fpn: PanetFpnConfig,
    /// The FPN RPN and its test-time proposal settings (`RPN.*`).
    pub rpn: RpnConfig,
    /// The box and mask heads and the test-time post-processing (`Box_Head.*`, `Box_Outs.*`,
    /// `Mask_Head.*`, `Mask_Outs.*`); their `num_classes` count the background, class 0
    /// (`MODEL.NUM_CLASSES`; COCO: 81).
    pub roi_heads: PanetRoiHeadsConfig,
    /// Test-time input resize and padding.
    pub input: PanetInput,
    /// Class names (index 0 is the background) and palette.
    #[serde(default)]
    pub meta: DatasetMeta,
}

/// The preset names, in the table's order.
pub const PANET_PRESETS: [&str; 2] = ["panet_r50_fpn_2x_coco", "panet_r101_fpn_2x_coco"];

/// segkit's demo instance model (`segkit_demo_panet`, not in [`PANET_PRESETS`]: no official
/// weights; trained by `cargo xtask panet-demo`, committed as `segkit-demo-panet`).
pub const PANET_DEMO_PRESET: &str = "segkit_demo_panet";

/// COCO's 80 object classes behind Detectron's background class 0 (the contiguous order of
/// `datasets/dataset_catalog.py` / the COCO json's categories sorted by id).
pub fn coco_detection_meta() -> DatasetMeta {
    let things = &crate::oneformer::presets::COCO_PANOPTIC_CLASSES[..80];
    let classes: Vec<String> = std::iter::once("__background__")
        .chain(things.iter().copied())
        .map(String::from)
        .collect();
    let palette = segkit_data::palette::voc_palette(classes.len());
    DatasetMeta { classes, palette }
}

impl PanetConfig {
    /// `e2e_panet_R-50-FPN_2x_mask.yaml` (the released `panet_mask_step179999.pth`: COCO
    /// box AP 43.1 / mask AP 38.3 on val2017 as the official README reports).
    pub fn r50_fpn_2x_coco() -> Self {
        Self {
            name: PANET_PRESETS[0].into(),
            backbone: CaffeResNetConfig::detectron(50),
            fpn: PanetFpnConfig::panet(),
            rpn: RpnConfig::detectron_test(),
            roi_heads: PanetRoiHeadsConfig::panet_coco(),
            input: PanetInput::official(),
            meta: coco_detection_meta(),
        }
    }

    /// The same model on a caffe-style ResNet-101 body (no released weights).
    pub fn r101_fpn_2x_coco() -> Self {
        Self {
            name: PANET_PRESETS[1].into(),
            backbone: CaffeResNetConfig::detectron(101),
            ..Self::r50_fpn_2x_coco()
        }
    }

    /// segkit's demo instance model ([`PANET_DEMO_PRESET`]): PANet's architecture made small
    /// for 128 x 128 canvases of 20..64 px Fashion-MNIST items (background + 10 classes), to
    /// train from scratch on a CPU: a caffe ResNet-26 a quarter as wide (`base_channels` 16:
    /// C2..C5 of 64 / 128 / 256 / 512 channels, nothing frozen), the GN pyramid with the
    /// bottom-up path at 64 channels (GN 16 groups), RPN anchors 16 / 32 / 64 / 128 / 256 on
    /// N2..N6 (ratios 0.5, 1, 2; test: 1000 per level before NMS, 300 after, 300 collected),
    /// the box head with adaptive pooling at 32 channels (per-level conv + one shared conv,
    /// GN 8 groups, fc 128), the mask head with fully-connected fusion at 32 channels (GN 8
    /// groups) on 7 x 7 pooled RoIs giving 14 x 14 masks; test input scale 128 (shorter side),
    /// at most 128.
    pub fn segkit_demo() -> Self {
        let k = crate::encoder_decoder::demo::FASHION_CLASSES.len();
        let mut backbone = CaffeResNetConfig::detectron(26);
        backbone.base_channels = 16;
        backbone.freeze_at = 0;
        let mut fpn = PanetFpnConfig::panet();
        fpn.out_channels = 64;
        fpn.gn_groups = 16;
        let mut rpn = RpnConfig::detectron_test();
        rpn.anchor_start_size = 16.0;
        rpn.post_nms_top_n = 300;
        rpn.collect_top_n = 300;
        let mut roi_heads = PanetRoiHeadsConfig::panet(k);
        let b = &mut roi_heads.box_head;
        (b.num_stacked_convs, b.conv_dim, b.fc_dim, b.gn_groups) = (2, 32, 128, 8);
        if let Some(m) = roi_heads.mask_head.as_mut() {
            (m.dim, m.gn_groups, m.resolution) = (32, 8, 14);
            m.pool.resolution = 7;
        }
        let meta = crate::encoder_decoder::demo::demo_config().meta;
        Self {
            name: PANET_DEMO_PRESET.into(),
            backbone,
            fpn,
            rpn,
            roi_heads,
            input: PanetInput {
                scale: 128,
                max_size: 128,
                ..PanetInput::official()
            },
            meta,
        }
    }

    /// The preset `name` ([`PANET_PRESETS`], or [`PANET_DEMO_PRESET`]).
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "panet_r50_fpn_2x_coco" => Ok(Self::r50_fpn_2x_coco()),
            "panet_r101_fpn_2x_coco" => Ok(Self::r101_fpn_2x_coco()),
            PANET_DEMO_PRESET => Ok(Self::segkit_demo()),
            _ => Err(Error::UnknownPreset {
                name: name.into(),
                valid: PANET_PRESETS
                    .iter()
                    .chain([&PANET_DEMO_PRESET])
                    .map(|s| s.to_string())
                    .collect(),
            }),
        }
    }

    /// Number of classes including the background (the box head's).
    pub fn num_classes(&self) -> usize {
        self.roi_heads.box_head.num_classes
    }

    /// Class names by class id (`class_<i>` where `meta` has none).
    pub fn classes(&self) -> Vec<String> {
        let n = self.num_classes();
        if self.meta.classes.len() == n {
            self.meta.classes.clone()
        } else {
            (0..n).map(|i| format!("class_{i}")).collect()
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(format!("{}: {m}", self.name)));
        if self.num_classes() < 2 {
            return bad(format!(
                "roi_heads.box_head.num_classes counts the background and must be at least 2, \
                 got {}",
                self.num_classes()
            ));
        }
        let i = &self.input;
        if i.scale == 0 || i.max_size == 0 || i.size_divisibility == 0 {
            return bad(format!(
                "input.scale, input.max_size and input.size_divisibility must be positive, got \
                 {}, {}, {}",
                i.scale, i.max_size, i.size_divisibility
            ));
        }
        let t = &self.roi_heads.detection;
        let unit = |v: f32| (0.0..=1.0).contains(&v);
        if !unit(t.score_thresh) || !unit(t.nms_thresh) || !unit(t.mask_thresh) {
            return bad(format!(
                "roi_heads.detection: score_thresh, nms_thresh and mask_thresh must be in [0, 1], \
                 got {}, {}, {}",
                t.score_thresh, t.nms_thresh, t.mask_thresh
            ));
        }
        if t.bbox_reg_weights
            .iter()
            .any(|w| !(w.is_finite() && *w > 0.0))
        {
            return bad(format!(
                "roi_heads.detection.bbox_reg_weights must be positive, got {:?}",
                t.bbox_reg_weights
            ));
        }
        if self.rpn.min_level != 2 || self.rpn.max_level != 6 {
            return bad(format!(
                "the RPN runs on N2..N6 (levels 2..=6), got {}..={}",
                self.rpn.min_level, self.rpn.max_level
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelConfig;

    #[test]
    fn presets_round_trip_and_bad_configs_are_named() {
        for name in PANET_PRESETS.iter().chain([&PANET_DEMO_PRESET]) {
            let cfg = ModelConfig::Panet(Box::new(PanetConfig::preset(name).unwrap()));
            assert_eq!(ModelConfig::from_json(&cfg.to_json_pretty()).unwrap(), cfg);
        }
        let c = PanetConfig::r50_fpn_2x_coco();
        assert_eq!(c.classes()[1], "person");
        assert_eq!(c.classes()[80], "toothbrush");
        assert_eq!(c.classes().len(), 81);
        let e = PanetConfig::preset("panet_r50").unwrap_err().to_string();
        assert!(e.contains("panet_r101_fpn_2x_coco"), "{e}");
        let mut bad = c.clone();
        bad.roi_heads.box_head.num_classes = 1;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("num_classes"));
        let mut bad = c.clone();
        bad.roi_heads.detection.nms_thresh = 1.5;
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("nms_thresh"), "{e}");
        let mut bad = c.clone();
        bad.input.size_divisibility = 0;
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("size_divisibility"), "{e}");
    }

    #[test]
    fn target_scale_is_detectrons() {
        let i = PanetInput::official();
        // 480 x 640: 1000 / 480, longer side 1333 <= 1400.
        assert_eq!(i.target_scale(480, 640), 1000.0 / 480.0);
        // 400 x 1000: 2500 > 1400, capped by the longer side.
        assert_eq!(i.target_scale(400, 1000), 1.4);
        assert_eq!(i.target_scale(1, 1), 1000.0);
    }
}
