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

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};
use segkit_core::nn::LayerNorm;

use crate::{Error, Result};

/// Configuration of OneFormer's transformer part, with transformers' `OneFormerConfig` field
/// names (unknown fields of an HF config.json are ignored; missing ones take the
/// oneformer_ade20k_swin_tiny values).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TransformerDecoderConfig {
    /// Number of object queries `N`, the task token's slot included. 150 (250 for Swin-L).
    pub num_queries: usize,
    /// Width `C` of the queries and of the attention layers. 256.
    pub hidden_dim: usize,
    /// Channels of the pixel decoder's outputs fed to the decoder (`conv_dim`). 256.
    pub conv_dim: usize,
    /// Channels of the per-pixel mask embeddings and of the mask-embedding MLP's output. 256.
    pub mask_dim: usize,
    /// Number of classes `K` (without the "no object" class); HF derives it from `id2label`.
    pub num_labels: usize,
    /// Attention heads in every attention layer. 8.
    pub num_attention_heads: usize,
    /// Hidden width of the feed-forward networks. 2048.
    pub dim_feedforward: usize,
    /// `DEC_LAYERS`: the prediction on the initial queries plus `decoder_layers - 1`
    /// masked-attention layers. 10.
    pub decoder_layers: usize,
    /// Layers of the query transformer. 2.
    pub query_dec_layers: usize,
    /// Pre-norm (`true`) or post-norm (`false`, the checkpoints) transformer layers.
    pub pre_norm: bool,
    /// Layer-normalise the task token (`decoder_norm`) and initialise the query transformer's
    /// queries with it. `true`.
    pub use_task_norm: bool,
    /// HF's flag to add 1x1 input projections even when `conv_dim == hidden_dim`; HF keeps those
    /// projections in a plain Python list (their weights are never saved), so only `false` with
    /// `conv_dim == hidden_dim` describes a loadable checkpoint.
    pub enforce_input_proj: bool,
    /// Dropout of the query transformer, applied only with `train = true`. 0.1.
    pub dropout: f64,
    /// Epsilon of every LayerNorm. 1e-5.
    pub layer_norm_eps: f64,
    /// Length of the tokenised task string (input width of the task MLP). 77.
    pub task_seq_len: usize,
}

impl Default for TransformerDecoderConfig {
    fn default() -> Self {
        Self::oneformer_ade20k_swin_tiny()
    }
}

impl TransformerDecoderConfig {
    /// shi-labs/oneformer_ade20k_swin_tiny: 150 queries, 150 classes, width 256, 8 heads, FFN
    /// 2048, 10 decoder layers, 2 query-transformer layers, post-norm.
    pub fn oneformer_ade20k_swin_tiny() -> Self {
        Self {
            num_queries: 150,
            hidden_dim: 256,
            conv_dim: 256,
            mask_dim: 256,
            num_labels: 150,
            num_attention_heads: 8,
            dim_feedforward: 2048,
            decoder_layers: 10,
            query_dec_layers: 2,
            pre_norm: false,
            use_task_norm: true,
            enforce_input_proj: false,
            dropout: 0.1,
            layer_norm_eps: 1e-5,
            task_seq_len: 77,
        }
    }

