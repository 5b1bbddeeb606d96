//! What every architecture offers the front door: the [`Model`] trait (segment an image for a
//! task, run the network and name every output) and the typed, serialisable results
//! ([`Segmentation`]: [`SemanticResult`], [`InstanceResult`], [`PanopticResult`]).
//!
//! A built model of any architecture is a `Box<dyn Model>` ([`crate::ModelConfig::build`],
//! [`crate::ModelConfig::load`]), so the `segkit` facade's `Segmenter`, `segkit infer` and
//! `segkit dump` serve a new architecture without changes: its folder implements [`Model`].

mod convert;
mod json;
pub mod results;

use std::any::Any;

use candle_core::{Device, Tensor};
use image::DynamicImage;

pub use results::{
    ClassArea, Instance, InstanceResult, PanopticResult, PanopticSegment, Rle, Segmentation,
    SemanticResult, UNLABELED,
};
pub use segkit_oneformer::tokenizer::Task;

use crate::{Error, PredictOptions, Result};

/// A built model of any architecture, as the front door uses it.
pub trait Model: Send + Sync + Any {
    /// The architecture's name (its [`crate::ModelConfig`] `"type"`).
    fn architecture(&self) -> &'static str;

    /// The model's name (its config's, or the preset's).
    fn name(&self) -> &str;

    /// The device the weights live on.
    fn device(&self) -> &Device;

    /// The tasks [`Model::segment`] accepts (none for a backbone on its own).
    fn tasks(&self) -> &'static [Task];

    /// Class names by class id (`class_<i>` where the model has none).
    fn classes(&self) -> Vec<String>;

    /// One RGB colour per class: the model's own, else [`default_palette`].
    fn palette(&self) -> Vec<[u8; 3]> {
        default_palette(&self.classes())
    }

    /// The thing classes, where the model knows them (panoptic models).
    fn thing_classes(&self) -> Option<Vec<u32>> {
        None
    }

    /// Runs the network on a normalised batch `N x 3 x H x W` (inference mode) and returns
    /// every output by name (`segkit dump`). `task` conditions task-conditioned models
    /// (OneFormer; default semantic) and is ignored by the others.
    fn forward_named(&self, x: &Tensor, task: Option<Task>) -> Result<Vec<(String, Tensor)>>;

    /// Segments `image` for `task` at the image's own size: the model's test pipeline, the
    /// network and the task's post-processing (`options` where the model has any).
    ///
    /// Errors: [`Error::UnsupportedTask`] (see [`unsupported`]) for a task not in
    /// [`Model::tasks`]; [`Error::BadImage`] for an empty image.
    fn segment(
        &self,
        image: &DynamicImage,
        task: Task,
        options: &PredictOptions,
    ) -> Result<Segmentation>;

    /// The model as [`Any`], to reach the concrete type (`downcast_ref::<EncoderDecoder>()`).
    fn as_any(&self) -> &dyn Any;
}

/// The [`Error::UnsupportedTask`] of `model` for `task`.
pub fn unsupported(model: &dyn Model, task: Task) -> Error {
    Error::UnsupportedTask {
        model: model.name().to_string(),
        task: task.as_str().to_string(),
        supported: model
            .tasks()
            .iter()
            .map(|t| t.as_str().to_string())
            .collect(),
    }
}

/// A palette for `classes`: the dataset's when the names are ADE20K's or Cityscapes', else
/// the VOC bit-shuffling palette.
pub fn default_palette(classes: &[String]) -> Vec<[u8; 3]> {
    use crate::datasets::{ADE20K_CLASSES, ADE20K_PALETTE, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE};
    use crate::oneformer::presets::ONEFORMER_ADE20K_CLASSES;
    let same = |names: &[&str]| {
        names.len() == classes.len() && names.iter().zip(classes).all(|(a, b)| *a == b)
    };
    if same(&ADE20K_CLASSES) || same(&ONEFORMER_ADE20K_CLASSES) {
        ADE20K_PALETTE.to_vec()
    } else if same(&CITYSCAPES_CLASSES) {
        CITYSCAPES_PALETTE.to_vec()
    } else {
        segkit_data::palette::voc_palette(classes.len())
    }
}
