//! OpenCV's Canny edge detector (`cv2.Canny(img, low, high)`, aperture 3, L1 gradient), in
//! plain Rust and equal to OpenCV 5.0's `imgproc/src/canny.cpp` pixel for pixel:
//!
//! 1. per channel, the 3x3 Sobel derivatives `dx`, `dy` (`[-1 0 1] x [1 2 1]^T`) in integers,
//!    the border replicated (`BORDER_REPLICATE`);
//! 2. per pixel, the channel with the largest `|dx| + |dy|` (the first one on ties) gives the
//!    magnitude `m` and the direction;
//! 3. non-maximum suppression with OpenCV's integer direction test (`TG22 = 13573`,
//!    `tan(22.5 deg) * 2^15`): near-horizontal gradients compare `m > left && m >= right`,
//!    near-vertical ones `m > up && m >= down`, diagonal ones `m >` both diagonal neighbours
//!    (which diagonal from the signs of `dx`, `dy`); magnitudes outside the image are 0;
//! 4. thresholds `floor(low)`, `floor(high)` (swapped if `low > high`): a surviving pixel with
//!    `m > high` is an edge, one with `low < m <= high` a candidate; hysteresis grows the edges
//!    through the 8-neighbourhood into candidates. The output is 255 on edges, 0 elsewhere.
//!
//! Gated-SCNN runs `cv2.Canny(img, 10, 100)` on a 3-channel image ([`canny`]); what it feeds
//! it is [`CannyInput`].

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// `tan(22.5 deg) * 2^15`, rounded (OpenCV's `TG22`).
const TG22: i64 = 13573;

/// Which 8-bit image Gated-SCNN's Canny map is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CannyInput {
    /// As the official code does it (`network/gscnn.py`): the normalised input tensor
    /// (ImageNet mean / std) cast straight to `uint8` with numpy's `astype`, i.e. truncated
    /// towards zero and wrapped modulo 256 (-1.7 becomes 255, 2.3 becomes 2), see
    /// [`released_input`].
    #[default]
    AsReleased,
    /// Canny on the 8-bit image itself (the normalisation undone and rounded), see
    /// [`image8bit_input`].
    Image8bit,
}

/// numpy's `float32.astype(np.uint8)` on x86-64: truncation towards zero to a 32-bit integer
/// whose low byte is kept (wrap modulo 256); NaN and values beyond the 32-bit range become 0
/// (the "integer indefinite" value `0x80000000`).
pub fn numpy_cast_u8(v: f32) -> u8 {
    if !v.is_finite() || v.abs() >= 2_147_483_648.0 {
        return 0;
    }
    (v.trunc() as i32) as u8
}

fn check_chw(what: &str, len: usize, height: usize, width: usize) -> Result<()> {
    if height == 0 || width == 0 || len != 3 * height * width {
        return Err(Error::InvalidArgument(format!(
            "{what}: expected 3 x {height} x {width} = {} values (CHW, f32), got {len}",
            3 * height * width
        )));
    }
    Ok(())
}

/// The official Canny input: a normalised `3 x H x W` (CHW) float image, transposed to
/// `H x W x 3` and cast with [`numpy_cast_u8`] (`inp.numpy().transpose((0,2,3,1))
/// .astype(np.uint8)`). Returns the interleaved HWC bytes [`canny`] takes.
pub fn released_input(chw: &[f32], height: usize, width: usize) -> Result<Vec<u8>> {
    check_chw("released Canny input", chw.len(), height, width)?;
    let hw = height * width;
    let mut out = vec![0u8; 3 * hw];
    for c in 0..3 {
        for (p, &v) in chw[c * hw..(c + 1) * hw].iter().enumerate() {
            out[p * 3 + c] = numpy_cast_u8(v);
        }
    }
    Ok(out)
}

/// The 8-bit image behind a normalised `3 x H x W` float image: per channel
/// `x * std + mean`, rounded half away from zero and clamped to 0..=255, interleaved HWC.
/// `mean` / `std` are in the 0..255 pixel scale (ImageNet: `[123.675, 116.28, 103.53]`,
/// `[58.395, 57.12, 57.375]`).
pub fn image8bit_input(
    chw: &[f32],
    height: usize,
    width: usize,
    mean: [f32; 3],
    std: [f32; 3],
) -> Result<Vec<u8>> {
    check_chw("8-bit Canny input", chw.len(), height, width)?;
    let hw = height * width;
    let mut out = vec![0u8; 3 * hw];
    for c in 0..3 {
        for (p, &v) in chw[c * hw..(c + 1) * hw].iter().enumerate() {
            let x = (v * std[c] + mean[c]).round();
            out[p * 3 + c] = if x.is_nan() {
                0
            } else {
                x.clamp(0.0, 255.0) as u8
            };
        }
    }
    Ok(out)
}

