//! Point sampling of mask logits: bilinear sampling at normalised coordinates (differentiable
//! with respect to the logits) and Mask2Former's uncertainty-based importance sampling.
//!
//! References: transformers 5.x `models/oneformer/modeling_oneformer.py` — `sample_point`
//! (`F.grid_sample(input, 2 * coords - 1, align_corners=False)`, zero padding) and
//! `OneFormerLoss.sample_points_using_uncertainty` / `calculate_uncertainty` (copied there from
//! Mask2Former).
//!
//! Sampling computes, on the host, PyTorch's bilinear taps for every point (the same f32
//! arithmetic as its CPU kernel: `g = 2c - 1`, `ix = (g + 1) * W/2 - 0.5` rounded once, floor,
//! weights `(1 - fx)(1 - fy)`, .., taps outside the map weight 0) and gathers the four
//! neighbours from the logits, so the result is differentiable with respect to the logits
//! (`gather` scatters the gradient back) but not to the coordinates, which the references
//! never need.
//!
//! Importance sampling draws `floor(num_points * oversample_ratio)` uniform points per mask,
//! keeps the `floor(importance_sample_ratio * num_points)` most uncertain (largest `-|logit|`,
//! stable order among exact ties) and appends fresh uniform points up to `num_points`. The
//! uniform numbers come from a [`PointSource`], so that a run can replay PyTorch's `torch.rand`
//! draws ([`ReplayPointSource`]) or use a seeded generator ([`SeededPointSource`]).
//!
//! # Shapes
//! `input`: `R x H x W` (or `R x 1 x H x W`), coordinates `R x P x 2` or `1 x P x 2` (shared by
//! all masks), last dim `(x, y)` in `[0, 1]` -> `R x P`.
//!
//! # Example
//! ```
//! use candle_core::{Device, Tensor};
//! use segkit_losses::{point_sample, sample_points_using_uncertainty, SeededPointSource};
//!
//! let logits = Tensor::randn(0f32, 1.0, (3, 8, 8), &Device::Cpu)?;
//! let mut src = SeededPointSource::new(7);
//! let coords = sample_points_using_uncertainty(&logits, 16, 3.0, 0.75, &mut src)?;
//! assert_eq!(coords.dims(), &[3, 16, 2]);
//! let values = point_sample(&logits, &coords)?;
//! assert_eq!(values.dims(), &[3, 16]);
//! # Ok::<(), segkit_losses::Error>(())
//! ```

use std::collections::VecDeque;

use candle_core::{DType, Tensor};

use crate::util::{check_float, from_f32, index_tensor, shape_err, to_vec_f32};
use crate::{Error, Result};

/// A source of uniform `[0, 1)` numbers standing in for `torch.rand(shape)`.
pub trait PointSource {
    /// `shape.iter().product()` uniform numbers, row-major for `shape`. Called exactly where
    /// the reference calls `torch.rand(shape)` (zero-sized shapes included).
    fn uniform(&mut self, shape: &[usize]) -> Result<Vec<f32>>;
}

impl<T: PointSource + ?Sized> PointSource for &mut T {
    fn uniform(&mut self, shape: &[usize]) -> Result<Vec<f32>> {
        (**self).uniform(shape)
    }
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A deterministic [`PointSource`]: value `i` (counting across calls) is
/// `(splitmix64(seed + i * 0x9E3779B97F4A7C15) >> 40) / 2^24`, a 24-bit dyadic in `[0, 1)`.
#[derive(Debug, Clone)]
pub struct SeededPointSource {
    seed: u64,
    counter: u64,
}

impl SeededPointSource {
    /// A source starting at value 0 of `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed, counter: 0 }
    }
}

impl PointSource for SeededPointSource {
    fn uniform(&mut self, shape: &[usize]) -> Result<Vec<f32>> {
        let n: usize = shape.iter().product();
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let z = splitmix64(self.seed.wrapping_add(self.counter.wrapping_mul(GOLDEN)));
            self.counter = self.counter.wrapping_add(1);
            v.push((z >> 40) as f32 / 16_777_216.0);
        }
        Ok(v)
    }
}

/// A [`PointSource`] that hands out recorded tensors in order (e.g. PyTorch's `torch.rand`
/// results saved by a parity generator); errors when a requested shape differs from the next
/// recorded tensor's or when none is left.
#[derive(Debug, Clone, Default)]
pub struct ReplayPointSource {
    queue: VecDeque<Tensor>,
}

impl ReplayPointSource {
    /// A source replaying `draws` in order.
    pub fn new(draws: Vec<Tensor>) -> Self {
        Self {
            queue: draws.into(),
        }
    }

