//! OneFormer's training targets from panoptic ground truth: per image a task, its task text,
//! the class and mask targets of that task, and the text-mapper entries.
//!
//! Reference: transformers 5.x `models/oneformer/image_processing_oneformer.py`
//! (`convert_segmentation_map_to_binary_masks`, `get_semantic_annotations`,
//! `get_instance_annotations`, `get_panoptic_annotations`, `encode_inputs`) and
//! `processing_oneformer.py` (tokenisation of the task and text entries), which port
//! SHI-Labs/OneFormer `oneformer/data/dataset_mappers/oneformer_unified_dataset_mapper.py`.
//!
//! From the segments of one image (in their annotation order, e.g. COCO's `segments_info`):
//! - **panoptic**: every non-empty segment is a target (things as instances, stuff as the one
//!   segment of its class that COCO panoptic stores);
//! - **instance**: the non-empty segments of thing classes only;
//! - **semantic**: the non-empty segments merged per class (things too), in the order of each
//!   class's first segment.
//!
//! Crowd segments are skipped, as the official dataset mapper does (`if not iscrowd`);
//! transformers' processor takes a segment-id map and has no notion of crowd regions.
//!
//! The text entries are [`text_entries`]: each kept target contributes "a photo with a
//! {class}" (a semantic target once per class), listed in the dataset's class order, padded with
//! the task's filler ("a semantic photo", "an instance photo", "an panoptic photo") to `num_text`
//! (`num_queries - text_encoder_n_ctx`). Counts are per image, as the official mapper makes them;
//! transformers' processor keeps one count dictionary for a whole batch call, so there the i-th
//! image's entries also repeat the classes of images `0..i` (segkit equals a call per image).
//!
//! The task of each training image is drawn uniformly from the enabled tasks
//! ([`TaskSampler`]; the official configs use probabilities 0.33 / 0.33 / 0.34).
//!
//! # Shapes
//! Segment masks are row-major `H x W` booleans; [`OneFormerTarget::masks_tensor`] is
//! `T x H x W` (f32 0/1), `classes` has `T` entries; the task text tokenises to `77` ids and
//! the text entries to `num_text x 77` ([`crate::tokenizer::TaskTokenizer`]).
//!
//! # Example
//! ```
//! use segkit_oneformer::targets::{build_target, ClassMetadata, PanopticSegment};
//! use segkit_oneformer::tokenizer::Task;
//!
//! let meta = ClassMetadata::new(vec!["cat".into(), "sky".into()], vec![true, false])?;
//! let (sky, cat) = (vec![true, true, false, false], vec![false, false, true, true]);
//! let segs = [
//!     PanopticSegment { class_id: 1, mask: &sky, iscrowd: false },
//!     PanopticSegment { class_id: 0, mask: &cat, iscrowd: false },
//! ];
//! let t = build_target(Task::Instance, &segs, 2, 2, &meta, 3)?;
//! assert_eq!(t.classes, vec![0]);
//! assert_eq!(t.texts, vec!["a photo with a cat", "an instance photo", "an instance photo"]);
//! # Ok::<(), segkit_oneformer::Error>(())
//! ```

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::tokenizer::{text_entries, Task, TaskTokenizer};
use crate::{Error, Result};

/// The dataset's classes: names (the text entries' class names, in class-id order) and which
/// classes are things (HF's `class_info_file`: `{id: {"name", "isthing"}}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassMetadata {
    names: Vec<String>,
    is_thing: Vec<bool>,
}

impl ClassMetadata {
    /// Classes `0..names.len()`; errors unless `is_thing` has one flag per name.
    pub fn new(names: Vec<String>, is_thing: Vec<bool>) -> Result<Self> {
        if names.len() != is_thing.len() {
            return Err(Error::InvalidArgument(format!(
                "class metadata: {} class names but {} thing flags",
                names.len(),
                is_thing.len()
            )));
        }
        Ok(Self { names, is_thing })
    }

    /// Classes `0..names.len()` of which `thing_ids` are things; errors on an id out of range.
    pub fn from_thing_ids(names: Vec<String>, thing_ids: &[usize]) -> Result<Self> {
        let mut is_thing = vec![false; names.len()];
        for &t in thing_ids {
            *is_thing.get_mut(t).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "class metadata: thing id {t} out of range for {} classes",
                    names.len()
                ))
            })? = true;
        }
        Ok(Self { names, is_thing })
    }

    /// The class names, in class-id order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether class `c` is a thing class (false out of range).
    pub fn is_thing(&self, c: usize) -> bool {
        self.is_thing.get(c).copied().unwrap_or(false)
    }

    /// The number of classes.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are no classes.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// One segment of a panoptic annotation.
