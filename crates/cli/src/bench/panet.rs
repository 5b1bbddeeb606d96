//! The PANet bench cases (PyTorch side: tests/parity/bench_torch_panet.py).
//!
//! `panet_r50_fpn`: `Panet::detect` (blob, body, pyramid, RPN proposals, box head,
//! post-processing, mask head, pasted masks) of `panet_r50_fpn_2x_coco`'s network with
//! segkit-core's synthetic weights (the box / mask output layers scaled as
//! gen_panet_heads.py's `SCALED`, so that the network detects something) on a synthetic
//! 800 x 1216 RGB image at Detectron's default `TEST.SCALE` 800 / `MAX_SIZE` 1333 (scale 1:
//! the blob is 1 x 3 x 800 x 1216). `torchvision_maskrcnn` runs the same on segkit's side,
//! next to torchvision's `maskrcnn_resnet50_fpn` on PyTorch's (the user's alternative).
//!
//! With `SEGKIT_BENCH_STAGES=1` every run also prints one JSON line on stderr with the time of
//! each stage (blob, body, FPN, RPN + proposals, box head + post-processing, mask head, paste)
//! and the proposal / detection counts.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use segkit::heads::panet::{postprocess, Detections, PanetRoiHeads};
use segkit::heads::RpnHead;
use segkit::models::panet::{image_blob, Panet, PanetConfig};
use segkit::necks::PanetFpn;
use segkit_backbones::CaffeResNet;
use segkit_core::testing::{uniform, SyntheticWeights};
use segkit_core::{Backbone, Neck};

use crate::CliError;

use super::Job;

/// The cases, with the shapes PyTorch's side uses too.
pub const CASES: &[(&str, &str)] = &[
    (
        "panet_r50_fpn",
        "PANet R-50-FPN (panet_r50_fpn_2x_coco) detections + pasted masks, 800x1216 image",
    ),
    (
        "torchvision_maskrcnn",
        "segkit's PANet (as panet_r50_fpn) vs torchvision maskrcnn_resnet50_fpn, same image",
    ),
];

/// The image side: `TEST.SCALE` 800 keeps it (scale 1), a multiple of 32.
const IMAGE: (u32, u32) = (800, 1216);

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

fn usage<E: std::fmt::Display>(e: E) -> CliError {
    CliError::Usage(e.to_string())
}

/// `panet_r50_fpn_2x_coco` at Detectron's default test scale (800 / 1333).
fn config() -> PanetConfig {
    let mut c = PanetConfig::r50_fpn_2x_coco();
    c.input.scale = 800;
    c.input.max_size = 1333;
    c
}

/// The synthetic image: pixel value i = floor(256 * uniform("bench.panet.image", n)[i]),
/// interleaved RGB, row-major (bench_torch_panet.py's `image`).
fn image() -> Result<image::RgbImage, CliError> {
    let (h, w) = IMAGE;
    let px: Vec<u8> = uniform("bench.panet.image", (h * w * 3) as usize)
        .into_iter()
        .map(|u| (u * 256.0).floor() as u8)
        .collect();
    image::RgbImage::from_raw(w, h, px).ok_or_else(|| usage("bench image size"))
}

/// The detections' boxes as a `K x 4` tensor (the job's result).
fn boxes_tensor(d: &Detections, dev: &Device) -> Result<Tensor, CliError> {
    let v: Vec<f32> = d.boxes.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(v, (d.boxes.len(), 4), dev)?)
}

/// The job of both cases (see the module docs).
pub fn job(dev: &Device) -> Result<Job, CliError> {
    let cfg = config();
    let vb = scaled_weights().var_builder(DType::F32, dev);
    let img = image()?;
    if std::env::var("SEGKIT_BENCH_STAGES").is_ok_and(|v| v == "1") {
        let staged = Staged::new(&cfg, vb)?;
        let dev = dev.clone();
        return Ok(Box::new(move || {
            let d = staged.run(&img, &dev)?;
            boxes_tensor(&d, &dev)
        }));
    }
    let model = Panet::new(&cfg, vb).map_err(usage)?;
    let dev = dev.clone();
    Ok(Box::new(move || {
        let d = model.detect(&img).map_err(usage)?;
        boxes_tensor(&d, &dev)
    }))
}

