//! `segkit infer`: segment images with a model and write, for each image `STEM`,
//! `STEM_classes.png` (class ids), `STEM_color.png` (palette colours), `STEM_overlay.png`
//! (colours blended over the image), for models with an edge output (Gated-SCNN)
//! `STEM_edge.png` (the edge map, 0..255), for instance results `STEM_instances.png` (16-bit
//! instance ids, 0 where none; the highest-scoring instance where they overlap), and `STEM.json`: the image and its files, then the
//! result's own serialisation ([`Segmentation`]'s JSON, documented in
//! `segkit::segmenter::results`: task, size, per-class areas and fractions, instances or
//! segments with class, score, area, bbox and COCO RLE mask).
//!
//! Failure behaviour, in order:
//! 1. everything that can be checked before any work is checked first — the alpha, the
//!    device, every input (exists, is an image by its header; directories and globs
//!    expanded; files an earlier run wrote — `STEM_*.png` listed in its `STEM.json` — are
//!    skipped when a directory or glob finds them), that no two inputs share a stem, that
//!    no output file is one of the inputs (`infer DIR --out DIR` with the user's own
//!    `cat_color.png` next to `cat.png` is refused) and that no output would replace a file
//!    an earlier run did not write, that the output directory is (or can be
//!    created as) a writable directory, the model (loaded once) and that it does the task —
//!    and a failure there writes nothing (not even the output directory);
//! 2. then images are processed in order; each image's four files are encoded in memory,
//!    written as hidden temporary files in the output directory and renamed into place
//!    together, so an image that fails (corrupt pixel data, a full disk) leaves none of its
//!    files; a file it would have replaced (an earlier run's) is kept aside until all four
//!    are in place and restored on failure, so no run deletes a file it did not create.
//!    The run stops at the first failing image with one line naming it and how many
//!    images were written before it, and exits non-zero; the earlier images' files stay.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use image::{DynamicImage, ImageFormat};
use segkit::segmenter::results::encode_image;
use segkit::{Segmentation, Segmenter, Task};
use serde::Serialize;

use crate::infer_outputs::{
    check_no_foreign_file_replaced, check_no_input_overwritten, instance_id_png, is_own_output,
    output_names,
};
use crate::outputs::write_all_or_none;
use crate::CliError;

/// The segmentation task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TaskArg {
    /// A class per pixel.
    Semantic,
    /// Object instances (PANet, OneFormer).
    Instance,
    /// Stuff and thing segments (OneFormer).
    Panoptic,
}

impl From<TaskArg> for Task {
    fn from(t: TaskArg) -> Self {
        match t {
            TaskArg::Semantic => Task::Semantic,
            TaskArg::Instance => Task::Instance,
            TaskArg::Panoptic => Task::Panoptic,
        }
    }
}

/// Arguments of `segkit infer`.
#[derive(Args, Debug)]
pub struct InferArgs {
    /// Images: files, directories (the .png / .jpg / .jpeg files directly inside, sorted by
    /// name) or glob patterns (quote them: `'photos/*.jpg'`, `'data/**/*.png'`).
    #[arg(required = true, value_name = "IMAGE|DIR|GLOB")]
    inputs: Vec<String>,
    /// Output directory (created when missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The model: a registry name (weights/NAME/ or $SEGKIT_WEIGHTS/NAME/), a segkit model
    /// directory (config.json + model.safetensors) or a Hugging Face OneFormer directory.
    #[arg(long, value_name = "NAME|PATH", default_value = segkit::DEFAULT_MODEL)]
    model: String,
    /// The task; semantic models do `semantic` only, PANet `instance` only, OneFormer all
    /// three. Default: `semantic` where the model does it, else the model's first task.
    #[arg(long, value_enum)]
    task: Option<TaskArg>,
    /// `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: String,
    /// OneFormer instance / panoptic only: the minimum class probability of a kept segment
    /// (transformers' default 0.5).
    #[arg(long, value_name = "P")]
    threshold: Option<f64>,
    /// Opacity of the colours in STEM_overlay.png, in [0, 1].
    #[arg(long, default_value_t = 0.5)]
    alpha: f64,
    /// No progress bar and no summary line.
    #[arg(long, short)]
    quiet: bool,
}

/// Image extensions a directory input contributes.
const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

