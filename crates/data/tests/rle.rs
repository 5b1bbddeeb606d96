//! COCO RLE against pycocotools 2.0.11 (fixtures from tests/parity/gen_data.py): encoding of
//! real masks (the VOC photo's instances, StarDist's 125 nuclei), the compressed string,
//! area, toBbox, iou (with iscrowd), merge, and polygon / box rasterisation, all byte-equal.

mod common;

use common::{json, num, nums, png_l8, string, uint, TestResult};
use segkit_data::Rle;
use serde_json::Value;

fn instance_mask(ids: &[u8], id: u8) -> Vec<u8> {
    ids.iter().map(|&v| (v == id) as u8).collect()
}

fn bbox(v: &Value) -> Vec<f64> {
    nums(v)
}

#[test]
fn encode_real_masks_byte_equal() -> TestResult {
    let r = json("rle.json")?;
    let (h, w, ids) = png_l8("voc_gt_inst_a.png")?;
    assert_eq!((h, w), (375, 500));
    let gts = r["gt"].as_array().ok_or("gt")?;
    assert_eq!(gts.len(), 19);
    for (k, g) in gts.iter().enumerate() {
        let rle = Rle::from_mask(&instance_mask(&ids, k as u8 + 1), h, w)?;
        assert_eq!(rle.to_compressed(), string(&g["counts"])?, "instance {k}");
        assert_eq!(rle.area(), uint(&g["area"])?);
        assert_eq!(
            rle.to_bbox().to_vec(),
            bbox(&g["bbox"]),
            "bbox of instance {k}"
        );
        let back = Rle::from_compressed(string(&g["counts"])?, h, w)?;
        assert_eq!(back, rle);
        assert_eq!(back.to_mask(), instance_mask(&ids, k as u8 + 1));
    }
    // the 125 nuclei and the flipped VOC image
    for (file, png, ncheck) in [
        ("nuclei.json", "nuclei_gt_inst.png", 125),
        ("voc.json", "voc_gt_inst_b.png", 15),
    ] {
        let v = json(file)?;
        let (h, w, ids) = png_l8(png)?;
        let mut n = 0;
        for g in v["instance"]["gts"].as_array().ok_or("gts")? {
            let Some(counts) = g["segmentation"]["counts"].as_str() else {
                continue; // a polygon ground truth
            };
            if file == "voc.json" && uint(&g["image_id"])? != 2 {
                continue;
            }
            let id = uint(&g["inst_id"])? as u8;
            let rle = Rle::from_mask(&instance_mask(&ids, id), h, w)?;
            assert_eq!(rle.to_compressed(), counts, "{file} instance {id}");
            assert_eq!(rle.area() as f64, num(&g["area"]));
            n += 1;
        }
        assert_eq!(n, ncheck, "{file}");
    }
    Ok(())
}

#[test]
fn compressed_roundtrip_area_bbox() -> TestResult {
    let r = json("rle.json")?;
    let (h, w) = (uint(&r["height"])? as usize, uint(&r["width"])? as usize);
    let mut all: Vec<&Value> = r["dt"].as_array().ok_or("dt")?.iter().collect();
    all.extend(r["gt"].as_array().ok_or("gt")?);
    for d in all {
        let s = string(&d["counts"])?;
        let rle = Rle::from_compressed(s, h, w)?;
        assert_eq!(rle.to_compressed(), s);
        assert_eq!(rle.area(), uint(&d["area"])?);
        assert_eq!(rle.to_bbox().to_vec(), bbox(&d["bbox"]));
        let m = rle.to_mask();
        assert_eq!(m.iter().map(|&x| x as u64).sum::<u64>(), rle.area());
        assert_eq!(Rle::from_mask(&m, h, w)?, rle);
    }
    Ok(())
}

fn load(r: &Value, key: &str, h: usize, w: usize) -> Result<Vec<Rle>, Box<dyn std::error::Error>> {
    r[key]
        .as_array()
        .ok_or(key)?
        .iter()
        .map(|d| Ok(Rle::from_compressed(string(&d["counts"])?, h, w)?))
        .collect()
}

#[test]
fn iou_with_crowd() -> TestResult {
    let r = json("rle.json")?;
    let (h, w) = (uint(&r["height"])? as usize, uint(&r["width"])? as usize);
    let dts = load(&r, "dt", h, w)?;
    let gts = load(&r, "gt", h, w)?;
    let crowd: Vec<bool> = nums(&r["iscrowd"]).iter().map(|&c| c != 0.0).collect();
    assert!(crowd.iter().any(|&c| c));
    let ious = Rle::iou(&dts, &gts, &crowd)?;
    let exp = r["iou_dt_gt"].as_array().ok_or("iou")?;
    assert_eq!(ious.len(), exp.len());
    let mut nonzero = 0;
    for (d, (row, erow)) in ious.iter().zip(exp).enumerate() {
        for (g, (&o, e)) in row.iter().zip(nums(erow)).enumerate() {
            assert_eq!(o, e, "iou[{d}][{g}]");
            nonzero += (o > 0.0) as usize;
        }
    }
    assert!(nonzero > 20);
    Ok(())
}

#[test]
fn merge_union_intersection() -> TestResult {
    let r = json("rle.json")?;
    let (h, w) = (uint(&r["height"])? as usize, uint(&r["width"])? as usize);
    let dts = load(&r, "dt", h, w)?;
    let gts = load(&r, "gt", h, w)?;
    for m in r["merge_gt_dt"].as_array().ok_or("merge")? {
        let inter = uint(&m["intersect"])? == 1;
        let got = if m["all_gt"].as_bool() == Some(true) {
            Rle::merge(&gts, inter)?
        } else {
            let (a, b) = (uint(&m["a"])? as usize, uint(&m["b"])? as usize);
            Rle::merge(&[gts[a].clone(), dts[b].clone()], inter)?
        };
        assert_eq!(got.to_compressed(), string(&m["counts"])?, "{m}");
    }
    Ok(())
}

#[test]
fn polygons_and_boxes_byte_equal() -> TestResult {
    let r = json("rle.json")?;
    let (h, w) = (uint(&r["height"])? as usize, uint(&r["width"])? as usize);
    let polys = r["polygons"].as_array().ok_or("polygons")?;
    assert!(polys.len() > 60);
    for (i, p) in polys.iter().enumerate() {
        let xy = nums(&p["xy"]);
        let rle = Rle::from_polygon(&xy, h, w)?;
        assert_eq!(
            rle.to_compressed(),
            string(&p["counts"])?,
            "polygon {i}: {xy:?}"
        );
    }
    for p in r["multi_polygons"].as_array().ok_or("multi")? {
        let ps: Vec<Vec<f64>> = p["polys"]
            .as_array()
            .ok_or("polys")?
            .iter()
            .map(nums)
            .collect();
        assert_eq!(
            Rle::from_polygons(&ps, h, w)?.to_compressed(),
            string(&p["counts"])?
        );
    }
    for b in r["bboxes"].as_array().ok_or("bboxes")? {
        let bb = nums(&b["bbox"]);
        let rle = Rle::from_bbox([bb[0], bb[1], bb[2], bb[3]], h, w)?;
        assert_eq!(rle.to_compressed(), string(&b["counts"])?, "bbox {bb:?}");
    }
    Ok(())
}
