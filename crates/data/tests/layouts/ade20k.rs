//! ADE20K (`Ade20kDataset`): `reduce_zero_label`, path order and every error path.

use std::path::Path;

use segkit_data::{Ade20kDataset, Error, SegDataset};

use crate::{assert_bad_file, labels, tmp, write_grey, write_rgb, TestResult, H, W};

fn ade_tree(root: &Path) -> TestResult {
    for (k, name) in [(1u8, "ADE_val_00000002"), (2, "ADE_val_00000001")] {
        write_rgb(&root.join(format!("images/validation/{name}.jpg")), k)?;
        let l = labels(|x, y| match (x, y) {
            (0, _) => 0,
            (1, _) => 1,
            (2, _) => 150,
            _ => (x + y) as u8 + k,
        });
        write_grey(
            &root.join(format!("annotations/validation/{name}.png")),
            &l,
            W,
            H,
        )?;
    }
    Ok(())
}

#[test]
fn ade20k_reads_and_reduces_zero_label() -> TestResult {
    let dir = tmp()?;
    let root = dir.path().join("ADEChallengeData2016");
    ade_tree(&root)?;
    let ds = Ade20kDataset::new(&root, "val")?;
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.info().classes.len(), 150);
    assert_eq!(ds.info().classes[0], "wall");
    let s = ds.get(0)?;
    assert!(
        s.path.ends_with("ADE_val_00000001.jpg"),
        "sorted by path: {:?}",
        s.path
    );
    assert_eq!((s.width, s.height, s.image.len()), (8, 6, 8 * 6 * 3));
    let sem = s.semantic.ok_or("semantic")?;
    assert_eq!(sem[0], 255, "0 -> ignore");
    assert_eq!(sem[1], 0, "1 -> 0");
    assert_eq!(sem[2], 149, "150 -> 149");
    assert_eq!(sem[3], 3 + 2 - 1);
    assert!(s.instances.is_none());
    assert!(ds.get(2).is_err());
    assert!(matches!(
        Ade20kDataset::new(&root, "test"),
        Err(Error::InvalidArgument(_))
    ));
    Ok(())
}

#[test]
fn ade20k_errors_name_the_file() -> TestResult {
    let dir = tmp()?;
    let root = dir.path().join("ADEChallengeData2016");
    assert_bad_file(
        Ade20kDataset::new(&root, "training"),
        "ADEChallengeData2016",
    );
    ade_tree(&root)?;
    assert_bad_file(Ade20kDataset::new(&root, "training"), "images/training");
    // An image without annotation.
    write_rgb(&root.join("images/validation/ADE_val_00000003.jpg"), 3)?;
    assert_bad_file(
        Ade20kDataset::new(&root, "validation"),
        "ADE_val_00000003.png",
    );
    // An annotation of the wrong size.
    write_grey(
        &root.join("annotations/validation/ADE_val_00000003.png"),
        &[1; 12],
        4,
        3,
    )?;
    let ds = Ade20kDataset::new(&root, "validation")?;
    assert_bad_file(ds.get(2), "ADE_val_00000003.png");
    // A label beyond the classes (151 -> 150).
    write_grey(
        &root.join("annotations/validation/ADE_val_00000003.png"),
        &labels(|x, _| if x == 5 { 151 } else { 1 }),
        W,
        H,
    )?;
    let e = ds.get(2).err().ok_or("label 151 accepted")?.to_string();
    assert!(
        e.contains("ADE_val_00000003.png") && e.contains("label 150"),
        "{e}"
    );
    // A corrupt JPEG.
    std::fs::write(
        root.join("images/validation/ADE_val_00000003.jpg"),
        b"\xff\xd8\xff garbage",
    )?;
    assert_bad_file(ds.get(2), "ADE_val_00000003.jpg");
    // A corrupt (truncated) annotation PNG.
    let ann = root.join("annotations/validation/ADE_val_00000001.png");
    let bytes = std::fs::read(&ann)?;
    std::fs::write(&ann, &bytes[..bytes.len() / 2])?;
    assert_bad_file(ds.get(0), "ADE_val_00000001.png");
    Ok(())
}
