//! Parity of `segkit_core::ops` (resize, adaptive pool, grid_sample, roi_align, box ops) with
//! PyTorch / torchvision, on the CPU kernels and on the composed-tensor-op fallbacks that
//! non-CPU devices use. Fixtures: `tests/parity/gen_ops.py` -> `tests/fixtures/ops/*.safetensors`.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use segkit_core::ops::{
    adaptive_avg_pool2d, adaptive_avg_pool2d_fallback, batched_nms, box_area, box_iou,
    box_iou_fallback, grid_sample, grid_sample_fallback, nms, resize_bilinear,
    resize_bilinear_fallback, resize_nearest, resize_nearest_fallback, roi_align, roi_align_cpu,
    roi_align_fallback, BoxCoder, GridSampleMode, GridSamplePadding,
};
use segkit_core::Error;
use segkit_tests::{assert_close, get, load_fixture};

type Fixture = HashMap<String, Tensor>;

/// Case names of a fixture: the `<case>` of every `<case>.<field>` key, sorted.
fn cases(f: &Fixture, field: &str) -> Vec<String> {
    let suffix = format!(".{field}");
    let mut v: Vec<String> = f
        .keys()
        .filter_map(|k| k.strip_suffix(&suffix).map(str::to_string))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "fixture has no `*.{field}` keys");
    v
}

fn ints(t: &Tensor) -> Vec<i64> {
    t.to_vec1::<i64>().unwrap()
}

fn size2(t: &Tensor) -> (usize, usize) {
    let v = ints(t);
    (v[0] as usize, v[1] as usize)
}

fn scalar_f32(t: &Tensor) -> f32 {
    t.to_vec1::<f32>().unwrap()[0]
}

fn kept(t: &Tensor) -> Vec<usize> {
    ints(t).into_iter().map(|i| i as usize).collect()
}

#[test]
fn resize_matches_interpolate() {
    let f = load_fixture("ops/resize.safetensors");
    for case in cases(&f, "x") {
        let x = get(&f, &format!("{case}.x"));
        let size = size2(get(&f, &format!("{case}.size")));
        for ac in [false, true] {
            let want = get(&f, &format!("{case}.bilinear_ac{}", ac as u8));
            let what = format!("resize_bilinear {case} align_corners={ac}");
            assert_close(
                &format!("{what} cpu"),
                &resize_bilinear(x, size, ac).unwrap(),
                want,
            );
            assert_close(
                &format!("{what} fallback"),
                &resize_bilinear_fallback(x, size, ac).unwrap(),
                want,
            );
        }
        let want = get(&f, &format!("{case}.nearest"));
        let what = format!("resize_nearest {case}");
        assert_close(
            &format!("{what} cpu"),
            &resize_nearest(x, size).unwrap(),
            want,
        );
        assert_close(
            &format!("{what} fallback"),
            &resize_nearest_fallback(x, size).unwrap(),
            want,
        );
    }
}

