//! Box regression (R-CNN box coding), clipping and proposal filtering.
//!
//! [`BoxTransform::decode`] is Detectron's `bbox_transform` (`lib/utils/boxes.py`) under
//! [`BoxConvention::Legacy`] and torchvision's `BoxCoder.decode_single` under
//! [`BoxConvention::Continuous`]; with `o` the convention's offset:
//! `w = x2 - x1 + o`, `cx = x1 + w / 2`, `dx = d0 / wx`, `dw = min(d2 / ww, clip)`,
//! `cx' = dx w + cx`, `w' = exp(dw) w`, box `[cx' - w'/2, cy' - h'/2, cx' + w'/2 - o, cy' + h'/2 - o]`,
//! evaluated in `f32` in the reference's operation order. [`BoxTransform::encode`] is the
//! inverse (`bbox_transform_inv` / `BoxCoder.encode_single`).

use crate::{Error, Result};

use super::{Box4, BoxConvention};

/// Detectron's `BBOX_XFORM_CLIP`, `log(1000 / 16)` (torchvision's default too).
pub fn bbox_xform_clip() -> f32 {
    (1000.0f64 / 16.0).ln() as f32
}

/// Box coding with per-coordinate weights `(wx, wy, ww, wh)` and a clip on `dw`, `dh`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BoxTransform {
    /// Weights `(wx, wy, ww, wh)`: Detectron's RPN (1, 1, 1, 1), its box head
    /// `MODEL.BBOX_REG_WEIGHTS` (10, 10, 5, 5).
    pub weights: [f32; 4],
    /// Upper clip of `dw`, `dh` before `exp` (`BBOX_XFORM_CLIP`, [`bbox_xform_clip`]).
    pub clip: f32,
    /// Pixel convention of the widths.
    pub convention: BoxConvention,
}

impl BoxTransform {
    /// A transform with `weights`, the default clip `log(1000 / 16)` and `convention`.
    pub fn new(weights: [f32; 4], convention: BoxConvention) -> Self {
        Self {
            weights,
            clip: bbox_xform_clip(),
            convention,
        }
    }

    /// Applies `deltas` (`N x 4K`, row-major: K boxes per row, e.g. one per class) to `boxes`
    /// (`N`), returning `N x 4K` boxes. Errors if `deltas.len()` is not a multiple of `4 N`.
    pub fn decode(&self, boxes: &[Box4], deltas: &[f32]) -> Result<Vec<f32>> {
        let n = boxes.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        if !deltas.len().is_multiple_of(4 * n) {
            return Err(Error::InvalidArgument(format!(
                "box decode: {} deltas are not 4K per box for {n} boxes",
                deltas.len()
            )));
        }
        let row = deltas.len() / n;
        let o = self.convention.offset();
        let [wx, wy, ww, wh] = self.weights;
        let mut out = vec![0f32; deltas.len()];
        for ((b, d), y) in boxes
            .iter()
            .zip(deltas.chunks_exact(row))
            .zip(out.chunks_exact_mut(row))
        {
            let w = b[2] - b[0] + o;
            let h = b[3] - b[1] + o;
            let cx = b[0] + 0.5 * w;
            let cy = b[1] + 0.5 * h;
            for (d, y) in d.chunks_exact(4).zip(y.chunks_exact_mut(4)) {
                let dx = d[0] / wx;
                let dy = d[1] / wy;
                let dw = (d[2] / ww).min(self.clip);
                let dh = (d[3] / wh).min(self.clip);
                let pcx = dx * w + cx;
                let pcy = dy * h + cy;
                let pw = dw.exp() * w;
                let ph = dh.exp() * h;
                y[0] = pcx - 0.5 * pw;
                y[1] = pcy - 0.5 * ph;
                y[2] = pcx + 0.5 * pw - o;
                y[3] = pcy + 0.5 * ph - o;
            }
        }
        Ok(out)
    }

