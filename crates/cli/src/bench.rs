//! `segkit bench CASE`: times one case and prints one JSON line. `cargo xtask bench` runs every
//! case here and in PyTorch (tests/parity/bench_torch.py), each in a fresh process so that the
//! peak memory is the case's own, and prints the ratios.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clap::Args;
use segkit_backbones::{ResNet, ResNetConfig};
use segkit_core::ops::{self, Activation, Conv2dParams, GridSampleMode, GridSamplePadding};
use segkit_core::testing::{synthetic_input, synthetic_tensor, synthetic_var_builder};
use segkit_core::Backbone;

use crate::CliError;

mod e2e;
mod panet;
mod throughput;
mod train;
mod train_oneformer;

/// The cases, with the shapes PyTorch's side uses too.
pub const CASES: &[(&str, &str)] = &[
    (
        "resnet50",
        "ResNet-50 forward, 1x3x512x512, output stride 32",
    ),
    (
        "resnet50_os8",
        "ResNet-50 forward, 1x3x512x512, output stride 8 (dilated)",
    ),
    (
        "danet_r50-d8",
        "DANet R50-D8 (ADE20K preset) decode logits, 1x3x512x512",
    ),
    (
        "pspnet_r50-d8",
        "PSPNet R50-D8 (ADE20K preset) decode logits, 1x3x512x512",
    ),
    (
        "fastfcn_jpu_psp",
        "FastFCN R50-D32 JPU + PSP (ADE20K preset) decode logits, 1x3x512x512",
    ),
    (
        "fastfcn_jpu_aspp",
        "FastFCN R50-D32 JPU + ASPP (ADE20K preset) decode logits, 1x3x512x512",
    ),
    (
        "fastfcn_jpu_enc",
        "FastFCN R50-D32 JPU + EncHead (ADE20K preset) decode logits, 1x3x512x512",
    ),
    (
        "swin_t",
        "Swin-T backbone (OneFormer config), 1x3x512x512, stage1..4",
    ),
    (
        "pixel_decoder",
        "OneFormer deformable-attention pixel decoder (Swin-T levels of a 512x512 image)",
    ),
    (
        "oneformer_swin_t",
        "OneFormer Swin-T (oneformer_ade20k_swin_tiny), task semantic, 1x3x512x512",
    ),
    (
        "gscnn_wrn38",
        "Gated-SCNN WRN38 (gscnn_wrn38_cityscapes) seg logits incl. Canny, 1x3x512x1024",
    ),
    (
        "gscnn_r101-d8",
        "Gated-SCNN ResNet-101-D8 (gscnn_r101-d8_cityscapes) seg logits incl. Canny, 1x3x512x1024",
    ),
    ("conv3x3_256", "conv 3x3 256->256, 1x256x128x128"),
    (
        "resize_bilinear",
        "bilinear 1x256x128x128 -> 512x512, align_corners=False",
    ),
    (
        "grid_sample",
        "grid_sample bilinear zeros, 1x256x64x64, grid 1x128x128x2",
    ),
    (
        "roi_align",
        "roi_align 1x256x200x200, 512 rois, 7x7, sampling 2, aligned",
    ),
];

/// Arguments of `segkit bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The case to run (`--list` shows them).
    case: Option<String>,
    /// List the cases.
    #[arg(long)]
    list: bool,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 9)]
    runs: usize,
    /// Untimed warm-up runs.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Input side of the training cases (`train_*`): `--size` x `--size` crops.
    #[arg(long, default_value_t = 512)]
    size: usize,
    /// Batch size of the training cases (at least 2: BatchNorm and PSP's 1x1 pooling).
    #[arg(long, default_value_t = 2)]
    batch: usize,
}

