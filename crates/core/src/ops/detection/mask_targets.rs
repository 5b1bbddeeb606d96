//! Mask-head targets, as Detectron v1's `add_mask_rcnn_blobs` (ShuLiu1993/PANet
//! `lib/roi_data/mask_rcnn.py`, `lib/utils/segms.py::polys_to_mask_wrt_box`,
//! `polys_to_boxes`).
//!
//! For the foreground RoIs of a [`RoiTargets`] sample (in the gt's frame):
//! 1. each RoI takes the non-crowd gt mask whose enclosing box overlaps it most (IoU of the
//!    RoI with the masks' tight boxes, first on ties; not the RoI's regression gt);
//! 2. a polygon mask is mapped into the RoI, `x' = (x - x1) * M / w` with
//!    `w = max(x2 - x1, 1)` (no `+1`), in `f32`, and rasterised at `M x M` by a caller-supplied
//!    rasteriser — Detectron uses pycocotools' `frPyObjects` + union (segkit-data's
//!    `Rle::from_polygons` is that rasteriser; segkit-core cannot depend on it);
//! 3. a bitmap mask (not in the reference: COCO's non-crowd masks are polygons) is cropped
//!    and resized as torchvision's Mask R-CNN does (`project_masks_on_boxes`:
//!    `roi_align(mask, box, (M, M), 1.0, sampling_ratio = adaptive, aligned = False)`),
//!    then binarised at `>= 0.5`, since Detectron's targets are binary;
//! 4. targets are `1` / `0`; when an image has no foreground RoI, its first RoI gets an
//!    all-ignore (`-1`) mask of class 0 so that the batch is not empty (as the reference).
//!
//! The reference's `N x (K M M)` class-specific blob is [`MaskTargets::class_specific`]; the
//! losses only read the class channel, so the compact `N x M M` form is what they take. An
//! image whose foreground RoIs all come from crowd boxes (no non-crowd mask to match; the
//! reference fails) gets all-ignore masks for them.

use candle_core::{Device, Tensor};

use crate::{Error, Result};

use super::overlaps::max_overlaps;
use super::roi_targets::{GtInstances, RoiTargets};
use super::{Box4, BoxConvention};

/// A gt instance's mask.
#[derive(Debug, Clone, Copy)]
pub enum GtMask<'a> {
    /// COCO polygons `[x0, y0, x1, y1, ..]` (one object may have several parts).
    Polygons(&'a [Vec<f64>]),
    /// A row-major `height x width` mask, nonzero inside.
    Bitmap {
        /// The pixels.
        mask: &'a [u8],
        /// Rows.
        height: usize,
        /// Columns.
        width: usize,
    },
}

/// Rasterises polygons (already in the `M x M` frame) to a row-major `M x M` mask, nonzero
/// inside: `(polygons, M) -> mask`.
pub type PolygonRasterizer<'r> = dyn FnMut(&[Vec<f64>], usize) -> Result<Vec<u8>> + 'r;

/// Mask targets of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskTargets {
    /// The RoIs of the mask head (`mask_rois`), in the gt frame.
    pub rois: Vec<Box4>,
    /// Class of each mask RoI (the channel its loss reads; 0 for the all-ignore RoI).
    pub classes: Vec<usize>,
    /// `R x M x M` targets, row-major: 1, 0, or -1 (ignore).
    pub masks: Vec<i32>,
    /// For each sampled RoI of the [`RoiTargets`], whether it has a mask (`roi_has_mask`).
    pub roi_has_mask: Vec<bool>,
    /// `M`.
    pub resolution: usize,
}

