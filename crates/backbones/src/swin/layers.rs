//! The layers of a Swin block, named as HF's modules (`SwinLayer`: window attention + MLP),
//! with mmseg's `SwinBlock` names as the other key style, and the shared `Linear` / `LayerNorm`.
//!
//! Inference (`train = false`) uses candle's fused CPU/CUDA kernels (`layer_norm`,
//! `softmax_last_dim`) and segkit's fast GELU, which do not record gradients; training mode
//! uses differentiable compositions of tensor ops and applies dropout and drop path.

use std::sync::OnceLock;

use candle_core::{DType, Tensor, D};
use candle_nn::VarBuilder;
use segkit_core::init;
use segkit_core::ops::{self, Activation};

use super::config::{HiddenAct, SwinConfig, SwinKeyStyle};
use super::fused;
use super::kernel::WindowAttention;
use super::window::{relative_position_index, WindowGeometry};
use crate::Result;

/// PyTorch's `nn.LayerNorm` default epsilon, used by HF for the patch-embedding, patch-merging
/// and output norms (only the blocks' norms take `layer_norm_eps`).
pub(crate) const TORCH_LN_EPS: f64 = 1e-5;

/// segkit-core's two-pass LayerNorm over the last dimension (`weight`, `bias`); `train` is
/// accepted for the call sites' symmetry, the norm itself takes the differentiable path when
/// its input records gradients.
pub(crate) struct LayerNorm(segkit_core::nn::LayerNorm);

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self(segkit_core::nn::LayerNorm::new(dim, eps, vb)?))
    }

    pub fn forward(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        self.0.forward(x)
    }
}

/// `nn.Linear`: `y = x W^T + b` over the last dimension.
pub(crate) struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(din: usize, dout: usize, bias: bool, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            // mmseg's / HF's Swin initialisation: trunc_normal(std 0.02), bias 0.
            weight: vb.get_with_hints((dout, din), "weight", init::trunc_normal(0.02))?,
            bias: if bias {
                Some(vb.get_with_hints(dout, "bias", init::ZERO)?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        linear(x, &self.weight, self.bias.as_ref())
    }

    /// `residual + (x W^T + b)`, fused on f32 CPU tensors ([`ops::linear_residual`]).
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        ops::linear_residual(x, &self.weight, self.bias.as_ref(), residual)
    }
}

/// `x W^T + b` for `x` of any rank ([`ops::linear`]: one GEMM, no zero-filled output).
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    ops::linear(x, w, b)
}

fn act(x: &Tensor, a: HiddenAct, train: bool) -> Result<Tensor> {
    Ok(match a {
        HiddenAct::Gelu if train => x.gelu_erf()?,
        HiddenAct::Gelu => ops::activate(x, Activation::Gelu)?,
        HiddenAct::GeluTanh => x.gelu()?,
        HiddenAct::Relu => x.relu()?,
        HiddenAct::Silu => x.silu()?,
    })
}

pub(crate) fn dropout(x: &Tensor, p: f64, train: bool) -> Result<Tensor> {
    if train && p > 0.0 {
        Ok(candle_nn::ops::dropout(x, p as f32)?)
    } else {
        Ok(x.clone())
    }
}

/// Stochastic depth (HF `SwinDropPath`): in training, zero the branch of each sample with
/// probability `p` and scale the kept ones by `1 / (1 - p)`; identity otherwise.
fn drop_path(x: &Tensor, p: f64, train: bool) -> Result<Tensor> {
    if !train || p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    let mut shape = vec![1usize; x.rank()];
    shape[0] = x.dim(0)?;
    let r = Tensor::rand(0f32, 1f32, shape, x.device())?;
    let mask = ((r + keep)?.floor()? / keep)?.to_dtype(x.dtype())?;
    Ok(x.broadcast_mul(&mask)?)
}

/// The query / key / value projections.
enum QkvProjection {
    /// HF: three `dim x dim` linears `attention.self.{query,key,value}`.
    Separate {
        query: Linear,
        key: Linear,
        value: Linear,
    },
    /// mmseg: one `3 dim x dim` linear `attn.w_msa.qkv`, rows `[q; k; v]`.
    Fused(Linear),
}

/// A fused `[q; k; v]` weight (or bias), stacked along dim 0, with its query third scaled.
fn scaled_thirds(t: &Tensor, dim: usize, scale: f64) -> Result<Tensor> {
    Ok(Tensor::cat(
        &[(t.narrow(0, 0, dim)? * scale)?, t.narrow(0, dim, 2 * dim)?],
        0,
    )?)
}

