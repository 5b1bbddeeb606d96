//! Dataset readers on tiny synthetic trees of each layout (written into a temporary folder by
//! the tests), and every error path: the message must name the offending file.

use std::path::{Path, PathBuf};

use segkit_data::{
    Ade20kDataset, CityscapesDataset, CocoInstanceDataset, CocoPanopticDataset, CustomConfig,
    CustomDataset, Error, Rle, SegDataset, VocDataset,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const W: u32 = 8;
const H: u32 = 6;

fn mkdirs(p: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(p.parent().unwrap_or(Path::new(".")))
}

/// An 8x6 RGB test image (PNG or JPEG by extension); pixel (x, y) = (30x + k, 40y, 7k).
fn write_rgb(p: &Path, k: u8) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    write_rgb_sized(p, k, W, H)
}

fn write_rgb_sized(p: &Path, k: u8, w: u32, h: u32) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    mkdirs(p)?;
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 30) as u8 + k, (y * 40) as u8, 7 * k])
    });
    img.save(p)?;
    Ok(img.into_raw())
}

fn write_grey(p: &Path, data: &[u8], w: u32, h: u32) -> TestResult {
    mkdirs(p)?;
    image::GrayImage::from_raw(w, h, data.to_vec())
        .ok_or("size")?
        .save(p)?;
    Ok(())
}

fn write_u16(p: &Path, data: &[u16]) -> TestResult {
    mkdirs(p)?;
    image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(W, H, data.to_vec())
        .ok_or("size")?
        .save(p)?;
    Ok(())
}

/// A palette PNG of indices (bit depth 8, or 4 with `four_bit`).
fn write_palette(p: &Path, idx: &[u8], four_bit: bool) -> TestResult {
    mkdirs(p)?;
    let f = std::io::BufWriter::new(std::fs::File::create(p)?);
    let mut enc = png::Encoder::new(f, W, H);
    enc.set_color(png::ColorType::Indexed);
    let n = if four_bit { 16 } else { 256 };
    let palette: Vec<u8> = segkit_data::palette::voc_palette(n)
        .into_iter()
        .flatten()
        .collect();
    enc.set_palette(palette);
    let data: Vec<u8> = if four_bit {
        enc.set_depth(png::BitDepth::Four);
        idx.chunks(W as usize)
            .flat_map(|row| {
                row.chunks(2)
                    .map(|c| (c[0] << 4) | c.get(1).copied().unwrap_or(0))
            })
            .collect()
    } else {
        enc.set_depth(png::BitDepth::Eight);
        idx.to_vec()
    };
    let mut wr = enc.write_header()?;
    wr.write_image_data(&data)?;
    Ok(())
}

fn labels(f: impl Fn(usize, usize) -> u8) -> Vec<u8> {
    (0..(W * H) as usize)
        .map(|i| f(i % W as usize, i / W as usize))
        .collect()
}

/// Asserts a `BadFile` error whose message names `name`.
fn assert_bad_file<T: std::fmt::Debug>(r: Result<T, Error>, name: &str) {
    match r {
        Err(e @ Error::BadFile { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(name), "message {msg:?} does not name {name:?}");
        }
        other => panic!("expected a BadFile error naming {name}, got {other:?}"),
    }
}

fn tmp() -> Result<tempfile::TempDir, std::io::Error> {
    tempfile::tempdir()
}

// ---------------------------------------------------------------- ADE20K

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

// ---------------------------------------------------------------- Cityscapes

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
        assert_eq!(s.semantic.as_ref(), Some(l));
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

// ---------------------------------------------------------------- VOC

