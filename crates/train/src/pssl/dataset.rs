//! PSSL datasets for segmentation training: each image of a classification set with its
//! pseudo label, as a [`SegDataset`] the trainer reads like any other.
//!
//! Two label formats:
//! - segkit's ([`PsslDatasetConfig`]): the decile PNGs `segkit pssl generate` writes (deciles
//!   0..=9, 255 = ignore, the class in a `pssl-class` text chunk), next to the same `NAME CLASS`
//!   list and image folder `generate` read. The threshold is applied at load time: a pixel is
//!   the image's class where its decile is at least `min_decile` (PSSL: 9, the top 10 %),
//!   background elsewhere, ignored where the decile is 255. Changing the threshold needs no
//!   new explanations.
//! - PaddleSeg's released form ([`PaddleSegPsslConfig`], `paddleseg/datasets/pssl.py`):
//!   `pssl_root/train.txt` lists `train/SYNSET/SYNSET_N.JPEG_eiseg.npz` masks (array `arr_0`);
//!   the image is `imagenet_root/train/SYNSET/SYNSET_N.JPEG`; the class is the line number of
//!   `SYNSET` (the file name's part before `_`) in `pssl_root/imagenet_lsvrc_2015_synsets.txt`;
//!   the label is the class where the mask equals 1 and background (the class count, 1000)
//!   elsewhere.
//!
//! Labels: the model's classes are the image classes and **background**, by default its last
//! class (PaddleSeg: 1000 ImageNet classes + background 1000 = 1001 classes; [`Background`]),
//! or its first (image class `c` is then model class `c + 1`, as in segkit's demo); crop
//! padding and decile 255 take the dataset's ignore index ([`pssl_ignore_index`]: 255 for a
//! model of at most 255 classes, else the class count, PaddleSeg's 1001). Train with the
//! weighted cross-entropy (1.0 per class, 0.1 background: [`set_pssl_losses`],
//! `segkit_losses::pssl_class_weight`).
//!
//! Training labels are 16-bit ([`segkit_data::Sample::semantic`]): up to 65535 classes, so
//! PaddleSeg's 1001-class ImageNet set (and any ImageNet-scale ensemble's labels) fits. The
//! label files stay 8-bit deciles with the class in a text chunk, whatever the class count.

use std::path::{Path, PathBuf};

use segkit_data::io::read_rgb8;
use segkit_data::{DatasetInfo, Sample, SegDataset};
use segkit_losses::{pssl_class_weight, LossConfig};
use segkit_models::encoder_decoder::heads::HeadRole;
use segkit_models::SegmentorConfig;
use serde::{Deserialize, Serialize};

use super::generate::{label_path, read_jobs};
use super::labels::{read_paddleseg_mask, PsslLabel};
use crate::{TrainError, TrainResult};

/// The ignore index of a PSSL dataset for a model of `num_classes` classes (crop padding,
/// and decile 255): mmseg's 255 while that is not a class, else the class count (PaddleSeg's
/// `ignore_index = 1001` for its 1000 ImageNet classes + background).
pub fn pssl_ignore_index(num_classes: usize) -> u16 {
    if num_classes <= 255 {
        255
    } else {
        u16::try_from(num_classes).unwrap_or(u16::MAX)
    }
}

fn default_min_decile() -> u8 {
    9
}
fn default_background_weight() -> Option<f32> {
    Some(0.1)
}

/// Where background sits among the model's classes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Background {
    /// The last class: image class `c` is model class `c` (PaddleSeg: 1000 ImageNet classes,
    /// background 1000).
    #[default]
    Last,
    /// The first class (mmseg-style sets such as VOC, segkit's demo): image class `c` is model
    /// class `c + 1`, background 0.
    First,
}

impl Background {
    /// The background's class id in a model of `num_classes` classes.
    pub fn index(self, num_classes: usize) -> usize {
        match self {
            Background::Last => num_classes.saturating_sub(1),
            Background::First => 0,
        }
    }

    /// The model class of image class `c`.
    pub fn model_class(self, c: u32) -> u32 {
        match self {
            Background::Last => c,
            Background::First => c + 1,
        }
    }
}

