//! [`CocoInstanceDataset`]: `instances_{split}2017.json` with polygon and RLE segmentations.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{categories, image_index, read_json, read_listed_image, CategoryJson, ImageJson};
use crate::io::bad_file;
use crate::layouts::{out_of_range, require_dir};
use crate::{DatasetInfo, InstanceAnnotation, Result, Rle, Sample, SegDataset};

#[derive(Deserialize)]
struct InstancesJson {
    images: Vec<ImageJson>,
    #[serde(default)]
    annotations: Vec<InstanceAnnJson>,
    categories: Vec<CategoryJson>,
}

#[derive(Deserialize)]
struct InstanceAnnJson {
    #[serde(default)]
    id: u64,
    image_id: u64,
    category_id: u64,
    segmentation: SegmentationJson,
    #[serde(default)]
    iscrowd: u64,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
enum SegmentationJson {
    Polygons(Vec<Vec<f64>>),
    Rle {
        counts: CountsJson,
        size: [usize; 2],
    },
}

#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
enum CountsJson {
    Uncompressed(Vec<u32>),
    Compressed(String),
}

/// One object annotation.
#[derive(Debug, Clone)]
struct ObjectAnn {
    id: u64,
    class: u32,
    iscrowd: bool,
    segmentation: SegmentationJson,
}

#[derive(Debug, Clone)]
struct InstanceEntry {
    image: PathBuf,
    image_id: u64,
    width: usize,
    height: usize,
    anns: Vec<ObjectAnn>,
}

/// COCO instance segmentation (see the doc of the `coco` module).
///
/// ```no_run
/// use segkit_data::{layouts::CocoInstanceDataset, SegDataset};
/// let val = CocoInstanceDataset::new("data/coco", "val")?;
/// assert_eq!(val.info().classes.len(), 80);
/// # Ok::<(), segkit_data::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct CocoInstanceDataset {
    json: PathBuf,
    entries: Vec<InstanceEntry>,
    category_ids: Vec<u64>,
    info: DatasetInfo,
}

impl CocoInstanceDataset {
    /// `split` (`"train"` / `"val"`) of the standard layout under `root`:
    /// `annotations/instances_{split}2017.json` and `{split}2017/`.
    ///
    /// Errors: as [`CocoInstanceDataset::from_paths`].
    pub fn new(root: impl AsRef<Path>, split: &str) -> Result<Self> {
        let root = root.as_ref();
        require_dir(root, "dataset root")?;
        Self::from_paths(
            root.join("annotations")
                .join(format!("instances_{split}2017.json")),
            root.join(format!("{split}2017")),
        )
    }

    /// The annotations of `json` with their images in `img_dir`.
    ///
    /// Errors: [`crate::Error::BadFile`] naming the JSON (unreadable, bad JSON, duplicate or unknown
    /// ids, an RLE whose size is not its image's, more than 255 categories), or the missing
    /// folder or image.
    pub fn from_paths(json: impl AsRef<Path>, img_dir: impl AsRef<Path>) -> Result<Self> {
        let (json, img_dir) = (json.as_ref(), img_dir.as_ref());
        require_dir(img_dir, "image folder")?;
        let data: InstancesJson = read_json(json)?;
        let cats = categories(json, &data.categories, true)?;
        let images = image_index(json, img_dir, &data.images)?;
        let mut entries: Vec<InstanceEntry> = data
            .images
            .iter()
            .map(|im| InstanceEntry {
                image: img_dir.join(&im.file_name),
                image_id: im.id,
                width: im.width,
                height: im.height,
                anns: Vec::new(),
            })
            .collect();
        for ann in data.annotations {
            let Some(&i) = images.get(&ann.image_id) else {
                return Err(bad_file(
                    json,
                    format!(
                        "annotation {} has unknown image_id {}",
                        ann.id, ann.image_id
                    ),
                ));
            };
            let what = format!("annotation {}", ann.id);
            let class = cats.class(json, ann.category_id, &what)?;
            let entry = &mut entries[i];
            let segmentation = match ann.segmentation {
                SegmentationJson::Polygons(polys) => {
                    // mmdet `_process_masks`: keep polygons of >= 3 points.
                    let polys: Vec<Vec<f64>> = polys
                        .into_iter()
                        .filter(|p| p.len() % 2 == 0 && p.len() >= 6)
                        .collect();
                    if polys.is_empty() {
                        continue;
                    }
                    SegmentationJson::Polygons(polys)
                }
                SegmentationJson::Rle { counts, size } => {
                    if size != [entry.height, entry.width] {
                        return Err(bad_file(
                            json,
                            format!(
                                "annotation {}: RLE size {:?} is not its image's [{}, {}]",
                                ann.id, size, entry.height, entry.width
                            ),
                        ));
                    }
                    if let CountsJson::Uncompressed(c) = &counts {
                        let sum: u64 = c.iter().map(|&v| v as u64).sum();
                        if sum != (size[0] * size[1]) as u64 {
                            return Err(bad_file(
                                json,
                                format!(
                                    "annotation {}: RLE counts sum to {sum}, not {} x {}",
                                    ann.id, size[0], size[1]
                                ),
                            ));
                        }
                    }
                    SegmentationJson::Rle { counts, size }
                }
            };
            entry.anns.push(ObjectAnn {
                id: ann.id,
                class,
                iscrowd: ann.iscrowd != 0,
                segmentation,
            });
        }
        Ok(CocoInstanceDataset {
            json: json.to_path_buf(),
            entries,
            info: cats.info(),
            category_ids: cats.ids,
        })
    }

    /// The COCO category id of each class index.
    pub fn category_ids(&self) -> &[u64] {
        &self.category_ids
    }

    /// The COCO image id of sample `index`.
    pub fn image_id(&self, index: usize) -> Option<u64> {
        self.entries.get(index).map(|e| e.image_id)
    }

    fn mask(&self, a: &ObjectAnn, h: usize, w: usize) -> Result<Vec<bool>> {
        let rle = match &a.segmentation {
            SegmentationJson::Polygons(p) => Rle::from_polygons(p, h, w),
            SegmentationJson::Rle {
                counts: CountsJson::Uncompressed(c),
                ..
            } => Rle::new(h, w, c.clone()),
            SegmentationJson::Rle {
                counts: CountsJson::Compressed(s),
                ..
            } => Rle::from_compressed(s, h, w),
        }
        .map_err(|e| bad_file(&self.json, format!("annotation {}: {e}", a.id)))?;
        Ok(rle.to_mask().into_iter().map(|v| v != 0).collect())
    }
}

impl SegDataset for CocoInstanceDataset {
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
        let img = read_listed_image(&e.image, &self.json, e.width, e.height)?;
        let (h, w) = (e.height, e.width);
        let ignore = self.info.ignore_index;
        let mut semantic = vec![ignore; h * w];
        let mut instances = Vec::with_capacity(e.anns.len());
        for a in &e.anns {
            let mask = self.mask(a, h, w)?;
            if !a.iscrowd {
                for (s, &m) in semantic.iter_mut().zip(&mask) {
                    if m {
                        *s = a.class as u16;
                    }
                }
            }
            instances.push(InstanceAnnotation {
                class_id: a.class,
                mask,
                iscrowd: a.iscrowd,
            });
        }
        // Crowd pixels stayed 255 unless a non-crowd instance covers them.
        Ok(Sample {
            path: e.image.clone(),
            width: img.width,
            height: img.height,
            image: img.data,
            semantic: Some(semantic),
            instances: Some(instances),
        })
    }
}
