//! Cityscapes as mmseg 1.2.2's `CityscapesDataset` (`mmseg/datasets/cityscapes.py`):
//! `leftImg8bit/{split}/{city}/*_leftImg8bit.png` with
//! `gtFine/{split}/{city}/*_gtFine_labelTrainIds.png` (written by cityscapesScripts'
//! `createTrainIdLabelImgs` / mmseg's `tools/dataset_converters/cityscapes.py`), 19 classes,
//! ignore 255.

use std::path::{Path, PathBuf};

use super::meta::{names, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE};
use super::{CustomConfig, CustomDataset};
use crate::{DatasetInfo, Result, Sample, SegDataset};

/// Cityscapes' fine annotations with train ids (19 classes, ignore 255).
///
/// ```no_run
/// use segkit_data::{layouts::CityscapesDataset, SegDataset};
/// let val = CityscapesDataset::new("data/cityscapes", "val")?;
/// assert_eq!(val.info().classes[13], "car");
/// # Ok::<(), segkit_data::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct CityscapesDataset(CustomDataset);

impl CityscapesDataset {
    /// The `split` (`"train"`, `"val"`, `"test"`, ..: the folder name) under `root` (the folder
    /// holding `leftImg8bit` and `gtFine`). Semantic only (`thing_classes` is empty).
    ///
    /// Errors: [`crate::Error::BadFile`] naming a missing folder or the missing annotation of
    /// an image.
    pub fn new(root: impl AsRef<Path>, split: &str) -> Result<Self> {
        let cfg = CustomConfig {
            img_dir: PathBuf::from("leftImg8bit").join(split),
            ann_dir: Some(PathBuf::from("gtFine").join(split)),
            instance_dir: None,
            list_file: None,
            img_suffix: "_leftImg8bit.png".into(),
            seg_map_suffix: "_gtFine_labelTrainIds.png".into(),
            instance_suffix: ".png".into(),
            reduce_zero_label: false,
            ignore_index: 255,
            classes: names(&CITYSCAPES_CLASSES),
            palette: CITYSCAPES_PALETTE.to_vec(),
            thing_classes: Vec::new(),
        };
        Ok(CityscapesDataset(CustomDataset::with_config(root, &cfg)?))
    }
}

super::delegate_seg_dataset!(CityscapesDataset);