    /// Checks that the sizes describe a network HF can build and save.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(format!("transformer decoder: {m}")));
        if self.num_queries < 2
            || self.hidden_dim == 0
            || self.num_attention_heads == 0
            || self.dim_feedforward == 0
            || self.decoder_layers == 0
            || self.task_seq_len == 0
            || self.mask_dim == 0
        {
            return bad(format!(
                "sizes must be positive (num_queries >= 2): {self:?}"
            ));
        }
        if self.hidden_dim % self.num_attention_heads != 0 || self.hidden_dim % 2 != 0 {
            return bad(format!(
                "hidden_dim {} must be even and divisible by num_attention_heads {}",
                self.hidden_dim, self.num_attention_heads
            ));
        }
        if self.conv_dim != self.hidden_dim || self.enforce_input_proj {
            return bad(format!(
                "conv_dim {} != hidden_dim {} (or enforce_input_proj): transformers keeps those input \
                 projections outside the state dict, so no checkpoint can carry them",
                self.conv_dim, self.hidden_dim
            ));
        }
        if self.mask_dim != self.hidden_dim {
            return bad(format!(
                "mask_dim {} must equal hidden_dim {} (the query projection of the mask features \
                 and the mask-embedding MLP assume it)",
                self.mask_dim, self.hidden_dim
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) || self.layer_norm_eps <= 0.0 {
            return bad(format!(
                "dropout {} must be in [0, 1) and layer_norm_eps {} positive",
                self.dropout, self.layer_norm_eps
            ));
        }
        Ok(())
    }
}

/// HF's `OneFormerMLPPredictionHead`: `Linear` layers at `layers.{i}.0` with ReLU between.
#[derive(Debug, Clone)]
pub struct PredictionMlp {
    layers: Vec<Linear>,
}

impl PredictionMlp {
    /// `num_layers` layers `in_dim -> hidden -> ... -> out_dim`.
    pub fn new(
        in_dim: usize,
        hidden: usize,
        out_dim: usize,
        num_layers: usize,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let mut layers = Vec::with_capacity(num_layers);
        for i in 0..num_layers {
            let din = if i == 0 { in_dim } else { hidden };
            let dout = if i + 1 == num_layers { out_dim } else { hidden };
            layers.push(candle_nn::linear(din, dout, vb.pp("layers").pp(i).pp(0))?);
        }
        Ok(Self { layers })
    }

    /// `... x in_dim` -> `... x out_dim`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        let n = self.layers.len();
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(&x)?;
            if i + 1 < n {
                x = x.relu()?;
            }
        }
        Ok(x)
    }
}

/// Inverted dropout with probability `p` when `train`; identity otherwise.
pub(crate) fn dropout(x: &Tensor, p: f64, train: bool) -> Result<Tensor> {
    if train && p > 0.0 {
        Ok(candle_nn::ops::dropout(x, p as f32)?)
    } else {
        Ok(x.clone())
    }
}

/// Scaled dot-product attention over batch-first projections.
/// `q: B x Lq x C`, `k, v: B x Lk x C`, `mask`: additive, broadcastable to `B x heads x Lq x Lk`.
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
    attn_dropout: f64,
    train: bool,
) -> Result<Tensor> {
    let (b, lq, c) = q.dims3()?;
    let lk = k.dim(1)?;
    let d = c / heads;
    let scale = (d as f64).powf(-0.5);
    let q = (q * scale)?
        .reshape((b, lq, heads, d))?
        .transpose(1, 2)?
        .contiguous()?;
    let k = k
        .reshape((b, lk, heads, d))?
        .transpose(1, 2)?
        .contiguous()?;
    let v = v
        .reshape((b, lk, heads, d))?
        .transpose(1, 2)?
        .contiguous()?;
    let mut s = q.matmul(&k.t()?)?;
    if let Some(m) = mask {
        s = s.broadcast_add(m)?;
    }
    let a = candle_nn::ops::softmax_last_dim(&s)?;
    let a = dropout(&a, attn_dropout, train)?;
    let o = a.matmul(&v)?;
    Ok(o.transpose(1, 2)?.reshape((b, lq, c))?)
}

/// `torch.nn.MultiheadAttention` (packed `in_proj_weight` / `in_proj_bias`, `out_proj`).
#[derive(Debug, Clone)]
pub struct MultiheadAttention {
    wq: Linear,
    wk: Linear,
    wv: Linear,
    out: Linear,
    heads: usize,
    dropout: f64,
}

