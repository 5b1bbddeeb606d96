//! Image-classification datasets, read as [`SegDataset`]s so that one training loop, one
//! augmentation pipeline and one collation serve classifiers and segmentors: a sample's
//! [`Sample::semantic`] map holds the image's class at every pixel, so flips, crops and
//! resizes keep it, and collation pads it with the ignore index (a classifier's target is the
//! class found under the padding: the map's minimum).
//!
//! Two layouts:
//! - [`ImageFolderConfig`]: torchvision's `ImageFolder` — `root/{split}/CLASS/**/NAME.png`
//!   (or `.jpg` / `.jpeg`), classes in sorted folder-name order, files sorted;
//! - [`IdxConfig`]: the IDX files of MNIST / Fashion-MNIST (`{name}-images-idx3-ubyte` +
//!   `{name}-labels-idx1-ubyte`, optionally `.gz`, as Debian's `dataset-fashion-mnist`
//!   installs them in `/usr/share/datasets/fashion-mnist`): 8-bit grey items, replicated to
//!   RGB; class names from the model.
//!
//! Class ids are 16-bit (the semantic map's type) and 65535 is the ignore index, so a dataset
//! has at most 65535 classes (ImageNet's 1000 fit). Every malformed file is an [`Error::BadFile`] naming it.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::io::{bad_file, read_rgb8};
use crate::layouts::{list_files, out_of_range, require_dir};
use crate::{DatasetInfo, Error, Result, Sample, SegDataset};

/// The ignore index of classification datasets (collation padding).
pub const CLASS_IGNORE: u16 = u16::MAX;

/// Image suffixes an image folder reads (lower-case comparison).
pub const IMAGE_SUFFIXES: [&str; 3] = [".png", ".jpg", ".jpeg"];

fn default_train() -> String {
    "train".into()
}
fn default_val() -> String {
    "val".into()
}
fn default_idx_val() -> String {
    "t10k".into()
}

/// torchvision `ImageFolder` splits: `root/{split}/CLASS/**/NAME.{png,jpg,jpeg}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFolderConfig {
    /// The folder holding the splits.
    pub root: PathBuf,
    /// Training split folder. Default `train`.
    #[serde(default = "default_train")]
    pub train_split: String,
    /// Validation split folder (same class folders). Default `val`.
    #[serde(default = "default_val")]
    pub val_split: String,
}

/// MNIST-style IDX files: `dir/{split}-images-idx3-ubyte[.gz]` + `dir/{split}-labels-idx1-ubyte[.gz]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdxConfig {
    /// The folder holding the files (Debian: `/usr/share/datasets/fashion-mnist`).
    pub dir: PathBuf,
    /// Training split's file prefix. Default `train`.
    #[serde(default = "default_train")]
    pub train_split: String,
    /// Validation split's file prefix. Default `t10k`.
    #[serde(default = "default_idx_val")]
    pub val_split: String,
    /// Use only the first `n` items of each split. Default: all.
    #[serde(default)]
    pub limit: Option<usize>,
}

fn fix(p: &mut PathBuf, base: &Path) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}

impl ImageFolderConfig {
    /// Makes a relative root relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        fix(&mut self.root, base);
    }

    /// Opens split folder `split` (`train_split`, `val_split` or any other).
    pub fn open(&self, split: &str) -> Result<ClassificationDataset> {
        ClassificationDataset::image_folder(&self.root.join(split))
    }
}

impl IdxConfig {
    /// Makes a relative folder relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        fix(&mut self.dir, base);
    }

    /// Opens the split whose files start with `split` (`train_split`, `val_split` or any
    /// other) with the model's `classes`.
    pub fn open(&self, split: &str, classes: &[String]) -> Result<ClassificationDataset> {
        let find = |kind: &str| {
            let raw = self.dir.join(format!("{split}-{kind}-ubyte"));
            let gz = self.dir.join(format!("{split}-{kind}-ubyte.gz"));
            if raw.is_file() || !gz.is_file() {
                raw
            } else {
                gz
            }
        };
        let mut ds =
            ClassificationDataset::idx(&find("images-idx3"), &find("labels-idx1"), classes)?;
        if let Some(n) = self.limit {
            ds.truncate(n);
        }
        Ok(ds)
    }
}