#[test]
fn voc_reads_palette_indices_and_the_aug_set() -> TestResult {
    let dir = tmp()?;
    let root = dir.path().join("VOC2012");
    let l1 = labels(|x, y| match (x, y) {
        (0, _) | (_, 0) => 255,
        _ => ((x * y) % 21) as u8,
    });
    write_rgb(&root.join("JPEGImages/2007_000032.jpg"), 1)?;
    write_palette(&root.join("SegmentationClass/2007_000032.png"), &l1, false)?;
    write_rgb(&root.join("JPEGImages/2007_000039.jpg"), 2)?;
    let l2 = labels(|x, _| (x % 16) as u8);
    write_palette(&root.join("SegmentationClass/2007_000039.png"), &l2, true)?;
    write_rgb(&root.join("JPEGImages/2008_000002.jpg"), 3)?;
    let l3 = labels(|x, y| ((x + 2 * y) % 21) as u8);
    write_grey(
        &root.join("SegmentationClassAug/2008_000002.png"),
        &l3,
        W,
        H,
    )?;
    let sets = root.join("ImageSets/Segmentation");
    std::fs::create_dir_all(&sets)?;
    std::fs::write(sets.join("train.txt"), "2007_000039\n2007_000032\n\n")?;
    std::fs::write(sets.join("aug.txt"), "2008_000002\n")?;

    let train = VocDataset::new(&root, "train")?;
    assert_eq!(train.len(), 2);
    assert_eq!(train.info().classes[15], "person");
    assert_eq!(train.info().palette[15], [192, 128, 128]);
    let s = train.get(0)?;
    assert!(s.path.ends_with("2007_000039.jpg"), "list order");
    assert_eq!(s.semantic, Some(l2), "4-bit palette indices");
    assert_eq!(
        train.get(1)?.semantic,
        Some(l1.clone()),
        "palette indices, not colours"
    );

    let all = VocDataset::train_aug(&root)?;
    assert_eq!(all.len(), 3);
    assert_eq!(all.get(2)?.semantic, Some(l3));
    assert_eq!(all.get(1)?.semantic, Some(l1));
    assert!(all.get(3).is_err());

    // Errors: a listed image missing, a missing list, a missing mask.
    std::fs::write(sets.join("val.txt"), "2007_000032\n2009_999999\n")?;
    assert_bad_file(VocDataset::new(&root, "val"), "2009_999999.jpg");
    assert_bad_file(VocDataset::new(&root, "trainval"), "trainval.txt");
    assert_bad_file(
        VocDataset::aug(&root, "train"),
        "SegmentationClassAug/2007_000039.png",
    );
    Ok(())
}

// ---------------------------------------------------------------- COCO panoptic

fn id_rgb(id: u32) -> [u8; 3] {
    [(id & 255) as u8, ((id >> 8) & 255) as u8, (id >> 16) as u8]
}

fn write_rgb_raw(p: &Path, rgb: Vec<u8>, w: u32, h: u32) -> TestResult {
    mkdirs(p)?;
    image::RgbImage::from_raw(w, h, rgb)
        .ok_or("size")?
        .save(p)?;
    Ok(())
}

fn panoptic_tree(root: &Path) -> Result<Vec<u32>, Box<dyn std::error::Error>> {
    write_rgb(&root.join("val2017/000000000001.jpg"), 1)?;
    // ids: 5 (person), 769 (sky), 70000 (crowd person), 0 (void), 99 (unlisted).
    let ids: Vec<u32> = (0..(W * H) as usize)
        .map(|i| match (i % 8, i / 8) {
            (0, _) => 0,
            (1..=2, _) => 5,
            (3, 0..=2) => 70000,
            (3, _) => 99,
            _ => 769,
        })
        .collect();
    let rgb: Vec<u8> = ids.iter().flat_map(|&id| id_rgb(id)).collect();
    write_rgb_raw(
        &root.join("annotations/panoptic_val2017/000000000001.png"),
        rgb,
        W,
        H,
    )?;
    let json = serde_json::json!({
        "images": [{"id": 1, "file_name": "000000000001.jpg", "height": H, "width": W}],
        "annotations": [{"image_id": 1, "file_name": "000000000001.png", "segments_info": [
            {"id": 769, "category_id": 184, "iscrowd": 0, "area": 24},
            {"id": 5, "category_id": 1, "iscrowd": 0},
            {"id": 70000, "category_id": 1, "iscrowd": 1},
            {"id": 12345, "category_id": 1, "iscrowd": 0}
        ]}],
        "categories": [
            {"id": 1, "name": "person", "isthing": 1, "color": [220, 20, 60]},
            {"id": 184, "name": "sky-other-merged", "isthing": 0, "color": [70, 130, 180]}
        ]
    });
    std::fs::write(
        root.join("annotations/panoptic_val2017.json"),
        serde_json::to_string(&json)?,
    )?;
    Ok(ids)
}