    /// Recorded draws not yet handed out.
    pub fn remaining(&self) -> usize {
        self.queue.len()
    }
}

impl PointSource for ReplayPointSource {
    fn uniform(&mut self, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.queue.pop_front().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "replay point source exhausted (asked for {shape:?})"
            ))
        })?;
        if t.dims() != shape {
            return Err(shape_err("replayed uniform draw", shape, t.dims()));
        }
        to_vec_f32(&t)
    }
}

/// PyTorch's bilinear taps (`align_corners=False`, zero padding) of the normalised point
/// `(cx, cy)` on an `h x w` map: flat indices and weights in nw, ne, sw, se order; taps outside
/// the map get index 0 and weight 0.
#[inline]
fn taps(cx: f32, cy: f32, h: usize, w: usize) -> ([u32; 4], [f32; 4]) {
    // `2.0 * coords - 1.0` in f32, then `(g + 1) * (size / 2) - 0.5` rounded once (FMA).
    let unnorm = |c: f32, size: usize| -> f32 {
        let g = 2.0f32 * c - 1.0;
        ((g + 1.0) as f64 * (size as f32 / 2.0) as f64 - 0.5) as f32
    };
    let (x, y) = (unnorm(cx, w), unnorm(cy, h));
    let (xw, yn) = (x.floor(), y.floor());
    let fw = x - xw;
    let fe = 1.0 - fw;
    let fnn = y - yn;
    let fs = 1.0 - fnn;
    let weights = [fs * fe, fs * fw, fnn * fe, fnn * fw];
    let (xi, yi) = (xw as i64, yn as i64);
    let corners = [(yi, xi), (yi, xi + 1), (yi + 1, xi), (yi + 1, xi + 1)];
    let mut idx = [0u32; 4];
    let mut wts = [0f32; 4];
    for (k, &(py, px)) in corners.iter().enumerate() {
        if py >= 0 && py < h as i64 && px >= 0 && px < w as i64 {
            idx[k] = (py as usize * w + px as usize) as u32;
            wts[k] = weights[k];
        }
    }
    (idx, wts)
}

/// The `(R, H, W)` of a `R x H x W` or `R x 1 x H x W` map.
fn map_dims(input: &Tensor) -> Result<(usize, usize, usize)> {
    match *input.dims() {
        [r, h, w] => Ok((r, h, w)),
        [r, 1, h, w] => Ok((r, h, w)),
        _ => Err(Error::InvalidArgument(format!(
            "point sampling needs an R x H x W (or R x 1 x H x W) map, got shape {:?}",
            input.dims()
        ))),
    }
}

/// Samples `input` at `coords` (host values, `rc x p x 2`, `rc` = R or 1): differentiable with
/// respect to `input`.
pub(crate) fn point_sample_host(
    input: &Tensor,
    coords: &[f32],
    rc: usize,
    p: usize,
) -> Result<Tensor> {
    check_float("point-sampled map", input)?;
    let (r, h, w) = map_dims(input)?;
    if (rc != r && rc != 1) || coords.len() != rc * p * 2 {
        return Err(shape_err(
            "point coordinates",
            &[r, p, 2],
            &[rc, coords.len() / (2 * p.max(1)), 2],
        ));
    }
    if r == 0 || p == 0 {
        return Ok(Tensor::zeros((r, p), input.dtype(), input.device())?);
    }
    if h == 0 || w == 0 {
        return Err(Error::InvalidArgument(
            "point sampling of an empty map".into(),
        ));
    }
    if !input.track_op() && input.dtype() == DType::F32 {
        return sample_rows_host(input, coords, (rc, r, h, w, p));
    }
    let mut idx = vec![0u32; r * 4 * p];
    let mut wts = vec![0f32; r * 4 * p];
    for m in 0..r {
        let c = if rc == 1 { 0 } else { m };
        for j in 0..p {
            let (i4, w4) = taps(coords[(c * p + j) * 2], coords[(c * p + j) * 2 + 1], h, w);
            for k in 0..4 {
                idx[(m * 4 + k) * p + j] = i4[k];
                wts[(m * 4 + k) * p + j] = w4[k];
            }
        }
    }
    let flat = input.reshape((r, h * w))?.contiguous()?;
    let idx = index_tensor(idx, &[r, 4 * p], input.device())?;
    let wts = from_f32(wts, &[r, 4, p], input.dtype(), input.device())?;
    let g = flat.gather(&idx, 1)?.reshape((r, 4, p))?;
    Ok(g.mul(&wts)?.sum(1)?)
}

