//! Whole-model parity of segkit-models' `Panet` (fixtures: tests/parity/gen_panet_model.py):
//! an 8-bit image through Detectron's blob, N2..N6, the RPN's proposals, the box head, the
//! test-time post-processing, the mask head and the pasted masks; the official checkpoint
//! layout in PyTorch's legacy serialization; bad inputs.
//!
//! Oracles: the input resize is OpenCV's own `cv2.resize(fx=s)` and RoIAlign torchvision's own
//! `roi_align(aligned=False)` (INDEPENDENT); the network and the post-processing are PyTorch
//! modules and numpy WRITTEN FROM THE OFFICIAL MATH (ShuLiu1993/PANet is not installable),
//! assembled from gen_panet_backbone.py, gen_panet_neck.py, gen_panet_rpn.py and
//! gen_panet_heads.py under the official module names.
//!
//! Full size: caffe ResNet-50, 256-channel pyramid, 1000 proposals, 81 classes, a 431 x 324
//! image resized to 517 x 389 (`TEST.SCALE` 389) and padded to 544 x 416. Tensors are compared
//! element-wise through their sampled summaries (rtol 1e-4); proposals and detections as sets
//! with DESIGN.md's tolerance 1e-4 * max(1, max|ref|) per set (box coordinates: max|ref| is the
//! largest reference coordinate, ~5e-2 pixels here; scores, probabilities: 1e-4), equal order
//! where the box head's outputs are compared;
//! masks pixel for pixel.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use segkit::models::panet::{image_blob, Detections, Panet, PanetConfig};
use segkit::models::{Model, ModelConfig, Task};
use segkit_core::ops::detection::Box4;
use segkit_core::testing::{uniform, SyntheticWeights};
use segkit_tests::{assert_sampled_close, get, load_fixture};

/// DESIGN.md's tolerance for a score (a probability, at most 1).
const SCORE_TOL: f32 = 1e-4;

/// Output layers scaled as gen_panet_heads.py's `SCALED` (powers of two: exact in f32).
const SCALED: [(&str, f64); 3] = [
    ("Box_Outs.cls_score.weight", 16.0),
    ("Box_Outs.bbox_pred.weight", 8.0),
    ("Mask_Outs.classify.weight", 16.0),
];

/// segkit-core's synthetic weights with [`SCALED`] applied.
fn scaled_weights() -> SyntheticWeights {
    SCALED
        .iter()
        .fold(SyntheticWeights::default(), |w, (k, f)| w.scaled(k, *f))
}

fn config() -> PanetConfig {
    let mut c = PanetConfig::r50_fpn_2x_coco();
    c.input.scale = 389;
    c
}

fn model() -> Panet {
    let vb = scaled_weights().var_builder(DType::F32, &Device::Cpu);
    Panet::new(&config(), vb).expect("build PANet")
}

/// gen_panet_model.py's image: 431 x 324, interleaved RGB, `floor(256 * uniform)`.
fn image() -> image::RgbImage {
    let (h, w) = (431u32, 324u32);
    let px: Vec<u8> = uniform("panet_model.image", (h * w * 3) as usize)
        .into_iter()
        .map(|u| (u * 256.0).floor() as u8)
        .collect();
    image::RgbImage::from_raw(w, h, px).unwrap()
}

