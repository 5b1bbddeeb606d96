//! [`SwinConfig`]: the Hugging Face `SwinConfig` fields that shape a `SwinBackbone` (with
//! mmseg's `SwinTransformer` argument names accepted as aliases), the [`SwinKeyStyle`] that
//! picks whose checkpoint layout is read, and presets for the released checkpoints of both.

use segkit_core::FeatureSpec;
use serde::{Deserialize, Deserializer, Serialize};

use crate::{Error, Result};

/// The activation of the MLP in each block (HF `hidden_act`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HiddenAct {
    /// Exact GELU, `x * Phi(x)` with the error function (HF `"gelu"`, every released Swin).
    #[default]
    #[serde(rename = "gelu")]
    Gelu,
    /// GELU with the tanh approximation (HF `"gelu_new"`, `"gelu_pytorch_tanh"`, `"gelu_fast"`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    /// `max(x, 0)` (HF `"relu"`).
    #[serde(rename = "relu")]
    Relu,
    /// `x * sigmoid(x)` (HF `"silu"` or `"swish"`).
    #[serde(rename = "silu", alias = "swish")]
    Silu,
}

/// Whose state-dict layout a [`super::Swin`] reads, and the few places where the two
/// reference implementations compute differently (everything else is the same network).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SwinKeyStyle {
    /// Hugging Face transformers' `SwinBackbone` (`modeling_swin.py`):
    /// `embeddings.{patch_embeddings.projection,norm}`, `encoder.layers.{i}.blocks.{j}.
    /// {layernorm_before, attention.self.{query,key,value,relative_position_bias_table},
    /// attention.output.dense, layernorm_after, intermediate.dense, output.dense}`,
    /// `encoder.layers.{i}.downsample.{reduction,norm}`, `hidden_states_norms.stage{k}`.
    /// Patch merging concatenates each 2x2 neighbourhood as `[x(0,0), x(1,0), x(0,1),
    /// x(1,1)]`; drop path acts on the attention branch only; `out_indices` index
    /// `["stem", "stage1", ..]`.
    #[default]
    #[serde(alias = "HF", alias = "hf")]
    Hf,
    /// mmseg's `SwinTransformer` (`mmseg/models/backbones/swin.py`, the backbone of mmseg's
    /// UPerNet-Swin configs and model-zoo checkpoints): `patch_embed.{projection,norm}`,
    /// `stages.{i}.blocks.{j}.{norm1, attn.w_msa.{qkv,proj,relative_position_bias_table,
    /// relative_position_index}, norm2, ffn.layers.0.0, ffn.layers.1}` (one fused `qkv`
    /// projection, rows `[q; k; v]`), `stages.{i}.downsample.{norm,reduction}`, output norms
    /// `norm{i}` (`i` counted from 0), `absolute_pos_embed`. Patch merging gathers each 2x2
    /// neighbourhood with `nn.Unfold`, so merged channel `4c + 2 dy + dx` holds channel `c`
    /// of pixel `(dy, dx)`: the forward pass gathers in that order, and the weights are used
    /// as saved. Drop path acts on both residual branches and dropout also follows the MLP
    /// activation (mmcv's `FFN`); both are training-only. `out_indices` count stages from 0
    /// (mmseg's `(0, 1, 2, 3)` is every stage; the stem cannot be returned).
    #[serde(alias = "MMSeg", alias = "mmseg")]
    Mmseg,
}

