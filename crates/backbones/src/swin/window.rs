//! Window bookkeeping for (shifted) window attention: the gather maps that pad, roll and
//! partition a token map into windows in one `index_select` (and undo it), the SW-MSA
//! attention mask, and the relative-position index.
//!
//! Everything here depends only on the map size, the window size and the shift, so it is
//! computed once per stage and forward pass and shared by the blocks of that stage.

use candle_core::{DType, Device, Tensor};

use crate::Result;

/// Value HF (and the original Swin) adds to the scores of token pairs from different regions
/// of a shifted window: a large negative constant, not `-inf`.
const MASK_VALUE: f32 = -100.0;

/// How a `height x width` token map is cut into `window x window` windows with a cyclic shift.
///
/// Reproduces HF's `SwinLayer`: zero-pad at the bottom / right to multiples of the window
/// (`maybe_pad`), roll by `-shift` in both directions (`cyclic_shift`), partition row-major
/// (`window_partition`); the reverse crops the padding after rolling back.
pub(crate) struct WindowGeometry {
    /// Number of windows per image.
    pub num_windows: usize,
    /// `window * window`.
    pub window_area: usize,
    /// Whether some windowed positions are padding (index `height * width` in `forward`).
    pub padded: bool,
    /// For each windowed position (window-major, then row-major inside the window), the
    /// source token `h * width + w`, or `height * width` for padding. Length
    /// `num_windows * window_area`, dtype u32.
    pub forward: Tensor,
    /// For each token `h * width + w`, its windowed position. Length `height * width`, u32.
    pub reverse: Tensor,
    /// `num_windows x 1 x N x N` (`N = window_area`) mask, 0 within a region and -100
    /// across, for shifted windows; `None` without a shift.
    pub mask: Option<Tensor>,
    /// `forward` on the host, for the CPU kernel.
    pub forward_host: Vec<u32>,
    /// `mask` on the host (f32), for the CPU kernel.
    pub mask_host: Option<Vec<f32>>,
}

impl WindowGeometry {
    pub fn new(
        height: usize,
        width: usize,
        window: usize,
        shift: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        let hp = height.div_ceil(window) * window;
        let wp = width.div_ceil(window) * window;
        let (nwh, nww) = (hp / window, wp / window);
        let n = window * window;
        let num_windows = nwh * nww;
        let pad = (height * width) as u32;
        let mut fwd = Vec::with_capacity(num_windows * n);
        let mut region = Vec::with_capacity(num_windows * n);
        // Region of a shifted coordinate along one axis (HF `get_attn_mask`).
        let reg = |i: usize, len: usize| {
            (i >= len - window) as usize + (i >= len - shift.min(len)) as usize
        };
        for wi in 0..nwh {
            for wj in 0..nww {
                for r in 0..window {
                    for c in 0..window {
                        let (hs, ws) = (wi * window + r, wj * window + c);
                        let h = (hs + shift) % hp;
                        let w = (ws + shift) % wp;
                        fwd.push(if h < height && w < width {
                            (h * width + w) as u32
                        } else {
                            pad
                        });
                        if shift > 0 {
                            region.push(reg(hs, hp) * 3 + reg(ws, wp));
                        }
                    }
                }
            }
        }
        let mut rev = Vec::with_capacity(height * width);
        for h in 0..height {
            for w in 0..width {
                let hs = (h + hp - shift % hp) % hp;
                let ws = (w + wp - shift % wp) % wp;
                let win = (hs / window) * nww + ws / window;
                rev.push((win * n + (hs % window) * window + ws % window) as u32);
            }
        }
        let mask_host = if shift > 0 {
            let mut m = vec![0f32; num_windows * n * n];
            for (win, regs) in region.chunks_exact(n).enumerate() {
                let dst = &mut m[win * n * n..(win + 1) * n * n];
                for (i, ri) in regs.iter().enumerate() {
                    for (j, rj) in regs.iter().enumerate() {
                        if ri != rj {
                            dst[i * n + j] = MASK_VALUE;
                        }
                    }
                }
            }
            Some(m)
        } else {
            None
        };
        let mask = match &mask_host {
            Some(m) => Some(Tensor::from_slice(m, (num_windows, 1, n, n), dev)?.to_dtype(dtype)?),
            None => None,
        };
        Ok(Self {
            num_windows,
            window_area: n,
            padded: hp != height || wp != width,
            forward: Tensor::from_slice(&fwd, num_windows * n, dev)?,
            forward_host: fwd,
            reverse: Tensor::from_vec(rev, height * width, dev)?,
            mask,
            mask_host,
        })
    }
}

/// HF's `relative_position_index` for a square window: entry `(i, j)` (tokens `i = (r1, c1)`,
/// `j = (r2, c2)` row-major in the window) is
/// `(r1 - r2 + M - 1) * (2M - 1) + (c1 - c2 + M - 1)`. Returned flat (`M^4` entries), u32.
pub(crate) fn relative_position_index(window: usize) -> Vec<u32> {
    let n = window * window;
    let mut idx = Vec::with_capacity(n * n);
    for i in 0..n {
        let (r1, c1) = (i / window, i % window);
        for j in 0..n {
            let (r2, c2) = (j / window, j % window);
            let dr = r1 + window - 1 - r2;
            let dc = c1 + window - 1 - c2;
            idx.push((dr * (2 * window - 1) + dc) as u32);
        }
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_index_matches_hf_for_window_2() {
        // torch: HF SwinRelativePositionBias((2, 2))._create_relative_position_index()
        let want = [4, 3, 1, 0, 5, 4, 2, 1, 7, 6, 4, 3, 8, 7, 5, 4];
        assert_eq!(relative_position_index(2), want);
    }

    #[test]
    fn reverse_inverts_forward() {
        for (h, w, win, s) in [
            (5, 7, 3, 1),
            (4, 4, 2, 1),
            (9, 6, 4, 2),
            (3, 2, 7, 3),
            (7, 7, 7, 0),
        ] {
            let g = WindowGeometry::new(h, w, win, s, DType::F32, &Device::Cpu).unwrap();
            let f = g.forward.to_vec1::<u32>().unwrap();
            let r = g.reverse.to_vec1::<u32>().unwrap();
            for (tok, &pos) in r.iter().enumerate() {
                assert_eq!(f[pos as usize] as usize, tok);
            }
            let pads = f.iter().filter(|&&v| v as usize == h * w).count();
            assert_eq!(pads, g.num_windows * g.window_area - h * w);
            assert_eq!(g.padded, pads > 0);
        }
    }
}