#[derive(Debug, Clone, Copy)]
pub struct PanopticSegment<'a> {
    /// The segment's class (contiguous id, `0..classes`).
    pub class_id: usize,
    /// Row-major `H x W` membership.
    pub mask: &'a [bool],
    /// A crowd region (COCO `iscrowd`): never a target.
    pub iscrowd: bool,
}

/// The targets of one training image.
#[derive(Debug, Clone, PartialEq)]
pub struct OneFormerTarget {
    /// The task drawn for the image.
    pub task: Task,
    /// `T` class ids, one per target mask.
    pub classes: Vec<usize>,
    /// `T` row-major `height x width` masks.
    pub masks: Vec<Vec<bool>>,
    /// Mask height.
    pub height: usize,
    /// Mask width.
    pub width: usize,
    /// The `num_text` text-mapper entries.
    pub texts: Vec<String>,
}

impl OneFormerTarget {
    /// The task text, `"the task is {task}"`.
    pub fn task_text(&self) -> String {
        self.task.prompt()
    }

    /// The masks as a `T x H x W` f32 tensor (0 / 1), HF's `mask_labels[i]`.
    pub fn masks_tensor(&self, device: &Device) -> Result<Tensor> {
        let mut data = Vec::with_capacity(self.masks.len() * self.height * self.width);
        for m in &self.masks {
            data.extend(m.iter().map(|&b| if b { 1f32 } else { 0f32 }));
        }
        Ok(Tensor::from_vec(
            data,
            (self.masks.len(), self.height, self.width),
            device,
        )?)
    }

    /// The text entries tokenised (`num_text x len` u32 ids, HF's `text_inputs[i]`).
    pub fn text_inputs(&self, tok: &TaskTokenizer, len: usize, device: &Device) -> Result<Tensor> {
        tok.text_inputs(&self.texts, len, device)
    }
}

/// Builds the targets of `task` for one image from its panoptic `segments` (see the module
/// docs). Errors name the segment whose mask is not `height x width` or whose class is out of
/// range.
pub fn build_target(
    task: Task,
    segments: &[PanopticSegment<'_>],
    height: usize,
    width: usize,
    meta: &ClassMetadata,
    num_text: usize,
) -> Result<OneFormerTarget> {
    let n = height * width;
    let mut classes: Vec<usize> = Vec::new();
    let mut masks: Vec<Vec<bool>> = Vec::new();
    let mut counts = vec![0usize; meta.len()];
    for (i, s) in segments.iter().enumerate() {
        if s.mask.len() != n {
            return Err(Error::InvalidArgument(format!(
                "panoptic segment {i}: mask has {} pixels, the image {height} x {width} = {n}",
                s.mask.len()
            )));
        }
        if s.class_id >= meta.len() {
            return Err(Error::InvalidArgument(format!(
                "panoptic segment {i}: class {} out of range for {} classes",
                s.class_id,
                meta.len()
            )));
        }
        if s.iscrowd || !s.mask.iter().any(|&b| b) {
            continue;
        }
        match task {
            Task::Instance if !meta.is_thing(s.class_id) => {}
            Task::Semantic => match classes.iter().position(|&c| c == s.class_id) {
                Some(k) => {
                    for (d, &b) in masks[k].iter_mut().zip(s.mask) {
                        *d |= b;
                    }
                }
                None => {
                    classes.push(s.class_id);
                    masks.push(s.mask.to_vec());
                    counts[s.class_id] += 1;
                }
            },
            _ => {
                classes.push(s.class_id);
                masks.push(s.mask.to_vec());
                counts[s.class_id] += 1;
            }
        }
    }
    let named: Vec<(&str, usize)> = meta.names.iter().map(String::as_str).zip(counts).collect();
    Ok(OneFormerTarget {
        task,
        classes,
        masks,
        height,
        width,
        texts: text_entries(task, &named, num_text),
    })
}

/// Draws each training image's task uniformly from the enabled tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSampler {
    tasks: Vec<Task>,
}

impl TaskSampler {
    /// A sampler over `tasks` (duplicates removed, order kept); errors when empty.
    pub fn new(tasks: &[Task]) -> Result<Self> {
        let mut uniq: Vec<Task> = Vec::new();
        for &t in tasks {
            if !uniq.contains(&t) {
                uniq.push(t);
            }
        }
        if uniq.is_empty() {
            return Err(Error::InvalidArgument(
                "OneFormer training needs at least one task (semantic, instance, panoptic)".into(),
            ));
        }
        Ok(Self { tasks: uniq })
    }

    /// The enabled tasks.
    pub fn tasks(&self) -> &[Task] {
        &self.tasks
    }

