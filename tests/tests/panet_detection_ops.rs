//! Parity of segkit-core's two-stage detection ops (`ops::detection`)
//! (fixture: tests/parity/gen_panet_ops.py).
//!
//! Oracles, per fixture key:
//! - `legacy.*` (Detectron / PANet, `+1` convention): numpy WRITTEN FROM DETECTRON'S MATH
//!   (anchors, `bbox_transform(_inv)`, `clip_tiled_boxes`, `_filter_boxes`, `cython_nms`, the
//!   FPN level rule, `distribute`, `segm_results`) in float32 as the official code computes;
//!   Detectron itself (Python 2-era numpy, Cython) is not run. Independent cross-checks:
//!   `legacy.nms_tv_keep*` is torchvision's `nms` on boxes with `x2 + 1`, `y2 + 1`, and the
//!   mask paste resizes with OpenCV's own `cv2.resize`.
//! - `cont.*` (torchvision convention): INDEPENDENT, torchvision's own `AnchorGenerator`,
//!   `BoxCoder`, `clip_boxes_to_image`, `remove_small_boxes`, `nms`, `LevelMapper`.
//! - `resize.*`: INDEPENDENT, `cv2.resize(float32, INTER_LINEAR)`.

use std::collections::HashMap;

use candle_core::Tensor;
use segkit_core::ops::detection::{self as det, Box4, BoxConvention, BoxTransform, LevelMapper};
use segkit_tests::{get, load_fixture};

const IM_H: f32 = 544.0;
const IM_W: f32 = 416.0;

fn fixture() -> HashMap<String, Tensor> {
    load_fixture("panet/detection_ops.safetensors")
}

