//! Metrics against their references on real masks (fixtures from tests/parity/gen_data.py):
//! - mIoU & co. vs mmsegmentation 1.2.2 `IoUMetric` (two VOC images accumulated, the
//!   `reduce_zero_label` variant, StarDist nuclei as a binary task);
//! - PQ / SQ / RQ vs panopticapi's `pq_compute_single_core` + `PQStat` (two VOC images with a
//!   crowd person and a VOID band; the nuclei);
//! - mask AP / AR vs pycocotools `COCOeval(iouType='segm')` (VOC: two images, RLE and polygon
//!   ground truths, a crowd; nuclei: 125 instances).
//!
//! Tolerance: 1e-6 relative (mmseg computes in float32; the others agree to the last bits).

mod common;

use common::{assert_close, json, num, nums, png_l8, string, uint, TestResult};
use segkit_data::metrics::{
    CocoEvaluator, Detection, GroundTruth, PanopticCategory, PanopticQuality, SegMetric,
    SegmentInfo,
};
use segkit_data::Rle;
use serde_json::Value;

const RTOL: f64 = 1e-6;

fn check_semantic(case: &Value, label: &str) -> TestResult {
    let n = uint(&case["num_classes"])? as usize;
    let ignore = uint(&case["ignore_index"])? as i64;
    let reduce = case["reduce_zero_label"].as_bool().unwrap_or(false);
    let mut m = SegMetric::new(n, ignore)?.with_reduce_zero_label(reduce);
    for pair in case["pairs"].as_array().ok_or("pairs")? {
        let (_, _, pred) = png_l8(string(&pair[0])?)?;
        let (_, _, gt) = png_l8(string(&pair[1])?)?;
        m.update(&pred, &gt)?;
    }
    let e = &case["expected"];
    let t = m.totals();
    for (ours, key) in [
        (&t.intersect, "total_area_intersect"),
        (&t.union, "total_area_union"),
        (&t.pred, "total_area_pred_label"),
        (&t.label, "total_area_label"),
    ] {
        let ours: Vec<f64> = ours.iter().map(|&x| x as f64).collect();
        assert_eq!(ours, nums(&e[key]), "{label} {key}");
    }
    let r = m.compute();
    for (ours, key) in [
        (r.aacc, "aAcc"),
        (r.miou, "IoU"),
        (r.macc, "Acc"),
        (r.mdice, "Dice"),
        (r.mfscore, "Fscore"),
        (r.mprecision, "Precision"),
        (r.mrecall, "Recall"),
    ] {
        let reference = num(&e[key]);
        println!("{label} {key}: ours {ours:.9} mmseg {reference:.9}");
        assert_close(&format!("{label} {key}"), ours, reference, RTOL);
        let rounded = num(&case["mmseg_rounded"][if key == "aAcc" {
            key.to_string()
        } else {
            format!("m{key}")
        }]);
        assert!(
            (ours * 100.0 - rounded).abs() <= 0.005 + 1e-4,
            "{label} {key} rounded {rounded}"
        );
    }
    for (ours, key) in [
        (&r.iou, "IoU"),
        (&r.acc, "Acc"),
        (&r.dice, "Dice"),
        (&r.fscore, "Fscore"),
        (&r.precision, "Precision"),
        (&r.recall, "Recall"),
    ] {
        let reference = nums(&e["per_class"][key]);
        assert_eq!(ours.len(), reference.len());
        for (c, (&o, &x)) in ours.iter().zip(&reference).enumerate() {
            assert_close(&format!("{label} {key}[{c}]"), o, x, RTOL);
        }
    }
    Ok(())
}

#[test]
fn semantic_vs_mmseg() -> TestResult {
    let v = json("voc.json")?;
    let cases = v["semantic"].as_array().ok_or("semantic")?;
    assert_eq!(cases.len(), 2);
    for c in cases {
        check_semantic(c, string(&c["name"])?)?;
    }
    let n = json("nuclei.json")?;
    let mut c = n["semantic"].clone();
    c["reduce_zero_label"] = Value::Bool(false);
    check_semantic(&c, "nuclei")
}

