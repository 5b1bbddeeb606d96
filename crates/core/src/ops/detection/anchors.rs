//! Anchor generation.
//!
//! [`detectron_cell_anchors`] is Detectron v1's `generate_anchors` (`lib/modeling/
//! generate_anchors.py`, also py-faster-rcnn's): a reference window `[0, 0, s - 1, s - 1]` for
//! the stride `s`; for each aspect ratio `r` (height / width) a box of the same area with
//! `w = round(sqrt(s * s / r))`, `h = round(w * r)` (numpy's round half to even) about the
//! window's centre `(s - 1) / 2`; then each of those scaled by `size / s`. Rows: ratio-major,
//! then size. [`torchvision_cell_anchors`] is torchvision's `AnchorGenerator.generate_anchors`
//! (centred at 0, `round([-w, -h, w, h] / 2)`). [`grid_anchors`] shifts cell anchors over a
//! feature grid (`x * stride`, `y * stride`), position-major with the anchor fastest, which
//! is the order of an RPN's `N x 4A x H x W` deltas transposed to `(H, W, A, 4)`.
//!
//! # Example
//! ```
//! use segkit_core::ops::detection::detectron_cell_anchors;
//! // FPN level 2 of Detectron: stride 4, size 32, ratios 0.5, 1, 2.
//! let a = detectron_cell_anchors(4.0, &[32.0], &[0.5, 1.0, 2.0]).unwrap();
//! assert_eq!(a[1], [-14.0, -14.0, 17.0, 17.0]);
//! ```

use crate::{Error, Result};

use super::Box4;

fn check(what: &str, stride: f64, sizes: &[f64], ratios: &[f64]) -> Result<()> {
    let ok = |v: &f64| v.is_finite() && *v > 0.0;
    if !ok(&stride) || sizes.is_empty() || ratios.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{what}: stride must be positive and sizes / aspect ratios non-empty, got stride \
             {stride}, sizes {sizes:?}, ratios {ratios:?}"
        )));
    }
    if !sizes.iter().all(ok) || !ratios.iter().all(ok) {
        return Err(Error::InvalidArgument(format!(
            "{what}: sizes and aspect ratios must be positive and finite, got {sizes:?}, {ratios:?}"
        )));
    }
    Ok(())
}

/// `[x_ctr - (w - 1) / 2, y_ctr - (h - 1) / 2, x_ctr + (w - 1) / 2, y_ctr + (h - 1) / 2]`.
fn mk(w: f64, h: f64, xc: f64, yc: f64) -> [f64; 4] {
    [
        xc - 0.5 * (w - 1.0),
        yc - 0.5 * (h - 1.0),
        xc + 0.5 * (w - 1.0),
        yc + 0.5 * (h - 1.0),
    ]
}

/// Detectron v1's cell anchors for one stride (see the module docs), in `f64` as numpy
/// computes them. Errors on a non-positive stride, size or ratio, or empty lists.
pub fn detectron_cell_anchors(stride: f64, sizes: &[f64], ratios: &[f64]) -> Result<Vec<[f64; 4]>> {
    check("detectron_cell_anchors", stride, sizes, ratios)?;
    // The reference window [0, 0, stride - 1, stride - 1]: w = h = stride, centre (s - 1) / 2.
    let (w, h) = (stride, stride);
    let (xc, yc) = (0.5 * (w - 1.0), 0.5 * (h - 1.0));
    let area = w * h;
    let mut out = Vec::with_capacity(ratios.len() * sizes.len());
    for &r in ratios {
        let ws = (area / r).sqrt().round_ties_even();
        let hs = (ws * r).round_ties_even();
        let a = mk(ws, hs, xc, yc);
        // _scale_enum: the ratio anchor's own width, height and centre, scaled.
        let (aw, ah) = (a[2] - a[0] + 1.0, a[3] - a[1] + 1.0);
        let (axc, ayc) = (a[0] + 0.5 * (aw - 1.0), a[1] + 0.5 * (ah - 1.0));
        for &s in sizes {
            let scale = s / stride;
            out.push(mk(aw * scale, ah * scale, axc, ayc));
        }
    }
    Ok(out)
}

/// torchvision's cell anchors (`AnchorGenerator.generate_anchors` for one level): for ratio
/// `r`, `h_ratio = sqrt(r)`, `w_ratio = 1 / h_ratio`, `w = w_ratio * size`, `h = h_ratio * size`
/// (in `f32`), anchor `round([-w, -h, w, h] / 2)`. Rows: ratio-major, then size.
pub fn torchvision_cell_anchors(sizes: &[f64], ratios: &[f64]) -> Result<Vec<[f64; 4]>> {
    check("torchvision_cell_anchors", 1.0, sizes, ratios)?;
    let mut out = Vec::with_capacity(ratios.len() * sizes.len());
    for &r in ratios {
        let hr = (r as f32).sqrt();
        let wr = 1.0 / hr;
        for &s in sizes {
            let (w, h) = (wr * s as f32, hr * s as f32);
            let a = [-w, -h, w, h].map(|v| f64::from((v / 2.0).round_ties_even()));
            out.push(a);
        }
    }
    Ok(out)
}

/// Anchors of a `height x width` feature grid with the given stride: for each position
/// `(y, x)` (row-major) and each cell anchor `a`, `a + [x s, y s, x s, y s]` computed in `f64`
/// and rounded to `f32`. Returns `height * width * cell.len()` boxes.
pub fn grid_anchors(cell: &[[f64; 4]], stride: f64, height: usize, width: usize) -> Vec<Box4> {
    let mut out = Vec::with_capacity(height * width * cell.len());
    for y in 0..height {
        let sy = y as f64 * stride;
        for x in 0..width {
            let sx = x as f64 * stride;
            for a in cell {
                out.push([
                    (a[0] + sx) as f32,
                    (a[1] + sy) as f32,
                    (a[2] + sx) as f32,
                    (a[3] + sy) as f32,
                ]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detectron_level2_anchors() {
        // numpy: generate_anchors(stride=4, sizes=(32,), aspect_ratios=(0.5, 1, 2))
        let a = detectron_cell_anchors(4.0, &[32.0], &[0.5, 1.0, 2.0]).unwrap();
        assert_eq!(a[0], [-22.0, -10.0, 25.0, 13.0]);
        assert_eq!(a[2], [-10.0, -22.0, 13.0, 25.0]);
        assert!(detectron_cell_anchors(0.0, &[32.0], &[1.0]).is_err());
        assert!(detectron_cell_anchors(4.0, &[], &[1.0]).is_err());
        assert!(torchvision_cell_anchors(&[32.0], &[-1.0]).is_err());
        let g = grid_anchors(&a, 4.0, 2, 3);
        assert_eq!(g.len(), 18);
        assert_eq!(
            g[3 * 4 + 1],
            [-14.0 + 4.0, -14.0 + 4.0, 17.0 + 4.0, 17.0 + 4.0]
        );
    }
}