fn f32s(f: &HashMap<String, Tensor>, k: &str) -> Vec<f32> {
    get(f, k).flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn f64s(f: &HashMap<String, Tensor>, k: &str) -> Vec<f64> {
    get(f, k).flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn idx(f: &HashMap<String, Tensor>, k: &str) -> Vec<usize> {
    let v = get(f, k).flatten_all().unwrap().to_vec1::<i64>().unwrap();
    v.into_iter().map(|x| x as usize).collect()
}

fn boxes(v: &[f32]) -> Vec<Box4> {
    v.chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect()
}

/// max |got - want| <= tol * max(1, max |want|); returns the max difference.
fn close(what: &str, got: &[f32], want: &[f32], tol: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let m = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let d = got
        .iter()
        .zip(want)
        .fold(0f32, |d, (a, b)| d.max((a - b).abs()));
    eprintln!(
        "{what}: max|diff| = {d:e} (max|ref| {m:e}, tol {:e})",
        tol * m
    );
    assert!(d <= tol * m, "{what}: max|diff| {d} > {}", tol * m);
    d
}

#[test]
fn detectron_and_torchvision_anchors() {
    let f = fixture();
    for lvl in 2..=6 {
        let stride = (1u32 << lvl) as f64;
        let size = 32.0 * (1u32 << (lvl - 2)) as f64;
        let got = det::detectron_cell_anchors(stride, &[size], &[0.5, 1.0, 2.0]).unwrap();
        let got: Vec<f64> = got.into_iter().flatten().collect();
        assert_eq!(got, f64s(&f, &format!("legacy.cell{lvl}")), "level {lvl}");
    }
    let cell = det::detectron_cell_anchors(32.0, &[128.0], &[0.5, 1.0, 2.0]).unwrap();
    let grid: Vec<f32> = det::grid_anchors(&cell, 32.0, 17, 13)
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(grid, f32s(&f, "legacy.grid5"));
    let cell = det::torchvision_cell_anchors(&[32.0, 64.0], &[0.5, 1.0, 2.0]).unwrap();
    let flat: Vec<f64> = cell.iter().flatten().copied().collect();
    assert_eq!(flat, f64s(&f, "cont.cell"));
    let grid: Vec<f32> = det::grid_anchors(&cell, 32.0, 17, 13)
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(grid, f32s(&f, "cont.grid"));
}

#[test]
fn box_coding_clipping_and_filtering() {
    let f = fixture();
    let b = boxes(&f32s(&f, "boxes"));
    let deltas = f32s(&f, "deltas");
    let legacy1 = BoxTransform::new([1.0; 4], BoxConvention::Legacy);
    let legacy10 = BoxTransform::new([10.0, 10.0, 5.0, 5.0], BoxConvention::Legacy);
    let cont10 = BoxTransform::new([10.0, 10.0, 5.0, 5.0], BoxConvention::Continuous);
    let dec1 = legacy1.decode(&b, &deltas).unwrap();
    close(
        "legacy decode w1",
        &dec1,
        &f32s(&f, "legacy.decode_w1"),
        1e-6,
    );
    let dec = legacy10.decode(&b, &deltas).unwrap();
    close(
        "legacy decode w10",
        &dec,
        &f32s(&f, "legacy.decode_w10"),
        1e-6,
    );
    let dec = cont10.decode(&b, &deltas).unwrap();
    close(
        "torchvision decode",
        &dec,
        &f32s(&f, "cont.decode_w10"),
        1e-6,
    );
    let gt = boxes(&f32s(&f, "gt"));
    let enc: Vec<f32> = legacy10
        .encode(&b, &gt)
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    close("legacy encode", &enc, &f32s(&f, "legacy.encode"), 1e-5);
    let enc: Vec<f32> = cont10
        .encode(&b, &gt)
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    close("torchvision encode", &enc, &f32s(&f, "cont.encode"), 1e-5);

    // Clipping and filtering on the reference's decoded boxes (our decode differs from numpy's
    // by an ulp of `exp` here and there): exact.
    let ref1 = f32s(&f, "legacy.decode_w1");
    let mut c = ref1.clone();
    det::clip_boxes(&mut c, IM_H, IM_W, BoxConvention::Legacy);
    assert_eq!(c, f32s(&f, "legacy.clip"));
    let mut c2 = ref1.clone();
    det::clip_boxes(&mut c2, IM_H, IM_W, BoxConvention::Continuous);
    assert_eq!(c2, f32s(&f, "cont.clip"));

    let first: Vec<Box4> = c
        .chunks_exact(12)
        .map(|r| [r[0], r[1], r[2], r[3]])
        .collect();
    let keep = det::filter_proposals(&first, 16.0, 1.5, IM_H, IM_W, BoxConvention::Legacy);
    assert_eq!(keep, idx(&f, "legacy.filter"));
    let raw: Vec<Box4> = ref1
        .chunks_exact(12)
        .map(|r| [r[0], r[1], r[2], r[3]])
        .collect();
    let keep = det::filter_proposals(&raw, 16.0, 1.0, IM_H, IM_W, BoxConvention::Continuous);
    assert_eq!(keep, idx(&f, "cont.filter"));
}

#[test]
fn nms_both_conventions() {
    let f = fixture();
    let b = boxes(&f32s(&f, "nms.boxes"));
    let s = f32s(&f, "nms.scores");
    for (th, name) in [(0.7, "07"), (0.5, "05")] {
        let mut legacy = det::nms_boxes(&b, &s, th, BoxConvention::Legacy).unwrap();
        legacy.sort_unstable();
        // Detectron returns increasing indices: equal as lists after sorting ours.
        assert_eq!(
            legacy,
            idx(&f, &format!("legacy.nms{name}")),
            "legacy nms {th}"
        );
        let mut tv = idx(&f, &format!("legacy.nms_tv_keep{name}"));
        tv.sort_unstable();
        assert_eq!(
            legacy, tv,
            "legacy nms {th} vs torchvision on +1-adjusted boxes"
        );
        let cont = det::nms_boxes(&b, &s, th, BoxConvention::Continuous).unwrap();
        assert_eq!(
            cont,
            idx(&f, &format!("cont.nms{name}")),
            "torchvision nms {th}"
        );
        eprintln!(
            "nms {th}: legacy keeps {}, torchvision {}",
            legacy.len(),
            cont.len()
        );
    }
}

#[test]
fn top_k_levels_and_distribution() {
    let f = fixture();
    let s = f32s(&f, "topk.scores");
    assert_eq!(det::top_k(&s, 1000), idx(&f, "legacy.topk"));
    let b = boxes(&f32s(&f, "levels.boxes"));
    let lv = det::map_rois_to_levels(&b, &LevelMapper::detectron());
    assert_eq!(lv, idx(&f, "legacy.levels"));
    let d = det::distribute_to_levels(&lv, 2, 5).unwrap();
    assert_eq!(d.restore, idx(&f, "legacy.restore"));
    let lv = det::map_rois_to_levels(&b, &LevelMapper::torchvision(2, 5));
    assert_eq!(lv, idx(&f, "cont.levels"));
}

#[test]
fn opencv_float_resize() {
    let f = fixture();
    let src = f32s(&f, "resize.src");
    let sizes = idx(&f, "resize.sizes");
    for wh in sizes.chunks_exact(2) {
        let (w, h) = (wh[0], wh[1]);
        let got = det::resize_linear_f32(&src, 30, 30, w, h).unwrap();
        // Within one f32 ulp at 1.0 (see `resize_linear_f32`'s docs); values lie in [0, 1].
        close(
            &format!("resize {w}x{h}"),
            &got,
            &f32s(&f, &format!("resize.{w}x{h}")),
            1.2e-7,
        );
    }
}

#[test]
fn detectron_mask_paste() {
    let f = fixture();
    let masks = f32s(&f, "paste.masks");
    let b = boxes(&f32s(&f, "paste.boxes"));
    let runs = idx(&f, "legacy.paste_runs");
    let counts = idx(&f, "legacy.paste_run_counts");
    let areas = idx(&f, "legacy.paste_areas");
    let (h, w) = (389, 517);
    let mut at = 0;
    for (i, bx) in b.iter().enumerate() {
        let m = &masks[i * 784..(i + 1) * 784];
        let got = det::paste_mask_detectron(m, 28, bx, h, w, 0.5).unwrap();
        let mut want = Vec::with_capacity(h * w);
        for (k, &r) in runs[at..at + counts[i]].iter().enumerate() {
            want.extend(std::iter::repeat_n((k % 2) as u8, r));
        }
        at += counts[i];
        let area: usize = got.iter().map(|&v| v as usize).sum();
        assert_eq!(area, areas[i], "mask {i} area (box {bx:?})");
        assert!(got == want, "mask {i} differs (box {bx:?})");
    }
}