#[test]
fn semantic_tensor_input() -> TestResult {
    use candle_core::{Device, Tensor};
    let (h, w, pred) = png_l8("voc_pred_sem_a.png")?;
    let (_, _, gt) = png_l8("voc_gt_sem_a.png")?;
    let mut a = SegMetric::new(21, 255)?;
    a.update(&pred, &gt)?;
    let mut b = SegMetric::new(21, 255)?;
    let pt = Tensor::from_vec(
        pred.iter().map(|&x| x as u32).collect::<Vec<_>>(),
        (1, h, w),
        &Device::Cpu,
    )?;
    let gtt = Tensor::from_vec(gt.clone(), (1, h, w), &Device::Cpu)?;
    assert!(b.update_tensor(&pt, &gtt).is_ok());
    assert_eq!(a.totals(), b.totals());
    Ok(())
}

fn segments(v: &Value) -> Result<Vec<SegmentInfo>, Box<dyn std::error::Error>> {
    v.as_array()
        .ok_or("segments")?
        .iter()
        .map(|s| {
            Ok(SegmentInfo {
                id: uint(&s["id"])? as u32,
                category_id: uint(&s["category_id"])? as u32,
                iscrowd: uint(&s["iscrowd"])? == 1,
            })
        })
        .collect()
}

fn check_panoptic(p: &Value, label: &str) -> TestResult {
    let cats: Vec<PanopticCategory> = p["categories"]
        .as_array()
        .ok_or("categories")?
        .iter()
        .map(|c| {
            Ok(PanopticCategory {
                id: uint(&c["id"])? as u32,
                isthing: uint(&c["isthing"])? == 1,
            })
        })
        .collect::<Result<_, Box<dyn std::error::Error>>>()?;
    let mut pq = PanopticQuality::new(&cats)?;
    for im in p["images"].as_array().ok_or("images")? {
        let (_, _, gt) = png_l8(string(&im["gt_png"])?)?;
        let (_, _, pred) = png_l8(string(&im["pred_png"])?)?;
        let gt: Vec<u32> = gt.into_iter().map(u32::from).collect();
        let pred: Vec<u32> = pred.into_iter().map(u32::from).collect();
        pq.update(
            &gt,
            &segments(&im["gt_segments"])?,
            &pred,
            &segments(&im["pred_segments"])?,
        )?;
    }
    let e = &p["expected"];
    for (cat, st) in e["stat"].as_object().ok_or("stat")? {
        let s = pq.stat(cat.parse()?);
        assert_eq!(
            (s.tp, s.fp, s.fn_),
            (uint(&st["tp"])?, uint(&st["fp"])?, uint(&st["fn"])?),
            "{label} category {cat}"
        );
        assert_close(
            &format!("{label} iou sum of {cat}"),
            s.iou,
            num(&st["iou"]),
            1e-12,
        );
    }
    let r = pq.compute();
    for (name, s) in [("All", r.all), ("Things", r.things), ("Stuff", r.stuff)] {
        let x = &e[name];
        println!(
            "{label} {name}: PQ ours {:.9} ref {:.9} | SQ ours {:.9} ref {:.9} | RQ ours {:.9} ref {:.9} | n {}",
            s.pq, num(&x["pq"]), s.sq, num(&x["sq"]), s.rq, num(&x["rq"]), s.n
        );
        assert_eq!(s.n as u64, uint(&x["n"])?);
        assert_close(&format!("{label} {name} PQ"), s.pq, num(&x["pq"]), RTOL);
        assert_close(&format!("{label} {name} SQ"), s.sq, num(&x["sq"]), RTOL);
        assert_close(&format!("{label} {name} RQ"), s.rq, num(&x["rq"]), RTOL);
    }
    for c in &r.per_class {
        let x = &e["per_class"][c.category_id.to_string()];
        assert_close(
            &format!("{label} PQ[{}]", c.category_id),
            c.pq,
            num(&x["pq"]),
            RTOL,
        );
        assert_close(
            &format!("{label} SQ[{}]", c.category_id),
            c.sq,
            num(&x["sq"]),
            RTOL,
        );
        assert_close(
            &format!("{label} RQ[{}]", c.category_id),
            c.rq,
            num(&x["rq"]),
            RTOL,
        );
    }
    Ok(())
}

