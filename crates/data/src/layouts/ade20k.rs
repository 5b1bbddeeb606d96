//! ADE20K (SceneParsing, `ADEChallengeData2016`) as mmseg 1.2.2's `ADE20KDataset`
//! (`mmseg/datasets/ade.py`): `images/{training,validation}/*.jpg` with
//! `annotations/{training,validation}/*.png`, `reduce_zero_label=True` (0 = "other" becomes
//! the ignore index 255, class `v` becomes `v - 1`), 150 classes.

use std::path::{Path, PathBuf};

use super::meta::{names, ADE20K_CLASSES, ADE20K_PALETTE};
use super::{CustomConfig, CustomDataset};
use crate::{DatasetInfo, Error, Result, Sample, SegDataset};

/// ADE20K's scene-parsing benchmark (150 classes, ignore 255).
///
/// ```no_run
/// use segkit_data::{layouts::Ade20kDataset, SegDataset};
/// let val = Ade20kDataset::new("data/ade/ADEChallengeData2016", "validation")?;
/// assert_eq!(val.info().classes.len(), 150);
/// # Ok::<(), segkit_data::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Ade20kDataset(CustomDataset);

impl Ade20kDataset {
    /// The `split` (`"training"` / `"validation"`, or `"train"` / `"val"`) under `root`
    /// (the `ADEChallengeData2016` folder).
    ///
    /// Errors: [`Error::InvalidArgument`] for another split name; [`Error::BadFile`] naming
    /// a missing folder or the missing annotation of an image.
    pub fn new(root: impl AsRef<Path>, split: &str) -> Result<Self> {
        let split = match split {
            "training" | "train" => "training",
            "validation" | "val" => "validation",
            other => {
                return Err(Error::InvalidArgument(format!(
                    "ADE20K has splits \"training\" and \"validation\" (or \"train\" / \"val\"), not {other:?}"
                )))
            }
        };
        let cfg = CustomConfig {
            img_dir: PathBuf::from("images").join(split),
            ann_dir: Some(PathBuf::from("annotations").join(split)),
            instance_dir: None,
            list_file: None,
            img_suffix: ".jpg".into(),
            seg_map_suffix: ".png".into(),
            instance_suffix: ".png".into(),
            reduce_zero_label: true,
            ignore_index: 255,
            classes: names(&ADE20K_CLASSES),
            palette: ADE20K_PALETTE.to_vec(),
            thing_classes: Vec::new(),
        };
        Ok(Ade20kDataset(CustomDataset::with_config(root, &cfg)?))
    }
}

super::delegate_seg_dataset!(Ade20kDataset);
