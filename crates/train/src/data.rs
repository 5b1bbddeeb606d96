//! Data for training and evaluation: opening the configured dataset (segkit-data's readers),
//! the training pipeline (segkit-data's mmseg augmentation), the shuffled data order and batch
//! collation.
//!
//! - [`open_dataset`]: the `custom` layout (`images/{split}/NAME.png`,
//!   `annotations/{split}/NAME.png`), ADE20K, Cityscapes or Pascal VOC, as
//!   [`segkit_data::SegDataset`]s; every missing or malformed file is a
//!   [`segkit_data::Error::BadFile`] naming it;
//! - the training transforms are [`segkit_data::augment::Transform`]s (mmseg's
//!   `RandomResize`, `RandomCrop`, `RandomFlip`, `PhotoMetricDistortion`, ...), each sample
//!   drawing from its own stream `Rng::for_sample(seed, 0, sample number)`;
//! - [`DataOrder`]: mmengine's `InfiniteSampler(shuffle=True)` — a fresh permutation of the
//!   dataset per epoch, drawn from `(seed, epoch)`, so that the position `(epoch, pos)` is the
//!   whole state a resumed run needs;
//! - [`collate`]: normalisation (the model's data preprocessor, unless the pipeline already
//!   normalised) and padding to the training size (image 0 after normalisation, labels 255),
//!   as mmseg's `SegDataPreProcessor`.

use std::path::Path;

use candle_core::{Device, Tensor};
use segkit_data::augment::{AugImage, Augmented};
use segkit_data::layouts::{CustomConfig, CustomDataset};
pub use segkit_data::{DatasetInfo, Sample, SegDataset};

use crate::config::DatasetConfig;
use crate::{TrainError, TrainResult};
use segkit_models::DataPreprocessorConfig;
use segkit_models::DatasetMeta;

/// Which split of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split<'a> {
    /// The configured training split.
    Train,
    /// The configured validation split.
    Val,
    /// A split by name.
    Named(&'a str),
}

/// Opens a split of the configured dataset. The `custom` layout takes its class names and
/// palette from the model (`meta`); the standard layouts bring their own. Instances are not
/// read (semantic training).
pub fn open_dataset(
    cfg: &DatasetConfig,
    split: Split<'_>,
    meta: &DatasetMeta,
) -> TrainResult<Box<dyn SegDataset>> {
    let pick = |train: &str, val: &str| -> String {
        match split {
            Split::Train => train.to_string(),
            Split::Val => val.to_string(),
            Split::Named(s) => s.to_string(),
        }
    };
    Ok(match cfg {
        DatasetConfig::Custom {
            root,
            train_split,
            val_split,
            ignore_index,
        } => {
            let split = pick(train_split, val_split);
            let mut c =
                CustomConfig::demo(&split, meta.classes.clone(), meta.palette.clone(), false);
            c.ignore_index = *ignore_index;
            Box::new(CustomDataset::with_config(root, &c)?)
        }
        DatasetConfig::Ade20k { root } => Box::new(segkit_data::layouts::Ade20kDataset::new(
            root,
            &pick("training", "validation"),
        )?),
        DatasetConfig::Cityscapes { root } => Box::new(
            segkit_data::layouts::CityscapesDataset::new(root, &pick("train", "val"))?,
        ),
        DatasetConfig::Voc { root, aug } => {
            let split = pick(if *aug { "aug" } else { "train" }, "val");
            if *aug && split != "val" {
                Box::new(segkit_data::layouts::VocDataset::aug(root, &split)?)
            } else {
                Box::new(segkit_data::layouts::VocDataset::new(root, &split)?)
            }
        }
        DatasetConfig::ImageFolder(c) => Box::new(c.open(&pick(&c.train_split, &c.val_split))?),
        DatasetConfig::Idx(c) => {
            Box::new(c.open(&pick(&c.train_split, &c.val_split), &meta.classes)?)
        }
        DatasetConfig::Pssl(c) => Box::new(crate::pssl::PsslDataset::segkit(
            c,
            split != Split::Train,
            &meta.classes,
            &meta.palette,
        )?),
        DatasetConfig::CocoPanoptic {
            root,
            train_split,
            val_split,
        } => Box::new(segkit_data::layouts::CocoPanopticDataset::new(
            root,
            &pick(train_split, val_split),
        )?),
        DatasetConfig::CocoInstances(c) => Box::new(c.open(&pick(&c.train_split, &c.val_split))?),
        DatasetConfig::PaddleSegPssl(c) => Box::new(crate::pssl::PsslDataset::paddleseg(
            c,
            split != Split::Train,
            &meta.classes,
            &meta.palette,
        )?),
    })
}