#[test]
fn resize_non_contiguous_and_other_dtypes() {
    let f = load_fixture("ops/resize.safetensors");
    let x = get(&f, "larger.x");
    // A transposed (non-contiguous) view gives the same result as its contiguous copy.
    let xt = x.transpose(2, 3).unwrap();
    let want = resize_bilinear_fallback(&xt.contiguous().unwrap(), (30, 50), false).unwrap();
    assert_close(
        "resize_bilinear transposed",
        &resize_bilinear(&xt, (30, 50), false).unwrap(),
        &want,
    );
    // f64 input is computed in f32 and returned as f64.
    let want = get(&f, "larger.bilinear_ac1");
    let got = resize_bilinear(&x.to_dtype(DType::F64).unwrap(), (45, 33), true).unwrap();
    assert_eq!(got.dtype(), DType::F64);
    assert_close(
        "resize_bilinear f64",
        &got.to_dtype(DType::F32).unwrap(),
        want,
    );
    // Empty batch.
    let empty = Tensor::zeros((0, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        resize_bilinear(&empty, (8, 8), false).unwrap().dims(),
        [0, 3, 8, 8]
    );
    assert_eq!(resize_nearest(&empty, (8, 8)).unwrap().dims(), [0, 3, 8, 8]);
}

#[test]
fn adaptive_avg_pool_matches_pytorch_bins() {
    let f = load_fixture("ops/pool.safetensors");
    for case in cases(&f, "x") {
        let x = get(&f, &format!("{case}.x"));
        let size = size2(get(&f, &format!("{case}.size")));
        let want = get(&f, &format!("{case}.out"));
        let what = format!("adaptive_avg_pool2d {case}");
        assert_close(
            &format!("{what} cpu"),
            &adaptive_avg_pool2d(x, size).unwrap(),
            want,
        );
        assert_close(
            &format!("{what} fallback"),
            &adaptive_avg_pool2d_fallback(x, size).unwrap(),
            want,
        );
    }
}

#[test]
fn grid_sample_matches_pytorch() {
    let f = load_fixture("ops/grid_sample.safetensors");
    for case in cases(&f, "grid") {
        let x = get(&f, &format!("{case}.x"));
        let grid = get(&f, &format!("{case}.grid"));
        for (mode, mname) in [
            (GridSampleMode::Bilinear, "bilinear"),
            (GridSampleMode::Nearest, "nearest"),
        ] {
            for (pad, pname) in [
                (GridSamplePadding::Zeros, "zeros"),
                (GridSamplePadding::Border, "border"),
            ] {
                for ac in [false, true] {
                    let key = format!("{case}.{mname}_{pname}_ac{}", ac as u8);
                    let want = get(&f, &key);
                    let got = grid_sample(x, grid, mode, pad, ac).unwrap();
                    assert_close(&format!("grid_sample {key} cpu"), &got, want);
                    let got = grid_sample_fallback(x, grid, mode, pad, ac).unwrap();
                    assert_close(&format!("grid_sample {key} fallback"), &got, want);
                }
            }
        }
    }
}

/// Parses `out_<PH>x<PW>_sr<ratio>_al<0|1>`.
fn roi_config(key: &str) -> ((usize, usize), i32, bool) {
    let rest = key.strip_prefix("out_").unwrap();
    let parts: Vec<&str> = rest.split('_').collect();
    let (ph, pw) = parts[0].split_once('x').unwrap();
    let sr: i32 = parts[1].strip_prefix("sr").unwrap().parse().unwrap();
    let al = parts[2].strip_prefix("al").unwrap() == "1";
    ((ph.parse().unwrap(), pw.parse().unwrap()), sr, al)
}

#[test]
fn roi_align_matches_torchvision() {
    let f = load_fixture("ops/roi_align.safetensors");
    let mut checked = 0;
    for group in cases(&f, "rois") {
        let x = get(&f, &format!("{group}.x"));
        let rois = get(&f, &format!("{group}.rois"));
        let scale = scalar_f32(get(&f, &format!("{group}.spatial_scale")));
        let prefix = format!("{group}.out_");
        let mut keys: Vec<&String> = f.keys().filter(|k| k.starts_with(&prefix)).collect();
        keys.sort();
        for key in keys {
            let (size, sr, al) = roi_config(&key[group.len() + 1..]);
            let want = get(&f, key);
            let got = roi_align(x, rois, size, scale, sr, al).unwrap();
            assert_close(&format!("roi_align {key} cpu"), &got, want);
            for (layout, cl) in [("planar", false), ("channels-last", true)] {
                let got = roi_align_cpu(x, rois, size, scale, sr, al, Some(cl)).unwrap();
                assert_close(&format!("roi_align {key} cpu {layout}"), &got, want);
            }
            let got = roi_align_fallback(x, rois, size, scale, sr, al).unwrap();
            assert_close(&format!("roi_align {key} fallback"), &got, want);
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} roi_align configs");
    // The empty RoI set keeps C and the output size.
    assert_eq!(get(&f, "empty.out_7x7_sr2_al0").dims(), [0, 3, 7, 7]);
}

/// The channels-last kernel with several channel blocks (more channels than the fixtures have)
/// agrees with the planar kernel, which follows torchvision's arithmetic order exactly.
#[test]
fn roi_align_kernels_agree_on_many_channels() {
    let (n, c, h, w) = (2, 40, 23, 31);
    let x = Tensor::arange(0f32, (n * c * h * w) as f32, &Device::Cpu)
        .unwrap()
        .affine(0.37, 0.0)
        .unwrap()
        .sin()
        .unwrap()
        .reshape((n, c, h, w))
        .unwrap();
    let rois: Vec<f32> = (0..3)
        .flat_map(|i| {
            let f = i as f32;
            [
                (i % 2) as f32,
                3.0 * f - 4.0,
                2.0 * f + 1.0,
                40.0 + 9.0 * f,
                30.0 + 11.0 * f,
            ]
        })
        .collect();
    let rois = Tensor::from_vec(rois, (3, 5), &Device::Cpu).unwrap();
    for (sr, al) in [(2, false), (-1, true)] {
        let planar = roi_align_cpu(&x, &rois, (7, 5), 0.5, sr, al, Some(false)).unwrap();
        let nhwc = roi_align_cpu(&x, &rois, (7, 5), 0.5, sr, al, Some(true)).unwrap();
        let auto = roi_align(&x, &rois, (7, 5), 0.5, sr, al).unwrap();
        let fallback = roi_align_fallback(&x, &rois, (7, 5), 0.5, sr, al).unwrap();
        assert_close(
            &format!("roi_align sr{sr} channels-last vs planar"),
            &nhwc,
            &planar,
        );
        assert_close(&format!("roi_align sr{sr} auto vs planar"), &auto, &planar);
        assert_close(
            &format!("roi_align sr{sr} fallback vs planar"),
            &fallback,
            &planar,
        );
    }
}

#[test]
fn box_iou_and_area_match_torchvision() {
    let f = load_fixture("ops/boxes.safetensors");
    let (a, b) = (get(&f, "iou.a"), get(&f, "iou.b"));
    let want = get(&f, "iou.out");
    assert_close("box_iou cpu", &box_iou(a, b).unwrap(), want);
    assert_close("box_iou fallback", &box_iou_fallback(a, b).unwrap(), want);
    assert_close("box_area", &box_area(a).unwrap(), get(&f, "area.out"));
}

#[test]
fn nms_matches_torchvision() {
    let f = load_fixture("ops/boxes.safetensors");
    let mut checked = 0;
    for key in f
        .keys()
        .filter(|k| k.starts_with("nms_") && k.contains(".keep_t"))
    {
        let (case, thr) = key.split_once(".keep_t").unwrap();
        let thr = thr.parse::<f32>().unwrap() / 100.0;
        let boxes = get(&f, &format!("{case}.boxes"));
        let scores = get(&f, &format!("{case}.scores"));
        let got = nms(boxes, scores, thr).unwrap();
        assert_eq!(got, kept(get(&f, key)), "nms {key}");
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} nms cases");
}

#[test]
fn batched_nms_matches_torchvision() {
    let f = load_fixture("ops/boxes.safetensors");
    let mut checked = 0;
    for key in f
        .keys()
        .filter(|k| k.starts_with("bnms_") && k.contains(".keep_t"))
    {
        let (case, thr) = key.split_once(".keep_t").unwrap();
        let thr = thr.parse::<f32>().unwrap() / 100.0;
        let boxes = get(&f, &format!("{case}.boxes"));
        let scores = get(&f, &format!("{case}.scores"));
        let idxs = ints(get(&f, &format!("{case}.idxs")));
        let got = batched_nms(boxes, scores, &idxs, thr).unwrap();
        assert_eq!(got, kept(get(&f, key)), "batched_nms {key}");
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} batched_nms cases");
}

#[test]
fn box_coder_matches_torchvision() {
    let f = load_fixture("ops/boxes.safetensors");
    for case in cases(&f, "weights") {
        let w = get(&f, &format!("{case}.weights"))
            .to_vec1::<f32>()
            .unwrap();
        let coder = BoxCoder::new([w[0], w[1], w[2], w[3]]);
        let refs = get(&f, &format!("{case}.reference"));
        let props = get(&f, &format!("{case}.proposals"));
        let enc = get(&f, &format!("{case}.encoded"));
        assert_close(
            &format!("{case} encode cpu"),
            &coder.encode(refs, props).unwrap(),
            enc,
        );
        assert_close(
            &format!("{case} encode fallback"),
            &coder.encode_fallback(refs, props).unwrap(),
            enc,
        );
        let rel = get(&f, &format!("{case}.rel_codes"));
        let dec = get(&f, &format!("{case}.decoded"));
        assert_close(
            &format!("{case} decode cpu"),
            &coder.decode(rel, props).unwrap(),
            dec,
        );
        assert_close(
            &format!("{case} decode fallback"),
            &coder.decode_fallback(rel, props).unwrap(),
            dec,
        );
    }
}

fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap()
}

fn assert_typed<T: std::fmt::Debug>(what: &str, r: segkit_core::Result<T>) {
    match r {
        Err(e @ (Error::InvalidArgument(_) | Error::ShapeMismatch { .. })) => {
            eprintln!("{what}: {e}")
        }
        other => panic!("{what}: expected InvalidArgument or ShapeMismatch, got {other:?}"),
    }
}

#[test]
fn bad_resize_and_pool_arguments_give_typed_errors() {
    let x3 = zeros(&[3, 4, 5]);
    let x = zeros(&[1, 2, 4, 5]);
    assert_typed(
        "resize_bilinear rank 3",
        resize_bilinear(&x3, (2, 2), false),
    );
    assert_typed(
        "resize_bilinear_fallback rank 3",
        resize_bilinear_fallback(&x3, (2, 2), false),
    );
    assert_typed("resize_bilinear size 0", resize_bilinear(&x, (0, 2), true));
    assert_typed(
        "resize_bilinear empty map",
        resize_bilinear(&zeros(&[1, 1, 0, 3]), (2, 2), true),
    );
    assert_typed("resize_nearest rank 3", resize_nearest(&x3, (2, 2)));
    assert_typed("resize_nearest size 0", resize_nearest(&x, (2, 0)));
    assert_typed(
        "adaptive_avg_pool2d rank 3",
        adaptive_avg_pool2d(&x3, (2, 2)),
    );
    assert_typed(
        "adaptive_avg_pool2d size 0",
        adaptive_avg_pool2d(&x, (0, 1)),
    );
    assert_typed(
        "adaptive_avg_pool2d_fallback size 0",
        adaptive_avg_pool2d_fallback(&x, (1, 0)),
    );
}

#[test]
fn bad_grid_sample_arguments_give_typed_errors() {
    let x3 = zeros(&[3, 4, 5]);
    let x = zeros(&[1, 2, 4, 5]);
    let (bl, zp) = (GridSampleMode::Bilinear, GridSamplePadding::Zeros);
    assert_typed(
        "grid_sample rank 3 input",
        grid_sample(&x3, &zeros(&[1, 2, 2, 2]), bl, zp, false),
    );
    assert_typed(
        "grid_sample grid rank 3",
        grid_sample(&x, &zeros(&[1, 2, 2]), bl, zp, false),
    );
    assert_typed(
        "grid_sample grid last dim",
        grid_sample(&x, &zeros(&[1, 2, 2, 3]), bl, zp, false),
    );
    assert_typed(
        "grid_sample grid batch",
        grid_sample(&x, &zeros(&[2, 2, 2, 2]), bl, zp, false),
    );
    assert_typed(
        "grid_sample_fallback grid batch",
        grid_sample_fallback(&x, &zeros(&[2, 2, 2, 2]), bl, zp, false),
    );
}

#[test]
fn bad_roi_align_arguments_give_typed_errors() {
    let x3 = zeros(&[3, 4, 5]);
    let x = zeros(&[1, 2, 4, 5]);
    let rois = Tensor::new(&[[0f32, 0.0, 0.0, 2.0, 2.0]], &Device::Cpu).unwrap();
    assert_typed(
        "roi_align rank 3 input",
        roi_align(&x3, &rois, (2, 2), 1.0, 2, false),
    );
    assert_typed(
        "roi_align rois K x 4",
        roi_align(&x, &zeros(&[3, 4]), (2, 2), 1.0, 2, false),
    );
    assert_typed(
        "roi_align rois rank 1",
        roi_align(&x, &zeros(&[5]), (2, 2), 1.0, 2, false),
    );
    assert_typed(
        "roi_align rois rank 3",
        roi_align(&x, &zeros(&[1, 2, 5]), (2, 2), 1.0, 2, false),
    );
    assert_typed(
        "roi_align_fallback rois K x 4",
        roi_align_fallback(&x, &zeros(&[3, 4]), (2, 2), 1.0, 2, false),
    );
    assert_typed(
        "roi_align output 0",
        roi_align(&x, &rois, (0, 2), 1.0, 2, false),
    );
    let bad_batch = Tensor::new(&[[1f32, 0.0, 0.0, 2.0, 2.0]], &Device::Cpu).unwrap();
    assert_typed(
        "roi_align batch index",
        roi_align(&x, &bad_batch, (2, 2), 1.0, 2, false),
    );
    let neg_batch = Tensor::new(&[[-1f32, 0.0, 0.0, 2.0, 2.0]], &Device::Cpu).unwrap();
    assert_typed(
        "roi_align_fallback batch index",
        roi_align_fallback(&x, &neg_batch, (2, 2), 1.0, 2, false),
    );
    // Empty RoI set: 0 x C x PH x PW on both paths.
    let none = zeros(&[0, 5]);
    assert_eq!(
        roi_align(&x, &none, (3, 4), 1.0, -1, true).unwrap().dims(),
        [0, 2, 3, 4]
    );
    assert_eq!(
        roi_align_fallback(&x, &none, (3, 4), 1.0, -1, true)
            .unwrap()
            .dims(),
        [0, 2, 3, 4]
    );
}

#[test]
fn bad_box_arguments_give_typed_errors() {
    let boxes = zeros(&[3, 4]);
    assert_typed("box_area N x 3", box_area(&zeros(&[3, 3])));
    assert_typed("box_iou rank 1", box_iou(&zeros(&[4]), &boxes));
    assert_typed(
        "box_iou_fallback N x 5",
        box_iou_fallback(&boxes, &zeros(&[2, 5])),
    );
    assert_typed("nms scores length", nms(&boxes, &zeros(&[2]), 0.5));
    assert_typed("nms boxes N x 2", nms(&zeros(&[3, 2]), &zeros(&[3]), 0.5));
    assert_typed(
        "batched_nms idxs length",
        batched_nms(&boxes, &zeros(&[3]), &[0, 1], 0.5),
    );
    assert_eq!(
        batched_nms(&zeros(&[0, 4]), &zeros(&[0]), &[], 0.5).unwrap(),
        Vec::<usize>::new()
    );
    let coder = BoxCoder::new([1.0; 4]);
    assert_typed("encode N mismatch", coder.encode(&boxes, &zeros(&[2, 4])));
    assert_typed(
        "decode rel_codes N x 6",
        coder.decode(&zeros(&[3, 6]), &boxes),
    );
    assert_typed(
        "decode rel_codes rows",
        coder.decode(&zeros(&[2, 8]), &boxes),
    );
    assert_typed(
        "decode_fallback rel_codes rank 1",
        coder.decode_fallback(&zeros(&[12]), &boxes),
    );
}
