//! Bilinear and nearest resizing of `N x C x H x W` maps to a given size.
//!
//! Matches PyTorch's `torch.nn.functional.interpolate(x, size=(oh, ow), mode='bilinear',
//! align_corners=..)` and `mode='nearest'` (ATen `upsample_bilinear2d` / `upsample_nearest2d`,
//! with the size given, no scale factor).
//!
//! - bilinear, `align_corners = false`: `src = (dst + 0.5) * in / out - 0.5`, clamped at 0;
//! - bilinear, `align_corners = true`: `src = dst * (in - 1) / (out - 1)` (`0` when `out == 1`);
//! - nearest: `src = min(floor(dst * in / out), in - 1)` (legacy `'nearest'`, not
//!   `'nearest-exact'`).
//!
//! On CPU the kernels work on contiguous `f32` buffers with precomputed per-row and per-column
//! index/weight tables, in parallel over `(plane, row block)`; every row of the input is
//! interpolated horizontally at most once per block. Other devices use the same tables with
//! `index_select` and broadcast multiplies ([`resize_bilinear_fallback`],
//! [`resize_nearest_fallback`]). Other dtypes are computed in `f32` on CPU.
//!
//! Training: on CPU (f32) the bilinear kernel is a candle custom op whose backward pass is its
//! transpose (each output row's gradient spread over the input columns with the same weights,
//! then over its two input rows), in parallel over the planes. A tensor that records gradients
//! ([`Tensor::track_op`]) on another device or dtype takes composed candle ops: bilinear
//! resizing as two matmuls with the dense interpolation matrices, `A_h x A_w^T`
//! ([`resize_bilinear_matmul`], whose backward is two more matmuls with the transposes; candle
//! also computes, and keeps until the backward pass ends, a gradient for the constant
//! matrices), nearest resizing as the two `index_select`s of the fallback (backward:
//! `index_add`).
//!
//! # Shapes
//! `x`: `N x C x H x W` -> `N x C x oh x ow` for `size = (oh, ow)`; `N` or `C` may be zero,
//! `H`, `W`, `oh` and `ow` may not.
//!
//! # Example
//! ```
//! use candle_core::{Device, Tensor};
//! use segkit_core::ops::{resize_bilinear, resize_nearest};
//!
//! let x = Tensor::arange(0f32, 16.0, &Device::Cpu)?.reshape((1, 1, 4, 4))?;
//! let up = resize_bilinear(&x, (8, 8), false)?; // F.interpolate(x, (8, 8), mode="bilinear")
//! assert_eq!(up.dims(), [1, 1, 8, 8]);
//! let corners = resize_bilinear(&x, (7, 7), true)?; // align_corners=True keeps the corners
//! assert_eq!(corners.flatten_all()?.to_vec1::<f32>()?[48], 15.0);
//! assert_eq!(resize_nearest(&x, (2, 2))?.flatten_all()?.to_vec1::<f32>()?, [0.0, 2.0, 8.0, 10.0]);
//! # Ok::<(), segkit_core::Error>(())
//! ```

use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

use crate::{Error, Result};

/// Runs `f` on the contiguous `f32` data of a CPU tensor, converting the dtype or making the
/// tensor contiguous first when needed (both are no-ops for a contiguous `f32` tensor).
pub(crate) fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
        Error::InvalidArgument("internal: a contiguous tensor has no contiguous offsets".into())
    })?;
    match &*storage {
        Storage::Cpu(cpu) => f(&cpu.as_slice::<f32>()?[start..end]),
        _ => Err(Error::InvalidArgument(
            "internal: CPU kernel called on a non-CPU tensor".into(),
        )),
    }
}

/// The dims of a rank-4 tensor, or a typed error naming the op and the argument.
pub(super) fn dims4(x: &Tensor, op: &str, what: &str) -> Result<(usize, usize, usize, usize)> {
    match *x.dims() {
        [n, c, h, w] => Ok((n, c, h, w)),
        ref d => Err(Error::InvalidArgument(format!(
            "{op}: `{what}` must have rank 4 (N x C x H x W), got shape {d:?}"
        ))),
    }
}

