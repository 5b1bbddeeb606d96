//! [`ResNetConfig`]: depth, stem, strides / dilations and the key layout ([`KeyStyle`]) of a
//! [`super::ResNet`], with the torchvision, timm, mmseg and transformers presets.

use segkit_core::FeatureSpec;

use crate::{Error, Result};

/// The stem (the layers before the first stage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type")]
pub enum Stem {
    /// One 7x7 stride-2 conv with 64 channels (torchvision, V1b).
    Standard,
    /// Three 3x3 convs `3 -> width -> width -> 2 * width` (V1c / V1d "deep stem").
    /// mmseg's `stem_channels = 64` is `width = 32`; timm's `stem_width = 32` likewise.
    Deep {
        /// Width of the first two convs (the stem outputs twice this).
        width: usize,
    },
}

/// Whose state-dict layout (and shortcut-pooling convention) to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KeyStyle {
    /// torchvision: `conv1`, `bn1`, `layerN.i.downsample.{0,1}`. Standard stem only.
    Torchvision,
    /// timm: deep stem `conv1.{0,1,3,4,6}` + `bn1`; average-pool shortcut
    /// `downsample.{1,2}` with a 2x2 pool (same-padded with stride 1 in dilated stages).
    Timm,
    /// mmseg: deep stem `stem.{0,1,3,4,6,7}`; average-pool shortcut `downsample.{1,2}` with a
    /// `stride x stride` pool.
    Mmseg,
    /// Hugging Face transformers' `ResNetBackbone` / `ResNetModel` (torchvision's network under
    /// other names): stem `embedder.embedder.{convolution,normalization}`, block conv `k`
    /// `encoder.stages.{s}.layers.{l}.layer.{k}.{convolution,normalization}`, shortcut
    /// `encoder.stages.{s}.layers.{l}.shortcut.{convolution,normalization}`. Standard stem and
    /// strided-conv shortcuts only.
    #[serde(alias = "HF", alias = "hf")]
    Hf,
}

impl KeyStyle {
    /// `(conv, norm)` paths of conv `i` (1-based) of block `block` in stage `stage` (0-based).
    pub(super) fn block_conv_paths(self, stage: usize, block: usize, i: usize) -> (String, String) {
        match self {
            Self::Hf => {
                let p = format!("encoder.stages.{stage}.layers.{block}.layer.{}", i - 1);
                (format!("{p}.convolution"), format!("{p}.normalization"))
            }
            _ => {
                let p = format!("layer{}.{block}", stage + 1);
                (format!("{p}.conv{i}"), format!("{p}.bn{i}"))
            }
        }
    }

    /// `(conv, norm)` paths of the projection shortcut of block `block` in stage `stage`
    /// (`avg_down`: pool at `downsample.0`, conv and norm after it).
    pub(super) fn shortcut_paths(
        self,
        stage: usize,
        block: usize,
        avg_down: bool,
    ) -> (String, String) {
        match self {
            Self::Hf => {
                let p = format!("encoder.stages.{stage}.layers.{block}.shortcut");
                (format!("{p}.convolution"), format!("{p}.normalization"))
            }
            _ => {
                let p = format!("layer{}.{block}.downsample", stage + 1);
                let (c, n) = if avg_down { (1, 2) } else { (0, 1) };
                (format!("{p}.{c}"), format!("{p}.{n}"))
            }
        }
    }
}