/// segkit's PSSL labels (`segkit pssl generate`'s output) as a training set. Relative paths
/// are resolved against the training config's folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PsslDatasetConfig {
    /// The image folder (`generate --images`).
    pub images: PathBuf,
    /// The label folder (`generate --out`): `NAME` with extension `.png` per list line.
    pub labels: PathBuf,
    /// The list of training images (`generate --labels`): `NAME CLASS` per line.
    pub list: PathBuf,
    /// The list of validation images (labels in the same folder). Default: `list`.
    #[serde(default)]
    pub val_list: Option<PathBuf>,
    /// Foreground threshold: deciles `>= min_decile` take the image's class (1..=9). Default 9
    /// (D9, the paper's choice).
    #[serde(default = "default_min_decile")]
    pub min_decile: u8,
    /// Where background sits among the model's classes. Default `Last`.
    #[serde(default)]
    pub background: Background,
    /// The segmentor's softmax cross-entropies become PSSL's weighted cross-entropy with this
    /// background weight (1.0 per class; [`set_pssl_losses`]). Default 0.1; `null` keeps the
    /// model config's losses.
    #[serde(default = "default_background_weight")]
    pub background_weight: Option<f32>,
}

fn default_paddle_list() -> PathBuf {
    "train.txt".into()
}
fn default_synsets() -> PathBuf {
    "imagenet_lsvrc_2015_synsets.txt".into()
}

/// PaddleSeg's released PSSL masks as a training set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaddleSegPsslConfig {
    /// The ImageNet folder (holding `train/SYNSET/*.JPEG`).
    pub imagenet_root: PathBuf,
    /// The PSSL folder (holding `train/SYNSET/*.JPEG_eiseg.npz`, the list and the synsets).
    pub pssl_root: PathBuf,
    /// The training list, relative to `pssl_root`. Default `train.txt`.
    #[serde(default = "default_paddle_list")]
    pub list: PathBuf,
    /// The validation list, relative to `pssl_root`. Default: `list`.
    #[serde(default)]
    pub val_list: Option<PathBuf>,
    /// The class order, relative to `pssl_root`. Default `imagenet_lsvrc_2015_synsets.txt`.
    #[serde(default = "default_synsets")]
    pub synsets: PathBuf,
    /// Where background sits among the model's classes. Default `Last` (PaddleSeg's 1000).
    #[serde(default)]
    pub background: Background,
    /// As [`PsslDatasetConfig::background_weight`]. Default 0.1.
    #[serde(default = "default_background_weight")]
    pub background_weight: Option<f32>,
}

impl PsslDatasetConfig {
    /// Makes the relative paths relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.images, &mut self.labels, &mut self.list] {
            fix(p, base);
        }
        if let Some(p) = &mut self.val_list {
            fix(p, base);
        }
    }
}

impl PaddleSegPsslConfig {
    /// Makes the relative roots relative to `base` (the lists stay relative to `pssl_root`).
    pub fn resolve_paths(&mut self, base: &Path) {
        fix(&mut self.imagenet_root, base);
        fix(&mut self.pssl_root, base);
    }
}