impl QkvProjection {
    /// `3C x C` weight and `3C` bias (if any), the query part scaled by `scale`.
    fn scaled(&self, dim: usize, scale: f64) -> Result<(Tensor, Option<Tensor>)> {
        Ok(match self {
            QkvProjection::Separate { query, key, value } => {
                let w = Tensor::cat(
                    &[
                        (&query.weight * scale)?,
                        key.weight.clone(),
                        value.weight.clone(),
                    ],
                    0,
                )?;
                let b = match (&query.bias, &key.bias, &value.bias) {
                    (Some(q), Some(k), Some(v)) => {
                        Some(Tensor::cat(&[(q * scale)?, k.clone(), v.clone()], 0)?)
                    }
                    _ => None,
                };
                (w, b)
            }
            QkvProjection::Fused(l) => {
                let b = match &l.bias {
                    Some(b) => Some(scaled_thirds(b, dim, scale)?),
                    None => None,
                };
                (scaled_thirds(&l.weight, dim, scale)?, b)
            }
        })
    }
}

/// The block's weights as one key style names them.
struct BlockWeights<'a> {
    norm_before: VarBuilder<'a>,
    /// Where `relative_position_bias_table` (and mmseg's index buffer) live.
    table: VarBuilder<'a>,
    qkv: QkvProjection,
    proj: VarBuilder<'a>,
    norm_after: VarBuilder<'a>,
    fc1: VarBuilder<'a>,
    fc2: VarBuilder<'a>,
}

impl<'a> BlockWeights<'a> {
    fn new(cfg: &SwinConfig, dim: usize, vb: VarBuilder<'a>) -> Result<Self> {
        Ok(match cfg.key_style {
            SwinKeyStyle::Hf => {
                let att = vb.pp("attention");
                let s = att.pp("self");
                let qkv = QkvProjection::Separate {
                    query: Linear::new(dim, dim, cfg.qkv_bias, s.pp("query"))?,
                    key: Linear::new(dim, dim, cfg.qkv_bias, s.pp("key"))?,
                    value: Linear::new(dim, dim, cfg.qkv_bias, s.pp("value"))?,
                };
                Self {
                    norm_before: vb.pp("layernorm_before"),
                    table: s,
                    qkv,
                    proj: att.pp("output").pp("dense"),
                    norm_after: vb.pp("layernorm_after"),
                    fc1: vb.pp("intermediate").pp("dense"),
                    fc2: vb.pp("output").pp("dense"),
                }
            }
            SwinKeyStyle::Mmseg => {
                let w_msa = vb.pp("attn").pp("w_msa");
                let ffn = vb.pp("ffn").pp("layers");
                Self {
                    norm_before: vb.pp("norm1"),
                    qkv: QkvProjection::Fused(Linear::new(
                        dim,
                        3 * dim,
                        cfg.qkv_bias,
                        w_msa.pp("qkv"),
                    )?),
                    proj: w_msa.pp("proj"),
                    table: w_msa,
                    norm_after: vb.pp("norm2"),
                    fc1: ffn.pp(0).pp(0),
                    fc2: ffn.pp(1),
                }
            }
        })
    }
}

/// One (shifted) window attention block: HF `SwinLayer` (`encoder.layers.{i}.blocks.{j}`) or
/// mmseg `SwinBlock` (`stages.{i}.blocks.{j}`), the same computation at inference.
pub(crate) struct SwinBlock {
    layernorm_before: LayerNorm,
    qkv: QkvProjection,
    relative_position_bias_table: Tensor,
    relative_position_index: Tensor,
    proj: Linear,
    layernorm_after: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    dim: usize,
    window: usize,
    /// Scale of the scores (`head_dim^-1/2` unless `qk_scale`).
    scale: f64,
    /// Shift of the windows (`window / 2` for odd blocks, else 0).
    pub shift: usize,
    drop_path: f64,
    hidden_dropout: f64,
    attn_dropout: f64,
    act: HiddenAct,
    /// mmcv's `FFN` (mmseg): dropout after the activation too, drop path on the MLP branch.
    mmcv_ffn: bool,
    /// Inference cache: the attention parameters, computed at the first inference call when
    /// the weights are plain tensors (never for variables, which an optimizer may change).
    cache: OnceLock<AttentionParams>,
}

