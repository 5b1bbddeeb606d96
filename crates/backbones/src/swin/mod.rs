//! Swin Transformer backbones: "Swin Transformer: Hierarchical Vision Transformer using Shifted
//! Windows" (Liu et al., ICCV 2021).
//!
//! Matches, key for key and number for number, Hugging Face transformers' `SwinBackbone`
//! (`transformers/models/swin/modeling_swin.py`, checked against transformers 5.24), the
//! backbone of HF's OneFormer and Mask2Former ports:
//! - parameter names are the checkpoint's (`embeddings.patch_embeddings.projection`,
//!   `embeddings.norm`, `encoder.layers.{i}.blocks.{j}.{layernorm_before,
//!   attention.self.{query,key,value,relative_position_bias_table}, attention.output.dense,
//!   layernorm_after, intermediate.dense, output.dense}`, `encoder.layers.{i}.downsample.
//!   {reduction,norm}`, `hidden_states_norms.{stage}`); in a OneFormer checkpoint they sit
//!   under `model.pixel_level_module.encoder`;
//! - `relative_position_index` is computed, never loaded (older checkpoints store it as a
//!   buffer; HF ignores it on load, and a converter may drop it), and `layernorm` of HF's
//!   `SwinModel` (`swin.layernorm.*` in a `SwinBackbone` checkpoint) is not used by the
//!   backbone;
//! - sizes that are not multiples of the patch, of the window or of 2 are zero-padded at the
//!   bottom / right exactly where HF pads (patch embedding, every block, patch merging), and
//!   windows are always partitioned and shifted, however small the map (HF's backbone calls
//!   its encoder with `always_partition=True`): the shifted-window mask is HF's, -100 between
//!   regions, padding not masked;
//! - drop path (stochastic depth, linear in the block index up to `drop_path_rate`) acts in
//!   training mode only and, as in HF, on the attention branch only; dropouts likewise.
//!
//! With [`SwinKeyStyle::Mmseg`] it matches, likewise, mmseg's `SwinTransformer`
//! (`mmseg/models/backbones/swin.py`, checked against mmsegmentation 1.2.2), so that mmseg's
//! UPerNet-Swin checkpoints load as saved:
//! - keys `patch_embed.{projection,norm}`, `stages.{i}.blocks.{j}.{norm1, attn.w_msa.{qkv,
//!   proj, relative_position_bias_table}, norm2, ffn.layers.0.0, ffn.layers.1}`,
//!   `stages.{i}.downsample.{norm,reduction}`, output norms `norm{i}` (stage `i` from 0);
//!   mmseg's `relative_position_index` buffers are looked up when present (so strict
//!   loading accounts for them) but the index is computed: mmseg's construction gives HF's;
//! - patch merging gathers each 2x2 neighbourhood in `nn.Unfold`'s channel-major order (see
//!   [`SwinKeyStyle::Mmseg`]), the forward pass does, the saved weights are used as they are;
//! - padding (patch embedding, windows, merging: bottom / right zeros), the shifted-window
//!   mask (-100 between regions, padding not masked, windows always partitioned and shifted)
//!   and the normalised stage outputs (`norm{i}`) are the same computation as HF's;
//! - drop path acts on both residual branches and dropout also follows the MLP activation
//!   (mmcv's `FFN`), in training only; `out_indices` count stages from 0.
//!
//! Performance: f32 inference on the CPU runs each block's window attention as one fused
//! kernel (`kernel.rs`: per window and head, scores + relative position bias + shift mask,
//! softmax and the weighted sum of values stay in L1; the padding, cyclic shift, partition and
//! their inverse are folded into the rows it reads and writes; windows split over threads) and
//! fuses the linear layers' bias with GELU or with the residual add. Other devices and dtypes,
//! and training mode (differentiable ops, dropout, drop path), batch all windows of a block
//! into one `(B nW heads) x N x N` attention of tensor ops (the padding, shift and partition as
//! one gather, candle's `softmax_last_dim`). Inference caches the fused qkv weight and the
//! gathered relative position bias at its first call.
//!
//! # Shapes
//! Input `B x num_channels x H x W`, any `H, W >= 1`. With patch size `p` (4) and embedding
//! width `C`: the token grid is `ceil(H/p) x ceil(W/p)` at stage 1 and halves (rounding up) at
//! each later stage; `"stem"` and `"stage1"` are `B x C x ceil(H/p) x ceil(W/p)`, `"stage{k}"`
//! is `B x C 2^(k-1) x ..` at stride `p 2^(k-1)`: strides 4 / 8 / 16 / 32, channels
//! 96 / 192 / 384 / 768 for Swin-T.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_backbones::{Swin, SwinConfig};
//! use segkit_core::Backbone;
//! let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
//! let cfg = SwinConfig { depths: vec![1, 1, 1, 1], ..SwinConfig::tiny() };
//! let net = Swin::new(&cfg, vb).unwrap();
//! let x = Tensor::zeros((1, 3, 61, 64), DType::F32, &Device::Cpu).unwrap();
//! let out = net.forward(&x, false).unwrap();
//! assert_eq!(out.feature_maps[0].dims(), &[1, 96, 16, 16]);
//! assert_eq!(out.get("stage4").unwrap().dims(), &[1, 768, 2, 2]);
//! assert_eq!(net.feature_specs()[3].stride, 32);
//! ```

