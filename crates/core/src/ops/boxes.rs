//! Box operations for detection heads: area, pairwise IoU, non-maximum suppression and the
//! R-CNN box coder.
//!
//! Matches torchvision: `torchvision.ops.box_area`, `torchvision.ops.box_iou`,
//! `torchvision.ops.nms`, `torchvision.ops.batched_nms` and
//! `torchvision.models.detection._utils.BoxCoder` (`encode_single` / `decode_single`). Boxes
//! are `(x1, y1, x2, y2)` with `x1 <= x2`, `y1 <= y2`.
//!
//! On CPU `box_iou` and the box coder run dedicated `f32` kernels (rayon over rows for IoU);
//! other devices compose the same arithmetic from candle tensor ops ([`box_iou_fallback`],
//! [`BoxCoder::encode_fallback`], [`BoxCoder::decode_fallback`]). `nms` and `batched_nms`
//! return host-side index lists and therefore always read the boxes and scores on the host.
//!
//! # Shapes
//! - `box_area`: `N x 4` -> `N`;
//! - `box_iou`: `N x 4`, `M x 4` -> `N x M`;
//! - `nms`: boxes `N x 4`, scores `N` -> kept indices (a `Vec`, by decreasing score);
//! - `batched_nms`: boxes `N x 4`, scores `N`, class ids `N` -> kept indices;
//! - `BoxCoder::encode`: reference boxes `N x 4`, proposals `N x 4` -> deltas `N x 4`;
//! - `BoxCoder::decode`: deltas `N x 4K`, boxes `N x 4` -> boxes `N x 4K`.
//!
//! # Example
//! ```
//! use candle_core::{Device, Tensor};
//! use segkit_core::ops::{box_iou, nms, BoxCoder};
//!
//! let boxes = [[0f32, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]];
//! let boxes = Tensor::new(&boxes, &Device::Cpu)?;
//! let scores = Tensor::new(&[0.9f32, 0.8, 0.7], &Device::Cpu)?;
//! assert_eq!(nms(&boxes, &scores, 0.5)?, [0, 2]);
//! assert_eq!(box_iou(&boxes, &boxes)?.dims(), [3, 3]);
//! let coder = BoxCoder::new([10.0, 10.0, 5.0, 5.0]);
//! let deltas = coder.encode(&boxes, &boxes)?; // identical boxes: all-zero deltas
//! assert_eq!(coder.decode(&deltas, &boxes)?.to_vec2::<f32>()?, boxes.to_vec2::<f32>()?);
//! # Ok::<(), segkit_core::Error>(())
//! ```

use candle_core::{DType, Device, Tensor, D};
use rayon::prelude::*;

use super::resize::{cpu_output, with_cpu_f32};
use crate::{Error, Result};

/// Checks that `t` is `N x 4` (with `N` = `n` when given) and returns `N`.
fn check_boxes(t: &Tensor, what: &str, n: Option<usize>) -> Result<usize> {
    match *t.dims() {
        [k, 4] if n.is_none_or(|n| n == k) => Ok(k),
        [k, _] => Err(Error::shape(what, &[n.unwrap_or(k), 4], t.dims())),
        ref d => Err(Error::InvalidArgument(format!(
            "`{what}` must be N x 4 (x1, y1, x2, y2), got shape {d:?}"
        ))),
    }
}

/// The values of a tensor as a host `Vec<f32>` (row-major).
fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// Area `(x2 - x1) * (y2 - y1)` of each box, as `torchvision.ops.box_area`.
///
/// Composed from tensor ops on every device. Errors if `boxes` is not `N x 4`.
pub fn box_area(boxes: &Tensor) -> Result<Tensor> {
    check_boxes(boxes, "box_area boxes", None)?;
    let w = (boxes.narrow(1, 2, 1)? - boxes.narrow(1, 0, 1)?)?;
    let h = (boxes.narrow(1, 3, 1)? - boxes.narrow(1, 1, 1)?)?;
    Ok((w * h)?.squeeze(1)?)
}

