//! Batch throughput cases of `segkit bench` (`*_b8`): one forward pass over a batch of 8
//! images at 512x512 (8x3x512x512, `synthetic_input("input", ..)` as the Python side draws
//! it). The reported time is the batch's; `cargo xtask bench` turns it into images/s.

use candle_core::{DType, Device};
use segkit_backbones::{ResNet, ResNetConfig};
use segkit_core::testing::{synthetic_input, synthetic_var_builder};

use super::Job;
use crate::CliError;

/// Images per batch of the throughput cases.
pub const BATCH: usize = 8;

/// The throughput cases.
pub const CASES: &[(&str, &str)] = &[
    (
        "resnet50_b8",
        "ResNet-50 forward (C5, output stride 32), batch 8x3x512x512",
    ),
    (
        "pspnet_r50-d8_b8",
        "PSPNet R50-D8 (ADE20K preset) decode logits, batch 8x3x512x512",
    ),
];

fn usage(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

/// Builds the job of a throughput case.
pub fn make(case: &str) -> Result<Job, CliError> {
    let dev = Device::Cpu;
    let x = synthetic_input("input", (BATCH, 3, 512, 512), &dev)?;
    match case {
        "resnet50_b8" => {
            let cfg = ResNetConfig::torchvision(50);
            let net = ResNet::new(&cfg, synthetic_var_builder(DType::F32, &dev))?;
            Ok(Box::new(move || Ok(net.forward(&x, false)?.c5)))
        }
        "pspnet_r50-d8_b8" => {
            let cfg =
                segkit::SegmentorConfig::preset("pspnet_r50-d8_ade20k-512x512").map_err(usage)?;
            let model = segkit::EncoderDecoder::new(&cfg, synthetic_var_builder(DType::F32, &dev))
                .map_err(usage)?;
            Ok(Box::new(move || model.logits(&x, false).map_err(usage)))
        }
        other => Err(usage(format!("unknown throughput case `{other}`"))),
    }
}