#[test]
fn coco_panoptic_semantic_and_segments() -> TestResult {
    let dir = tmp()?;
    let root = dir.path();
    let ids = panoptic_tree(root)?;
    let ds = CocoPanopticDataset::new(root, "val")?;
    assert_eq!(ds.len(), 1);
    let info = ds.info();
    assert_eq!(info.classes, ["person", "sky-other-merged"]);
    assert_eq!(info.palette, [[220, 20, 60], [70, 130, 180]]);
    assert_eq!(info.thing_classes, [0]);
    assert_eq!(ds.category_ids(), [1, 184]);
    assert_eq!(ds.image_id(0), Some(1));
    let s = ds.get(0)?;
    let sem = s.semantic.ok_or("semantic")?;
    let want: Vec<u8> = ids
        .iter()
        .map(|&id| match id {
            5 | 70000 => 0,
            769 => 1,
            _ => 255,
        })
        .collect();
    assert_eq!(
        sem, want,
        "crowd keeps its class, void and unlisted ids are 255"
    );
    let inst = s.instances.ok_or("instances")?;
    // segments_info order, the segment absent from the PNG dropped.
    let got: Vec<(u32, bool)> = inst.iter().map(|a| (a.class_id, a.iscrowd)).collect();
    assert_eq!(got, [(1, false), (0, false), (0, true)]);
    for (a, id) in inst.iter().zip([769u32, 5, 70000]) {
        let m: Vec<bool> = ids.iter().map(|&v| v == id).collect();
        assert_eq!(a.mask, m);
    }
    Ok(())
}

#[test]
fn coco_panoptic_errors_name_the_file() -> TestResult {
    let dir = tmp()?;
    let root = dir.path();
    panoptic_tree(root)?;
    let json_path = root.join("annotations/panoptic_val2017.json");
    let good = std::fs::read_to_string(&json_path)?;
    // Bad JSON.
    std::fs::write(&json_path, &good[..good.len() / 2])?;
    let e = CocoPanopticDataset::new(root, "val")
        .err()
        .ok_or("bad JSON accepted")?
        .to_string();
    assert!(
        e.contains("panoptic_val2017.json") && e.contains("bad JSON"),
        "{e}"
    );
    // Unknown category; an image without annotation; a missing PNG.
    let mut v: serde_json::Value = serde_json::from_str(&good)?;
    v["annotations"][0]["segments_info"][0]["category_id"] = 7.into();
    std::fs::write(&json_path, v.to_string())?;
    let e = CocoPanopticDataset::new(root, "val")
        .err()
        .ok_or("unknown category")?
        .to_string();
    assert!(
        e.contains("panoptic_val2017.json") && e.contains("category_id 7"),
        "{e}"
    );
    let mut v: serde_json::Value = serde_json::from_str(&good)?;
    v["images"].as_array_mut().ok_or("images")?.push(
        serde_json::json!({"id": 2, "file_name": "000000000001.jpg", "height": H, "width": W}),
    );
    std::fs::write(&json_path, v.to_string())?;
    let e = CocoPanopticDataset::new(root, "val")
        .err()
        .ok_or("no annotation")?
        .to_string();
    assert!(
        e.contains("panoptic_val2017.json") && e.contains("no annotation"),
        "{e}"
    );
    let mut v: serde_json::Value = serde_json::from_str(&good)?;
    v["annotations"][0]["file_name"] = "missing.png".into();
    std::fs::write(&json_path, v.to_string())?;
    assert_bad_file(CocoPanopticDataset::new(root, "val"), "missing.png");
    // A PNG of the wrong size.
    std::fs::write(&json_path, &good)?;
    write_rgb_raw(
        &root.join("annotations/panoptic_val2017/000000000001.png"),
        vec![0; 4 * 3 * 3],
        4,
        3,
    )?;
    let ds = CocoPanopticDataset::new(root, "val")?;
    assert_bad_file(ds.get(0), "000000000001.png");
    // An image whose size is not the JSON's.
    write_rgb_sized(&root.join("val2017/000000000001.jpg"), 1, 5, 5)?;
    assert_bad_file(ds.get(0), "000000000001.jpg");
    // A missing root.
    assert_bad_file(CocoPanopticDataset::new(root.join("nope"), "val"), "nope");
    Ok(())
}

