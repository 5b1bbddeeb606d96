//! The front door: load a model by name or path, segment an image, get a typed result.
//!
//! ```no_run
//! # fn main() -> segkit::Result<()> {
//! use segkit::{Segmenter, Task};
//!
//! let seg = Segmenter::load("segkit-demo", &candle_core::Device::Cpu)?; // a name or a path
//! let img = segkit::image::open("photo.jpg")?;
//! let out = seg.segment(&img, Task::Semantic)?;
//! out.semantic().save_color("seg.png")?;
//! out.semantic().save_overlay("overlay.png", &img, 0.5)?;
//! # Ok(())
//! # }
//! ```
//!
//! [`Segmenter::load`] takes
//! - a **segkit model directory**: `config.json` holding a [`crate::SegmentorConfig`] (the
//!   JSON `segkit train` writes) and `model.safetensors` (or one other `.safetensors` /
//!   `.pth` checkpoint) -> an [`crate::EncoderDecoder`];
//! - a **Hugging Face OneFormer directory** (`config.json` with `"model_type": "oneformer"`
//!   and its weights, as `save_pretrained` writes it) -> a [`crate::OneFormer`];
//! - a **name** from [`registry`]: `weights/NAME/` of the workspace or `$SEGKIT_WEIGHTS/NAME/`;
//!   an mmseg name builds its preset's `EncoderDecoder` from the checkpoint in that directory
//!   (a converted `.safetensors` is preferred over the downloaded `.pth`). The default name is
//!   [`DEFAULT_MODEL`] (`segkit-demo`).
//!
//! An existing path wins over a name (write `./NAME` to make a relative path explicit). An
//! unknown name is an [`Error::UnknownModel`] listing the names that exist and whether their
//! files are present.
//!
//! Results ([`Segmentation`]) are typed and implement `serde::Serialize`: the JSON shape is
//! documented in [`results`].
//!
//! Tasks: semantic models ([`crate::EncoderDecoder`]) do [`Task::Semantic`] only (another
//! task is an [`Error::UnsupportedTask`]); OneFormer does all three, with transformers'
//! post-processing defaults ([`crate::PredictOptions`]).

pub mod registry;

use std::path::{Path, PathBuf};

use candle_core::Device;
use image::DynamicImage;

pub use registry::{DEFAULT_MODEL, WEIGHTS_ENV};
pub use segkit_models::segment::{
    default_palette, results, ClassArea, Instance, InstanceResult, Model, PanopticResult,
    PanopticSegment, Rle, Segmentation, SemanticResult, Task, UNLABELED,
};

use crate::{EncoderDecoder, Error, ModelConfig, OneFormer, PredictOptions, Result};

/// A loaded model with its class names and palette, ready to segment images.
pub struct Segmenter {
    name: String,
    source: Option<PathBuf>,
    model: Box<dyn Model>,
    classes: Vec<String>,
    palette: Vec<[u8; 3]>,
    things: Option<Vec<u32>>,
    options: PredictOptions,
}

impl std::fmt::Debug for Segmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segmenter")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("architecture", &self.architecture())
            .field("classes", &self.classes.len())
            .finish_non_exhaustive()
    }
}

