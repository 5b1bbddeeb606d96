//! Presets of [`OneFormerConfig`] for the shi-labs OneFormer checkpoints on the Hugging Face
//! hub, with their class names and thing classes.
//!
//! The architecture values follow the official OneFormer configs
//! (`configs/{ade20k,coco,cityscapes}/oneformer_swin_*.yaml`): Swin-T with 150 queries for
//! ADE20K, Swin-L (window 12, ImageNet-22k 384) with 250 queries for ADE20K and Cityscapes and
//! 150 for COCO; test sizes as the processors (shortest edge 512 / 640 / 800 / 1024). A
//! downloaded directory is better loaded with [`crate::OneFormer::from_hf_dir`], which reads
//! the checkpoint's own `config.json`.

use segkit_backbones::SwinConfig;
use segkit_necks::MsDeformAttnPixelDecoderConfig;
use segkit_oneformer::decoder::TransformerDecoderConfig;
use segkit_oneformer::text_mapper::TextMapperConfig;

use super::{
    OneFormerBackboneConfig, OneFormerConfig, OneFormerLossConfig, OneFormerPreprocessConfig,
};
use crate::{Error, Result};

/// ADE20K-150 class names as in the shi-labs OneFormer checkpoints' `id2label` (detectron2's
/// `ADE20K_SEM_SEG_CATEGORIES`, e.g. `"window "` with its trailing space).
pub const ONEFORMER_ADE20K_CLASSES: [&str; 150] = [
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road, route",
    "bed",
    "window ",
    "grass",
    "cabinet",
    "sidewalk, pavement",
    "person",
    "earth, ground",
    "door",
    "table",
    "mountain, mount",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting, picture",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock, stone",
    "wardrobe, closet, press",
    "lamp",
    "tub",
    "rail",
    "cushion",
    "base, pedestal, stand",
    "box",
    "column, pillar",
    "signboard, sign",
    "chest of drawers, chest, bureau, dresser",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator, icebox",
    "grandstand, covered stand",
    "path",
    "stairs",
    "runway",
    "case, display case, showcase, vitrine",
    "pool table, billiard table, snooker table",
    "pillow",
    "screen door, screen",
    "stairway, staircase",
    "river",
    "bridge, span",
    "bookcase",
    "blind, screen",
    "coffee table",
    "toilet, can, commode, crapper, pot, potty, stool, throne",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm, palm tree",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel, hut, hutch, shack, shanty",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning, sunshade, sunblind",
    "street lamp",
    "booth",
    "tv",
    "plane",
    "dirt track",
    "clothes",
    "pole",
    "land, ground, soil",
    "bannister, banister, balustrade, balusters, handrail",
    "escalator, moving staircase, moving stairway",
    "ottoman, pouf, pouffe, puff, hassock",
    "bottle",
    "buffet, counter, sideboard",
    "poster, posting, placard, notice, bill, card",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt, conveyor belt, conveyer, conveyor, transporter",
    "canopy",
    "washer, automatic washer, washing machine",
    "plaything, toy",
    "pool",
    "stool",
    "barrel, cask",
    "basket, handbasket",
    "falls",
    "tent",
    "bag",
    "minibike, motorbike",
    "cradle",
    "oven",
    "ball",
    "food, solid food",
    "step, stair",
    "tank, storage tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket, cover",
    "sculpture",
    "hood, exhaust hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "trash can",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass, drinking glass",
    "clock",
    "flag",
];

/// ADE20K-150 thing classes (the `isthing` flags of OneFormer's ADE20K panoptic metadata).
pub const ONEFORMER_ADE20K_THINGS: [u32; 100] = [
    7, 8, 10, 12, 14, 15, 18, 19, 20, 22, 23, 24, 27, 30, 31, 32, 33, 35, 36, 37, 38, 39, 41, 42,
    43, 44, 45, 47, 49, 50, 53, 55, 56, 57, 58, 62, 64, 65, 66, 67, 69, 70, 71, 72, 73, 74, 75, 76,
    78, 80, 81, 82, 83, 85, 86, 87, 88, 89, 90, 92, 93, 95, 97, 98, 102, 103, 104, 107, 108, 110,
    111, 112, 115, 116, 118, 119, 120, 121, 123, 124, 125, 126, 127, 129, 130, 132, 133, 134, 135,
    136, 137, 138, 139, 142, 143, 144, 146, 147, 148, 149,
];

/// COCO panoptic's 133 classes (80 things, then 53 stuff), in the contiguous order of the
/// OneFormer / Mask2Former COCO checkpoints (panopticapi's `panoptic_coco_categories.json`).
pub const COCO_PANOPTIC_CLASSES: [&str; 133] = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
    "banner",
    "blanket",
    "bridge",
    "cardboard",
    "counter",
    "curtain",
    "door-stuff",
    "floor-wood",
    "flower",
    "fruit",
    "gravel",
    "house",
    "light",
    "mirror-stuff",
    "net",
    "pillow",
    "platform",
    "playingfield",
    "railroad",
    "river",
    "road",
    "roof",
    "sand",
    "sea",
    "shelf",
    "snow",
    "stairs",
    "tent",
    "towel",
    "wall-brick",
    "wall-stone",
    "wall-tile",
    "wall-wood",
    "water-other",
    "window-blind",
    "window-other",
    "tree-merged",
    "fence-merged",
    "ceiling-merged",
    "sky-other-merged",
    "cabinet-merged",
    "table-merged",
    "floor-other-merged",
    "pavement-merged",
    "mountain-merged",
    "grass-merged",
    "dirt-merged",
    "paper-merged",
    "food-other-merged",
    "building-other-merged",
    "rock-merged",
    "wall-other-merged",
    "rug-merged",
];