impl MaskTargets {
    /// The reference's class-specific `R x (K M M)` blob: -1 everywhere but the class channel
    /// (all -1 for class 0). Errors if a class is `>= num_classes`.
    pub fn class_specific(&self, num_classes: usize) -> Result<Vec<i32>> {
        let mm = self.resolution * self.resolution;
        let mut out = vec![-1; self.classes.len() * num_classes * mm];
        for (i, &c) in self.classes.iter().enumerate() {
            if c >= num_classes {
                return Err(Error::InvalidArgument(format!(
                    "mask targets: class {c} of RoI {i} is not below {num_classes}"
                )));
            }
            if c > 0 {
                let start = (i * num_classes + c) * mm;
                out[start..start + mm].copy_from_slice(&self.masks[i * mm..(i + 1) * mm]);
            }
        }
        Ok(out)
    }
}

/// Tight box of a mask: polygon vertex extents (`polys_to_boxes`, rounded to `f32`), or the
/// first / last set pixel indices of a bitmap (all zero if it is empty).
fn mask_box(i: usize, m: &GtMask<'_>) -> Result<Box4> {
    match m {
        GtMask::Polygons(polys) => {
            let mut b = [
                f64::INFINITY,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::NEG_INFINITY,
            ];
            for p in polys.iter() {
                for xy in p.chunks_exact(2) {
                    b = [
                        b[0].min(xy[0]),
                        b[1].min(xy[1]),
                        b[2].max(xy[0]),
                        b[3].max(xy[1]),
                    ];
                }
            }
            if b.iter().any(|v| !v.is_finite()) {
                return Err(Error::InvalidArgument(format!(
                    "gt mask {i}: no polygon vertex, or a non-finite one"
                )));
            }
            Ok(b.map(|v| v as f32))
        }
        GtMask::Bitmap {
            mask,
            height,
            width,
        } => {
            if mask.len() != height * width {
                return Err(Error::InvalidArgument(format!(
                    "gt mask {i}: {} pixels for a {height}x{width} bitmap",
                    mask.len()
                )));
            }
            let mut b = [usize::MAX, usize::MAX, 0, 0];
            for (k, _) in mask.iter().enumerate().filter(|(_, &v)| v != 0) {
                let (y, x) = (k / width, k % width);
                b = [b[0].min(x), b[1].min(y), b[2].max(x), b[3].max(y)];
            }
            if b[0] == usize::MAX {
                return Ok([0.0; 4]);
            }
            Ok(b.map(|v| v as f32))
        }
    }
}

/// One RoI's `M x M` target from one mask.
fn crop(
    mask: &GtMask<'_>,
    roi: &Box4,
    m: usize,
    rasterize: &mut PolygonRasterizer<'_>,
) -> Result<Vec<i32>> {
    let bits = match mask {
        GtMask::Polygons(polys) => {
            let w = (roi[2] - roi[0]).max(1.0);
            let h = (roi[3] - roi[1]).max(1.0);
            let mf = m as f32;
            let norm: Vec<Vec<f64>> = polys
                .iter()
                .map(|p| {
                    p.iter()
                        .enumerate()
                        .map(|(k, &v)| {
                            let (o, s) = if k % 2 == 0 { (roi[0], w) } else { (roi[1], h) };
                            f64::from((v as f32 - o) * mf / s)
                        })
                        .collect()
                })
                .collect();
            let r = rasterize(&norm, m)?;
            if r.len() != m * m {
                return Err(Error::InvalidArgument(format!(
                    "mask rasteriser returned {} pixels for {m}x{m}",
                    r.len()
                )));
            }
            r
        }
        GtMask::Bitmap {
            mask,
            height,
            width,
        } => {
            let data: Vec<f32> = mask.iter().map(|&v| f32::from(u8::from(v != 0))).collect();
            let input = Tensor::from_vec(data, (1, 1, *height, *width), &Device::Cpu)?;
            let rois = Tensor::new(&[[0.0, roi[0], roi[1], roi[2], roi[3]]], &Device::Cpu)?;
            let out = crate::ops::roi_align(&input, &rois, (m, m), 1.0, 0, false)?;
            let v = out.flatten_all()?.to_vec1::<f32>()?;
            v.into_iter().map(|x| u8::from(x >= 0.5)).collect()
        }
    };
    Ok(bits.into_iter().map(|v| i32::from(v != 0)).collect())
}