/// The parts of `Panet`, built from the same weights, run one stage at a time.
struct Staged {
    cfg: PanetConfig,
    body: CaffeResNet,
    fpn: PanetFpn,
    rpn: RpnHead,
    heads: PanetRoiHeads,
}

impl Staged {
    fn new(cfg: &PanetConfig, vb: VarBuilder<'_>) -> Result<Self, CliError> {
        let body = CaffeResNet::new(&cfg.backbone, vb.pp("Conv_Body.conv_body"))?;
        let fpn = PanetFpn::new(&cfg.fpn, &body.feature_specs(), vb.pp("Conv_Body"))?;
        let specs = fpn.output_specs();
        let rpn = RpnHead::new(&cfg.rpn, &specs, vb.pp("RPN"))?;
        let heads = PanetRoiHeads::new(&cfg.roi_heads, &specs[..4], vb)?;
        Ok(Self {
            cfg: cfg.clone(),
            body,
            fpn,
            rpn,
            heads,
        })
    }

    /// `Panet::detect`, stage by stage, printing the stage times on stderr.
    fn run(&self, img: &image::RgbImage, dev: &Device) -> Result<Detections, CliError> {
        let mut t = Instant::now();
        let mut times: Vec<(&str, f64)> = Vec::new();
        let mut lap = |name, t: &mut Instant| {
            times.push((name, t.elapsed().as_secs_f64() * 1e3));
            *t = Instant::now();
        };
        let blob = image_blob(img, &self.cfg.input, dev).map_err(usage)?;
        lap("blob", &mut t);
        let c = self.body.forward_features(&blob.data, false)?;
        lap("body", &mut t);
        let levels = self.fpn.forward_t(&c, false)?;
        lap("fpn", &mut t);
        let out = self.rpn.forward_t(&levels, false)?;
        let props = self.rpn.proposals(&out, 0, blob.im_info)?;
        lap("rpn", &mut t);
        let feats = &levels[..4];
        let rois = postprocess::mask_rois(&props.boxes, 1.0, 0, dev)?;
        let box_out = self.heads.box_head().forward_t(feats, &rois, false)?;
        let rc = self.heads.config();
        let c = rc.box_head.num_classes;
        let probs = postprocess::class_probs(&box_out.cls_score)?;
        let (s, orig) = (blob.scale, blob.original);
        let decoded =
            postprocess::decode_boxes(&rc.detection, &props.boxes, &box_out.bbox_pred, c, s, orig)?;
        let (b, sc, cl) = postprocess::nms_and_limit(&rc.detection, &probs, &decoded, c)?;
        let mut dets = Detections {
            boxes: b,
            scores: sc,
            classes: cl,
            ..Detections::empty(orig.0, orig.1)
        };
        lap("box", &mut t);
        let mh = self
            .heads
            .mask_head()
            .ok_or_else(|| usage("no mask head"))?;
        let r = postprocess::mask_rois(&dets.boxes, s, 0, dev)?;
        let logits = mh.forward_t(feats, &r, false)?;
        let _ = logits.dims();
        lap("mask", &mut t);
        postprocess::paste_masks(&rc.detection, &mut dets, &logits)?;
        lap("paste", &mut t);
        let stages: Vec<String> = times
            .iter()
            .map(|(n, ms)| format!("\"{n}\": {ms:.1}"))
            .collect();
        eprintln!(
            "{{\"stages_ms\": {{{}}}, \"proposals\": {}, \"detections\": {}}}",
            stages.join(", "),
            props.boxes.len(),
            dets.len()
        );
        Ok(dets)
    }
}
