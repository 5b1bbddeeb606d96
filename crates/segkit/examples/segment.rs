//! Segment one image with a segkit model, in the five lines a team needs.
//!
//! ```sh
//! cargo run --release -p segkit --example segment -- IMAGE [MODEL]
//! ```
//! MODEL is a registry name (`cargo xtask list`), a segkit model directory or a Hugging Face
//! OneFormer directory; without it, the committed demo model (`segkit-demo`) is used. Writes
//! `STEM_color.png`, `STEM_overlay.png` and `STEM.json` (the result's serialisation: classes
//! with their areas, instances / segments with COCO RLE masks) into the current directory.

use candle_core::Device;
use segkit::{Segmenter, Task};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let Some(image) = args.next() else {
        eprintln!("usage: segment IMAGE [MODEL]");
        std::process::exit(2);
    };
    let model = args
        .next()
        .unwrap_or_else(|| segkit::DEFAULT_MODEL.to_string());

    let seg = Segmenter::load(&model, &Device::Cpu)?; // registry name or path
    let img = segkit::image::open(&image)?;
    let out = seg.segment(&img, Task::Semantic)?; // typed result
    let stem = std::path::Path::new(&image)
        .file_stem()
        .map_or("image".into(), |s| s.to_string_lossy().into_owned());
    out.semantic().save_color(format!("{stem}_color.png"))?;
    out.semantic()
        .save_overlay(format!("{stem}_overlay.png"), &img, 0.5)?;
    std::fs::write(format!("{stem}.json"), serde_json::to_string_pretty(&out)?)?;

    for a in out.semantic().class_areas() {
        println!(
            "{:<16} {:>8} px ({:.1}%)",
            a.class_name,
            a.area,
            100.0 * a.fraction
        );
    }
    Ok(())
}