/// Mask targets for the sample `rois` of one image (see the module docs): `masks` has one entry
/// per gt instance (crowd entries are not read), `resolution` is `M` (PANet: 28),
/// `convention` the IoU of step 1 (Detectron: legacy). Errors on a count mismatch or a bad
/// mask.
pub fn mask_targets(
    rois: &RoiTargets,
    gt: &GtInstances<'_>,
    masks: &[GtMask<'_>],
    resolution: usize,
    convention: BoxConvention,
    rasterize: &mut PolygonRasterizer<'_>,
) -> Result<MaskTargets> {
    if masks.len() != gt.boxes.len() || gt.crowd.len() != gt.boxes.len() {
        return Err(Error::InvalidArgument(format!(
            "mask targets: {} masks and {} crowd flags for {} gt instances",
            masks.len(),
            gt.crowd.len(),
            gt.boxes.len()
        )));
    }
    if resolution == 0 {
        return Err(Error::InvalidArgument("mask targets: resolution 0".into()));
    }
    let mm = resolution * resolution;
    let roi_has_mask: Vec<bool> = rois.labels.iter().map(|&l| l > 0).collect();
    let fg: Vec<usize> = (0..rois.rois.len())
        .filter(|&i| rois.labels[i] > 0)
        .collect();
    if fg.is_empty() {
        let Some(bg) = rois.labels.iter().position(|&l| l == 0) else {
            return Ok(MaskTargets {
                rois: Vec::new(),
                classes: Vec::new(),
                masks: Vec::new(),
                roi_has_mask,
                resolution,
            });
        };
        let mut roi_has_mask = roi_has_mask;
        roi_has_mask[0] = true;
        return Ok(MaskTargets {
            rois: vec![rois.rois[bg]],
            classes: vec![0],
            masks: vec![-1; mm],
            roi_has_mask,
            resolution,
        });
    }
    let valid: Vec<usize> = (0..masks.len()).filter(|&i| !gt.crowd[i]).collect();
    let boxes = valid
        .iter()
        .map(|&i| mask_box(i, &masks[i]))
        .collect::<Result<Vec<_>>>()?;
    let fg_rois: Vec<Box4> = fg.iter().map(|&i| rois.rois[i]).collect();
    let (_, best) = max_overlaps(&fg_rois, &boxes, convention);
    let mut out = Vec::with_capacity(fg.len() * mm);
    for (roi, &b) in fg_rois.iter().zip(&best) {
        if valid.is_empty() {
            out.extend(std::iter::repeat_n(-1, mm));
        } else {
            out.extend(crop(&masks[valid[b]], roi, resolution, rasterize)?);
        }
    }
    Ok(MaskTargets {
        rois: fg_rois,
        classes: fg.iter().map(|&i| rois.labels[i]).collect(),
        masks: out,
        roi_has_mask,
        resolution,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::detection::{sample_rois, RoiSamplerConfig, SeededSampler};

    #[test]
    fn bitmap_and_polygon_targets() {
        let gt_boxes = [[4.0, 4.0, 11.0, 11.0]];
        let gt = GtInstances {
            boxes: &gt_boxes,
            classes: &[2],
            crowd: &[false],
        };
        let mut cfg = RoiSamplerConfig::panet(3);
        cfg.batch_size_per_image = 4;
        let rois = sample_rois(
            &[[0.0, 0.0, 3.0, 3.0]],
            &gt,
            &cfg,
            &mut SeededSampler::new(0),
        )
        .unwrap();
        assert_eq!(rois.labels, [2, 0]);
        let mut bitmap = vec![0u8; 16 * 16];
        for y in 4..12 {
            for x in 4..12 {
                bitmap[y * 16 + x] = 1;
            }
        }
        let masks = [GtMask::Bitmap {
            mask: &bitmap,
            height: 16,
            width: 16,
        }];
        let mut never = |_: &[Vec<f64>], _: usize| -> Result<Vec<u8>> { unreachable!() };
        let t = mask_targets(&rois, &gt, &masks, 4, BoxConvention::Legacy, &mut never).unwrap();
        assert_eq!(t.classes, [2]);
        assert_eq!(t.roi_has_mask, [true, false]);
        assert_eq!(t.masks.len(), 16);
        assert!(t.masks.iter().filter(|&&v| v == 1).count() >= 9);
        let cs = t.class_specific(3).unwrap();
        assert_eq!(cs[..16], [-1; 16]);
        assert_eq!(cs[32..48], t.masks[..]);
        // Polygons go through the caller's rasteriser, normalised to the RoI.
        let poly = vec![vec![4.0, 4.0, 11.0, 4.0, 11.0, 11.0]];
        let masks = [GtMask::Polygons(&poly)];
        let mut seen = Vec::new();
        let t = {
            let mut rast = |p: &[Vec<f64>], m: usize| -> Result<Vec<u8>> {
                seen = p.to_vec();
                Ok(vec![1; m * m])
            };
            mask_targets(&rois, &gt, &masks, 4, BoxConvention::Legacy, &mut rast).unwrap()
        };
        assert_eq!(seen, [vec![0.0, 0.0, 4.0, 0.0, 4.0, 4.0]]);
        assert_eq!(t.masks, [1; 16]);
        assert!(mask_targets(&rois, &gt, &[], 4, BoxConvention::Legacy, &mut never).is_err());
    }

    #[test]
    fn bad_masks_and_no_foreground() {
        let gt_boxes = [[0.0, 0.0, 0.0, 0.0]];
        let gt = GtInstances {
            boxes: &gt_boxes,
            classes: &[1],
            crowd: &[false],
        };
        let mut cfg = RoiSamplerConfig::panet(3);
        cfg.batch_size_per_image = 4;
        let rois = sample_rois(&[], &gt, &cfg, &mut SeededSampler::new(0)).unwrap();
        let mut never = |_: &[Vec<f64>], _: usize| -> Result<Vec<u8>> { unreachable!() };
        let conv = BoxConvention::Legacy;
        // A 1x1 image's bitmap, a bitmap of the wrong size, an empty polygon list.
        let one = [1u8];
        let ok = [GtMask::Bitmap {
            mask: &one,
            height: 1,
            width: 1,
        }];
        let t = mask_targets(&rois, &gt, &ok, 28, conv, &mut never).unwrap();
        assert_eq!(t.masks.len(), 28 * 28);
        let bad = [GtMask::Bitmap {
            mask: &one,
            height: 2,
            width: 2,
        }];
        assert!(mask_targets(&rois, &gt, &bad, 28, conv, &mut never).is_err());
        let empty: Vec<Vec<f64>> = Vec::new();
        let bad = [GtMask::Polygons(&empty)];
        assert!(mask_targets(&rois, &gt, &bad, 28, conv, &mut never).is_err());
        assert!(mask_targets(&rois, &gt, &ok, 0, conv, &mut never).is_err());
        // No foreground RoI: one all-ignore mask on the first background RoI.
        let crowd = GtInstances {
            boxes: &gt_boxes,
            classes: &[1],
            crowd: &[true],
        };
        let props = [[4.0, 4.0, 9.0, 9.0]];
        let rois = sample_rois(&props, &crowd, &cfg, &mut SeededSampler::new(0)).unwrap();
        let t = mask_targets(&rois, &crowd, &ok, 2, conv, &mut never).unwrap();
        assert_eq!(t.classes, [0]);
        assert_eq!(t.masks, [-1; 4]);
        assert_eq!(t.roi_has_mask, [true]);
    }
}
