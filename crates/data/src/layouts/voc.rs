//! PASCAL VOC 2012 segmentation as mmseg 1.2.2's `PascalVOCDataset` (`mmseg/datasets/voc.py`)
//! and its augmented-training config (`configs/_base_/datasets/pascal_voc12_aug.py`):
//!
//! ```text
//! VOC2012/
//!   JPEGImages/ID.jpg
//!   SegmentationClass/ID.png        palette PNG; the palette *indices* are the labels
//!                                   (0..20, 255 = the void border)
//!   SegmentationClassAug/ID.png     SBD masks converted to 8-bit grayscale PNG
//!   ImageSets/Segmentation/{train,val,trainval}.txt, and aug.txt / trainaug.txt (mmseg's
//!                                   tools/dataset_converters/voc_aug.py) or train_aug.txt
//!                                   (DeepLab's list)
//! ```
//!
//! [`VocDataset::new`] reads `SegmentationClass` for a list; [`VocDataset::aug`] reads
//! `SegmentationClassAug`; [`VocDataset::train_aug`] concatenates `train` and `aug` as mmseg's
//! config. SBD's original MATLAB `.mat` files (`dataset/cls/*.mat`) are **not** read: convert
//! them with mmseg's `voc_aug.py` first.

use std::path::{Path, PathBuf};

use super::meta::{names, VOC_CLASSES};
use super::{ConcatDataset, CustomConfig, CustomDataset};
use crate::{DatasetInfo, Result, Sample, SegDataset};

/// PASCAL VOC 2012 (21 classes with background, ignore 255).
///
/// ```no_run
/// use segkit_data::{layouts::VocDataset, SegDataset};
/// let val = VocDataset::new("data/VOCdevkit/VOC2012", "val")?;
/// let train = VocDataset::train_aug("data/VOCdevkit/VOC2012")?; // 10582 images
/// assert_eq!(val.info().classes.len(), 21);
/// # Ok::<(), segkit_data::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct VocDataset(CustomDataset);

fn config(list: &str, seg_dir: &str) -> CustomConfig {
    CustomConfig {
        img_dir: PathBuf::from("JPEGImages"),
        ann_dir: Some(PathBuf::from(seg_dir)),
        instance_dir: None,
        list_file: Some(
            PathBuf::from("ImageSets")
                .join("Segmentation")
                .join(format!("{list}.txt")),
        ),
        img_suffix: ".jpg".into(),
        seg_map_suffix: ".png".into(),
        instance_suffix: ".png".into(),
        reduce_zero_label: false,
        ignore_index: 255,
        classes: names(&VOC_CLASSES),
        palette: crate::palette::voc_palette(VOC_CLASSES.len()),
        thing_classes: Vec::new(),
    }
}

impl VocDataset {
    /// The images of `ImageSets/Segmentation/{split}.txt` under `root` (the `VOC2012` folder)
    /// with their `SegmentationClass` masks.
    ///
    /// Errors: [`crate::Error::BadFile`] naming the missing root, list file, image or mask.
    pub fn new(root: impl AsRef<Path>, split: &str) -> Result<Self> {
        Ok(VocDataset(CustomDataset::with_config(
            root,
            &config(split, "SegmentationClass"),
        )?))
    }

    /// The images of `ImageSets/Segmentation/{list}.txt` with their `SegmentationClassAug`
    /// masks: `list = "aug"` (mmseg's SBD-only list), `"trainaug"` or `"train_aug"`.
    ///
    /// Errors: as [`VocDataset::new`].
    pub fn aug(root: impl AsRef<Path>, list: &str) -> Result<Self> {
        Ok(VocDataset(CustomDataset::with_config(
            root,
            &config(list, "SegmentationClassAug"),
        )?))
    }

    /// mmseg's `pascal_voc12_aug.py` training set: `train` (`SegmentationClass`) followed by
    /// `aug` (`SegmentationClassAug`).
    ///
    /// Errors: as [`VocDataset::new`].
    pub fn train_aug(root: impl AsRef<Path>) -> Result<ConcatDataset> {
        let root = root.as_ref();
        ConcatDataset::new(vec![
            Box::new(Self::new(root, "train")?),
            Box::new(Self::aug(root, "aug")?),
        ])
    }
}

super::delegate_seg_dataset!(VocDataset);
