//! The transformer layers of OneFormer's decoder: the query transformer
//! (`OneFormerTransformerDecoderQueryTransformer`, keys under
//! `model.transformer_module.decoder.query_transformer.`) and the masked-attention layers
//! (`OneFormerTransformerDecoderLayer`, `model.transformer_module.decoder.layers.{i}.`).
//!
//! Reference: transformers' `models/oneformer/modeling_oneformer.py`.
//!
//! # Shapes
//! Queries `B x N x C`; memories `B x (h w) x C`; position embeddings broadcastable to them.

use candle_core::Tensor;
use candle_nn::{Linear, VarBuilder};
use segkit_core::nn::LayerNorm;

use super::TransformerDecoderConfig;
use crate::attention::{attend, dropout, linear, MultiheadAttention};
use crate::Result;

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
            let h = linear(&self.linear1, h)?.relu()?;
            let h = dropout(&h, p, train)?;
            linear(&self.linear2, &h)
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
pub(super) struct QueryTransformer {
    layers: Vec<QueryTransformerLayer>,
    norm: LayerNorm,
}

impl QueryTransformer {
    pub(super) fn new(cfg: &TransformerDecoderConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let vb = vb.pp("decoder");
        let layers = (0..cfg.query_dec_layers)
            .map(|i| QueryTransformerLayer::new(cfg, vb.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = LayerNorm::new(cfg.hidden_dim, cfg.layer_norm_eps, vb.pp("norm"))?;
        Ok(Self { layers, norm })
    }

    /// The layers then the final LayerNorm: queries `q` (`B x (N - 1) x C`) attend to `memory`
    /// (`B x hw x C`, keys `memory + pos`); `query_pos` is added to the queries in every layer.
    pub(super) fn forward(
        &self,
        q: &Tensor,
        memory: &Tensor,
        pos: &Tensor,
        query_pos: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let mut q = q.clone();
        for l in &self.layers {
            q = l.forward(&q, memory, pos, query_pos, train)?;
        }
        self.norm.forward(&q)
    }
}

/// One masked-attention decoder layer (`OneFormerTransformerDecoderLayer`): masked
/// cross-attention (`cross_attn.multihead_attn`, `cross_attn.norm`), self-attention with
/// separate projections (`self_attn.self_attn.{q,k,v,out}_proj`, `self_attn.norm`) and the FFN
/// (`ffn.linear1`, `ffn.linear2`, `ffn.norm`). HF builds all three with dropout 0.
#[derive(Debug, Clone)]
pub(super) struct MaskedAttentionLayer {
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
    pub(super) fn new(cfg: &TransformerDecoderConfig, vb: VarBuilder<'_>) -> Result<Self> {
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
        let q = linear(&self.q_proj, &xp)?;
        let k = linear(&self.k_proj, &xp)?;
        let v = linear(&self.v_proj, x)?;
        let o = attend(&q, &k, &v, self.heads, None, 0.0, false)?;
        linear(&self.out_proj, &o)
    }

    pub(super) fn forward(
        &self,
        x: &Tensor,
        memory: &Tensor,
        memory_pos: &Tensor,
        mask: &Tensor,
        query_pos: &Tensor,
    ) -> Result<Tensor> {
        let key = memory.broadcast_add(memory_pos)?;
        let ffn = |h: &Tensor| -> Result<Tensor> {
            let h = linear(&self.linear1, h)?.relu()?;
            linear(&self.linear2, &h)
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
