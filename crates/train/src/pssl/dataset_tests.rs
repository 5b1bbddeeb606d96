//! Tests of [`super::dataset`]: both label formats, the threshold, and the typed errors.

use std::io::Write;
use std::path::Path;

use segkit_data::SegDataset;

use super::dataset::*;
use super::labels::{PsslLabel, IGNORE_DECILE};

fn classes(k: usize) -> (Vec<String>, Vec<[u8; 3]>) {
    let mut c: Vec<String> = (0..k).map(|i| format!("c{i}")).collect();
    c.push("background".into());
    let p = (0..=k).map(|i| [i as u8, 0, 0]).collect();
    (c, p)
}

/// Three 4x3 images (classes 0, 2, 1) with labels whose deciles are `(x + y + i) % 10`, one
/// pixel 255. Returns the config.
fn segkit_set(dir: &Path) -> PsslDatasetConfig {
    let (images, labels) = (dir.join("images"), dir.join("labels"));
    std::fs::create_dir_all(images.join("sub")).unwrap();
    std::fs::create_dir_all(labels.join("sub")).unwrap();
    let mut list = String::new();
    for (i, class) in [0u32, 2, 1].into_iter().enumerate() {
        let name = format!("sub/im{i}.jpg");
        image::RgbImage::from_fn(4, 3, |x, y| {
            image::Rgb([x as u8 * 50, y as u8 * 80, i as u8])
        })
        .save_with_format(images.join(&name), image::ImageFormat::Png)
        .unwrap();
        let mut deciles: Vec<u8> = (0..12).map(|p| ((p % 4 + p / 4 + i) % 10) as u8).collect();
        deciles[5] = IGNORE_DECILE;
        let label = PsslLabel {
            width: 4,
            height: 3,
            deciles,
            class,
        };
        label.write(&labels.join(format!("sub/im{i}.png"))).unwrap();
        list.push_str(&format!("{name} {class}\n"));
    }
    std::fs::write(dir.join("list.txt"), list).unwrap();
    PsslDatasetConfig {
        images,
        labels,
        list: dir.join("list.txt"),
        val_list: None,
        min_decile: 9,
        background: Background::Last,
        background_weight: Some(0.1),
    }
}

#[test]
fn segkit_labels_threshold_at_load_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = segkit_set(dir.path());
    let (c, p) = classes(3);
    let ds = PsslDataset::segkit(&cfg, false, &c, &p).unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.background(), 3);
    assert_eq!(ds.info().ignore_index, 255);
    for (min, i) in [(9u8, 0usize), (9, 1), (7, 2)] {
        cfg.min_decile = min;
        let ds = PsslDataset::segkit(&cfg, false, &c, &p).unwrap();
        let s = ds.get(i).unwrap();
        assert_eq!((s.width, s.height), (4, 3));
        assert_eq!(&s.image[..3], &[0, 0, i as u8]);
        let class = [0u16, 2, 1][i];
        let want: Vec<u16> = (0..12)
            .map(|p| match p {
                5 => 255,
                _ if (p % 4 + p / 4 + i) % 10 >= min as usize => class,
                _ => 3,
            })
            .collect();
        assert_eq!(s.semantic.unwrap(), want, "min_decile {min}, image {i}");
    }
}

#[test]
fn background_first_shifts_the_classes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PsslDatasetConfig {
        background: Background::First,
        ..segkit_set(dir.path())
    };
    let (c, p) = classes(3);
    let ds = PsslDataset::segkit(&cfg, false, &c, &p).unwrap();
    assert_eq!(ds.background(), 0);
    let s = ds.get(1).unwrap().semantic.unwrap();
    // Image 1 is class 2 -> model class 3; deciles (x + y + 1) % 10 >= 9 at p = 8 and 11.
    let want: Vec<u16> = (0..12)
        .map(|p| match p {
            5 => 255,
            _ if (p % 4 + p / 4 + 1) % 10 >= 9 => 3,
            _ => 0,
        })
        .collect();
    assert_eq!(s, want);
    let pd = PaddleSegPsslConfig {
        background: Background::First,
        ..paddle_set(dir.path())
    };
    let ds = PsslDataset::paddleseg(&pd, false, &c, &p).unwrap();
    assert_eq!(ds.get(1).unwrap().semantic.unwrap(), [2, 0, 0, 0, 0, 2]);
    let mut m = crate::resolve_preset("segkit_demo_r18w16_psp_fashion-128x128").unwrap();
    set_pssl_losses(&mut m, Background::First, 0.1);
    let (_, _, lists) = m.head_losses().remove(0);
    let segkit_losses::LossConfig::CrossEntropy(ce) = &lists[0].losses[0];
    let w = ce.class_weight.as_ref().unwrap();
    assert_eq!((w[0], w[1], w[10]), (0.1, 1.0, 1.0));
}