/// Configuration of a [`ResNet`]. Fields missing from a JSON config take torchvision
/// ResNet-50's values ([`ResNetConfig::default`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResNetConfig {
    /// Depth: 18 or 34 (basic blocks), 50, 101 or 152 (bottlenecks).
    pub depth: usize,
    /// The stem.
    pub stem: Stem,
    /// Average-pool + 1x1 conv shortcuts instead of strided 1x1 convs (V1d). Default false.
    pub avg_down: bool,
    /// Key naming and shortcut-pool convention of the reference.
    pub key_style: KeyStyle,
    /// Stride of each of the four stages. Default (1, 2, 2, 2).
    pub strides: [usize; 4],
    /// Dilation of each of the four stages. Default (1, 1, 1, 1).
    pub dilations: [usize; 4],
    /// First block of a dilated stage uses half the dilation (mmseg `contract_dilation`).
    pub contract_dilation: bool,
    /// Absolute dilations of the last stage's blocks (DANet's multi-grid, e.g. (4, 8, 16)).
    pub multi_grid: Option<Vec<usize>>,
    /// Stages kept frozen: -1 none, 0 the stem, k the stem and stages 1..=k (BatchNorm in eval
    /// mode and no gradient there, as mmseg's `frozen_stages`).
    pub frozen_stages: i32,
    /// Keep every BatchNorm in eval mode even in training (mmseg `norm_eval`).
    pub norm_eval: bool,
    /// BatchNorm epsilon. Default 1e-5.
    pub bn_eps: f64,
    /// Width of the first stage (mmseg `base_channels`): stage `i` has `base_channels * 2^i`
    /// planes (times 4 at a bottleneck's output). Default 64, every published ResNet; smaller
    /// values make narrow networks (segkit's demo model uses 16).
    pub base_channels: usize,
    /// The stages whose outputs the backbone returns, as mmseg's `out_indices`: 0 = C2
    /// (stride 4) .. 3 = C5. [`ResNetConfig::feature_specs`] and
    /// `Backbone::forward_features` return these, in this order (strictly increasing).
    /// Default `[0, 1, 2, 3]` (C2..C5); FastFCN's JPU wants `[1, 2, 3]` (C3..C5).
    #[serde(default = "all_stages")]
    pub out_indices: Vec<usize>,
}

fn all_stages() -> Vec<usize> {
    vec![0, 1, 2, 3]
}

impl Default for ResNetConfig {
    /// torchvision's ResNet-50.
    fn default() -> Self {
        Self::torchvision(50)
    }
}

impl ResNetConfig {
    /// torchvision's `resnet{depth}`.
    pub fn torchvision(depth: usize) -> Self {
        Self {
            depth,
            stem: Stem::Standard,
            avg_down: false,
            key_style: KeyStyle::Torchvision,
            strides: [1, 2, 2, 2],
            dilations: [1, 1, 1, 1],
            contract_dilation: true,
            multi_grid: None,
            frozen_stages: -1,
            norm_eval: false,
            bn_eps: 1e-5,
            base_channels: 64,
            out_indices: all_stages(),
        }
    }

    /// Returns the outputs of `stages` only (mmseg's `out_indices`: 0 = C2 .. 3 = C5).
    pub fn with_out_indices(mut self, stages: &[usize]) -> Self {
        self.out_indices = stages.to_vec();
        self
    }

    /// transformers' `ResNetBackbone` of `microsoft/resnet-{depth}` (torchvision's network,
    /// v1.5 strides, under HF's key names: [`KeyStyle::Hf`]).
    pub fn hf(depth: usize) -> Self {
        Self {
            key_style: KeyStyle::Hf,
            ..Self::torchvision(depth)
        }
    }

    /// timm's `resnet{depth}d` (deep stem of width 32, average-pool shortcuts) at
    /// `output_stride` 8, 16 or 32.
    pub fn timm_d(depth: usize, output_stride: usize) -> Result<Self> {
        Self {
            stem: Stem::Deep { width: 32 },
            avg_down: true,
            key_style: KeyStyle::Timm,
            ..Self::torchvision(depth)
        }
        .with_output_stride(output_stride)
    }

    /// mmseg's `ResNetV1c` (deep stem, `stem_channels = 64`) as the `*-d8` segmentation
    /// configs use it: strides (1, 2, 1, 1), dilations (1, 1, 2, 4), contracted dilation.
    pub fn mmseg_v1c(depth: usize) -> Self {
        Self {
            stem: Stem::Deep { width: 32 },
            key_style: KeyStyle::Mmseg,
            strides: [1, 2, 1, 1],
            dilations: [1, 1, 2, 4],
            contract_dilation: true,
            ..Self::torchvision(depth)
        }
    }

    /// mmseg's `ResNetV1d` (deep stem and average-pool shortcuts), output stride 8.
    pub fn mmseg_v1d(depth: usize) -> Self {
        Self {
            avg_down: true,
            ..Self::mmseg_v1c(depth)
        }
    }

