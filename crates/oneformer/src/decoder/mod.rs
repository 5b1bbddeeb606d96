//! OneFormer's task-conditioned transformer: the task MLP, the query transformer, the
//! masked-attention transformer decoder and the class / mask predictions.
//!
//! Paper: Jain et al., "OneFormer: One Transformer to Rule Universal Image Segmentation"
//! (CVPR 2023), Sec. 3.2-3.3; masked attention from Cheng et al., "Masked-attention Mask
//! Transformer for Universal Image Segmentation" (Mask2Former, CVPR 2022).
//! Reference: transformers' `models/oneformer/modeling_oneformer.py`
//! (`OneFormerTaskModel`, `OneFormerTransformerModule`, `OneFormerTransformerDecoder`,
//! `OneFormerTransformerDecoderQueryTransformer`, `OneFormerTransformerDecoderLayer`); the
//! parameter names below are that module's state-dict keys under `model.task_encoder.` and
//! `model.transformer_module.`.
//!
//! The decoder is built from the pixel decoder's output [`FeatureSpec`]s
//! (`MsDeformAttnPixelDecoder::output_specs()`): the mask-feature and level channels come from
//! them, the config holds only the decoder's own sizes ([`TransformerDecoderConfig`]).
//!
//! Data flow (HF's, reproduced exactly, including its quirks):
//! 1. task token `t = LayerNorm(MLP(task ids as floats))` (`decoder_norm`, with
//!    `use_task_norm`);
//! 2. the query transformer (2 post-norm decoder layers) turns `N - 1` queries initialised with
//!    `t` into object queries, attending over the stride-4 map. HF passes the *sine position
//!    embedding* of the mask features as the memory content and the 1x1-projected mask
//!    features as the memory position embedding; this port does the same;
//! 3. queries = `[object queries; t]` (`N` of them; also returned as the contrastive queries);
//! 4. `decoder_layers - 1` masked-attention layers (cross-attention over the pixel decoder's
//!    levels round-robin, stride 32, 16, 8, ..., then self-attention, then FFN), each followed
//!    by the prediction heads whose mask (resized to the next level, `sigmoid < 0.5`) is the
//!    next layer's attention mask; a query whose mask would hide every position attends
//!    everywhere.
//!
//! # Shapes
//! Inputs: the pixel decoder's `multi_scale_features` (`B x C x h_l x w_l`, coarsest first),
//! `mask_features` (`B x mask_dim x H/4 x W/4`), task inputs `B x task_seq_len`.
//! Outputs: class logits `B x N x (K + 1)`, mask logits `B x N x H/4 x W/4`, queries `B x N x C`.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_core::FeatureSpec;
//! use segkit_oneformer::decoder::{TransformerDecoder, TransformerDecoderConfig};
//! let dev = Device::Cpu;
//! let cfg = TransformerDecoderConfig {
//!     num_queries: 6,
//!     hidden_dim: 32,
//!     num_labels: 3,
//!     num_attention_heads: 4,
//!     dim_feedforward: 64,
//!     decoder_layers: 4,
//!     ..TransformerDecoderConfig::oneformer_ade20k_swin_tiny()
//! };
//! // The pixel decoder's output specs: mask features, then the levels finest first.
//! let specs = [4, 8, 16, 32].map(|s| FeatureSpec::new(32, s));
//! let vb = candle_nn::VarBuilder::zeros(DType::F32, &dev);
//! let dec = TransformerDecoder::new(&cfg, &specs, vb).unwrap();
//! let levels: Vec<Tensor> = [(2, 3), (4, 5), (7, 9)]
//!     .iter()
//!     .map(|&(h, w)| Tensor::zeros((1, 32, h, w), DType::F32, &dev).unwrap())
//!     .collect();
//! let mask_features = Tensor::zeros((1, 32, 13, 17), DType::F32, &dev).unwrap();
//! let task = Tensor::zeros((1, 77), DType::F32, &dev).unwrap();
//! let out = dec.forward(&levels, &mask_features, &task, false).unwrap();
//! assert_eq!(out.class_queries_logits.dims(), &[1, 6, 4]);
//! assert_eq!(out.masks_queries_logits.dims(), &[1, 6, 13, 17]);
//! assert_eq!(out.auxiliary.len(), 3);
//! ```