#[test]
fn segkit_labels_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = segkit_set(dir.path());
    let (c, p) = classes(3);
    // A class the model does not have.
    let (c2, p2) = classes(2);
    let e = PsslDataset::segkit(&cfg, false, &c2, &p2).unwrap_err();
    assert!(
        e.to_string().contains("list.txt") && e.to_string().contains("class 2"),
        "{e}"
    );
    // min_decile 0 would label everything.
    let bad = PsslDatasetConfig {
        min_decile: 0,
        ..cfg.clone()
    };
    let e = PsslDataset::segkit(&bad, false, &c, &p).unwrap_err();
    assert!(e.to_string().contains("min_decile"), "{e}");
    // A label whose class disagrees with the list.
    let l1 = cfg.labels.join("sub/im1.png");
    let mut label = PsslLabel::read(&l1).unwrap();
    label.class = 0;
    label.write(&l1).unwrap();
    let ds = PsslDataset::segkit(&cfg, false, &c, &p).unwrap();
    let e = ds.get(1).unwrap_err();
    assert!(
        e.to_string().contains("im1.png") && e.to_string().contains("class 0"),
        "{e}"
    );
    // A label of another size.
    PsslLabel {
        width: 2,
        height: 2,
        deciles: vec![9; 4],
        class: 2,
    }
    .write(&l1)
    .unwrap();
    let e = ds.get(1).unwrap_err();
    assert!(e.to_string().contains("2 x 2"), "{e}");
    // A corrupt label.
    std::fs::write(&l1, b"not a png").unwrap();
    let e = ds.get(1).unwrap_err();
    assert!(e.to_string().contains("im1.png"), "{e}");
    // A missing label.
    std::fs::remove_file(&l1).unwrap();
    let e = PsslDataset::segkit(&cfg, false, &c, &p).unwrap_err();
    assert!(
        e.to_string().contains("im1.png") && e.to_string().contains("pssl generate"),
        "{e}"
    );
    // Too many classes for 16-bit labels with a free ignore index.
    let (c, p) = classes(65534);
    let e = PsslDataset::segkit(&cfg, false, &c, &p).unwrap_err();
    assert!(e.to_string().contains("16-bit"), "{e}");
}

#[test]
fn val_list_selects_the_validation_images() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = segkit_set(dir.path());
    std::fs::write(dir.path().join("val.txt"), "sub/im2.jpg 1\n").unwrap();
    cfg.val_list = Some(dir.path().join("val.txt"));
    let (c, p) = classes(3);
    let val = PsslDataset::segkit(&cfg, true, &c, &p).unwrap();
    assert_eq!(val.len(), 1);
    assert_eq!(val.class(0), Some(1));
    assert_eq!(PsslDataset::segkit(&cfg, false, &c, &p).unwrap().len(), 3);
}

/// An `.npz` holding `arr_0` (`descr`, 2 x 3, the given element bytes).
fn write_npz(path: &Path, descr: &str, data: &[u8]) {
    write_npz_shaped(path, descr, (2, 3), data);
}

/// An `.npz` holding `arr_0` (`descr`, `shape` = (rows, columns), the given element bytes).
pub(super) fn write_npz_shaped(path: &Path, descr: &str, shape: (usize, usize), data: &[u8]) {
    let (r, c) = shape;
    let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({r}, {c}), }}");
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let pad = 64 - (10 + header.len() + 1) % 64;
    let h = format!("{header}{}\n", " ".repeat(pad % 64));
    npy.extend_from_slice(&(h.len() as u16).to_le_bytes());
    npy.extend_from_slice(h.as_bytes());
    npy.extend_from_slice(data);
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    z.start_file("arr_0.npy", zip::write::SimpleFileOptions::default())
        .unwrap();
    z.write_all(&npy).unwrap();
    z.finish().unwrap();
}

