//! [`OneFormer`] as a [`Model`]: semantic, instance and panoptic segmentation with
//! transformers' post-processing.

use std::any::Any;

use candle_core::{Device, Tensor};
use image::DynamicImage;

use super::{OneFormer, OneFormerPrediction};
use crate::segment::{
    unsupported, InstanceResult, Model, PanopticResult, Segmentation, SemanticResult, Task,
};
use crate::{PredictOptions, Result};

impl Model for OneFormer {
    fn architecture(&self) -> &'static str {
        "OneFormer"
    }

    fn name(&self) -> &str {
        &self.config().name
    }

    fn device(&self) -> &Device {
        OneFormer::device(self)
    }

    fn tasks(&self) -> &'static [Task] {
        &Task::ALL
    }

    fn classes(&self) -> Vec<String> {
        self.config().labels.clone()
    }

    fn thing_classes(&self) -> Option<Vec<u32>> {
        Some(self.config().thing_classes()).filter(|t| !t.is_empty())
    }

    fn forward_named(&self, x: &Tensor, task: Option<Task>) -> Result<Vec<(String, Tensor)>> {
        let b = x.dim(0)?;
        let ti = self.task_inputs(task.unwrap_or(Task::Semantic))?;
        let ti = ti.broadcast_as((b, ti.dim(1)?))?.contiguous()?;
        let o = self.forward(x, &ti, None, false)?;
        Ok(vec![
            ("class_queries_logits".into(), o.class_queries_logits),
            ("masks_queries_logits".into(), o.masks_queries_logits),
        ])
    }

    fn segment(
        &self,
        image: &DynamicImage,
        task: Task,
        options: &PredictOptions,
    ) -> Result<Segmentation> {
        if !self.tasks().contains(&task) {
            return Err(unsupported(self, task));
        }
        let (classes, palette) = (self.classes(), self.palette());
        Ok(match self.predict_image(image, task, options)? {
            OneFormerPrediction::Semantic(r) => {
                Segmentation::Semantic(SemanticResult::from_oneformer(r, classes, palette)?)
            }
            OneFormerPrediction::Instance(r) => {
                Segmentation::Instance(InstanceResult::from_oneformer(&r, classes, palette)?)
            }
            OneFormerPrediction::Panoptic(r) => {
                let things = self.thing_classes();
                Segmentation::Panoptic(PanopticResult::from_oneformer(
                    &r,
                    classes,
                    palette,
                    things.as_deref(),
                )?)
            }
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