mod config;
mod layers;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};
use segkit_core::nn::{LayerNorm, Mlp, MlpKeys};
use segkit_core::FeatureSpec;

pub use crate::attention::MultiheadAttention;
pub use config::{DecoderInputDims, TransformerDecoderConfig};
use layers::{MaskedAttentionLayer, QueryTransformer};

use crate::{Error, Result};

/// Class and mask logits of one decoder stage.
#[derive(Debug, Clone)]
pub struct StagePrediction {
    /// `B x N x (K + 1)`: class logits, the last column is "no object".
    pub class_queries_logits: Tensor,
    /// `B x N x H/4 x W/4`: mask logits.
    pub masks_queries_logits: Tensor,
}

/// The outputs of [`TransformerDecoder::forward`] (HF's `OneFormerTransformerDecoderOutput`).
#[derive(Debug, Clone)]
pub struct TransformerDecoderOutput {
    /// `B x N x (K + 1)`: the last stage's class logits.
    pub class_queries_logits: Tensor,
    /// `B x N x H/4 x W/4`: the last stage's mask logits.
    pub masks_queries_logits: Tensor,
    /// The `decoder_layers - 1` earlier stages (the initial queries' prediction first), for the
    /// auxiliary losses.
    pub auxiliary: Vec<StagePrediction>,
    /// `B x N x C`: the final queries.
    pub object_queries: Tensor,
    /// `B x N x C`: the queries entering the masked-attention decoder (object queries from the
    /// query transformer and the task token), matched against the text queries by the
    /// contrastive loss.
    pub contrastive_queries: Tensor,
    /// `B x C`: the task token (output of the task MLP, before `decoder_norm`).
    pub task_token: Tensor,
}

/// The memories of the masked cross-attention: per level `B x (h w) x C` (with the level
/// embedding), its sine position embedding `1 x (h w) x C`, and its size.
struct LevelMemories {
    memories: Vec<Tensor>,
    positions: Vec<Tensor>,
    sizes: Vec<(usize, usize)>,
}

/// OneFormer's task MLP (`model.task_encoder.task_mlp`, 2 layers `task_seq_len -> C -> C`) and
/// transformer module (`model.transformer_module`).
#[derive(Debug, Clone)]
pub struct TransformerDecoder {
    cfg: TransformerDecoderConfig,
    dims: DecoderInputDims,
    task_mlp: Mlp,
    queries_embedder: Embedding,
    level_embed: Tensor,
    query_transformer: QueryTransformer,
    decoder_norm: LayerNorm,
    layers: Vec<MaskedAttentionLayer>,
    query_input_projection_w: Tensor,
    query_input_projection_b: Tensor,
    class_embed: Linear,
    mask_embed: Mlp,
}

/// Number of pixel-decoder levels the masked attention cycles through (HF hard-codes 3).
pub const NUM_FEATURE_LEVELS: usize = 3;