fn vals(f: &HashMap<String, Tensor>, k: &str) -> Vec<f32> {
    get(f, k).flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn ints(f: &HashMap<String, Tensor>, k: &str) -> Vec<i64> {
    get(f, k).flatten_all().unwrap().to_vec1::<i64>().unwrap()
}

fn boxes(v: &[f32]) -> Vec<Box4> {
    v.chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect()
}

/// DESIGN.md's tolerance for the coordinates of `boxes`: 1e-4 * max(1, max|coordinate|).
fn box_tol(boxes: &[Box4]) -> f32 {
    1e-4 * boxes.iter().flatten().fold(1f32, |m, v| m.max(v.abs()))
}

fn close_box(a: &Box4, b: &Box4, tol: f32) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

/// Pairs every reference item `(box, score, class)` with an unused segkit item of the same
/// class, box and score (see the file docs); returns, per reference item, the segkit index.
/// Panics on an item of either side without a partner.
fn match_items(
    what: &str,
    got: (&[Box4], &[f32], &[i64]),
    want: (&[Box4], &[f32], &[i64]),
) -> Vec<usize> {
    assert_eq!(got.0.len(), want.0.len(), "{what}: number of items");
    let mut used = vec![false; got.0.len()];
    let mut worst = 0f32;
    let mut pairs = Vec::with_capacity(want.0.len());
    let tol = box_tol(want.0);
    for i in 0..want.0.len() {
        let (wb, ws, wc) = (&want.0[i], want.1[i], want.2[i]);
        let hit = (0..got.0.len()).find(|&j| {
            !used[j]
                && got.2[j] == wc
                && (got.1[j] - ws).abs() <= SCORE_TOL
                && close_box(&got.0[j], wb, tol)
        });
        let j = hit.unwrap_or_else(|| {
            let near: Vec<_> = (0..got.0.len())
                .filter(|&j| got.2[j] == wc)
                .map(|j| (got.0[j], got.1[j]))
                .collect();
            panic!(
                "{what}: reference item {i} {wb:?} (score {ws}, class {wc}) has no match; \
                 segkit's of that class: {near:?}"
            )
        });
        used[j] = true;
        let d = got.0[j].iter().zip(wb).map(|(a, b)| (a - b).abs());
        worst = d.fold(worst, f32::max).max((got.1[j] - ws).abs());
        pairs.push(j);
    }
    eprintln!(
        "{what}: all {} matched, max |diff| of box / score {worst:e} (box tol {tol:e})",
        pairs.len()
    );
    pairs
}

/// The reference's masks from their row-major runs (`mask_runs`, `mask_run_counts`).
fn reference_masks(f: &HashMap<String, Tensor>, n: usize, hw: usize) -> Vec<Vec<u8>> {
    let runs = ints(f, "mask_runs");
    let counts = ints(f, "mask_run_counts");
    assert_eq!(counts.len(), n);
    let mut at = 0;
    counts
        .iter()
        .map(|&c| {
            let mut m = Vec::with_capacity(hw);
            for (k, &r) in runs[at..at + c as usize].iter().enumerate() {
                m.extend(std::iter::repeat_n((k % 2) as u8, r as usize));
            }
            at += c as usize;
            assert_eq!(m.len(), hw);
            m
        })
        .collect()
}

/// Detections equal the reference's as sets, and each matched mask equals its reference mask
/// except for at most `pixel_frac` of its pixels (0: pixel for pixel). Returns the pairing.
fn check_detections(
    what: &str,
    d: &Detections,
    f: &HashMap<String, Tensor>,
    pixel_frac: f64,
) -> Vec<usize> {
    let classes: Vec<i64> = d.classes.iter().map(|&c| c as i64).collect();
    let want_b = boxes(&vals(f, "det_boxes"));
    let want_s = vals(f, "det_scores");
    let want_c = ints(f, "det_classes");
    let pairs = match_items(
        what,
        (&d.boxes, &d.scores, &classes),
        (&want_b, &want_s, &want_c),
    );
    let hw = d.height * d.width;
    let want_m = reference_masks(f, want_b.len(), hw);
    let areas = ints(f, "mask_areas");
    let (mut total, mut worst) = (0usize, 0f64);
    for (i, &j) in pairs.iter().enumerate() {
        let differ = d.masks[j]
            .iter()
            .zip(&want_m[i])
            .filter(|(a, b)| a != b)
            .count();
        let frac = differ as f64 / (areas[i].max(1) as f64);
        assert!(
            frac <= pixel_frac,
            "{what}: mask of detection {i}: {differ} of {} pixels differ",
            areas[i]
        );
        total += differ;
        worst = worst.max(frac);
    }
    eprintln!(
        "{what}: {} masks, {total} pixels differ in all (worst mask: {worst:e} of its area)",
        pairs.len()
    );
    pairs
}

#[test]
fn whole_model_parity() {
    let f = load_fixture("panet/model.safetensors");
    let m = model();
    let blob = image_blob(&image(), &m.config().input, &Device::Cpu).unwrap();
    let scale = get(&f, "scale").to_vec1::<f64>().unwrap()[0];
    assert_eq!(blob.scale, scale, "target scale");
    let resized = ints(&f, "resized");
    assert_eq!(
        [blob.resized.0 as i64, blob.resized.1 as i64],
        [resized[0], resized[1]]
    );
    assert_sampled_close("blob", &blob.data, &f);
    let o = m
        .forward_blob(&blob.data, blob.im_info, blob.scale, blob.original)
        .expect("forward");
    for (i, t) in o.features.levels.iter().enumerate() {
        assert_sampled_close(&format!("n{}", i + 2), t, &f);
    }
    // Proposals: the same list, in the same order (the box head's rows follow it).
    let (wb, ws) = (boxes(&vals(&f, "proposals")), vals(&f, "proposal_scores"));
    let p = &o.proposals;
    assert_eq!(p.boxes.len(), wb.len(), "number of proposals");
    let tol = box_tol(&wb);
    let same_order = p
        .boxes
        .iter()
        .zip(&wb)
        .zip(p.scores.iter().zip(&ws))
        .all(|((a, b), (s, t))| close_box(a, b, tol) && (s - t).abs() <= SCORE_TOL);
    assert!(same_order, "proposals differ from the reference's list");
    let zeros = vec![0i64; wb.len()];
    match_items(
        "proposals",
        (&p.boxes, &p.scores, &zeros),
        (&wb, &ws, &zeros),
    );
    assert_sampled_close("cls_score", &o.heads.box_head.cls_score, &f);
    assert_sampled_close("bbox_pred", &o.heads.box_head.bbox_pred, &f);
    let d = &o.heads.detections;
    assert!(!d.is_empty(), "the synthetic network detects something");
    let pairs = check_detections("detections", d, &f, 0.0);
    // Mask logits row by row in the reference's order.
    let logits = o.heads.mask_logits.as_ref().expect("mask head");
    let idx: Vec<u32> = pairs.iter().map(|&j| j as u32).collect();
    let idx = Tensor::new(idx.as_slice(), &Device::Cpu).unwrap();
    assert_sampled_close("mask_logits", &logits.index_select(&idx, 0).unwrap(), &f);
}

#[test]
fn instances_named_outputs_and_json() {
    let m = model();
    let img = image();
    let dets = m.detect(&img).unwrap();
    let seg = m
        .segment(
            &image::DynamicImage::ImageRgb8(img),
            Task::Instance,
            &Default::default(),
        )
        .unwrap();
    let r = seg.as_instance().expect("instance result");
    assert_eq!((r.height, r.width), (431, 324));
    assert_eq!(r.instances.len(), dets.len());
    let mut scores: Vec<f32> = dets.scores.clone();
    scores.sort_by(|a, b| b.total_cmp(a));
    for (k, inst) in r.instances.iter().enumerate() {
        assert_eq!(inst.id as usize, k + 1);
        assert_eq!(
            inst.score as f32, scores[k],
            "instances by decreasing score"
        );
        let i = (0..dets.len())
            .find(|&i| {
                dets.scores[i] as f64 == inst.score
                    && f64::from(dets.boxes[i][0]) == inst.bbox[0]
                    && f64::from(dets.boxes[i][1]) == inst.bbox[1]
            })
            .unwrap();
        assert_eq!(inst.class_id as usize, dets.classes[i]);
        assert_eq!(inst.class_name, m.config().classes()[dets.classes[i]]);
        assert_eq!(inst.mask.to_mask(), dets.masks[i]);
        let b = dets.boxes[i];
        assert_eq!(inst.bbox[2], f64::from(b[2] - b[0] + 1.0));
    }
    // The segment map shows the highest-scoring instance at each pixel.
    let masks: Vec<Vec<u8>> = r.instances.iter().map(|i| i.mask.to_mask()).collect();
    for (p, &id) in r.segment_map.iter().enumerate() {
        let top = (0..masks.len()).find(|&k| masks[k][p] != 0);
        assert_eq!(id, top.map_or(0, |k| r.instances[k].id));
    }
    let json = serde_json::to_value(&seg).unwrap();
    assert_eq!(json["task"], "instance");
    let first = &json["instances"][0];
    assert!(first["segmentation"]["counts"].is_string(), "{first}");
    assert_eq!(first["segmentation"]["size"], serde_json::json!([431, 324]));
    // segkit dump's names.
    let blob = image_blob(&image(), &m.config().input, &Device::Cpu).unwrap();
    let named = m.forward_named(&blob.data, None).unwrap();
    let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "n2",
            "n3",
            "n4",
            "n5",
            "n6",
            "proposals",
            "proposal_scores",
            "cls_score",
            "bbox_pred",
            "boxes",
            "scores",
            "classes",
            "mask_logits",
            "masks"
        ]
    );
    assert_eq!(named[12].1.dims()[1..], [81, 28, 28]);
    assert_eq!(named[13].1.dims()[1..], [544, 416]);
}