impl MultiheadAttention {
    /// Loads `in_proj_weight` (`3C x C`), `in_proj_bias`, `out_proj.{weight,bias}`.
    pub fn new(dim: usize, heads: usize, dropout: f64, vb: VarBuilder<'_>) -> Result<Self> {
        let w = vb.get((3 * dim, dim), "in_proj_weight")?;
        let b = vb.get(3 * dim, "in_proj_bias")?;
        let part = |i: usize| -> Result<Linear> {
            Ok(Linear::new(
                w.narrow(0, i * dim, dim)?.contiguous()?,
                Some(b.narrow(0, i * dim, dim)?.contiguous()?),
            ))
        };
        Ok(Self {
            wq: part(0)?,
            wk: part(1)?,
            wv: part(2)?,
            out: candle_nn::linear(dim, dim, vb.pp("out_proj"))?,
            heads,
            dropout,
        })
    }

    /// Batch-first attention: `query: B x Lq x C`, `key, value: B x Lk x C`; `mask` additive
    /// (`-inf` where attention is not allowed), broadcastable to `B x heads x Lq x Lk`.
    pub fn forward(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let q = self.wq.forward(query)?;
        let k = self.wk.forward(key)?;
        let v = self.wv.forward(value)?;
        let o = attend(&q, &k, &v, self.heads, mask, self.dropout, train)?;
        Ok(self.out.forward(&o)?)
    }
}

/// One layer of the query transformer (`OneFormerTransformerDecoderQueryTransformerDecoderLayer`):
/// self-attention, cross-attention over the stride-4 map, ReLU FFN; post- or pre-norm.
#[derive(Debug, Clone)]
struct QueryTransformerLayer {
    self_attn: MultiheadAttention,
    cross_attn: MultiheadAttention,
    linear1: Linear,
    linear2: Linear,
    norms: [LayerNorm; 3],
    pre_norm: bool,
    dropout: f64,
}