// ---------------------------------------------------------------- COCO instances

fn rect(x0: f64, y0: f64, x1: f64, y1: f64) -> Vec<f64> {
    vec![x0, y0, x1, y0, x1, y1, x0, y1]
}

fn instances_tree(root: &Path) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    write_rgb(&root.join("val2017/a.png"), 1)?;
    write_rgb(&root.join("val2017/b.png"), 2)?;
    let (h, w) = (H as usize, W as usize);
    // A 3x2 block at x 4..7, y 1..3 as an uncompressed RLE; a crowd on the right third
    // (compressed); a polygon over the left half; a later polygon over the top rows.
    let block: Vec<u8> = (0..h * w)
        .map(|i| u8::from((4..7).contains(&(i % w)) && (1..3).contains(&(i / w))))
        .collect();
    let block = Rle::from_mask(&block, h, w)?;
    let crowd: Vec<u8> = (0..h * w).map(|i| u8::from(i % w >= 5)).collect();
    let crowd = Rle::from_mask(&crowd, h, w)?;
    let json = serde_json::json!({
        "images": [
            {"id": 10, "file_name": "a.png", "height": H, "width": W},
            {"id": 11, "file_name": "b.png", "height": H, "width": W}
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "iscrowd": 0,
             "segmentation": [rect(-0.5, -0.5, 3.5, 5.5)]},
            {"id": 2, "image_id": 10, "category_id": 1, "iscrowd": 0,
             "segmentation": {"size": [h, w], "counts": block.counts()}},
            {"id": 3, "image_id": 10, "category_id": 1, "iscrowd": 1,
             "segmentation": {"size": [h, w], "counts": crowd.to_compressed()}},
            {"id": 4, "image_id": 10, "category_id": 1, "iscrowd": 0,
             "segmentation": [rect(-0.5, -0.5, 7.5, 0.5), [1.0, 1.0, 2.0, 2.0]]},
            {"id": 5, "image_id": 10, "category_id": 3, "iscrowd": 0,
             "segmentation": [[1.0, 1.0, 2.0, 2.0]]}
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    });
    std::fs::create_dir_all(root.join("annotations"))?;
    std::fs::write(
        root.join("annotations/instances_val2017.json"),
        serde_json::to_string(&json)?,
    )?;
    Ok(json)
}

#[test]
fn coco_instances_masks_and_painted_semantic() -> TestResult {
    let dir = tmp()?;
    let root = dir.path();
    instances_tree(root)?;
    let ds = CocoInstanceDataset::new(root, "val")?;
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.info().classes, ["person", "car"]);
    assert_eq!(ds.info().thing_classes, [0, 1]);
    assert_eq!(ds.category_ids(), [1, 3]);
    let s = ds.get(0)?;
    let inst = s.instances.ok_or("instances")?;
    // Annotation 5 (a 2-point polygon only) is skipped; 4 keeps its valid polygon.
    let got: Vec<(u32, bool)> = inst.iter().map(|a| (a.class_id, a.iscrowd)).collect();
    assert_eq!(got, [(1, false), (0, false), (0, true), (0, false)]);
    let (w, h) = (W as usize, H as usize);
    let at = |m: &Vec<bool>, x: usize, y: usize| m[y * w + x];
    let left = Rle::from_polygons(&[rect(-0.5, -0.5, 3.5, 5.5)], h, w)?.to_mask();
    assert_eq!(
        inst[0].mask,
        left.iter().map(|&v| v != 0).collect::<Vec<_>>()
    );
    assert!(at(&inst[1].mask, 4, 1) && at(&inst[1].mask, 6, 2) && !at(&inst[1].mask, 4, 3));
    assert!(at(&inst[2].mask, 5, 0) && !at(&inst[2].mask, 4, 0));
    assert_eq!(
        inst[3].mask.iter().filter(|&&m| m).count(),
        w,
        "top row only"
    );
    let sem = s.semantic.ok_or("semantic")?;
    let px = |x: usize, y: usize| sem[y * w + x];
    assert_eq!(px(0, 0), 0, "later instance over earlier");
    assert_eq!(px(0, 3), 1, "car polygon");
    assert_eq!(px(4, 1), 0, "person block");
    assert_eq!(px(5, 2), 0, "a non-crowd instance wins over the crowd");
    assert_eq!(px(6, 4), 255, "crowd alone is ignored");
    assert_eq!(px(4, 4), 255, "no instance");
    let empty = ds.get(1)?;
    assert_eq!(empty.instances.map(|v| v.len()), Some(0));
    assert!(empty.semantic.ok_or("semantic")?.iter().all(|&v| v == 255));
    Ok(())
}

