//! Model configs for `segkit dump`: a name from segkit-models' one preset table
//! ([`segkit::models::presets`]) or a JSON [`ModelConfig`] file (`{"type": "ResNet", ...}`).

use segkit::ModelConfig;

use crate::CliError;

/// Every preset name with a one-line description.
pub fn list() -> Vec<(String, String)> {
    segkit::presets()
        .into_iter()
        .map(|p| (p.name, format!("[{}] {}", p.architecture, p.about)))
        .collect()
}

/// The config of preset `name`, or an error listing the valid names.
pub fn preset(name: &str) -> Result<ModelConfig, CliError> {
    segkit::preset(name).map_err(|_| CliError::UnknownPreset {
        name: name.to_string(),
        valid: list().into_iter().map(|(n, _)| n).collect(),
    })
}

/// Parses a JSON model config file.
pub fn from_file(path: &std::path::Path) -> Result<ModelConfig, CliError> {
    ModelConfig::from_file(path).map_err(|e| match e {
        segkit::Error::BadModel { path, reason } => CliError::BadConfig { path, reason },
        other => CliError::BadConfig {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    })
}