/// Pairwise intersection over union of two box sets, as `torchvision.ops.box_iou`.
///
/// Two boxes of zero area that do not overlap give `0 / 0 = NaN`, as in torchvision.
/// Errors if `a` or `b` is not `N x 4`.
pub fn box_iou(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let n = check_boxes(a, "box_iou a", None)?;
    let m = check_boxes(b, "box_iou b", None)?;
    if !a.device().is_cpu() {
        return box_iou_fallback(a, b);
    }
    let bv = host_f32(b)?;
    let area_b: Vec<f32> = bv
        .chunks_exact(4)
        .map(|r| (r[2] - r[0]) * (r[3] - r[1]))
        .collect();
    let mut out = vec![0f32; n * m];
    if n * m > 0 {
        with_cpu_f32(a, |av| {
            out.par_chunks_mut(m)
                .zip(av.par_chunks(4))
                .for_each(|(row, ra)| {
                    let area_a = (ra[2] - ra[0]) * (ra[3] - ra[1]);
                    for ((o, rb), &ab) in row.iter_mut().zip(bv.chunks_exact(4)).zip(&area_b) {
                        let w = (ra[2].min(rb[2]) - ra[0].max(rb[0])).max(0.0);
                        let h = (ra[3].min(rb[3]) - ra[1].max(rb[1])).max(0.0);
                        let inter = w * h;
                        *o = inter / (area_a + ab - inter);
                    }
                });
            Ok(())
        })?;
    }
    cpu_output(out, &[n, m], a.dtype())
}

/// [`box_iou`] composed from candle tensor ops (broadcast max/min): the path taken on non-CPU
/// devices, public for tests.
#[doc(hidden)]
pub fn box_iou_fallback(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let n = check_boxes(a, "box_iou a", None)?;
    let m = check_boxes(b, "box_iou b", None)?;
    let b = b.to_device(a.device())?.to_dtype(a.dtype())?;
    let area_a = box_area(a)?.reshape((n, 1))?;
    let area_b = box_area(&b)?.reshape((1, m))?;
    let a3 = a.reshape((n, 1, 4))?;
    let b3 = b.reshape((1, m, 4))?;
    let lt = a3
        .narrow(2, 0, 2)?
        .broadcast_maximum(&b3.narrow(2, 0, 2)?)?;
    let rb = a3
        .narrow(2, 2, 2)?
        .broadcast_minimum(&b3.narrow(2, 2, 2)?)?;
    let wh = (rb - lt)?.relu()?;
    let inter = (wh.narrow(2, 0, 1)? * wh.narrow(2, 1, 1)?)?.squeeze(2)?;
    let union = area_a.broadcast_add(&area_b)?.sub(&inter)?;
    Ok((inter / union)?)
}

/// Boxes (struct of arrays) of one NMS problem, already in decreasing-score order.
struct SortedBoxes {
    order: Vec<usize>,
    x1: Vec<f32>,
    y1: Vec<f32>,
    x2: Vec<f32>,
    y2: Vec<f32>,
    area: Vec<f32>,
}

impl SortedBoxes {
    /// Sorts `members` (indices into `boxes`/`scores`) by decreasing score, stably (torchvision
    /// sorts with `stable=true, descending=true`).
    fn new(boxes: &[f32], scores: &[f32], mut members: Vec<usize>) -> Self {
        members.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]));
        let k = members.len();
        let mut s = SortedBoxes {
            x1: Vec::with_capacity(k),
            y1: Vec::with_capacity(k),
            x2: Vec::with_capacity(k),
            y2: Vec::with_capacity(k),
            area: Vec::with_capacity(k),
            order: members,
        };
        for &i in &s.order {
            let b = &boxes[4 * i..4 * i + 4];
            s.x1.push(b[0]);
            s.y1.push(b[1]);
            s.x2.push(b[2]);
            s.y2.push(b[3]);
            s.area.push((b[2] - b[0]) * (b[3] - b[1]));
        }
        s
    }

    /// Greedy suppression (torchvision's CPU kernel): returns kept indices (into the original
    /// boxes) by decreasing score.
    fn run(&self, iou_threshold: f32) -> Vec<usize> {
        let k = self.order.len();
        let mut suppressed = vec![false; k];
        let mut keep = Vec::new();
        for i in 0..k {
            if suppressed[i] {
                continue;
            }
            keep.push(self.order[i]);
            let (ix1, iy1, ix2, iy2, ia) =
                (self.x1[i], self.y1[i], self.x2[i], self.y2[i], self.area[i]);
            // Branch-free over the rest (suppressed boxes stay suppressed), so it vectorises.
            let rest = i + 1..k;
            for ((((((s, &x1), &y1), &x2), &y2), &a), _) in suppressed[rest.clone()]
                .iter_mut()
                .zip(&self.x1[rest.clone()])
                .zip(&self.y1[rest.clone()])
                .zip(&self.x2[rest.clone()])
                .zip(&self.y2[rest.clone()])
                .zip(&self.area[rest.clone()])
                .zip(rest)
            {
                let w = (ix2.min(x2) - ix1.max(x1)).max(0.0);
                let h = (iy2.min(y2) - iy1.max(y1)).max(0.0);
                let inter = w * h;
                let ovr = inter / (ia + a - inter);
                *s |= ovr > iou_threshold;
            }
        }
        keep
    }
}

