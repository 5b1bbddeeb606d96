//! Polygon and box rasterisation: pycocotools' `rleFrPoly` / `rleFrBbox` (`frPyObjects`) and
//! the polygon merge of `COCO.annToRLE`.

use super::{bad, Rle};
use crate::Result;

/// The upsampling factor of `rleFrPoly`.
const SCALE: f64 = 5.0;

/// `(int)v` of C on x86-64 (cvttsd2si): truncation toward zero, and `INT_MIN` for NaN and
/// out-of-range values.
fn c_int(v: f64) -> i32 {
    if v.is_nan() || v >= 2147483648.0 || v <= -2147483649.0 {
        i32::MIN
    } else {
        v as i32
    }
}

impl Rle {
    /// Rasterises a polygon `[x0, y0, x1, y1, ..]` (pixel coordinates, pixel centres at
    /// integers) exactly as pycocotools' `rleFrPoly` (`frPyObjects([poly], h, w)`).
    pub fn from_polygon(xy: &[f64], height: usize, width: usize) -> Result<Rle> {
        if xy.len() < 2 || !xy.len().is_multiple_of(2) {
            return Err(bad(format!(
                "a polygon needs an even number (>= 2) of coordinates, got {}",
                xy.len()
            )));
        }
        if let Some(v) = xy.iter().find(|v| !v.is_finite() || v.abs() > 1e8) {
            return Err(bad(format!(
                "polygon coordinate {v} is not finite or beyond 1e8"
            )));
        }
        let n = height
            .checked_mul(width)
            .filter(|&n| n <= u32::MAX as usize)
            .ok_or_else(|| bad(format!("mask size {height}x{width} is too large")))?;
        let (u, v) = upsampled_boundary(xy)?;
        let (bx, by) = y_boundary(&u, &v, height, width);
        Rle::new(height, width, boundary_counts(&bx, &by, height, n))
    }

    /// Rasterises the polygons of one object and merges them (union), as `COCO.annToRLE`
    /// does for a polygon segmentation.
    pub fn from_polygons<P: AsRef<[f64]>>(polys: &[P], height: usize, width: usize) -> Result<Rle> {
        let rles = polys
            .iter()
            .map(|p| Rle::from_polygon(p.as_ref(), height, width))
            .collect::<Result<Vec<_>>>()?;
        Rle::merge(&rles, false)
    }

    /// The mask of a box `[x, y, w, h]`, as `frPyObjects(np.array([bbox]), h, w)` (`rleFrBbox`:
    /// the box's corner polygon rasterised by [`Rle::from_polygon`]).
    pub fn from_bbox(bbox: [f64; 4], height: usize, width: usize) -> Result<Rle> {
        let (xs, ys) = (bbox[0], bbox[1]);
        let (xe, ye) = (xs + bbox[2], ys + bbox[3]);
        Rle::from_polygon(&[xs, ys, xs, ye, xe, ye, xe, ys], height, width)
    }
}

/// `rleFrPoly`'s first stage: the polygon (an even number >= 2 of finite coordinates)
/// upsampled by [`SCALE`] and the discrete points `(u, v)` densely along its whole closed
/// boundary. Fails when the boundary has more than 2^28 points.
fn upsampled_boundary(xy: &[f64]) -> Result<(Vec<i32>, Vec<i32>)> {
    let k = xy.len() / 2;
    let mut x: Vec<i32> = (0..k).map(|j| c_int(SCALE * xy[2 * j] + 0.5)).collect();
    let mut y: Vec<i32> = (0..k).map(|j| c_int(SCALE * xy[2 * j + 1] + 0.5)).collect();
    x.push(x[0]);
    y.push(y[0]);
    let m: usize = (0..k)
        .map(|j| {
            (x[j] - x[j + 1])
                .unsigned_abs()
                .max((y[j] - y[j + 1]).unsigned_abs()) as usize
                + 1
        })
        .sum();
    if m > 1 << 28 {
        return Err(bad(format!("polygon perimeter of {m} points is too long")));
    }
    let mut u: Vec<i32> = Vec::with_capacity(m);
    let mut v: Vec<i32> = Vec::with_capacity(m);
    for j in 0..k {
        let (mut xs, mut xe, mut ys, mut ye) = (x[j], x[j + 1], y[j], y[j + 1]);
        let dx = (xe - xs).abs();
        let dy = (ys - ye).abs();
        let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
        if flip {
            std::mem::swap(&mut xs, &mut xe);
            std::mem::swap(&mut ys, &mut ye);
        }
        let s = if dx >= dy {
            (ye - ys) as f64 / dx as f64
        } else {
            (xe - xs) as f64 / dy as f64
        };
        if dx >= dy {
            for d in 0..=dx {
                let t = if flip { dx - d } else { d };
                u.push(t + xs);
                v.push(c_int(ys as f64 + s * t as f64 + 0.5));
            }
        } else {
            for d in 0..=dy {
                let t = if flip { dy - d } else { d };
                v.push(t + ys);
                u.push(c_int(xs as f64 + s * t as f64 + 0.5));
            }
        }
    }
    Ok((u, v))
}

/// `rleFrPoly`'s second stage: the points where the upsampled boundary `(u, v)` crosses a
/// pixel column, downsampled to the `height x width` mask (`x` in `0..width`, `y` clamped to
/// `0..=height`).
fn y_boundary(u: &[i32], v: &[i32], height: usize, width: usize) -> (Vec<i32>, Vec<i32>) {
    let wm1 = width.wrapping_sub(1) as f64;
    let mut bx: Vec<i32> = Vec::new();
    let mut by: Vec<i32> = Vec::new();
    for j in 1..u.len() {
        if u[j] == u[j - 1] {
            continue;
        }
        let xd = if u[j] < u[j - 1] { u[j] } else { u[j] - 1 } as f64;
        let xd = (xd + 0.5) / SCALE - 0.5;
        if xd.floor() != xd || xd < 0.0 || xd > wm1 {
            continue;
        }
        let yd = if v[j] < v[j - 1] { v[j] } else { v[j - 1] } as f64;
        let mut yd = (yd + 0.5) / SCALE - 0.5;
        if yd < 0.0 {
            yd = 0.0;
        } else if yd > height as f64 {
            yd = height as f64;
        }
        yd = yd.ceil();
        bx.push(xd as i32);
        by.push(yd as i32);
    }
    (bx, by)
}

/// `rleFrPoly`'s last stage: the RLE counts of an `n`-pixel mask whose runs toggle at the
/// y-boundary points `(bx, by)` (column-major positions, sorted, as differences; empty runs
/// merged away).
fn boundary_counts(bx: &[i32], by: &[i32], height: usize, n: usize) -> Vec<u32> {
    let hi = height as i32;
    let mut a: Vec<u32> = bx
        .iter()
        .zip(by)
        .map(|(&xx, &yy)| xx.wrapping_mul(hi).wrapping_add(yy) as u32)
        .collect();
    a.push(n as u32);
    a.sort_unstable();
    let mut p = 0u32;
    for e in a.iter_mut() {
        let t = *e;
        *e -= p;
        p = t;
    }
    let mut b: Vec<u32> = Vec::with_capacity(a.len());
    let mut j = 0;
    b.push(a[j]);
    j += 1;
    while j < a.len() {
        if a[j] > 0 {
            b.push(a[j]);
            j += 1;
        } else {
            j += 1;
            if j < a.len() {
                if let Some(last) = b.last_mut() {
                    *last += a[j];
                }
                j += 1;
            }
        }
    }
    b
}
