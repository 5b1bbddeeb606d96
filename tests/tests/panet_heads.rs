//! Parity of segkit-heads' PANet RoI heads (`segkit_heads::panet`): box head with adaptive
//! feature pooling, mask head with fully-connected fusion, test-time post-processing
//! (fixture: tests/parity/gen_panet_heads.py).
//!
//! Oracles:
//! - INDEPENDENT: the pooled features are torchvision's own `roi_align(aligned=False)` (every
//!   RoI from every level N2..N5 at scales 1/4..1/32, sampling ratio 2); the generator checks
//!   every per-class NMS against torchvision's `nms` on `+1`-adjusted boxes; the pasted masks
//!   come from OpenCV's own `cv2.resize`.
//! - WRITTEN FROM THE OFFICIAL MATH (ShuLiu1993/PANet is not installable): the heads are
//!   PyTorch modules with the official names (`fast_rcnn_heads.py::roi_Xconv1fc_gn_head_panet`,
//!   `mask_rcnn_heads.py::mask_rcnn_fcn_head_v1upXconvs_gn_adp_ff`, `*_outputs`); the
//!   post-processing is numpy from `lib/core/test.py` in float32.
//!
//! Full size: 256-channel synthetic N2..N5 of a 517x389 image padded to 544x416 (the RPN
//! fixture's inputs), its 1000 collected proposals, image scale 1.2 of a 431x324 original,
//! 81 classes; synthetic weights with `Box_Outs.cls_score.weight` x16,
//! `Box_Outs.bbox_pred.weight` x8 and `Mask_Outs.classify.weight` x16 (powers of two, exact;
//! without them every score is ~1/81 and nothing is detected). Every element of the pooled
//! features, head outputs, decoded boxes and mask logits enters the comparison (sampled
//! summaries, tolerance 1e-4 * max(1, max|ref|)); the mask head runs on the reference's mask
//! RoIs so its comparison does not depend on the detections. The detections are compared as
//! sets (class equal, score within 1e-5, box within 1e-4 * max(1, |coordinate|)), except at a
//! cut (score threshold, NMS, per-image limit) where a near-tie may go either way; the pasted
//! masks of matched detections pixel by pixel.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use segkit_core::ops::detection::{paste_mask_detectron, Box4};
use segkit_core::testing::{synthetic_input, SyntheticWeights};
use segkit_core::FeatureSpec;
use segkit_heads::panet::{postprocess, PanetRoiHeads, PanetRoiHeadsConfig};
use segkit_tests::{assert_sampled_close, get, load_fixture};

const SIZES: [(usize, usize); 4] = [(136, 104), (68, 52), (34, 26), (17, 13)];
const IM_SCALE: f64 = 1.2;
const ORIG: (usize, usize) = (431, 324);

/// Synthetic weights with the generator's power-of-two factors on three output layers.
fn scaled_weights() -> SyntheticWeights {
    SyntheticWeights::default()
        .scaled("Box_Outs.cls_score.weight", 16.0)
        .scaled("Mask_Outs.classify.weight", 16.0)
        .scaled("Box_Outs.bbox_pred.weight", 8.0)
}

fn vals(f: &HashMap<String, Tensor>, k: &str) -> Vec<f32> {
    get(f, k).flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn ints(f: &HashMap<String, Tensor>, k: &str) -> Vec<usize> {
    let v = get(f, k).to_vec1::<i64>().unwrap();
    v.into_iter().map(|x| x as usize).collect()
}

fn boxes(v: &[f32]) -> Vec<Box4> {
    v.chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect()
}

fn close_box(a: &Box4, b: &Box4) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| (x - y).abs() <= 1e-4 * y.abs().max(1.0))
}

/// Decodes the generator's row-major runs (zeros first) into one `h x w` mask per entry.
fn decode_runs(runs: &[usize], counts: &[usize], len: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    for &c in counts {
        let mut m = Vec::with_capacity(len);
        for (i, &r) in runs[at..at + c].iter().enumerate() {
            m.extend(std::iter::repeat_n((i % 2) as u8, r));
        }
        assert_eq!(m.len(), len, "run lengths of a reference mask");
        out.push(m);
        at += c;
    }
    out
}

