//! The multi-scale deformable attention of Deformable DETR as transformers'
//! `OneFormerPixelDecoderEncoderMultiscaleDeformableAttention` and
//! `multi_scale_deformable_attention`: the module, the CPU kernel and the composed path.

use candle_core::{DType, Tensor};
use candle_nn::{Linear, VarBuilder};
use rayon::prelude::*;
use segkit_core::ops::{self, GridSampleMode, GridSamplePadding};

use crate::{Error, Result};

/// The multi-scale deformable attention of one encoder layer (HF
/// `OneFormerPixelDecoderEncoderMultiscaleDeformableAttention`).
pub struct MsDeformAttn {
    sampling_offsets: Linear,
    attention_weights: Linear,
    value_proj: Linear,
    output_proj: Linear,
    heads: usize,
    levels: usize,
    points: usize,
}

impl MsDeformAttn {
    /// Loads `sampling_offsets`, `attention_weights`, `value_proj` and `output_proj`.
    pub fn new(
        embed_dim: usize,
        heads: usize,
        levels: usize,
        points: usize,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        if heads == 0 || !embed_dim.is_multiple_of(heads) {
            return Err(Error::InvalidConfig(format!(
                "deformable attention: {embed_dim} channels are not divisible by {heads} heads"
            )));
        }
        let hlp = heads * levels * points;
        Ok(Self {
            sampling_offsets: candle_nn::linear(embed_dim, hlp * 2, vb.pp("sampling_offsets"))?,
            attention_weights: candle_nn::linear(embed_dim, hlp, vb.pp("attention_weights"))?,
            value_proj: candle_nn::linear(embed_dim, embed_dim, vb.pp("value_proj"))?,
            output_proj: candle_nn::linear(embed_dim, embed_dim, vb.pp("output_proj"))?,
            heads,
            levels,
            points,
        })
    }

    /// Self-attention of the flattened levels `hidden` (`N x S x C`, S = sum of `H_l W_l`)
    /// with queries `hidden + pos` and 2-d `reference_points` (`S x 2`, x then y in `[0, 1]`,
    /// shared by all levels and batch items): returns `N x S x C`.
    pub fn forward(
        &self,
        hidden: &Tensor,
        pos: &Tensor,
        reference_points: &Tensor,
        shapes: &[(usize, usize)],
    ) -> Result<Tensor> {
        let (n, s, c) = hidden.dims3()?;
        let (h, l, p) = (self.heads, self.levels, self.points);
        if shapes.len() != l {
            return Err(segkit_core::Error::shape(
                "deformable attention levels",
                &[l],
                &[shapes.len()],
            ));
        }
        let q = hidden.broadcast_add(pos)?.reshape((n * s, c))?;
        let value =
            linear(&self.value_proj, &hidden.reshape((n * s, c))?)?.reshape((n, s, h, c / h))?;
        let offsets = linear(&self.sampling_offsets, &q)?.reshape((n, s, h, l, p, 2))?;
        let attn = linear(&self.attention_weights, &q)?.reshape((n, s, h, l * p))?;
        // candle's fused softmax records no gradient: training takes the composed one.
        let attn = if attn.track_op() {
            candle_nn::ops::softmax(&attn, candle_core::D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&attn)?
        };
        let attn = attn.reshape((n, s, h, l, p))?;
        // sampling_locations = reference + offset / (W_l, H_l)
        let norm: Vec<f32> = shapes
            .iter()
            .flat_map(|&(hh, ww)| [ww as f32, hh as f32])
            .collect();
        let norm = Tensor::from_vec(norm, (1, 1, 1, l, 1, 2), hidden.device())?
            .to_dtype(hidden.dtype())?;
        let refp = reference_points.reshape((1, s, 1, 1, 1, 2))?;
        let locs = offsets.broadcast_div(&norm)?.broadcast_add(&refp)?;
        let out = multi_scale_deformable_attention(&value, shapes, &locs, &attn)?;
        Ok(linear(&self.output_proj, &out.reshape((n * s, c))?)?.reshape((n, s, c))?)
    }
}

/// `l` applied through [`ops::linear`] (no zero-filled output, the bias added in a
/// parallel pass on CPU f32).
fn linear(l: &Linear, x: &Tensor) -> Result<Tensor> {
    ops::linear(x, l.weight(), l.bias())
}