fn check_scores(scores: &Tensor, n: usize) -> Result<()> {
    if scores.dims() != [n] {
        return Err(Error::shape("nms scores", &[n], scores.dims()));
    }
    Ok(())
}

/// Non-maximum suppression, as `torchvision.ops.nms`: visits boxes by decreasing score
/// (stable for ties) and drops every later box whose IoU with a kept box is
/// `> iou_threshold` (the IoU is computed and compared in `f32`). Returns the kept indices by
/// decreasing score.
///
/// Reads boxes and scores on the host on every device. Errors if `boxes` is not `N x 4` or
/// `scores` is not `N`.
pub fn nms(boxes: &Tensor, scores: &Tensor, iou_threshold: f32) -> Result<Vec<usize>> {
    let n = check_boxes(boxes, "nms boxes", None)?;
    check_scores(scores, n)?;
    let b = host_f32(boxes)?;
    let s = host_f32(scores)?;
    Ok(SortedBoxes::new(&b, &s, (0..n).collect()).run(iou_threshold))
}

/// Class-aware non-maximum suppression, as `torchvision.ops.batched_nms`: boxes with
/// different `idxs` (class ids, one per box) never suppress each other. Returns the kept
/// indices by decreasing score (ties by index).
///
/// Classes run in parallel. A class-id tensor converts with `t.to_vec1::<i64>()`. Errors if
/// `boxes` is not `N x 4`, or `scores` or `idxs` does not have `N` entries.
pub fn batched_nms(
    boxes: &Tensor,
    scores: &Tensor,
    idxs: &[i64],
    iou_threshold: f32,
) -> Result<Vec<usize>> {
    let n = check_boxes(boxes, "batched_nms boxes", None)?;
    check_scores(scores, n)?;
    if idxs.len() != n {
        return Err(Error::shape("batched_nms idxs", &[n], &[idxs.len()]));
    }
    let b = host_f32(boxes)?;
    let s = host_f32(scores)?;
    let mut classes: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
    for (i, &c) in idxs.iter().enumerate() {
        classes.entry(c).or_default().push(i);
    }
    let groups: Vec<Vec<usize>> = classes.into_values().collect();
    let mut keep: Vec<usize> = groups
        .into_par_iter()
        .flat_map_iter(|members| SortedBoxes::new(&b, &s, members).run(iou_threshold))
        .collect();
    keep.sort_by(|&i, &j| s[j].total_cmp(&s[i]).then(i.cmp(&j)));
    Ok(keep)
}

/// torchvision's default `bbox_xform_clip`, `ln(1000 / 16)`: the largest `dw`/`dh` that
/// [`BoxCoder::decode`] exponentiates.
pub fn default_bbox_xform_clip() -> f32 {
    (1000f64 / 16.0).ln() as f32
}

/// The R-CNN box parameterisation, as torchvision's `BoxCoder`: encodes reference boxes
/// relative to proposals as `(dx, dy, dw, dh)` scaled by `weights`, and decodes them back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxCoder {
    /// `(wx, wy, ww, wh)`: multipliers of `dx, dy, dw, dh` (Faster R-CNN's box head uses
    /// `(10, 10, 5, 5)`, the RPN `(1, 1, 1, 1)`).
    pub weights: [f32; 4],
    /// Upper clamp of `dw` and `dh` before `exp` in [`BoxCoder::decode`].
    pub bbox_xform_clip: f32,
}

impl BoxCoder {
    /// A coder with the given weights and torchvision's default clip
    /// ([`default_bbox_xform_clip`]).
    pub fn new(weights: [f32; 4]) -> Self {
        Self {
            weights,
            bbox_xform_clip: default_bbox_xform_clip(),
        }
    }

