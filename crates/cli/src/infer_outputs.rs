//! The files `segkit infer` writes for an input `STEM.*`, and the rules that keep them from
//! touching the user's files: an earlier run's outputs found in an input directory are not
//! inputs, and a run whose output would replace one of its inputs is refused before any
//! work.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::outputs::canonical;

/// The image maps written per input, as `STEM_{kind}.png`, in order: class ids, palette
/// colours, the colours over the image. A model with more named maps (an edge map, say)
/// adds its kind here, and every check below covers it.
pub const MAP_KINDS: [&str; 3] = ["classes", "color", "overlay"];

/// Maps that only some models or tasks write, as `STEM_{kind}.png`: Gated-SCNN's edge map,
/// and for instance results the instance-id map (16-bit, 0 where no instance is, else the
/// instance's `id` in `STEM.json`). They are named after `STEM.json` in [`output_names`] and
/// every check covers them, whatever the model.
pub const OPTIONAL_MAP_KINDS: [&str; 2] = ["edge", "instances"];

/// The instance-id map of an instance result as a 16-bit grey PNG (see
/// [`OPTIONAL_MAP_KINDS`]); `None` for other results.
pub fn instance_id_png(out: &segkit::Segmentation) -> Option<Result<Vec<u8>, String>> {
    let r = out.as_instance()?;
    Some((|| {
        let px: Vec<u16> = r
            .segment_map
            .iter()
            .map(|&id| u16::try_from(id).unwrap_or(u16::MAX))
            .collect();
        let (w, h) = (r.width as u32, r.height as u32);
        let img: image::ImageBuffer<image::Luma<u16>, Vec<u16>> =
            image::ImageBuffer::from_raw(w, h, px)
                .ok_or_else(|| format!("instance map of {w} x {h} has the wrong size"))?;
        segkit::segmenter::results::encode_image(
            &image::DynamicImage::ImageLuma16(img),
            image::ImageFormat::Png,
        )
        .map_err(|e| e.to_string())
    })())
}

/// The file names written for an input with stem `stem`: each map's PNG, then `STEM.json`,
/// then the optional maps' PNGs.
pub fn output_names(stem: &str) -> Vec<String> {
    MAP_KINDS
        .iter()
        .map(|k| format!("{stem}_{k}.png"))
        .chain([format!("{stem}.json")])
        .chain(OPTIONAL_MAP_KINDS.iter().map(|k| format!("{stem}_{k}.png")))
        .collect()
}

/// Whether `p` was written by an earlier `segkit infer`: a `PREFIX_KIND.png` whose
/// `PREFIX.json` next to it is segkit's summary listing `p`'s name among its `files`.
pub fn is_own_output(p: &Path) -> bool {
    let (Some(dir), Some(name)) = (p.parent(), p.file_name().and_then(|n| n.to_str())) else {
        return false;
    };
    let Some(base) = name.strip_suffix(".png") else {
        return false;
    };
    base.match_indices('_').any(|(i, _)| {
        let json = dir.join(format!("{}.json", &base[..i]));
        let Ok(text) = std::fs::read_to_string(&json) else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            return false;
        };
        v.get("model").is_some()
            && v.get("files")
                .and_then(|f| f.as_object())
                .is_some_and(|f| f.values().any(|n| n.as_str() == Some(name)))
    })
}

/// Refuses a run where an output file (in `out`) is one of the inputs, naming both.
pub fn check_no_input_overwritten(
    inputs: &[PathBuf],
    stem: impl Fn(&Path) -> String,
    out: &Path,
) -> Result<(), String> {
    let by_path: HashMap<PathBuf, &Path> =
        inputs.iter().map(|p| (canonical(p), p.as_path())).collect();
    for input in inputs {
        for name in output_names(&stem(input)) {
            let target = out.join(&name);
            if let Some(victim) = by_path.get(&canonical(&target)) {
                return Err(format!(
                    "refusing to run: the output {} for input {} would overwrite the input {}; \
                     choose another --out directory (or rename the input)",
                    target.display(),
                    input.display(),
                    victim.display()
                ));
            }
        }
    }
    Ok(())
}

/// Whether `json` is a summary an earlier `segkit infer` wrote (`model` and `files` keys).
fn is_own_summary(json: &Path) -> bool {
    std::fs::read_to_string(json)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v.get("model").is_some() && v.get("files").is_some())
}

/// Refuses a run that would replace a file in `out` that an earlier `segkit infer` did not
/// write (the user's own `cat.json` or `cat_color.png` next to the outputs), naming it. An
/// earlier run's outputs are replaced, as a re-run should.
pub fn check_no_foreign_file_replaced(
    inputs: &[PathBuf],
    stem: impl Fn(&Path) -> String,
    out: &Path,
) -> Result<(), String> {
    for input in inputs {
        for name in output_names(&stem(input)) {
            let target = out.join(&name);
            if !target.is_file() {
                continue;
            }
            let ours = if name.ends_with(".json") {
                is_own_summary(&target)
            } else {
                is_own_output(&target)
            };
            if !ours {
                return Err(format!(
                    "refusing to run: {} (an output for input {}) exists and was not written \
                     by segkit infer; move it or choose another --out directory",
                    target.display(),
                    input.display()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_outputs_are_recognised_by_their_summary() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("my_cat_color.png"), b"x").unwrap();
        assert!(!is_own_output(&d.join("my_cat_color.png")));
        std::fs::write(
            d.join("my_cat.json"),
            r#"{"model": "m", "files": {"classes": "my_cat_classes.png", "color": "my_cat_color.png"}}"#,
        )
        .unwrap();
        assert!(is_own_output(&d.join("my_cat_color.png")));
        assert!(!is_own_output(&d.join("my_cat_overlay.png")));
        // A user's JSON that is not segkit's summary does not make a file an output.
        std::fs::write(d.join("dog.json"), r#"{"files": {"a": "dog_color.png"}}"#).unwrap();
        assert!(!is_own_output(&d.join("dog_color.png")));
    }

    #[test]
    fn an_output_that_is_an_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let inputs = vec![d.join("cat.png"), d.join("cat_color.png")];
        let stem = |p: &Path| p.file_stem().unwrap().to_string_lossy().into_owned();
        let e = check_no_input_overwritten(&inputs, stem, d).unwrap_err();
        assert!(e.contains("cat_color.png") && e.contains("--out"), "{e}");
        check_no_input_overwritten(&inputs, stem, &d.join("out")).unwrap();
        // The user's own `cat.json` in the output directory is not replaced either.
        let out = d.join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("cat.json"), b"{\"mine\": 1}").unwrap();
        let e = check_no_foreign_file_replaced(&inputs[..1], stem, &out).unwrap_err();
        assert!(e.contains("cat.json") && e.contains("not written"), "{e}");
        std::fs::write(out.join("cat.json"), br#"{"model": "m", "files": {}}"#).unwrap();
        check_no_foreign_file_replaced(&inputs[..1], stem, &out).unwrap();
    }
}