/// A small-input PANet (shorter side 64) for the bad-input cases.
fn small(edit: impl FnOnce(&mut PanetConfig)) -> Panet {
    let mut c = config();
    c.input.scale = 64;
    c.input.max_size = 96;
    edit(&mut c);
    let vb = scaled_weights().var_builder(DType::F32, &Device::Cpu);
    Panet::new(&c, vb).unwrap()
}

#[test]
fn bad_inputs_give_valid_results() {
    let dynimg = |w, h| {
        image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            w,
            h,
            image::Rgb([90, 120, 200]),
        ))
    };
    let opts = Default::default();
    // A 1x1 image: a 64 x 64 blob, every proposal degenerate after scaling back.
    let m = small(|_| {});
    let seg = m.segment(&dynimg(1, 1), Task::Instance, &opts).unwrap();
    let r = seg.as_instance().unwrap();
    assert_eq!((r.height, r.width), (1, 1));
    for i in &r.instances {
        assert!(i.bbox.iter().all(|v| v.is_finite()));
        assert_eq!(i.mask.height() * i.mask.width(), 1);
    }
    // No detection (nothing scores above 1): an empty, valid result.
    let m = small(|c| c.roi_heads.detection.score_thresh = 1.0);
    let seg = m.segment(&dynimg(40, 30), Task::Instance, &opts).unwrap();
    let r = seg.as_instance().unwrap();
    assert!(r.instances.is_empty());
    assert!(r.segment_map.iter().all(|&v| v == 0));
    let json = serde_json::to_value(&seg).unwrap();
    assert_eq!(json["instances"], serde_json::json!([]));
    // Zero proposals (none kept before NMS): empty detections, no panic.
    let m = small(|c| c.rpn.pre_nms_top_n = 0);
    let dets = m
        .detect(&image::RgbImage::from_pixel(7, 5, image::Rgb([1, 2, 3])))
        .unwrap();
    assert!(dets.is_empty());
    assert_eq!((dets.height, dets.width), (5, 7));
    // An empty image and a wrong task are typed errors.
    let e = m.segment(&dynimg(0, 3), Task::Instance, &opts).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let e = m.segment(&dynimg(4, 3), Task::Semantic, &opts).unwrap_err();
    assert!(e.to_string().contains("instance"), "{e}");
    // A blob that is not one 3-channel image.
    let x = Tensor::zeros((2, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
    assert!(m
        .forward_blob(&x, [64.0, 64.0, 1.0], 1.0, (64, 64))
        .is_err());
}

/// The official checkpoint layout for real: `{step, train_size, batch_size, model, optimizer}`
/// written by `torch.save(_use_new_zipfile_serialization=False)` (PyTorch 0.4's format) in the
/// official key names, full ResNet-50 size, periodic synthetic values (gen_panet_model.py
/// `gen_legacy`). Its keys are exactly `official_keys`; it loads strictly through the generic
/// reader and reproduces the reference's detections and masks; a missing or an extra key is a
/// typed error naming it.
#[test]
fn legacy_official_checkpoint_loads_and_reproduces_the_reference() {
    use segkit::models::Error;
    use segkit_core::checkpoint::StateDict;
    use std::io::Read;

    let dir = tempfile::tempdir().unwrap();
    let pth = dir.path().join("panet_mask_step179999.pth");
    let src = segkit_tests::fixture_path("panet/legacy_panet_r50.pth.gz");
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(src).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    std::fs::write(&pth, &bytes).unwrap();
    drop(bytes);

    let name = "panet_r50_fpn_2x_coco";
    let sd = segkit::models::panet::load_state_dict(&pth, name).unwrap();
    let mut file_keys: Vec<String> = sd.keys().map(String::from).collect();
    let mut table = segkit::models::panet::official_keys(&config()).unwrap();
    file_keys.sort();
    table.sort();
    assert_eq!(file_keys, table, "official_keys accounts for every key");
    let cfg = ModelConfig::Panet(Box::new(config()));
    let dev = Device::Cpu;
    let model = cfg.from_state_dict(name, &sd, &pth, &dev).unwrap();
    let panet = model.as_any().downcast_ref::<Panet>().unwrap();
    let dets = panet.detect(&image()).unwrap();
    // The periodic network's activations are larger than synth.py's, so its boxes differ by up
    // to 7.4e-3 px (tolerance 4.3e-2); a mask's RoI and paste window follow its box, and 33
    // pixels on the 0.5 contours of 100 masks flip (worst: 0.28% of a mask). Pixel equality is
    // whole_model_parity's check; here at most 0.5% of a mask's area may differ.
    check_detections(
        "legacy checkpoint",
        &dets,
        &load_fixture("panet/legacy_expected.safetensors"),
        5e-3,
    );

    let missing = "Mask_Head.mask_conv5_fc.1.bias";
    let mut less: StateDict = sd.clone();
    less.remove(missing).unwrap();
    let e = cfg.from_state_dict(name, &less, &pth, &dev).err().unwrap();
    assert!(matches!(&e, Error::Checkpoint { .. }), "{e}");
    assert!(chain(&e).contains(missing), "{}", chain(&e));
    let mut more = sd;
    more.insert(
        "Box_Head.fc2.weight",
        Tensor::zeros(3, DType::F32, &dev).unwrap(),
    );
    let e = cfg.from_state_dict(name, &more, &pth, &dev).err().unwrap();
    assert!(chain(&e).contains("Box_Head.fc2.weight"), "{}", chain(&e));
}

/// An error and its sources, one message each.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