fn bad_model(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadModel {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The checkpoint of a model directory: `model.safetensors`, else the first (by name)
/// `.safetensors`, `.pth`, `.bin` or `.pt` file.
fn find_checkpoint(dir: &Path) -> Result<PathBuf> {
    let preferred = dir.join("model.safetensors");
    if preferred.is_file() {
        return Ok(preferred);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| bad_model(dir, format!("cannot list the directory: {e}")))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    for ext in ["safetensors", "pth", "bin", "pt"] {
        if let Some(f) = files
            .iter()
            .find(|p| p.extension().is_some_and(|e| e == ext))
        {
            return Ok(f.clone());
        }
    }
    Err(bad_model(
        dir,
        "no weights file (model.safetensors, or a .safetensors / .pth / .bin checkpoint)",
    ))
}

/// What a directory's `config.json` describes.
enum DirConfig {
    /// segkit's own config: a tagged [`ModelConfig`].
    Segkit(Box<ModelConfig>),
    /// A Hugging Face `save_pretrained` directory with this `model_type`.
    HuggingFace(String),
}

fn read_dir_config(config: &Path) -> Result<DirConfig> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| bad_model(config, format!("cannot read: {e}")))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| bad_model(config, format!("not valid JSON: {e}")))?;
    if let Some(t) = v.get("model_type").and_then(|t| t.as_str()) {
        return Ok(DirConfig::HuggingFace(t.to_string()));
    }
    if v.get("type").is_none() {
        return Err(bad_model(
            config,
            "no `\"type\"`: a segkit model config is a tagged `ModelConfig` \
             (`{\"type\": \"EncoderDecoder\", ...}`), a Hugging Face one has `model_type`",
        ));
    }
    match ModelConfig::from_json(&text) {
        Ok(cfg) => Ok(DirConfig::Segkit(Box::new(cfg))),
        Err(Error::InvalidConfig(m)) => Err(bad_model(
            config,
            format!("not a valid segkit model config: {m}"),
        )),
        Err(e) => Err(e),
    }
}

fn dir_name(dir: &Path) -> String {
    dir.canonicalize()
        .ok()
        .as_deref()
        .unwrap_or(dir)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// Parses a device name: `cpu`, `cuda` (GPU 0) or `cuda:N`.
///
/// Errors: [`Error::Device`] for another name, for `cuda` in a build without segkit's `cuda`
/// feature, and when CUDA cannot open the GPU.
pub fn device(name: &str) -> Result<Device> {
    let spec = name.trim().to_ascii_lowercase();
    let err = |reason: String| Error::Device {
        name: name.to_string(),
        reason,
    };
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let index = match spec.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|i| i.parse::<usize>().ok())
            .ok_or_else(|| err("valid devices: cpu, cuda, cuda:N".into()))?,
        None => return Err(err("valid devices: cpu, cuda, cuda:N".into())),
    };
    if !cfg!(feature = "cuda") {
        return Err(err(
            "this build of segkit has no CUDA support; rebuild with `--features cuda`".into(),
        ));
    }
    Device::new_cuda(index).map_err(|e| err(e.to_string().replace('\n', " ")))
}

impl Segmenter {
    /// Loads a model by registry name or path (see the [module docs](self)) onto `device`.
    ///
    /// Errors: [`Error::UnknownModel`] (lists the valid names), [`Error::ModelNotDownloaded`]
    /// (a registered name whose files are missing, with the command that fetches them),
    /// [`Error::BadModel`] (a directory or config that is not a model), and
    /// [`Error::Checkpoint`] (weights that do not fit the config: missing or unused keys,
    /// wrong shapes, unreadable files).
    pub fn load(name_or_path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let given = name_or_path.as_ref();
        if given.exists() {
            return Self::load_path(given, device);
        }
        let s = given.to_string_lossy();
        if !registry::is_name(&s) {
            return Err(bad_model(given, "no such file or directory"));
        }
        let entry = registry::find_model(&s)?;
        let Some(dir) = entry.dir.clone() else {
            if s == DEFAULT_MODEL {
                // Not on disk (e.g. an installed binary far from the repository): the copy
                // compiled into this crate.
                return Self::load_embedded_default(device);
            }
            return Err(Error::ModelNotDownloaded {
                name: entry.name.clone(),
                searched: registry::weights_roots(),
                hint: entry.fetch_hint(),
            });
        };
        let mut seg = Self::load_dir(&dir, Some(&entry), device)?;
        seg.name = entry.name;
        Ok(seg)
    }

    /// [`Segmenter::load`] of [`DEFAULT_MODEL`].
    pub fn load_default(device: &Device) -> Result<Self> {
        Self::load(DEFAULT_MODEL, device)
    }

