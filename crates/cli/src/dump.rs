//! `segkit dump`: run a model on a tensor and write every output.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use clap::Args;
use segkit_backbones::ResNet;
use segkit_core::checkpoint::{self, StateDict};
use segkit_core::testing::synthetic_var_builder;

use crate::presets::{self, ModelConfig, PRESETS};
use crate::CliError;

/// Arguments of `segkit dump`.
#[derive(Args, Debug)]
pub struct DumpArgs {
    /// Print the preset names and exit.
    #[arg(long)]
    list: bool,
    /// A preset name (see --list).
    #[arg(long, conflicts_with = "config")]
    preset: Option<String>,
    /// A JSON model config file (`{"type": "ResNet", ...}`) instead of a preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Checkpoint: .safetensors, or a PyTorch .pth / .bin (plain state dict, `{state_dict}`,
    /// mmseg `{meta, state_dict}`, `module.` prefixes).
    #[arg(long, conflicts_with = "synthetic")]
    weights: Option<PathBuf>,
    /// Use segkit's deterministic synthetic weights (the same as tests/parity/synth.py).
    #[arg(long)]
    synthetic: bool,
    /// Take only checkpoint keys under this prefix, with the prefix removed (e.g. `backbone.`).
    #[arg(long, default_value = "")]
    prefix: String,
    /// Allow checkpoint keys the model does not use (e.g. a classifier `fc.*`).
    #[arg(long)]
    allow_unused: bool,
    /// Input safetensors file holding a tensor named `input` (N x 3 x H x W, f32).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Output safetensors file (written atomically).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn model_config(a: &DumpArgs) -> Result<(String, ModelConfig), CliError> {
    match (&a.preset, &a.config) {
        (Some(p), _) => Ok((p.clone(), presets::preset(p)?)),
        (None, Some(c)) => Ok((c.display().to_string(), presets::from_file(c)?)),
        (None, None) => Err(CliError::Usage(
            "give --preset NAME or --config FILE (see `segkit dump --list`)".into(),
        )),
    }
}

fn read_input(path: &PathBuf) -> Result<Tensor, CliError> {
    let map = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| CliError::Usage(format!("cannot read input {}: {e}", path.display())))?;
    let t = map.get("input").ok_or_else(|| {
        CliError::Usage(format!(
            "input {} has no tensor named `input` (it has: {})",
            path.display(),
            map.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    Ok(t.to_dtype(DType::F32)?)
}

/// Runs `segkit dump`.
pub fn run(a: DumpArgs) -> Result<(), CliError> {
    if a.list {
        for (name, about, _) in PRESETS {
            println!("{name:<18} {about}");
        }
        return Ok(());
    }
    let (name, cfg) = model_config(&a)?;
    let input = a
        .input
        .as_ref()
        .ok_or_else(|| CliError::Usage("--input FILE is required".into()))?;
    let out = a
        .out
        .as_ref()
        .ok_or_else(|| CliError::Usage("--out FILE is required".into()))?;
    let dev = Device::Cpu;
    let x = read_input(input)?;
    let outputs: Vec<(String, Tensor)> = match &cfg {
        ModelConfig::ResNet(c) => {
            let net: ResNet = match (&a.weights, a.synthetic) {
                (_, true) => ResNet::new(c, synthetic_var_builder(DType::F32, &dev))?,
                (Some(w), false) => {
                    let mut sd = StateDict::load(w)?;
                    if !a.prefix.is_empty() {
                        sd = sd.select_prefix(&a.prefix)?;
                    }
                    // A backbone has no classifier: torchvision / timm `fc.*` are dropped
                    // rather than reported as unused.
                    sd.remove("fc.weight");
                    sd.remove("fc.bias");
                    let build = |vb| ResNet::new(c, vb).map_err(segkit_core::Error::from);
                    let loaded = if a.allow_unused {
                        checkpoint::load_model_lenient(&sd, DType::F32, &dev, build).map(|r| r.0)
                    } else {
                        checkpoint::load_model(&sd, DType::F32, &dev, build)
                    };
                    loaded.map_err(|source| CliError::Load {
                        model: name.clone(),
                        checkpoint: w.clone(),
                        source,
                    })?
                }
                (None, false) => {
                    return Err(CliError::Usage(
                        "give --weights CHECKPOINT or --synthetic".into(),
                    ))
                }
            };
            let o = net.forward(&x, false)?;
            vec![
                ("c2".into(), o.c2),
                ("c3".into(), o.c3),
                ("c4".into(), o.c4),
                ("c5".into(), o.c5),
            ]
        }
    };
    let mut map = HashMap::new();
    for (k, t) in outputs {
        eprintln!("{k}: {:?}", t.dims());
        map.insert(k, t);
    }
    checkpoint::save_safetensors(&map, out)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