fn paddle_set(dir: &Path) -> PaddleSegPsslConfig {
    let (inet, pssl) = (dir.join("imagenet"), dir.join("pssl"));
    let mut lines = String::new();
    let items: [(&str, &str, Vec<u8>); 3] = [
        ("n002", "|u1", vec![0, 1, 2, 1, 1, 0]),
        ("n001", "|b1", vec![1, 0, 0, 0, 0, 1]),
        (
            "n002",
            "<f4",
            [0f32, 1.0, 0.5, 1.0, 2.0, 0.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
    ];
    for (i, (syn, descr, data)) in items.iter().enumerate() {
        for d in [inet.join("train").join(syn), pssl.join("train").join(syn)] {
            std::fs::create_dir_all(d).unwrap();
        }
        let stem = format!("train/{syn}/{syn}_{i}");
        image::RgbImage::from_pixel(3, 2, image::Rgb([10, 20, 30]))
            .save_with_format(inet.join(format!("{stem}.JPEG")), image::ImageFormat::Jpeg)
            .unwrap();
        write_npz(&pssl.join(format!("{stem}.JPEG_eiseg.npz")), descr, data);
        lines.push_str(&format!("{stem}.JPEG_eiseg.npz\n"));
    }
    std::fs::write(pssl.join("train.txt"), lines).unwrap();
    std::fs::write(
        pssl.join("imagenet_lsvrc_2015_synsets.txt"),
        "n000\nn001\nn002\n",
    )
    .unwrap();
    PaddleSegPsslConfig {
        imagenet_root: inet,
        pssl_root: pssl,
        list: "train.txt".into(),
        val_list: None,
        synsets: "imagenet_lsvrc_2015_synsets.txt".into(),
        background: Background::Last,
        background_weight: Some(0.1),
    }
}

#[test]
fn paddleseg_masks_label_exactly_one_as_the_class() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = paddle_set(dir.path());
    let (c, p) = classes(3);
    let ds = PsslDataset::paddleseg(&cfg, false, &c, &p).unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.background(), 3);
    // PaddleSeg: gt = 1000 (background) + class where the mask == 1.
    let want: [Vec<u16>; 3] = [
        vec![3, 2, 3, 2, 2, 3],
        vec![1, 3, 3, 3, 3, 1],
        vec![3, 2, 3, 2, 3, 3],
    ];
    for (i, w) in want.iter().enumerate() {
        let s = ds.get(i).unwrap();
        assert_eq!((s.width, s.height), (3, 2));
        assert_eq!(s.semantic.as_ref().unwrap(), w, "sample {i}");
    }
}

#[test]
fn paddleseg_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = paddle_set(dir.path());
    // The model must have the synsets + background.
    let (c, p) = classes(4);
    let e = PsslDataset::paddleseg(&cfg, false, &c, &p).unwrap_err();
    assert!(e.to_string().contains("synsets"), "{e}");
    let (c, p) = classes(3);
    let list = cfg.pssl_root.join("train.txt");
    std::fs::write(&list, "train/n009/n009_1.JPEG_eiseg.npz\n").unwrap();
    let e = PsslDataset::paddleseg(&cfg, false, &c, &p).unwrap_err();
    assert!(
        e.to_string().contains("train.txt") && e.to_string().contains("n009"),
        "{e}"
    );
    std::fs::write(&list, "train/n001/n001_1.png\n").unwrap();
    let e = PsslDataset::paddleseg(&cfg, false, &c, &p).unwrap_err();
    assert!(e.to_string().contains("line 1"), "{e}");
    // A mask without `arr_0`, and a missing image.
    std::fs::write(&list, "train/n001/n001_7.JPEG_eiseg.npz\n").unwrap();
    let npz = cfg.pssl_root.join("train/n001/n001_7.JPEG_eiseg.npz");
    let ds = PsslDataset::paddleseg(&cfg, false, &c, &p).unwrap();
    let e = ds.get(0).unwrap_err();
    assert!(e.to_string().contains("n001_7.JPEG"), "{e}");
    image::RgbImage::from_pixel(3, 2, image::Rgb([1, 2, 3]))
        .save_with_format(
            cfg.imagenet_root.join("train/n001/n001_7.JPEG"),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    let f = std::fs::File::create(&npz).unwrap();
    let mut z = zip::ZipWriter::new(f);
    z.start_file("other.npy", zip::write::SimpleFileOptions::default())
        .unwrap();
    z.finish().unwrap();
    let e = ds.get(0).unwrap_err();
    assert!(
        e.to_string().contains("eiseg.npz") && e.to_string().contains("arr_0"),
        "{e}"
    );
}