    /// The demo model compiled into this crate (`demo/{config.json,
    /// model.safetensors}`, 3.3 MB, `include_bytes!`): what [`Segmenter::load`] of
    /// [`DEFAULT_MODEL`] falls back to when no weights directory holds `segkit-demo/`, so the default
    /// works offline wherever the binary runs.
    pub fn load_embedded_default(device: &Device) -> Result<Self> {
        const CONFIG: &str = include_str!("../../demo/config.json");
        const WEIGHTS: &[u8] = include_bytes!("../../demo/model.safetensors");
        let what = Path::new("<embedded segkit-demo>");
        let cfg = ModelConfig::from_json(CONFIG)
            .map_err(|e| bad_model(what, format!("embedded config: {e}")))?;
        let tensors = candle_core::safetensors::load_buffer(WEIGHTS, &Device::Cpu)?;
        let mut sd = segkit_core::checkpoint::StateDict::new();
        for (k, t) in tensors {
            sd.insert(k, t);
        }
        let model = cfg.from_state_dict(DEFAULT_MODEL, &sd, what, device)?;
        Self::from_model(DEFAULT_MODEL, model, what)
    }

    fn load_path(path: &Path, device: &Device) -> Result<Self> {
        if path.is_dir() {
            let entry = registry::entry_for_dir_name(&dir_name(path));
            return Self::load_dir(path, entry.as_ref(), device);
        }
        // A file: `config.json` stands for its directory; a checkpoint needs the directory's
        // config (or a registry name for the directory) to say which model it is.
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if path.file_name().is_some_and(|n| n == "config.json") {
            return Self::load_dir(&parent, None, device);
        }
        let config = parent.join("config.json");
        if config.is_file() {
            if let DirConfig::Segkit(cfg) = read_dir_config(&config)? {
                return Self::from_checkpoint(dir_name(&parent), &cfg, path, device);
            }
            return Err(bad_model(
                path,
                "a Hugging Face checkpoint loads from its directory: give the directory",
            ));
        }
        if let Some(preset) =
            registry::entry_for_dir_name(&dir_name(&parent)).and_then(|e| e.preset)
        {
            let cfg = segkit_models::preset(&preset)?;
            return Self::from_checkpoint(dir_name(&parent), &cfg, path, device);
        }
        Err(bad_model(
            path,
            "a checkpoint alone does not say which model it is: give a directory with a \
             config.json, or a registry name",
        ))
    }

    fn load_dir(dir: &Path, entry: Option<&registry::ModelEntry>, device: &Device) -> Result<Self> {
        let name = dir_name(dir);
        let config = dir.join("config.json");
        if config.is_file() {
            return match read_dir_config(&config)? {
                DirConfig::Segkit(cfg) => {
                    let ckpt = find_checkpoint(dir)?;
                    Self::from_checkpoint(name, &cfg, &ckpt, device)
                }
                DirConfig::HuggingFace(model_type) => {
                    let model = segkit_models::load_hf_dir(dir, &model_type, device)?;
                    Self::from_model(name, model, dir)
                }
            };
        }
        // A registry entry's directory as downloaded: the preset says which model it is.
        match entry.and_then(|e| e.preset.as_deref()) {
            Some(p) => {
                let cfg = segkit_models::preset(p)?;
                let ckpt = find_checkpoint(dir)?;
                Self::from_checkpoint(name, &cfg, &ckpt, device)
            }
            None => Err(bad_model(
                dir,
                "no config.json: a model directory holds a segkit config.json + \
                 model.safetensors, or a Hugging Face save_pretrained",
            )),
        }
    }

    fn from_checkpoint(
        name: String,
        cfg: &ModelConfig,
        ckpt: &Path,
        device: &Device,
    ) -> Result<Self> {
        let model = cfg.load(cfg.name().unwrap_or(&name), ckpt, device)?;
        Self::from_model(name, model, ckpt)
    }

