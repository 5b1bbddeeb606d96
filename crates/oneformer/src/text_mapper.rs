//! OneFormer's text mapper (training only): encodes the tokenised text entries of an image
//! ("a photo with a {class}", padded with "a/an {task} photo") into text queries that the
//! query-text contrastive loss matches against the decoder's queries.
//!
//! Paper: Jain et al., OneFormer (CVPR 2023), Sec. 3.1 "Task Conditioned Joint Training" /
//! 3.3 "Query-Text Contrastive Loss". Reference: transformers'
//! `models/oneformer/modeling_oneformer.py` (`OneFormerTextMapper`, `OneFormerTextEncoder`,
//! `OneFormerTextTransformerLayer`, `OneFormerTextMLP`); keys under `model.text_mapper.`.
//!
//! Faithful to the transformers port, which the checkpoints were trained / converted with:
//! - the text transformer's self-attention runs *without* the causal mask (HF builds the mask
//!   and stores it on each layer, but never passes it to `nn.MultiheadAttention`);
//! - heads = width / 64 (4 for width 256); QuickGELU MLPs; pre-norm;
//! - the pooled feature is the one at `argmax(ids)` (the end-of-text token has the largest id);
//! - the projector is a 2-layer ReLU MLP (`text_projector.layers.{i}.0`), and the 16 learnable
//!   context embeddings (`prompt_ctx`) are appended after the entries.
//!
//! # Shapes
//! `text_inputs: B x T x L` token ids (u32 / i64 / float) -> `B x (T + n_ctx) x hidden_dim`.

use std::collections::HashMap;

use candle_core::{DType, IndexOp, Module, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};
use segkit_core::nn::{LayerNorm, Mlp, MlpKeys};

use crate::attention::{linear, MultiheadAttention};
use crate::{Error, Result};

/// Configuration of the text mapper, with `OneFormerConfig` field names.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TextMapperConfig {
    /// Width of the text transformer. 256.
    pub text_encoder_width: usize,
    /// Token context length `L`. 77.
    pub text_encoder_context_length: usize,
    /// Layers of the text transformer. 6.
    pub text_encoder_num_layers: usize,
    /// Vocabulary size (CLIP BPE). 49408.
    pub text_encoder_vocab_size: usize,
    /// Layers of the projector MLP. 2.
    pub text_encoder_proj_layers: usize,
    /// Number of learnable context embeddings appended to the text queries. 16.
    pub text_encoder_n_ctx: usize,
    /// Width of the decoder's queries (the projector's output). 256.
    pub hidden_dim: usize,
    /// Epsilon of the LayerNorms. 1e-5.
    pub layer_norm_eps: f64,
}

impl Default for TextMapperConfig {
    fn default() -> Self {
        Self {
            text_encoder_width: 256,
            text_encoder_context_length: 77,
            text_encoder_num_layers: 6,
            text_encoder_vocab_size: 49408,
            text_encoder_proj_layers: 2,
            text_encoder_n_ctx: 16,
            hidden_dim: 256,
            layer_norm_eps: 1e-5,
        }
    }
}

#[derive(Debug, Clone)]
struct TextLayer {
    attn: MultiheadAttention,
    ln1: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    ln2: LayerNorm,
}

impl TextLayer {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.ln1.forward(x)?;
        let x = (x + self.attn.forward(&h, &h, &h, None, train)?)?;
        let h = linear(&self.fc1, &self.ln2.forward(&x)?)?;
        let h = segkit_core::ops::quick_gelu(&h)?;
        Ok((x + linear(&self.fc2, &h)?)?)
    }
}

/// OneFormer's text mapper: text encoder + projector + context embeddings.
#[derive(Debug, Clone)]
pub struct TextMapper {
    cfg: TextMapperConfig,
    token_embedding: Embedding,
    positional_embedding: Tensor,
    layers: Vec<TextLayer>,
    ln_final: LayerNorm,
    projector: Mlp,
    prompt_ctx: Option<Tensor>,
}

