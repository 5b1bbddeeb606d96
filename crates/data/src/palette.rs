//! Colour maps for class maps and overlays on images.
//!
//! - [`voc_palette`]: the PASCAL VOC devkit's `labelcolormap` (also `imgviz.label_colormap`
//!   and mmseg's `PascalVOCDataset` palette): the bits of the class index are dealt out to
//!   R, G, B from the most significant bit down, so that nearby indices get distinct colours.
//! - [`colorize`] / [`overlay`] / [`overlay_labels`]: mmseg 1.2.2's
//!   `SegLocalVisualizer._draw_sem_seg` with `with_labels=False`
//!   (`mmseg/visualization/local_visualizer.py`): pixels of a class inside the palette get its
//!   colour, all others (e.g. 255 = ignore) stay black, and the result is
//!   `uint8((1 - alpha) * image + alpha * colour)` in f64, truncated, byte-equal to mmseg.
//!
//! Dataset palettes (Cityscapes, ADE20K, ..) live with the dataset metadata in the facade
//! (`segkit::datasets`); these functions take any palette as `&[[u8; 3]]`. Images are
//! interleaved RGB `H x W x 3` bytes, class maps `H x W`, both row-major.

use crate::{Error, Result};

/// The VOC bit-shuffling palette for `n` classes: for class `i`, bit `3j + c` of `i` (c = 0, 1,
/// 2 for R, G, B) becomes bit `7 - j` of that channel. Class 0 is black, 1 is (128, 0, 0),
/// 2 is (0, 128, 0), 15 (VOC's person) is (192, 128, 128). Distinct for `n <= 2^24`.
pub fn voc_palette(n: usize) -> Vec<[u8; 3]> {
    (0..n)
        .map(|i| {
            let mut rgb = [0u8; 3];
            let mut c = i;
            for j in 0..8 {
                for (ch, v) in rgb.iter_mut().enumerate() {
                    *v |= (((c >> ch) & 1) as u8) << (7 - j);
                }
                c >>= 3;
            }
            rgb
        })
        .collect()
}

/// Colours a class map: class `k` with `palette[k]`, anything outside `0..palette.len()` black.
/// Returns `labels.len() * 3` RGB bytes.
pub fn colorize<T: Copy + Into<i64>>(labels: &[T], palette: &[[u8; 3]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(labels.len() * 3);
    for &l in labels {
        let l: i64 = l.into();
        let c = usize::try_from(l)
            .ok()
            .and_then(|i| palette.get(i))
            .copied()
            .unwrap_or([0, 0, 0]);
        out.extend_from_slice(&c);
    }
    out
}

/// Blends a colour layer over an image: `uint8((1 - alpha) * image + alpha * color)`, the
/// arithmetic of mmseg's visualizer (f64, truncated). Both are RGB byte buffers of one length;
/// `alpha` in `[0, 1]`.
pub fn overlay(image: &[u8], color: &[u8], alpha: f64) -> Result<Vec<u8>> {
    if image.len() != color.len() {
        return Err(segkit_core::Error::shape(
            "overlay colour layer vs image",
            &[image.len()],
            &[color.len()],
        ));
    }
    if !(0.0..=1.0).contains(&alpha) {
        return Err(Error::InvalidArgument(format!(
            "overlay alpha {alpha} is outside [0, 1]"
        )));
    }
    let beta = 1.0 - alpha;
    Ok(image
        .iter()
        .zip(color)
        .map(|(&i, &c)| (i as f64 * beta + c as f64 * alpha) as u8)
        .collect())
}

/// [`colorize`] then [`overlay`]: mmseg's `_draw_sem_seg(image, sem_seg, classes, palette,
/// with_labels=False)` with `classes = palette.len()` (mmseg's default `alpha` is 0.8).
pub fn overlay_labels<T: Copy + Into<i64>>(
    image: &[u8],
    labels: &[T],
    palette: &[[u8; 3]],
    alpha: f64,
) -> Result<Vec<u8>> {
    if image.len() != labels.len() * 3 {
        return Err(segkit_core::Error::shape(
            "RGB image vs class map (x3)",
            &[labels.len() * 3],
            &[image.len()],
        ));
    }
    overlay(image, &colorize(labels, palette), alpha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voc_colours() {
        let p = voc_palette(256);
        assert_eq!(p[0], [0, 0, 0]);
        assert_eq!(p[1], [128, 0, 0]);
        assert_eq!(p[2], [0, 128, 0]);
        assert_eq!(p[15], [192, 128, 128]);
        assert_eq!(p[20], [0, 64, 128]);
    }

    #[test]
    fn blend() -> Result<()> {
        let img = [100u8, 200, 0, 10, 10, 10];
        let out = overlay_labels(&img, &[1i64, 255], &voc_palette(21), 0.5)?;
        assert_eq!(out, vec![114, 100, 0, 5, 5, 5]);
        assert!(overlay(&img, &img[..3], 0.5).is_err());
        assert!(overlay(&img, &img, 1.5).is_err());
        Ok(())
    }
}