    /// Regression targets of `reference_boxes` relative to `proposals`, as torchvision's
    /// `BoxCoder.encode_single` (`encode_boxes`):
    /// `dx = wx * (gx - px) / pw`, `dy = wy * (gy - py) / ph`, `dw = ww * ln(gw / pw)`,
    /// `dh = wh * ln(gh / ph)` with centres `x1 + 0.5 * w`.
    ///
    /// Errors unless both are `N x 4` with the same `N`.
    pub fn encode(&self, reference_boxes: &Tensor, proposals: &Tensor) -> Result<Tensor> {
        let n = check_boxes(proposals, "BoxCoder::encode proposals", None)?;
        check_boxes(reference_boxes, "BoxCoder::encode reference_boxes", Some(n))?;
        if !proposals.device().is_cpu() {
            return self.encode_fallback(reference_boxes, proposals);
        }
        let r = host_f32(reference_boxes)?;
        let [wx, wy, ww, wh] = self.weights;
        let mut out = vec![0f32; n * 4];
        with_cpu_f32(proposals, |p| {
            for ((o, p), g) in out
                .chunks_exact_mut(4)
                .zip(p.chunks_exact(4))
                .zip(r.chunks_exact(4))
            {
                let ex_w = p[2] - p[0];
                let ex_h = p[3] - p[1];
                let ex_cx = p[0] + 0.5 * ex_w;
                let ex_cy = p[1] + 0.5 * ex_h;
                let gt_w = g[2] - g[0];
                let gt_h = g[3] - g[1];
                let gt_cx = g[0] + 0.5 * gt_w;
                let gt_cy = g[1] + 0.5 * gt_h;
                o[0] = wx * (gt_cx - ex_cx) / ex_w;
                o[1] = wy * (gt_cy - ex_cy) / ex_h;
                o[2] = ww * (gt_w / ex_w).ln();
                o[3] = wh * (gt_h / ex_h).ln();
            }
            Ok(())
        })?;
        cpu_output(out, &[n, 4], proposals.dtype())
    }

    /// Boxes from regression deltas, as torchvision's `BoxCoder.decode_single`: `rel_codes` may
    /// hold `K` boxes per row (`N x 4K`, class-specific regression), all decoded against the
    /// row's box; `dw`, `dh` are clamped at `bbox_xform_clip` before `exp`.
    ///
    /// Errors if `boxes` is not `N x 4` or `rel_codes` is not `N x 4K`.
    pub fn decode(&self, rel_codes: &Tensor, boxes: &Tensor) -> Result<Tensor> {
        let (n, k4) = self.check_decode(rel_codes, boxes)?;
        if !rel_codes.device().is_cpu() {
            return self.decode_fallback(rel_codes, boxes);
        }
        let b = host_f32(boxes)?;
        let [wx, wy, ww, wh] = self.weights;
        let clip = self.bbox_xform_clip;
        let mut out = vec![0f32; n * k4];
        if k4 > 0 {
            with_cpu_f32(rel_codes, |rel| {
                for ((orow, rrow), bx) in out
                    .chunks_exact_mut(k4)
                    .zip(rel.chunks_exact(k4))
                    .zip(b.chunks_exact(4))
                {
                    let width = bx[2] - bx[0];
                    let height = bx[3] - bx[1];
                    let ctr_x = bx[0] + 0.5 * width;
                    let ctr_y = bx[1] + 0.5 * height;
                    for (o, d) in orow.chunks_exact_mut(4).zip(rrow.chunks_exact(4)) {
                        let dx = d[0] / wx;
                        let dy = d[1] / wy;
                        let dw = (d[2] / ww).min(clip);
                        let dh = (d[3] / wh).min(clip);
                        let pcx = dx * width + ctr_x;
                        let pcy = dy * height + ctr_y;
                        let pw = dw.exp() * width;
                        let ph = dh.exp() * height;
                        let (cw, ch) = (0.5 * pw, 0.5 * ph);
                        o[0] = pcx - cw;
                        o[1] = pcy - ch;
                        o[2] = pcx + cw;
                        o[3] = pcy + ch;
                    }
                }
                Ok(())
            })?;
        }
        cpu_output(out, &[n, k4], rel_codes.dtype())
    }

    fn check_decode(&self, rel_codes: &Tensor, boxes: &Tensor) -> Result<(usize, usize)> {
        let n = check_boxes(boxes, "BoxCoder::decode boxes", None)?;
        match *rel_codes.dims() {
            [r, k4] if r == n && k4 % 4 == 0 => Ok((n, k4)),
            [_, k4] => Err(Error::shape(
                "BoxCoder::decode rel_codes",
                &[n, k4.div_ceil(4).max(1) * 4],
                rel_codes.dims(),
            )),
            ref d => Err(Error::InvalidArgument(format!(
                "BoxCoder::decode: `rel_codes` must be N x 4K, got shape {d:?}"
            ))),
        }
    }