/// The reference detection matched by each segkit detection (`None`: unmatched), and the
/// largest box / score difference of the matches.
fn match_detections(
    got: &postprocess::Detections,
    want: (&[Box4], &[f32], &[usize]),
) -> (Vec<Option<usize>>, f32, f32) {
    let mut used = vec![false; want.0.len()];
    let (mut db, mut ds) = (0f32, 0f32);
    let m = (0..got.len())
        .map(|i| {
            let hit = (0..want.0.len()).find(|&j| {
                !used[j]
                    && want.2[j] == got.classes[i]
                    && (want.1[j] - got.scores[i]).abs() <= 1e-5
                    && close_box(&got.boxes[i], &want.0[j])
            });
            if let Some(j) = hit {
                used[j] = true;
                ds = ds.max((want.1[j] - got.scores[i]).abs());
                let d = got.boxes[i]
                    .iter()
                    .zip(&want.0[j])
                    .map(|(a, b)| (a - b).abs());
                db = d.fold(db, f32::max);
            }
            hit
        })
        .collect();
    (m, db, ds)
}

#[test]
fn panet_roi_heads_match_the_reference() {
    let f = load_fixture("panet_heads.safetensors");
    let dev = Device::Cpu;
    let specs: Vec<FeatureSpec> = (2..=5).map(|l| FeatureSpec::new(256, 1 << l)).collect();
    let vb = scaled_weights().var_builder(DType::F32, &dev);
    let heads =
        PanetRoiHeads::new(&PanetRoiHeadsConfig::panet_coco(), &specs, vb).expect("build heads");
    let feats: Vec<Tensor> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &(h, w))| {
            synthetic_input(&format!("rpn.n{}", i + 2), (1, 256, h, w), &dev).unwrap()
        })
        .collect();
    let props = boxes(&vals(&f, "proposals"));

    let t0 = std::time::Instant::now();
    let out = heads
        .forward_test(&feats, &props, 0, IM_SCALE, ORIG)
        .expect("forward");
    eprintln!(
        "forward_test (1000 proposals, 100 masks): {:.2?}",
        t0.elapsed()
    );
    let pooled = heads.box_head().pool(&feats, &out.rois).expect("pool");
    for (l, p) in pooled.iter().enumerate() {
        assert_sampled_close(&format!("box_pooled{}", l + 2), p, &f);
    }
    assert_sampled_close("box_fc", &out.box_head.features, &f);
    assert_sampled_close("cls_score", &out.box_head.cls_score, &f);
    assert_sampled_close("bbox_pred", &out.box_head.bbox_pred, &f);
    let cfg = &heads.config().detection;
    let pred = postprocess::decode_boxes(cfg, &props, &out.box_head.bbox_pred, 81, IM_SCALE, ORIG)
        .unwrap();
    let pred = Tensor::from_vec(pred, (props.len(), 324), &dev).unwrap();
    assert_sampled_close("pred_boxes", &pred, &f);

    // The mask head on the reference's mask RoIs.
    let mrois = get(&f, "mask_rois").clone();
    let mh = heads.mask_head().expect("mask head");
    let mpooled = mh.pool(&feats, &mrois).expect("mask pool");
    for (l, p) in mpooled.iter().enumerate() {
        assert_sampled_close(&format!("mask_pooled{}", l + 2), p, &f);
    }
    let logits = mh.forward_pooled(&mpooled, false).expect("mask head");
    assert_sampled_close("mask_logits", &logits, &f);

    // Detections as sets.
    let d = &out.detections;
    let wb = boxes(&vals(&f, "det_boxes"));
    let ws = vals(&f, "det_scores");
    let wc = ints(&f, "det_classes");
    let (matched, db, ds) = match_detections(d, (&wb, &ws, &wc));
    let n_match = matched.iter().flatten().count();
    eprintln!(
        "detections: segkit {}, reference {}, matched {n_match} (max |diff| box {db:e}, score \
         {ds:e})",
        d.len(),
        wb.len()
    );
    // Anything unmatched must sit at the per-image limit's cut (the 100th score).
    let cut = ws.iter().copied().fold(f32::INFINITY, f32::min);
    for (i, m) in matched.iter().enumerate() {
        assert!(
            m.is_some() || (d.scores[i] - cut).abs() <= 1e-5,
            "segkit detection {i} (class {}, score {}, box {:?}) is not in the reference",
            d.classes[i],
            d.scores[i],
            d.boxes[i]
        );
    }
    assert!(
        wb.len() - n_match <= 2,
        "{} reference detections unmatched",
        wb.len() - n_match
    );
    assert!(!d.is_empty() && d.masks.len() == d.len() && d.mask_resolution == 28);

    check_masks(d, &matched, &f, wb.len());
}