/// [`point_sample_host`] without gradients (the matcher's costs, the targets): the taps of
/// each coordinate row computed once (shared by every map when `rc == 1`), the maps sampled
/// in parallel, summed in the gather path's order `((nw + ne) + sw) + se` (bit-identical).
fn sample_rows_host(
    input: &Tensor,
    coords: &[f32],
    (rc, r, h, w, p): (usize, usize, usize, usize, usize),
) -> Result<Tensor> {
    use rayon::prelude::*;
    let values = to_vec_f32(input)?;
    let taps: Vec<([u32; 4], [f32; 4])> = coords
        .chunks_exact(2)
        .map(|c| taps(c[0], c[1], h, w))
        .collect();
    let mut out = vec![0f32; r * p];
    out.par_chunks_mut(p)
        .zip(values.par_chunks(h * w))
        .enumerate()
        .for_each(|(m, (o, plane))| {
            let t = &taps[if rc == 1 { 0 } else { m * p }..][..p];
            for (o, (i4, w4)) in o.iter_mut().zip(t) {
                let v = |k: usize| plane[i4[k] as usize] * w4[k];
                // The gather path's sum starts from +0 (so -0 sums to +0 there too).
                *o = (((0.0 + v(0)) + v(1)) + v(2)) + v(3);
            }
        });
    Ok(Tensor::from_vec(out, (r, p), input.device())?)
}

/// Host-side sampling of `values` (`r x h x w`) at `coords` (`r x p x 2`), with PyTorch's
/// summation order `((nw + ne) + sw) + se`.
fn sample_values_host(
    values: &[f32],
    h: usize,
    w: usize,
    coords: &[f32],
    r: usize,
    p: usize,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(r * p);
    for m in 0..r {
        let plane = &values[m * h * w..(m + 1) * h * w];
        for j in 0..p {
            let (i4, w4) = taps(coords[(m * p + j) * 2], coords[(m * p + j) * 2 + 1], h, w);
            let v = |k: usize| plane[i4[k] as usize] * w4[k];
            out.push(((v(0) + v(1)) + v(2)) + v(3));
        }
    }
    out
}

/// transformers' `sample_point(input, coords, align_corners=False)`: `input` sampled
/// bilinearly at the normalised `coords` (`R x P x 2` or `1 x P x 2`, `(x, y)` in `[0, 1]`),
/// returning `R x P`; differentiable with respect to `input`.
pub fn point_sample(input: &Tensor, coords: &Tensor) -> Result<Tensor> {
    let (rc, p, two) = coords.dims3()?;
    if two != 2 {
        return Err(shape_err("point coordinates", &[rc, p, 2], coords.dims()));
    }
    point_sample_host(input, &to_vec_f32(coords)?, rc, p)
}

/// Mask2Former's `sample_points_using_uncertainty` with `calculate_uncertainty = -|logit|`:
/// `num_points` coordinates per mask of `logits` (`R x H x W` or `R x 1 x H x W`, read without
/// gradient), returned as an `R x num_points x 2` f32 tensor on the logits' device.
pub fn sample_points_using_uncertainty(
    logits: &Tensor,
    num_points: usize,
    oversample_ratio: f64,
    importance_sample_ratio: f64,
    source: &mut dyn PointSource,
) -> Result<Tensor> {
    let (r, _, _) = map_dims(logits)?;
    let v = sample_coords_host(
        logits,
        num_points,
        oversample_ratio,
        importance_sample_ratio,
        source,
    )?;
    Ok(Tensor::from_vec(v, (r, num_points, 2), logits.device())?)
}

