//! The patch layers of a Swin backbone: the patch embedding at its input and the patch
//! merging between stages (HF `SwinEmbeddings` / `SwinPatchMerging`, mmseg `PatchEmbed` /
//! `PatchMerging` from `mmseg/models/utils/embed.py`).
//!
//! Both zero-pad odd sizes at the bottom / right as the references do (HF `maybe_pad`, mmseg
//! `AdaptivePadding(padding="corner")`).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use segkit_core::init;

use super::config::{SwinConfig, SwinKeyStyle};
use super::layers::{dropout, linear, LayerNorm, Linear, TORCH_LN_EPS};
use crate::Result;

/// The patch embedding: patchify + linear projection (a `patch x patch` stride-`patch` conv),
/// LayerNorm, optional absolute position embeddings, dropout. HF keys
/// `embeddings.{patch_embeddings.projection, norm, position_embeddings}`; mmseg keys
/// `patch_embed.{projection, norm}` and `absolute_pos_embed`.
pub(crate) struct PatchEmbeddings {
    weight: Tensor,
    bias: Tensor,
    norm: Option<LayerNorm>,
    position: Option<Tensor>,
    patch: usize,
    in_channels: usize,
    dropout: f64,
}

impl PatchEmbeddings {
    /// Loads the embedding from the backbone's root `vb`, under `cfg.key_style`'s keys.
    pub fn new(cfg: &SwinConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let (p, c) = (cfg.patch_size, cfg.embed_dim);
        let (proj, norm, pos, pos_name) = match cfg.key_style {
            SwinKeyStyle::Hf => {
                let e = vb.pp("embeddings");
                let proj = e.pp("patch_embeddings").pp("projection");
                (proj, e.pp("norm"), e, "position_embeddings")
            }
            SwinKeyStyle::Mmseg => {
                let e = vb.pp("patch_embed");
                (e.pp("projection"), e.pp("norm"), vb, "absolute_pos_embed")
            }
        };
        let position = if cfg.use_absolute_embeddings {
            let n = (cfg.image_size[0] / p) * (cfg.image_size[1] / p);
            Some(pos.get_with_hints((1, n, c), pos_name, init::trunc_normal(0.02))?)
        } else {
            None
        };
        let norm = if cfg.patch_norm {
            Some(LayerNorm::new(c, TORCH_LN_EPS, norm)?)
        } else {
            None
        };
        Ok(Self {
            // A plain `nn.Conv2d`: PyTorch's default initialisation.
            weight: proj.get_with_hints(
                (c, cfg.num_channels, p, p),
                "weight",
                init::torch_default_weight(),
            )?,
            bias: proj.get_with_hints(
                c,
                "bias",
                init::torch_default_bias(cfg.num_channels * p * p),
            )?,
            norm,
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
        let mut y = match &self.norm {
            Some(norm) => norm.forward(&y, train)?,
            None => y,
        };
        if let Some(pos) = &self.position {
            if pos.dim(1)? != gh * gw {
                return Err(segkit_core::Error::shape(
                    "Swin patch grid (absolute position embeddings are not interpolated)",
                    &[pos.dim(1)?],
                    &[gh * gw],
                ));
            }
            y = y.broadcast_add(pos)?;
        }
        Ok((dropout(&y, self.dropout, train)?, (gh, gw)))
    }
}

/// How patch merging orders the four pixels of a 2x2 neighbourhood in its `4C` channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MergeOrder {
    /// HF (and the original Swin): `[x(0,0), x(1,0), x(0,1), x(1,1)]` (pixel `(dy, dx)`),
    /// each `C` channels: merged channel `(2 dx + dy) C + c`.
    Concat,
    /// mmseg's `nn.Unfold(kernel_size=2, stride=2)`: channel-major, merged channel
    /// `4 c + 2 dy + dx`.
    Unfold,
}

/// `downsample` of a stage (HF `encoder.layers.{i}.downsample`, mmseg
/// `stages.{i}.downsample`; both name the weights `norm` and `reduction`). Zero-pads odd sizes
/// at the bottom / right, gathers each 2x2 neighbourhood into `4C` channels in the reference's
/// [`MergeOrder`], LayerNorm (`norm`, 4C; absent without `patch_norm`), `reduction` 4C -> 2C
/// without bias. A checkpoint's `norm` / `reduction` weights are used as saved: the order is
/// the forward pass's, never a permutation of the weights.
pub(crate) struct PatchMerging {
    norm: Option<LayerNorm>,
    reduction: Linear,
    order: MergeOrder,
}

impl PatchMerging {
    pub fn new(cfg: &SwinConfig, dim: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let norm = if cfg.patch_norm {
            Some(LayerNorm::new(4 * dim, TORCH_LN_EPS, vb.pp("norm"))?)
        } else {
            None
        };
        Ok(Self {
            norm,
            reduction: Linear::new(4 * dim, 2 * dim, false, vb.pp("reduction"))?,
            order: match cfg.key_style {
                SwinKeyStyle::Hf => MergeOrder::Concat,
                SwinKeyStyle::Mmseg => MergeOrder::Unfold,
            },
        })
    }

    /// Tokens `B x (H W) x C` of an `H x W` map -> `B x (ceil(H/2) ceil(W/2)) x 2C`.
    pub fn forward(&self, x: &Tensor, (h, w): (usize, usize), train: bool) -> Result<Tensor> {
        let x = merge_neighbourhoods(x, (h, w), self.order)?;
        let x = match &self.norm {
            Some(norm) => norm.forward(&x, train)?,
            None => x,
        };
        self.reduction.forward(&x)
    }
}

/// Tokens `B x (H W) x C` -> `B x (ceil(H/2) ceil(W/2)) x 4C`: each 2x2 neighbourhood (odd
/// sizes zero-padded at the bottom / right) gathered in `order`.
pub(crate) fn merge_neighbourhoods(
    x: &Tensor,
    (h, w): (usize, usize),
    order: MergeOrder,
) -> Result<Tensor> {
    let (b, _, c) = x.dims3()?;
    let mut x = x.reshape((b, h, w, c))?;
    let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
    if h % 2 == 1 {
        x = x.pad_with_zeros(1, 0, 1)?;
    }
    if w % 2 == 1 {
        x = x.pad_with_zeros(2, 0, 1)?;
    }
    // b x h2 x dy x w2 x dx x c
    let x = x.reshape((b, h2, 2, w2, 2, c))?;
    let x = match order {
        MergeOrder::Concat => x.permute((0, 1, 3, 4, 2, 5))?, // b h2 w2 dx dy c
        MergeOrder::Unfold => x.permute((0, 1, 3, 5, 2, 4))?, // b h2 w2 c dy dx
    };
    Ok(x.contiguous()?.reshape((b, h2 * w2, 4 * c))?)
}
