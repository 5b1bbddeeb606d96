//! Evaluation metrics, each a port of the reference implementation named in its module:
//! - [`semantic`]: aAcc / mIoU / mAcc / mDice / mFscore (mmsegmentation 1.2.2 `IoUMetric`);
//! - [`panoptic`]: PQ / SQ / RQ (panopticapi `pq_compute`);
//! - [`boundary`]: Gated-SCNN's boundary F-score (nv-tlabs/GSCNN `utils/f_boundary.py`);
//! - [`coco`]: mask AP / AR (pycocotools `COCOeval`, `iouType='segm'`).
//!
//! All of them accumulate over images (`update` / `add_*`) and report once (`compute` /
//! `evaluate`), and are checked against their reference on real masks in
//! `crates/data/tests/metrics.rs`.

pub mod boundary;
pub mod coco;
pub mod panoptic;
pub mod semantic;

pub use boundary::{BoundaryFResult, BoundaryFScore, BoundaryTolerance};
pub use coco::{CocoEvalResult, CocoEvaluator, CocoParams, Detection, GroundTruth};
pub use panoptic::{
    rgb_to_id, PanopticCategory, PanopticQuality, PqClass, PqResult, PqStatCat, PqSummary,
    SegmentInfo, VOID,
};
pub use semantic::{nanmean, AreaStats, SegMetric, SegMetricResult};