fn fix(p: &mut PathBuf, base: &Path) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> segkit_core::Error {
    segkit_core::Error::BadFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// A [`TrainError`] as the component error a [`SegDataset`] returns (`path` names it when
/// it is not already a component error).
fn as_core(e: TrainError, path: &Path) -> segkit_core::Error {
    match e {
        TrainError::Core(c) => c,
        other => bad(path, other),
    }
}

#[derive(Debug, Clone)]
enum Format {
    Segkit { min_decile: u8 },
    PaddleSeg,
}

#[derive(Debug, Clone)]
struct Entry {
    image: PathBuf,
    label: PathBuf,
    class: u32,
}

/// A PSSL training set (see the module docs).
#[derive(Debug, Clone)]
pub struct PsslDataset {
    entries: Vec<Entry>,
    format: Format,
    position: Background,
    background: u16,
    info: DatasetInfo,
}

/// `classes` (image classes and background) as the dataset's info, checked to fit 16-bit
/// labels with a free ignore index.
fn pssl_info(classes: &[String], palette: &[[u8; 3]], what: &Path) -> TrainResult<DatasetInfo> {
    let n = classes.len();
    if n < 2 || n >= usize::from(u16::MAX) {
        return Err(bad(
            what,
            format!(
                "a PSSL model needs 2..=65534 classes named in its `meta.classes` (the image \
                 classes and background; labels are 16-bit), the model names {n}"
            ),
        )
        .into());
    }
    Ok(DatasetInfo {
        classes: classes.to_vec(),
        palette: palette.to_vec(),
        ignore_index: pssl_ignore_index(n),
        thing_classes: Vec::new(),
    })
}

impl PsslDataset {
    /// Opens segkit-format labels; `val` picks `val_list`. `classes` / `palette`: the model's
    /// (the image classes and background, placed as `cfg.background` says). Errors name the
    /// list (line) or the missing label.
    pub fn segkit(
        cfg: &PsslDatasetConfig,
        val: bool,
        classes: &[String],
        palette: &[[u8; 3]],
    ) -> TrainResult<Self> {
        let list = match (&cfg.val_list, val) {
            (Some(v), true) => v,
            _ => &cfg.list,
        };
        let info = pssl_info(classes, palette, list)?;
        if !(1..=9).contains(&cfg.min_decile) {
            return Err(bad(
                list,
                format!("min_decile must be 1..=9, got {}", cfg.min_decile),
            )
            .into());
        }
        let images = classes.len() as u32 - 1;
        let mut entries = Vec::new();
        for job in read_jobs(list, &cfg.images)? {
            if job.class >= images {
                return Err(bad(
                    list,
                    format!(
                        "`{}`: class {} is not an image class of the model ({images} image \
                         classes and background)",
                        job.name, job.class
                    ),
                )
                .into());
            }
            let label = label_path(&cfg.labels, &job);
            if !label.is_file() {
                return Err(bad(
                    &label,
                    format!(
                        "no PSSL label for image `{}` (run `segkit pssl generate` with this \
                         list)",
                        job.name
                    ),
                )
                .into());
            }
            entries.push(Entry {
                image: job.image,
                label,
                class: job.class,
            });
        }
        Ok(Self {
            entries,
            format: Format::Segkit {
                min_decile: cfg.min_decile,
            },
            position: cfg.background,
            background: cfg.background.index(classes.len()) as u16,
            info,
        })
    }

    /// Opens PaddleSeg-format masks; `val` picks `val_list`. The model's classes must be the
    /// synsets and background (placed as `cfg.background` says).
    pub fn paddleseg(
        cfg: &PaddleSegPsslConfig,
        val: bool,
        classes: &[String],
        palette: &[[u8; 3]],
    ) -> TrainResult<Self> {
        let list = cfg.pssl_root.join(match (&cfg.val_list, val) {
            (Some(v), true) => v,
            _ => &cfg.list,
        });
        let synsets_path = cfg.pssl_root.join(&cfg.synsets);
        let text = std::fs::read_to_string(&synsets_path).map_err(|e| bad(&synsets_path, e))?;
        let synsets: Vec<&str> = text.lines().map(str::trim).collect();
        if synsets.len() + 1 != classes.len() {
            return Err(bad(
                &synsets_path,
                format!(
                    "{} synsets need a model of {} classes (synsets and background), the \
                     model has {}",
                    synsets.len(),
                    synsets.len() + 1,
                    classes.len()
                ),
            )
            .into());
        }
        let info = pssl_info(classes, palette, &synsets_path)?;
        let text = std::fs::read_to_string(&list).map_err(|e| bad(&list, e))?;
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let rel = line.trim();
            if rel.is_empty() {
                continue;
            }
            let at = |r: String| bad(&list, format!("line {}: {r}", i + 1));
            let stem = rel
                .split_once(".JPEG")
                .map(|(s, _)| s)
                .ok_or_else(|| at(format!("`{rel}` does not name a `*.JPEG_eiseg.npz` mask")))?;
            let image = cfg.imagenet_root.join(format!("{stem}.JPEG"));
            let file = Path::new(stem)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let synset = file.split('_').next().unwrap_or_default();
            let class = synsets.iter().position(|s| *s == synset).ok_or_else(|| {
                at(format!(
                    "synset `{synset}` is not in {}",
                    cfg.synsets.display()
                ))
            })?;
            entries.push(Entry {
                image,
                label: cfg.pssl_root.join(rel),
                class: class as u32,
            });
        }
        Ok(Self {
            entries,
            format: Format::PaddleSeg,
            position: cfg.background,
            background: cfg.background.index(classes.len()) as u16,
            info,
        })
    }

    /// The background's class id in the model.
    pub fn background(&self) -> u16 {
        self.background
    }

    /// The image class of sample `index` (the list's; the model's is one more when
    /// background comes first).
    pub fn class(&self, index: usize) -> Option<u32> {
        self.entries.get(index).map(|e| e.class)
    }

    /// The label file of sample `index`.
    pub fn label_file(&self, index: usize) -> Option<&Path> {
        self.entries.get(index).map(|e| e.label.as_path())
    }

    fn targets(&self, e: &Entry) -> segkit_data::Result<PsslLabel> {
        match self.format {
            Format::Segkit { .. } => {
                let l = PsslLabel::read(&e.label).map_err(|err| as_core(err, &e.label))?;
                if l.class != e.class {
                    return Err(bad(
                        &e.label,
                        format!(
                            "the label holds class {}, the list says {} (regenerate the label)",
                            l.class, e.class
                        ),
                    ));
                }
                Ok(l)
            }
            Format::PaddleSeg => {
                read_paddleseg_mask(&e.label, e.class).map_err(|err| as_core(err, &e.label))
            }
        }
    }
}