#[test]
fn pssl_losses_weight_background_and_average_non_ignored() {
    let mut cfg = crate::resolve_preset("segkit_demo_r18w16_psp_fashion-128x128").unwrap();
    let k = cfg.num_classes();
    set_pssl_losses(&mut cfg, Background::Last, 0.1);
    cfg.validate().unwrap();
    let mut want = vec![1.0f32; k];
    want[k - 1] = 0.1;
    let mut seen = 0;
    for (_, _, lists) in cfg.head_losses() {
        for o in lists {
            for l in o.losses {
                let segkit_losses::LossConfig::CrossEntropy(c) = l;
                assert_eq!(c.class_weight.as_deref(), Some(want.as_slice()));
                assert!(c.avg_non_ignore);
                seen += 1;
            }
        }
    }
    assert!(seen >= 1);
}

#[test]
fn imagenet_sized_sets_take_class_ids_past_255() {
    // PaddleSeg's release: 1000 synsets + background 1000, ignore 1001.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = paddle_set(dir.path());
    let synsets: Vec<String> = (0..1000).map(|i| format!("n{i:03}")).collect();
    std::fs::write(cfg.pssl_root.join(&cfg.synsets), synsets.join("\n")).unwrap();
    let (c, p) = classes(1000);
    let ds = PsslDataset::paddleseg(&cfg, false, &c, &p).unwrap();
    assert_eq!(ds.background(), 1000);
    assert_eq!(ds.info().ignore_index, 1001);
    assert_eq!(pssl_ignore_index(255), 255);
    assert_eq!(pssl_ignore_index(256), 256);
    assert_eq!(
        ds.get(1).unwrap().semantic.unwrap(),
        [1, 1000, 1000, 1000, 1000, 1]
    );
    // Background first: image class 999 is model class 1000.
    std::fs::write(
        cfg.pssl_root.join("train.txt"),
        "train/n999/n999_0.JPEG_eiseg.npz\n",
    )
    .unwrap();
    for d in [
        cfg.imagenet_root.join("train/n999"),
        cfg.pssl_root.join("train/n999"),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::copy(
        cfg.imagenet_root.join("train/n002/n002_0.JPEG"),
        cfg.imagenet_root.join("train/n999/n999_0.JPEG"),
    )
    .unwrap();
    std::fs::copy(
        cfg.pssl_root.join("train/n002/n002_0.JPEG_eiseg.npz"),
        cfg.pssl_root.join("train/n999/n999_0.JPEG_eiseg.npz"),
    )
    .unwrap();
    cfg.background = Background::First;
    let ds = PsslDataset::paddleseg(&cfg, false, &c, &p).unwrap();
    assert_eq!(
        ds.get(0).unwrap().semantic.unwrap(),
        [0, 1000, 0, 1000, 1000, 0]
    );

    // segkit's decile labels: the class travels in the text chunk, whatever its width.
    let seg = segkit_set(dir.path());
    std::fs::write(&seg.list, "sub/im0.jpg 900\n").unwrap();
    let l0 = seg.labels.join("sub/im0.png");
    let mut label = PsslLabel::read(&l0).unwrap();
    label.class = 900;
    label.write(&l0).unwrap();
    let ds = PsslDataset::segkit(&seg, false, &c, &p).unwrap();
    let s = ds.get(0).unwrap().semantic.unwrap();
    let want: Vec<u16> = (0..12)
        .map(|p| match p {
            5 => 1001,
            _ if (p % 4 + p / 4) % 10 >= 9 => 900,
            _ => 1000,
        })
        .collect();
    assert_eq!(s, want);
}