/// `cv2.Canny(img, low, high)` on an interleaved `H x W x 3` 8-bit image (any channel order:
/// the channels are treated alike). Returns `H x W` bytes, 255 on edges and 0 elsewhere.
pub fn canny(rgb: &[u8], height: usize, width: usize, low: f64, high: f64) -> Result<Vec<u8>> {
    canny_channels(rgb, height, width, 3, low, high)
}

/// [`canny`] for an interleaved `H x W x channels` 8-bit image (1 to 4 channels).
pub fn canny_channels(
    img: &[u8],
    height: usize,
    width: usize,
    channels: usize,
    low: f64,
    high: f64,
) -> Result<Vec<u8>> {
    if !(1..=4).contains(&channels) {
        return Err(Error::InvalidArgument(format!(
            "Canny: channels must be 1..=4, got {channels}"
        )));
    }
    if height == 0 || width == 0 || img.len() != height * width * channels {
        return Err(Error::InvalidArgument(format!(
            "Canny: expected {height} x {width} x {channels} = {} bytes, got {}",
            height * width * channels,
            img.len()
        )));
    }
    if !low.is_finite() || !high.is_finite() {
        return Err(Error::InvalidArgument(format!(
            "Canny: thresholds must be finite, got {low} and {high}"
        )));
    }
    let (low, high) = if low > high { (high, low) } else { (low, high) };
    let (low, high) = (low.floor() as i64, high.floor() as i64);
    let grad = Gradient::new(img, height, width, channels);
    let mut map = suppress(&grad, low, high);
    hysteresis(&mut map, height, width);
    let w2 = width + 2;
    let mut out = vec![0u8; height * width];
    for y in 0..height {
        for x in 0..width {
            if map[(y + 1) * w2 + x + 1] == EDGE {
                out[y * width + x] = 255;
            }
        }
    }
    Ok(out)
}

/// The winning channel's derivatives and L1 magnitude of every pixel.
struct Gradient {
    height: usize,
    width: usize,
    dx: Vec<i32>,
    dy: Vec<i32>,
    /// `(H + 2) x (W + 2)`, zero on the one-pixel frame around the image.
    mag: Vec<i64>,
}

impl Gradient {
    fn new(img: &[u8], height: usize, width: usize, cn: usize) -> Self {
        let px = |y: usize, x: usize, c: usize| i32::from(img[(y * width + x) * cn + c]);
        let n = height * width;
        let (mut dx, mut dy) = (vec![0i32; n], vec![0i32; n]);
        let w2 = width + 2;
        let mut mag = vec![0i64; (height + 2) * w2];
        for y in 0..height {
            let (ym, yp) = (y.saturating_sub(1), (y + 1).min(height - 1));
            for x in 0..width {
                let (xm, xp) = (x.saturating_sub(1), (x + 1).min(width - 1));
                let mut best: Option<(i32, i32, i32)> = None;
                for c in 0..cn {
                    let gx = (px(ym, xp, c) + 2 * px(y, xp, c) + px(yp, xp, c))
                        - (px(ym, xm, c) + 2 * px(y, xm, c) + px(yp, xm, c));
                    let gy = (px(yp, xm, c) + 2 * px(yp, x, c) + px(yp, xp, c))
                        - (px(ym, xm, c) + 2 * px(ym, x, c) + px(ym, xp, c));
                    let m = gx.abs() + gy.abs();
                    // Strictly larger: the first channel wins ties (OpenCV's `maxIdx`).
                    if best.is_none_or(|(bm, _, _)| m > bm) {
                        best = Some((m, gx, gy));
                    }
                }
                let (m, gx, gy) = best.unwrap_or((0, 0, 0));
                dx[y * width + x] = gx;
                dy[y * width + x] = gy;
                mag[(y + 1) * w2 + x + 1] = i64::from(m);
            }
        }
        Self {
            height,
            width,
            dx,
            dy,
            mag,
        }
    }
}