/// Configuration of a [`super::Swin`] backbone, field for field the Hugging Face `SwinConfig`
/// (`transformers/models/swin/configuration_swin.py`), so that an HF `config.json` (or the
/// `backbone_config` object of a OneFormer / Mask2Former `config.json`) deserialises directly.
///
/// Fields missing from the JSON take HF's defaults ([`SwinConfig::default`], which is
/// `microsoft/swin-tiny-patch4-window7-224`; mmseg's `SwinTransformer` defaults are the same
/// network). HF bookkeeping fields that do not change the network (`model_type` aside: it must
/// be `"swin"` when present; `hidden_size`, `num_layers`, `stage_names`, `encoder_stride`,
/// `initializer_range`, `path_norm`, ...) are ignored.
///
/// mmseg's argument names are accepted as aliases (`embed_dims`, `in_channels`,
/// `pretrain_img_size`, `drop_rate`, `attn_drop_rate`, `use_abs_pos_embed`; `depths`,
/// `num_heads`, `window_size`, `mlp_ratio`, `qkv_bias`, `qk_scale`, `patch_norm`,
/// `drop_path_rate`, `patch_size` and `out_indices` share their names), so an mmseg backbone
/// dict with `key_style: "Mmseg"` reads as written. mmseg arguments that change nothing at
/// inference or that segkit's Swin fixes (`strides = (patch_size, 2, 2, 2)`, `act_cfg` GELU,
/// `norm_cfg` LN, `with_cp`, `frozen_stages`, `init_cfg`, `pretrained`) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SwinConfig {
    /// HF model type; `"swin"` when present (another value is rejected by validation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    /// Pre-training image size `(height, width)`; matters only for absolute position
    /// embeddings, whose grid it fixes (mmseg `pretrain_img_size`). HF accepts an int or a
    /// pair. Default 224.
    #[serde(deserialize_with = "de_size", alias = "pretrain_img_size")]
    pub image_size: [usize; 2],
    /// Side of the square, non-overlapping patches that the patch embedding projects (the
    /// stride of the first feature map). HF accepts an int or an equal pair. Default 4.
    #[serde(deserialize_with = "de_patch")]
    pub patch_size: usize,
    /// Input image channels (mmseg `in_channels`). Default 3.
    #[serde(alias = "in_channels")]
    pub num_channels: usize,
    /// Channels `C` of the first stage; stage `i` (0-based) has `C * 2^i` (mmseg
    /// `embed_dims`). Default 96 (Swin-T).
    #[serde(alias = "embed_dims")]
    pub embed_dim: usize,
    /// Number of Swin blocks per stage (the paper's `{2, 2, 6, 2}` for Swin-T). Blocks alternate
    /// regular (W-MSA) and shifted (SW-MSA) windows, starting with a regular one.
    pub depths: Vec<usize>,
    /// Attention heads per stage (the paper's `{3, 6, 12, 24}` for Swin-T); each must divide
    /// its stage's channels.
    pub num_heads: Vec<usize>,
    /// Side `M` of the square attention windows (7 for the 224 checkpoints, 12 for the 384
    /// ones); shifted blocks roll the map by `M / 2`.
    pub window_size: usize,
    /// Hidden width of each block's MLP relative to its channels (`int(mlp_ratio * C)`).
    /// Default 4.
    pub mlp_ratio: f64,
    /// Whether the query / key / value projections have biases. Default true.
    pub qkv_bias: bool,
    /// Scale of the attention scores instead of `head_dim^-1/2` (mmseg `qk_scale`; `None`,
    /// the default, in every released config).
    pub qk_scale: Option<f64>,
    /// LayerNorm after the patch embedding and before each patch merging's reduction (mmseg
    /// `patch_norm`; HF always has them). Default true.
    pub patch_norm: bool,
    /// Dropout after the patch embedding, the attention projection and the MLP (training
    /// only; mmseg `drop_rate`). Default 0.
    #[serde(alias = "drop_rate")]
    pub hidden_dropout_prob: f64,
    /// Dropout on the attention probabilities (training only; mmseg `attn_drop_rate`).
    /// Default 0.
    #[serde(alias = "attn_drop_rate")]
    pub attention_probs_dropout_prob: f64,
    /// Stochastic depth: the drop probability rises linearly from 0 at the first block to this
    /// value at the last (training only; identity at inference). HF's default 0.1; OneFormer
    /// uses 0.3.
    pub drop_path_rate: f64,
    /// Activation of the MLPs. Default `"gelu"` (exact).
    pub hidden_act: HiddenAct,
    /// Learned absolute position embeddings added after the patch embedding (off in every
    /// released Swin; mmseg `use_abs_pos_embed`). When on, the patch grid of the input must
    /// equal `image_size / patch_size` (no interpolation).
    #[serde(alias = "use_abs_pos_embed")]
    pub use_absolute_embeddings: bool,
    /// Epsilon of the LayerNorms inside the blocks (`layernorm_before` / `layernorm_after`).
    /// The patch-embedding, patch-merging and output norms use PyTorch's default 1e-5, as HF.
    pub layer_norm_eps: f64,
    /// Which maps to return, by HF stage name: `"stem"` (the patch embedding, HF key style
    /// only), `"stage1"` .. `"stageN"` (each stage's output before its patch merging), in that
    /// order. `None` with `out_indices` also `None` means HF's rule (the last stage only) for
    /// [`SwinKeyStyle::Hf`] and mmseg's default (every stage) for [`SwinKeyStyle::Mmseg`].
    pub out_features: Option<Vec<String>>,
    /// The same selection as indices: into `["stem", "stage1", ..]` for
    /// [`SwinKeyStyle::Hf`] (HF's meaning), stage indices counted from 0 for
    /// [`SwinKeyStyle::Mmseg`] (mmseg's meaning, as in its `norm{i}` keys: `(0, 1, 2, 3)` is
    /// stage1..stage4). Used when `out_features` is `None`, and must agree with it otherwise.
    pub out_indices: Option<Vec<usize>>,
    /// Whose checkpoint layout the network reads (and the training-time and patch-merging
    /// details that go with it). Default [`SwinKeyStyle::Hf`].
    pub key_style: SwinKeyStyle,
    /// `true` (the default; HF's `SwinBackbone`, mmseg): every block partitions and shifts
    /// its windows however small the map. `false` (HF's `SwinModel` /
    /// `SwinForImageClassification`, the original Swin): a block whose map's shorter side is
    /// at most `window_size` is not shifted (at 224x224, stage 4's second block); a map
    /// smaller than the window is then an error, as it is in HF.
    #[serde(skip_serializing_if = "is_true")]
    pub always_partition: bool,
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Default for SwinConfig {
    /// HF `SwinConfig()`: Swin-T, window 7, drop path 0.1, last stage only.
    fn default() -> Self {
        Self {
            model_type: None,
            image_size: [224, 224],
            patch_size: 4,
            num_channels: 3,
            embed_dim: 96,
            depths: vec![2, 2, 6, 2],
            num_heads: vec![3, 6, 12, 24],
            window_size: 7,
            mlp_ratio: 4.0,
            qkv_bias: true,
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            drop_path_rate: 0.1,
            hidden_act: HiddenAct::Gelu,
            use_absolute_embeddings: false,
            layer_norm_eps: 1e-5,
            out_features: None,
            out_indices: None,
            qk_scale: None,
            patch_norm: true,
            key_style: SwinKeyStyle::Hf,
            always_partition: true,
        }
    }
}

