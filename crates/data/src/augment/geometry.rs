//! The sizes and windows of the geometric steps, as pure functions of the image size, the
//! step's parameters and its random draws (each checked against mmcv / mmseg in
//! `crates/data/tests/augment.rs`).

use super::CropBox;

/// mmcv `RandomResize._random_sample_ratio` for a uniform draw `u` in `[0, 1)`:
/// `ratio = u * (max - min) + min`, scale `(int(w * ratio), int(h * ratio))`.
pub fn random_resize_scale(scale: [usize; 2], ratio_range: [f64; 2], u: f64) -> [usize; 2] {
    let ratio = u * (ratio_range[1] - ratio_range[0]) + ratio_range[0];
    scale.map(|s| (s as f64 * ratio).max(0.0) as usize)
}

/// The size `(w, h)` mmseg's `Resize(scale, keep_ratio)` gives a `(w, h)` image.
pub fn resize_target(size: (usize, usize), scale: [usize; 2], keep_ratio: bool) -> (usize, usize) {
    if keep_ratio {
        crate::image::resize::rescale_size(size, scale)
    } else {
        (scale[0], scale[1])
    }
}

/// mmseg's `cat_max_ratio` test on the labels under a crop: more than one non-ignored class,
/// and the largest covering less than `cat_max_ratio` of the non-ignored pixels (`false` for a
/// window outside the map).
pub fn crop_passes(
    semantic: &[u16],
    width: usize,
    b: &CropBox,
    cat_max_ratio: f64,
    ignore_index: u16,
) -> bool {
    let inside = b.x1 < b.x2
        && b.y1 < b.y2
        && b.x2 <= width
        && b.y2.checked_mul(width).is_some_and(|n| n <= semantic.len());
    if !inside {
        return false;
    }
    let rows = || (b.y1..b.y2).map(|y| &semantic[y * width + b.x1..y * width + b.x2]);
    let top = rows().flatten().copied().max().unwrap_or(0);
    let mut counts = vec![0u64; top as usize + 1];
    for &v in rows().flatten() {
        counts[v as usize] += 1;
    }
    if let Some(c) = counts.get_mut(ignore_index as usize) {
        *c = 0;
    }
    let classes = counts.iter().filter(|&&c| c > 0).count();
    let total: u64 = counts.iter().sum();
    let max = counts.iter().copied().max().unwrap_or(0);
    classes > 1 && (max as f64 / total as f64) < cat_max_ratio
}

/// mmseg `RandomCrop.crop_bbox`: a `crop_size = (h, w)` window at offsets drawn by
/// `draw(margin_h, margin_w)` (each in `0..=margin`); when `cat_max_ratio < 1` and there is a
/// semantic map, up to 10 more windows are drawn while [`crop_passes`] fails (the last is kept
/// either way). The window is clamped to the image.
pub fn select_crop(
    width: usize,
    height: usize,
    semantic: Option<&[u16]>,
    crop_size: [usize; 2],
    cat_max_ratio: f64,
    ignore_index: u16,
    draw: &mut dyn FnMut(usize, usize) -> (usize, usize),
) -> CropBox {
    let margin_h = height.saturating_sub(crop_size[0]);
    let margin_w = width.saturating_sub(crop_size[1]);
    let mut generate = || {
        let (oh, ow) = draw(margin_h, margin_w);
        let (oh, ow) = (oh.min(margin_h), ow.min(margin_w));
        CropBox {
            y1: oh,
            y2: (oh + crop_size[0]).min(height),
            x1: ow,
            x2: (ow + crop_size[1]).min(width),
        }
    };
    let mut b = generate();
    if let (Some(sem), true) = (semantic, cat_max_ratio < 1.0) {
        for _ in 0..10 {
            if crop_passes(sem, width, &b, cat_max_ratio, ignore_index) {
                break;
            }
            b = generate();
        }
    }
    b
}

/// mmcv `Pad._pad_img`'s target size `(w, h)` for a `(w, h)` image.
pub fn pad_target(
    (w, h): (usize, usize),
    size: Option<[usize; 2]>,
    size_divisor: Option<usize>,
    pad_to_square: bool,
) -> (usize, usize) {
    let mut target = if pad_to_square {
        let m = w.max(h);
        Some((m, m))
    } else {
        None
    };
    if let Some(d) = size_divisor.filter(|&d| d > 0) {
        let (tw, th) = target.unwrap_or((w, h));
        target = Some((tw.div_ceil(d) * d, th.div_ceil(d) * d));
    } else if let Some([sw, sh]) = size {
        target = Some((sw, sh));
    }
    target.unwrap_or((w, h))
}
