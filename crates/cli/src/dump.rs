//! `segkit dump`: run a model on a tensor and write every output.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use clap::Args;
use segkit::ModelConfig;
use segkit_core::checkpoint::{self, StateDict};
use segkit_core::testing::synthetic_var_builder;

use crate::outputs::{check_output_file, refuse_overwriting_inputs};
use crate::presets;
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
    /// OneFormer only: the task token (`semantic`, `instance` or `panoptic`); the
    /// post-processed result for that task is written too (`segmentation`, and the segments in
    /// OUT with the extension `.json`).
    #[arg(long, default_value = "semantic")]
    task: String,
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
    segkit::models::encoder_decoder::inference::check_input_shape(t.dims())
        .map_err(|e| CliError::Usage(format!("input {}: {e}", path.display())))?;
    Ok(t.to_dtype(DType::F32)?)
}

/// Every file the dump reads: `--input`, `--config`, `--weights` (a file, or each file of a
/// model directory).
fn inputs_of(a: &DumpArgs) -> Vec<(&'static str, PathBuf)> {
    let mut v: Vec<(&'static str, PathBuf)> = Vec::new();
    if let Some(i) = &a.input {
        v.push(("--input", i.clone()));
    }
    if let Some(c) = &a.config {
        v.push(("--config", c.clone()));
    }
    if let Some(w) = &a.weights {
        v.push(("--weights", w.clone()));
        if let Ok(rd) = std::fs::read_dir(w) {
            v.extend(rd.flatten().map(|e| ("file of --weights", e.path())));
        }
    }
    v
}

/// `--out` (and `extra`, files written next to it) must be writable file paths in an
/// existing directory, none of them an input.
fn check_outputs(a: &DumpArgs, out: &Path, extra: &[PathBuf]) -> Result<(), CliError> {
    let inputs = inputs_of(a);
    let refs: Vec<(&str, &Path)> = inputs.iter().map(|(r, p)| (*r, p.as_path())).collect();
    for o in std::iter::once(out).chain(extra.iter().map(PathBuf::as_path)) {
        check_output_file(o)?;
        refuse_overwriting_inputs(o, &refs)?;
    }
    Ok(())
}

/// Builds any model from `--synthetic` or `--weights` (optionally only the keys under
/// `--prefix`, and with `--allow-unused` keys tolerated). A backbone has no classifier:
/// torchvision / timm `fc.*` keys are dropped for backbone configs rather than reported as
/// unused.
fn load_model(
    a: &DumpArgs,
    name: &str,
    cfg: &ModelConfig,
    dev: &Device,
) -> Result<Box<dyn segkit::Model>, CliError> {
    let w = match (&a.weights, a.synthetic) {
        (_, true) => return Ok(cfg.build(synthetic_var_builder(DType::F32, dev))?),
        (Some(w), false) => w,
        (None, false) => {
            return Err(CliError::Usage(
                "give --weights CHECKPOINT or --synthetic".into(),
            ))
        }
    };
    let load_err = |source: segkit_core::Error| -> CliError {
        segkit::Error::checkpoint(name, w, source).into()
    };
    let mut sd = StateDict::load(w).map_err(load_err)?;
    if !a.prefix.is_empty() {
        sd = sd.select_prefix(&a.prefix).map_err(load_err)?;
    }
    if matches!(cfg, ModelConfig::ResNet(_) | ModelConfig::Swin(_)) {
        sd.remove("fc.weight");
        sd.remove("fc.bias");
    }
    if !a.allow_unused {
        return Ok(cfg.from_state_dict(name, &sd, w, dev)?);
    }
    let build = |vb| cfg.build(vb);
    let (model, _unused) = checkpoint::load_model_lenient(&sd, DType::F32, dev, build)
        .map_err(|e| e.in_checkpoint(name, w))?;
    Ok(model)
}

/// Runs `segkit dump`.
pub fn run(a: DumpArgs) -> Result<(), CliError> {
    if a.list {
        for (name, about) in presets::list() {
            println!("{name:<44} {about}");
        }
        return Ok(());
    }
    let hf_dir = a
        .weights
        .as_ref()
        .is_some_and(|w| w.is_dir() && w.join("config.json").is_file());
    if hf_dir {
        return run_oneformer(&a, None);
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
    if let ModelConfig::OneFormer(c) = &cfg {
        // OneFormer also writes its task's post-processed result.
        return run_oneformer(&a, Some(c));
    }
    check_outputs(&a, out, &[])?;
    let x = read_input(input)?;
    let model = load_model(&a, &name, &cfg, &dev)?;
    let outputs = model.forward_named(&x, None)?;
    let mut map = HashMap::new();
    for (k, t) in outputs {
        eprintln!("{k}: {:?}", t.dims());
        map.insert(k, t);
    }
    segkit::train::checkpoint::as_one_write(|| checkpoint::save_safetensors(&map, out))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// `segkit dump` for OneFormer: an HF model directory (`--weights DIR`) or a preset with
/// synthetic weights; outputs `class_queries_logits`, `masks_queries_logits` and the task's
/// post-processed map (`segmentation`, transformers' defaults, at the input's size), plus the
/// segments as JSON next to the output.
fn run_oneformer(a: &DumpArgs, cfg: Option<&segkit::OneFormerConfig>) -> Result<(), CliError> {
    use segkit::oneformer_parts::tokenizer::Task;
    let input = a
        .input
        .as_ref()
        .ok_or_else(|| CliError::Usage("--input FILE is required".into()))?;
    let out = a
        .out
        .as_ref()
        .ok_or_else(|| CliError::Usage("--out FILE is required".into()))?;
    let task: Task = a
        .task
        .parse()
        .map_err(|e: segkit::oneformer_parts::Error| CliError::Usage(e.to_string()))?;
    check_outputs(a, out, &[out.with_extension("json")])?;
    let dev = Device::Cpu;
    let model = load_oneformer(a, cfg, &dev)?;
    let x = read_input(input)?;
    let (b, _, h, w) = x.dims4()?;
    let ti = model.task_inputs(task)?;
    let ti = ti.broadcast_as((b, ti.dim(1)?))?.contiguous()?;
    let o = model.forward(&x, &ti, None, false)?;
    let mut map = HashMap::new();
    let (cls, masks) = (&o.class_queries_logits, &o.masks_queries_logits);
    let (maps, segments) = post_process(task, cls, masks, &vec![(h, w); b])?;
    let flat: Vec<i64> = maps.into_iter().flatten().collect();
    map.insert(
        "segmentation".to_string(),
        Tensor::from_vec(flat, (b, h, w), &dev)?,
    );
    map.insert("class_queries_logits".to_string(), cls.clone());
    map.insert("masks_queries_logits".to_string(), masks.clone());
    for (k, t) in &map {
        eprintln!("{k}: {:?}", t.dims());
    }
    segkit::train::checkpoint::as_one_write(|| checkpoint::save_safetensors(&map, out))?;
    eprintln!("wrote {}", out.display());
    if !segments.is_null() {
        write_segments(&out.with_extension("json"), &segments)?;
    }
    Ok(())
}

/// OneFormer from `--weights HF_DIR`, or from `cfg` (a preset) with `--synthetic`.
fn load_oneformer(
    a: &DumpArgs,
    cfg: Option<&segkit::OneFormerConfig>,
    dev: &Device,
) -> Result<segkit::OneFormer, CliError> {
    use segkit::OneFormer;
    Ok(match (&a.weights, a.synthetic, cfg) {
        (Some(dir), false, _) => OneFormer::from_hf_dir(dir, dev)?,
        (_, true, Some(cfg)) => OneFormer::new(cfg, synthetic_var_builder(DType::F32, dev))?,
        _ => {
            return Err(CliError::Usage(
                "OneFormer: give --weights HF_DIR, or --preset NAME with --synthetic".into(),
            ))
        }
    })
}

/// transformers' post-processing of `task` with its default options, at `sizes`: one map per
/// image, and the segments of each image as JSON (`Null` for the semantic task).
fn post_process(
    task: segkit::oneformer_parts::tokenizer::Task,
    cls: &Tensor,
    masks: &Tensor,
    sizes: &[(usize, usize)],
) -> Result<(Vec<Vec<i64>>, serde_json::Value), CliError> {
    use segkit::oneformer_parts::postprocess;
    use segkit::oneformer_parts::tokenizer::Task;
    fn to_i64<T: Copy + Into<i64>>(seg: &[T]) -> Vec<i64> {
        seg.iter().map(|&v| v.into()).collect()
    }
    let pp = |e: segkit::oneformer_parts::Error| CliError::Core(e);
    let opts = segkit::PredictOptions::default();
    let r = match task {
        Task::Semantic => {
            let r = postprocess::post_process_semantic_segmentation(cls, masks, Some(sizes))
                .map_err(pp)?;
            let maps = r.iter().map(|s| to_i64(&s.segmentation)).collect();
            return Ok((maps, serde_json::Value::Null));
        }
        Task::Instance => {
            postprocess::post_process_instance_segmentation(cls, masks, &opts.instance, Some(sizes))
        }
        Task::Panoptic => {
            postprocess::post_process_panoptic_segmentation(cls, masks, &opts.panoptic, Some(sizes))
        }
    }
    .map_err(pp)?;
    let maps = r.iter().map(|s| to_i64(&s.segmentation)).collect();
    let segs = serde_json::to_value(r.iter().map(|s| &s.segments).collect::<Vec<_>>())
        .map_err(|e| CliError::Usage(e.to_string()))?;
    Ok((maps, segs))
}

/// Writes `segments` as pretty JSON to `json` (a hidden temporary file renamed into place).
fn write_segments(json: &Path, segments: &serde_json::Value) -> Result<(), CliError> {
    let text =
        serde_json::to_string_pretty(segments).map_err(|e| CliError::Usage(e.to_string()))?;
    crate::outputs::write_all_or_none(&[(json.to_path_buf(), text.into_bytes())]).map_err(
        |reason| CliError::Output {
            path: json.to_path_buf(),
            reason,
        },
    )?;
    eprintln!("wrote {}", json.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &std::path::Path, preset: &str, weights: Option<PathBuf>) -> DumpArgs {
        let input = dir.join("input.safetensors");
        let x =
            segkit_core::testing::synthetic_input("input", (1, 3, 33, 41), &Device::Cpu).unwrap();
        checkpoint::save_safetensors([("input", &x)], &input).unwrap();
        DumpArgs {
            list: false,
            preset: Some(preset.to_string()),
            config: None,
            synthetic: weights.is_none(),
            weights,
            prefix: String::new(),
            allow_unused: false,
            input: Some(input),
            out: Some(dir.join("out.safetensors")),
            task: "semantic".into(),
        }
    }

    #[test]
    fn segmentor_presets_write_every_head_output() {
        let dir = std::env::temp_dir().join(format!("segkit-dump-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        run(args(&dir, "danet_r50-d8_cityscapes-512x1024", None)).unwrap();
        let out =
            candle_core::safetensors::load(dir.join("out.safetensors"), &Device::Cpu).unwrap();
        let mut keys: Vec<&str> = out.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["aux_logits", "cam_logits", "logits", "pam_logits"]);
        assert_eq!(out["logits"].dims(), &[1, 19, 5, 6]);

        // A checkpoint of something else: one line naming the preset and the missing key.
        let ckpt = dir.join("other.safetensors");
        let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        checkpoint::save_safetensors([("decode_head.conv_seg.bias", &t)], &ckpt).unwrap();
        let e = run(args(&dir, "pspnet_r50-d8_ade20k-512x512", Some(ckpt))).unwrap_err();
        // As `main` prints it: with its sources.
        let e = segkit_core::error::Report(&e).to_string();
        assert!(
            e.contains("pspnet_r50-d8_ade20k-512x512") && e.contains("backbone.stem.0.weight"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