fn check_msda(
    value: &Tensor,
    shapes: &[(usize, usize)],
    locs: &Tensor,
    attn: &Tensor,
) -> Result<(usize, usize, usize, usize, usize, usize, usize)> {
    let (b, s, h, d) = value.dims4()?;
    let ldims = locs.dims();
    let &[lb, q, lh, l, p, two] = ldims else {
        return Err(segkit_core::Error::shape(
            "sampling_locations (N x Q x heads x levels x points x 2)",
            &[b, 1, h, shapes.len(), 1, 2],
            ldims,
        ));
    };
    if lb != b || lh != h || l != shapes.len() || two != 2 {
        return Err(segkit_core::Error::shape(
            "sampling_locations (N x Q x heads x levels x points x 2)",
            &[b, q, h, shapes.len(), p, 2],
            ldims,
        ));
    }
    if attn.dims() != [b, q, h, l, p] {
        return Err(segkit_core::Error::shape(
            "attention_weights (N x Q x heads x levels x points)",
            &[b, q, h, l, p],
            attn.dims(),
        ));
    }
    let total: usize = shapes.iter().map(|&(hh, ww)| hh * ww).sum();
    if total != s || shapes.iter().any(|&(hh, ww)| hh == 0 || ww == 0) {
        return Err(segkit_core::Error::shape(
            "value length (sum of the non-empty level areas)",
            &[total],
            &[s],
        ));
    }
    Ok((b, s, h, d, q, l, p))
}

/// Multi-scale deformable attention, exactly as transformers' `multi_scale_deformable_attention`:
/// for every query and head, the sum over levels and points of the attention weight times the
/// value bilinearly sampled (`grid_sample`, `align_corners = false`, zero padding) at the
/// sampling location (x, y in `[0, 1]` of the level).
///
/// # Shapes
/// `value`: `N x S x heads x D` (the levels' `H_l x W_l` maps flattened and concatenated in
/// `spatial_shapes` order), `sampling_locations`: `N x Q x heads x L x P x 2`,
/// `attention_weights`: `N x Q x heads x L x P` -> `N x Q x (heads D)`.
///
/// CPU f32 inputs take a rayon kernel; other devices and dtypes, and inputs that record
/// gradients (training), use [`multi_scale_deformable_attention_fallback`].
pub fn multi_scale_deformable_attention(
    value: &Tensor,
    spatial_shapes: &[(usize, usize)],
    sampling_locations: &Tensor,
    attention_weights: &Tensor,
) -> Result<Tensor> {
    let (b, s, h, d, q, l, p) =
        check_msda(value, spatial_shapes, sampling_locations, attention_weights)?;
    let on_cpu = value.device().is_cpu()
        && sampling_locations.device().is_cpu()
        && attention_weights.device().is_cpu();
    let f32s = value.dtype() == DType::F32
        && sampling_locations.dtype() == DType::F32
        && attention_weights.dtype() == DType::F32;
    // The CPU kernel has no backward pass: tensors that record gradients take the composed ops.
    let tracked = value.track_op() || sampling_locations.track_op() || attention_weights.track_op();
    if !(on_cpu && f32s) || tracked {
        return multi_scale_deformable_attention_fallback(
            value,
            spatial_shapes,
            sampling_locations,
            attention_weights,
        );
    }
    if b * q * h * d == 0 {
        return Ok(Tensor::zeros((b, q, h * d), DType::F32, value.device())?);
    }
    let mut starts = Vec::with_capacity(l);
    let mut acc = 0;
    for &(hh, ww) in spatial_shapes {
        starts.push(acc);
        acc += hh * ww;
    }
    let geo = Geo {
        s,
        h,
        d,
        q,
        l,
        p,
        shapes: spatial_shapes,
        starts: &starts,
    };
    let mut out = vec![0f32; b * q * h * d];
    // Value per head, N x heads x S x D: a tap reads D contiguous floats and one head's levels
    // (the working set of a chunk of queries) are compact.
    let value = value.transpose(1, 2)?.contiguous()?;
    with_f32(&value, |v| {
        with_f32(sampling_locations, |locs| {
            with_f32(attention_weights, |attn| {
                let rows = b * q;
                let tasks = rayon::current_num_threads().max(1) * 8;
                let chunk = rows.div_ceil(tasks).clamp(1, 64);
                out.par_chunks_mut(chunk * h * d)
                    .enumerate()
                    .for_each(|(ci, dst)| {
                        msda_rows(&geo, MsdaIn { v, locs, attn }, ci * chunk, dst)
                    });
                Ok(())
            })
        })
    })?;
    Ok(Tensor::from_vec(out, (b, q, h * d), value.device())?)
}

