//! Cityscapes (`CityscapesDataset`): `labelTrainIds` maps in path order, and errors.

use std::path::{Path, PathBuf};

use segkit_data::{CityscapesDataset, SegDataset};

use crate::{assert_bad_file, labels, tmp, wide, write_grey, write_rgb, TestResult, H, W};

#[test]
fn cityscapes_reads_train_ids_in_path_order() -> TestResult {
    let dir = tmp()?;
    let root = dir.path();
    let mut expected = Vec::new();
    for (k, city, frame) in [
        (1u8, "bochum", "bochum_000000_000313"),
        (2, "aachen", "aachen_000000_000019"),
    ] {
        let img = write_rgb(
            &root.join(format!("leftImg8bit/train/{city}/{frame}_leftImg8bit.png")),
            k,
        )?;
        let l = labels(|x, y| if x == 7 { 255 } else { ((x + y) % 19) as u8 });
        write_grey(
            &root.join(format!(
                "gtFine/train/{city}/{frame}_gtFine_labelTrainIds.png"
            )),
            &l,
            W,
            H,
        )?;
        // Other gtFine files are ignored.
        write_grey(
            &root.join(format!("gtFine/train/{city}/{frame}_gtFine_labelIds.png")),
            &[200; 48],
            W,
            H,
        )?;
        expected.push((frame, img, l));
    }
    expected.reverse(); // aachen sorts first
    let ds = CityscapesDataset::new(root, "train")?;
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.info().classes[13], "car");
    assert_eq!(ds.info().palette[0], [128, 64, 128]);
    for (i, (frame, img, l)) in expected.iter().enumerate() {
        let s = ds.get(i)?;
        assert!(s.path.to_string_lossy().contains(frame));
        assert_eq!(&s.image, img, "PNG pixels are exact");
        assert_eq!(s.semantic, Some(wide(l)));
    }
    let paths: Vec<PathBuf> = ds.image_paths().map(Path::to_path_buf).collect();
    assert_eq!(paths.len(), 2);

    // Errors: missing split folder, RGB annotation, annotation missing.
    assert_bad_file(CityscapesDataset::new(root, "val"), "leftImg8bit/val");
    let ann = root.join("gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png");
    write_rgb(&ann, 0)?;
    let e = ds.get(0).err().ok_or("RGB label accepted")?.to_string();
    assert!(
        e.contains("aachen_000000_000019_gtFine_labelTrainIds.png") && e.contains("grayscale"),
        "{e}"
    );
    std::fs::remove_file(&ann)?;
    assert_bad_file(
        CityscapesDataset::new(root, "train"),
        "aachen_000000_000019_gtFine_labelTrainIds.png",
    );
    Ok(())
}