fn all_stages(n: usize) -> Option<Vec<String>> {
    Some((1..=n).map(|i| format!("stage{i}")).collect())
}

impl SwinConfig {
    fn preset(
        embed_dim: usize,
        depths: [usize; 4],
        num_heads: [usize; 4],
        window_size: usize,
        image_size: usize,
    ) -> Self {
        Self {
            embed_dim,
            depths: depths.to_vec(),
            num_heads: num_heads.to_vec(),
            window_size,
            image_size: [image_size; 2],
            out_features: all_stages(4),
            ..Self::default()
        }
    }

    /// Swin-T (`microsoft/swin-tiny-patch4-window7-224`): embed 96, depths (2, 2, 6, 2), heads
    /// (3, 6, 12, 24), window 7; returns stage1..stage4.
    pub fn tiny() -> Self {
        Self::preset(96, [2, 2, 6, 2], [3, 6, 12, 24], 7, 224)
    }

    /// Swin-S (`microsoft/swin-small-patch4-window7-224`): Swin-T with depths (2, 2, 18, 2).
    pub fn small() -> Self {
        Self::preset(96, [2, 2, 18, 2], [3, 6, 12, 24], 7, 224)
    }

    /// Swin-B at 224 (`microsoft/swin-base-patch4-window7-224`): embed 128, depths
    /// (2, 2, 18, 2), heads (4, 8, 16, 32), window 7.
    pub fn base_window7() -> Self {
        Self::preset(128, [2, 2, 18, 2], [4, 8, 16, 32], 7, 224)
    }

