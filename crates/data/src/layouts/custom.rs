//! The generic folder layout, mmseg 1.2.2's `BaseSegDataset`
//! (`mmseg/datasets/basesegdataset.py`), plus optional instance ids.
//!
//! # The demo / custom layout
//!
//! [`CustomDataset::new`]`(root, split, classes, palette)` reads:
//!
//! ```text
//! root/
//!   images/{split}/**/NAME.png        8-bit RGB (or grey / RGBA; PNG or JPEG content)
//!   annotations/{split}/**/NAME.png   8-bit grayscale PNG of class indices 0..classes.len(),
//!                                     255 = unlabelled (ignored); same size as the image
//!   instances/{split}/**/NAME.png     optional: 8- or 16-bit grayscale PNG of instance ids,
//!                                     0 = no instance; same size as the image
//! ```
//!
//! `NAME` may contain sub-folders (`images/train/a/b.png` pairs with `annotations/train/a/b.png`).
//! Samples come sorted by image path. When `root/instances/{split}` exists, every image needs
//! its instance-id PNG; each distinct (class, instance id) pair with id != 0 becomes one
//! [`InstanceAnnotation`] (`iscrowd = false`) whose class is the pixel's semantic label, so the
//! same id may be reused across classes, and pixels labelled 255 belong to no instance. Instances
//! come sorted by (instance id, class). [`CustomDataset::write_sample`] writes a [`Sample`] in
//! this layout (or save the RGB image, the class map as an `image::GrayImage` PNG and the ids
//! as an `image::ImageBuffer<Luma<u16>, _>` or `GrayImage` PNG yourself).
//!
//! [`CustomDataset::with_config`] takes the other knobs of `BaseSegDataset` ([`CustomConfig`]):
//! any folders, `img_suffix` / `seg_map_suffix` (`NAME + img_suffix` pairs with
//! `NAME + seg_map_suffix`), an optional list file (mmseg `ann_file`: one `NAME` per line),
//! `reduce_zero_label` (0 -> 255, v -> v - 1, 255 stays 255, as `LoadAnnotations`) and the ignore
//! index. Labels outside `0..classes.len()` other than the ignore index are an error (mmseg would
//! pass them on to the loss).

use std::path::{Path, PathBuf};

use super::{
    check_labels, check_same_size, join, list_files, out_of_range, require_dir, require_file,
};
use crate::io::{bad_file, read_id_map, read_label_map, read_rgb8};
use crate::{DatasetInfo, Error, InstanceAnnotation, Result, Sample, SegDataset};

/// Where the files of a [`CustomDataset`] are and how to read them (mmseg `BaseSegDataset`'s
/// arguments).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomConfig {
    /// Image folder relative to the root (mmseg `data_prefix.img_path`).
    pub img_dir: PathBuf,
    /// Label-map folder relative to the root (`data_prefix.seg_map_path`); `None`: samples have
    /// no semantic ground truth.
    #[serde(default)]
    pub ann_dir: Option<PathBuf>,
    /// Instance-id folder relative to the root; `None`: no instances. Needs `ann_dir` (the
    /// instance's class is the semantic label).
    #[serde(default)]
    pub instance_dir: Option<PathBuf>,
    /// List file relative to the root (mmseg `ann_file`): one image name per line, without
    /// suffix, relative to `img_dir`. `None`: every file under `img_dir` ending in `img_suffix`.
    #[serde(default)]
    pub list_file: Option<PathBuf>,
    /// Image file-name suffix (mmseg `img_suffix`).
    pub img_suffix: String,
    /// Label-map file-name suffix (mmseg `seg_map_suffix`).
    pub seg_map_suffix: String,
    /// Instance-id file-name suffix.
    #[serde(default = "default_png")]
    pub instance_suffix: String,
    /// mmseg `reduce_zero_label`: label 0 becomes the ignore index 255 and every other label
    /// `v` becomes `v - 1` (255 stays 255).
    #[serde(default)]
    pub reduce_zero_label: bool,
    /// The label of unlabelled pixels (mmseg `ignore_index`).
    #[serde(default = "default_ignore")]
    pub ignore_index: u16,
    /// Class names, by class index (mmseg `METAINFO['classes']`).
    pub classes: Vec<String>,
    /// RGB colour per class; empty: the VOC palette ([`crate::palette::voc_palette`]).
    #[serde(default)]
    pub palette: Vec<[u8; 3]>,
    /// The classes that have instances (things).
    #[serde(default)]
    pub thing_classes: Vec<u32>,
}

fn default_png() -> String {
    ".png".into()
}

fn default_ignore() -> u16 {
    255
}

