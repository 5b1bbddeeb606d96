//! The custom / demo layout (`CustomDataset`, `CustomConfig`): instances, `write_sample`, list
//! files, suffixes and errors.

use segkit_data::{CustomConfig, CustomDataset, Error, SegDataset};

use crate::{
    assert_bad_file, labels, tmp, wide, write_grey, write_rgb, write_u16, TestResult, H, W,
};

#[test]
fn custom_demo_layout_with_instances() -> TestResult {
    let dir = tmp()?;
    let root = dir.path();
    let classes: Vec<String> = ["background", "cell", "nucleus"].map(String::from).to_vec();
    let sem = labels(|x, y| match (x, y) {
        (0, _) => 255,
        (1..=3, _) => 1,
        (4..=5, _) => 2,
        _ => 0,
    });
    let ids: Vec<u16> = (0..(W * H) as usize)
        .map(|i| match (i % 8, i / 8) {
            (0, _) => 9, // ignored pixels belong to no instance
            (1, _) | (2, 0..=2) => 1,
            (2, _) | (3, _) => 300,
            (4..=5, _) => 1, // the same id on another class: another instance
            _ => 0,
        })
        .collect();
    let img = write_rgb(&root.join("images/train/sub/x.png"), 5)?;
    write_grey(&root.join("annotations/train/sub/x.png"), &sem, W, H)?;
    write_u16(&root.join("instances/train/sub/x.png"), &ids)?;
    write_rgb(&root.join("images/train/a.png"), 6)?;
    write_grey(&root.join("annotations/train/a.png"), &sem, W, H)?;
    let ids8: Vec<u8> = labels(|x, _| u8::from(x == 6) * 3);
    write_grey(&root.join("instances/train/a.png"), &ids8, W, H)?;

    let ds = CustomDataset::new(root, "train", classes.clone(), vec![])?;
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.info().palette.len(), 3);
    let a = ds.get(0)?;
    assert!(a.path.ends_with("a.png"));
    let ia = a.instances.ok_or("instances")?;
    assert_eq!(ia.len(), 1);
    assert_eq!(ia[0].class_id, 0);
    let x = ds.get(1)?;
    assert_eq!(x.image, img);
    assert_eq!(x.semantic, Some(wide(&sem)));
    let inst = x.instances.ok_or("instances")?;
    // Sorted by (id, class): (1, cell), (1, nucleus), (300, cell).
    let got: Vec<u32> = inst.iter().map(|a| a.class_id).collect();
    assert_eq!(got, [1, 2, 1]);
    let count = |k: usize| inst[k].mask.iter().filter(|&&m| m).count();
    assert_eq!((count(0), count(1), count(2)), (6 + 3, 12, 3 + 6));
    assert!(
        !inst.iter().any(|a| a.mask[0]),
        "ignored pixel in no instance"
    );

    // write_sample round-trips a sample (non-overlapping masks that agree with the labels).
    let out = dir.path().join("written");
    let mut sample = ds.get(1)?;
    sample.instances = Some(inst.clone());
    CustomDataset::write_sample(&out, "val", "deep/one", &sample)?;
    let back = CustomDataset::new(&out, "val", classes.clone(), vec![])?;
    let got = back.get(0)?;
    assert!(got.path.ends_with("images/val/deep/one.png"));
    assert_eq!(
        (got.image, got.semantic),
        (sample.image.clone(), sample.semantic.clone())
    );
    assert_eq!(got.instances, Some(inst.clone()));
    let mut no_sem = sample.clone();
    no_sem.semantic = None;
    assert!(CustomDataset::write_sample(&out, "val", "x", &no_sem).is_err());

    // Without instances/ there are none.
    std::fs::remove_dir_all(root.join("instances"))?;
    let ds = CustomDataset::new(root, "train", classes.clone(), vec![])?;
    assert!(ds.get(0)?.instances.is_none());
    Ok(())
}