    /// Sets strides and dilations for output stride 8, 16 or 32 (dilation replaces the
    /// stride of the last stages).
    pub fn with_output_stride(mut self, output_stride: usize) -> Result<Self> {
        (self.strides, self.dilations) = match output_stride {
            8 => ([1, 2, 1, 1], [1, 1, 2, 4]),
            16 => ([1, 2, 2, 1], [1, 1, 1, 2]),
            32 => ([1, 2, 2, 2], [1, 1, 1, 1]),
            o => {
                return Err(Error::InvalidConfig(format!(
                    "output stride must be 8, 16 or 32, got {o}"
                )))
            }
        };
        Ok(self)
    }

    /// Number of blocks per stage and whether they are bottlenecks.
    pub fn layout(&self) -> Result<([usize; 4], bool)> {
        Ok(match self.depth {
            18 => ([2, 2, 2, 2], false),
            34 => ([3, 4, 6, 3], false),
            50 => ([3, 4, 6, 3], true),
            101 => ([3, 4, 23, 3], true),
            152 => ([3, 8, 36, 3], true),
            d => {
                return Err(Error::InvalidConfig(format!(
                    "ResNet depth must be one of 18, 34, 50, 101, 152, got {d}"
                )))
            }
        })
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let (blocks, _) = self.layout()?;
        if self.base_channels == 0 {
            return Err(Error::InvalidConfig(
                "ResNet base_channels must be positive".into(),
            ));
        }
        if self.strides.contains(&0) || self.dilations.contains(&0) {
            return Err(Error::InvalidConfig(
                "ResNet strides and dilations must be positive".into(),
            ));
        }
        if let (Stem::Deep { .. }, KeyStyle::Torchvision) = (self.stem, self.key_style) {
            return Err(Error::InvalidConfig(
                "torchvision key style has no deep stem; use KeyStyle::Mmseg or KeyStyle::Timm"
                    .into(),
            ));
        }
        if self.key_style == KeyStyle::Hf && (self.stem != Stem::Standard || self.avg_down) {
            return Err(Error::InvalidConfig(
                "transformers' ResNet layout has the standard stem and strided-conv shortcuts \
                 only (no deep stem, no avg_down)"
                    .into(),
            ));
        }
        if let Stem::Deep { width: 0 } = self.stem {
            return Err(Error::InvalidConfig(
                "deep stem width must be positive".into(),
            ));
        }
        if let Some(mg) = &self.multi_grid {
            if mg.len() != blocks[3] || mg.contains(&0) {
                return Err(Error::InvalidConfig(format!(
                    "multi_grid needs {} positive dilations (one per block of the last stage), got {mg:?}",
                    blocks[3]
                )));
            }
        }
        if self.frozen_stages > 4 || self.frozen_stages < -1 {
            return Err(Error::InvalidConfig(format!(
                "frozen_stages must be in -1..=4, got {}",
                self.frozen_stages
            )));
        }
        Ok(())
    }

    /// Channels and strides of the returned outputs (C2..C5 selected by
    /// [`ResNetConfig::out_indices`]).
    pub fn feature_specs(&self) -> Result<Vec<FeatureSpec>> {
        let all = self.all_feature_specs()?;
        self.check_out_indices()?;
        Ok(self.out_indices.iter().map(|&i| all[i]).collect())
    }

    /// Channels and strides of all four stages' outputs, C2..C5.
    pub fn all_feature_specs(&self) -> Result<Vec<FeatureSpec>> {
        let (_, bottleneck) = self.layout()?;
        let exp = if bottleneck { 4 } else { 1 };
        let mut stride = 4;
        Ok((0..4)
            .map(|i| {
                stride *= self.strides[i];
                FeatureSpec::new(self.base_channels * (1 << i) * exp, stride)
            })
            .collect())
    }

    fn check_out_indices(&self) -> Result<()> {
        let o = &self.out_indices;
        if o.is_empty() || o.iter().any(|&i| i > 3) || o.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidConfig(format!(
                "ResNet out_indices must be strictly increasing stage indices in 0..=3 \
                 (0 = C2 .. 3 = C5), got {o:?}"
            )));
        }
        Ok(())
    }
}
