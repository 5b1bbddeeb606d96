//! Generic pieces of two-stage detectors (Faster / Mask R-CNN, PANet), reusable by any model:
//! anchor generation, box coding and clipping, per-level top-k, greedy NMS, RoI-to-level
//! assignment and mask pasting.
//!
//! Box arithmetic differs between code bases by one pixel, so every piece takes a
//! [`BoxConvention`]:
//! - [`BoxConvention::Legacy`]: Detectron (v1, Detectron.pytorch, PANet) and py-faster-rcnn,
//!   where a box covers integer pixel indices and its width is `x2 - x1 + 1`
//!   (`lib/utils/boxes.py`, `cython_nms.pyx`, `generate_anchors.py`, `utils/fpn.py`);
//! - [`BoxConvention::Continuous`]: torchvision / detectron2, width `x2 - x1`.
//!
//! Boxes are host-side `[x1, y1, x2, y2]` arrays of `f32` with the reference's `f32`
//! arithmetic (Detectron computes in numpy `float32`), since proposal selection and NMS run on
//! the host in every reference. Anchors are built in `f64`, as numpy builds them, and rounded
//! to `f32` once.
//!
//! - [`anchors`]: Detectron v1 cell anchors (base box `[0, 0, s - 1, s - 1]`, ratio enumeration
//!   with rounding) and anchors on a feature grid;
//! - [`box_coder`]: `bbox_transform` / `bbox_transform_inv` with weights and the `dw`/`dh`
//!   clip, clipping to the image, Detectron's proposal filter;
//! - [`nms`]: greedy NMS with either convention's IoU and comparison;
//! - [`topk`]: top-k by score (per level, and across levels);
//! - [`levels`]: the FPN RoI-to-level rule and distribution to levels with a restore order;
//! - [`multilevel`]: RoIAlign over a pyramid, from every level (PANet) or the assigned one;
//! - [`paste`]: Detectron's mask pasting (`segm_results`), with OpenCV's `float32` bilinear resize;
//! - training targets: [`overlaps`] (IoU matrix), [`sampling`] (replayable random draws),
//!   [`rpn_targets`] (anchor labels and sampling), [`roi_targets`] (RoI sampling and box-head
//!   targets), [`mask_targets`] (mask-head targets), each as Detectron v1's `roi_data` code.

pub mod anchors;
pub mod box_coder;
pub mod levels;
pub mod mask_targets;
pub mod multilevel;
pub mod nms;
pub mod overlaps;
pub mod paste;
pub mod roi_targets;
pub mod rpn_targets;
pub mod sampling;
pub mod topk;

pub use anchors::{detectron_cell_anchors, grid_anchors, torchvision_cell_anchors};
pub use box_coder::{bbox_xform_clip, clip_boxes, filter_proposals, BoxTransform};
pub use levels::{distribute_to_levels, map_rois_to_levels, LevelAssignment, LevelMapper};
pub use mask_targets::{mask_targets, GtMask, MaskTargets, PolygonRasterizer};
pub use multilevel::{roi_align_all_levels, roi_align_assigned, RoiAlignConfig};
pub use nms::nms_boxes;
pub use overlaps::{box_iou, box_overlaps, max_overlaps};
pub use paste::{paste_mask_detectron, resize_linear_f32};
pub use roi_targets::{sample_rois, scale_boxes, GtInstances, RoiSamplerConfig, RoiTargets};
pub use rpn_targets::{rpn_targets, RpnLevelTargets, RpnTargetConfig, RpnTargets};
pub use sampling::{IndexSampler, RecordedDraw, ReplaySampler, SeededSampler};
pub use topk::{top_k, top_k_across};

/// A box `[x1, y1, x2, y2]`.
pub type Box4 = [f32; 4];

/// Which pixel convention box arithmetic follows (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BoxConvention {
    /// Detectron v1 / py-faster-rcnn: width `x2 - x1 + 1`, clip to `[0, W - 1]`.
    Legacy,
    /// torchvision / detectron2: width `x2 - x1`, clip to `[0, W]`.
    Continuous,
}

impl BoxConvention {
    /// The `+1` of the width (`1.0` for [`BoxConvention::Legacy`], else `0.0`).
    pub fn offset(self) -> f32 {
        match self {
            BoxConvention::Legacy => 1.0,
            BoxConvention::Continuous => 0.0,
        }
    }

    /// Width and height of a box under this convention.
    pub fn size(self, b: &Box4) -> (f32, f32) {
        let o = self.offset();
        (b[2] - b[0] + o, b[3] - b[1] + o)
    }
}
