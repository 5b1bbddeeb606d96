//! Composing the two models: typed configs from the parts' presets, the same from JSON, and
//! the bare components wired by hand.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use segkit::backbones::{ResNet, ResNetConfig, SwinConfig};
use segkit::core::{Backbone, DecodeHead, FeatureSpec, Neck};
use segkit::heads::{DaHead, DaHeadConfig, InIndex};
use segkit::necks::{Jpu, JpuConfig};
use segkit::{BackboneConfig, HeadConfig, NeckConfig, SegmentorConfig};

/// Full size (the papers' widths) or reduced (narrow widths, for a fast test run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// ResNet-50 (64 base channels), JPU width 512, DANet head 512; Swin-T (embed 96).
    Full,
    /// ResNet-50 with 8 base channels, JPU width 32, heads 32; Swin with embed 24 and
    /// depths (2, 2, 2, 2). Same structure and keys, ~1/60 of the compute.
    Reduced,
}

/// ResNet-50-D8 (mmseg's ResNetV1c) + JPU + DANet head, as a typed config.
///
/// The backbone returns C3..C5 (`out_indices` 1, 2, 3). On a D8 backbone the three levels
/// are all at stride 8, not the 8 / 16 / 32 FastFCN designed the JPU for (its D32 backbone),
/// so the JPU is told to fuse them as they are (`designed_for` None); the DANet head reads
/// the JPU's fused map, the last output (`in_index` -1), which has the 2048 channels at
/// stride 8 the DANet preset was designed for (so its check stays on).
pub fn r50_d8_jpu_danet(num_classes: usize, size: Size) -> SegmentorConfig {
    let mut backbone = ResNetConfig::mmseg_v1c(50).with_out_indices(&[1, 2, 3]);
    let mut jpu = JpuConfig::mmseg().with_designed_for(None);
    let mut head = DaHeadConfig::danet_r50_d8(num_classes);
    head.base.in_index = InIndex::One(-1);
    if size == Size::Reduced {
        backbone.base_channels = 8;
        jpu.mid_channels = 32;
        head.base.channels = 32;
        head.pam_channels = 4;
        // 4 x 32 channels from the reduced JPU instead of 2048.
        head.base.designed_for = Some(vec![FeatureSpec::new(128, 8)]);
    }
    segmentor(
        "r50-d8_jpu_danet",
        BackboneConfig::ResNet(backbone),
        Some(NeckConfig::Jpu(jpu)),
        head,
        num_classes,
    )
}

/// Swin-T (mmseg keys) + DANet head on its last stage (768 channels at stride 32; the
/// DANet preset was designed for a ResNet's 2048 at stride 8, so its check is turned off on
/// purpose).
pub fn swin_t_danet(num_classes: usize, size: Size) -> SegmentorConfig {
    let mut backbone = SwinConfig::mmseg_tiny();
    if size == Size::Reduced {
        backbone.embed_dim = 24;
        backbone.depths = vec![2, 2, 2, 2];
        backbone.num_heads = vec![1, 2, 3, 6];
    }
    let mut head = DaHeadConfig::danet_r50_d8(num_classes);
    head.base.in_index = InIndex::One(-1);
    head.base.designed_for = None;
    if size == Size::Reduced {
        head.base.channels = 32;
        head.pam_channels = 4;
    }
    segmentor(
        "swin-t_danet",
        BackboneConfig::Swin(backbone),
        None,
        head,
        num_classes,
    )
}

fn segmentor(
    name: &str,
    backbone: BackboneConfig,
    neck: Option<NeckConfig>,
    head: DaHeadConfig,
    num_classes: usize,
) -> SegmentorConfig {
    // Start from segkit's demo segmentor for the data settings (mean / std, classes,
    // palette) and replace the network.
    let mut c = segkit::models::encoder_decoder::demo::demo_config();
    c.name = name.to_string();
    c.backbone = backbone;
    c.neck = neck;
    c.decode_head = HeadConfig::Da(head);
    c.auxiliary_head = None;
    c.meta.classes.truncate(num_classes);
    c.meta.palette.truncate(num_classes);
    c
}

/// ResNet-50-D8 + JPU + DANet head as bare components: each part built from the specs the
/// previous one reports, weights under mmseg's key prefixes.
pub struct Parts {
    /// The backbone (C3..C5).
    pub backbone: ResNet,
    /// The neck.
    pub neck: Jpu,
    /// The head.
    pub head: DaHead,
}

impl Parts {
    /// Builds the three parts of `cfg` (a [`r50_d8_jpu_danet`] config) under `vb`.
    pub fn new(cfg: &SegmentorConfig, vb: VarBuilder<'_>) -> segkit::core::Result<Self> {
        let (BackboneConfig::ResNet(b), Some(NeckConfig::Jpu(n)), HeadConfig::Da(h)) =
            (&cfg.backbone, &cfg.neck, &cfg.decode_head)
        else {
            return Err(segkit::core::Error::InvalidConfig(
                "Parts::new wants a ResNet + JPU + DANet config".into(),
            ));
        };
        let backbone = ResNet::new(b, vb.pp("backbone"))?;
        let neck = Jpu::new(n, &backbone.feature_specs(), vb.pp("neck"))?;
        let head = DaHead::new(h, &neck.output_specs(), vb.pp("decode_head"))?;
        Ok(Self {
            backbone,
            neck,
            head,
        })
    }

    /// Logits (the fused DANet output) at stride 8.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> segkit::core::Result<Tensor> {
        let feats = self.backbone.forward_features(x, train)?;
        let feats = self.neck.forward_t(&feats, train)?;
        Ok(DecodeHead::forward_t(&self.head, &feats, train)?.logits)
    }
}