#[derive(Debug, Clone)]
enum Items {
    Files(Vec<(PathBuf, u16)>),
    Idx {
        path: PathBuf,
        pixels: Vec<u8>,
        labels: Vec<u8>,
        rows: usize,
        cols: usize,
    },
}

/// A classification dataset (see the module docs).
#[derive(Debug, Clone)]
pub struct ClassificationDataset {
    items: Items,
    len: usize,
    info: DatasetInfo,
}

fn info(classes: Vec<String>, what: &Path) -> Result<DatasetInfo> {
    if classes.is_empty() || classes.len() > CLASS_IGNORE as usize {
        return Err(bad_file(
            what,
            format!(
                "{} classes: a classification dataset has 1..=65535 (16-bit class ids)",
                classes.len()
            ),
        ));
    }
    let palette = (0..classes.len())
        .map(|i| {
            [
                (i * 67 % 256) as u8,
                (i * 131 % 256) as u8,
                (i * 29 % 256) as u8,
            ]
        })
        .collect();
    Ok(DatasetInfo {
        classes,
        palette,
        ignore_index: CLASS_IGNORE,
        thing_classes: Vec::new(),
    })
}

/// A whole file, gunzipped when it starts with gzip's magic (at most 4 GiB either way).
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| bad_file(path, format!("cannot read: {e}")))?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .take(1 << 32)
            .read_to_end(&mut out)
            .map_err(|e| bad_file(path, format!("corrupt gzip: {e}")))?;
        Ok(out)
    } else {
        Ok(bytes)
    }
}

