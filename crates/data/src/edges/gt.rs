//! Gated-SCNN's edge ground truth (nv-tlabs/GSCNN `datasets/edge_utils.py`, used by
//! `datasets/cityscapes.py` with radius 2): the label map one-hot encoded over the labels
//! `1..=num_classes` (`mask == i + 1`: label 0 — Cityscapes' road — has no channel, as
//! released), each channel zero-padded by one pixel, `distance_transform_edt(m) +
//! distance_transform_edt(1 - m)` (scipy, exact Euclidean), cropped back, `dist > radius`
//! zeroed, and a pixel is an edge where any channel's distance is left positive.
//!
//! Computed directly: every pixel's distance in a channel is the distance to the nearest pixel
//! of the other membership, so a pixel is an edge exactly when some pixel within Euclidean
//! distance `radius` (`sqrt(dy^2 + dx^2) <= radius`) has a different "class" — its label if in
//! `1..=num_classes`, "none" otherwise (label 0, the ignore label, anything outside the image).
//! Labels outside `1..=num_classes` (255 included) never make an edge between themselves.
//!
//! One scipy detail is kept for exactness: a channel whose class is absent from the image is
//! all background, and `distance_transform_edt` of an input without zeros measures the
//! distance to the virtual pixel `(-1, 0)` of the padded array, so pixels with
//! `sqrt((y + 2)^2 + (x + 1)^2) <= radius` are edges then. It needs `radius >= sqrt(5)`; the
//! released radius 2 never reaches it.

use crate::{Error, Result};

/// Gated-SCNN's edge-target settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeTargetConfig {
    /// The one-hot channels are the labels `1..=num_classes` (Cityscapes: 19).
    pub num_classes: usize,
    /// Edge half-width in pixels (`onehot_to_binary_edges(.., 2, ..)`: 2).
    pub radius: f64,
}

impl EdgeTargetConfig {
    /// The released settings for `num_classes` classes (radius 2).
    pub fn gscnn(num_classes: usize) -> Self {
        Self {
            num_classes,
            radius: 2.0,
        }
    }

    /// The edge map of an `H x W` label map: 1 on edges, 0 elsewhere, `H x W`.
    pub fn edges<T: Copy + Into<i64>>(
        &self,
        labels: &[T],
        height: usize,
        width: usize,
    ) -> Result<Vec<u8>> {
        edge_target(labels, height, width, self.num_classes, self.radius)
    }
}

/// The binary edge map of an `H x W` label map (`mask_to_onehot` then
/// `onehot_to_binary_edges(.., radius, num_classes)`): 1 on edges, 0 elsewhere.
pub fn edge_target<T: Copy + Into<i64>>(
    labels: &[T],
    height: usize,
    width: usize,
    num_classes: usize,
    radius: f64,
) -> Result<Vec<u8>> {
    if labels.len() != height * width {
        return Err(Error::InvalidArgument(format!(
            "edge target: label map of {} values is not {height} x {width}",
            labels.len()
        )));
    }
    if radius.is_nan() || radius < 0.0 {
        // `onehot_to_binary_edges` returns the one-hot mask itself for a negative radius.
        return Err(Error::InvalidArgument(format!(
            "edge target: the radius must be >= 0, got {radius}"
        )));
    }
    let mut out = vec![0u8; height * width];
    let k = num_classes as i64;
    let class: Vec<i64> = labels
        .iter()
        .map(|&l| {
            let l: i64 = l.into();
            if (1..=k).contains(&l) {
                l
            } else {
                0
            }
        })
        .collect();
    let reach = radius.min((height + width) as f64).floor() as i64;
    let mut offsets = Vec::new();
    for dy in -reach..=reach {
        for dx in -reach..=reach {
            if (dy, dx) != (0, 0) && (((dy * dy + dx * dx) as f64).sqrt()) <= radius {
                offsets.push((dy, dx));
            }
        }
    }
    let (h, w) = (height as i64, width as i64);
    for y in 0..h {
        for x in 0..w {
            let c = class[(y * w + x) as usize];
            let edge = offsets.iter().any(|&(dy, dx)| {
                let (qy, qx) = (y + dy, x + dx);
                let q = if qy < 0 || qy >= h || qx < 0 || qx >= w {
                    0
                } else {
                    class[(qy * w + qx) as usize]
                };
                q != c
            });
            if edge {
                out[(y * w + x) as usize] = 1;
            }
        }
    }
    absent_class_quirk(&class, &mut out, height, width, num_classes, radius);
    Ok(out)
}

/// scipy's distance to `(-1, 0)` for channels without a single foreground pixel (module docs).
fn absent_class_quirk(
    class: &[i64],
    out: &mut [u8],
    height: usize,
    width: usize,
    num_classes: usize,
    radius: f64,
) {
    if radius * radius < 5.0 {
        return;
    }
    let mut present = vec![false; num_classes + 1];
    for &c in class {
        present[c as usize] = true;
    }
    if present[1..].iter().all(|&p| p) {
        return;
    }
    for y in 0..height {
        for x in 0..width {
            let d2 = ((y + 2) * (y + 2) + (x + 1) * (x + 1)) as f64;
            if d2.sqrt() <= radius {
                out[y * width + x] = 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_edges_radius_one() -> Result<()> {
        // A 2 x 2 square of class 1 in the middle of a 6 x 6 road (0) map.
        let (h, w) = (6, 6);
        let mut l = vec![0u8; h * w];
        for y in 2..4 {
            for x in 2..4 {
                l[y * w + x] = 1;
            }
        }
        let e = edge_target(&l, h, w, 19, 1.0)?;
        // Radius 1: the square and its 4-neighbours; the road's border makes no edge.
        let expect = ["000000", "001100", "011110", "011110", "001100", "000000"];
        for y in 0..h {
            let row: String = e[y * w..(y + 1) * w]
                .iter()
                .map(|v| v.to_string())
                .collect();
            assert_eq!(row, expect[y], "row {y}");
        }
        Ok(())
    }

    #[test]
    fn image_border_is_an_edge_of_a_class_touching_it() -> Result<()> {
        let l = vec![3u8; 5 * 5];
        let e = edge_target(&l, 5, 5, 19, 2.0)?;
        // Zero padding: everything within 2 px of the border; the centre is 3 px away.
        assert_eq!(e.iter().filter(|&&v| v == 0).count(), 1);
        assert_eq!(e[12], 0);
        let ignore = vec![255u8; 25];
        assert!(edge_target(&ignore, 5, 5, 19, 2.0)?.iter().all(|&v| v == 0));
        Ok(())
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(edge_target(&[0u8; 5], 2, 3, 19, 2.0).is_err());
        assert!(edge_target(&[0u8; 6], 2, 3, 19, -1.0).is_err());
        assert!(edge_target(&[0u8; 6], 2, 3, 19, f64::NAN).is_err());
    }
}