    /// Swin-B at 384 (`microsoft/swin-base-patch4-window12-384`, the Mask2Former / OneFormer
    /// Swin-B backbones): [`SwinConfig::base_window7`] with window 12.
    pub fn base_window12() -> Self {
        Self::preset(128, [2, 2, 18, 2], [4, 8, 16, 32], 12, 384)
    }

    /// Swin-L at 224 (`microsoft/swin-large-patch4-window7-224`): embed 192, depths
    /// (2, 2, 18, 2), heads (6, 12, 24, 48), window 7.
    pub fn large_window7() -> Self {
        Self::preset(192, [2, 2, 18, 2], [6, 12, 24, 48], 7, 224)
    }

    /// Swin-L at 384 (`microsoft/swin-large-patch4-window12-384`, the OneFormer Swin-L
    /// backbones): [`SwinConfig::large_window7`] with window 12.
    pub fn large_window12() -> Self {
        Self::preset(192, [2, 2, 18, 2], [6, 12, 24, 48], 12, 384)
    }

    /// The `backbone_config` of `shi-labs/oneformer_{ade20k,coco,cityscapes}_swin_tiny`:
    /// Swin-T, drop path 0.3, stage1..stage4.
    pub fn oneformer_swin_tiny() -> Self {
        Self {
            drop_path_rate: 0.3,
            ..Self::tiny()
        }
    }

    /// The `backbone_config` of `shi-labs/oneformer_{ade20k,coco,cityscapes}_swin_large`:
    /// Swin-L window 12 (384), drop path 0.3, stage1..stage4.
    pub fn oneformer_swin_large() -> Self {
        Self {
            drop_path_rate: 0.3,
            ..Self::large_window12()
        }
    }

    /// mmseg's `SwinTransformer` as its UPerNet-Swin configs set it (`configs/_base_/models/
    /// upernet_swin.py` and `configs/swin/*`): mmseg keys, drop path 0.3, every stage
    /// (`out_indices = (0, 1, 2, 3)`), patch norm, qkv bias.
    fn mmseg(base: Self) -> Self {
        Self {
            key_style: SwinKeyStyle::Mmseg,
            drop_path_rate: 0.3,
            out_features: None,
            out_indices: Some(vec![0, 1, 2, 3]),
            ..base
        }
    }

    /// mmseg's Swin-T (`swin-tiny-patch4-window7-in1k-pre_upernet_*`): embed_dims 96,
    /// depths (2, 2, 6, 2), heads (3, 6, 12, 24), window 7, mlp_ratio 4, drop path 0.3,
    /// `out_indices = (0, 1, 2, 3)`, mmseg keys.
    pub fn mmseg_tiny() -> Self {
        Self::mmseg(Self::tiny())
    }

    /// mmseg's Swin-S (`swin-small-patch4-window7-in1k-pre_upernet_*`): Swin-T with depths
    /// (2, 2, 18, 2).
    pub fn mmseg_small() -> Self {
        Self::mmseg(Self::small())
    }

    /// mmseg's Swin-B at 224 (`swin-base-patch4-window7-*`): embed_dims 128, depths
    /// (2, 2, 18, 2), heads (4, 8, 16, 32), window 7.
    pub fn mmseg_base_window7() -> Self {
        Self::mmseg(Self::base_window7())
    }

    /// mmseg's Swin-B at 384 (`swin-base-patch4-window12-*-384x384-pre_*`): window 12,
    /// `pretrain_img_size` 384.
    pub fn mmseg_base_window12() -> Self {
        Self::mmseg(Self::base_window12())
    }

