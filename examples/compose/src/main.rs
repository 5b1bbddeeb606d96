//! Runs the walkthrough of README.md: both models composed, initialised as the reference,
//! trained a few steps on the demo canvas, saved, reloaded and used through `Segmenter`.
//! `--reduced` runs the narrow variants the test uses.

use segkit_example_compose::compose::{r50_d8_jpu_danet, swin_t_danet, Size};
use segkit_example_compose::train::{segment_with_segmenter, train_save_reload};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--write-configs") {
        // Regenerates configs/*.json from the typed configs (full size).
        let dir = std::path::PathBuf::from(args.get(i + 1).map_or("configs", |s| s.as_str()));
        for cfg in [
            r50_d8_jpu_danet(11, Size::Full),
            swin_t_danet(11, Size::Full),
        ] {
            let json = segkit::ModelConfig::EncoderDecoder(Box::new(cfg.clone())).to_json_pretty();
            std::fs::write(dir.join(format!("{}.json", cfg.name)), json + "\n")?;
        }
        return Ok(());
    }
    let size = if std::env::args().any(|a| a == "--reduced") {
        Size::Reduced
    } else {
        Size::Full
    };
    let out = std::env::temp_dir().join(format!("segkit-compose-{}", std::process::id()));
    for cfg in [r50_d8_jpu_danet(11, size), swin_t_danet(11, size)] {
        let t = std::time::Instant::now();
        let dir = out.join(&cfg.name);
        let r = train_save_reload(&cfg, 5, &dir)?;
        let agree = segment_with_segmenter(&dir)?;
        println!(
            "{}: losses {:?}, reload max diff {}, initial logit std {:.3}, pixel agreement \
             {:.1}% ({:.1} s)",
            cfg.name,
            r.losses,
            r.reload_max_diff,
            r.initial_logit_std,
            100.0 * agree,
            t.elapsed().as_secs_f32()
        );
    }
    println!("saved under {}", out.display());
    Ok(())
}