    /// Wraps a loaded model of any architecture read from `source`. A model that does no
    /// segmentation task (a backbone on its own) is an [`Error::BadModel`].
    pub fn from_model(
        name: impl Into<String>,
        model: Box<dyn Model>,
        source: &Path,
    ) -> Result<Self> {
        if model.tasks().is_empty() {
            return Err(bad_model(
                source,
                format!(
                    "a `{}` model does no segmentation task (it is a backbone)",
                    model.architecture()
                ),
            ));
        }
        let mut seg = Self::wrap(name, model);
        seg.source = Some(source.to_path_buf());
        Ok(seg)
    }

    fn wrap(name: impl Into<String>, model: Box<dyn Model>) -> Self {
        Self {
            name: name.into(),
            source: None,
            classes: model.classes(),
            palette: model.palette(),
            things: model.thing_classes(),
            model,
            options: PredictOptions::default(),
        }
    }

    /// Wraps a built [`EncoderDecoder`]; class names and palette come from its config's
    /// `meta` (`class_<i>` and the VOC palette where it has none).
    pub fn from_encoder_decoder(name: impl Into<String>, model: EncoderDecoder) -> Self {
        Self::wrap(name, Box::new(model))
    }

    /// Wraps a built [`OneFormer`]; class names are its labels, the palette the dataset's
    /// (ADE20K, Cityscapes) or VOC's, thing classes those segkit knows for the label set.
    pub fn from_oneformer(name: impl Into<String>, model: OneFormer) -> Self {
        Self::wrap(name, Box::new(model))
    }

    /// OneFormer post-processing settings (thresholds, stuff fusing); ignored by semantic
    /// models.
    pub fn with_predict_options(mut self, options: PredictOptions) -> Self {
        self.options = options;
        self
    }

    /// The name: the registry name it was loaded by, else the model directory's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file or directory the weights were read from (`None` for a wrapped model).
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// The architecture (the model config's `"type"`: `EncoderDecoder`, `OneFormer`, ...).
    pub fn architecture(&self) -> &'static str {
        self.model.architecture()
    }

    /// The tasks [`Segmenter::segment`] accepts.
    pub fn supported_tasks(&self) -> &'static [Task] {
        self.model.tasks()
    }

    /// Whether `task` is supported.
    pub fn supports(&self, task: Task) -> bool {
        self.supported_tasks().contains(&task)
    }

    /// Class names, indexed by class id.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// One RGB colour per class.
    pub fn palette(&self) -> &[[u8; 3]] {
        &self.palette
    }

    /// The thing classes, when known (OneFormer on ADE20K, COCO or Cityscapes labels).
    pub fn thing_classes(&self) -> Option<&[u32]> {
        self.things.as_deref()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.model.device()
    }

    /// The model, of whatever architecture.
    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }

    /// The encoder-decoder, for a semantic model.
    pub fn encoder_decoder(&self) -> Option<&EncoderDecoder> {
        self.model.as_any().downcast_ref()
    }

    /// The OneFormer model, for a OneFormer segmenter.
    pub fn oneformer(&self) -> Option<&OneFormer> {
        self.model.as_any().downcast_ref()
    }

    /// Segments `image` for `task` at the image's own size: the model's test pipeline
    /// (mmseg's for encoder-decoders, `OneFormerProcessor`'s for OneFormer), the model and
    /// the task's post-processing ([`Model::segment`]), named after this segmenter.
    ///
    /// Errors: [`Error::UnsupportedTask`] naming the tasks the model does; [`Error::BadImage`]
    /// for an empty image.
    pub fn segment(&self, image: &DynamicImage, task: Task) -> Result<Segmentation> {
        if !self.supports(task) {
            return Err(Error::UnsupportedTask {
                model: self.name.clone(),
                task: task.as_str().to_string(),
                supported: self
                    .supported_tasks()
                    .iter()
                    .map(|t| t.as_str().to_string())
                    .collect(),
            });
        }
        self.model.segment(image, task, &self.options)
    }
}

#[cfg(test)]
mod tests;
