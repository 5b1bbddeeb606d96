//! COCO instances (`CocoInstanceDataset`): polygon and RLE masks, the painted semantic map.

use std::path::Path;

use segkit_data::{CocoInstanceDataset, Rle, SegDataset};

use crate::{assert_bad_file, tmp, write_rgb, TestResult, H, W};

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