/// Masks of the matched detections: class-channel probabilities and pasted pixels.
fn check_masks(
    d: &postprocess::Detections,
    matched: &[Option<usize>],
    f: &HashMap<String, Tensor>,
    n_ref: usize,
) {
    let dev = Device::Cpu;
    let (h, w) = ORIG;
    let want_masks = decode_runs(&ints(f, "mask_runs"), &ints(f, "mask_run_counts"), h * w);
    // A pixel may differ only where segkit's resized probability lies within 5e-5 of the 0.5
    // threshold: the band where pasting at 0.5 -/+ 5e-5 disagrees. (segkit's mask RoIs come
    // from its own boxes, within ~1.2e-4 of the reference's, so the class probabilities differ
    // by up to ~2e-5; segkit's resize differs from OpenCV's by at most an ulp.)
    let (mut flips, mut pixels, mut outside) = (0usize, 0usize, 0usize);
    let mut probs = Vec::new();
    for (i, m) in matched.iter().enumerate() {
        let Some(j) = *m else { continue };
        let paste = |t: f32| {
            paste_mask_detectron(&d.mask_probs[i], 28, &d.boxes[i], h, w, t).expect("paste")
        };
        let (lo, hi) = (paste(0.5 - 5e-5), paste(0.5 + 5e-5));
        for (p, (&a, &b)) in d.masks[i].iter().zip(&want_masks[j]).enumerate() {
            if a != b {
                flips += 1;
                outside += usize::from(lo[p] == hi[p]);
            }
        }
        pixels += want_masks[j].iter().map(|&v| v as usize).sum::<usize>();
        if i == j {
            probs.push(i);
        }
    }
    eprintln!(
        "pasted masks: {flips} pixels differ of {pixels} mask pixels ({outside} outside the \
         5e-5 band around the threshold)"
    );
    assert!(pixels > 0, "the reference masks are empty");
    assert!(
        outside == 0,
        "{outside} mask pixels differ away from the threshold"
    );
    assert!(flips <= 10, "{flips} mask pixels differ");
    if probs.len() == d.len() && d.len() == n_ref {
        // Same detections in the same order: the class-channel probabilities as a whole.
        let flat: Vec<f32> = d.mask_probs.iter().flatten().copied().collect();
        let t = Tensor::from_vec(flat, (d.len(), 28, 28), &dev).unwrap();
        assert_sampled_close("mask_probs", &t, f);
    }
}

/// Degenerate inputs at full size (256 channels, 81 classes, the parity test's weights): zero
/// proposals, 1x1 feature maps and a 1x1 original image, degenerate and out-of-image boxes, a
/// non-finite proposal. None panics; every result is valid.
#[test]
fn panet_roi_heads_degenerate_inputs() {
    let dev = Device::Cpu;
    let specs: Vec<FeatureSpec> = (2..=5).map(|l| FeatureSpec::new(256, 1 << l)).collect();
    let vb = scaled_weights().var_builder(DType::F32, &dev);
    let heads =
        PanetRoiHeads::new(&PanetRoiHeadsConfig::panet_coco(), &specs, vb).expect("build heads");
    let feats: Vec<Tensor> = (2..=5)
        .map(|l| synthetic_input(&format!("one.n{l}"), (1, 256, 1, 1), &dev).unwrap())
        .collect();
    let none = heads.forward_test(&feats, &[], 0, 1.0, (1, 1)).unwrap();
    assert!(none.detections.is_empty() && none.detections.masks.is_empty());
    assert_eq!(none.box_head.cls_score.dims(), [0, 81]);
    assert_eq!(none.mask_logits.unwrap().dims(), [0, 81, 28, 28]);
    let props = [
        [0.0, 0.0, 0.0, 0.0],
        [20.0, 20.0, 3.0, 3.0],
        [-100.0, -80.0, -60.0, -50.0],
        [0.0, 0.0, 1e7, 1e7],
        [0.5, 0.5, 0.5, 40.0],
    ];
    let out = heads.forward_test(&feats, &props, 0, 1.0, (1, 1)).unwrap();
    let d = &out.detections;
    eprintln!(
        "degenerate proposals on a 1x1 image: {} detections",
        d.len()
    );
    assert!(!d.is_empty(), "the scaled weights detect something");
    assert_eq!(d.masks.len(), d.len());
    for (b, m) in d.boxes.iter().zip(&d.masks) {
        assert_eq!(*b, [0.0; 4], "every box clips to the one pixel");
        assert!(m.len() == 1 && m[0] <= 1);
    }
    assert!(d.scores.iter().all(|s| s.is_finite() && *s > 0.05));
    let mut bad = props.to_vec();
    bad.push([f32::NAN, 0.0, 1.0, 1.0]);
    let err = heads
        .forward_test(&feats, &bad, 0, 1.0, (1, 1))
        .unwrap_err();
    assert!(err.to_string().contains("proposal 5"), "{err}");
    assert!(heads.forward_test(&feats, &props, 1, 1.0, (1, 1)).is_err());
}
