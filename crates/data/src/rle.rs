//! COCO run-length encoding (RLE) of binary masks, as pycocotools' `mask` module.
//!
//! A port of `common/maskApi.c` of the COCO API (pycocotools 2.0.11, whose `rleToBbox` is the
//! fixed version of github.com/ppwwyyxx/cocoapi) and of the Python glue in `_mask.pyx`:
//!
//! | segkit | pycocotools |
//! |---|---|
//! | [`Rle::from_mask`] / [`Rle::to_mask`] | `mask.encode` / `mask.decode` |
//! | [`Rle::to_compressed`] / [`Rle::from_compressed`] | the `counts` string of a compressed RLE (`rleToString` / `rleFrString`) |
//! | [`Rle::area`], [`Rle::to_bbox`] | `mask.area`, `mask.toBbox` |
//! | [`Rle::iou`] | `mask.iou` on RLEs (with `iscrowd`) |
//! | [`Rle::merge`] | `mask.merge` |
//! | [`Rle::from_polygon`], [`Rle::from_polygons`], [`Rle::from_bbox`] | `mask.frPyObjects` (`rleFrPoly`, `rleFrBbox`); `from_polygons` merges like `COCO.annToRLE` |
//!
//! Counts run over the mask in column-major (Fortran) order, starting with a run of zeros;
//! segkit's masks are row-major `H x W` buffers and the conversion happens inside
//! [`Rle::from_mask`] / [`Rle::to_mask`]. The compressed string is byte-equal to pycocotools'
//! (checked in `crates/data/tests/rle.rs` against pycocotools on real masks and polygons).

use crate::{Error, Result};

