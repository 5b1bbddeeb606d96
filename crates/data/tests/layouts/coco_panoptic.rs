//! COCO panoptic (`CocoPanopticDataset`): segment-id PNGs to semantic maps and segments.

use std::path::Path;

use segkit_data::{CocoPanopticDataset, SegDataset};

use crate::{assert_bad_file, mkdirs, tmp, write_rgb, write_rgb_sized, TestResult, H, W};

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
    let want: Vec<u16> = ids
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
