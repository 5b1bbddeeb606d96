//! The official checkpoint layout: `panet_mask_step179999.pth` (ShuLiu1993/PANet, released on
//! Google Drive from the README's "Main Results" table), written by PyTorch 0.4 in the legacy
//! (non-zip) serialization as `{step, train_size, batch_size, model, optimizer}`; `model` is
//! `Generalized_RCNN.state_dict()` with no `module.` prefix.
//!
//! segkit's parameter paths equal the official keys, so loading is a format change:
//! [`load_state_dict`] reads the file with segkit-core's legacy reader (the `model` entry) and
//! refuses a key outside [`OFFICIAL_KEY_GROUPS`]; [`crate::ModelConfig::from_state_dict`] then
//! places every key strictly — an unused key is [`segkit_core::Error::UnexpectedWeights`]
//! naming it, a missing one [`segkit_core::Error::MissingWeight`] naming it.
//!
//! [`official_keys`] lists every key of the official module for a config (derived from the
//! module tree of `model_builder.py`, `FPN.py`, `ResNet.py`, `fast_rcnn_heads.py`,
//! `mask_rcnn_heads.py`); a test checks that segkit's model reads exactly these.

use std::path::Path;

use segkit_core::checkpoint::{LoadOptions, StateDict};

use super::PanetConfig;
use crate::{Error, Result};

/// Every key group of the official module and the segkit part that reads it.
pub const OFFICIAL_KEY_GROUPS: &[(&str, &str)] = &[
    (
        "Conv_Body.conv_body.",
        "segkit_backbones::CaffeResNet (res1.{conv1,bn1}, res2..res5 bottlenecks, \
         AffineChannel2d bn*)",
    ),
    (
        "Conv_Body.conv_top.",
        "segkit_necks::PanetFpn 1x1 on C5 + GN",
    ),
    (
        "Conv_Body.topdown_lateral_modules.",
        "PanetFpn laterals on C4, C3, C2 (conv_lateral.{0,1})",
    ),
    (
        "Conv_Body.posthoc_modules.",
        "PanetFpn 3x3 + GN giving P5..P2 (0 = P5)",
    ),
    (
        "Conv_Body.panet_buttomup_conv1_modules.",
        "PanetFpn bottom-up 3x3 stride 2 + GN (0 produces N3)",
    ),
    (
        "Conv_Body.panet_buttomup_conv2_modules.",
        "PanetFpn bottom-up 3x3 + GN",
    ),
    (
        "RPN.",
        "segkit_heads::RpnHead (FPN_RPN_conv, FPN_RPN_cls_score, FPN_RPN_bbox_pred)",
    ),
    (
        "Box_Head.",
        "box head: conv1_head.{0..3} per level, convs.{0,1,3,4,6,7}, fc",
    ),
    ("Box_Outs.", "box outputs: cls_score, bbox_pred"),
    (
        "Mask_Head.",
        "mask head: mask_conv1.{0..3} per level, conv_fcn.{0,1,3,4}, mask_conv4, upconv, \
         mask_conv4_fc, mask_conv5_fc, mask_fc.0",
    ),
    (
        "Mask_Outs.",
        "mask outputs: classify (1x1, one channel per class)",
    ),
];

fn conv_gn(keys: &mut Vec<String>, prefix: &str) {
    keys.push(format!("{prefix}.0.weight"));
    keys.push(format!("{prefix}.1.weight"));
    keys.push(format!("{prefix}.1.bias"));
}

fn body_keys(keys: &mut Vec<String>, depth_blocks: [usize; 4]) {
    let p = "Conv_Body.conv_body";
    keys.push(format!("{p}.res1.conv1.weight"));
    keys.push(format!("{p}.res1.bn1.weight"));
    keys.push(format!("{p}.res1.bn1.bias"));
    for (s, &n) in depth_blocks.iter().enumerate() {
        for b in 0..n {
            let q = format!("{p}.res{}.{b}", s + 2);
            for i in 1..=3 {
                keys.push(format!("{q}.conv{i}.weight"));
                keys.push(format!("{q}.bn{i}.weight"));
                keys.push(format!("{q}.bn{i}.bias"));
            }
            if b == 0 {
                keys.push(format!("{q}.downsample.0.weight"));
                keys.push(format!("{q}.downsample.1.weight"));
                keys.push(format!("{q}.downsample.1.bias"));
            }
        }
    }
}