mod config;
mod fused;
mod kernel;
mod kernel256;
mod kernel512;
mod layers;
mod patch;
/// The configuration and the output specs (the weights are not printed).
impl std::fmt::Debug for Swin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swin")
            .field("config", &self.cfg)
            .field("feature_specs", &segkit_core::Backbone::feature_specs(self))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
mod window;

use candle_core::Tensor;
use candle_nn::VarBuilder;
use segkit_core::{Backbone, FeatureSpec};

pub use config::{HiddenAct, SwinConfig, SwinKeyStyle};
use layers::{LayerNorm, SwinBlock, TORCH_LN_EPS};
use patch::{PatchEmbeddings, PatchMerging};
use window::WindowGeometry;

use crate::{Error, Result};

struct Stage {
    blocks: Vec<SwinBlock>,
    downsample: Option<PatchMerging>,
}

/// The selected feature maps of a [`Swin`], in stage order (HF `BackboneOutput.feature_maps`).
#[derive(Debug, Clone)]
pub struct SwinOutput {
    /// HF stage name of each map (`"stem"`, `"stage1"`, ..).
    pub names: Vec<String>,
    /// `B x C_k x H_k x W_k` maps, after their `hidden_states_norms` LayerNorm.
    pub feature_maps: Vec<Tensor>,
}

impl SwinOutput {
    /// The map of stage `name` (`"stage1"` ..), if it was selected.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| &self.feature_maps[i])
    }

    /// The maps, finest first.
    pub fn into_vec(self) -> Vec<Tensor> {
        self.feature_maps
    }
}

/// A Swin Transformer backbone returning the configured stages' maps (no classifier).
pub struct Swin {
    cfg: SwinConfig,
    embeddings: PatchEmbeddings,
    stages: Vec<Stage>,
    /// For each output: its index in `stage_names` (0 = stem) and its LayerNorm.
    outputs: Vec<(usize, LayerNorm)>,
    specs: Vec<FeatureSpec>,
    names: Vec<String>,
}