/// A `/proc/self/status` field in MB (`VmHWM` = peak RSS, `VmRSS` = current).
fn status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// How candle's element-wise pool waits for work in this process, as segkit-core left it at
/// load time (`CANDLE_BARRIER_POOL_SPIN_LIMIT=0 (segkit default)` without any variable set by
/// the user); its size is `candle_workers` in the JSON line.
fn candle_pool() -> String {
    let v = std::env::var(segkit_core::runtime::CANDLE_SPIN_VAR).unwrap_or_default();
    let var = segkit_core::runtime::CANDLE_SPIN_VAR;
    match segkit_core::runtime::cpu_threads() {
        Some(segkit_core::runtime::CpuThreads::SegkitDefault) => {
            format!("{var}={v} (segkit default)")
        }
        Some(segkit_core::runtime::CpuThreads::UserSet) => format!("{var}={v} (user)"),
        None => format!("{var}={v} (not configured)"),
    }
}

/// Resets the peak-RSS counter (Linux `clear_refs`), so that the reported peak is the one of
/// the timed runs, not of model construction. PyTorch's side does the same.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

type Job = Box<dyn Fn() -> Result<Tensor, CliError>>;

/// Builds the job of `case` (model or inputs made once, outside the timing).
fn make(case: &str) -> Result<Job, CliError> {
    let dev = Device::Cpu;
    match case {
        "resnet50" => resnet50(32, &dev),
        "resnet50_os8" => resnet50(8, &dev),
        "danet_r50-d8" | "pspnet_r50-d8" | "fastfcn_jpu_psp" | "fastfcn_jpu_aspp"
        | "fastfcn_jpu_enc" => segmentor(case, &dev),
        "swin_t" => swin_t(&dev),
        "pixel_decoder" => pixel_decoder(&dev),
        "oneformer_swin_t" => oneformer_swin_t(&dev),
        "gscnn_wrn38" | "gscnn_r101-d8" => gscnn(case, &dev),
        "conv3x3_256" => conv3x3_256(&dev),
        "resize_bilinear" => resize_bilinear(&dev),
        "grid_sample" => grid_sample(&dev),
        "roi_align" => roi_align(&dev),
        "panet_r50_fpn" | "torchvision_maskrcnn" => panet::job(&dev),
        "resnet50_b8" | "pspnet_r50-d8_b8" => throughput::make(case),
        "e2e_pspnet_cityscapes" | "e2e_oneformer_panoptic" => e2e::make(case),
        other => Err(CliError::Usage(format!(
            "unknown bench case `{other}`; cases: {}",
            CASES
                .iter()
                .chain(panet::CASES)
                .chain(e2e::CASES)
                .chain(throughput::CASES)
                .map(|c| c.0)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The 1x3x512x512 input of the model cases.
fn image_input(dev: &Device) -> Result<Tensor, CliError> {
    Ok(synthetic_input("input", (1, 3, 512, 512), dev)?)
}

/// torchvision's ResNet-50 at output stride `os`: C5.
fn resnet50(os: usize, dev: &Device) -> Result<Job, CliError> {
    // C5 only, as the PyTorch side returns `layer4`'s output: the earlier stages' outputs are
    // dropped as the network goes.
    let cfg = ResNetConfig::torchvision(50)
        .with_output_stride(os)?
        .with_out_indices(&[3]);
    let net = ResNet::new(&cfg, synthetic_var_builder(DType::F32, dev))?;
    let x = image_input(dev)?;
    Ok(Box::new(move || {
        let mut c5 = net.forward_features(&x, false)?;
        c5.pop()
            .ok_or_else(|| CliError::Usage("ResNet returned no C5".into()))
    }))
}

/// The ADE20K preset of an mmseg segmentor case: decode logits.
fn segmentor(case: &str, dev: &Device) -> Result<Job, CliError> {
    let preset = match case {
        "fastfcn_jpu_psp" => "fastfcn_r50-d32_jpu_psp_ade20k-512x512".to_string(),
        "fastfcn_jpu_aspp" => "fastfcn_r50-d32_jpu_aspp_ade20k-512x512".to_string(),
        "fastfcn_jpu_enc" => "fastfcn_r50-d32_jpu_enc_ade20k-512x512".to_string(),
        c => format!("{c}_ade20k-512x512"),
    };
    let cfg =
        segkit::SegmentorConfig::preset(&preset).map_err(|e| CliError::Usage(e.to_string()))?;
    let model = segkit::EncoderDecoder::new(&cfg, synthetic_var_builder(DType::F32, dev))
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let x = image_input(dev)?;
    Ok(Box::new(move || {
        model
            .logits(&x, false)
            .map_err(|e| CliError::Usage(e.to_string()))
    }))
}

/// Gated-SCNN end to end (Canny map included, as the official forward computes it) at
/// 1x3x512x1024: the seg logits.
fn gscnn(case: &str, dev: &Device) -> Result<Job, CliError> {
    use segkit::models::gscnn::{Gscnn, GscnnConfig};
    let cfg = match case {
        "gscnn_wrn38" => GscnnConfig::wrn38_cityscapes(),
        _ => GscnnConfig::r101_d8_cityscapes(),
    };
    let usage = |e: segkit::models::Error| CliError::Usage(e.to_string());
    let model = Gscnn::new(&cfg, synthetic_var_builder(DType::F32, dev)).map_err(usage)?;
    let x = synthetic_input("input", (1, 3, 512, 1024), dev)?;
    Ok(Box::new(move || {
        Ok(model.forward_t(&x, None, false).map_err(usage)?.seg)
    }))
}

/// OneFormer's Swin-T backbone: the last stage.
fn swin_t(dev: &Device) -> Result<Job, CliError> {
    let cfg = segkit_backbones::swin::SwinConfig::oneformer_swin_tiny();
    let net = segkit_backbones::swin::Swin::new(&cfg, synthetic_var_builder(DType::F32, dev))?;
    let x = image_input(dev)?;
    Ok(Box::new(move || {
        let o = net.forward(&x, false)?.into_vec();
        o.into_iter()
            .last()
            .ok_or_else(|| CliError::Usage("Swin returned no features".into()))
    }))
}

/// OneFormer's pixel decoder on Swin-T-shaped levels of a 512x512 image: the mask features.
fn pixel_decoder(dev: &Device) -> Result<Job, CliError> {
    let channels = [96, 192, 384, 768];
    let specs: Vec<segkit_core::FeatureSpec> = channels
        .iter()
        .zip([4, 8, 16, 32])
        .map(|(&c, s)| segkit_core::FeatureSpec::new(c, s))
        .collect();
    let cfg = segkit::necks::MsDeformAttnPixelDecoderConfig::oneformer_ade20k_swin_tiny();
    let dec = segkit::necks::MsDeformAttnPixelDecoder::new(
        &cfg,
        &specs,
        synthetic_var_builder(DType::F32, dev),
    )?;
    let feats = channels
        .iter()
        .zip([128, 64, 32, 16])
        .enumerate()
        .map(|(i, (&c, s))| synthetic_input(&format!("bench.stage{}", i + 1), (1, c, s, s), dev))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Box::new(move || {
        Ok(dec.forward(&feats, false)?.mask_features)
    }))
}

/// OneFormer Swin-T, semantic task: the mask logits.
fn oneformer_swin_t(dev: &Device) -> Result<Job, CliError> {
    let cfg = segkit::OneFormerConfig::ade20k_swin_tiny();
    let model = segkit::OneFormer::new(&cfg, synthetic_var_builder(DType::F32, dev))
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let x = image_input(dev)?;
    let ti = model
        .task_inputs(segkit::oneformer_parts::tokenizer::Task::Semantic)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(Box::new(move || {
        // The inference path of `predict_image`: the final stage's predictions, earlier
        // stages freed as the decoder goes (transformers' model keeps them in its outputs).
        Ok(model
            .forward_final(&x, &ti)
            .map_err(|e| CliError::Usage(e.to_string()))?
            .masks_queries_logits)
    }))
}

fn conv3x3_256(dev: &Device) -> Result<Job, CliError> {
    let x = synthetic_input("input", (1, 256, 128, 128), dev)?;
    let w = synthetic_tensor("conv.weight", (256, 256, 3, 3), DType::F32, dev)?;
    let b = synthetic_tensor("conv.bias", 256, DType::F32, dev)?;
    let p = Conv2dParams {
        padding: 1,
        ..Default::default()
    };
    Ok(Box::new(move || {
        Ok(ops::conv2d(&x, &w, Some(&b), p, Activation::None)?)
    }))
}

fn resize_bilinear(dev: &Device) -> Result<Job, CliError> {
    let x = synthetic_input("input", (1, 256, 128, 128), dev)?;
    Ok(Box::new(move || {
        Ok(ops::resize_bilinear(&x, (512, 512), false)?)
    }))
}

fn grid_sample(dev: &Device) -> Result<Job, CliError> {
    let x = synthetic_input("input", (1, 256, 64, 64), dev)?;
    let g = (synthetic_input("grid", (1, 128, 128, 2), dev)? * 0.55)?;
    Ok(Box::new(move || {
        Ok(ops::grid_sample(
            &x,
            &g,
            GridSampleMode::Bilinear,
            GridSamplePadding::Zeros,
            false,
        )?)
    }))
}

fn roi_align(dev: &Device) -> Result<Job, CliError> {
    let x = synthetic_input("input", (1, 256, 200, 200), dev)?;
    // Boxes in image coordinates (spatial scale 1/4 -> 800 px image).
    let u = ((synthetic_input("rois", (512, 4), dev)? + 2.0)? / 4.0)?;
    let u = u.to_vec2::<f32>()?;
    let mut rois = Vec::with_capacity(512 * 5);
    for r in u {
        let (x1, y1) = (r[0] * 700.0, r[1] * 700.0);
        rois.extend_from_slice(&[
            0.0,
            x1,
            y1,
            x1 + 8.0 + r[2] * 300.0,
            y1 + 8.0 + r[3] * 300.0,
        ]);
    }
    let rois = Tensor::from_vec(rois, (512, 5), dev)?;
    Ok(Box::new(move || {
        Ok(ops::roi_align(&x, &rois, (7, 7), 0.25, 2, true)?)
    }))
}

/// Whether `a` names a training case (`train_*`), which keeps the allocator's default purge
/// delay (see `crate::alloc`).
pub fn is_training_case(a: &BenchArgs) -> bool {
    a.case
        .as_deref()
        .is_some_and(|case| train::CASES.iter().any(|c| c.0 == case))
}

/// Runs `segkit bench`.
pub fn run(a: BenchArgs) -> Result<(), CliError> {
    if a.list || a.case.is_none() {
        for (n, d) in CASES
            .iter()
            .chain(panet::CASES)
            .chain(e2e::CASES)
            .chain(throughput::CASES)
            .chain(train::CASES)
        {
            println!("{n:<20} {d}");
        }
        return Ok(());
    }
    // Recorded before anything is built: segkit-core's load-time default, not a layer's call.
    let pool = candle_pool();
    let training = is_training_case(&a);
    let case = a.case.unwrap_or_default();
    if training {
        return train::run(&case, a.size, a.batch, a.runs, a.warmup, &pool);
    }
    let job = make(&case)?;
    reset_peak_rss();
    let rss_before = status_mb("VmRSS:");
    for _ in 0..a.warmup {
        job()?;
    }
    let mut ms = Vec::with_capacity(a.runs.max(1));
    for _ in 0..a.runs.max(1) {
        let t = Instant::now();
        let y = job()?;
        // Make sure the result is materialised.
        let _ = y.dims();
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let median = ms[ms.len() / 2];
    println!(
        "{{\"impl\": \"segkit\", \"case\": \"{case}\", \"median_ms\": {median:.3}, \"min_ms\": {:.3}, \"runs\": {}, \"peak_rss_mb\": {:.1}, \"forward_mb\": {:.1}, \"candle_pool\": \"{pool}\", \"candle_workers\": {}, \"purge_delay_ms\": {}}}",
        ms[0],
        ms.len(),
        status_mb("VmHWM:"),
        status_mb("VmHWM:") - rss_before,
        // The worker threads of candle's element-wise pool (0: its ops run on the caller).
        candle_core::utils::barrier_pool().n_workers(),
        crate::alloc::purge_delay_ms()
    );
    Ok(())
}