#[test]
fn custom_config_list_suffixes_and_errors() -> TestResult {
    let dir = tmp()?;
    let root = dir.path();
    write_rgb(&root.join("img/p1_rgb.jpg"), 1)?;
    write_rgb(&root.join("img/p2_rgb.jpg"), 2)?;
    write_grey(&root.join("ann/p1_mask.png"), &labels(|x, _| x as u8), W, H)?;
    write_grey(&root.join("ann/p2_mask.png"), &labels(|_, y| y as u8), W, H)?;
    std::fs::write(root.join("list.txt"), "p2\n")?;
    let mut cfg = CustomConfig {
        img_dir: "img".into(),
        ann_dir: Some("ann".into()),
        instance_dir: None,
        list_file: None,
        img_suffix: "_rgb.jpg".into(),
        seg_map_suffix: "_mask.png".into(),
        instance_suffix: ".png".into(),
        reduce_zero_label: true,
        ignore_index: 255,
        classes: (0..8).map(|i| format!("c{i}")).collect(),
        palette: vec![],
        thing_classes: vec![],
    };
    let ds = CustomDataset::with_config(root, &cfg)?;
    assert_eq!(ds.len(), 2);
    let s = ds.get(0)?;
    assert_eq!(&s.semantic.ok_or("semantic")?[..3], &[255, 0, 1]);
    cfg.list_file = Some("list.txt".into());
    let ds = CustomDataset::with_config(root, &cfg)?;
    assert_eq!(ds.len(), 1);
    assert!(ds.get(0)?.path.ends_with("p2_rgb.jpg"));
    // JSON form of the config.
    let json = serde_json::to_string(&cfg)?;
    let back: CustomConfig = serde_json::from_str(&json)?;
    assert_eq!(back, cfg);

    // Errors.
    let mut bad = cfg.clone();
    bad.classes.clear();
    assert!(matches!(
        CustomDataset::with_config(root, &bad),
        Err(Error::InvalidArgument(_))
    ));
    let mut bad = cfg.clone();
    bad.palette = vec![[0, 0, 0]];
    assert!(matches!(
        CustomDataset::with_config(root, &bad),
        Err(Error::InvalidArgument(_))
    ));
    let mut bad = cfg.clone();
    bad.list_file = Some("nolist.txt".into());
    assert_bad_file(CustomDataset::with_config(root, &bad), "nolist.txt");
    let mut bad = cfg.clone();
    bad.list_file = None;
    bad.img_suffix = ".tiff".into();
    assert_bad_file(CustomDataset::with_config(root, &bad), "img");
    let mut bad = cfg.clone();
    bad.instance_dir = Some("inst".into());
    assert!(matches!(
        CustomDataset::with_config(root, &bad),
        Err(Error::BadFile { .. })
    ));
    bad.ann_dir = None;
    assert!(matches!(
        CustomDataset::with_config(root, &bad),
        Err(Error::InvalidArgument(_))
    ));
    // Labels beyond the classes (without reduce_zero_label: 7 < 8 is fine, write a 9).
    write_grey(
        &root.join("ann/p2_mask.png"),
        &labels(|_, y| 9 + y as u8),
        W,
        H,
    )?;
    let e = ds.get(0).err().ok_or("label 9 accepted")?.to_string();
    assert!(e.contains("p2_mask.png") && e.contains("label 8"), "{e}");
    // Instance ids in an RGB PNG; an instance map of the wrong size.
    let inst_root = dir.path().join("demo");
    write_rgb(&inst_root.join("images/val/q.png"), 1)?;
    write_grey(&inst_root.join("annotations/val/q.png"), &[0; 48], W, H)?;
    write_rgb(&inst_root.join("instances/val/q.png"), 1)?;
    let ds = CustomDataset::new(&inst_root, "val", vec!["a".into()], vec![])?;
    let e = ds.get(0).err().ok_or("RGB ids accepted")?.to_string();
    assert!(e.contains("instances") && e.contains("grayscale"), "{e}");
    write_grey(&inst_root.join("instances/val/q.png"), &[0; 4], 2, 2)?;
    assert_bad_file(ds.get(0), "instances/val/q.png");
    // A file that is not an image at all.
    std::fs::write(inst_root.join("images/val/q.png"), b"not a png")?;
    assert_bad_file(ds.get(0), "images/val/q.png");
    Ok(())
}

#[test]
fn sixteen_bit_class_maps_round_trip() -> TestResult {
    // ImageNet-sized labels (PaddleSeg's PSSL: classes 0..=999, background 1000, ignore 1001).
    let dir = tmp()?;
    let classes: Vec<String> = (0..1001).map(|i| format!("c{i}")).collect();
    let n = (W * H) as usize;
    let semantic: Vec<u16> = (0..n)
        .map(|i| match i % 5 {
            0 => 1001,
            1 => 1000,
            k => (i * 37 % 1000) as u16 + k as u16,
        })
        .collect();
    let sample = segkit_data::Sample {
        path: "wide.png".into(),
        width: W as usize,
        height: H as usize,
        image: (0..n * 3).map(|v| (v % 251) as u8).collect(),
        semantic: Some(semantic.clone()),
        instances: None,
    };
    CustomDataset::write_sample(dir.path(), "train", "wide", &sample)?;
    let ann = dir.path().join("annotations/train/wide.png");
    assert!(matches!(
        image::open(&ann)?,
        image::DynamicImage::ImageLuma16(_)
    ));
    assert_eq!(segkit_data::io::read_label_map(&ann)?.data, semantic);
    let mut cfg = CustomConfig::demo("train", classes, vec![[0, 0, 0]; 1001], false);
    cfg.ignore_index = 1001;
    let ds = CustomDataset::with_config(dir.path(), &cfg)?;
    assert_eq!(ds.get(0)?.semantic, Some(semantic));

    // A label map whose values fit in a byte is still written as an 8-bit PNG.
    let mut narrow = sample.clone();
    narrow.semantic = Some(vec![3; n]);
    CustomDataset::write_sample(dir.path(), "train", "narrow", &narrow)?;
    let ann = dir.path().join("annotations/train/narrow.png");
    assert!(matches!(
        image::open(&ann)?,
        image::DynamicImage::ImageLuma8(_)
    ));

    // A label past the classes is still an error naming the file.
    let mut bad = sample;
    bad.semantic = Some(vec![1002; n]);
    CustomDataset::write_sample(dir.path(), "train", "wide", &bad)?;
    assert_bad_file(ds.get(0), "wide.png");
    Ok(())
}