impl Swin {
    /// Builds the network, loading every parameter from `vb` under the checkpoint keys of
    /// `cfg.key_style`: HF `SwinBackbone`'s (pass `vb.pp("model.pixel_level_module.encoder")`
    /// for a OneFormer checkpoint) or mmseg `SwinTransformer`'s (`vb.pp("backbone")` for an
    /// mmseg segmentor checkpoint).
    pub fn new(cfg: &SwinConfig, vb: VarBuilder<'_>) -> Result<Self> {
        cfg.validate()?;
        let embeddings = PatchEmbeddings::new(cfg, vb.clone())?;
        let total: usize = cfg.depths.iter().sum();
        let denom = total.saturating_sub(1).max(1) as f64;
        let n = cfg.num_stages();
        let mut stages = Vec::with_capacity(n);
        let mut block_idx = 0;
        for (i, (&depth, &heads)) in cfg.depths.iter().zip(&cfg.num_heads).enumerate() {
            let dim = cfg.stage_dim(i);
            let svb = match cfg.key_style {
                SwinKeyStyle::Hf => vb.pp("encoder").pp("layers").pp(i),
                SwinKeyStyle::Mmseg => vb.pp("stages").pp(i),
            };
            let mut blocks = Vec::with_capacity(depth);
            for j in 0..depth {
                let shift = if j % 2 == 0 { 0 } else { cfg.window_size / 2 };
                let dp = cfg.drop_path_rate * block_idx as f64 / denom;
                blocks.push(SwinBlock::new(
                    cfg,
                    dim,
                    heads,
                    shift,
                    dp,
                    svb.pp("blocks").pp(j),
                )?);
                block_idx += 1;
            }
            let downsample = if i + 1 < n {
                Some(PatchMerging::new(cfg, dim, svb.pp("downsample"))?)
            } else {
                None
            };
            stages.push(Stage { blocks, downsample });
        }
        let stage_names = cfg.stage_names();
        let idx = cfg.out_stage_indices()?;
        let mut outputs = Vec::with_capacity(idx.len());
        for &k in &idx {
            let dim = cfg.stage_dim(k.saturating_sub(1));
            let nvb = match cfg.key_style {
                SwinKeyStyle::Hf => vb.pp("hidden_states_norms").pp(&stage_names[k]),
                // `out_stage_indices` never selects the stem (k = 0) in this style.
                SwinKeyStyle::Mmseg => vb.pp(format!("norm{}", k.saturating_sub(1))),
            };
            outputs.push((k, LayerNorm::new(dim, TORCH_LN_EPS, nvb)?));
        }
        Ok(Self {
            cfg: cfg.clone(),
            embeddings,
            stages,
            outputs,
            specs: cfg.feature_specs()?,
            names: idx.iter().map(|&k| stage_names[k].clone()).collect(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SwinConfig {
        &self.cfg
    }

    /// Runs the backbone; `train` enables dropout and drop path (and records gradients
    /// through differentiable ops instead of the fused inference kernels).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<SwinOutput> {
        let c_in = self.cfg.num_channels;
        let (_, c, h, w) = x.dims4().map_err(|_| {
            segkit_core::Error::shape("Swin input (B x C x H x W)", &[1, c_in, 224, 224], x.dims())
        })?;
        if c != c_in || h == 0 || w == 0 {
            return Err(segkit_core::Error::shape(
                "Swin input (B x C x H x W, non-empty)",
                &[c_in],
                &[c],
            ));
        }
        let (mut hs, (mut gh, mut gw)) = self.embeddings.forward(x, train)?;
        let mut maps = Vec::with_capacity(self.outputs.len());
        let mut outs = self.outputs.iter().peekable();
        let last = self.outputs.last().map(|o| o.0).unwrap_or(0);
        if let Some((_, norm)) = outs.next_if(|o| o.0 == 0) {
            maps.push(to_map(&norm.forward(&hs, train)?, gh, gw)?);
        }
        for (i, stage) in self.stages.iter().enumerate().take(last) {
            let window = self.cfg.window_size;
            // HF `SwinLayer.set_shift_and_window_size` (encoder without `always_partition`).
            let unshifted = !self.cfg.always_partition && gh.min(gw) <= window;
            if unshifted && gh.min(gw) < window {
                return Err(Error::InvalidConfig(format!(
                    "Swin (always_partition false): stage{} map {gh}x{gw} is smaller than the \
                     window {window} (HF's SwinModel fails there too); use a larger input",
                    i + 1
                )));
            }
            let (dt, dev) = (hs.dtype(), hs.device().clone());
            let mut geo: [Option<WindowGeometry>; 2] = [None, None];
            for block in &stage.blocks {
                let shift = if unshifted { 0 } else { block.shift };
                let slot = usize::from(shift > 0);
                if geo[slot].is_none() {
                    geo[slot] = Some(WindowGeometry::new(gh, gw, window, shift, dt, &dev)?);
                }
                let g = geo[slot]
                    .as_ref()
                    .ok_or_else(|| Error::InvalidConfig("Swin window geometry missing".into()))?;
                hs = block.forward(&hs, g, train)?;
            }
            if let Some((_, norm)) = outs.next_if(|o| o.0 == i + 1) {
                maps.push(to_map(&norm.forward(&hs, train)?, gh, gw)?);
            }
            if i + 1 < last {
                if let Some(ds) = &stage.downsample {
                    hs = ds.forward(&hs, (gh, gw), train)?;
                    (gh, gw) = (gh.div_ceil(2), gw.div_ceil(2));
                }
            }
        }
        Ok(SwinOutput {
            names: self.names.clone(),
            feature_maps: maps,
        })
    }
}

/// Tokens `B x (h w) x C` -> map `B x C x h x w`.
fn to_map(t: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, _, c) = t.dims3()?;
    Ok(segkit_core::ops::transpose_last2(t)?.reshape((b, c, h, w))?)
}

impl Backbone for Swin {
    fn feature_specs(&self) -> Vec<FeatureSpec> {
        self.specs.clone()
    }

    fn feature_names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn forward_features(&self, x: &Tensor, train: bool) -> segkit_core::Result<Vec<Tensor>> {
        Ok(self.forward(x, train)?.into_vec())
    }
}
