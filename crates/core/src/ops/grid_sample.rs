//! Sampling a map at arbitrary normalised locations.
//!
//! Matches PyTorch's `torch.nn.functional.grid_sample(input, grid, mode, padding_mode,
//! align_corners)` for 4-D inputs, modes `'bilinear'` and `'nearest'`, padding modes `'zeros'`
//! and `'border'`:
//!
//! - a grid value `g` in `[-1, 1]` is unnormalised to a pixel coordinate with
//!   `(g + 1) * (size - 1) / 2` (`align_corners = true`) or `(g + 1) * size / 2 - 0.5`
//!   (`align_corners = false`); grid values outside `[-1, 1]` are valid;
//! - `Border` clamps the coordinate to `[0, size - 1]`; `Zeros` lets taps that fall outside the
//!   map contribute zero;
//! - `Nearest` rounds half to even (C's `nearbyint`, as PyTorch).
//!
//! On CPU the kernel precomputes, per batch item, the taps (flat indices and weights, with
//! out-of-range taps folded into zero weights) of every output location once, then applies
//! them to every channel plane in parallel. Other devices compose the same arithmetic from
//! candle tensor ops and `gather` ([`grid_sample_fallback`]).
//!
//! # Shapes
//! `input`: `N x C x H x W`, `grid`: `N x Ho x Wo x 2` (last dim `(x, y)`) -> `N x C x Ho x Wo`.
//!
//! # Example
//! ```
//! use candle_core::{Device, Tensor};
//! use segkit_core::ops::{grid_sample, GridSampleMode, GridSamplePadding};
//!
//! let x = Tensor::arange(0f32, 4.0, &Device::Cpu)?.reshape((1, 1, 2, 2))?;
//! // The centre of the map, and a point left of it (zero padding blends in zeros).
//! let grid = Tensor::new(&[[[[0f32, 0.0], [-2.0, 0.0]]]], &Device::Cpu)?;
//! let y = grid_sample(&x, &grid, GridSampleMode::Bilinear, GridSamplePadding::Zeros, false)?;
//! assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, [1.5, 0.0]);
//! # Ok::<(), segkit_core::Error>(())
//! ```

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::resize::{alloc_output, cpu_output, dims4, target_tasks, with_cpu_f32};
use crate::{Error, Result};

/// Interpolation of [`grid_sample`] (PyTorch's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GridSampleMode {
    /// Bilinear interpolation of the four neighbouring pixels (`'bilinear'`).
    #[default]
    Bilinear,
    /// The nearest pixel, ties rounded half to even (`'nearest'`).
    Nearest,
}

/// Handling of locations outside the map in [`grid_sample`] (PyTorch's `padding_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GridSamplePadding {
    /// Pixels outside the map read as zero (`'zeros'`).
    #[default]
    Zeros,
    /// Coordinates are clamped to the map's border pixels (`'border'`).
    Border,
}

fn check_args(input: &Tensor, grid: &Tensor) -> Result<(usize, usize, usize, usize, usize, usize)> {
    let (n, c, h, w) = dims4(input, "grid_sample", "input")?;
    let (gn, ho, wo, two) = dims4(grid, "grid_sample", "grid")?;
    if gn != n || two != 2 {
        return Err(Error::shape(
            "grid_sample grid",
            &[n, ho, wo, 2],
            grid.dims(),
        ));
    }
    if h == 0 || w == 0 {
        return Err(Error::InvalidArgument(format!(
            "grid_sample: input spatial size must be positive, got {h} x {w}"
        )));
    }
    Ok((n, c, h, w, ho, wo))
}

/// PyTorch's vectorised `ComputeLocation::unnormalize` (+ `clip_coordinates` for `Border`).
#[inline]
fn source_coord(g: f32, size: usize, padding: GridSamplePadding, align_corners: bool) -> f32 {
    let v = if align_corners {
        (g + 1.0) * ((size - 1) as f32 / 2.0)
    } else {
        // `(g + 1) * (size / 2) - 0.5` rounded once, as the FMA PyTorch's x86 build uses.
        ((g + 1.0) as f64 * (size as f32 / 2.0) as f64 - 0.5) as f32
    };
    match padding {
        GridSamplePadding::Zeros => v,
        // `minimum(max_val, maximum(v, 0))`
        GridSamplePadding::Border => v.max(0.0).min((size - 1) as f32),
    }
}