/// The attention parameters in the form the forward pass uses.
struct AttentionParams {
    /// `3C x C` fused query / key / value weight, the query rows scaled by `head_dim^-1/2`.
    w_qkv: Tensor,
    /// `3C` fused bias (query part scaled), if the projections have biases.
    b_qkv: Option<Tensor>,
    /// `heads x N x N` relative position bias gathered from the table.
    rel_bias: Tensor,
    /// Host copies for the CPU kernel (f32): `rel_bias` and the qkv bias (zeros if none).
    host: Option<(Vec<f32>, Vec<f32>)>,
}

impl SwinBlock {
    pub fn new(
        cfg: &SwinConfig,
        dim: usize,
        heads: usize,
        shift: usize,
        drop_path: f64,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let w = cfg.window_size;
        let keys = BlockWeights::new(cfg, dim, vb)?;
        let table = keys.table.get_with_hints(
            ((2 * w - 1) * (2 * w - 1), heads),
            "relative_position_bias_table",
            init::trunc_normal(0.02),
        )?;
        // mmseg registers the index as a (persistent) buffer, so its checkpoints hold it. It
        // is a pure function of the window size (mmseg's `double_step_seq` construction gives
        // HF's index, see window.rs), computed here; the stored copy is looked up only so that
        // strict loading accounts for the key, and its values are not used.
        let index_name = "relative_position_index";
        if cfg.key_style == SwinKeyStyle::Mmseg && keys.table.contains_tensor(index_name) {
            keys.table.get((w * w, w * w), index_name)?;
        }
        let index = Tensor::from_vec(relative_position_index(w), w * w * w * w, table.device())?;
        let hidden = cfg.mlp_hidden(dim);
        Ok(Self {
            layernorm_before: LayerNorm::new(dim, cfg.layer_norm_eps, keys.norm_before)?,
            qkv: keys.qkv,
            relative_position_bias_table: table,
            relative_position_index: index,
            proj: Linear::new(dim, dim, true, keys.proj)?,
            layernorm_after: LayerNorm::new(dim, cfg.layer_norm_eps, keys.norm_after)?,
            fc1: Linear::new(dim, hidden, true, keys.fc1)?,
            fc2: Linear::new(hidden, dim, true, keys.fc2)?,
            heads,
            dim,
            window: w,
            scale: cfg.attention_scale(dim, heads),
            shift,
            drop_path,
            hidden_dropout: cfg.hidden_dropout_prob,
            attn_dropout: cfg.attention_probs_dropout_prob,
            act: cfg.hidden_act,
            mmcv_ffn: cfg.key_style == SwinKeyStyle::Mmseg,
            cache: OnceLock::new(),
        })
    }

    /// The attention parameters from the current weights (`host` only when `with_host`).
    fn attention_params(&self, with_host: bool) -> Result<AttentionParams> {
        let (w_qkv, b_qkv) = self.qkv.scaled(self.dim, self.scale)?;
        let n = self.window * self.window;
        let rel_bias = self
            .relative_position_bias_table
            .index_select(&self.relative_position_index, 0)?
            .reshape((n, n, self.heads))?
            .permute((2, 0, 1))?
            .contiguous()?;
        let host = if with_host {
            let f = |t: &Tensor| -> Result<Vec<f32>> {
                Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
            };
            let qkv_bias = match &b_qkv {
                Some(b) => f(b)?,
                None => vec![0f32; 3 * self.dim],
            };
            Some((f(&rel_bias)?, qkv_bias))
        } else {
            None
        };
        Ok(AttentionParams {
            w_qkv,
            b_qkv,
            rel_bias,
            host,
        })
    }