#[test]
fn panoptic_vs_panopticapi() -> TestResult {
    check_panoptic(&json("voc.json")?["panoptic"], "voc")?;
    check_panoptic(&json("nuclei.json")?["panoptic"], "nuclei")
}

const STAT_NAMES: [&str; 12] = [
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
];

fn check_coco(inst: &Value, expected: &Value, only_image: Option<u64>, label: &str) -> TestResult {
    let cats: Vec<u64> = inst["categories"]
        .as_array()
        .ok_or("categories")?
        .iter()
        .map(uint)
        .collect::<Result<_, _>>()?;
    let mut ev = CocoEvaluator::new(&cats);
    let mut sizes = std::collections::HashMap::new();
    for im in inst["images"].as_array().ok_or("images")? {
        let id = uint(&im["id"])?;
        if only_image.is_some_and(|o| o != id) {
            continue;
        }
        let (h, w) = (uint(&im["height"])? as usize, uint(&im["width"])? as usize);
        ev.add_image(id, h, w)?;
        sizes.insert(id, (h, w));
    }
    let mut npoly = 0;
    for g in inst["gts"].as_array().ok_or("gts")? {
        let image_id = uint(&g["image_id"])?;
        let Some(&(h, w)) = sizes.get(&image_id) else {
            continue;
        };
        let seg = &g["segmentation"];
        let mask = if let Some(polys) = seg.as_array() {
            npoly += 1;
            let ps: Vec<Vec<f64>> = polys.iter().map(nums).collect();
            Rle::from_polygons(&ps, h, w)?
        } else {
            Rle::from_compressed(string(&seg["counts"])?, h, w)?
        };
        ev.add_ground_truth(GroundTruth {
            image_id,
            category_id: uint(&g["category_id"])?,
            mask,
            iscrowd: uint(&g["iscrowd"])? == 1,
            area: Some(num(&g["area"])),
        })?;
    }
    for d in inst["dts"].as_array().ok_or("dts")? {
        let image_id = uint(&d["image_id"])?;
        let Some(&(h, w)) = sizes.get(&image_id) else {
            continue;
        };
        ev.add_detection(Detection {
            image_id,
            category_id: uint(&d["category_id"])?,
            mask: Rle::from_compressed(string(&d["segmentation"]["counts"])?, h, w)?,
            score: num(&d["score"]),
        })?;
    }
    let r = ev.evaluate()?;
    let reference = nums(&expected["stats"]);
    for (i, name) in STAT_NAMES.iter().enumerate() {
        println!(
            "{label} {name}: ours {:.9} pycocotools {:.9}",
            r.stats[i], reference[i]
        );
        assert_close(&format!("{label} {name}"), r.stats[i], reference[i], RTOL);
    }
    for (c, ap) in r.per_category_ap() {
        assert_close(
            &format!("{label} AP of category {c}"),
            ap,
            num(&expected["per_category_ap"][c.to_string()]),
            RTOL,
        );
    }
    // recall at each IoU threshold, area all, maxDets 100: [T][K]
    let [t_n, _, k_n, a_n, m_n] = r.counts;
    let rec = expected["recall_all_100"].as_array().ok_or("recall")?;
    assert_eq!(rec.len(), t_n);
    for (t, row) in rec.iter().enumerate() {
        let row = nums(row);
        assert_eq!(row.len(), k_n);
        for (k, &x) in row.iter().enumerate() {
            let ours = r.recall[((t * k_n + k) * a_n) * m_n + m_n - 1];
            assert_close(&format!("{label} recall[{t}][{k}]"), ours, x, RTOL);
        }
    }
    if label == "voc" {
        assert_eq!(npoly, 4, "polygon ground truths");
    }
    Ok(())
}

#[test]
fn mask_ap_vs_pycocotools() -> TestResult {
    let v = json("voc.json")?;
    check_coco(&v["instance"], &v["instance"]["expected"], None, "voc")?;
    check_coco(
        &v["instance"],
        &v["instance"]["expected_image1"],
        Some(1),
        "voc image 1",
    )?;
    let n = json("nuclei.json")?;
    check_coco(&n["instance"], &n["instance"]["expected"], None, "nuclei")
}