impl TextMapper {
    /// Loads the mapper from `vb` (`model.text_mapper`).
    pub fn new(cfg: &TextMapperConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let w = cfg.text_encoder_width;
        if w == 0 || !w.is_multiple_of(64) || cfg.text_encoder_context_length == 0 {
            return Err(Error::InvalidConfig(format!(
                "text mapper: text_encoder_width {w} must be a positive multiple of 64 (heads = \
                 width / 64) and the context length positive"
            )));
        }
        if cfg.text_encoder_n_ctx > 0 && w != cfg.hidden_dim {
            return Err(Error::InvalidConfig(format!(
                "text mapper: the context embeddings (width {w}) are concatenated with the \
                 projected queries (hidden_dim {}); they must be equal",
                cfg.hidden_dim
            )));
        }
        let eps = cfg.layer_norm_eps;
        let e = vb.pp("text_encoder");
        let layers = (0..cfg.text_encoder_num_layers)
            .map(|i| -> Result<TextLayer> {
                let l = e.pp("transformer").pp("layers").pp(i);
                Ok(TextLayer {
                    attn: MultiheadAttention::new(w, w / 64, 0.0, l.pp("self_attn"))?,
                    ln1: LayerNorm::new(w, eps, l.pp("layer_norm1"))?,
                    fc1: candle_nn::linear(w, 4 * w, l.pp("mlp").pp("fc1"))?,
                    fc2: candle_nn::linear(4 * w, w, l.pp("mlp").pp("fc2"))?,
                    ln2: LayerNorm::new(w, eps, l.pp("layer_norm2"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let prompt_ctx = if cfg.text_encoder_n_ctx > 0 {
            Some(
                vb.pp("prompt_ctx")
                    .get((cfg.text_encoder_n_ctx, w), "weight")?,
            )
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            token_embedding: candle_nn::embedding(
                cfg.text_encoder_vocab_size,
                w,
                e.pp("token_embedding"),
            )?,
            positional_embedding: e
                .get((cfg.text_encoder_context_length, w), "positional_embedding")?,
            layers,
            ln_final: LayerNorm::new(w, eps, e.pp("ln_final"))?,
            projector: Mlp::new_with_keys(
                w,
                cfg.hidden_dim,
                cfg.hidden_dim,
                cfg.text_encoder_proj_layers,
                MlpKeys::LayerBlocks,
                vb.pp("text_projector"),
            )?,
            prompt_ctx,
        })
    }

    /// The configuration this mapper was built from.
    pub fn config(&self) -> &TextMapperConfig {
        &self.cfg
    }

    /// Encodes `M x L` token ids into `M x width` (pooled at the end-of-text token).
    ///
    /// Identical rows are encoded once: each row's output depends on that row alone (the
    /// text transformer attends within a row and has no dropout, and the pooling reads the
    /// row's own end-of-text token), so the distinct rows go through the transformer and a gather hands every row
    /// its result; the gather's backward sums the duplicates' gradients, which is what the
    /// per-row computation's gradient sums to. The entries of a training image are mostly
    /// duplicates: its "a photo with a {class}" entries repeat per instance of a class, and
    /// the padding "a/an {task} photo" fills the rest of the 134.
    pub fn encode(&self, ids: &Tensor, train: bool) -> Result<Tensor> {
        let (m, l) = ids.dims2()?;
        if l != self.cfg.text_encoder_context_length {
            return Err(Error::InvalidArgument(format!(
                "text inputs have length {l}, the text encoder's context length is {}",
                self.cfg.text_encoder_context_length
            )));
        }
        let ids = ids.to_dtype(DType::U32)?;
        let rows = ids.to_vec2::<u32>()?;
        let mut first: HashMap<&[u32], u32> = HashMap::with_capacity(m);
        let mut distinct: Vec<&[u32]> = Vec::new();
        let inverse: Vec<u32> = rows
            .iter()
            .map(|r| {
                *first.entry(r.as_slice()).or_insert_with(|| {
                    distinct.push(r.as_slice());
                    (distinct.len() - 1) as u32
                })
            })
            .collect();
        if distinct.len() == m {
            return self.encode_rows(&ids, &rows, train);
        }
        let distinct_rows: Vec<Vec<u32>> = distinct.iter().map(|r| r.to_vec()).collect();
        let flat: Vec<u32> = distinct_rows.concat();
        let u = Tensor::from_vec(flat, (distinct_rows.len(), l), ids.device())?;
        let enc = self.encode_rows(&u, &distinct_rows, train)?;
        let inverse = Tensor::from_vec(inverse, m, ids.device())?;
        Ok(enc.index_select(&inverse, 0)?)
    }

    /// [`Self::encode`] without merging identical rows: `ids` (`M x L`, u32) and the same ids
    /// on the host.
    fn encode_rows(&self, ids: &Tensor, rows: &[Vec<u32>], train: bool) -> Result<Tensor> {
        let x = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&self.positional_embedding)?;
        let mut x = x;
        for layer in &self.layers {
            x = layer.forward(&x, train)?;
        }
        let x = self.ln_final.forward(&x)?;
        // The end-of-text token has the largest id: the first maximum, as torch's argmax.
        let pooled = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let eot = r
                    .iter()
                    .enumerate()
                    .fold(
                        (0, 0u32),
                        |(bi, bv), (j, &v)| if v > bv { (j, v) } else { (bi, bv) },
                    )
                    .0;
                x.i((i, eot))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&pooled, 0)?)
    }

    /// Text queries `B x (T + n_ctx) x hidden_dim` of `B x T x L` token ids (HF `encode_text`).
    /// `train` enables dropout (the mapper has none; kept for the convention).
    pub fn forward(&self, text_inputs: &Tensor, train: bool) -> Result<Tensor> {
        let (b, t, l) = text_inputs.dims3().map_err(|_| {
            Error::InvalidArgument(format!(
                "text inputs must be B x T x L token ids, got {:?}",
                text_inputs.dims()
            ))
        })?;
        let enc = self.encode(&text_inputs.reshape((b * t, l))?, train)?;
        let q = self
            .projector
            .forward(&enc)?
            .reshape((b, t, self.cfg.hidden_dim))?;
        match &self.prompt_ctx {
            Some(ctx) => {
                let ctx = ctx
                    .unsqueeze(0)?
                    .broadcast_as((b, ctx.dim(0)?, ctx.dim(1)?))?;
                Ok(Tensor::cat(&[&q, &ctx], 1)?)
            }
            None => Ok(q),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{TextMapper, TextMapperConfig};
    use candle_core::{DType, Device, Tensor, Var};
    use candle_nn::{VarBuilder, VarMap};
    use segkit_core::testing::{set_synthetic, synthetic_tensor};

    /// A two-layer mapper of width 64 over 8 tokens, every variable synthetic; the text
    /// encoder's variables (the ones `encode` uses).
    fn mapper() -> (TextMapper, Vec<(String, Var)>) {
        let cfg = TextMapperConfig {
            text_encoder_width: 64,
            text_encoder_context_length: 8,
            text_encoder_num_layers: 2,
            text_encoder_vocab_size: 50,
            text_encoder_n_ctx: 0,
            hidden_dim: 64,
            ..TextMapperConfig::default()
        };
        let varmap = VarMap::new();
        let m = TextMapper::new(
            &cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let mut vars: Vec<(String, Var)> = set_synthetic(&varmap).unwrap().into_iter().collect();
        vars.retain(|(k, _)| k.starts_with("text_encoder."));
        assert_eq!(vars.len(), 2 + 2 * 12 + 2, "{vars:?}");
        (m, vars)
    }

    /// Merging identical rows changes neither the encodings nor the gradients: the
    /// duplicates' gradients add up in the gather's backward as in the per-row computation.
    #[test]
    fn identical_rows_are_encoded_once_with_the_same_values_and_gradients() {
        let (m, vars) = mapper();
        // Rows 0, 2, 3 and 5 are one text, 1 and 4 another; the end-of-text token (49) is
        // the largest id, padding is 0.
        let texts: [&[u32]; 3] = [
            &[3, 7, 49, 0, 0, 0, 0, 0],
            &[3, 9, 11, 49, 0, 0, 0, 0],
            &[5, 49, 0, 0, 0, 0, 0, 0],
        ];
        let order = [0usize, 1, 0, 0, 1, 0, 2];
        let flat: Vec<u32> = order.iter().flat_map(|&i| texts[i].to_vec()).collect();
        let ids = Tensor::from_vec(flat.clone(), (order.len(), 8), &Device::Cpu).unwrap();
        let rows: Vec<Vec<u32>> = order.iter().map(|&i| texts[i].to_vec()).collect();
        let w = synthetic_tensor(
            "text_mapper_probe",
            (order.len(), 64),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let run = |merged: bool| {
            let enc = if merged {
                m.encode(&ids, true).unwrap()
            } else {
                m.encode_rows(&ids, &rows, true).unwrap()
            };
            let loss = (&enc * &w).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let g: Vec<Vec<f32>> = vars
                .iter()
                .map(|(_, v)| {
                    grads
                        .get(v.as_tensor())
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap()
                })
                .collect();
            (enc.flatten_all().unwrap().to_vec1::<f32>().unwrap(), g)
        };
        let (enc_m, g_m) = run(true);
        let (enc_r, g_r) = run(false);
        let close = |what: &str, a: &[f32], b: &[f32]| {
            assert_eq!(a.len(), b.len());
            let scale = b.iter().fold(1f32, |s, v| s.max(v.abs()));
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert!((x - y).abs() <= 1e-5 * scale, "{what}[{i}]: {x} vs {y}");
            }
        };
        close("encodings", &enc_m, &enc_r);
        // Rows of one text are equal.
        assert_eq!(enc_m[..64], enc_m[2 * 64..3 * 64]);
        for ((k, _), (a, b)) in vars.iter().zip(g_m.iter().zip(&g_r)) {
            close(k, a, b);
        }
        assert!(g_r.iter().flatten().any(|&v| v != 0.0));
    }
}