    /// The deltas that map each of `boxes` onto the matching `targets`
    /// (`bbox_transform_inv`: `dx = wx (cx_t - cx) / w`, `dw = ww ln(w_t / w)`). Errors if the
    /// lengths differ.
    pub fn encode(&self, boxes: &[Box4], targets: &[Box4]) -> Result<Vec<[f32; 4]>> {
        if boxes.len() != targets.len() {
            return Err(Error::shape(
                "box encode targets",
                &[boxes.len(), 4],
                &[targets.len(), 4],
            ));
        }
        let o = self.convention.offset();
        let [wx, wy, ww, wh] = self.weights;
        Ok(boxes
            .iter()
            .zip(targets)
            .map(|(b, t)| {
                let (w, h) = (b[2] - b[0] + o, b[3] - b[1] + o);
                let (cx, cy) = (b[0] + 0.5 * w, b[1] + 0.5 * h);
                let (tw, th) = (t[2] - t[0] + o, t[3] - t[1] + o);
                let (tcx, tcy) = (t[0] + 0.5 * tw, t[1] + 0.5 * th);
                [
                    wx * (tcx - cx) / w,
                    wy * (tcy - cy) / h,
                    ww * (tw / w).ln(),
                    wh * (th / h).ln(),
                ]
            })
            .collect())
    }
}

/// Clips every coordinate of `boxes` (a flat `[x1, y1, x2, y2, ...]` list, e.g. `N x 4K`) to an
/// image of `height x width`: Detectron's `clip_tiled_boxes` (`max(min(x, W - 1), 0)`) under
/// [`BoxConvention::Legacy`], torchvision's `clip_boxes_to_image` (`clamp(x, 0, W)`) under
/// [`BoxConvention::Continuous`].
pub fn clip_boxes(boxes: &mut [f32], height: f32, width: f32, convention: BoxConvention) {
    let o = convention.offset();
    for b in boxes.chunks_exact_mut(4) {
        for (i, v) in b.iter_mut().enumerate() {
            let lim = if i % 2 == 0 { width - o } else { height - o };
            *v = match convention {
                BoxConvention::Legacy => v.min(lim).max(0.0),
                BoxConvention::Continuous => v.max(0.0).min(lim),
            };
        }
    }
}

/// Indices of the proposals to keep: Detectron's `_filter_boxes` under
/// [`BoxConvention::Legacy`] (both sides `>= min_size * im_scale` and the centre
/// `x1 + w / 2 < width`, `y1 + h / 2 < height`), torchvision's `remove_small_boxes` under
/// [`BoxConvention::Continuous`] (both sides `>= min_size`; `im_scale` and the image size
/// unused).
pub fn filter_proposals(
    boxes: &[Box4],
    min_size: f32,
    im_scale: f32,
    height: f32,
    width: f32,
    convention: BoxConvention,
) -> Vec<usize> {
    let keep = |b: &Box4| match convention {
        BoxConvention::Legacy => {
            let m = min_size * im_scale;
            let (w, h) = convention.size(b);
            let (cx, cy) = (b[0] + w / 2.0, b[1] + h / 2.0);
            w >= m && h >= m && cx < width && cy < height
        }
        BoxConvention::Continuous => {
            let (w, h) = convention.size(b);
            w >= min_size && h >= min_size
        }
    };
    (0..boxes.len()).filter(|&i| keep(&boxes[i])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_round_trip_and_errors() {
        let t = BoxTransform::new([10.0, 10.0, 5.0, 5.0], BoxConvention::Legacy);
        let b = [[0.0, 0.0, 9.0, 19.0], [5.0, 5.0, 5.0, 5.0]];
        let g = [[1.0, 2.0, 12.0, 17.0], [4.0, 4.0, 8.0, 9.0]];
        let d = t.encode(&b, &g).unwrap();
        let flat: Vec<f32> = d.iter().flatten().copied().collect();
        let back = t.decode(&b, &flat).unwrap();
        for (x, y) in back.iter().zip(g.iter().flatten()) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
        assert!(t.decode(&b, &flat[..6]).is_err());
        assert!(t.encode(&b, &g[..1]).is_err());
        assert!(t.decode(&[], &[]).unwrap().is_empty());
        let mut c = vec![-3.0, 4.0, 700.0, 12.0];
        clip_boxes(&mut c, 10.0, 100.0, BoxConvention::Legacy);
        assert_eq!(c, [0.0, 4.0, 99.0, 9.0]);
    }
}
