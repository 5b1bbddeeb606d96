//! Palettes and overlays against imgviz 2.1.0 (`label_colormap`), mmseg's VOC palette and
//! mmseg 1.2.2's `SegLocalVisualizer._draw_sem_seg(with_labels=False)` on a crop of the VOC
//! photo with its class map (including 255 = void pixels): byte-equal.

mod common;

use common::{json, num, png_l8, png_rgb8, string, uint, TestResult};
use segkit_data::palette::{colorize, overlay_labels, voc_palette};

#[test]
fn voc_palette_matches_imgviz_and_mmseg() -> TestResult {
    let p = json("palette.json")?;
    let ours = voc_palette(256);
    let to_rgb = |v: &serde_json::Value| -> Result<[u8; 3], Box<dyn std::error::Error>> {
        Ok([uint(&v[0])? as u8, uint(&v[1])? as u8, uint(&v[2])? as u8])
    };
    for (i, c) in p["imgviz_label_colormap"]
        .as_array()
        .ok_or("cmap")?
        .iter()
        .enumerate()
    {
        assert_eq!(ours[i], to_rgb(c)?, "class {i}");
    }
    for (i, c) in p["mmseg_voc_palette"]
        .as_array()
        .ok_or("palette")?
        .iter()
        .enumerate()
    {
        assert_eq!(ours[i], to_rgb(c)?, "class {i}");
    }
    Ok(())
}

#[test]
fn overlay_matches_mmseg_visualizer() -> TestResult {
    let p = json("palette.json")?;
    let (h, w, img) = png_rgb8(string(&p["image"])?)?;
    let (lh, lw, labels) = png_l8(string(&p["labels"])?)?;
    assert_eq!((h, w), (lh, lw));
    assert!(labels.contains(&255));
    let palette = voc_palette(uint(&p["num_classes"])? as usize);
    let color = colorize(&labels, &palette);
    assert_eq!(color.len(), img.len());
    for o in p["overlays"].as_array().ok_or("overlays")? {
        let (_, _, expected) = png_rgb8(string(&o["png"])?)?;
        let got = overlay_labels(&img, &labels, &palette, num(&o["alpha"]))?;
        let diff = got.iter().zip(&expected).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "alpha {}: {diff} bytes differ", o["alpha"]);
    }
    Ok(())
}
