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

mod overlap;
mod polygon;

pub use overlap::bbox_iou;
pub(crate) use overlap::iou_refs;

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