fn is_image_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// The image files directly inside `dir`, sorted by name.
fn images_in(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list input directory {}: {e}", dir.display()))?;
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && is_image_name(p))
        .collect();
    v.sort();
    Ok(v)
}

/// Files, directories and glob patterns -> image paths, in argument order, without repeats.
/// Files an earlier `segkit infer` wrote ([`is_own_output`]) that a directory or a glob
/// finds are not inputs; they are counted in the second value. Files named on the command
/// line are always inputs.
fn expand_inputs(args: &[String]) -> Result<(Vec<PathBuf>, usize), String> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut skipped = 0usize;
    let mut push_found = |p: PathBuf, out: &mut Vec<PathBuf>| {
        if is_own_output(&p) {
            skipped += 1;
        } else if !out.contains(&p) {
            out.push(p);
        }
    };
    for a in args {
        let p = Path::new(a);
        if p.is_dir() {
            let found = images_in(p)?;
            if found.is_empty() {
                return Err(format!(
                    "input directory {a} has no .png / .jpg / .jpeg images (subdirectories are \
                     not searched: use a glob such as '{a}/**/*.png')"
                ));
            }
            found.into_iter().for_each(|f| push_found(f, &mut out));
        } else if p.exists() {
            if !out.iter().any(|o| o == p) {
                out.push(p.to_path_buf());
            }
        } else if a.contains(['*', '?', '[']) {
            let paths = glob::glob(a).map_err(|e| format!("bad glob pattern `{a}`: {e}"))?;
            let mut any = false;
            for entry in paths {
                let path = entry.map_err(|e| format!("glob `{a}`: {e}"))?;
                if path.is_dir() {
                    for f in images_in(&path)? {
                        any = true;
                        push_found(f, &mut out);
                    }
                } else {
                    any = true;
                    push_found(path, &mut out);
                }
            }
            if !any {
                return Err(format!("no file matches `{a}`"));
            }
        } else {
            return Err(format!("input {a} does not exist"));
        }
    }
    if out.is_empty() {
        return Err(format!(
            "no inputs left: the {skipped} image(s) found were written by an earlier `segkit \
             infer` (name such a file explicitly to segment it)"
        ));
    }
    Ok((out, skipped))
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".to_string())
}

/// Two inputs with one stem would overwrite each other's outputs.
fn check_stems(inputs: &[PathBuf]) -> Result<(), String> {
    let mut seen: HashMap<String, &Path> = HashMap::new();
    for p in inputs {
        if let Some(first) = seen.insert(stem(p), p) {
            return Err(format!(
                "inputs {} and {} would both write {}_*.png; rename one or run them separately",
                first.display(),
                p.display(),
                stem(p)
            ));
        }
    }
    Ok(())
}

/// Reads each input's header: it must exist and be an image in a format segkit decodes.
fn check_image(p: &Path) -> Result<(), String> {
    let reader = image::ImageReader::open(p)
        .map_err(|e| format!("cannot read input {}: {e}", p.display()))?
        .with_guessed_format()
        .map_err(|e| format!("cannot read input {}: {e}", p.display()))?;
    if reader.format().is_none() {
        return Err(format!(
            "input {} is not an image (not PNG or JPEG data)",
            p.display()
        ));
    }
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| format!("input {} is not an image: {e}", p.display()))?;
    if w == 0 || h == 0 {
        return Err(format!("input {} is empty ({w} x {h} pixels)", p.display()));
    }
    Ok(())
}

/// Creates and removes a file in `dir` to prove it is writable.
fn probe_writable(dir: &Path, out: &Path) -> Result<(), String> {
    let probe = dir.join(format!(".segkit-infer-probe-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| {
            format!(
                "output directory {} is not writable ({}: {e})",
                out.display(),
                dir.display()
            )
        })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The output directory must be a writable directory, or creatable inside one; nothing is
/// created here.
fn check_out_dir(out: &Path) -> Result<(), String> {
    if out.exists() {
        if !out.is_dir() {
            return Err(format!(
                "output directory {} is a file, not a directory",
                out.display()
            ));
        }
        return probe_writable(out, out);
    }
    let ancestor = out
        .ancestors()
        .skip(1)
        .map(|a| {
            if a.as_os_str().is_empty() {
                Path::new(".")
            } else {
                a
            }
        })
        .find(|a| a.exists())
        .unwrap_or(Path::new("."));
    if !ancestor.is_dir() {
        return Err(format!(
            "cannot create output directory {}: {} is not a directory",
            out.display(),
            ancestor.display()
        ));
    }
    probe_writable(ancestor, out)
}

/// The files written next to `STEM.json`.
#[derive(Serialize)]
struct OutputFiles<'a> {
    /// `STEM_classes.png`.
    classes: &'a str,
    /// `STEM_color.png`.
    color: &'a str,
    /// `STEM_overlay.png`.
    overlay: &'a str,
    /// `STEM_edge.png`: the edge map of models that predict one (Gated-SCNN's `edge`).
    #[serde(skip_serializing_if = "Option::is_none")]
    edge: Option<&'a str>,
    /// `STEM_instances.png`: the instance-id map of instance results.
    #[serde(skip_serializing_if = "Option::is_none")]
    instances: Option<&'a str>,
}

