//! The layers of a Swin backbone, named as HF's modules: patch embedding, Swin block
//! (`SwinLayer`: window attention + MLP), patch merging.
//!
//! Inference (`train = false`) uses candle's fused CPU/CUDA kernels (`layer_norm`,
//! `softmax_last_dim`) and segkit's fast GELU, which do not record gradients; training mode
//! uses differentiable compositions of tensor ops and applies dropout and drop path.

use std::sync::OnceLock;

use candle_core::{DType, Tensor, D};
use candle_nn::VarBuilder;
use segkit_core::ops::{self, Activation};

use super::config::{HiddenAct, SwinConfig};
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
        Ok(self.0.forward(x)?)
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
            weight: vb.get((dout, din), "weight")?,
            bias: if bias {
                Some(vb.get(dout, "bias")?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        linear(x, &self.weight, self.bias.as_ref())
    }

    /// `x W^T` without the bias.
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        linear(x, &self.weight, None)
    }

    /// `residual + x W^T + b`, with the epilogue fused on f32 CPU tensors.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(b) if fused::applies(x) => fused::bias_residual(&self.matmul(x)?, b, residual),
            _ => Ok((residual + self.forward(x)?)?),
        }
    }
}

/// `x W^T + b` for `x` of any rank (flattened to a matrix for one GEMM).
fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let din = dims[dims.len() - 1];
    let rows = x.elem_count() / din.max(1);
    let y = x.reshape((rows, din))?.matmul(&w.t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = dims;
    let last = out.len() - 1;
    out[last] = w.dim(0)?;
    Ok(y.reshape(out)?)
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

fn dropout(x: &Tensor, p: f64, train: bool) -> Result<Tensor> {
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

/// `embeddings`: patchify + linear projection (`patch_embeddings.projection`, a
/// `patch x patch` stride-`patch` conv), LayerNorm (`norm`), optional absolute position
/// embeddings (`position_embeddings`), dropout.
pub(crate) struct PatchEmbeddings {
    weight: Tensor,
    bias: Tensor,
    norm: LayerNorm,
    position: Option<Tensor>,
    patch: usize,
    in_channels: usize,
    dropout: f64,
}

impl PatchEmbeddings {
    pub fn new(cfg: &SwinConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let (p, c) = (cfg.patch_size, cfg.embed_dim);
        let pvb = vb.pp("patch_embeddings").pp("projection");
        let position = if cfg.use_absolute_embeddings {
            let n = (cfg.image_size[0] / p) * (cfg.image_size[1] / p);
            Some(vb.get((1, n, c), "position_embeddings")?)
        } else {
            None
        };
        Ok(Self {
            weight: pvb.get((c, cfg.num_channels, p, p), "weight")?,
            bias: pvb.get(c, "bias")?,
            norm: LayerNorm::new(c, TORCH_LN_EPS, vb.pp("norm"))?,
            position,
            patch: p,
            in_channels: cfg.num_channels,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    /// `N x C_in x H x W` -> tokens `N x (h * w) x C` and the grid `(h, w)`, with
    /// `h = ceil(H / patch)` (HF zero-pads the bottom / right to a multiple of the patch).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<(Tensor, (usize, usize))> {
        let (n, cin, h, w) = x.dims4()?;
        let p = self.patch;
        let (gh, gw) = (h.div_ceil(p), w.div_ceil(p));
        let mut x = x.clone();
        if gw * p != w {
            x = x.pad_with_zeros(3, 0, gw * p - w)?;
        }
        if gh * p != h {
            x = x.pad_with_zeros(2, 0, gh * p - h)?;
        }
        // The conv as one GEMM: (N h w) x (C_in p p) patches times the (C x C_in p p) kernel.
        let patches = x
            .reshape((n, cin, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((n * gh * gw, self.in_channels * p * p))?;
        let c = self.weight.dim(0)?;
        let w2 = self.weight.reshape((c, self.in_channels * p * p))?;
        let y = linear(&patches, &w2, Some(&self.bias))?.reshape((n, gh * gw, c))?;
        let mut y = self.norm.forward(&y, train)?;
        if let Some(pos) = &self.position {
            if pos.dim(1)? != gh * gw {
                return Err(segkit_core::Error::shape(
                    "Swin patch grid (absolute position embeddings are not interpolated)",
                    &[pos.dim(1)?],
                    &[gh * gw],
                )
                .into());
            }
            y = y.broadcast_add(pos)?;
        }
        Ok((dropout(&y, self.dropout, train)?, (gh, gw)))
    }
}

/// `encoder.layers.{i}.blocks.{j}`: HF `SwinLayer`, one (shifted) window attention block.
pub(crate) struct SwinBlock {
    layernorm_before: LayerNorm,
    query: Linear,
    key: Linear,
    value: Linear,
    relative_position_bias_table: Tensor,
    relative_position_index: Tensor,
    proj: Linear,
    layernorm_after: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    dim: usize,
    window: usize,
    /// Shift of the windows (`window / 2` for odd blocks, else 0).
    pub shift: usize,
    drop_path: f64,
    hidden_dropout: f64,
    attn_dropout: f64,
    act: HiddenAct,
    /// Inference cache: the attention parameters, computed at the first inference call (so
    /// weights changed afterwards, e.g. by an optimizer, are not seen by inference).
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
        let att = vb.pp("attention");
        let s = att.pp("self");
        let table = s.get(
            ((2 * w - 1) * (2 * w - 1), heads),
            "relative_position_bias_table",
        )?;
        let index = Tensor::from_vec(relative_position_index(w), w * w * w * w, table.device())?;
        let hidden = cfg.mlp_hidden(dim);
        Ok(Self {
            layernorm_before: LayerNorm::new(dim, cfg.layer_norm_eps, vb.pp("layernorm_before"))?,
            query: Linear::new(dim, dim, cfg.qkv_bias, s.pp("query"))?,
            key: Linear::new(dim, dim, cfg.qkv_bias, s.pp("key"))?,
            value: Linear::new(dim, dim, cfg.qkv_bias, s.pp("value"))?,
            relative_position_bias_table: table,
            relative_position_index: index,
            proj: Linear::new(dim, dim, true, att.pp("output").pp("dense"))?,
            layernorm_after: LayerNorm::new(dim, cfg.layer_norm_eps, vb.pp("layernorm_after"))?,
            fc1: Linear::new(dim, hidden, true, vb.pp("intermediate").pp("dense"))?,
            fc2: Linear::new(hidden, dim, true, vb.pp("output").pp("dense"))?,
            heads,
            dim,
            window: w,
            shift,
            drop_path,
            hidden_dropout: cfg.hidden_dropout_prob,
            attn_dropout: cfg.attention_probs_dropout_prob,
            act: cfg.hidden_act,
            cache: OnceLock::new(),
        })
    }

    /// The attention parameters from the current weights (`host` only when `with_host`).
    fn attention_params(&self, with_host: bool) -> Result<AttentionParams> {
        let scale = ((self.dim / self.heads) as f64).powf(-0.5);
        let w_qkv = Tensor::cat(
            &[
                (&self.query.weight * scale)?,
                self.key.weight.clone(),
                self.value.weight.clone(),
            ],
            0,
        )?;
        let b_qkv = match (&self.query.bias, &self.key.bias, &self.value.bias) {
            (Some(q), Some(k), Some(v)) => {
                Some(Tensor::cat(&[(q * scale)?, k.clone(), v.clone()], 0)?)
            }
            _ => None,
        };
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
            let y = self.layernorm_after.forward(&x, train)?;
            let y = match (self.act, &self.fc1.bias) {
                (HiddenAct::Gelu, Some(b)) => fused::bias_gelu(&self.fc1.matmul(&y)?, b)?,
                _ => act(&self.fc1.forward(&y)?, self.act, train)?,
            };
            return self.fc2.forward_residual(&y, &x);
        }
        let attn = self.attention_composed(&y, params, geo, train)?;
        let attn = dropout(&self.proj.forward(&attn)?, self.hidden_dropout, train)?;
        // HF applies drop path to the attention branch only.
        let x = (x + drop_path(&attn, self.drop_path, train)?)?;

        let y = self.layernorm_after.forward(&x, train)?;
        let y = act(&self.fc1.forward(&y)?, self.act, train)?;
        let y = dropout(&self.fc2.forward(&y)?, self.hidden_dropout, train)?;
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

/// `encoder.layers.{i}.downsample`: HF `SwinPatchMerging`. Zero-pads odd sizes at the
/// bottom / right, concatenates each 2x2 neighbourhood as `[x(0,0), x(1,0), x(0,1), x(1,1)]`
/// (row offset varies fastest), LayerNorm (`norm`, 4C), `reduction` 4C -> 2C without bias.
pub(crate) struct PatchMerging {
    norm: LayerNorm,
    reduction: Linear,
}

impl PatchMerging {
    pub fn new(dim: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            norm: LayerNorm::new(4 * dim, TORCH_LN_EPS, vb.pp("norm"))?,
            reduction: Linear::new(4 * dim, 2 * dim, false, vb.pp("reduction"))?,
        })
    }

    /// Tokens `B x (H W) x C` of an `H x W` map -> `B x (ceil(H/2) ceil(W/2)) x 2C`.
    pub fn forward(&self, x: &Tensor, (h, w): (usize, usize), train: bool) -> Result<Tensor> {
        let (b, _, c) = x.dims3()?;
        let mut x = x.reshape((b, h, w, c))?;
        let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
        if h % 2 == 1 {
            x = x.pad_with_zeros(1, 0, 1)?;
        }
        if w % 2 == 1 {
            x = x.pad_with_zeros(2, 0, 1)?;
        }
        let x = x
            .reshape((b, h2, 2, w2, 2, c))?
            .permute((0, 1, 3, 4, 2, 5))?
            .contiguous()?
            .reshape((b, h2 * w2, 4 * c))?;
        let x = self.norm.forward(&x, train)?;
        self.reduction.forward(&x)
    }
}