/// The dimensions of an unsigned-byte IDX array of `ndims` dimensions, and its data.
fn parse_idx<'a>(b: &'a [u8], ndims: u8, path: &Path) -> Result<(Vec<usize>, &'a [u8])> {
    if b.len() < 4 || b[0] != 0 || b[1] != 0 || b[2] != 0x08 || b[3] != ndims {
        return Err(bad_file(
            path,
            format!("not an IDX file of unsigned bytes with {ndims} dimension(s)"),
        ));
    }
    let head = 4 + 4 * ndims as usize;
    if b.len() < head {
        return Err(bad_file(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..ndims as usize)
        .map(|i| {
            let at = 4 + 4 * i;
            u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
        })
        .collect();
    let n = dims.iter().try_fold(1usize, |a, d| a.checked_mul(*d));
    if n != Some(b.len() - head) {
        return Err(bad_file(
            path,
            format!(
                "dimensions {dims:?} do not match the {} data bytes",
                b.len() - head
            ),
        ));
    }
    Ok((dims, &b[head..]))
}

impl ClassificationDataset {
    /// Reads a torchvision `ImageFolder` split: every sub-folder of `dir` is a class (sorted
    /// by name), every `.png` / `.jpg` / `.jpeg` file under it (recursively, sorted) a sample.
    pub fn image_folder(dir: &Path) -> Result<Self> {
        require_dir(dir, "image folder split")?;
        let mut classes = Vec::new();
        let rd = std::fs::read_dir(dir).map_err(|e| bad_file(dir, format!("cannot list: {e}")))?;
        for e in rd {
            let e = e.map_err(|e| bad_file(dir, format!("cannot list: {e}")))?;
            if e.path().is_dir() {
                let name = e.file_name();
                let name = name
                    .to_str()
                    .ok_or_else(|| bad_file(&e.path(), "folder name is not valid UTF-8"))?;
                classes.push(name.to_string());
            }
        }
        classes.sort();
        let info = info(classes, dir)?;
        let mut files = Vec::new();
        for (c, name) in info.classes.iter().enumerate() {
            let cdir = dir.join(name);
            for rel in list_files(&cdir, "")? {
                let lower = rel.to_ascii_lowercase();
                if IMAGE_SUFFIXES.iter().any(|s| lower.ends_with(s)) {
                    files.push((cdir.join(rel), c as u16));
                }
            }
        }
        Ok(Self {
            len: files.len(),
            items: Items::Files(files),
            info,
        })
    }

    /// Reads an IDX image file (`N x H x W` unsigned bytes) and its label file (`N` class
    /// ids below `classes.len()`); either may be gzipped.
    pub fn idx(images: &Path, labels: &Path, classes: &[String]) -> Result<Self> {
        let info = info(classes.to_vec(), labels)?;
        let ib = read_maybe_gz(images)?;
        let (dims, pixels) = parse_idx(&ib, 3, images)?;
        let lb = read_maybe_gz(labels)?;
        let (ldims, ls) = parse_idx(&lb, 1, labels)?;
        if ldims[0] != dims[0] {
            return Err(bad_file(
                labels,
                format!(
                    "{} labels for {} images in {}",
                    ldims[0],
                    dims[0],
                    images.display()
                ),
            ));
        }
        if let Some((i, l)) = ls
            .iter()
            .enumerate()
            .find(|(_, l)| **l as usize >= classes.len())
        {
            return Err(bad_file(
                labels,
                format!(
                    "item {i}: label {l} is not a class of the model (0..{})",
                    classes.len()
                ),
            ));
        }
        if dims[1] == 0 || dims[2] == 0 {
            return Err(bad_file(images, "empty items (0 rows or columns)"));
        }
        Ok(Self {
            len: dims[0],
            items: Items::Idx {
                path: images.to_path_buf(),
                pixels: pixels.to_vec(),
                labels: ls.to_vec(),
                rows: dims[1],
                cols: dims[2],
            },
            info,
        })
    }

    /// Keeps only the first `n` samples.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    /// The class of sample `index`.
    pub fn class(&self, index: usize) -> Option<u16> {
        if index >= self.len {
            return None;
        }
        match &self.items {
            Items::Files(f) => f.get(index).map(|(_, c)| *c),
            Items::Idx { labels, .. } => labels.get(index).map(|&c| u16::from(c)),
        }
    }
}

impl SegDataset for ClassificationDataset {
    fn len(&self) -> usize {
        self.len
    }

    fn info(&self) -> &DatasetInfo {
        &self.info
    }

    fn get(&self, index: usize) -> Result<Sample> {
        if index >= self.len {
            return Err(out_of_range(index, self.len));
        }
        let (path, width, height, image, class) = match &self.items {
            Items::Files(f) => {
                let (path, class) = &f[index];
                let img = read_rgb8(path)?;
                (path.clone(), img.width, img.height, img.data, *class)
            }
            Items::Idx {
                path,
                pixels,
                labels,
                rows,
                cols,
            } => {
                let n = rows * cols;
                let grey = &pixels[index * n..(index + 1) * n];
                let rgb = grey.iter().flat_map(|v| [*v, *v, *v]).collect();
                let p = PathBuf::from(format!("{}#{index}", path.display()));
                (p, *cols, *rows, rgb, u16::from(labels[index]))
            }
        };
        Ok(Sample {
            path,
            width,
            height,
            image,
            semantic: Some(vec![class; width * height]),
            instances: None,
        })
    }
}

/// The image class of every sample of a collated label batch (`N x H x W`, classes where
/// the image is, `ignore` in padding): each map's minimum. An all-ignore map (nothing but
/// padding) is an error.
pub fn classes_of_label_maps(maps: &[u32], n: usize, ignore: u32) -> Result<Vec<u32>> {
    if n == 0 || maps.is_empty() || !maps.len().is_multiple_of(n) {
        return Err(Error::InvalidArgument(format!(
            "{} label values for {n} samples",
            maps.len()
        )));
    }
    let per = maps.len() / n;
    maps.chunks(per)
        .enumerate()
        .map(|(i, m)| match m.iter().min() {
            Some(&c) if c != ignore => Ok(c),
            _ => Err(Error::InvalidArgument(format!(
                "sample {i} of the batch has no labelled pixel"
            ))),
        })
        .collect()
}