/// The names of all OneFormer presets.
pub const ONEFORMER_PRESETS: [&str; 4] = [
    "oneformer_ade20k_swin_tiny",
    "oneformer_ade20k_swin_large",
    "oneformer_coco_swin_large",
    "oneformer_cityscapes_swin_large",
];

fn build(
    name: &str,
    backbone: SwinConfig,
    num_queries: usize,
    labels: &[&str],
    shortest_edge: usize,
    longest_edge: usize,
) -> OneFormerConfig {
    let decoder = TransformerDecoderConfig {
        num_queries,
        num_labels: labels.len(),
        ..TransformerDecoderConfig::oneformer_ade20k_swin_tiny()
    };
    OneFormerConfig {
        name: name.to_string(),
        backbone: OneFormerBackboneConfig::Swin(backbone),
        pixel_decoder: MsDeformAttnPixelDecoderConfig::oneformer_ade20k_swin_tiny(),
        decoder,
        text_mapper: TextMapperConfig::default(),
        is_training: false,
        labels: labels.iter().map(|s| s.to_string()).collect(),
        preprocess: OneFormerPreprocessConfig {
            shortest_edge,
            longest_edge,
            ..OneFormerPreprocessConfig::default()
        },
        loss: OneFormerLossConfig::oneformer(labels.len()),
    }
}

impl OneFormerConfig {
    /// shi-labs/oneformer_ade20k_swin_tiny: Swin-T, 150 queries, ADE20K-150, shortest edge 512.
    pub fn ade20k_swin_tiny() -> Self {
        build(
            "oneformer_ade20k_swin_tiny",
            SwinConfig::oneformer_swin_tiny(),
            150,
            &ONEFORMER_ADE20K_CLASSES,
            512,
            2048,
        )
    }

    /// shi-labs/oneformer_ade20k_swin_large: Swin-L (window 12), 250 queries, ADE20K-150,
    /// shortest edge 640.
    pub fn ade20k_swin_large() -> Self {
        build(
            "oneformer_ade20k_swin_large",
            SwinConfig::oneformer_swin_large(),
            250,
            &ONEFORMER_ADE20K_CLASSES,
            640,
            2560,
        )
    }

    /// shi-labs/oneformer_coco_swin_large: Swin-L (window 12), 150 queries, COCO panoptic 133,
    /// shortest edge 800, longest 1333.
    pub fn coco_swin_large() -> Self {
        build(
            "oneformer_coco_swin_large",
            SwinConfig::oneformer_swin_large(),
            150,
            &COCO_PANOPTIC_CLASSES,
            800,
            1333,
        )
    }

    /// shi-labs/oneformer_cityscapes_swin_large: Swin-L (window 12), 250 queries, Cityscapes
    /// 19, shortest edge 1024, longest 2048.
    pub fn cityscapes_swin_large() -> Self {
        build(
            "oneformer_cityscapes_swin_large",
            SwinConfig::oneformer_swin_large(),
            250,
            &crate::datasets::CITYSCAPES_CLASSES,
            1024,
            2048,
        )
    }

    /// A preset by name ([`ONEFORMER_PRESETS`]); an unknown name lists the valid ones.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "oneformer_ade20k_swin_tiny" => Ok(Self::ade20k_swin_tiny()),
            "oneformer_ade20k_swin_large" => Ok(Self::ade20k_swin_large()),
            "oneformer_coco_swin_large" => Ok(Self::coco_swin_large()),
            "oneformer_cityscapes_swin_large" => Ok(Self::cityscapes_swin_large()),
            _ => Err(Error::UnknownPreset {
                name: name.to_string(),
                valid: ONEFORMER_PRESETS.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }

    /// The thing classes of the preset's dataset (for instance post-processing of the
    /// panoptic task and for panoptic fusing of stuff): ADE20K's 100, COCO's first 80,
    /// Cityscapes' 8 (person .. bicycle); empty for unknown label sets.
    pub fn thing_classes(&self) -> Vec<u32> {
        let labels: Vec<&str> = self.labels.iter().map(String::as_str).collect();
        if labels == ONEFORMER_ADE20K_CLASSES {
            ONEFORMER_ADE20K_THINGS.to_vec()
        } else if labels == COCO_PANOPTIC_CLASSES {
            (0..80).collect()
        } else if labels == crate::datasets::CITYSCAPES_CLASSES {
            (11..19).collect()
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_named() {
        for name in ONEFORMER_PRESETS {
            let c = OneFormerConfig::preset(name).unwrap();
            c.validate().unwrap();
            assert_eq!(c.name, name);
            assert!(!c.thing_classes().is_empty(), "{name}");
        }
        assert_eq!(
            OneFormerConfig::ade20k_swin_tiny().thing_classes().len(),
            100
        );
        let e = OneFormerConfig::preset("oneformer_nope")
            .unwrap_err()
            .to_string();
        assert!(e.contains("oneformer_ade20k_swin_tiny"), "{e}");
    }
}