impl QueryTransformerLayer {
    fn new(cfg: &TransformerDecoderConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let c = cfg.hidden_dim;
        let ln = |n: &str| LayerNorm::new(c, cfg.layer_norm_eps, vb.pp(n));
        Ok(Self {
            self_attn: MultiheadAttention::new(
                c,
                cfg.num_attention_heads,
                cfg.dropout,
                vb.pp("self_attn"),
            )?,
            cross_attn: MultiheadAttention::new(
                c,
                cfg.num_attention_heads,
                cfg.dropout,
                vb.pp("multihead_attn"),
            )?,
            linear1: candle_nn::linear(c, cfg.dim_feedforward, vb.pp("linear1"))?,
            linear2: candle_nn::linear(cfg.dim_feedforward, c, vb.pp("linear2"))?,
            norms: [ln("norm1")?, ln("norm2")?, ln("norm3")?],
            pre_norm: cfg.pre_norm,
            dropout: cfg.dropout,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        memory: &Tensor,
        pos: &Tensor,
        query_pos: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let p = self.dropout;
        let key = memory.broadcast_add(pos)?;
        let ffn = |h: &Tensor| -> Result<Tensor> {
            let h = self.linear1.forward(h)?.relu()?;
            let h = dropout(&h, p, train)?;
            self.linear2.forward(&h).map_err(Error::from)
        };
        if self.pre_norm {
            let h = self.norms[0].forward(x)?;
            let q = h.broadcast_add(query_pos)?;
            let h = self.self_attn.forward(&q, &q, &h, None, train)?;
            let x = (x + dropout(&h, p, train)?)?;
            let h = self.norms[1].forward(&x)?;
            let h =
                self.cross_attn
                    .forward(&h.broadcast_add(query_pos)?, &key, memory, None, train)?;
            let x = (x + dropout(&h, p, train)?)?;
            let h = ffn(&self.norms[2].forward(&x)?)?;
            Ok((x + dropout(&h, p, train)?)?)
        } else {
            let q = x.broadcast_add(query_pos)?;
            let h = self.self_attn.forward(&q, &q, x, None, train)?;
            let x = self.norms[0].forward(&(x + dropout(&h, p, train)?)?)?;
            let h =
                self.cross_attn
                    .forward(&x.broadcast_add(query_pos)?, &key, memory, None, train)?;
            let x = self.norms[1].forward(&(x + dropout(&h, p, train)?)?)?;
            let h = ffn(&x)?;
            Ok(self.norms[2].forward(&(x + dropout(&h, p, train)?)?)?)
        }
    }
}

/// `OneFormerTransformerDecoderQueryTransformer`: a small DETR-style decoder whose queries start
/// from the task token.
#[derive(Debug, Clone)]
struct QueryTransformer {
    layers: Vec<QueryTransformerLayer>,
    norm: LayerNorm,
}

impl QueryTransformer {
    fn new(cfg: &TransformerDecoderConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let vb = vb.pp("decoder");
        let layers = (0..cfg.query_dec_layers)
            .map(|i| QueryTransformerLayer::new(cfg, vb.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = LayerNorm::new(cfg.hidden_dim, cfg.layer_norm_eps, vb.pp("norm"))?;
        Ok(Self { layers, norm })
    }
}

/// One masked-attention decoder layer (`OneFormerTransformerDecoderLayer`): masked
/// cross-attention (`cross_attn.multihead_attn`, `cross_attn.norm`), self-attention with
/// separate projections (`self_attn.self_attn.{q,k,v,out}_proj`, `self_attn.norm`) and the FFN
/// (`ffn.linear1`, `ffn.linear2`, `ffn.norm`). HF builds all three with dropout 0.
#[derive(Debug, Clone)]
struct MaskedAttentionLayer {
    cross_attn: MultiheadAttention,
    cross_norm: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    self_norm: LayerNorm,
    linear1: Linear,
    linear2: Linear,
    ffn_norm: LayerNorm,
    heads: usize,
    pre_norm: bool,
}

impl MaskedAttentionLayer {
    fn new(cfg: &TransformerDecoderConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let c = cfg.hidden_dim;
        let eps = cfg.layer_norm_eps;
        let sa = vb.pp("self_attn").pp("self_attn");
        Ok(Self {
            cross_attn: MultiheadAttention::new(
                c,
                cfg.num_attention_heads,
                0.0,
                vb.pp("cross_attn").pp("multihead_attn"),
            )?,
            cross_norm: LayerNorm::new(c, eps, vb.pp("cross_attn").pp("norm"))?,
            q_proj: candle_nn::linear(c, c, sa.pp("q_proj"))?,
            k_proj: candle_nn::linear(c, c, sa.pp("k_proj"))?,
            v_proj: candle_nn::linear(c, c, sa.pp("v_proj"))?,
            out_proj: candle_nn::linear(c, c, sa.pp("out_proj"))?,
            self_norm: LayerNorm::new(c, eps, vb.pp("self_attn").pp("norm"))?,
            linear1: candle_nn::linear(c, cfg.dim_feedforward, vb.pp("ffn").pp("linear1"))?,
            linear2: candle_nn::linear(cfg.dim_feedforward, c, vb.pp("ffn").pp("linear2"))?,
            ffn_norm: LayerNorm::new(c, eps, vb.pp("ffn").pp("norm"))?,
            heads: cfg.num_attention_heads,
            pre_norm: cfg.pre_norm,
        })
    }

    /// `OneFormerAttention`: keys from `x + pos`, values from `x` (without the position).
    fn self_attention(&self, x: &Tensor, pos: &Tensor) -> Result<Tensor> {
        let xp = x.broadcast_add(pos)?;
        let q = self.q_proj.forward(&xp)?;
        let k = self.k_proj.forward(&xp)?;
        let v = self.v_proj.forward(x)?;
        let o = attend(&q, &k, &v, self.heads, None, 0.0, false)?;
        Ok(self.out_proj.forward(&o)?)
    }

    fn forward(
        &self,
        x: &Tensor,
        memory: &Tensor,
        memory_pos: &Tensor,
        mask: &Tensor,
        query_pos: &Tensor,
    ) -> Result<Tensor> {
        let key = memory.broadcast_add(memory_pos)?;
        let ffn = |h: &Tensor| -> Result<Tensor> {
            let h = self.linear1.forward(h)?.relu()?;
            self.linear2.forward(&h).map_err(Error::from)
        };
        if self.pre_norm {
            let h = self.cross_norm.forward(x)?;
            let h = self.cross_attn.forward(
                &h.broadcast_add(query_pos)?,
                &key,
                memory,
                Some(mask),
                false,
            )?;
            let x = (x + h)?;
            let h = self.self_attention(&self.self_norm.forward(&x)?, query_pos)?;
            let x = (x + h)?;
            let h = ffn(&self.ffn_norm.forward(&x)?)?;
            Ok((x + h)?)
        } else {
            let h = self.cross_attn.forward(
                &x.broadcast_add(query_pos)?,
                &key,
                memory,
                Some(mask),
                false,
            )?;
            let x = self.cross_norm.forward(&(x + h)?)?;
            let h = self.self_attention(&x, query_pos)?;
            let x = self.self_norm.forward(&(x + h)?)?;
            let h = ffn(&x)?;
            Ok(self.ffn_norm.forward(&(x + h)?)?)
        }
    }
}

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

/// OneFormer's task MLP (`model.task_encoder.task_mlp`, 2 layers `task_seq_len -> C -> C`) and
/// transformer module (`model.transformer_module`).
#[derive(Debug, Clone)]
pub struct TransformerDecoder {
    cfg: TransformerDecoderConfig,
    task_mlp: PredictionMlp,
    queries_embedder: Embedding,
    level_embed: Tensor,
    query_transformer: QueryTransformer,
    decoder_norm: LayerNorm,
    layers: Vec<MaskedAttentionLayer>,
    query_input_projection_w: Tensor,
    query_input_projection_b: Tensor,
    class_embed: Linear,
    mask_embed: PredictionMlp,
}

/// Number of pixel-decoder levels the masked attention cycles through (HF hard-codes 3).
pub const NUM_FEATURE_LEVELS: usize = 3;

impl TransformerDecoder {
    /// Builds the task MLP from `task_vb` (`model.task_encoder`) and the transformer module from
    /// `vb` (`model.transformer_module`).
    pub fn new(
        cfg: &TransformerDecoderConfig,
        task_vb: VarBuilder<'_>,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        cfg.validate()?;
        let c = cfg.hidden_dim;
        let task_mlp = PredictionMlp::new(cfg.task_seq_len, c, c, 2, task_vb.pp("task_mlp"))?;
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
        let qp = d.pp("query_input_projection");
        let query_input_projection_w = qp
            .get((c, cfg.conv_dim, 1, 1), "weight")?
            .reshape((c, cfg.conv_dim))?;
        let query_input_projection_b = qp.get(c, "bias")?;
        let class_embed = candle_nn::linear(c, cfg.num_labels + 1, d.pp("class_embed"))?;
        let mask_embed = PredictionMlp::new(c, c, cfg.mask_dim, 3, d.pp("mask_embed"))?;
        Ok(Self {
            cfg: cfg.clone(),
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
        let mf = mask_features.reshape((b, self.cfg.mask_dim, h * w))?;
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

    /// Runs the task MLP, the query transformer, the masked-attention decoder and the
    /// predictions.
    ///
    /// `multi_scale_features`: the pixel decoder's levels, coarsest first (at least
    /// [`NUM_FEATURE_LEVELS`]; the first three are used); `mask_features`: `B x mask_dim x h x w`;
    /// `task_inputs`: `B x task_seq_len` token ids as floats. `train` enables the query
    /// transformer's dropout.
    pub fn forward(
        &self,
        multi_scale_features: &[Tensor],
        mask_features: &Tensor,
        task_inputs: &Tensor,
        train: bool,
    ) -> Result<TransformerDecoderOutput> {
        let cfg = &self.cfg;
        let c = cfg.hidden_dim;
        if multi_scale_features.len() < NUM_FEATURE_LEVELS {
            return Err(Error::InvalidArgument(format!(
                "the transformer decoder needs {NUM_FEATURE_LEVELS} feature levels, got {}",
                multi_scale_features.len()
            )));
        }
        let (b, mc, mh, mw) = mask_features.dims4()?;
        if mc != cfg.mask_dim {
            return Err(segkit_core::Error::shape(
                "OneFormer mask features (B x mask_dim x H x W)",
                &[b, cfg.mask_dim, mh, mw],
                mask_features.dims(),
            )
            .into());
        }
        let dev = mask_features.device();
        // Memory of each level, batch-first: B x (h w) x C, plus level embedding; positions.
        let mut memories = Vec::with_capacity(NUM_FEATURE_LEVELS);
        let mut positions = Vec::with_capacity(NUM_FEATURE_LEVELS);
        let mut sizes = Vec::with_capacity(NUM_FEATURE_LEVELS);
        for (i, f) in multi_scale_features[..NUM_FEATURE_LEVELS]
            .iter()
            .enumerate()
        {
            let (fb, fc, h, w) = f.dims4()?;
            if fb != b || fc != cfg.conv_dim {
                return Err(segkit_core::Error::shape(
                    format!("OneFormer decoder input level {i} (B x conv_dim x h x w)"),
                    &[b, cfg.conv_dim, h, w],
                    f.dims(),
                )
                .into());
            }
            let m = f
                .reshape((b, c, h * w))?
                .transpose(1, 2)?
                .broadcast_add(&self.level_embed.get(i)?)?
                .contiguous()?;
            memories.push(m);
            positions.push(position_embedding(h, w, c, dev)?);
            sizes.push((h, w));
        }
        let query_embed = self.queries_embedder.embeddings().unsqueeze(0)?; // 1 x N x C
        let raw_task = self.task_token(task_inputs)?; // B x C
        let task = if cfg.use_task_norm {
            self.decoder_norm.forward(&raw_task)?
        } else {
            raw_task.clone()
        };

        // Query transformer over the stride-4 map.
        let n = cfg.num_queries;
        let qt_pos = query_embed.narrow(1, 0, n - 1)?;
        let memory = position_embedding(mh, mw, c, dev)?; // 1 x hw x C (same for every image)
        let mf = mask_features.reshape((b, c, mh * mw))?;
        let proj = self
            .query_input_projection_w
            .broadcast_matmul(&mf)?
            .broadcast_add(&self.query_input_projection_b.reshape((1, c, 1))?)?
            .transpose(1, 2)?
            .contiguous()?; // B x hw x C
        let memory = memory.broadcast_as((b, mh * mw, c))?.contiguous()?;
        let mut q = if cfg.use_task_norm {
            task.unsqueeze(1)?
                .broadcast_as((b, n - 1, c))?
                .contiguous()?
        } else {
            Tensor::zeros((b, n - 1, c), DType::F32, dev)?
        };
        for l in &self.query_transformer.layers {
            q = l.forward(&q, &memory, &proj, &qt_pos, train)?;
        }
        let q = self.query_transformer.norm.forward(&q)?;
        let queries = Tensor::cat(&[&q, &task.unsqueeze(1)?], 1)?; // B x N x C

        let mut auxiliary = Vec::with_capacity(self.layers.len());
        let (mut pred, mut mask) = self.predict(&queries, mask_features, Some(sizes[0]))?;
        let mut x = queries.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let level = i % NUM_FEATURE_LEVELS;
            let m = mask.take().ok_or_else(|| {
                Error::InvalidConfig("internal: missing attention mask".to_string())
            })?;
            x = layer.forward(&x, &memories[level], &positions[level], &m, &query_embed)?;
            let next = sizes[(i + 1) % NUM_FEATURE_LEVELS];
            let last = i + 1 == self.layers.len();
            let (p, m) = self.predict(&x, mask_features, (!last).then_some(next))?;
            auxiliary.push(std::mem::replace(&mut pred, p));
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
    let r = segkit_core::ops::resize_bilinear(masks, size, false)?;
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
