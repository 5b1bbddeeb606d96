//! [`Classifier`] as a [`Model`]: `segkit dump` writes its `logits`; it segments nothing.

use std::any::Any;

use candle_core::Device;
use image::DynamicImage;

use super::Classifier;
use crate::segment::{unsupported, Model, Segmentation, Task};
use crate::{PredictOptions, Result};

/// A classifier with the device its weights live on.
pub(crate) struct ClassifierModel {
    pub(crate) inner: Classifier,
    pub(crate) device: Device,
}

impl Model for ClassifierModel {
    fn architecture(&self) -> &'static str {
        "Classifier"
    }

    fn name(&self) -> &str {
        &self.inner.cfg.name
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn tasks(&self) -> &'static [Task] {
        &[]
    }

    fn classes(&self) -> Vec<String> {
        let c = &self.inner.cfg;
        if c.classes.is_empty() {
            (0..c.num_classes).map(|i| format!("class_{i}")).collect()
        } else {
            c.classes.clone()
        }
    }

    fn forward_named(
        &self,
        x: &candle_core::Tensor,
        _task: Option<Task>,
    ) -> Result<Vec<(String, candle_core::Tensor)>> {
        Ok(vec![("logits".into(), self.inner.forward_t(x, false)?)])
    }

    fn segment(
        &self,
        _image: &DynamicImage,
        task: Task,
        _options: &PredictOptions,
    ) -> Result<Segmentation> {
        Err(unsupported(self, task))
    }

    fn as_any(&self) -> &dyn Any {
        &self.inner
    }
}