    /// One block on tokens `B x (H * W) x C` of an `H x W` map; `geo` is the window geometry
    /// of this block's shift.
    pub fn forward(&self, x: &Tensor, geo: &WindowGeometry, train: bool) -> Result<Tensor> {
        let fused = !train && fused::applies(x);
        let owned;
        let params = if train {
            owned = self.attention_params(false)?;
            &owned
        } else {
            match self.cache.get() {
                Some(p) => p,
                // Variables (a VarMap being trained) may change after this call: computed
                // afresh each time, as ConvNormAct's folded BatchNorm.
                None if self.relative_position_bias_table.is_variable() => {
                    owned = self.attention_params(x.device().is_cpu())?;
                    &owned
                }
                None => {
                    let p = self.attention_params(x.device().is_cpu())?;
                    self.cache.get_or_init(|| p)
                }
            }
        };
        let y = self.layernorm_before.forward(x, train)?;
        if let (Some((rel_bias, qkv_bias)), true) = (&params.host, fused) {
            // Inference on CPU: fused attention kernel and fused bias epilogues; drop path and
            // dropout are identities here.
            let attn = self.attention_cpu(&y, params, rel_bias, qkv_bias, geo)?;
            let x = self.proj.forward_residual(&attn, x)?;
            if self.act == HiddenAct::Gelu {
                // LayerNorm, fc1 + GELU, fc2 + residual in blocks of rows: the 4x-wide hidden
                // map never exists at full size.
                return self.layernorm_after.0.forward_feed_forward(
                    &x,
                    (&self.fc1.weight, self.fc1.bias.as_ref()),
                    Activation::Gelu,
                    (&self.fc2.weight, self.fc2.bias.as_ref()),
                );
            }
            let y = self.layernorm_after.forward(&x, train)?;
            let y = act(&self.fc1.forward(&y)?, self.act, train)?;
            return self.fc2.forward_residual(&y, &x);
        }
        let attn = self.attention_composed(&y, params, geo, train)?;
        let attn = dropout(&self.proj.forward(&attn)?, self.hidden_dropout, train)?;
        // HF applies drop path to the attention branch only, mmseg to both branches.
        let x = (x + drop_path(&attn, self.drop_path, train)?)?;

        let y = self.layernorm_after.forward(&x, train)?;
        let mut y = act(&self.fc1.forward(&y)?, self.act, train)?;
        if self.mmcv_ffn {
            y = dropout(&y, self.hidden_dropout, train)?;
        }
        let mut y = dropout(&self.fc2.forward(&y)?, self.hidden_dropout, train)?;
        if self.mmcv_ffn {
            y = drop_path(&y, self.drop_path, train)?;
        }
        Ok((x + y)?)
    }

    /// Window attention with the fused CPU kernel: `B x L x C` normalised tokens -> the
    /// attention output before `attention.output.dense`.
    fn attention_cpu(
        &self,
        y: &Tensor,
        params: &AttentionParams,
        rel_bias: &[f32],
        qkv_bias: &[f32],
        geo: &WindowGeometry,
    ) -> Result<Tensor> {
        let (b, l, c) = y.dims3()?;
        let qkv = linear(y, &params.w_qkv, None)?;
        let out = fused::with_data(&qkv, |data| {
            WindowAttention {
                qkv: data,
                qkv_bias,
                index: &geo.forward_host,
                bias: rel_bias,
                mask: geo.mask_host.as_deref(),
                batch: b,
                tokens: l,
                dim: c,
                heads: self.heads,
                window_area: geo.window_area,
            }
            .run()
        })?;
        Ok(Tensor::from_vec(out, (b, l, c), y.device())?)
    }

    /// Window attention from tensor ops (any device, differentiable): gather the windows
    /// (padding, cyclic shift and partition in one `index_select`), one batched attention over
    /// `(B nW) x heads` windows, scatter back.
    fn attention_composed(
        &self,
        y: &Tensor,
        params: &AttentionParams,
        geo: &WindowGeometry,
        train: bool,
    ) -> Result<Tensor> {
        let (b, _, c) = y.dims3()?;
        let (nw, n, heads) = (geo.num_windows, geo.window_area, self.heads);
        let hd = c / heads;
        let y = if geo.padded {
            Tensor::cat(&[y, &Tensor::zeros((b, 1, c), y.dtype(), y.device())?], 1)?
        } else {
            y.clone()
        };
        let windows = y.contiguous()?.index_select(&geo.forward, 1)?; // B x (nW N) x C
        let qkv = linear(&windows, &params.w_qkv, params.b_qkv.as_ref())? // B x (nW N) x 3C
            .reshape((b * nw, n, 3, heads, hd))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?; // 3 x (B nW) x heads x N x hd
        let q = qkv.get(0)?;
        let k = qkv.get(1)?;
        let v = qkv.get(2)?;
        let scores = q.matmul(&k.t()?)?; // (B nW) x heads x N x N, already scaled
        let scores = scores
            .reshape((b, nw, heads, n, n))?
            .broadcast_add(&params.rel_bias.unsqueeze(0)?.unsqueeze(0)?)?;
        let scores = match &geo.mask {
            Some(m) => scores.broadcast_add(&m.unsqueeze(0)?)?,
            None => scores,
        };
        let scores = scores.reshape((b * nw, heads, n, n))?;
        let probs = if train {
            let p = candle_nn::ops::softmax(&scores, D::Minus1)?;
            dropout(&p, self.attn_dropout, train)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let out = probs
            .matmul(&v)? // (B nW) x heads x N x hd
            .permute((0, 2, 1, 3))?
            .contiguous()?
            .reshape((b, nw * n, c))?;
        Ok(out.index_select(&geo.reverse, 1)?) // B x L x C, padding dropped
    }
}