/// Wraps a CPU kernel's `f32` output as a tensor of `dtype`.
pub(super) fn cpu_output(data: Vec<f32>, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let t = Tensor::from_vec(data, shape, &Device::Cpu)?;
    Ok(if dtype == DType::F32 {
        t
    } else {
        t.to_dtype(dtype)?
    })
}

/// A zeroed output buffer of `len` values. Large buffers are advised to use transparent huge
/// pages on Linux: a fresh 256 MiB output otherwise spends most of an op's time in 4 KiB page
/// faults (measured: 150 ms -> 35 ms to allocate and fill 256 x 512 x 512 values on 2 threads).
pub(super) fn alloc_output(len: usize) -> Vec<f32> {
    let mut v = vec![0f32; len];
    advise_huge_pages(v.as_mut_ptr(), len);
    v
}

/// An output buffer of `len` values (a multiple of `chunk`, `chunk > 0`), filled in parallel by
/// `fill(i, out)` for each chunk `i`, which must write every element of `out`. Nothing is
/// zeroed first: a buffer `mimalloc` hands back from an earlier op costs no `memset` (1.3% of
/// a Cityscapes training step's samples went to zeroing BatchNorm's outputs). Huge pages as in
/// [`alloc_output`]. If `fill` panics, the buffer is dropped unread.
pub(super) fn alloc_filled<F>(len: usize, chunk: usize, fill: F) -> Vec<f32>
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    debug_assert!(chunk > 0 && len.is_multiple_of(chunk));
    // The chunks cover `[0, len)` and `fill` writes every element of each: `alloc_written`'s
    // contract.
    alloc_written(len, |out| {
        out.par_chunks_mut(chunk.max(1))
            .enumerate()
            .for_each(|(i, out)| fill(i, out));
    })
}