#[test]
fn coco_instances_errors_name_the_file() -> TestResult {
    let dir = tmp()?;
    let root = dir.path();
    let good = instances_tree(root)?;
    let json_path = root.join("annotations/instances_val2017.json");
    let write = |v: &serde_json::Value| std::fs::write(&json_path, v.to_string());
    // RLE size other than the image's.
    let mut v = good.clone();
    v["annotations"][1]["segmentation"]["size"] = serde_json::json!([3, 3]);
    write(&v)?;
    let e = CocoInstanceDataset::new(root, "val")
        .err()
        .ok_or("RLE size")?
        .to_string();
    assert!(
        e.contains("instances_val2017.json") && e.contains("annotation 2"),
        "{e}"
    );
    // Uncompressed counts that do not sum to the size.
    let mut v = good.clone();
    v["annotations"][1]["segmentation"]["counts"] = serde_json::json!([1, 2]);
    write(&v)?;
    let e = CocoInstanceDataset::new(root, "val")
        .err()
        .ok_or("RLE sum")?
        .to_string();
    assert!(e.contains("annotation 2") && e.contains("sum"), "{e}");
    // Unknown image id; unknown category; a missing image file; not COCO at all.
    let mut v = good.clone();
    v["annotations"][0]["image_id"] = 99.into();
    write(&v)?;
    let e = CocoInstanceDataset::new(root, "val")
        .err()
        .ok_or("image id")?
        .to_string();
    assert!(
        e.contains("instances_val2017.json") && e.contains("image_id 99"),
        "{e}"
    );
    let mut v = good.clone();
    v["annotations"][0]["category_id"] = 2.into();
    write(&v)?;
    assert_bad_file(
        CocoInstanceDataset::new(root, "val"),
        "instances_val2017.json",
    );
    let mut v = good.clone();
    v["images"][1]["file_name"] = "c.png".into();
    write(&v)?;
    assert_bad_file(CocoInstanceDataset::new(root, "val"), "c.png");
    write(&serde_json::json!({"images": 3}))?;
    assert_bad_file(
        CocoInstanceDataset::new(root, "val"),
        "instances_val2017.json",
    );
    // A corrupt compressed RLE fails when decoded, naming the JSON and the annotation.
    let mut v = good.clone();
    v["annotations"][2]["segmentation"]["counts"] = "~~~".into();
    write(&v)?;
    let ds = CocoInstanceDataset::new(root, "val")?;
    let e = ds.get(0).err().ok_or("bad RLE")?.to_string();
    assert!(
        e.contains("instances_val2017.json") && e.contains("annotation 3"),
        "{e}"
    );
    // A non-finite polygon coordinate cannot be written as JSON; a huge one fails to decode.
    let mut v = good.clone();
    v["annotations"][0]["segmentation"] = serde_json::json!([[0.0, 0.0, 1e300, 0.0, 1.0, 1.0]]);
    write(&v)?;
    let ds = CocoInstanceDataset::new(root, "val")?;
    let e = ds.get(0).err().ok_or("bad polygon")?.to_string();
    assert!(e.contains("annotation 1"), "{e}");
    // Missing folders.
    std::fs::remove_file(&json_path)?;
    assert_bad_file(
        CocoInstanceDataset::new(root, "val"),
        "instances_val2017.json",
    );
    assert_bad_file(CocoInstanceDataset::new(root, "train"), "train2017");
    Ok(())
}

// ---------------------------------------------------------------- custom / demo layout

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
    assert_eq!(x.semantic.as_ref(), Some(&sem));
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