/// The first `n` samples of a dataset.
pub struct Limited {
    inner: Box<dyn SegDataset>,
    n: usize,
}

impl Limited {
    /// `inner` cut to `n` samples.
    pub fn new(inner: Box<dyn SegDataset>, n: usize) -> Self {
        Self { inner, n }
    }
}

impl SegDataset for Limited {
    fn len(&self) -> usize {
        self.inner.len().min(self.n)
    }
    fn info(&self) -> &DatasetInfo {
        self.inner.info()
    }
    fn get(&self, index: usize) -> segkit_data::Result<Sample> {
        if index >= self.len() {
            return Err(segkit_data::Error::InvalidArgument(format!(
                "sample {index} of a dataset of {}",
                self.len()
            )));
        }
        self.inner.get(index)
    }
}

/// A SplitMix64 random stream (the whole state is one `u64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleRng(pub u64);

impl SampleRng {
    /// The stream of sample number `counter` of a run seeded with `seed`.
    pub fn for_sample(seed: u64, counter: u64) -> Self {
        let mut s = seed ^ 0x5EED_5EED_5EED_5EED;
        let a = segkit_core::random::splitmix64(&mut s);
        Self(a ^ counter.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        segkit_core::random::splitmix64(&mut self.0)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// The shuffled, endless order of samples: one permutation per epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOrder {
    seed: u64,
    len: usize,
    epoch: u64,
    pos: usize,
    perm: Vec<usize>,
}

impl DataOrder {
    /// Starts at `(epoch, pos)` in a dataset of `len` samples.
    pub fn new(seed: u64, len: usize, epoch: u64, pos: usize) -> Self {
        Self {
            seed,
            len,
            epoch,
            pos,
            perm: Self::permutation(seed, epoch, len),
        }
    }

    /// Fisher-Yates shuffle of `0..len` with a stream seeded by `(seed, epoch)`.
    pub fn permutation(seed: u64, epoch: u64, len: usize) -> Vec<usize> {
        let mut rng = SampleRng::for_sample(seed ^ 0xD47A_0D3E, epoch);
        let mut p: Vec<usize> = (0..len).collect();
        for i in (1..len).rev() {
            let j = rng.below(i + 1);
            p.swap(i, j);
        }
        p
    }

    /// The current position `(epoch, index within the epoch)`.
    pub fn position(&self) -> (u64, usize) {
        (self.epoch, self.pos)
    }

    /// The next sample index.
    pub fn next_index(&mut self) -> usize {
        if self.pos >= self.len {
            self.epoch += 1;
            self.pos = 0;
            self.perm = Self::permutation(self.seed, self.epoch, self.len);
        }
        let i = self.perm[self.pos];
        self.pos += 1;
        i
    }
}

/// A collated batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Normalised images `N x 3 x H x W` (f32).
    pub images: Tensor,
    /// Class ids `N x H x W` (u32; the ignore index where unlabelled or padded).
    pub labels: Tensor,
    /// Per sample, its instances (panoptic segments) with masks padded to `H x W`; empty
    /// where the dataset has none (OneFormer's targets are built from them).
    pub instances: Vec<Vec<segkit_data::InstanceAnnotation>>,
}

/// Checks that every label is a class or the ignore index, naming the file otherwise.
pub(crate) fn check_labels(s: &Sample, k: usize, ignore: u16) -> TrainResult<()> {
    if let Some(sem) = &s.semantic {
        if let Some(&v) = sem.iter().find(|&&v| v != ignore && v as usize >= k) {
            return Err(segkit_data::Error::BadFile {
                path: s.path.clone(),
                reason: format!(
                    "label value {v} is neither a class (0..{k}) nor the ignore index {ignore}"
                ),
            }
            .into());
        }
    }
    Ok(())
}

/// Normalises (unless the pipeline did) and pads `samples` to `size` (`(h, w)`; default: the
/// largest in the batch).
pub fn collate(
    samples: &[Augmented],
    pre: &DataPreprocessorConfig,
    size: Option<[usize; 2]>,
    ignore: u16,
    device: &Device,
) -> TrainResult<Batch> {
    let n = samples.len();
    let (mut h, mut w) = size.map(|s| (s[0], s[1])).unwrap_or((0, 0));
    for s in samples {
        h = h.max(s.height);
        w = w.max(s.width);
    }
    let hw = h * w;
    let pad = pre.pad_val as f32;
    let mut img = vec![pad; n * 3 * hw];
    let mut lab = vec![ignore as u32; n * hw];
    for (k, s) in samples.iter().enumerate() {
        for c in 0..3 {
            let plane = &mut img[(k * 3 + c) * hw..(k * 3 + c + 1) * hw];
            match &s.image {
                AugImage::Rgb8(px) => {
                    let ic = if pre.rgb { c } else { 2 - c };
                    let (m, sd) = (pre.mean[c] as f32, pre.std[c] as f32);
                    for y in 0..s.height {
                        for x in 0..s.width {
                            plane[y * w + x] = (px[(y * s.width + x) * 3 + ic] as f32 - m) / sd;
                        }
                    }
                }
                AugImage::Normalized(v) => {
                    for y in 0..s.height {
                        for x in 0..s.width {
                            plane[y * w + x] = v[(y * s.width + x) * 3 + c];
                        }
                    }
                }
            }
        }
        if let Some(sem) = &s.semantic {
            let dst = &mut lab[k * hw..(k + 1) * hw];
            for y in 0..s.height {
                for x in 0..s.width {
                    dst[y * w + x] = sem[y * s.width + x] as u32;
                }
            }
        }
    }
    let instances = samples
        .iter()
        .map(|s| {
            let pad = |m: &[bool]| {
                let mut out = vec![false; hw];
                for y in 0..s.height {
                    out[y * w..y * w + s.width].copy_from_slice(&m[y * s.width..(y + 1) * s.width]);
                }
                out
            };
            s.instances
                .iter()
                .flatten()
                .map(|a| segkit_data::InstanceAnnotation {
                    class_id: a.class_id,
                    mask: pad(&a.mask),
                    iscrowd: a.iscrowd,
                })
                .collect()
        })
        .collect();
    Ok(Batch {
        images: Tensor::from_vec(img, (n, 3, h, w), device)?,
        labels: Tensor::from_vec(lab, (n, h, w), device)?,
        instances,
    })
}

/// Writes a small synthetic dataset in the `custom` layout: for each `(split, count)`,
/// `count` images of `size x size` with a noisy two-colour background (class 0) and one to
/// three axis-aligned rectangles of classes `1..classes` (each class with its own colour
/// family), plus their class maps. Deterministic in `seed`. For tests and examples.
pub fn write_toy_dataset(
    root: &Path,
    splits: &[(&str, usize)],
    size: usize,
    classes: u8,
    seed: u64,
) -> TrainResult<()> {
    let io = |p: &Path, e: &dyn std::fmt::Display| TrainError::Io {
        path: p.to_path_buf(),
        reason: e.to_string(),
    };
    for (si, &(split, count)) in splits.iter().enumerate() {
        let img_dir = root.join("images").join(split);
        let ann_dir = root.join("annotations").join(split);
        for d in [&img_dir, &ann_dir] {
            std::fs::create_dir_all(d).map_err(|e| io(d, &e))?;
        }
        for i in 0..count {
            let mut rng = SampleRng::for_sample(seed ^ ((si as u64 + 1) << 40), i as u64);
            let mut img = vec![0u8; size * size * 3];
            let mut lab = vec![0u8; size * size];
            let bg = [
                rng.below(100) as u8,
                rng.below(100) as u8,
                rng.below(100) as u8,
            ];
            for (p, px) in img.chunks_exact_mut(3).enumerate() {
                let n = rng.below(40) as u8;
                let stripe = ((p % size) / 4 % 2) as u8 * 20;
                for c in 0..3 {
                    px[c] = bg[c] + n + stripe;
                }
            }
            for _ in 0..1 + rng.below(3) {
                let class = 1 + rng.below(classes.max(2) as usize - 1) as u8;
                let (w, h) = (
                    size / 4 + rng.below(size / 2),
                    size / 4 + rng.below(size / 2),
                );
                let (x0, y0) = (rng.below(size - w + 1), rng.below(size - h + 1));
                let base = match class % 3 {
                    1 => [230u8, 60, 40],
                    2 => [40, 200, 60],
                    _ => [50, 80, 230],
                };
                for y in y0..y0 + h {
                    for x in x0..x0 + w {
                        let p = y * size + x;
                        lab[p] = class;
                        for c in 0..3 {
                            img[p * 3 + c] = base[c].saturating_sub(rng.below(30) as u8);
                        }
                    }
                }
            }
            let name = format!("{i:05}.png");
            let s = size as u32;
            let ip = img_dir.join(&name);
            image::RgbImage::from_raw(s, s, img)
                .ok_or_else(|| io(&ip, &"buffer size"))?
                .save(&ip)
                .map_err(|e| io(&ip, &e))?;
            let ap = ann_dir.join(&name);
            image::GrayImage::from_raw(s, s, lab)
                .ok_or_else(|| io(&ap, &"buffer size"))?
                .save(&ap)
                .map_err(|e| io(&ap, &e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(w: usize, h: usize) -> Augmented {
        Augmented::new(Sample {
            path: "x.png".into(),
            width: w,
            height: h,
            image: (0..w * h * 3).map(|v| v as u8).collect(),
            semantic: Some((0..w * h).map(|v| (v % 7) as u16).collect()),
            instances: None,
        })
        .unwrap()
    }

    #[test]
    fn order_is_a_permutation_per_epoch_and_resumable() {
        let mut a = DataOrder::new(3, 10, 0, 0);
        let first: Vec<usize> = (0..10).map(|_| a.next_index()).collect();
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        let second: Vec<usize> = (0..4).map(|_| a.next_index()).collect();
        assert_ne!(first[..4], second[..]);
        let (e, p) = a.position();
        let mut b = DataOrder::new(3, 10, e, p);
        assert_eq!(a.next_index(), b.next_index());
    }

    #[test]
    fn collate_pads_with_ignore() {
        let pre = DataPreprocessorConfig::default();
        let b = collate(&[sample(2, 2)], &pre, Some([3, 3]), 255, &Device::Cpu).unwrap();
        assert_eq!(b.images.dims(), &[1, 3, 3, 3]);
        let l = b.labels.flatten_all().unwrap().to_vec1::<u32>().unwrap();
        assert_eq!(l, vec![0, 1, 255, 2, 3, 255, 255, 255, 255]);
        let v = b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((v[0] - (0.0 - 123.675) / 58.395).abs() < 1e-6);
        assert_eq!(v[2], 0.0);
    }
}
