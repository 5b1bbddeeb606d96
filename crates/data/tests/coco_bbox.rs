//! Box AP (`CocoEvaluator::bbox`) against pycocotools 2.0.11 `COCOeval(iouType='bbox')`
//! (fixture from tests/parity/gen_coco_bbox.py): float box detections (area `w * h`) and mask
//! detections evaluated with box IoUs (`toBbox` of the mask, the mask's area), with crowd
//! ground truths, tied scores and a category without detections.

mod common;

use common::{assert_close, json, num, string, uint, TestResult};
use segkit_data::metrics::{CocoEvaluator, Detection, GroundTruth};
use segkit_data::Rle;
use serde_json::Value;

const RTOL: f64 = 1e-6;

fn evaluator(v: &Value) -> Result<CocoEvaluator, Box<dyn std::error::Error>> {
    let cats: Vec<u64> = v["categories"]
        .as_array()
        .ok_or("categories")?
        .iter()
        .map(uint)
        .collect::<Result<_, _>>()?;
    let mut ev = CocoEvaluator::bbox(&cats);
    assert!(ev.is_bbox());
    for im in v["images"].as_array().ok_or("images")? {
        let (h, w) = (uint(&im["height"])? as usize, uint(&im["width"])? as usize);
        ev.add_image(uint(&im["id"])?, h, w)?;
    }
    Ok(ev)
}

fn size(v: &Value, image_id: u64) -> Result<(usize, usize), Box<dyn std::error::Error>> {
    let im = v["images"]
        .as_array()
        .ok_or("images")?
        .iter()
        .find(|im| im["id"].as_u64() == Some(image_id))
        .ok_or("image")?;
    Ok((uint(&im["height"])? as usize, uint(&im["width"])? as usize))
}

fn add_gts(v: &Value, ev: &mut CocoEvaluator) -> TestResult {
    for g in v["gts"].as_array().ok_or("gts")? {
        let image_id = uint(&g["image_id"])?;
        let (h, w) = size(v, image_id)?;
        let mask = Rle::from_compressed(string(&g["segmentation"]["counts"])?, h, w)?;
        // The fixture's bbox is pycocotools' toBbox of the mask: the box segkit uses.
        let b: Vec<f64> = g["bbox"]
            .as_array()
            .ok_or("bbox")?
            .iter()
            .map(num)
            .collect();
        assert_eq!(mask.to_bbox().to_vec(), b);
        ev.add_ground_truth(GroundTruth {
            image_id,
            category_id: uint(&g["category_id"])?,
            mask,
            iscrowd: uint(&g["iscrowd"])? == 1,
            area: Some(num(&g["area"])),
        })?;
    }
    Ok(())
}

fn check(ev: &CocoEvaluator, expected: &Value, label: &str) -> TestResult {
    let r = ev.evaluate()?;
    let reference: Vec<f64> = expected["stats"]
        .as_array()
        .ok_or("stats")?
        .iter()
        .map(num)
        .collect();
    assert!(
        reference.iter().filter(|&&s| s > 0.0).count() >= 6,
        "{reference:?}"
    );
    for (i, (&ours, &theirs)) in r.stats.iter().zip(&reference).enumerate() {
        println!("{label} stat {i}: ours {ours:.9} pycocotools {theirs:.9}");
        assert_close(&format!("{label} stat {i}"), ours, theirs, RTOL);
    }
    for (c, ap) in r.per_category_ap() {
        let theirs = num(&expected["per_category_ap"][c.to_string()]);
        assert_close(&format!("{label} AP of category {c}"), ap, theirs, RTOL);
    }
    Ok(())
}

#[test]
fn box_ap_vs_pycocotools() -> TestResult {
    let v = json("coco_bbox.json")?;
    let mut ev = evaluator(&v)?;
    add_gts(&v, &mut ev)?;
    for d in v["box_dts"].as_array().ok_or("box_dts")? {
        let b: Vec<f64> = d["bbox"]
            .as_array()
            .ok_or("bbox")?
            .iter()
            .map(num)
            .collect();
        ev.add_box_detection(
            uint(&d["image_id"])?,
            uint(&d["category_id"])?,
            [b[0], b[1], b[2], b[3]],
            num(&d["score"]),
        )?;
    }
    check(&ev, &v["expected_box"], "box results")?;

    let mut ev = evaluator(&v)?;
    add_gts(&v, &mut ev)?;
    for d in v["segm_dts"].as_array().ok_or("segm_dts")? {
        let image_id = uint(&d["image_id"])?;
        let (h, w) = size(&v, image_id)?;
        ev.add_detection(Detection {
            image_id,
            category_id: uint(&d["category_id"])?,
            mask: Rle::from_compressed(string(&d["segmentation"]["counts"])?, h, w)?,
            score: num(&d["score"]),
        })?;
    }
    check(&ev, &v["expected_segm"], "mask results, box IoU")
}

#[test]
fn box_detections_need_a_box_evaluator_and_finite_values() -> TestResult {
    let mut segm = CocoEvaluator::new(&[1]);
    segm.add_image(1, 4, 4)?;
    let e = segm.add_box_detection(1, 1, [0.0, 0.0, 2.0, 2.0], 0.5);
    assert!(e.unwrap_err().to_string().contains("CocoEvaluator::bbox"));
    let mut ev = CocoEvaluator::bbox(&[1]);
    assert!(ev.add_box_detection(1, 1, [0.0; 4], 0.5).is_err()); // undeclared image
    ev.add_image(1, 4, 4)?;
    assert!(ev
        .add_box_detection(1, 1, [f64::NAN, 0.0, 1.0, 1.0], 0.5)
        .is_err());
    assert!(ev
        .add_box_detection(1, 1, [0.0, 0.0, 1.0, 1.0], f64::INFINITY)
        .is_err());
    ev.add_box_detection(1, 1, [0.0, 0.0, 1.0, 1.0], 0.5)?;
    Ok(())
}
