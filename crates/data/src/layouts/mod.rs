//! Readers of the standard dataset layouts, each a [`SegDataset`]:
//!
//! | reader | layout | reference |
//! |---|---|---|
//! | [`Ade20kDataset`] | `ADEChallengeData2016/{images,annotations}/{training,validation}` | mmseg `ADE20KDataset` (`reduce_zero_label=True`) |
//! | [`CityscapesDataset`] | `leftImg8bit/{split}/{city}/*_leftImg8bit.png` + `gtFine/.../*_gtFine_labelTrainIds.png` | mmseg `CityscapesDataset` |
//! | [`VocDataset`] | `VOC2012/{JPEGImages,SegmentationClass[Aug],ImageSets/Segmentation}` | mmseg `PascalVOCDataset` (+ `pascal_voc12_aug.py`) |
//! | [`CocoPanopticDataset`] | `annotations/panoptic_{split}2017{.json,/}` + `{split}2017/` | mmdet `CocoPanopticDataset` + `LoadPanopticAnnotations` |
//! | [`CocoInstanceDataset`] | `annotations/instances_{split}2017.json` + `{split}2017/` | mmdet `CocoDataset` + `LoadAnnotations(with_mask=True)` |
//! | [`CustomDataset`] | `img_dir` + `ann_dir` (+ instance ids), suffixes | mmseg `BaseSegDataset` |
//!
//! Listing (and every check that needs no decoding) happens in the constructor; decoding in
//! [`SegDataset::get`]. Anything missing or malformed is an [`Error::BadFile`] naming the file:
//! a missing root or split folder, an image without its annotation, an unreadable or corrupt
//! PNG / JPEG, an annotation whose size differs from its image, bad JSON, a bad polygon or
//! RLE, a label outside the classes. Samples come in mmseg's order: sorted by image path for
//! folder layouts, list-file order for VOC, the JSON's `images` order for COCO.

/// `impl SegDataset` for a newtype around [`CustomDataset`].
macro_rules! delegate_seg_dataset {
    ($t:ty) => {
        impl SegDataset for $t {
            fn len(&self) -> usize {
                self.0.len()
            }

            fn info(&self) -> &DatasetInfo {
                self.0.info()
            }

            fn get(&self, index: usize) -> Result<Sample> {
                self.0.get(index)
            }
        }

        impl $t {
            /// The image file of every sample, in order.
            pub fn image_paths(&self) -> impl Iterator<Item = &Path> {
                self.0.image_paths()
            }
        }
    };
}
pub(crate) use delegate_seg_dataset;

mod ade20k;
mod cityscapes;
mod coco;
mod custom;
pub mod meta;
mod voc;

pub use ade20k::Ade20kDataset;
pub use cityscapes::CityscapesDataset;
pub use coco::{CocoInstanceDataset, CocoPanopticDataset};
pub use custom::{CustomConfig, CustomDataset};
pub use voc::VocDataset;

use std::path::{Path, PathBuf};

use crate::io::bad_file;
use crate::{DatasetInfo, Error, Result, Sample, SegDataset};

/// Fails unless `path` is a directory.
pub(crate) fn require_dir(path: &Path, what: &str) -> Result<()> {
    if path.is_dir() {
        Ok(())
    } else if path.exists() {
        Err(bad_file(path, format!("{what} is not a directory")))
    } else {
        Err(bad_file(path, format!("{what} does not exist")))
    }
}

/// Fails unless `path` is a file.
pub(crate) fn require_file(path: &Path, what: &str) -> Result<()> {
    if path.is_file() {
        Ok(())
    } else if path.exists() {
        Err(bad_file(path, format!("{what} is not a file")))
    } else {
        Err(bad_file(path, format!("{what} does not exist")))
    }
}