/// [`sample_points_using_uncertainty`] returning host coordinates (`R x num_points x 2`).
pub(crate) fn sample_coords_host(
    logits: &Tensor,
    num_points: usize,
    oversample_ratio: f64,
    importance_sample_ratio: f64,
    source: &mut dyn PointSource,
) -> Result<Vec<f32>> {
    check_float("point-sampled logits", logits)?;
    let (r, h, w) = map_dims(logits)?;
    if oversample_ratio.is_nan()
        || oversample_ratio < 1.0
        || !(0.0..=1.0).contains(&importance_sample_ratio)
    {
        return Err(Error::InvalidArgument(format!(
            "point sampling needs oversample_ratio >= 1 and importance_sample_ratio in [0, 1], \
             got {oversample_ratio} and {importance_sample_ratio}"
        )));
    }
    let ns = (num_points as f64 * oversample_ratio) as usize;
    let k = (importance_sample_ratio * num_points as f64) as usize;
    if k > ns {
        return Err(Error::InvalidArgument(format!(
            "cannot keep {k} uncertain points out of {ns} sampled"
        )));
    }
    let rand = source.uniform(&[r, ns, 2])?;
    if rand.len() != r * ns * 2 {
        return Err(shape_err("uniform draw", &[r, ns, 2], &[rand.len()]));
    }
    let mut out = Vec::with_capacity(r * num_points * 2);
    if r > 0 && ns > 0 {
        if h == 0 || w == 0 {
            return Err(Error::InvalidArgument(
                "point sampling of an empty map".into(),
            ));
        }
        let values = to_vec_f32(logits)?;
        let sampled = sample_values_host(&values, h, w, &rand, r, ns);
        let mut order: Vec<usize> = Vec::with_capacity(ns);
        for m in 0..r {
            let unc: Vec<f32> = sampled[m * ns..(m + 1) * ns]
                .iter()
                .map(|x| -x.abs())
                .collect();
            order.clear();
            order.extend(0..ns);
            order.sort_by(|&a, &b| unc[b].total_cmp(&unc[a]));
            for &j in &order[..k] {
                out.push(rand[(m * ns + j) * 2]);
                out.push(rand[(m * ns + j) * 2 + 1]);
            }
            // Random points are appended after all masks' uncertain points are chosen.
        }
    }
    let random = num_points - k;
    if random > 0 {
        let extra = source.uniform(&[r, random, 2])?;
        if extra.len() != r * random * 2 {
            return Err(shape_err("uniform draw", &[r, random, 2], &[extra.len()]));
        }
        // Interleave: mask m's k uncertain points, then its `random` fresh ones.
        let mut merged = Vec::with_capacity(r * num_points * 2);
        for m in 0..r {
            merged.extend_from_slice(&out[m * k * 2..(m + 1) * k * 2]);
            merged.extend_from_slice(&extra[m * random * 2..(m + 1) * random * 2]);
        }
        out = merged;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn seeded_is_deterministic_and_in_range() -> Result<()> {
        let mut a = SeededPointSource::new(3);
        let mut b = SeededPointSource::new(3);
        let x = a.uniform(&[4, 5])?;
        assert_eq!(x, b.uniform(&[4, 5])?);
        assert!(x.iter().all(|&v| (0.0..1.0).contains(&v)));
        assert_ne!(x, a.uniform(&[4, 5])?);
        Ok(())
    }

    #[test]
    fn sample_centre_and_outside_and_grad() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::arange(0f32, 4.0, &dev)?.reshape((1, 2, 2))?)?;
        // Centre of the map (1.5), a point half outside the left edge, and the far corner.
        let c = Tensor::new(&[[[0.5f32, 0.5], [0.0, 0.25], [1.0, 1.0]]], &dev)?;
        let v = point_sample(x.as_tensor(), &c)?;
        let got = v.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(got, vec![1.5, 0.0, 0.75]);
        let g = v.sum_all()?.backward()?;
        let gx = g
            .get(x.as_tensor())
            .map(|t| t.flatten_all()?.to_vec1::<f32>())
            .transpose()?;
        assert_eq!(gx, Some(vec![0.75, 0.25, 0.25, 0.5]));
        Ok(())
    }

    /// Without gradients the host path gives the gather path's values bit for bit, for
    /// shared (`1 x P x 2`) and per-map coordinates, points inside and outside the map.
    #[test]
    fn host_path_equals_gather_path() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (5, 7, 9), &dev)?;
        let tracked = Var::from_tensor(&x)?;
        for rc in [1, 5] {
            let c = Tensor::rand(0f32, 1.0, (rc, 40, 2), &dev)?.affine(1.2, -0.1)?;
            let a = point_sample(&x, &c)?;
            let e = point_sample(tracked.as_tensor(), &c)?;
            let bits = |t: &Tensor| -> Result<Vec<u32>> {
                Ok(t.flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .map(|v| v.to_bits())
                    .collect())
            };
            assert_eq!(a.dims(), &[5, 40]);
            assert_eq!(bits(&a)?, bits(&e)?);
        }
        Ok(())
    }

    #[test]
    fn replay_checks_shapes() {
        let dev = Device::Cpu;
        let mut r = ReplayPointSource::new(vec![Tensor::zeros(
            (1, 2, 2),
            candle_core::DType::F32,
            &dev,
        )
        .unwrap()]);
        assert!(r.uniform(&[1, 3, 2]).is_err());
        assert!(r.uniform(&[1, 2, 2]).is_err());
    }
}