/// How `STEM_classes.png` stores class ids.
#[derive(Serialize)]
struct ClassPng {
    /// 8 or 16.
    bits: u8,
    /// The value of pixels of no class (255 or 65535).
    unlabeled: u32,
}

/// `STEM.json`: the model, the image and its output files, then the result's own fields
/// (`task`, `height`, `width`, `classes`, `unlabeled_area`, `instances` / `segments`).
#[derive(Serialize)]
struct ImageJson<'a> {
    model: &'a str,
    model_source: Option<String>,
    image: String,
    files: OutputFiles<'a>,
    class_png: ClassPng,
    #[serde(flatten)]
    result: &'a Segmentation,
}

/// Segments one image and writes its four files (all or none).
pub(crate) fn process(
    seg: &Segmenter,
    task: Task,
    input: &Path,
    out_dir: &Path,
    alpha: f64,
) -> Result<(), String> {
    let img = segkit::image::open(input).map_err(|e| e.to_string())?;
    // Gated-SCNN: `predict_image` also gives the shape stream's edge map (STEM_edge.png).
    let gscnn = seg.model().as_any().downcast_ref::<segkit::models::Gscnn>();
    let mut edge = None;
    let out = match gscnn.filter(|_| task == Task::Semantic) {
        Some(g) => g.predict_image(&img).map(|p| {
            edge = p.edge;
            Segmentation::Semantic(p.semantic)
        }),
        None => seg.segment(&img, task),
    }
    .map_err(|e| match seg.source() {
        // A model error names the model's config (a size it sets, say).
        Some(p) => {
            let dir = if p.is_dir() {
                p
            } else {
                p.parent().unwrap_or(p)
            };
            let cfg = dir.join("config.json");
            if cfg.is_file() {
                format!("{e} (model config {})", cfg.display())
            } else {
                format!("{e} (model {})", p.display())
            }
        }
        None => e.to_string(),
    })?;
    let sem = out.semantic();
    let png = |img: &DynamicImage| encode_image(img, ImageFormat::Png).map_err(|e| e.to_string());
    let class_img = sem.class_image().map_err(|e| e.to_string())?;
    let bits = if matches!(class_img, DynamicImage::ImageLuma8(_)) {
        8
    } else {
        16
    };
    let color = DynamicImage::ImageRgb8(sem.color_image().map_err(|e| e.to_string())?);
    let overlay =
        DynamicImage::ImageRgb8(sem.overlay_image(&img, alpha).map_err(|e| e.to_string())?);
    let s = stem(input);
    let names = output_names(&s);
    let (edge_name, instances_name) = (names[4].clone(), names[5].clone());
    let instances_png = instance_id_png(&out).transpose()?;
    let json = ImageJson {
        model: seg.name(),
        model_source: seg.source().map(|p| p.display().to_string()),
        image: input.display().to_string(),
        files: OutputFiles {
            classes: &names[0],
            color: &names[1],
            overlay: &names[2],
            edge: edge.as_ref().map(|_| edge_name.as_str()),
            instances: instances_png.as_ref().map(|_| instances_name.as_str()),
        },
        class_png: ClassPng {
            bits,
            unlabeled: if bits == 8 { 255 } else { 65535 },
        },
        result: &out,
    };
    let mut json_text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    json_text.push('\n');
    let mut files = vec![
        (out_dir.join(&names[0]), png(&class_img)?),
        (out_dir.join(&names[1]), png(&color)?),
        (out_dir.join(&names[2]), png(&overlay)?),
        (out_dir.join(&names[3]), json_text.into_bytes()),
    ];
    if let Some(e) = edge {
        files.push((out_dir.join(&edge_name), png(&DynamicImage::ImageLuma8(e))?));
    }
    if let Some(b) = instances_png {
        files.push((out_dir.join(&instances_name), b));
    }
    write_all_or_none(&files)
}