    /// The task for a uniform draw `u` in `[0, 1)`: `tasks[floor(u * n)]`.
    pub fn pick(&self, u: f64) -> Task {
        let n = self.tasks.len();
        let i = ((u.clamp(0.0, 1.0) * n as f64) as usize).min(n - 1);
        self.tasks[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ClassMetadata {
        let names = ["person", "car", "sky", "grass"].map(String::from).to_vec();
        ClassMetadata::from_thing_ids(names, &[0, 1]).unwrap()
    }

    #[test]
    fn tasks_select_and_merge() {
        // 1 x 6 image: person | person | sky | car | sky | grass, a crowd car, an empty grass.
        let m = |bits: [u8; 6]| bits.map(|b| b == 1).to_vec();
        let (p0, p1, s0) = (
            m([1, 0, 0, 0, 0, 0]),
            m([0, 1, 0, 0, 0, 0]),
            m([0, 0, 1, 0, 0, 0]),
        );
        let (c0, s1, g0) = (
            m([0, 0, 0, 1, 0, 0]),
            m([0, 0, 0, 0, 1, 0]),
            m([0, 0, 0, 0, 0, 1]),
        );
        let empty = m([0; 6]);
        let seg = |class_id, mask: &'static [bool], iscrowd| PanopticSegment {
            class_id,
            mask,
            iscrowd,
        };
        let leak = |v: Vec<bool>| -> &'static [bool] { Box::leak(v.into_boxed_slice()) };
        let segs = [
            seg(2, leak(s0), false),
            seg(0, leak(p0), false),
            seg(1, leak(c0), true),
            seg(3, leak(empty), false),
            seg(0, leak(p1), false),
            seg(2, leak(s1), false),
            seg(3, leak(g0), false),
        ];
        let meta = meta();
        let pan = build_target(Task::Panoptic, &segs, 1, 6, &meta, 6).unwrap();
        assert_eq!(pan.classes, vec![2, 0, 0, 2, 3]);
        assert_eq!(
            pan.texts,
            [
                "a photo with a person",
                "a photo with a person",
                "a photo with a sky",
                "a photo with a sky",
                "a photo with a grass",
                "an panoptic photo"
            ]
        );
        let ins = build_target(Task::Instance, &segs, 1, 6, &meta, 3).unwrap();
        assert_eq!(ins.classes, vec![0, 0]);
        assert_eq!(ins.texts[2], "an instance photo");
        let sem = build_target(Task::Semantic, &segs, 1, 6, &meta, 4).unwrap();
        assert_eq!(sem.classes, vec![2, 0, 3]);
        assert_eq!(sem.masks[0], m([0, 0, 1, 0, 1, 0]));
        assert_eq!(sem.masks[1], m([1, 1, 0, 0, 0, 0]));
        let t = sem.masks_tensor(&Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[3, 1, 6]);
        assert_eq!(sem.texts[3], "a semantic photo");
        assert_eq!(sem.task_text(), "the task is semantic");
    }

    #[test]
    fn bad_segments_are_named() {
        let meta = meta();
        let mask = vec![true; 5];
        let segs = [PanopticSegment {
            class_id: 0,
            mask: &mask,
            iscrowd: false,
        }];
        let e = build_target(Task::Panoptic, &segs, 2, 3, &meta, 4).unwrap_err();
        assert!(e.to_string().contains("segment 0"), "{e}");
        let mask = vec![true; 6];
        let segs = [PanopticSegment {
            class_id: 9,
            mask: &mask,
            iscrowd: false,
        }];
        let e = build_target(Task::Panoptic, &segs, 2, 3, &meta, 4).unwrap_err();
        assert!(e.to_string().contains("class 9"), "{e}");
        assert!(ClassMetadata::new(vec!["a".into()], vec![]).is_err());
        assert!(ClassMetadata::from_thing_ids(vec!["a".into()], &[1]).is_err());
    }

    #[test]
    fn sampler_is_uniform_over_enabled_tasks() {
        assert!(TaskSampler::new(&[]).is_err());
        let s = TaskSampler::new(&[Task::Semantic]).unwrap();
        assert_eq!(s.pick(0.99), Task::Semantic);
        let s = TaskSampler::new(&Task::ALL).unwrap();
        let picks: Vec<Task> = [0.0, 0.34, 0.67, 0.999999, 1.0]
            .iter()
            .map(|&u| s.pick(u))
            .collect();
        assert_eq!(
            picks,
            [
                Task::Semantic,
                Task::Instance,
                Task::Panoptic,
                Task::Panoptic,
                Task::Panoptic
            ]
        );
    }
}
