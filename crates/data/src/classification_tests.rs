//! Tests of [`super::classification`].

use std::io::Write;
use std::path::Path;

use super::classification::*;
use crate::SegDataset;

fn idx_bytes(ndims: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, ndims];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(data);
    b
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn names(k: usize) -> Vec<String> {
    (0..k).map(|i| format!("c{i}")).collect()
}

#[test]
fn image_folder_reads_sorted_classes_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let split = dir.path().join("train");
    for (class, files) in [
        ("b_shirt", vec!["x/2.png", "1.jpg"]),
        ("a_boot", vec!["z.PNG"]),
    ] {
        for f in files {
            let p = split.join(class).join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let fmt = if f.ends_with("jpg") {
                image::ImageFormat::Jpeg
            } else {
                image::ImageFormat::Png
            };
            image::RgbImage::from_pixel(5, 4, image::Rgb([10, 20, 30]))
                .save_with_format(&p, fmt)
                .unwrap();
        }
    }
    std::fs::write(split.join("b_shirt/notes.txt"), "not an image").unwrap();
    let cfg = ImageFolderConfig {
        root: dir.path().into(),
        train_split: "train".into(),
        val_split: "val".into(),
    };
    let ds = cfg.open("train").unwrap();
    assert_eq!(ds.info().classes, ["a_boot", "b_shirt"]);
    assert_eq!(ds.info().ignore_index, u16::MAX);
    assert_eq!(ds.len(), 3);
    let classes: Vec<u16> = (0..3).map(|i| ds.class(i).unwrap()).collect();
    assert_eq!(classes, [0, 1, 1]);
    let s = ds.get(1).unwrap();
    assert!(s.path.ends_with("b_shirt/1.jpg"), "{}", s.path.display());
    assert_eq!((s.width, s.height), (5, 4));
    assert_eq!(s.semantic.unwrap(), vec![1u16; 20]);
    let e = cfg.open("val").unwrap_err();
    assert!(e.to_string().contains("val"), "{e}");
}

#[test]
fn idx_files_plain_and_gzipped() {
    let dir = tempfile::tempdir().unwrap();
    let px: Vec<u8> = (0..3 * 2 * 2).map(|v| v as u8 * 10).collect();
    std::fs::write(
        dir.path().join("train-images-idx3-ubyte.gz"),
        gz(&idx_bytes(3, &[3, 2, 2], &px)),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("train-labels-idx1-ubyte"),
        idx_bytes(1, &[3], &[2, 0, 1]),
    )
    .unwrap();
    let mut cfg = IdxConfig {
        dir: "d".into(),
        train_split: "train".into(),
        val_split: "t10k".into(),
        limit: None,
    };
    cfg.resolve_paths(dir.path());
    assert_eq!(cfg.dir, dir.path().join("d"));
    cfg.dir = dir.path().into();
    let ds = cfg.open("train", &names(3)).unwrap();
    assert_eq!(ds.len(), 3);
    let s = ds.get(2).unwrap();
    assert_eq!((s.width, s.height), (2, 2));
    assert_eq!(&s.image[..6], &[80, 80, 80, 90, 90, 90]);
    assert_eq!(s.semantic.unwrap(), vec![1u16; 4]);
    assert!(ds.get(3).is_err());
    cfg.limit = Some(2);
    assert_eq!(cfg.open("train", &names(3)).unwrap().len(), 2);
    // A label the model has no class for, and a missing split.
    let e = cfg.open("train", &names(2)).unwrap_err();
    assert!(
        e.to_string().contains("train-labels-idx1-ubyte") && e.to_string().contains("label 2"),
        "{e}"
    );
    let e = cfg.open("t10k", &names(3)).unwrap_err();
    assert!(e.to_string().contains("t10k-images-idx3-ubyte"), "{e}");
}

fn write(p: &Path, b: &[u8]) {
    std::fs::write(p, b).unwrap();
}

#[test]
fn malformed_idx_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (ip, lp) = (dir.path().join("i"), dir.path().join("l"));
    write(&lp, &idx_bytes(1, &[2], &[0, 1]));
    for (bytes, want) in [
        (idx_bytes(1, &[4], &[0; 4]), "3 dimension"),
        (idx_bytes(3, &[2, 2, 2], &[0; 7]), "do not match"),
        (vec![0x1f, 0x8b, 1, 2, 3], "corrupt gzip"),
        (idx_bytes(3, &[3, 1, 1], &[0; 3]), "2 labels for 3 images"),
        (vec![0, 0, 8], "IDX"),
    ] {
        write(&ip, &bytes);
        let e = ClassificationDataset::idx(&ip, &lp, &names(2)).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains(want) && (s.contains("/i") || s.contains("/l")),
            "{want}: {s}"
        );
    }
    let e = ClassificationDataset::idx(&ip, &lp, &names(65536)).unwrap_err();
    assert!(e.to_string().contains("1..=65535"), "{e}");
}

#[test]
fn class_of_padded_label_maps() {
    let maps = [3, 3, 255, 255, 255, 0, 0, 0];
    assert_eq!(classes_of_label_maps(&maps, 2, 255).unwrap(), [3, 0]);
    assert!(classes_of_label_maps(&[255, 255, 1, 1], 2, 255).is_err());
    assert!(classes_of_label_maps(&[1, 1, 1], 2, 255).is_err());
    assert!(classes_of_label_maps(&[], 2, 255).is_err());
}
