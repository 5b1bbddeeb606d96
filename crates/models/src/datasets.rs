//! Dataset metadata: class names and palettes, as mmseg's dataset classes' `METAINFO`
//! (`mmseg/datasets/cityscapes.py`, `mmseg/datasets/ade.py`, mmseg 1.2.2).
//!
//! ```
//! use segkit_models::datasets::{DatasetMeta, ADE20K_CLASSES};
//! let meta = DatasetMeta::cityscapes();
//! assert_eq!(meta.classes[13], "car");
//! assert_eq!(meta.palette[0], [128, 64, 128]);
//! assert_eq!(ADE20K_CLASSES.len(), 150);
//! ```

/// Class names and their display colours.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetMeta {
    /// Class names, indexed by class id (the logits' channel). mmseg `METAINFO['classes']`.
    #[serde(default)]
    pub classes: Vec<String>,
    /// One RGB colour per class, for overlays. mmseg `METAINFO['palette']`.
    #[serde(default)]
    pub palette: Vec<[u8; 3]>,
}

impl DatasetMeta {
    /// Cityscapes' 19 evaluation classes (`CityscapesDataset.METAINFO`).
    pub fn cityscapes() -> Self {
        Self::from_consts(&CITYSCAPES_CLASSES, &CITYSCAPES_PALETTE)
    }

    /// ADE20K's 150 classes (`ADE20KDataset.METAINFO`; names verbatim, including mmseg's
    /// `"bed "` with its trailing space).
    pub fn ade20k() -> Self {
        Self::from_consts(&ADE20K_CLASSES, &ADE20K_PALETTE)
    }

    fn from_consts(classes: &[&str], palette: &[[u8; 3]]) -> Self {
        Self {
            classes: classes.iter().map(|s| s.to_string()).collect(),
            palette: palette.to_vec(),
        }
    }

    /// The name of class `id`, if known.
    pub fn class_name(&self, id: usize) -> Option<&str> {
        self.classes.get(id).map(String::as_str)
    }
}

// The tables live in segkit-data (its readers need them too); re-exported here for the
// presets and for users of the facade.
pub use segkit_data::layouts::meta::{
    ADE20K_CLASSES, ADE20K_PALETTE, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match() {
        let c = DatasetMeta::cityscapes();
        assert_eq!((c.classes.len(), c.palette.len()), (19, 19));
        let a = DatasetMeta::ade20k();
        assert_eq!((a.classes.len(), a.palette.len()), (150, 150));
        assert_eq!(a.class_name(0), Some("wall"));
    }
}