impl TransformerDecoder {
    /// Builds the decoder for the pixel decoder's output specs `inputs`
    /// ([`segkit_core::Neck::output_specs`] order: the mask features, then the
    /// [`NUM_FEATURE_LEVELS`] levels finest first; see [`TransformerDecoderConfig::input_dims`]),
    /// loading the task MLP from `vb.pp("task_encoder")` and the transformer module from
    /// `vb.pp("transformer_module")` (`vb` at `model.` of a full OneFormer checkpoint).
    pub fn new(
        cfg: &TransformerDecoderConfig,
        inputs: &[FeatureSpec],
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let dims = cfg.input_dims(inputs)?;
        let c = cfg.hidden_dim;
        let mlp = |i, o, n, vb| Mlp::new_with_keys(i, c, o, n, MlpKeys::LayerBlocks, vb);
        let task_mlp = mlp(cfg.task_seq_len, c, 2, vb.pp("task_encoder").pp("task_mlp"))?;
        let vb = vb.pp("transformer_module");
        let queries_embedder = candle_nn::embedding(cfg.num_queries, c, vb.pp("queries_embedder"))?;
        let level_embed = vb
            .pp("level_embed")
            .get((NUM_FEATURE_LEVELS, c), "weight")?;
        let d = vb.pp("decoder");
        let query_transformer = QueryTransformer::new(cfg, d.pp("query_transformer"))?;
        let decoder_norm = LayerNorm::new(c, cfg.layer_norm_eps, d.pp("decoder_norm"))?;
        let layers = (0..cfg.decoder_layers - 1)
            .map(|i| MaskedAttentionLayer::new(cfg, d.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        // HF: `Conv2d(conv_dim, hidden_dim, 1)`, applied to the mask features.
        let qp = d.pp("query_input_projection");
        let query_input_projection_w = qp
            .get((c, dims.level_dim, 1, 1), "weight")?
            .reshape((c, dims.mask_dim))?;
        let query_input_projection_b = qp.get(c, "bias")?;
        let class_embed = candle_nn::linear(c, cfg.num_labels + 1, d.pp("class_embed"))?;
        let mask_embed = mlp(c, dims.mask_dim, 3, d.pp("mask_embed"))?;
        Ok(Self {
            cfg: cfg.clone(),
            dims,
            task_mlp,
            queries_embedder,
            level_embed,
            query_transformer,
            decoder_norm,
            layers,
            query_input_projection_w,
            query_input_projection_b,
            class_embed,
            mask_embed,
        })
    }

    /// The configuration this decoder was built from.
    pub fn config(&self) -> &TransformerDecoderConfig {
        &self.cfg
    }

    /// The channels taken from the input specs.
    pub fn input_dims(&self) -> DecoderInputDims {
        self.dims
    }

    /// The task token `B x C` of task inputs `B x task_seq_len` (token ids as floats).
    pub fn task_token(&self, task_inputs: &Tensor) -> Result<Tensor> {
        let (_, l) = task_inputs.dims2().map_err(|_| {
            Error::InvalidArgument(format!(
                "task inputs must be B x {}, got {:?}",
                self.cfg.task_seq_len,
                task_inputs.dims()
            ))
        })?;
        if l != self.cfg.task_seq_len {
            return Err(Error::InvalidArgument(format!(
                "task inputs have length {l}, the task MLP expects task_seq_len = {}",
                self.cfg.task_seq_len
            )));
        }
        self.task_mlp.forward(&task_inputs.to_dtype(DType::F32)?)
    }

    /// The prediction heads (`forward_prediction_heads`): class and mask logits of queries
    /// `x: B x N x C`, and the additive attention mask for the next layer at `next_size`
    /// (`B x 1 x N x h w`, 0 or `-inf`).
    fn predict(
        &self,
        x: &Tensor,
        mask_features: &Tensor,
        next_size: Option<(usize, usize)>,
    ) -> Result<(StagePrediction, Option<Tensor>)> {
        let (b, _, h, w) = mask_features.dims4()?;
        let n = x.dim(1)?;
        let y = self.decoder_norm.forward(x)?;
        let class = self.class_embed.forward(&y)?;
        let emb = self.mask_embed.forward(&y)?;
        let mf = mask_features.reshape((b, self.dims.mask_dim, h * w))?;
        let masks = emb.matmul(&mf)?.reshape((b, n, h, w))?;
        let attn = match next_size {
            Some(size) => Some(attention_mask(&masks, size)?),
            None => None,
        };
        Ok((
            StagePrediction {
                class_queries_logits: class,
                masks_queries_logits: masks,
            },
            attn,
        ))
    }

    /// Checks the levels against the input specs and builds the cross-attention memories.
    fn level_memories(&self, levels: &[Tensor], b: usize, dev: &Device) -> Result<LevelMemories> {
        if levels.len() != NUM_FEATURE_LEVELS {
            return Err(Error::InvalidArgument(format!(
                "the transformer decoder needs {NUM_FEATURE_LEVELS} feature levels, got {}",
                levels.len()
            )));
        }
        let (c, ld) = (self.cfg.hidden_dim, self.dims.level_dim);
        let mut m = LevelMemories {
            memories: Vec::with_capacity(NUM_FEATURE_LEVELS),
            positions: Vec::with_capacity(NUM_FEATURE_LEVELS),
            sizes: Vec::with_capacity(NUM_FEATURE_LEVELS),
        };
        for (i, f) in levels.iter().enumerate() {
            let (fb, fc, h, w) = f.dims4()?;
            if fb != b || fc != ld {
                return Err(segkit_core::Error::shape(
                    format!("OneFormer decoder input level {i} (B x conv_dim x h x w)"),
                    &[b, ld, h, w],
                    f.dims(),
                ));
            }
            m.memories.push(
                segkit_core::ops::transpose_last2(&f.reshape((b, c, h * w))?)?
                    .broadcast_add(&self.level_embed.get(i)?)?,
            );
            m.positions.push(position_embedding(h, w, c, dev)?);
            m.sizes.push((h, w));
        }
        Ok(m)
    }

    /// The query transformer over the stride-4 map: `N - 1` object queries `B x (N - 1) x C`
    /// from the (normalised) task token `task: B x C`.
    fn object_queries(
        &self,
        mask_features: &Tensor,
        task: &Tensor,
        query_embed: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let (c, n) = (self.cfg.hidden_dim, self.cfg.num_queries);
        let (b, _, mh, mw) = mask_features.dims4()?;
        let dev = mask_features.device();
        let qt_pos = query_embed.narrow(1, 0, n - 1)?;
        let memory = position_embedding(mh, mw, c, dev)?; // 1 x hw x C (same for every image)
                                                          // The 1x1 projection as a linear layer over the pixels: B x hw x C directly (a blocked
                                                          // transpose of the input, one GEMM, the bias in one pass).
        let mf = mask_features.reshape((b, self.dims.mask_dim, mh * mw))?;
        let proj = segkit_core::ops::linear(
            &segkit_core::ops::transpose_last2(&mf)?,
            &self.query_input_projection_w,
            Some(&self.query_input_projection_b),
        )?; // B x hw x C
        let memory = memory.broadcast_as((b, mh * mw, c))?.contiguous()?;
        let q = if self.cfg.use_task_norm {
            task.unsqueeze(1)?
                .broadcast_as((b, n - 1, c))?
                .contiguous()?
        } else {
            Tensor::zeros((b, n - 1, c), DType::F32, dev)?
        };
        self.query_transformer
            .forward(&q, &memory, &proj, &qt_pos, train)
    }

    /// Runs the task MLP, the query transformer, the masked-attention decoder and the
    /// predictions.
    ///
    /// `multi_scale_features`: the pixel decoder's [`NUM_FEATURE_LEVELS`] levels, coarsest
    /// first (HF's order); `mask_features`: `B x mask_dim x h x w`; `task_inputs`:
    /// `B x task_seq_len` token ids as floats. `train` enables the query transformer's dropout.
    pub fn forward(
        &self,
        multi_scale_features: &[Tensor],
        mask_features: &Tensor,
        task_inputs: &Tensor,
        train: bool,
    ) -> Result<TransformerDecoderOutput> {
        self.forward_impl(
            multi_scale_features,
            mask_features,
            task_inputs,
            train,
            true,
        )
    }

    /// Inference (`train = false`) without the auxiliary stages: each stage's prediction is
    /// dropped once the next stage's attention mask is built, so it holds one
    /// `B x N x H/4 x W/4` mask prediction instead of `decoder_layers` of them (~88 MB less at
    /// 512 x 512 with 150 queries). `auxiliary` is empty; everything else is identical to
    /// [`forward`](Self::forward)'s.
    pub fn forward_final(
        &self,
        levels: &[Tensor],
        mask: &Tensor,
        task: &Tensor,
    ) -> Result<TransformerDecoderOutput> {
        self.forward_impl(levels, mask, task, false, false)
    }

    fn forward_impl(
        &self,
        multi_scale_features: &[Tensor],
        mask_features: &Tensor,
        task_inputs: &Tensor,
        train: bool,
        keep_auxiliary: bool,
    ) -> Result<TransformerDecoderOutput> {
        let (b, mc, mh, mw) = mask_features.dims4()?;
        if mc != self.dims.mask_dim {
            return Err(segkit_core::Error::shape(
                "OneFormer mask features (B x mask_dim x H x W)",
                &[b, self.dims.mask_dim, mh, mw],
                mask_features.dims(),
            ));
        }
        let lv = self.level_memories(multi_scale_features, b, mask_features.device())?;
        let query_embed = self.queries_embedder.embeddings().unsqueeze(0)?; // 1 x N x C
        let raw_task = self.task_token(task_inputs)?; // B x C
        let task = if self.cfg.use_task_norm {
            self.decoder_norm.forward(&raw_task)?
        } else {
            raw_task.clone()
        };
        let q = self.object_queries(mask_features, &task, &query_embed, train)?;
        let queries = Tensor::cat(&[&q, &task.unsqueeze(1)?], 1)?; // B x N x C

        let mut auxiliary = Vec::with_capacity(if keep_auxiliary { self.layers.len() } else { 0 });
        let (mut pred, mut mask) = self.predict(&queries, mask_features, Some(lv.sizes[0]))?;
        let mut x = queries.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let level = i % NUM_FEATURE_LEVELS;
            let m = mask.take().ok_or_else(|| {
                Error::InvalidConfig("internal: missing attention mask".to_string())
            })?;
            x = layer.forward(
                &x,
                &lv.memories[level],
                &lv.positions[level],
                &m,
                &query_embed,
            )?;
            let next = lv.sizes[(i + 1) % NUM_FEATURE_LEVELS];
            let last = i + 1 == self.layers.len();
            let (p, m) = self.predict(&x, mask_features, (!last).then_some(next))?;
            let earlier = std::mem::replace(&mut pred, p);
            if keep_auxiliary {
                auxiliary.push(earlier);
            }
            mask = m;
        }
        Ok(TransformerDecoderOutput {
            class_queries_logits: pred.class_queries_logits,
            masks_queries_logits: pred.masks_queries_logits,
            auxiliary,
            object_queries: x,
            contrastive_queries: queries,
            task_token: raw_task,
        })
    }
}

/// Sine position embedding of an `h x w` map as `1 x (h w) x C`.
fn position_embedding(h: usize, w: usize, c: usize, dev: &Device) -> Result<Tensor> {
    Ok(segkit_core::nn::sine_position_embedding(h, w, c / 2, dev)?.unsqueeze(0)?)
}

/// HF's attention mask: mask logits resized (bilinear, align_corners = false) to `size`;
/// positions with `sigmoid < 0.5` are hidden (`-inf`), except in rows that would hide every
/// position, which are left open. Returns `B x 1 x N x (h w)`.
fn attention_mask(masks: &Tensor, size: (usize, usize)) -> Result<Tensor> {
    let (b, n, _, _) = masks.dims4()?;
    // HF detaches the attention mask: no gradient flows through it.
    let r = segkit_core::ops::resize_bilinear(&masks.detach(), size, false)?;
    let hw = size.0 * size.1;
    let hidden = candle_nn::ops::sigmoid(&r)?
        .lt(0.5)?
        .reshape((b, n, hw))?
        .to_dtype(DType::F32)?;
    // A row with every position hidden attends everywhere.
    let all = hidden
        .sum_keepdim(D::Minus1)?
        .ge(hw as f64)?
        .to_dtype(DType::F32)?;
    let hidden = hidden.broadcast_mul(&(1.0 - all)?)?;
    let neg = Tensor::new(f32::NEG_INFINITY, masks.device())?;
    let zero = Tensor::new(0f32, masks.device())?;
    let m = hidden.ne(0f32)?.where_cond(
        &neg.broadcast_as((b, n, hw))?,
        &zero.broadcast_as((b, n, hw))?,
    )?;
    Ok(m.unsqueeze(1)?)
}