impl SegDataset for PsslDataset {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn info(&self) -> &DatasetInfo {
        &self.info
    }

    fn get(&self, index: usize) -> segkit_data::Result<Sample> {
        let e = self.entries.get(index).ok_or_else(|| {
            segkit_core::Error::InvalidArgument(format!(
                "sample {index} of a dataset of {}",
                self.entries.len()
            ))
        })?;
        let img = read_rgb8(&e.image)?;
        let label = self.targets(e)?;
        if (label.width, label.height) != (img.width, img.height) {
            return Err(bad(
                &e.label,
                format!(
                    "label is {} x {}, image {} is {} x {}",
                    label.width,
                    label.height,
                    e.image.display(),
                    img.width,
                    img.height
                ),
            ));
        }
        let min = match self.format {
            Format::Segkit { min_decile } => min_decile,
            Format::PaddleSeg => 9,
        };
        let mut label = label;
        label.class = self.position.model_class(e.class);
        let ignore = u32::from(self.info.ignore_index);
        let semantic = label
            .targets(min, u32::from(self.background), ignore)
            .into_iter()
            .map(|v| v as u16)
            .collect();
        Ok(Sample {
            path: e.image.clone(),
            width: img.width,
            height: img.height,
            image: img.data,
            semantic: Some(semantic),
            instances: None,
        })
    }
}

/// Makes every softmax cross-entropy of `cfg` (each head's configured list, or mmseg's
/// defaults for the head, e.g. the decode head's weight 1.0 and the auxiliary FCN's 0.4) PSSL's
/// weighted cross-entropy: class weights 1.0, `background_weight` (PSSL: 0.1) for the
/// background (where `background` places it), averaged over the non-ignored pixels by their weights (PaddleSeg's
/// normalisation, torch `CrossEntropyLoss(weight, ignore_index)`). The lists are written into
/// `cfg.losses`, so the saved model config records them.
pub fn set_pssl_losses(cfg: &mut SegmentorConfig, background: Background, background_weight: f32) {
    let k = cfg.num_classes();
    let w = pssl_class_weight(k, background.index(k), background_weight);
    let mut decode = None;
    let mut aux = None;
    for (role, _, mut lists) in cfg.head_losses() {
        for l in lists.iter_mut().flat_map(|o| o.losses.iter_mut()) {
            let LossConfig::CrossEntropy(c) = l;
            if !c.use_sigmoid {
                c.class_weight = Some(w.clone());
                c.avg_non_ignore = true;
            }
        }
        match role {
            HeadRole::Decode => decode = Some(lists),
            HeadRole::Auxiliary => aux = Some(lists),
        }
    }
    cfg.losses.decode_head = decode;
    cfg.losses.auxiliary_head = aux;
}

/// With a PSSL dataset whose `background_weight` is set, makes `cfg`'s cross-entropies PSSL's
/// weighted cross-entropy ([`set_pssl_losses`]); any other dataset leaves `cfg` as it is. The
/// trainer calls it on the segmentor it builds, so the saved `config.json` records the loss.
pub fn apply_pssl_losses(dataset: &crate::DatasetConfig, cfg: &mut SegmentorConfig) {
    let (background, weight) = match dataset {
        crate::DatasetConfig::Pssl(c) => (c.background, c.background_weight),
        crate::DatasetConfig::PaddleSegPssl(c) => (c.background, c.background_weight),
        _ => return,
    };
    if let Some(w) = weight {
        set_pssl_losses(cfg, background, w);
    }
}