/// A pixel that may join an edge (OpenCV's map value 0).
const CANDIDATE: u8 = 0;
/// A pixel that cannot (1).
const NOT_EDGE: u8 = 1;
/// A pixel on an edge (2).
const EDGE: u8 = 2;

/// Non-maximum suppression and the two thresholds: the `(H + 2) x (W + 2)` map of
/// [`CANDIDATE`] / [`NOT_EDGE`] / [`EDGE`], its frame [`NOT_EDGE`].
fn suppress(g: &Gradient, low: i64, high: i64) -> Vec<u8> {
    let (h, w) = (g.height, g.width);
    let w2 = w + 2;
    let mut map = vec![NOT_EDGE; (h + 2) * w2];
    for y in 0..h {
        for x in 0..w {
            let k = (y + 1) * w2 + x + 1;
            let m = g.mag[k];
            if m <= low {
                continue;
            }
            let (xs, ys) = (g.dx[y * w + x], g.dy[y * w + x]);
            let ax = i64::from(xs.abs());
            let ay = i64::from(ys.abs()) << 15;
            let tg22x = ax * TG22;
            let keep = if ay < tg22x {
                m > g.mag[k - 1] && m >= g.mag[k + 1]
            } else if ay > tg22x + (ax << 16) {
                m > g.mag[k - w2] && m >= g.mag[k + w2]
            } else if (xs < 0) != (ys < 0) {
                // Opposite signs: the up-right / down-left diagonal (OpenCV's s = -1).
                m > g.mag[k - w2 + 1] && m > g.mag[k + w2 - 1]
            } else {
                m > g.mag[k - w2 - 1] && m > g.mag[k + w2 + 1]
            };
            if keep {
                map[k] = if m > high { EDGE } else { CANDIDATE };
            }
        }
    }
    map
}

/// Grows every edge through its 8-neighbourhood into candidates (the frame stops it).
fn hysteresis(map: &mut [u8], height: usize, width: usize) {
    let w2 = width + 2;
    let mut stack: Vec<usize> = (0..map.len()).filter(|&k| map[k] == EDGE).collect();
    let offsets = [
        -(w2 as isize) - 1,
        -(w2 as isize),
        -(w2 as isize) + 1,
        -1,
        1,
        w2 as isize - 1,
        w2 as isize,
        w2 as isize + 1,
    ];
    debug_assert_eq!(map.len(), (height + 2) * w2);
    while let Some(k) = stack.pop() {
        for off in offsets {
            // Edges are never on the frame, so every neighbour index is inside the map.
            let n = (k as isize + off) as usize;
            if map[n] == CANDIDATE {
                map[n] = EDGE;
                stack.push(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_cast_wraps() {
        let v = [
            -2.5f32,
            -1.5,
            -0.5,
            0.5,
            1.5,
            2.7,
            -300.0,
            300.0,
            f32::NAN,
            1e12,
        ];
        let got: Vec<u8> = v.iter().map(|&x| numpy_cast_u8(x)).collect();
        // np.array(v, np.float32).astype(np.uint8) on x86-64 (numpy 2.4).
        assert_eq!(got, vec![254, 255, 0, 0, 1, 2, 212, 44, 0, 0]);
    }

    #[test]
    fn step_edge_is_one_pixel_wide() -> Result<()> {
        // A vertical step 0 | 200 at column 4 of an 8 x 8 grey image (as 3 channels).
        let (h, w) = (8, 8);
        let img: Vec<u8> = (0..h * w * 3)
            .map(|i| if (i / 3) % w >= 4 { 200 } else { 0 })
            .collect();
        let e = canny(&img, h, w, 10.0, 100.0)?;
        for y in 0..h {
            let row: Vec<u8> = e[y * w..(y + 1) * w].to_vec();
            // |dx| = 800 at columns 3 and 4; NMS keeps the left one (m > left, m >= right).
            assert_eq!(row, vec![0, 0, 0, 255, 0, 0, 0, 0], "row {y}");
        }
        Ok(())
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(canny(&[0; 10], 2, 2, 10.0, 100.0).is_err());
        assert!(canny(&[], 0, 0, 10.0, 100.0).is_err());
        assert!(canny(&[0; 12], 2, 2, f64::NAN, 100.0).is_err());
        assert!(canny_channels(&[0; 20], 2, 2, 5, 10.0, 100.0).is_err());
        assert!(released_input(&[0.0; 11], 2, 2).is_err());
    }
}