/// The files under `dir` (recursively) whose name ends with `suffix`, as paths relative to
/// `dir`, sorted (mmengine `list_dir_or_file(.., suffix, recursive=True)` + mmseg's sort).
pub(crate) fn list_files(dir: &Path, suffix: &str) -> Result<Vec<String>> {
    fn walk(
        root: &Path,
        rel: &str,
        suffix: &str,
        depth: usize,
        out: &mut Vec<String>,
    ) -> Result<()> {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        if depth > 64 {
            return Err(bad_file(
                &dir,
                "folders nested more than 64 deep (a symbolic-link loop?)",
            ));
        }
        let entries =
            std::fs::read_dir(&dir).map_err(|e| bad_file(&dir, format!("cannot list: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| bad_file(&dir, format!("cannot list: {e}")))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(bad_file(&entry.path(), "file name is not valid UTF-8"));
            };
            let rel_name = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            // `metadata` follows symlinks, as os.scandir's is_dir() / is_file() do.
            let meta = std::fs::metadata(entry.path())
                .map_err(|e| bad_file(&entry.path(), format!("cannot stat: {e}")))?;
            if meta.is_dir() {
                walk(root, &rel_name, suffix, depth + 1, out)?;
            } else if name.ends_with(suffix) {
                out.push(rel_name);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", suffix, 0, &mut out)?;
    out.sort();
    Ok(out)
}

/// Fails unless an annotation has its image's size.
pub(crate) fn check_same_size(
    ann: &Path,
    (aw, ah): (usize, usize),
    img: &Path,
    (iw, ih): (usize, usize),
) -> Result<()> {
    if (aw, ah) != (iw, ih) {
        return Err(bad_file(
            ann,
            format!(
                "annotation is {aw} x {ah} but its image {} is {iw} x {ih}",
                img.display()
            ),
        ));
    }
    Ok(())
}

/// Fails unless every label is a class index or the ignore index.
pub(crate) fn check_labels(
    path: &Path,
    labels: &[u16],
    width: usize,
    info: &DatasetInfo,
) -> Result<()> {
    let n = info.classes.len();
    if let Some(i) = labels
        .iter()
        .position(|&v| v != info.ignore_index && v as usize >= n)
    {
        return Err(bad_file(
            path,
            format!(
                "label {} at (x {}, y {}) is neither a class index (0..{n}) nor the ignore index {}",
                labels[i],
                i % width.max(1),
                i / width.max(1),
                info.ignore_index
            ),
        ));
    }
    Ok(())
}

/// Several datasets with the same classes, one after the other (mmengine `ConcatDataset`), e.g.
/// VOC `train` + the SBD `aug` list as mmseg's `pascal_voc12_aug.py`.
pub struct ConcatDataset {
    parts: Vec<Box<dyn SegDataset>>,
    /// Cumulative lengths: `ends[i]` = samples in parts `0..=i`.
    ends: Vec<usize>,
    info: DatasetInfo,
}

impl ConcatDataset {
    /// Concatenates `parts` (at least one; all with the same [`DatasetInfo`]).
    ///
    /// Errors: [`Error::InvalidArgument`] for no parts or differing infos.
    pub fn new(parts: Vec<Box<dyn SegDataset>>) -> Result<Self> {
        let Some(first) = parts.first() else {
            return Err(Error::InvalidArgument(
                "ConcatDataset needs at least one dataset".into(),
            ));
        };
        let info = first.info().clone();
        if let Some(i) = parts.iter().position(|p| p.info() != &info) {
            return Err(Error::InvalidArgument(format!(
                "ConcatDataset: dataset {i} has other classes, palette or ignore index than dataset 0"
            )));
        }
        let mut ends = Vec::with_capacity(parts.len());
        let mut n = 0;
        for p in &parts {
            n += p.len();
            ends.push(n);
        }
        Ok(ConcatDataset { parts, ends, info })
    }
}

impl SegDataset for ConcatDataset {
    fn len(&self) -> usize {
        self.ends.last().copied().unwrap_or(0)
    }

    fn info(&self) -> &DatasetInfo {
        &self.info
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let part = self.ends.partition_point(|&e| e <= index);
        let Some(p) = self.parts.get(part) else {
            return Err(Error::InvalidArgument(format!(
                "index {index} is out of range for a dataset of {} samples",
                self.len()
            )));
        };
        let start = if part == 0 { 0 } else { self.ends[part - 1] };
        p.get(index - start)
    }
}

/// `index` out of range for `len` samples.
pub(crate) fn out_of_range(index: usize, len: usize) -> Error {
    Error::InvalidArgument(format!(
        "index {index} is out of range for a dataset of {len} samples"
    ))
}

/// `root.join(rel)` for a `/`-separated relative path.
pub(crate) fn join(root: &Path, rel: &str) -> PathBuf {
    rel.split('/').fold(root.to_path_buf(), |p, c| p.join(c))
}
