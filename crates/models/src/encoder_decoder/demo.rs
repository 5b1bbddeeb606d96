//! segkit's demo preset `segkit_demo_r18w16_psp_fashion-128x128`: a ResNetV1c-18 a quarter as
//! wide as the standard one (mmseg `base_channels = 16`, `stem_channels = 16`), dilated to
//! output stride 8, with a PSP head (32 channels) and an auxiliary FCN head on C4, for 11
//! classes (background + the 10 Fashion-MNIST classes). The dataset it is trained on is made by
//! `cargo xtask make-demo-data`; the trained weights ship with the `segkit` facade.

use segkit_backbones::{KeyStyle, ResNetConfig, Stem};
use segkit_heads::{DecodeHeadConfig, FcnHeadConfig, InIndex, PspHeadConfig};

use super::config::{
    BackboneConfig, DataPreprocessorConfig, HeadConfig, SegmentorConfig, TestMode,
};
use crate::datasets::DatasetMeta;

/// Name of the demo preset.
pub const DEMO_PRESET: &str = "segkit_demo_r18w16_psp_fashion-128x128";

/// Class names of the demo dataset: background, then Fashion-MNIST's labels 0..9.
pub const FASHION_CLASSES: [&str; 11] = [
    "background",
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Display colours of [`FASHION_CLASSES`].
pub const FASHION_PALETTE: [[u8; 3]; 11] = [
    [0, 0, 0],
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 190],
];

/// The demo presets by name (only [`DEMO_PRESET`]).
pub fn preset(name: &str) -> Option<SegmentorConfig> {
    (name == DEMO_PRESET).then(demo_config)
}

/// Names of the demo presets.
pub fn preset_names() -> Vec<String> {
    vec![DEMO_PRESET.to_string()]
}

/// The config of [`DEMO_PRESET`].
pub fn demo_config() -> SegmentorConfig {
    let k = FASHION_CLASSES.len();
    let backbone = ResNetConfig {
        stem: Stem::Deep { width: 8 },
        key_style: KeyStyle::Mmseg,
        base_channels: 16,
        ..ResNetConfig::mmseg_v1c(18)
    };
    let mut decode = PspHeadConfig::pspnet_r50_d8(k);
    decode.base = DecodeHeadConfig::mmseg(32, k, InIndex::One(3));
    let mut aux = FcnHeadConfig::aux_r50_d8(k);
    aux.base = DecodeHeadConfig::mmseg(32, k, InIndex::One(2));
    SegmentorConfig {
        name: DEMO_PRESET.to_string(),
        backbone: BackboneConfig::ResNet(backbone),
        neck: None,
        decode_head: HeadConfig::Psp(decode),
        auxiliary_head: Some(HeadConfig::Fcn(aux)),
        data_preprocessor: DataPreprocessorConfig {
            size: Some([128, 128]),
            ..DataPreprocessorConfig::default()
        },
        test_resize: None,
        test_cfg: TestMode::Whole,
        tta: None,
        meta: DatasetMeta {
            classes: FASHION_CLASSES.iter().map(|s| s.to_string()).collect(),
            palette: FASHION_PALETTE.to_vec(),
        },
        losses: Default::default(),
    }
}