fn progress_bar(n: usize, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(n as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

fn fail(msg: impl std::fmt::Display) -> CliError {
    CliError::Usage(msg.to_string().replace('\n', " "))
}

/// Runs `segkit infer`.
pub fn run(a: InferArgs) -> Result<(), CliError> {
    if !(0.0..=1.0).contains(&a.alpha) {
        return Err(fail(format!("--alpha {} is outside [0, 1]", a.alpha)));
    }
    if let Some(t) = a.threshold.filter(|t| !(0.0..=1.0).contains(t)) {
        return Err(fail(format!("--threshold {t} is outside [0, 1]")));
    }
    let device = segkit::segmenter::device(&a.device).map_err(fail)?;
    let (inputs, skipped) = expand_inputs(&a.inputs).map_err(fail)?;
    check_stems(&inputs).map_err(fail)?;
    check_no_input_overwritten(&inputs, stem, &a.out).map_err(fail)?;
    check_no_foreign_file_replaced(&inputs, stem, &a.out).map_err(fail)?;
    if skipped > 0 && !a.quiet {
        eprintln!(
            "skipping {skipped} file(s) written by an earlier `segkit infer` (STEM_classes.png, \
             ...); name one explicitly to segment it"
        );
    }
    for p in &inputs {
        check_image(p).map_err(fail)?;
    }
    check_out_dir(&a.out).map_err(fail)?;
    let mut seg = Segmenter::load(&a.model, &device).map_err(CliError::from)?;
    if let Some(t) = a.threshold {
        let mut opts = segkit::PredictOptions::default();
        opts.instance.threshold = t;
        opts.panoptic.threshold = t;
        seg = seg.with_predict_options(opts);
    }
    let task: Task = match a.task {
        Some(t) => t.into(),
        None if seg.supports(Task::Semantic) => Task::Semantic,
        None => seg
            .supported_tasks()
            .first()
            .copied()
            .unwrap_or(Task::Semantic),
    };
    if !seg.supports(task) {
        let supported: Vec<&str> = seg.supported_tasks().iter().map(|t| t.as_str()).collect();
        return Err(fail(format!(
            "model `{}` does not do {task} segmentation; it supports: {}",
            seg.name(),
            supported.join(", ")
        )));
    }
    std::fs::create_dir_all(&a.out).map_err(|e| {
        fail(format!(
            "cannot create output directory {}: {e}",
            a.out.display()
        ))
    })?;
    let pb = progress_bar(inputs.len(), a.quiet);
    for (i, input) in inputs.iter().enumerate() {
        pb.set_message(stem(input));
        if let Err(e) = process(&seg, task, input, &a.out, a.alpha) {
            pb.finish_and_clear();
            return Err(fail(format!(
                "image {}/{} {}: {e} ({} earlier image(s) written to {})",
                i + 1,
                inputs.len(),
                input.display(),
                i,
                a.out.display()
            )));
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    if !a.quiet {
        eprintln!(
            "segmented {} image(s) with `{}` ({task}) into {}",
            inputs.len(),
            seg.name(),
            a.out.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_expand_in_order_without_repeats() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["b.png", "a.JPG", "c.txt", "d.jpeg"] {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        let d = dir.path().display().to_string();
        let (got, _) = expand_inputs(&[format!("{d}/d.jpeg"), d.clone()]).unwrap();
        let names: Vec<String> = got
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["d.jpeg", "a.JPG", "b.png"]);
        let (got, _) = expand_inputs(&[format!("{d}/*.png"), format!("{d}/*.txt")]).unwrap();
        assert_eq!(got.len(), 2);
        assert!(expand_inputs(&[format!("{d}/*.gif")])
            .unwrap_err()
            .contains("no file matches"));
        assert!(expand_inputs(&[format!("{d}/zz.png")])
            .unwrap_err()
            .contains("does not exist"));
        let e = check_stems(&[dir.path().join("x.png"), dir.path().join("x.jpg")]).unwrap_err();
        assert!(e.contains("x_*.png"), "{e}");
    }
}