impl CustomConfig {
    /// The demo layout of the module doc: `images/{split}`, `annotations/{split}` and, when
    /// `instances` is true, `instances/{split}`, all `.png`.
    pub fn demo(split: &str, classes: Vec<String>, palette: Vec<[u8; 3]>, instances: bool) -> Self {
        CustomConfig {
            img_dir: Path::new("images").join(split),
            ann_dir: Some(Path::new("annotations").join(split)),
            instance_dir: instances.then(|| Path::new("instances").join(split)),
            list_file: None,
            img_suffix: ".png".into(),
            seg_map_suffix: ".png".into(),
            instance_suffix: ".png".into(),
            reduce_zero_label: false,
            ignore_index: 255,
            classes,
            palette,
            thing_classes: Vec::new(),
        }
    }
}

/// One listed sample.
#[derive(Debug, Clone)]
struct Entry {
    image: PathBuf,
    seg: Option<PathBuf>,
    inst: Option<PathBuf>,
}

/// A dataset in a folder layout (mmseg `BaseSegDataset`; see the module doc).
#[derive(Debug, Clone)]
pub struct CustomDataset {
    entries: Vec<Entry>,
    info: DatasetInfo,
    reduce_zero_label: bool,
}

impl CustomDataset {
    /// The demo layout under `root` (module doc); instances are read when
    /// `root/instances/{split}` exists. An empty `palette` means the VOC palette.
    ///
    /// Errors: [`Error::BadFile`] naming the missing root / folder or the missing annotation of
    /// an image; [`Error::InvalidArgument`] for no classes or more than 255 of them, or a
    /// palette of the wrong length.
    pub fn new(
        root: impl AsRef<Path>,
        split: &str,
        classes: Vec<String>,
        palette: Vec<[u8; 3]>,
    ) -> Result<Self> {
        let root = root.as_ref();
        let instances = root.join("instances").join(split).is_dir();
        Self::with_config(
            root,
            &CustomConfig::demo(split, classes, palette, instances),
        )
    }

    /// A dataset under `root` laid out as `cfg` says.
    ///
    /// Errors: as [`CustomDataset::new`], plus a missing or unreadable list file.
    pub fn with_config(root: impl AsRef<Path>, cfg: &CustomConfig) -> Result<Self> {
        let root = root.as_ref();
        let palette = cfg.checked_palette()?;
        let folders = Folders::resolve(root, cfg)?;
        let entries = list_names(root, cfg, &folders.img)?
            .iter()
            .map(|name| folders.entry(cfg, name))
            .collect::<Result<Vec<_>>>()?;
        Ok(CustomDataset {
            entries,
            info: DatasetInfo {
                classes: cfg.classes.clone(),
                palette,
                ignore_index: cfg.ignore_index,
                thing_classes: cfg.thing_classes.clone(),
            },
            reduce_zero_label: cfg.reduce_zero_label,
        })
    }

    /// The image file of every sample, in order.
    pub fn image_paths(&self) -> impl Iterator<Item = &Path> {
        self.entries.iter().map(|e| e.image.as_path())
    }