/// A binary mask in COCO's (uncompressed) run-length encoding.
///
/// Invariant: the counts sum to `height * width`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rle {
    height: usize,
    width: usize,
    counts: Vec<u32>,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

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
    /// An RLE from its counts (column-major runs, zeros first), as stored in an uncompressed
    /// COCO RLE (`{"size": [h, w], "counts": [..]}`). Fails unless the counts sum to
    /// `height * width`.
    pub fn new(height: usize, width: usize, counts: Vec<u32>) -> Result<Self> {
        let n = height
            .checked_mul(width)
            .filter(|&n| n <= u32::MAX as usize)
            .ok_or_else(|| bad(format!("RLE size {height}x{width} is too large")))?;
        let sum: u64 = counts.iter().map(|&c| c as u64).sum();
        if sum != n as u64 {
            return Err(bad(format!(
                "RLE counts sum to {sum}, but the mask is {height}x{width} = {n} pixels"
            )));
        }
        Ok(Rle {
            height,
            width,
            counts,
        })
    }

    /// The empty (all-zero) mask.
    pub fn zeros(height: usize, width: usize) -> Result<Self> {
        let n = height.saturating_mul(width);
        let n =
            u32::try_from(n).map_err(|_| bad(format!("RLE size {height}x{width} is too large")))?;
        Ok(Rle {
            height,
            width,
            counts: vec![n],
        })
    }

    /// Encodes a row-major `height x width` mask (nonzero = foreground), as
    /// `pycocotools.mask.encode(np.asfortranarray(mask))`.
    pub fn from_mask<T: Copy + Default + PartialEq>(
        mask: &[T],
        height: usize,
        width: usize,
    ) -> Result<Self> {
        let n = height
            .checked_mul(width)
            .filter(|&n| n <= u32::MAX as usize)
            .ok_or_else(|| bad(format!("mask size {height}x{width} is too large")))?;
        if mask.len() != n {
            return Err(bad(format!(
                "mask has {} elements, expected {height}x{width} = {n}",
                mask.len()
            )));
        }
        let zero = T::default();
        let mut counts = Vec::new();
        let mut prev = false;
        let mut c: u32 = 0;
        for x in 0..width {
            for y in 0..height {
                let v = mask[y * width + x] != zero;
                if v != prev {
                    counts.push(c);
                    c = 0;
                    prev = v;
                }
                c += 1;
            }
        }
        counts.push(c);
        Ok(Rle {
            height,
            width,
            counts,
        })
    }

    /// Decodes to a row-major `height x width` mask of 0 / 1, as `pycocotools.mask.decode`.
    pub fn to_mask(&self) -> Vec<u8> {
        let (h, w) = (self.height, self.width);
        let mut out = vec![0u8; h * w];
        let mut j = 0usize; // column-major position
        let mut v = false;
        for &c in &self.counts {
            let c = c as usize;
            if v {
                for k in j..j + c {
                    out[(k % h) * w + k / h] = 1;
                }
            }
            j += c;
            v = !v;
        }
        out
    }

    /// Mask height.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Mask width.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The runs, column-major, starting with zeros.
    pub fn counts(&self) -> &[u32] {
        &self.counts
    }

    /// COCO's compressed `counts` string (`rleToString`: LEB128-like, 5 bits a character in
    /// ASCII 48..111, each count after the second stored as the difference to the count two
    /// places earlier).
    pub fn to_compressed(&self) -> String {
        let cnts = &self.counts;
        let mut s = String::with_capacity(cnts.len() * 2);
        for i in 0..cnts.len() {
            let mut x = cnts[i] as i64;
            if i > 2 {
                x -= cnts[i - 2] as i64;
            }
            let mut more = true;
            while more {
                let mut c = (x & 0x1f) as u8;
                x >>= 5;
                more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
                if more {
                    c |= 0x20;
                }
                s.push((c + 48) as char);
            }
        }
        s
    }

    /// Parses COCO's compressed `counts` string (`rleFrString`) for a `height x width` mask.
    /// Unlike pycocotools, which trusts the string, this fails on characters outside 48..111,
    /// on a truncated count and on counts that do not sum to `height * width`.
    pub fn from_compressed(counts: &str, height: usize, width: usize) -> Result<Self> {
        let s = counts.as_bytes();
        let mut cnts: Vec<u32> = Vec::with_capacity(s.len());
        let mut p = 0;
        while p < s.len() {
            let mut x: i64 = 0;
            let mut k = 0u32;
            let mut more = true;
            while more {
                let Some(&ch) = s.get(p) else {
                    return Err(bad("compressed RLE ends inside a count"));
                };
                if !(48..=111).contains(&ch) {
                    return Err(bad(format!(
                        "compressed RLE has character {:?} at {p} (expected ASCII 48..111)",
                        ch as char
                    )));
                }
                if k >= 12 {
                    return Err(bad("compressed RLE has a count longer than 12 characters"));
                }
                let c = (ch - 48) as i64;
                x |= (c & 0x1f) << (5 * k);
                more = c & 0x20 != 0;
                p += 1;
                k += 1;
                if !more && (c & 0x10) != 0 {
                    x |= -1i64 << (5 * k);
                }
            }
            let m = cnts.len();
            if m > 2 {
                x += cnts[m - 2] as i64;
            }
            let c = u32::try_from(x)
                .map_err(|_| bad(format!("compressed RLE decodes to count {x} at run {m}")))?;
            cnts.push(c);
        }
        Rle::new(height, width, cnts)
    }

    /// Foreground pixel count (`mask.area`).
    pub fn area(&self) -> u64 {
        self.counts
            .iter()
            .skip(1)
            .step_by(2)
            .map(|&c| c as u64)
            .sum()
    }

    /// Tight bounding box `[x, y, w, h]` (`mask.toBbox`, pycocotools 2.0.11's `rleToBbox`);
    /// `[0, 0, 0, 0]` for an empty mask.
    pub fn to_bbox(&self) -> [f64; 4] {
        let h = self.height as u32;
        let w = self.width as u32;
        let m = (self.counts.len() / 2) * 2;
        if m == 0 || h == 0 {
            return [0.0; 4];
        }
        let (mut xs, mut ys, mut xe, mut ye) = (w, h, 0u32, 0u32);
        let mut cc: u32 = 0;
        for j in 0..m {
            let start = cc;
            cc = cc.wrapping_add(self.counts[j]);
            if j % 2 == 0 || self.counts[j] == 0 {
                continue;
            }
            let (y_start, x_start) = (start % h, start / h);
            let (y_end, x_end) = ((cc - 1) % h, (cc - 1) / h);
            xs = xs.min(x_start);
            xe = xe.max(x_end);
            if x_start < x_end {
                ys = 0;
                ye = h - 1;
            } else {
                ys = ys.min(y_start);
                ye = ye.max(y_end);
            }
        }
        // unsigned arithmetic as in C (wraps only for masks without foreground runs)
        [
            xs as f64,
            ys as f64,
            xe.wrapping_sub(xs).wrapping_add(1) as f64,
            ye.wrapping_sub(ys).wrapping_add(1) as f64,
        ]
    }

    /// Union (`intersect = false`) or intersection of masks of one size (`mask.merge`).
    /// Merging nothing gives the 0 x 0 mask, as pycocotools.
    pub fn merge(rles: &[Rle], intersect: bool) -> Result<Rle> {
        let Some(first) = rles.first() else {
            return Ok(Rle {
                height: 0,
                width: 0,
                counts: Vec::new(),
            });
        };
        let (h, w) = (first.height, first.width);
        if let Some(r) = rles.iter().find(|r| r.height != h || r.width != w) {
            return Err(bad(format!(
                "cannot merge RLEs of sizes {h}x{w} and {}x{}",
                r.height, r.width
            )));
        }
        if rles.len() == 1 {
            return Ok(first.clone());
        }
        if h * w == 0 {
            return Rle::zeros(h, w);
        }
        let mut cnts = first.counts.clone();
        for b in &rles[1..] {
            let a = std::mem::take(&mut cnts);
            let (am, bm) = (a.len(), b.counts.len());
            let (mut ca, mut cb) = (a[0], b.counts[0]);
            let (mut v, mut va, mut vb) = (false, false, false);
            let (mut ia, mut ib) = (1usize, 1usize);
            let mut cc: u32 = 0;
            let mut ct: u32 = 1;
            while ct > 0 {
                let c = ca.min(cb);
                cc += c;
                ct = 0;
                ca -= c;
                if ca == 0 && ia < am {
                    ca = a[ia];
                    ia += 1;
                    va = !va;
                }
                ct += ca;
                cb -= c;
                if cb == 0 && ib < bm {
                    cb = b.counts[ib];
                    ib += 1;
                    vb = !vb;
                }
                ct += cb;
                let vp = v;
                v = if intersect { va && vb } else { va || vb };
                if v != vp || ct == 0 {
                    cnts.push(cc);
                    cc = 0;
                }
            }
        }
        Ok(Rle {
            height: h,
            width: w,
            counts: cnts,
        })
    }

    /// IoU of every detection with every ground truth (`mask.iou(dt, gt, iscrowd)`):
    /// `out[d][g]`. For a crowd ground truth the union is the detection's area.
    pub fn iou(dt: &[Rle], gt: &[Rle], iscrowd: &[bool]) -> Result<Vec<Vec<f64>>> {
        let dt: Vec<&Rle> = dt.iter().collect();
        let gt: Vec<&Rle> = gt.iter().collect();
        iou_refs(&dt, &gt, iscrowd)
    }

    /// Rasterises a polygon `[x0, y0, x1, y1, ..]` (pixel coordinates, pixel centres at
    /// integers) exactly as pycocotools' `rleFrPoly` (`frPyObjects([poly], h, w)`).
    pub fn from_polygon(xy: &[f64], height: usize, width: usize) -> Result<Rle> {
        if xy.len() < 2 || xy.len() % 2 != 0 {
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
        let k = xy.len() / 2;
        let scale = 5.0f64;
        // upsample and get discrete points densely along the entire boundary
        let mut x: Vec<i32> = (0..k).map(|j| c_int(scale * xy[2 * j] + 0.5)).collect();
        let mut y: Vec<i32> = (0..k).map(|j| c_int(scale * xy[2 * j + 1] + 0.5)).collect();
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
        // get points along the y-boundary and downsample
        let wm1 = width.wrapping_sub(1) as f64;
        let mut bx: Vec<i32> = Vec::new();
        let mut by: Vec<i32> = Vec::new();
        for j in 1..u.len() {
            if u[j] == u[j - 1] {
                continue;
            }
            let xd = if u[j] < u[j - 1] { u[j] } else { u[j] - 1 } as f64;
            let xd = (xd + 0.5) / scale - 0.5;
            if xd.floor() != xd || xd < 0.0 || xd > wm1 {
                continue;
            }
            let yd = if v[j] < v[j - 1] { v[j] } else { v[j - 1] } as f64;
            let mut yd = (yd + 0.5) / scale - 0.5;
            if yd < 0.0 {
                yd = 0.0;
            } else if yd > height as f64 {
                yd = height as f64;
            }
            yd = yd.ceil();
            bx.push(xd as i32);
            by.push(yd as i32);
        }
        // compute the RLE given the y-boundary points
        let hi = height as i32;
        let mut a: Vec<u32> = bx
            .iter()
            .zip(&by)
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
        Rle::new(height, width, b)
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

/// [`Rle::iou`] on references.
pub(crate) fn iou_refs(dt: &[&Rle], gt: &[&Rle], iscrowd: &[bool]) -> Result<Vec<Vec<f64>>> {
    if iscrowd.len() != gt.len() {
        return Err(bad(format!(
            "iscrowd has {} entries for {} ground truths",
            iscrowd.len(),
            gt.len()
        )));
    }
    if let Some(first) = dt.first().or(gt.first()) {
        let (h, w) = (first.height, first.width);
        if let Some(r) = dt
            .iter()
            .chain(gt.iter())
            .find(|r| r.height != h || r.width != w)
        {
            return Err(bad(format!(
                "IoU of RLEs of sizes {h}x{w} and {}x{}",
                r.height, r.width
            )));
        }
    }
    let db: Vec<[f64; 4]> = dt.iter().map(|r| r.to_bbox()).collect();
    let gb: Vec<[f64; 4]> = gt.iter().map(|r| r.to_bbox()).collect();
    let mut out = bbox_iou(&db, &gb, iscrowd);
    for (d, row) in out.iter_mut().enumerate() {
        for (g, o) in row.iter_mut().enumerate() {
            if *o <= 0.0 {
                continue;
            }
            let (a, b) = (&dt[d], &gt[g]);
            let (i, u) = rle_intersection_union(&a.counts, &b.counts);
            let u = if i == 0 {
                1
            } else if iscrowd[g] {
                a.area()
            } else {
                u
            };
            *o = i as f64 / u as f64;
        }
    }
    Ok(out)
}

/// Intersection and union pixel counts of two RLEs of one size (the run walk of `rleIou`).
fn rle_intersection_union(a: &[u32], b: &[u32]) -> (u64, u64) {
    if a.is_empty() || b.is_empty() {
        return (0, 0);
    }
    let (mut ca, mut cb) = (a[0], b[0]);
    let (mut va, mut vb) = (false, false);
    let (mut ia, mut ib) = (1usize, 1usize);
    let (mut i, mut u) = (0u64, 0u64);
    let mut ct: u64 = 1;
    while ct > 0 {
        let c = ca.min(cb);
        if va || vb {
            u += c as u64;
            if va && vb {
                i += c as u64;
            }
        }
        ct = 0;
        ca -= c;
        if ca == 0 && ia < a.len() {
            ca = a[ia];
            ia += 1;
            va = !va;
        }
        ct += ca as u64;
        cb -= c;
        if cb == 0 && ib < b.len() {
            cb = b[ib];
            ib += 1;
            vb = !vb;
        }
        ct += cb as u64;
    }
    (i, u)
}

/// Box IoU `out[d][g]` of `[x, y, w, h]` boxes (`bbIou`); for a crowd ground truth the union is
/// the detection's area.
pub fn bbox_iou(dt: &[[f64; 4]], gt: &[[f64; 4]], iscrowd: &[bool]) -> Vec<Vec<f64>> {
    dt.iter()
        .map(|d| {
            let da = d[2] * d[3];
            gt.iter()
                .enumerate()
                .map(|(g, gb)| {
                    let ga = gb[2] * gb[3];
                    let crowd = iscrowd.get(g).copied().unwrap_or(false);
                    let w = (d[2] + d[0]).min(gb[2] + gb[0]) - d[0].max(gb[0]);
                    if w <= 0.0 {
                        return 0.0;
                    }
                    let h = (d[3] + d[1]).min(gb[3] + gb[1]) - d[1].max(gb[1]);
                    if h <= 0.0 {
                        return 0.0;
                    }
                    let i = w * h;
                    let u = if crowd { da } else { da + ga - i };
                    i / u
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_small() -> Result<()> {
        // 5x4, column-major runs
        let mut m = vec![0u8; 20];
        m[3 * 4] = 1; // (y=3, x=0)
        m[4 * 4] = 1; // (y=4, x=0)
        m[1] = 1; // (y=0, x=1)
        m[4 + 1] = 1; // (y=1, x=1)
        let r = Rle::from_mask(&m, 5, 4)?;
        assert_eq!(r.counts(), &[3, 4, 13]);
        assert_eq!(r.to_compressed(), "34=");
        assert_eq!(r.to_bbox(), [0.0, 0.0, 2.0, 5.0]);
        assert_eq!(r.to_mask(), m);
        assert_eq!(Rle::from_compressed("34=", 5, 4)?, r);
        assert_eq!(r.area(), 4);
        Ok(())
    }

    #[test]
    fn rejects_bad_input() -> Result<()> {
        assert!(Rle::from_compressed("3~", 5, 4).is_err());
        assert!(Rle::from_compressed("3", 5, 4).is_err()); // sums to 3, not 20
        assert!(Rle::new(2, 2, vec![1, 2]).is_err());
        assert!(Rle::from_mask(&[0u8; 3], 2, 2).is_err());
        assert!(Rle::from_polygon(&[1.0, 2.0, 3.0], 5, 5).is_err());
        assert!(Rle::from_polygon(&[f64::NAN, 2.0], 5, 5).is_err());
        let a = Rle::zeros(2, 2)?;
        let b = Rle::zeros(3, 2)?;
        assert!(Rle::iou(std::slice::from_ref(&a), std::slice::from_ref(&b), &[false]).is_err());
        assert!(Rle::iou(std::slice::from_ref(&a), std::slice::from_ref(&a), &[]).is_err());
        assert!(Rle::merge(&[a, b], false).is_err());
        Ok(())
    }
}