/// An output buffer of `len` values that `fill(out)` writes whole (every element), with
/// nothing zeroed first, as [`alloc_filled`] (for kernels that write one output in several
/// passes). If `fill` panics, the buffer is dropped unread.
pub(super) fn alloc_written(len: usize, fill: impl FnOnce(&mut [f32])) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    advise_huge_pages(v.as_mut_ptr(), len);
    let out = &mut v.spare_capacity_mut()[..len];
    // SAFETY: `f32` has no invalid bit patterns and `fill` only writes through the slice (the
    // contract above).
    fill(unsafe { &mut *(out as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) });
    // SAFETY: `fill` wrote every element of `[0, len)`.
    unsafe { v.set_len(len) };
    v
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn advise_huge_pages(ptr: *mut f32, len: usize) {
    const HUGE: usize = 1 << 21;
    const MADV_HUGEPAGE: std::ffi::c_int = 14;
    extern "C" {
        fn madvise(
            addr: *mut std::ffi::c_void,
            len: usize,
            advice: std::ffi::c_int,
        ) -> std::ffi::c_int;
    }
    let bytes = len * std::mem::size_of::<f32>();
    if bytes < 4 * HUGE {
        return;
    }
    let start = ptr as usize;
    let end = start + bytes;
    let (a, b) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
    if b > a {
        // SAFETY: `[a, b)` lies inside the caller's allocation of `len` values, and
        // MADV_HUGEPAGE only changes how pages are backed, never their contents. The result is
        // ignored: without THP support the advice is simply not taken.
        unsafe {
            madvise(a as *mut std::ffi::c_void, b - a, MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
fn advise_huge_pages(_ptr: *mut f32, _len: usize) {}

/// Number of parallel tasks to aim for: a few per rayon thread, for load balance.
pub(super) fn target_tasks() -> usize {
    4 * rayon::current_num_threads().max(1)
}

/// Index and weight tables of 1-D linear interpolation (PyTorch's
/// `HelperInterpLinear::compute_indices_weights` with `guard_index_and_lambda`).
pub(super) struct LinearTable {
    pub(super) i0: Vec<usize>,
    pub(super) i1: Vec<usize>,
    pub(super) w0: Vec<f32>,
    pub(super) w1: Vec<f32>,
}

pub(super) fn linear_table(input: usize, output: usize, align_corners: bool) -> LinearTable {
    // PyTorch computes these in the tensor's accumulate type, which is f32 for f32 input.
    let scale: f32 = if align_corners {
        if output > 1 {
            (input - 1) as f32 / (output - 1) as f32
        } else {
            0.0
        }
    } else {
        input as f32 / output as f32
    };
    let mut t = LinearTable {
        i0: Vec::with_capacity(output),
        i1: Vec::with_capacity(output),
        w0: Vec::with_capacity(output),
        w1: Vec::with_capacity(output),
    };
    for d in 0..output {
        let src = if align_corners {
            scale * d as f32
        } else {
            // PyTorch's x86 build contracts `scale * (d + 0.5) - 0.5` into one FMA; the f64
            // product of two f32 is exact, so this rounds once, like the FMA.
            let s = (scale as f64 * (d as f32 + 0.5) as f64 - 0.5) as f32;
            if s < 0.0 {
                0.0
            } else {
                s
            }
        };
        let i0 = (src.floor() as usize).min(input - 1);
        let lambda = (src - i0 as f32).clamp(0.0, 1.0);
        let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
        t.i0.push(i0);
        t.i1.push(i1);
        t.w0.push(1.0 - lambda);
        t.w1.push(lambda);
    }
    t
}

/// PyTorch's `nearest_idx` for `mode='nearest'` with the size given.
fn nearest_table(input: usize, output: usize) -> Vec<usize> {
    (0..output)
        .map(|d| {
            if output == input {
                d
            } else if output == 2 * input {
                d >> 1
            } else {
                let scale = input as f32 / output as f32;
                ((d as f32 * scale).floor() as usize).min(input - 1)
            }
        })
        .collect()
}

pub(super) fn check_resize_args(
    x: &Tensor,
    size: (usize, usize),
    op: &str,
) -> Result<(usize, usize, usize, usize)> {
    let (n, c, h, w) = dims4(x, op, "x")?;
    if h == 0 || w == 0 {
        return Err(Error::InvalidArgument(format!(
            "{op}: input spatial size must be positive, got {h} x {w}"
        )));
    }
    if size.0 == 0 || size.1 == 0 {
        return Err(Error::InvalidArgument(format!(
            "{op}: output size must be positive, got {} x {}",
            size.0, size.1
        )));
    }
    Ok((n, c, h, w))
}

/// Splits every output plane of `oh` rows into blocks so that there are enough parallel tasks,
/// and returns the rows per block.
fn rows_per_block(planes: usize, oh: usize) -> usize {
    let blocks_per_plane = target_tasks().div_ceil(planes.max(1)).clamp(1, oh);
    oh.div_ceil(blocks_per_plane)
}

/// Bilinear resize of an `N x C x H x W` map to `size = (oh, ow)`, exactly as
/// `F.interpolate(x, size=size, mode='bilinear', align_corners=align_corners)`.
///
/// Errors if `x` is not rank 4 or a spatial size (input or output) is zero.
pub fn resize_bilinear(x: &Tensor, size: (usize, usize), align_corners: bool) -> Result<Tensor> {
    let (n, c, h, w) = check_resize_args(x, size, "resize_bilinear")?;
    if !x.device().is_cpu() {
        if x.track_op() {
            return resize_bilinear_matmul(x, size, align_corners);
        }
        return resize_bilinear_fallback(x, size, align_corners);
    }
    let (oh, ow) = size;
    let op = super::resize_op::Bilinear {
        ty: linear_table(h, oh, align_corners),
        tx: linear_table(w, ow, align_corners),
        h,
        w,
    };
    if x.track_op() {
        if x.dtype() != DType::F32 || n * c == 0 {
            return resize_bilinear_matmul(x, size, align_corners);
        }
        return Ok(x.contiguous()?.apply_op1(op)?);
    }
    let out = with_cpu_f32(x, |src| Ok(op.forward(src)))?;
    cpu_output(out, &[n, c, oh, ow], x.dtype())
}

/// Horizontal pass over one input row into `dst` (`ow` values).
#[inline]
pub(super) fn hinterp(row: &[f32], tx: &LinearTable, dst: &mut [f32]) {
    for ((((d, &i0), &i1), &w0), &w1) in dst
        .iter_mut()
        .zip(&tx.i0)
        .zip(&tx.i1)
        .zip(&tx.w0)
        .zip(&tx.w1)
    {
        *d = row[i0] * w0 + row[i1] * w1;
    }
}

/// Computes output rows `y0 ..` (as many as `block` holds) of one plane.
pub(super) fn bilinear_block(
    plane: &[f32],
    w: usize,
    ty: &LinearTable,
    tx: &LinearTable,
    y0: usize,
    block: &mut [f32],
) {
    let ow = tx.i0.len();
    // Two horizontally interpolated input rows, tagged with their row index.
    let mut cache: [(usize, Vec<f32>); 2] =
        [(usize::MAX, vec![0.0; ow]), (usize::MAX, vec![0.0; ow])];
    for (r, out_row) in block.chunks_mut(ow).enumerate() {
        let y = y0 + r;
        let (a, b) = (ty.i0[y], ty.i1[y]);
        for need in [a, b] {
            if cache[0].0 != need && cache[1].0 != need {
                // Replace the slot that is not the other needed row.
                let slot = if cache[0].0 == a || cache[0].0 == b {
                    1
                } else {
                    0
                };
                hinterp(&plane[need * w..(need + 1) * w], tx, &mut cache[slot].1);
                cache[slot].0 = need;
            }
        }
        let ra = if cache[0].0 == a {
            &cache[0].1
        } else {
            &cache[1].1
        };
        let rb = if cache[0].0 == b {
            &cache[0].1
        } else {
            &cache[1].1
        };
        let (w0, w1) = (ty.w0[y], ty.w1[y]);
        for ((o, &va), &vb) in out_row.iter_mut().zip(ra).zip(rb) {
            *o = va * w0 + vb * w1;
        }
    }
}

/// Resizes the contiguous `h x w` planes of `src` to `oh x ow`: `block(plane, y0, rows)` fills
/// output rows `y0..` of one plane (as many as `rows` holds), in parallel over the planes and
/// blocks of rows.
pub(super) fn resize_planes(
    src: &[f32],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    block: impl Fn(&[f32], usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let planes = src.len() / (h * w);
    let mut out = alloc_output(planes * oh * ow);
    if planes > 0 {
        let rows = rows_per_block(planes, oh);
        out.par_chunks_mut(oh * ow)
            .zip(src.par_chunks(h * w))
            .for_each(|(dst, plane)| {
                dst.par_chunks_mut(rows * ow)
                    .enumerate()
                    .for_each(|(b, rs)| block(plane, b * rows, rs));
            });
    }
    out
}

/// Nearest-neighbour resize of an `N x C x H x W` map to `size = (oh, ow)`, exactly as
/// `F.interpolate(x, size=size, mode='nearest')`.
///
/// Errors if `x` is not rank 4 or a spatial size (input or output) is zero.
pub fn resize_nearest(x: &Tensor, size: (usize, usize)) -> Result<Tensor> {
    let (n, c, h, w) = check_resize_args(x, size, "resize_nearest")?;
    if x.track_op() || !x.device().is_cpu() {
        return resize_nearest_fallback(x, size);
    }
    let (oh, ow) = size;
    let iy = nearest_table(h, oh);
    let ix = nearest_table(w, ow);
    let out = with_cpu_f32(x, |src| {
        Ok(resize_planes(src, (h, w), (oh, ow), |plane, y0, block| {
            for r in 0..block.len() / ow {
                let y = iy[y0 + r];
                if r > 0 && iy[y0 + r - 1] == y {
                    block.copy_within((r - 1) * ow..r * ow, r * ow);
                    continue;
                }
                let row = &plane[y * w..(y + 1) * w];
                for (o, &i) in block[r * ow..(r + 1) * ow].iter_mut().zip(&ix) {
                    *o = row[i];
                }
            }
        }))
    })?;
    cpu_output(out, &[n, c, oh, ow], x.dtype())
}

fn index_tensor(idx: &[usize], device: &Device) -> Result<Tensor> {
    let v: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    Ok(Tensor::from_vec(v, idx.len(), device)?)
}

/// [`resize_bilinear`] composed from candle tensor ops (`index_select` and broadcast
/// multiply-adds with the same tables): the path taken on non-CPU devices, public for tests.
#[doc(hidden)]
pub fn resize_bilinear_fallback(
    x: &Tensor,
    size: (usize, usize),
    align_corners: bool,
) -> Result<Tensor> {
    let (_, _, h, w) = check_resize_args(x, size, "resize_bilinear")?;
    let (oh, ow) = size;
    let dev = x.device();
    let interp = |x: &Tensor, t: &LinearTable, dim: usize| -> Result<Tensor> {
        let len = t.i0.len();
        let mut wshape = [1usize; 4];
        wshape[dim] = len;
        let w0 = Tensor::from_slice(&t.w0, len, dev)?
            .to_dtype(x.dtype())?
            .reshape(&wshape[..])?;
        let w1 = Tensor::from_slice(&t.w1, len, dev)?
            .to_dtype(x.dtype())?
            .reshape(&wshape[..])?;
        let a = x.index_select(&index_tensor(&t.i0, dev)?, dim)?;
        let b = x.index_select(&index_tensor(&t.i1, dev)?, dim)?;
        Ok((a.broadcast_mul(&w0)? + b.broadcast_mul(&w1)?)?)
    };
    let y = interp(x, &linear_table(w, ow, align_corners), 3)?;
    interp(&y, &linear_table(h, oh, align_corners), 2)
}

/// The `out x in` matrix of 1-D linear interpolation (row `d` holds `w0` at `i0` and `w1` at
/// `i1`, summed where they coincide).
fn interp_matrix(input: usize, output: usize, align_corners: bool) -> Vec<f32> {
    let t = linear_table(input, output, align_corners);
    let mut m = vec![0f32; output * input];
    for d in 0..output {
        m[d * input + t.i0[d]] += t.w0[d];
        m[d * input + t.i1[d]] += t.w1[d];
    }
    m
}

/// [`resize_bilinear`] as two matmuls, `A_h (oh x H) . x . A_w^T (W x ow)` with the dense
/// interpolation matrices of PyTorch's index/weight tables: differentiable on every device
/// (the path taken by tensors that record gradients), public for tests. Values equal the
/// kernel's up to the rounding of the two-term sums.
#[doc(hidden)]
pub fn resize_bilinear_matmul(
    x: &Tensor,
    size: (usize, usize),
    align_corners: bool,
) -> Result<Tensor> {
    let (n, c, h, w) = check_resize_args(x, size, "resize_bilinear")?;
    let (oh, ow) = size;
    let dev = x.device();
    if n * c == 0 {
        return Ok(Tensor::zeros((n, c, oh, ow), x.dtype(), dev)?);
    }
    let mut y = x.contiguous()?.reshape((n * c, h, w))?;
    if ow != w {
        let awt = Tensor::from_vec(interp_matrix(w, ow, align_corners), (ow, w), dev)?
            .to_dtype(x.dtype())?
            .t()?
            .contiguous()?
            .reshape((1, w, ow))?;
        y = y.broadcast_matmul(&awt)?; // (NC, H, ow)
    }
    if oh != h {
        let ah = Tensor::from_vec(interp_matrix(h, oh, align_corners), (1, oh, h), dev)?
            .to_dtype(x.dtype())?;
        y = ah.broadcast_matmul(&y)?; // (NC, oh, ow)
    }
    Ok(y.reshape((n, c, oh, ow))?)
}

/// [`resize_nearest`] composed from candle tensor ops (two `index_select`s): the path taken on
/// non-CPU devices, public for tests.
#[doc(hidden)]
pub fn resize_nearest_fallback(x: &Tensor, size: (usize, usize)) -> Result<Tensor> {
    let (_, _, h, w) = check_resize_args(x, size, "resize_nearest")?;
    let dev = x.device();
    let y = x.index_select(&index_tensor(&nearest_table(h, size.0), dev)?, 2)?;
    Ok(y.index_select(&index_tensor(&nearest_table(w, size.1), dev)?, 3)?)
}