/// Samples `input` at the normalised locations of `grid`, exactly as
/// `F.grid_sample(input, grid, mode, padding_mode, align_corners)`.
///
/// Errors if `input` or `grid` is not rank 4, if `grid` is not `N x Ho x Wo x 2` for the
/// input's `N`, or if the input's spatial size is zero.
pub fn grid_sample(
    input: &Tensor,
    grid: &Tensor,
    mode: GridSampleMode,
    padding: GridSamplePadding,
    align_corners: bool,
) -> Result<Tensor> {
    let (n, c, h, w, ho, wo) = check_args(input, grid)?;
    // The CPU kernel has no backward pass: tensors that record gradients take the composed ops.
    if !input.device().is_cpu() || input.track_op() || grid.track_op() {
        return grid_sample_fallback(input, grid, mode, padding, align_corners);
    }
    let grid = grid.to_device(input.device())?;
    let p = ho * wo;
    let taps = match mode {
        GridSampleMode::Bilinear => 4,
        GridSampleMode::Nearest => 1,
    };
    let mut out = alloc_output(n * c * p);
    if n * c * p > 0 {
        // Tap tables of every batch item: flat index into the H x W plane and weight.
        let mut idx = vec![0u32; n * p * taps];
        let mut wts = vec![0f32; n * p * taps];
        with_cpu_f32(&grid, |g| {
            let chunk = p.div_ceil(target_tasks()).max(256);
            idx.par_chunks_mut(chunk * taps)
                .zip(wts.par_chunks_mut(chunk * taps))
                .zip(g.par_chunks(chunk * 2))
                .for_each(|((ic, wc), gc)| {
                    for ((i, wt), gp) in ic
                        .chunks_mut(taps)
                        .zip(wc.chunks_mut(taps))
                        .zip(gc.chunks(2))
                    {
                        let x = source_coord(gp[0], w, padding, align_corners);
                        let y = source_coord(gp[1], h, padding, align_corners);
                        match mode {
                            GridSampleMode::Bilinear => bilinear_taps(x, y, h, w, i, wt),
                            GridSampleMode::Nearest => nearest_tap(x, y, h, w, i, wt),
                        }
                    }
                });
            Ok(())
        })?;
        with_cpu_f32(input, |src| {
            out.par_chunks_mut(p)
                .zip(src.par_chunks(h * w))
                .enumerate()
                .for_each(|(plane_i, (dst, plane))| {
                    let b = plane_i / c;
                    let i = &idx[b * p * taps..(b + 1) * p * taps];
                    let wt = &wts[b * p * taps..(b + 1) * p * taps];
                    if taps == 4 {
                        for ((o, i), wt) in dst
                            .iter_mut()
                            .zip(i.chunks_exact(4))
                            .zip(wt.chunks_exact(4))
                        {
                            *o = plane[i[0] as usize] * wt[0]
                                + plane[i[1] as usize] * wt[1]
                                + plane[i[2] as usize] * wt[2]
                                + plane[i[3] as usize] * wt[3];
                        }
                    } else {
                        for ((o, &i), &wt) in dst.iter_mut().zip(i).zip(wt) {
                            *o = if wt != 0.0 { plane[i as usize] } else { 0.0 };
                        }
                    }
                });
            Ok(())
        })?;
    }
    cpu_output(out, &[n, c, ho, wo], input.dtype())
}

/// The four bilinear taps of `(x, y)` (PyTorch's nw, ne, sw, se order and weights); taps
/// outside the map get index 0 and weight 0.
#[inline]
fn bilinear_taps(x: f32, y: f32, h: usize, w: usize, idx: &mut [u32], wts: &mut [f32]) {
    let xw = x.floor();
    let yn = y.floor();
    let fw = x - xw;
    let fe = 1.0 - fw;
    let fnn = y - yn;
    let fs = 1.0 - fnn;
    let weights = [fs * fe, fs * fw, fnn * fe, fnn * fw];
    let (xi, yi) = (xw as i64, yn as i64);
    let corners = [(yi, xi), (yi, xi + 1), (yi + 1, xi), (yi + 1, xi + 1)];
    for (k, &(cy, cx)) in corners.iter().enumerate() {
        if cy >= 0 && cy < h as i64 && cx >= 0 && cx < w as i64 {
            idx[k] = (cy as usize * w + cx as usize) as u32;
            wts[k] = weights[k];
        } else {
            idx[k] = 0;
            wts[k] = 0.0;
        }
    }
}

/// The nearest tap of `(x, y)`, rounding half to even; weight 1 inside the map, 0 outside.
#[inline]
fn nearest_tap(x: f32, y: f32, h: usize, w: usize, idx: &mut [u32], wts: &mut [f32]) {
    let xi = x.round_ties_even();
    let yi = y.round_ties_even();
    if xi >= 0.0 && xi < w as f32 && yi >= 0.0 && yi < h as f32 {
        idx[0] = (yi as usize * w + xi as usize) as u32;
        wts[0] = 1.0;
    } else {
        idx[0] = 0;
        wts[0] = 0.0;
    }
}