    /// [`BoxCoder::encode`] composed from candle tensor ops: the path taken on non-CPU
    /// devices, public for tests.
    #[doc(hidden)]
    pub fn encode_fallback(&self, reference_boxes: &Tensor, proposals: &Tensor) -> Result<Tensor> {
        let n = check_boxes(proposals, "BoxCoder::encode proposals", None)?;
        check_boxes(reference_boxes, "BoxCoder::encode reference_boxes", Some(n))?;
        let r = reference_boxes
            .to_device(proposals.device())?
            .to_dtype(proposals.dtype())?;
        let [wx, wy, ww, wh] = self.weights.map(f64::from);
        let col = |t: &Tensor, i: usize| t.narrow(1, i, 1);
        let ex_w = (col(proposals, 2)? - col(proposals, 0)?)?;
        let ex_h = (col(proposals, 3)? - col(proposals, 1)?)?;
        let ex_cx = (col(proposals, 0)? + ex_w.affine(0.5, 0.0)?)?;
        let ex_cy = (col(proposals, 1)? + ex_h.affine(0.5, 0.0)?)?;
        let gt_w = (col(&r, 2)? - col(&r, 0)?)?;
        let gt_h = (col(&r, 3)? - col(&r, 1)?)?;
        let gt_cx = (col(&r, 0)? + gt_w.affine(0.5, 0.0)?)?;
        let gt_cy = (col(&r, 1)? + gt_h.affine(0.5, 0.0)?)?;
        let dx = ((gt_cx - ex_cx)?.affine(wx, 0.0)? / &ex_w)?;
        let dy = ((gt_cy - ex_cy)?.affine(wy, 0.0)? / &ex_h)?;
        let dw = (gt_w / ex_w)?.log()?.affine(ww, 0.0)?;
        let dh = (gt_h / ex_h)?.log()?.affine(wh, 0.0)?;
        Ok(Tensor::cat(&[dx, dy, dw, dh], 1)?)
    }

    /// [`BoxCoder::decode`] composed from candle tensor ops: the path taken on non-CPU
    /// devices, public for tests.
    #[doc(hidden)]
    pub fn decode_fallback(&self, rel_codes: &Tensor, boxes: &Tensor) -> Result<Tensor> {
        let (n, k4) = self.check_decode(rel_codes, boxes)?;
        let k = k4 / 4;
        let dev = rel_codes.device();
        let dt = rel_codes.dtype();
        if n * k == 0 {
            return Ok(Tensor::zeros((n, k4), dt, dev)?);
        }
        let b = boxes.to_device(dev)?.to_dtype(dt)?.reshape((n, 1, 4))?;
        let rel = rel_codes.reshape((n, k, 4))?;
        let col = |t: &Tensor, i: usize| t.narrow(2, i, 1);
        let width = (col(&b, 2)? - col(&b, 0)?)?;
        let height = (col(&b, 3)? - col(&b, 1)?)?;
        let ctr_x = (col(&b, 0)? + width.affine(0.5, 0.0)?)?;
        let ctr_y = (col(&b, 1)? + height.affine(0.5, 0.0)?)?;
        let [wx, wy, ww, wh] = self.weights;
        let clip = self.bbox_xform_clip as f64;
        let div = |t: Tensor, w: f32| -> Result<Tensor> {
            Ok((t / Tensor::new(w, dev)?
                .to_dtype(dt)?
                .reshape((1, 1, 1))?
                .broadcast_as((n, k, 1))?)?)
        };
        let dx = div(col(&rel, 0)?, wx)?;
        let dy = div(col(&rel, 1)?, wy)?;
        let dw = div(col(&rel, 2)?, ww)?.minimum(clip)?;
        let dh = div(col(&rel, 3)?, wh)?.minimum(clip)?;
        let pcx = dx.broadcast_mul(&width)?.broadcast_add(&ctr_x)?;
        let pcy = dy.broadcast_mul(&height)?.broadcast_add(&ctr_y)?;
        let cw = dw.exp()?.broadcast_mul(&width)?.affine(0.5, 0.0)?;
        let ch = dh.exp()?.broadcast_mul(&height)?.affine(0.5, 0.0)?;
        let out = Tensor::cat(
            &[(&pcx - &cw)?, (&pcy - &ch)?, (&pcx + &cw)?, (&pcy + &ch)?],
            D::Minus1,
        )?;
        Ok(out.reshape((n, k4))?)
    }
}
