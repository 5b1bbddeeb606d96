//! PANet's training targets (segkit-core `ops::detection::{rpn_targets, sample_rois,
//! mask_targets}`) and losses (segkit-losses `detection`) against
//! tests/fixtures/panet_targets (tests/parity/gen_panet_targets.py).
//!
//! Oracles (see the generator's docstring):
//! - targets: numpy WRITTEN FROM THE OFFICIAL MATH (ShuLiu1993/PANet `roi_data/rpn.py`,
//!   `roi_data/fast_rcnn.py`, `roi_data/mask_rcnn.py`, `json_dataset.add_proposals`,
//!   `cython_bbox`), the RPN labels computed on Detectron's 1408-square "wide" anchor fields
//!   and narrowed to the feature maps, as the official losses do; numpy's random draws are
//!   recorded and replayed here through `ReplaySampler`;
//! - polygon masks: INDEPENDENT, pycocotools' own `frPyObjects` / `decode` (segkit-data's
//!   `Rle::from_polygons` rasterises on the Rust side);
//! - bitmap masks: INDEPENDENT, torchvision's `roi_align(aligned=False)` binarised at 0.5;
//! - losses and gradients: PyTorch written from the official math on torch's own BCE / CE,
//!   autograd gradients.
//!
//! Full size: two images (388x292 at scale 4/3 -> 517x389, 401x417 at 1.2 -> 481x500) in a
//! 544x512 batch, RPN levels 2..6 (69,576 anchors per image), 24 and 45 instances with
//! polygons and crowd boxes, 2000 proposals each, 512 RoIs per image, 81 classes, 28x28 masks.
//! Every element of every target, loss and gradient is compared (sparse reference blobs are
//! expanded to dense, and every other element must be zero).

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use segkit::core::ops::detection::{
    self as det, Box4, GtInstances, GtMask, LevelMapper, MaskTargets, RecordedDraw, ReplaySampler,
    RoiSamplerConfig, RoiTargets, RpnTargetConfig, RpnTargets,
};
use segkit::core::testing::uniform;
use segkit::data::Rle;
use segkit::losses::detection::{
    fast_rcnn_losses, fpn_rpn_losses, mask_rcnn_loss, RpnLevelInputs, PANET_BOX_BETA,
};
use segkit_tests::{get, load_fixture};

const LEVELS: [(usize, usize, usize); 5] = [
    (2, 136, 128),
    (3, 68, 64),
    (4, 34, 32),
    (5, 17, 16),
    (6, 9, 8),
];
const K: usize = 81;
const M: usize = 28;

type Fx = HashMap<String, Tensor>;

fn fixture() -> Fx {
    load_fixture("panet_targets/targets.safetensors")
}