    /// Writes `sample` into the demo layout under `root` as `NAME.png` (`name` may contain
    /// `/`): `images/{split}/NAME.png` (RGB), `annotations/{split}/NAME.png` (the semantic
    /// map, required: an 8-bit grayscale PNG when every label is below 256, else 16-bit) and, when the sample has instances, `instances/{split}/NAME.png`
    /// (16-bit ids: instance `k` gets id `k + 1`, a later mask over an earlier one). Reading
    /// it back gives the same sample when each instance's pixels carry its class in the
    /// semantic map and masks do not overlap (instances then come sorted by id, i.e. in
    /// order).
    ///
    /// Errors: [`Error::InvalidArgument`] for a sample without semantic map, buffers that do
    /// not match its size or more than 65535 instances; [`Error::BadFile`] naming a file that
    /// cannot be written.
    pub fn write_sample(
        root: impl AsRef<Path>,
        split: &str,
        name: &str,
        sample: &Sample,
    ) -> Result<()> {
        let root = root.as_ref();
        let (w, h) = (sample.width, sample.height);
        let n = w.saturating_mul(h);
        let Some(semantic) = &sample.semantic else {
            return Err(Error::InvalidArgument(
                "the demo layout needs a semantic map".into(),
            ));
        };
        let (Ok(w32), Ok(h32)) = (u32::try_from(w), u32::try_from(h)) else {
            return Err(Error::InvalidArgument(format!(
                "size {w} x {h} is too large"
            )));
        };
        let sizes_ok = n > 0
            && sample.image.len() == n * 3
            && semantic.len() == n
            && sample
                .instances
                .as_ref()
                .is_none_or(|v| v.len() < 65536 && v.iter().all(|a| a.mask.len() == n));
        if !sizes_ok {
            return Err(Error::InvalidArgument(format!(
                "sample buffers do not match its {w} x {h} size (or more than 65535 instances)"
            )));
        }
        let file = |dir: &str| join(&root.join(dir).join(split), &format!("{name}.png"));
        let save = |path: &Path, res: std::result::Result<(), image::ImageError>| {
            res.map_err(|e| bad_file(path, format!("cannot write: {e}")))
        };
        let mkdir = |path: &Path| -> Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| bad_file(parent, format!("cannot create: {e}")))?;
            }
            Ok(())
        };
        let img_path = file("images");
        mkdir(&img_path)?;
        let rgb = image::RgbImage::from_raw(w32, h32, sample.image.clone())
            .ok_or_else(|| Error::InvalidArgument("image buffer size".into()))?;
        save(
            &img_path,
            rgb.save_with_format(&img_path, image::ImageFormat::Png),
        )?;
        let ann_path = file("annotations");
        mkdir(&ann_path)?;
        let res = if semantic.iter().all(|&v| v <= 255) {
            let bytes = semantic.iter().map(|&v| v as u8).collect();
            image::GrayImage::from_raw(w32, h32, bytes)
                .map(|g| g.save_with_format(&ann_path, image::ImageFormat::Png))
        } else {
            image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(w32, h32, semantic.clone())
                .map(|g| g.save_with_format(&ann_path, image::ImageFormat::Png))
        };
        let res = res.ok_or_else(|| Error::InvalidArgument("semantic buffer size".into()))?;
        save(&ann_path, res)?;
        if let Some(instances) = &sample.instances {
            let mut ids = vec![0u16; n];
            for (k, a) in instances.iter().enumerate() {
                for (id, &m) in ids.iter_mut().zip(&a.mask) {
                    if m {
                        *id = k as u16 + 1;
                    }
                }
            }
            let inst_path = file("instances");
            mkdir(&inst_path)?;
            let map = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(w32, h32, ids)
                .ok_or_else(|| Error::InvalidArgument("instance buffer size".into()))?;
            save(
                &inst_path,
                map.save_with_format(&inst_path, image::ImageFormat::Png),
            )?;
        }
        Ok(())
    }
}

impl CustomConfig {
    /// Checks the class settings (class count, ignore index, palette length, thing classes,
    /// instances without label maps) and returns the palette: `palette`, or the VOC palette
    /// when it is empty.
    fn checked_palette(&self) -> Result<Vec<[u8; 3]>> {
        let n = self.classes.len();
        if n == 0 || n > usize::from(u16::MAX) {
            return Err(Error::InvalidArgument(format!(
                "a dataset needs 1..=65535 classes (16-bit labels), got {n}"
            )));
        }
        if (self.ignore_index as usize) < n {
            return Err(Error::InvalidArgument(format!(
                "ignore index {} is a class index (there are {n} classes)",
                self.ignore_index
            )));
        }
        let palette = if self.palette.is_empty() {
            crate::palette::voc_palette(n)
        } else if self.palette.len() == n {
            self.palette.clone()
        } else {
            return Err(Error::InvalidArgument(format!(
                "{n} classes but {} palette colours",
                self.palette.len()
            )));
        };
        if let Some(&t) = self.thing_classes.iter().find(|&&t| t as usize >= n) {
            return Err(Error::InvalidArgument(format!(
                "thing class {t} is not a class index (there are {n} classes)"
            )));
        }
        if self.instance_dir.is_some() && self.ann_dir.is_none() {
            return Err(Error::InvalidArgument(
                "instance ids need label maps (ann_dir): an instance's class is its pixels' label"
                    .into(),
            ));
        }
        Ok(palette)
    }
}

/// The folders of a [`CustomConfig`] under its root, each checked to exist.
struct Folders {
    img: PathBuf,
    ann: Option<PathBuf>,
    inst: Option<PathBuf>,
}

impl Folders {
    /// Joins `cfg`'s folders to `root` and checks that the root and each folder exist.
    fn resolve(root: &Path, cfg: &CustomConfig) -> Result<Self> {
        require_dir(root, "dataset root")?;
        let img = root.join(&cfg.img_dir);
        require_dir(&img, "image folder")?;
        let ann = cfg.ann_dir.as_ref().map(|d| root.join(d));
        if let Some(d) = &ann {
            require_dir(d, "annotation folder")?;
        }
        let inst = cfg.instance_dir.as_ref().map(|d| root.join(d));
        if let Some(d) = &inst {
            require_dir(d, "instance-id folder")?;
        }
        Ok(Folders { img, ann, inst })
    }

