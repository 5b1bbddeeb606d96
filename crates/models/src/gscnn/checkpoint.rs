//! The official checkpoint layout (`best_cityscapes_checkpoint.pth`, nv-tlabs/GSCNN `train.py`):
//! `{state_dict, optimizer, epoch, mean_iu}`, the state dict's keys prefixed `module.`
//! (DataParallel), written by PyTorch 1.0 (legacy, non-zip serialization).
//!
//! segkit's parameter paths equal the official keys below `module.`, so loading is a format
//! change: [`load_state_dict`] reads the file with segkit-core's reader (which finds the nested
//! `state_dict` and removes the `module.` prefix, whichever PyTorch format wrote it) and
//! [`crate::ModelConfig::from_state_dict`] places every key strictly — a key of the file that
//! the model does not use is an [`segkit_core::Error::UnexpectedWeights`] naming it, a key the
//! model needs and the file lacks a [`segkit_core::Error::MissingWeight`] with near matches.
//!
//! [`OFFICIAL_KEY_GROUPS`] is the table of every key group of the official module and the
//! segkit part that reads it; every group is used (`dsn1` is loaded though the reference's
//! forward never runs it), BatchNorm's `num_batches_tracked` aside.

use std::path::Path;

use segkit_core::checkpoint::{LoadOptions, StateDict};

use crate::{Error, Result};

/// Every top-level key group of the official GSCNN module (below `module.`) and the segkit
/// part that reads it.
pub const OFFICIAL_KEY_GROUPS: &[(&str, &str)] = &[
    ("mod1.", "segkit_backbones::WideResNet (mod1.conv1)"),
    (
        "mod2.",
        "WideResNet mod2 (blocks: bn1.0, convs.{conv1,bn2.0,conv2}, proj_conv)",
    ),
    ("mod3.", "WideResNet mod3"),
    ("mod4.", "WideResNet mod4"),
    ("mod5.", "WideResNet mod5"),
    (
        "mod6.",
        "WideResNet mod6 (bottleneck: convs.{conv1,bn2.0,conv2,bn3.0,conv3})",
    ),
    ("mod7.", "WideResNet mod7"),
    ("dsn1.", "ShapeStream (loaded, unused as in the reference)"),
    ("dsn3.", "ShapeStream side output on m3"),
    ("dsn4.", "ShapeStream side output on m4"),
    ("dsn7.", "ShapeStream side output on m7"),
    ("res1.", "ShapeStream BasicBlock 1"),
    ("res2.", "ShapeStream BasicBlock 2"),
    ("res3.", "ShapeStream BasicBlock 3"),
    ("d1.", "ShapeStream 1x1 64 -> 32"),
    ("d2.", "ShapeStream 1x1 32 -> 16"),
    ("d3.", "ShapeStream 1x1 16 -> 8"),
    ("gate1.", "GatedSpatialConv (weight, _gate_conv.{0,1,3,4})"),
    ("gate2.", "GatedSpatialConv"),
    ("gate3.", "GatedSpatialConv"),
    ("fuse.", "ShapeStream 1x1 8 -> 1"),
    ("cw.", "GscnnHead Canny fusion 1x1 2 -> 1"),
    ("aspp.", "GscnnAspp (img_conv, edge_conv, features.0..3)"),
    ("bot_fine.", "GscnnDecoder"),
    ("bot_aspp.", "GscnnDecoder"),
    ("final_seg.", "GscnnDecoder (0, 1, 3, 4, 6)"),
];

/// Reads a Gated-SCNN checkpoint (the official `{state_dict, ...}` with `module.` keys, a
/// bare state dict, or safetensors) as a state dict in the official key names.
///
/// Errors: [`Error::Checkpoint`] naming the file for anything segkit-core cannot read, and for
/// a key outside [`OFFICIAL_KEY_GROUPS`] (a checkpoint of another model) with the key named.
pub fn load_state_dict(path: &Path, model: &str) -> Result<StateDict> {
    let sd = StateDict::load_with(path, &LoadOptions::default())
        .map_err(|e| Error::checkpoint(model, path, e))?;
    let resnet =
        |k: &str| k.starts_with("conv1.") || k.starts_with("bn1.") || k.starts_with("layer");
    let unknown: Vec<String> = sd
        .keys()
        .filter(|k| !segkit_core::checkpoint::is_ignored_key(k))
        .filter(|k| !OFFICIAL_KEY_GROUPS.iter().any(|(g, _)| k.starts_with(g)) && !resnet(k))
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