fn f32s(f: &Fx, k: &str) -> Vec<f32> {
    get(f, k).flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn f64s(f: &Fx, k: &str) -> Vec<f64> {
    get(f, k).flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn i64s(f: &Fx, k: &str) -> Vec<i64> {
    get(f, k).flatten_all().unwrap().to_vec1::<i64>().unwrap()
}

fn u8s(f: &Fx, k: &str) -> Vec<u8> {
    get(f, k).flatten_all().unwrap().to_vec1::<u8>().unwrap()
}

fn boxes(v: &[f32]) -> Vec<Box4> {
    v.chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect()
}

/// A reference blob stored as (flat index, value) pairs, expanded to `len` elements.
fn dense(f: &Fx, prefix: &str, len: usize) -> Vec<f32> {
    let mut out = vec![0f32; len];
    for (i, v) in i64s(f, &format!("{prefix}.idx"))
        .into_iter()
        .zip(f32s(f, &format!("{prefix}.val")))
    {
        out[i as usize] = v;
    }
    out
}

/// Asserts `max|got - want| <= rtol * max(floor, max|want|)` over every element; returns the
/// max difference.
fn close(what: &str, got: &[f32], want: &[f32], rtol: f64, floor: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let m = want.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let d = got.iter().zip(want).fold(0f64, |d, (&a, &b)| {
        assert!(a.is_finite(), "{what}: non-finite output");
        d.max((f64::from(a) - f64::from(b)).abs())
    });
    let tol = rtol * m.max(floor);
    eprintln!("{what}: max|diff| = {d:.3e}, max|ref| = {m:.3e}, tol = {tol:.3e}");
    assert!(d <= tol, "{what}: max|diff| {d:e} > tol {tol:e}");
    d
}

fn replay(f: &Fx, prefix: &str) -> ReplaySampler {
    let head = i64s(f, &format!("{prefix}.head"));
    let pos = i64s(f, &format!("{prefix}.positions"));
    let mut at = 0usize;
    let draws = head
        .chunks_exact(3)
        .map(|h| {
            let k = h[2] as usize;
            let positions = pos[at..at + k].iter().map(|&p| p as usize).collect();
            at += k;
            RecordedDraw {
                n: h[0] as usize,
                with_replacement: h[1] == 1,
                positions,
            }
        })
        .collect();
    ReplaySampler::new(draws)
}

struct Image {
    gt: Vec<Box4>,
    classes: Vec<usize>,
    crowd: Vec<bool>,
    polys: Vec<Vec<Vec<f64>>>,
    proposals: Vec<Box4>,
    /// original h, w, scale, scaled h, w
    info: Vec<f64>,
}

impl Image {
    fn load(f: &Fx, i: usize) -> Image {
        let xy = f64s(f, &format!("img{i}.poly_xy"));
        let lens = i64s(f, &format!("img{i}.poly_len"));
        let mut parts = Vec::new();
        let mut at = 0usize;
        for l in lens {
            parts.push(xy[at..at + l as usize].to_vec());
            at += l as usize;
        }
        let mut parts = parts.into_iter();
        let polys = i64s(f, &format!("img{i}.poly_parts"))
            .into_iter()
            .map(|n| parts.by_ref().take(n as usize).collect())
            .collect();
        Image {
            gt: boxes(&f32s(f, &format!("img{i}.gt_boxes"))),
            classes: i64s(f, &format!("img{i}.classes"))
                .into_iter()
                .map(|c| c as usize)
                .collect(),
            crowd: u8s(f, &format!("img{i}.crowd"))
                .into_iter()
                .map(|c| c != 0)
                .collect(),
            polys,
            proposals: boxes(&f32s(f, &format!("img{i}.proposals"))),
            info: f64s(f, &format!("img{i}.info")),
        }
    }

    fn gt(&self) -> GtInstances<'_> {
        GtInstances {
            boxes: &self.gt,
            classes: &self.classes,
            crowd: &self.crowd,
        }
    }
}

fn anchors() -> Vec<Box4> {
    let mut out = Vec::new();
    for &(lvl, h, w) in &LEVELS {
        let stride = (1u32 << lvl) as f64;
        let size = 32.0 * (1u32 << (lvl - 2)) as f64;
        let cell = det::detectron_cell_anchors(stride, &[size], &[0.5, 1.0, 2.0]).unwrap();
        out.extend(det::grid_anchors(&cell, stride, h, w));
    }
    out
}

fn rpn_for(f: &Fx, img: &Image, i: usize) -> RpnTargets {
    let gt: Vec<Box4> = img
        .gt
        .iter()
        .zip(&img.crowd)
        .filter(|(_, &c)| !c)
        .map(|(b, _)| *b)
        .collect();
    let gt = det::scale_boxes(&gt, img.info[2]);
    let mut s = replay(f, &format!("draws.rpn{i}"));
    let t = det::rpn_targets(
        &anchors(),
        &gt,
        img.info[3] as f32,
        img.info[4] as f32,
        &RpnTargetConfig::detectron(),
        &mut s,
    )
    .unwrap();
    assert_eq!(s.remaining(), 0, "image {i}: every recorded RPN draw used");
    t
}

fn rois_for(f: &Fx, img: &Image, i: usize) -> RoiTargets {
    // add_proposals: rois * (1 / im_scale), the scale read back as float32.
    let inv = 1.0 / f64::from(img.info[2] as f32);
    let props = det::scale_boxes(&img.proposals, inv);
    let mut s = replay(f, &format!("draws.roi{i}"));
    let t = det::sample_rois(&props, &img.gt(), &RoiSamplerConfig::panet(K), &mut s).unwrap();
    assert_eq!(s.remaining(), 0, "image {i}: every recorded RoI draw used");
    t
}

fn rasterize(p: &[Vec<f64>], m: usize) -> segkit::core::Result<Vec<u8>> {
    Ok(Rle::from_polygons(p, m, m)?.to_mask())
}

fn masks_for(img: &Image, rois: &RoiTargets) -> MaskTargets {
    let gm: Vec<GtMask<'_>> = img.polys.iter().map(|p| GtMask::Polygons(p)).collect();
    det::mask_targets(
        rois,
        &img.gt(),
        &gm,
        M,
        det::BoxConvention::Legacy,
        &mut rasterize,
    )
    .unwrap()
}

#[test]
fn rpn_labels_sampling_and_box_targets() {
    let f = fixture();
    for i in 0..2 {
        let img = Image::load(&f, i);
        let t = rpn_for(&f, &img, i);
        let mut offset = 0;
        for &(lvl, h, w) in &LEVELS {
            let lv = t.level(offset, h, w, 3).unwrap();
            offset += h * w * 3;
            let want: Vec<i32> = u8s(&f, &format!("rpn{i}.l{lvl}.labels"))
                .into_iter()
                .map(|v| i32::from(v) - 1)
                .collect();
            assert_eq!(lv.labels, want, "image {i} level {lvl}: labels");
            let n = 12 * h * w;
            // bbox_transform_inv in f32; `ln` may differ from numpy's by an ulp.
            close(
                &format!("rpn{i} l{lvl} targets"),
                &lv.bbox_targets,
                &dense(&f, &format!("rpn{i}.l{lvl}.targets"), n),
                1e-6,
                1.0,
            );
            assert_eq!(
                lv.inside_weights,
                dense(&f, &format!("rpn{i}.l{lvl}.inw"), n),
                "image {i} level {lvl}: inside"
            );
            assert_eq!(
                lv.outside_weights,
                dense(&f, &format!("rpn{i}.l{lvl}.outw"), n),
                "image {i} level {lvl}: outside"
            );
        }
        assert_eq!(offset, t.labels.len());
        let fg = t.labels.iter().filter(|&&l| l == 1).count();
        let bg = t.labels.iter().filter(|&&l| l == 0).count();
        eprintln!("image {i}: {} anchors, {fg} fg, {bg} bg", t.labels.len());
    }
}

#[test]
fn roi_sampling_box_targets_and_levels() {
    let f = fixture();
    let mapper = LevelMapper::detectron();
    for i in 0..2 {
        let img = Image::load(&f, i);
        let t = rois_for(&f, &img, i);
        assert_eq!(
            t.rois,
            boxes(&f32s(&f, &format!("roi{i}.boxes"))),
            "image {i}: sampled boxes"
        );
        let labels: Vec<usize> = i64s(&f, &format!("roi{i}.labels"))
            .into_iter()
            .map(|v| v as usize)
            .collect();
        assert_eq!(t.labels, labels, "image {i}: labels");
        assert_eq!(t.num_fg, labels.iter().filter(|&&l| l > 0).count());
        let n = t.rois.len() * 4 * K;
        close(
            &format!("roi{i} targets"),
            &t.bbox_targets,
            &dense(&f, &format!("roi{i}.targets"), n),
            1e-6,
            1.0,
        );
        assert_eq!(
            t.inside_weights,
            dense(&f, &format!("roi{i}.inw"), n),
            "image {i}: inside"
        );
        assert_eq!(
            t.outside_weights,
            dense(&f, &format!("roi{i}.outw"), n),
            "image {i}: outside"
        );
        let scaled = det::scale_boxes(&t.rois, img.info[2]);
        assert_eq!(
            scaled,
            boxes(&f32s(&f, &format!("roi{i}.rois"))),
            "image {i}: rois blob"
        );
        let lv: Vec<i64> = det::map_rois_to_levels(&scaled, &mapper)
            .into_iter()
            .map(|l| l as i64)
            .collect();
        assert_eq!(
            lv,
            i64s(&f, &format!("roi{i}.levels")),
            "image {i}: rois levels"
        );
        eprintln!("image {i}: {} RoIs, {} fg", t.rois.len(), t.num_fg);
    }
}

#[test]
fn mask_targets_from_polygons_and_bitmaps() {
    let f = fixture();
    let mapper = LevelMapper::detectron();
    for i in 0..2 {
        let img = Image::load(&f, i);
        let rois = rois_for(&f, &img, i);
        let m = masks_for(&img, &rois);
        assert_eq!(
            m.rois,
            boxes(&f32s(&f, &format!("mask{i}.rois"))),
            "image {i}: mask rois"
        );
        let cls: Vec<usize> = i64s(&f, &format!("mask{i}.classes"))
            .into_iter()
            .map(|v| v as usize)
            .collect();
        assert_eq!(m.classes, cls, "image {i}: mask classes");
        let want: Vec<i32> = u8s(&f, &format!("mask{i}.targets"))
            .into_iter()
            .map(i32::from)
            .collect();
        assert_eq!(m.masks, want, "image {i}: mask targets");
        assert_eq!(
            m.roi_has_mask,
            rois.labels.iter().map(|&l| l > 0).collect::<Vec<_>>()
        );
        let lv: Vec<i64> =
            det::map_rois_to_levels(&det::scale_boxes(&m.rois, img.info[2]), &mapper)
                .into_iter()
                .map(|l| l as i64)
                .collect();
        assert_eq!(
            lv,
            i64s(&f, &format!("mask{i}.levels")),
            "image {i}: mask levels"
        );
        let cs = m.class_specific(K).unwrap();
        for (r, &c) in m.classes.iter().enumerate() {
            for k in 0..K {
                let ch = &cs[(r * K + k) * M * M..(r * K + k + 1) * M * M];
                if k == c {
                    assert_eq!(ch, &m.masks[r * M * M..(r + 1) * M * M]);
                } else {
                    assert!(ch.iter().all(|&v| v == -1));
                }
            }
        }
        eprintln!(
            "image {i}: {} mask targets, {} foreground pixels",
            m.classes.len(),
            want.iter().filter(|&&v| v == 1).count()
        );
    }
    // Bitmaps (the polygons rasterised at the image size) through roi_align, image 1.
    let img = Image::load(&f, 1);
    let rois = rois_for(&f, &img, 1);
    let (h, w) = (img.info[0] as usize, img.info[1] as usize);
    let bitmaps: Vec<Vec<u8>> = img
        .polys
        .iter()
        .map(|p| Rle::from_polygons(p, h, w).unwrap().to_mask())
        .collect();
    let gm: Vec<GtMask<'_>> = bitmaps
        .iter()
        .map(|b| GtMask::Bitmap {
            mask: b,
            height: h,
            width: w,
        })
        .collect();
    let m = det::mask_targets(
        &rois,
        &img.gt(),
        &gm,
        M,
        det::BoxConvention::Legacy,
        &mut rasterize,
    )
    .unwrap();
    let want: Vec<i32> = u8s(&f, "bitmap1.targets")
        .into_iter()
        .map(i32::from)
        .collect();
    let diff = m.masks.iter().zip(&want).filter(|(a, b)| a != b).count();
    eprintln!("bitmap targets: {diff} of {} pixels differ", want.len());
    assert_eq!(m.masks, want, "image 1: bitmap mask targets");
}

fn synth(key: &str, dims: &[usize], scale: f64, shift: f64) -> Var {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = uniform(key, n)
        .into_iter()
        .map(|u| (scale * u + shift) as f32)
        .collect();
    Var::from_tensor(&Tensor::from_vec(v, dims, &Device::Cpu).unwrap()).unwrap()
}

/// A loss value vs the fixture's: `rtol 1e-5` (summation order).
fn loss_close(what: &str, got: &Tensor, f: &Fx, key: &str) {
    let g = got.to_scalar::<f32>().unwrap();
    close(what, &[g], &f32s(f, key), 1e-5, 1e-3);
}

/// A gradient vs the reference, `rtol 1e-5` of the gradient's own largest element.
fn grad_close(what: &str, g: &candle_core::backprop::GradStore, v: &Var, want: &[f32]) {
    let got = g.get(v.as_tensor()).expect("gradient");
    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    close(what, &got, want, 1e-5, 0.0);
}

fn t(v: Vec<f32>, dims: &[usize]) -> Tensor {
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// RPN losses over levels 2..6 for both images, and their gradients.
fn check_rpn_losses(f: &Fx, rpn: &[RpnTargets]) {
    let (mut vars, mut blobs, mut offset) = (Vec::new(), Vec::new(), 0);
    for &(lvl, h, w) in &LEVELS {
        let lv: Vec<_> = rpn
            .iter()
            .map(|r| r.level(offset, h, w, 3).unwrap())
            .collect();
        offset += h * w * 3;
        let labels: Vec<f32> = lv
            .iter()
            .flat_map(|l| l.labels.iter().map(|&v| v as f32))
            .collect();
        let cat = |g: fn(&det::RpnLevelTargets) -> &Vec<f32>| {
            t(
                lv.iter().flat_map(|l| g(l).clone()).collect(),
                &[2, 12, h, w],
            )
        };
        blobs.push([
            t(labels, &[2, 3, h, w]),
            cat(|l| &l.bbox_targets),
            cat(|l| &l.inside_weights),
            cat(|l| &l.outside_weights),
        ]);
        let key = |k: &str| format!("panet_targets.rpn_{k}{lvl}");
        let lo = synth(&key("logits"), &[2, 3, h, w], 8.0, -4.0);
        let de = synth(&key("deltas"), &[2, 12, h, w], 2.0, -1.0);
        vars.push((lvl, lo, de));
    }
    let inputs: Vec<RpnLevelInputs<'_>> = vars
        .iter()
        .zip(&blobs)
        .map(|((_, lo, de), b)| RpnLevelInputs {
            logits: lo.as_tensor(),
            deltas: de.as_tensor(),
            labels: &b[0],
            bbox_targets: &b[1],
            inside_weights: &b[2],
            outside_weights: &b[3],
        })
        .collect();
    let l = fpn_rpn_losses(&inputs, 256).unwrap();
    loss_close("loss rpn cls", &l.cls, f, "loss.rpn_cls");
    loss_close("loss rpn bbox", &l.bbox, f, "loss.rpn_bbox");
    let g = (l.cls + l.bbox).unwrap().backward().unwrap();
    for (lvl, lo, de) in &vars {
        let want = dense(
            f,
            &format!("grad.rpn_logits{lvl}"),
            lo.as_tensor().elem_count(),
        );
        grad_close(&format!("grad rpn logits{lvl}"), &g, lo, &want);
        let want = dense(
            f,
            &format!("grad.rpn_deltas{lvl}"),
            de.as_tensor().elem_count(),
        );
        grad_close(&format!("grad rpn deltas{lvl}"), &g, de, &want);
    }
}

/// Box-head losses on the 1024 RoIs of both images, and their gradients.
fn check_fast_rcnn_losses(f: &Fx, rois: &[RoiTargets]) {
    let labels: Vec<usize> = rois.iter().flat_map(|r| r.labels.clone()).collect();
    let r = labels.len();
    let cat = |g: fn(&RoiTargets) -> &Vec<f32>| {
        t(
            rois.iter().flat_map(|x| g(x).clone()).collect(),
            &[r, 4 * K],
        )
    };
    let tg = cat(|x| &x.bbox_targets);
    let (iw, ow) = (cat(|x| &x.inside_weights), cat(|x| &x.outside_weights));
    let cls = synth("panet_targets.cls_score", &[r, K], 6.0, -3.0);
    let bbox = synth("panet_targets.bbox_pred", &[r, 4 * K], 2.0, -1.0);
    let (c, b) = (cls.as_tensor(), bbox.as_tensor());
    let l = fast_rcnn_losses(c, b, &labels, &tg, &iw, &ow, PANET_BOX_BETA).unwrap();
    loss_close("loss fast cls", &l.cls, f, "loss.fast_cls");
    loss_close("loss fast bbox", &l.bbox, f, "loss.fast_bbox");
    assert_eq!(l.accuracy, f32s(f, "loss.fast_acc")[0]);
    let g = (l.cls + l.bbox).unwrap().backward().unwrap();
    grad_close("grad cls_score", &g, &cls, &f32s(f, "grad.cls_score"));
    let want = dense(f, "grad.bbox_pred", r * 4 * K);
    grad_close("grad bbox_pred", &g, &bbox, &want);
}

/// Mask loss on the 256 foreground RoIs (81 x 28 x 28 logits each), and its gradient: the
/// class channel vs the reference, every other channel exactly zero.
fn check_mask_loss(f: &Fx, masks: &[MaskTargets]) {
    let classes: Vec<usize> = masks.iter().flat_map(|m| m.classes.clone()).collect();
    let rm = classes.len();
    let tgt: Vec<f32> = masks
        .iter()
        .flat_map(|m| m.masks.iter().map(|&v| v as f32))
        .collect();
    let logits = synth("panet_targets.mask_logits", &[rm, K, M, M], 8.0, -4.0);
    let tgt = t(tgt, &[rm, M, M]);
    let l = mask_rcnn_loss(logits.as_tensor(), &classes, &tgt, 1.0).unwrap();
    loss_close("loss mask", &l, f, "loss.mask");
    let g = l.backward().unwrap();
    let g = g.get(logits.as_tensor()).expect("gradient");
    let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mm = M * M;
    let mut picked = Vec::with_capacity(rm * mm);
    for (i, &c) in classes.iter().enumerate() {
        for k in 0..K {
            let ch = &g[(i * K + k) * mm..(i * K + k + 1) * mm];
            if k == c {
                picked.extend_from_slice(ch);
            } else {
                assert!(
                    ch.iter().all(|&v| v == 0.0),
                    "mask grad of RoI {i} class {k}"
                );
            }
        }
    }
    let want = f32s(f, "grad.mask_class_channel");
    close(
        "grad mask logits (class channel)",
        &picked,
        &want,
        1e-5,
        0.0,
    );
}

#[test]
fn losses_and_gradients_match_torch() {
    let f = fixture();
    let imgs: Vec<Image> = (0..2).map(|i| Image::load(&f, i)).collect();
    let rpn: Vec<RpnTargets> = (0..2).map(|i| rpn_for(&f, &imgs[i], i)).collect();
    let rois: Vec<RoiTargets> = (0..2).map(|i| rois_for(&f, &imgs[i], i)).collect();
    let masks: Vec<MaskTargets> = (0..2).map(|i| masks_for(&imgs[i], &rois[i])).collect();
    check_rpn_losses(&f, &rpn);
    check_fast_rcnn_losses(&f, &rois);
    check_mask_loss(&f, &masks);
}