/// Runs `f` on the contiguous f32 data of a CPU f32 tensor (no copy when it is contiguous).
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Err(segkit_core::Error::InvalidArgument(
            "deformable attention CPU kernel on a non-CPU tensor".into(),
        ));
    };
    let data = cpu.as_slice::<f32>()?;
    let start = layout.start_offset();
    let data = data.get(start..start + t.elem_count()).ok_or_else(|| {
        segkit_core::Error::InvalidArgument(
            "deformable attention: tensor storage shorter than its layout".into(),
        )
    })?;
    f(data)
}

struct Geo<'a> {
    s: usize,
    h: usize,
    d: usize,
    q: usize,
    l: usize,
    p: usize,
    shapes: &'a [(usize, usize)],
    starts: &'a [usize],
}

/// PyTorch's `grid_sample` unnormalisation (align_corners = false) of a location in `[0, 1]`:
/// `g = 2 loc - 1`, then `(g + 1) * (size / 2) - 0.5` rounded once (the FMA of PyTorch's x86
/// build).
#[inline(always)]
fn unnormalize(loc: f32, size: usize) -> f32 {
    let g = 2.0 * loc - 1.0;
    ((g + 1.0) as f64 * (size as f32 / 2.0) as f64 - 0.5) as f32
}

/// `floor(v)` for `-1 < v < 2^24` without a libm call (x86-64's baseline has no `roundss`).
#[inline(always)]
fn floor_i64(v: f32) -> i64 {
    let t = v as i64;
    if (t as f32) > v {
        t - 1
    } else {
        t
    }
}

/// The deformable attention's inputs as [`msda_rows`] reads them: the value laid out
/// `N x heads x S x D`, the sampling locations and the attention weights.
#[derive(Clone, Copy)]
struct MsdaIn<'a> {
    v: &'a [f32],
    locs: &'a [f32],
    attn: &'a [f32],
}