/// Round half to even, from tensor ops: `floor(v)`, plus one above the half, plus one at an
/// exact half when the floor is odd.
fn round_half_even(v: &Tensor) -> Result<Tensor> {
    let f = v.floor()?;
    let d = (v - &f)?;
    let up = d.gt(0.5)?.to_dtype(v.dtype())?;
    let half = d.eq(0.5)?.to_dtype(v.dtype())?;
    let odd = (&f - (f.affine(0.5, 0.0)?.floor()?.affine(2.0, 0.0)?))?;
    Ok((f + up + (half * odd)?)?)
}

/// `1` where `0 <= v <= size - 1`, else `0` (in `v`'s dtype).
fn in_range(v: &Tensor, size: usize) -> Result<Tensor> {
    let lo = v.ge(0.0)?;
    let hi = v.le((size - 1) as f64)?;
    Ok((lo.to_dtype(v.dtype())? * hi.to_dtype(v.dtype())?)?)
}

/// [`grid_sample`] composed from candle tensor ops (elementwise arithmetic and `gather`): the
/// path taken on non-CPU devices, public for tests.
#[doc(hidden)]
pub fn grid_sample_fallback(
    input: &Tensor,
    grid: &Tensor,
    mode: GridSampleMode,
    padding: GridSamplePadding,
    align_corners: bool,
) -> Result<Tensor> {
    let (n, c, h, w, ho, wo) = check_args(input, grid)?;
    let dt = input.dtype();
    let grid = grid.to_device(input.device())?.to_dtype(dt)?;
    let p = ho * wo;
    if n * c * p == 0 {
        return Ok(Tensor::zeros((n, c, ho, wo), dt, input.device())?);
    }
    let unnorm = |g: Tensor, size: usize| -> Result<Tensor> {
        let v = if align_corners {
            g.affine(1.0, 1.0)?
                .affine(((size - 1) as f32 / 2.0) as f64, 0.0)?
        } else {
            g.affine(1.0, 1.0)?
                .affine((size as f32 / 2.0) as f64, 0.0)?
                .affine(1.0, -0.5)?
        };
        Ok(match padding {
            GridSamplePadding::Zeros => v,
            GridSamplePadding::Border => v.clamp(0.0, (size - 1) as f64)?,
        })
    };
    let grid = grid.reshape((n, 1, p, 2))?;
    let x = unnorm(grid.narrow(3, 0, 1)?.squeeze(3)?, w)?; // (n, 1, p)
    let y = unnorm(grid.narrow(3, 1, 1)?.squeeze(3)?, h)?;
    let planes = input.contiguous()?.reshape((n, c, h * w))?;
    // Value of the tap at integer coordinates (tx, ty), times `weight`, zero outside the map.
    let tap = |tx: &Tensor, ty: &Tensor, weight: Tensor| -> Result<Tensor> {
        let weight = ((weight * in_range(tx, w)?)? * in_range(ty, h)?)?;
        let flat = (ty.clamp(0.0, (h - 1) as f64)?.affine(w as f64, 0.0)?
            + tx.clamp(0.0, (w - 1) as f64)?)?;
        let flat = flat
            .to_dtype(DType::U32)?
            .broadcast_as((n, c, p))?
            .contiguous()?;
        Ok(planes.gather(&flat, 2)?.broadcast_mul(&weight)?)
    };
    let out = match mode {
        GridSampleMode::Bilinear => {
            let x0 = x.floor()?;
            let y0 = y.floor()?;
            let fw = (&x - &x0)?;
            let fe = fw.affine(-1.0, 1.0)?;
            let fnn = (&y - &y0)?;
            let fs = fnn.affine(-1.0, 1.0)?;
            let x1 = x0.affine(1.0, 1.0)?;
            let y1 = y0.affine(1.0, 1.0)?;
            let nw = tap(&x0, &y0, (&fs * &fe)?)?;
            let ne = tap(&x1, &y0, (&fs * &fw)?)?;
            let sw = tap(&x0, &y1, (&fnn * &fe)?)?;
            let se = tap(&x1, &y1, (&fnn * &fw)?)?;
            (((nw + ne)? + sw)? + se)?
        }
        GridSampleMode::Nearest => {
            let xr = round_half_even(&x)?;
            let yr = round_half_even(&y)?;
            let ones = xr.ones_like()?;
            tap(&xr, &yr, ones)?
        }
    };
    Ok(out.reshape((n, c, ho, wo))?)
}