fn fpn_keys(keys: &mut Vec<String>, cfg: &PanetConfig) {
    let conv = |k: &mut Vec<String>, p: &str, bias: bool| {
        if cfg.fpn.use_gn {
            k.push(format!("{p}.0.weight"));
            if bias {
                k.push(format!("{p}.0.bias"));
            }
            k.push(format!("{p}.1.weight"));
            k.push(format!("{p}.1.bias"));
        } else {
            k.push(format!("{p}.weight"));
            k.push(format!("{p}.bias"));
        }
    };
    conv(keys, "Conv_Body.conv_top", false);
    for i in 0..3 {
        let p = format!("Conv_Body.topdown_lateral_modules.{i}.conv_lateral");
        conv(keys, &p, false);
    }
    for i in 0..4 {
        conv(keys, &format!("Conv_Body.posthoc_modules.{i}"), false);
    }
    if cfg.fpn.bottom_up {
        for i in 0..3 {
            for j in [1, 2] {
                let p = format!("Conv_Body.panet_buttomup_conv{j}_modules.{i}");
                conv(keys, &p, true);
            }
        }
    }
}

/// Every key of the official module for `cfg` (four RoI levels, four box-head convs, the
/// mask head of `mask_rcnn_fcn_head_v1up4convs_gn_adp_ff`), in module order.
///
/// Errors: a backbone depth other than 26, 50, 101 or 152.
pub fn official_keys(cfg: &PanetConfig) -> Result<Vec<String>> {
    let blocks = cfg
        .backbone
        .blocks()
        .map_err(|e| Error::InvalidConfig(format!("{}: {e}", cfg.name)))?;
    let mut keys = Vec::new();
    body_keys(&mut keys, blocks);
    fpn_keys(&mut keys, cfg);
    for m in ["FPN_RPN_conv", "FPN_RPN_cls_score", "FPN_RPN_bbox_pred"] {
        keys.push(format!("RPN.{m}.weight"));
        keys.push(format!("RPN.{m}.bias"));
    }
    for l in 0..4 {
        conv_gn(&mut keys, &format!("Box_Head.conv1_head.{l}"));
    }
    for i in [0, 3, 6] {
        keys.push(format!("Box_Head.convs.{i}.weight"));
        keys.push(format!("Box_Head.convs.{}.weight", i + 1));
        keys.push(format!("Box_Head.convs.{}.bias", i + 1));
    }
    for k in [
        "Box_Head.fc",
        "Box_Outs.cls_score",
        "Box_Outs.bbox_pred",
        "Mask_Head.mask_fc.0",
        "Mask_Head.upconv",
        "Mask_Outs.classify",
    ] {
        keys.push(format!("{k}.weight"));
        keys.push(format!("{k}.bias"));
    }
    for i in [0, 3] {
        keys.push(format!("Mask_Head.conv_fcn.{i}.weight"));
        keys.push(format!("Mask_Head.conv_fcn.{}.weight", i + 1));
        keys.push(format!("Mask_Head.conv_fcn.{}.bias", i + 1));
    }
    for l in 0..4 {
        conv_gn(&mut keys, &format!("Mask_Head.mask_conv1.{l}"));
    }
    for m in ["mask_conv4", "mask_conv4_fc", "mask_conv5_fc"] {
        conv_gn(&mut keys, &format!("Mask_Head.{m}"));
    }
    Ok(keys)
}

/// Reads a PANet checkpoint (the official `{.., model, optimizer}` in either PyTorch format, a
/// bare state dict, or safetensors) as a state dict in the official key names.
///
/// Errors: [`Error::Checkpoint`] naming the file for anything segkit-core cannot read, and for
/// keys outside [`OFFICIAL_KEY_GROUPS`] (a checkpoint of another model), naming them.
pub fn load_state_dict(path: &Path, model: &str) -> Result<StateDict> {
    let sd = StateDict::load_with(path, &LoadOptions::default())
        .map_err(|e| Error::checkpoint(model, path, e))?;
    let unknown: Vec<String> = sd
        .keys()
        .filter(|k| !OFFICIAL_KEY_GROUPS.iter().any(|(g, _)| k.starts_with(g)))
        .map(String::from)
        .collect();
    if !unknown.is_empty() {
        return Err(Error::checkpoint(
            model,
            path,
            segkit_core::Error::UnexpectedWeights { keys: unknown },
        ));
    }
    Ok(sd)
}