/// Output rows `row0 ..` (row = batch item x query) of the deformable attention into `dst`,
/// head by head. The same code compiled for AVX-512F or AVX2 where the CPU has it (the
/// weighted sums of `D` floats vectorise 16 or 8 wide instead of SSE's 4; the same operations in
/// the same order, so the same values).
fn msda_rows(g: &Geo<'_>, x: MsdaIn<'_>, row0: usize, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if segkit_core::ops::cpu_has_avx512f() {
            // SAFETY: AVX-512F was detected on this CPU.
            return unsafe { msda_rows_avx512(g, x, row0, dst) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected on this CPU.
            return unsafe { msda_rows_avx2(g, x, row0, dst) };
        }
    }
    msda_rows_impl(g, x, row0, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn msda_rows_avx512(g: &Geo<'_>, x: MsdaIn<'_>, row0: usize, dst: &mut [f32]) {
    msda_rows_impl(g, x, row0, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn msda_rows_avx2(g: &Geo<'_>, x: MsdaIn<'_>, row0: usize, dst: &mut [f32]) {
    msda_rows_impl(g, x, row0, dst)
}

#[inline(always)]
fn msda_rows_impl(g: &Geo<'_>, x: MsdaIn<'_>, row0: usize, dst: &mut [f32]) {
    let MsdaIn { v, locs, attn } = x;
    let (h, d, l, p) = (g.h, g.d, g.l, g.p);
    let lp = l * p;
    let mut tap_off = vec![0usize; 4 * lp];
    let mut tap_w = vec![0f32; 4 * lp];
    let rows = dst.len() / (h * d);
    for head in 0..h {
        for r in 0..rows {
            let row = row0 + r;
            let b = row / g.q;
            let o = &mut dst[(r * h + head) * d..(r * h + head + 1) * d];
            let base = (row * h + head) * lp;
            let vb = &v[(b * h + head) * g.s * d..(b * h + head + 1) * g.s * d];
            let mut nt = 0;
            for lvl in 0..l {
                let (hh, ww) = g.shapes[lvl];
                let start = g.starts[lvl];
                for pt in 0..p {
                    let k = base + lvl * p + pt;
                    let a = attn[k];
                    let x = unnormalize(locs[2 * k], ww);
                    let y = unnormalize(locs[2 * k + 1], hh);
                    if !(x > -1.0 && y > -1.0 && x < ww as f32 && y < hh as f32) {
                        continue; // all four taps outside (or NaN)
                    }
                    let (xi, yi) = (floor_i64(x), floor_i64(y));
                    let fx = x - xi as f32;
                    let fy = y - yi as f32;
                    let ws = [
                        (1.0 - fy) * (1.0 - fx),
                        (1.0 - fy) * fx,
                        fy * (1.0 - fx),
                        fy * fx,
                    ];
                    let cs = [(yi, xi), (yi, xi + 1), (yi + 1, xi), (yi + 1, xi + 1)];
                    for (wgt, (cy, cx)) in ws.iter().zip(cs) {
                        if cy >= 0 && cy < hh as i64 && cx >= 0 && cx < ww as i64 {
                            tap_off[nt] = (start + cy as usize * ww + cx as usize) * d;
                            tap_w[nt] = a * wgt;
                            nt += 1;
                        }
                    }
                }
            }
            let (offs, wts) = (&tap_off[..nt], &tap_w[..nt]);
            match d {
                32 => accumulate::<32>(o, vb, offs, wts),
                64 => accumulate::<64>(o, vb, offs, wts),
                16 => accumulate::<16>(o, vb, offs, wts),
                _ => {
                    for (&off, &wt) in offs.iter().zip(wts) {
                        for (ov, &sv) in o.iter_mut().zip(&vb[off..off + d]) {
                            *ov += wt * sv;
                        }
                    }
                }
            }
        }
    }
}

/// `o += sum_k wts[k] * v[offs[k] .. offs[k] + D]` with a compile-time head size, accumulated in
/// registers.
#[inline(always)]
fn accumulate<const D: usize>(o: &mut [f32], v: &[f32], offs: &[usize], wts: &[f32]) {
    let mut acc = [0f32; D];
    for (&off, &wt) in offs.iter().zip(wts) {
        if let Some(src) = v.get(off..off + D) {
            for (a, &sv) in acc.iter_mut().zip(src) {
                *a += wt * sv;
            }
        }
    }
    for (ov, a) in o.iter_mut().zip(acc) {
        *ov += a;
    }
}

/// [`multi_scale_deformable_attention`] composed from tensor ops as HF writes it (one
/// [`segkit_core::ops::grid_sample`] per level, weighted sum): the path of non-CPU devices and
/// non-f32 dtypes, public for tests.
#[doc(hidden)]
pub fn multi_scale_deformable_attention_fallback(
    value: &Tensor,
    spatial_shapes: &[(usize, usize)],
    sampling_locations: &Tensor,
    attention_weights: &Tensor,
) -> Result<Tensor> {
    let (b, _s, h, d, q, l, p) =
        check_msda(value, spatial_shapes, sampling_locations, attention_weights)?;
    let grids = sampling_locations.affine(2.0, -1.0)?;
    let mut sampled = Vec::with_capacity(l);
    let mut start = 0;
    for (lvl, &(hh, ww)) in spatial_shapes.iter().enumerate() {
        // N x HW x heads x D -> (N heads) x D x H x W
        let v = value
            .narrow(1, start, hh * ww)?
            .permute((0, 2, 3, 1))?
            .contiguous()?
            .reshape((b * h, d, hh, ww))?;
        start += hh * ww;
        // N x Q x heads x P x 2 -> (N heads) x Q x P x 2
        let gl = grids
            .narrow(3, lvl, 1)?
            .squeeze(3)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * h, q, p, 2))?;
        sampled.push(ops::grid_sample(
            &v,
            &gl,
            GridSampleMode::Bilinear,
            GridSamplePadding::Zeros,
            false,
        )?);
    }
    // (N heads) x D x Q x (L P)
    let stacked = Tensor::stack(&sampled, 3)?.reshape((b * h, d, q, l * p))?;
    let w = attention_weights
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b * h, 1, q, l * p))?;
    let out = stacked.broadcast_mul(&w)?.sum(3)?.reshape((b, h * d, q))?;
    Ok(out.transpose(1, 2)?.contiguous()?)
}