    /// mmseg's Swin-L at 224 (`swin-large-patch4-window7-in22k-pre_*`): embed_dims 192,
    /// depths (2, 2, 18, 2), heads (6, 12, 24, 48), window 7.
    pub fn mmseg_large_window7() -> Self {
        Self::mmseg(Self::large_window7())
    }

    /// mmseg's Swin-L at 384 (`swin-large-patch4-window12-in22k-384x384-pre_*`): window 12,
    /// `pretrain_img_size` 384.
    pub fn mmseg_large_window12() -> Self {
        Self::mmseg(Self::large_window12())
    }

    /// The same configuration returning the given HF stage names (`"stem"`, `"stage1"`, ..).
    pub fn with_out_features<S: Into<String>>(
        mut self,
        names: impl IntoIterator<Item = S>,
    ) -> Self {
        self.out_features = Some(names.into_iter().map(Into::into).collect());
        self.out_indices = None;
        self
    }

    /// Number of stages (`depths.len()`).
    pub fn num_stages(&self) -> usize {
        self.depths.len()
    }

    /// Channels of stage `i` (0-based): `embed_dim * 2^i`.
    pub fn stage_dim(&self, i: usize) -> usize {
        self.embed_dim << i
    }

    /// HF's stage names: `["stem", "stage1", .., "stageN"]`.
    pub fn stage_names(&self) -> Vec<String> {
        std::iter::once("stem".to_string())
            .chain((1..=self.num_stages()).map(|i| format!("stage{i}")))
            .collect()
    }