    /// The sample `name`: its image (required to exist when listed by a list file) and its
    /// label map and instance-id map, each required to exist when the config has its folder.
    fn entry(&self, cfg: &CustomConfig, name: &str) -> Result<Entry> {
        let image = join(&self.img, &format!("{name}{}", cfg.img_suffix));
        if cfg.list_file.is_some() {
            require_file(&image, "listed image")?;
        }
        let seg = match &self.ann {
            Some(d) => {
                let p = join(d, &format!("{name}{}", cfg.seg_map_suffix));
                require_file(&p, &format!("annotation of image {}", image.display()))?;
                Some(p)
            }
            None => None,
        };
        let inst = match &self.inst {
            Some(d) => {
                let p = join(d, &format!("{name}{}", cfg.instance_suffix));
                require_file(&p, &format!("instance-id map of image {}", image.display()))?;
                Some(p)
            }
            None => None,
        };
        Ok(Entry { image, seg, inst })
    }
}

/// The sample names (image paths relative to `img_dir`, without `img_suffix`): the lines of
/// the list file, or every file under `img_dir` ending in `img_suffix`. Fails when there are
/// none.
fn list_names(root: &Path, cfg: &CustomConfig, img_dir: &Path) -> Result<Vec<String>> {
    let names: Vec<String> = match &cfg.list_file {
        Some(list) => read_list(&root.join(list))?,
        None => {
            let files = list_files(img_dir, &cfg.img_suffix)?;
            files
                .into_iter()
                .map(|f| f[..f.len() - cfg.img_suffix.len()].to_string())
                .collect()
        }
    };
    if names.is_empty() {
        let what = match &cfg.list_file {
            Some(list) => root.join(list),
            None => img_dir.to_path_buf(),
        };
        return Err(bad_file(
            &what,
            format!("lists no images (suffix {:?})", cfg.img_suffix),
        ));
    }
    Ok(names)
}

/// The non-empty, trimmed lines of a list file.
fn read_list(path: &Path) -> Result<Vec<String>> {
    require_file(path, "list file")?;
    let text =
        std::fs::read_to_string(path).map_err(|e| bad_file(path, format!("cannot read: {e}")))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// mmseg's `reduce_zero_label`: 0 -> 255, v -> v - 1, and 255 stays 255.
pub(crate) fn reduce_zero_label(labels: &mut [u16]) {
    for v in labels {
        *v = match *v {
            0 | 255 => 255,
            x => x - 1,
        };
    }
}

/// Instances from an id map and the semantic map: one per distinct (class, id != 0), pixels
/// labelled `ignore` excluded, sorted by (id, class).
pub(crate) fn instances_from_ids(
    ids: &[u16],
    semantic: &[u16],
    ignore: u16,
) -> Vec<InstanceAnnotation> {
    let mut keys: Vec<(u16, u16)> = ids
        .iter()
        .zip(semantic)
        .filter(|&(&id, &c)| id != 0 && c != ignore)
        .map(|(&id, &c)| (id, c))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let mut out: Vec<InstanceAnnotation> = keys
        .iter()
        .map(|&(_, c)| InstanceAnnotation {
            class_id: c as u32,
            mask: vec![false; ids.len()],
            iscrowd: false,
        })
        .collect();
    for (i, (&id, &c)) in ids.iter().zip(semantic).enumerate() {
        if id != 0 && c != ignore {
            if let Ok(k) = keys.binary_search(&(id, c)) {
                out[k].mask[i] = true;
            }
        }
    }
    out
}

impl SegDataset for CustomDataset {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn info(&self) -> &DatasetInfo {
        &self.info
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let e = self
            .entries
            .get(index)
            .ok_or_else(|| out_of_range(index, self.entries.len()))?;
        let img = read_rgb8(&e.image)?;
        let size = (img.width, img.height);
        let semantic = match &e.seg {
            Some(p) => {
                let map = read_label_map(p)?;
                check_same_size(p, (map.width, map.height), &e.image, size)?;
                let mut labels = map.data;
                if self.reduce_zero_label {
                    reduce_zero_label(&mut labels);
                }
                check_labels(p, &labels, map.width, &self.info)?;
                Some(labels)
            }
            None => None,
        };
        let instances = match (&e.inst, &semantic) {
            (Some(p), Some(sem)) => {
                let ids = read_id_map(p)?;
                check_same_size(p, (ids.width, ids.height), &e.image, size)?;
                Some(instances_from_ids(&ids.data, sem, self.info.ignore_index))
            }
            _ => None,
        };
        Ok(Sample {
            path: e.image.clone(),
            width: img.width,
            height: img.height,
            image: img.data,
            semantic,
            instances,
        })
    }
}