    /// The returned maps as indices into [`SwinConfig::stage_names`] (0 = stem), increasing,
    /// whatever the key style (an mmseg `out_indices` entry `i` is stage `i + 1` here).
    pub fn out_stage_indices(&self) -> Result<Vec<usize>> {
        let names = self.stage_names();
        let from_names = match &self.out_features {
            Some(f) => Some(
                f.iter()
                    .map(|s| {
                        names.iter().position(|n| n == s).ok_or_else(|| {
                            Error::InvalidConfig(format!(
                                "Swin out_features entry {s:?} is not one of {names:?}"
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            None => None,
        };
        let n = self.num_stages();
        let mmseg = self.key_style == SwinKeyStyle::Mmseg;
        let from_indices = match (&self.out_indices, mmseg) {
            (Some(b), true) => {
                if let Some(&bad) = b.iter().find(|&&i| i >= n) {
                    return Err(Error::InvalidConfig(format!(
                        "Swin out index {bad} out of range for mmseg's stage indices 0..{n}"
                    )));
                }
                Some(b.iter().map(|&i| i + 1).collect::<Vec<_>>())
            }
            (b, false) => b.clone(),
            (None, true) => None,
        };
        let idx = match (from_names, from_indices) {
            (Some(a), Some(b)) if a != b => {
                return Err(Error::InvalidConfig(format!(
                    "Swin out_features {:?} and out_indices {:?} disagree",
                    self.out_features, self.out_indices
                )))
            }
            (Some(a), _) => a,
            (None, Some(b)) => b,
            (None, None) if mmseg => (1..=n).collect(),
            (None, None) => vec![n],
        };
        if mmseg && idx.first() == Some(&0) {
            return Err(Error::InvalidConfig(
                "mmseg's SwinTransformer cannot return the stem (\"stem\" needs key_style Hf)"
                    .into(),
            ));
        }
        if idx.is_empty() {
            return Err(Error::InvalidConfig(
                "Swin must return at least one feature map".into(),
            ));
        }
        if let Some(&bad) = idx.iter().find(|&&i| i >= names.len()) {
            return Err(Error::InvalidConfig(format!(
                "Swin out index {bad} out of range for stages {names:?}"
            )));
        }
        if idx.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidConfig(format!(
                "Swin out features must be distinct and in stage order, got {idx:?}"
            )));
        }
        Ok(idx)
    }

    /// Channels and stride of each returned map (stem: `embed_dim` at `patch_size`; stage `k`:
    /// `embed_dim * 2^(k-1)` at `patch_size * 2^(k-1)`).
    pub fn feature_specs(&self) -> Result<Vec<FeatureSpec>> {
        Ok(self
            .out_stage_indices()?
            .into_iter()
            .map(|i| {
                let s = i.saturating_sub(1);
                FeatureSpec::new(self.stage_dim(s), self.patch_size << s)
            })
            .collect())
    }

    /// Scale of the attention scores of a block with `dim` channels and `heads` heads:
    /// `qk_scale`, else `(dim / heads)^-1/2`.
    pub fn attention_scale(&self, dim: usize, heads: usize) -> f64 {
        self.qk_scale
            .unwrap_or_else(|| ((dim / heads.max(1)) as f64).powf(-0.5))
    }

    /// Hidden width of the MLP of a block with `dim` channels (Python's `int(mlp_ratio * dim)`).
    pub fn mlp_hidden(&self, dim: usize) -> usize {
        (self.mlp_ratio * dim as f64) as usize
    }

    /// Checks that the configuration describes a network that can be built.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if let Some(t) = &self.model_type {
            if t != "swin" {
                return bad(format!(
                    "expected a Swin config (model_type \"swin\"), got {t:?}"
                ));
            }
        }
        if self.depths.is_empty() || self.depths.len() != self.num_heads.len() {
            return bad(format!(
                "Swin needs one depth and one head count per stage, got depths {:?} and num_heads {:?}",
                self.depths, self.num_heads
            ));
        }
        if self.depths.len() > 8 {
            return bad(format!(
                "Swin supports at most 8 stages, got {}",
                self.depths.len()
            ));
        }
        if self.depths.contains(&0) {
            return bad(format!(
                "Swin depths must be positive, got {:?}",
                self.depths
            ));
        }
        for (name, v) in [
            ("embed_dim", self.embed_dim),
            ("window_size", self.window_size),
            ("patch_size", self.patch_size),
            ("num_channels", self.num_channels),
        ] {
            if v == 0 {
                return bad(format!("Swin {name} must be positive"));
            }
        }
        for (i, &h) in self.num_heads.iter().enumerate() {
            let dim = self.stage_dim(i);
            if h == 0 || !dim.is_multiple_of(h) {
                return bad(format!(
                    "Swin stage {} has {dim} channels, which {h} heads do not divide",
                    i + 1
                ));
            }
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_hidden(self.embed_dim) > 0) {
            return bad(format!(
                "Swin mlp_ratio {} gives an empty MLP",
                self.mlp_ratio
            ));
        }
        for (name, p) in [
            ("drop_path_rate", self.drop_path_rate),
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("Swin {name} must be in [0, 1), got {p}"));
            }
        }
        if let Some(q) = self.qk_scale {
            if !(q.is_finite() && q > 0.0) {
                return bad(format!("Swin qk_scale must be positive, got {q}"));
            }
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return bad(format!(
                "Swin layer_norm_eps must be positive, got {}",
                self.layer_norm_eps
            ));
        }
        if self.use_absolute_embeddings && self.image_size.iter().any(|&s| s < self.patch_size) {
            return bad(format!(
                "Swin image_size {:?} is smaller than one patch of {}",
                self.image_size, self.patch_size
            ));
        }
        self.out_stage_indices()?;
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrPair {
    One(usize),
    Pair([usize; 2]),
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<[usize; 2], D::Error> {
    Ok(match IntOrPair::deserialize(d)? {
        IntOrPair::One(v) => [v, v],
        IntOrPair::Pair(p) => p,
    })
}

fn de_patch<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<usize, D::Error> {
    match IntOrPair::deserialize(d)? {
        IntOrPair::One(v) => Ok(v),
        IntOrPair::Pair([a, b]) if a == b => Ok(a),
        IntOrPair::Pair(p) => Err(serde::de::Error::custom(format!(
            "segkit's Swin needs square patches, got patch_size {p:?}"
        ))),
    }
}
