"""Composition parity fixtures: mmseg's SwinTransformer (tiny) + DAHead, built from ONE mmseg
config dict with mmseg's own `MODELS.build`, against segkit's EncoderDecoder built from the
equivalent segkit config (tests/fixtures/compose/segkit_config.json).

The mmseg model (`MODEL` below): EncoderDecoder, backbone SwinTransformer as
configs/_base_/models/upernet_swin.py sets it (Swin-T: embed_dims 96, depths (2, 2, 6, 2),
heads (3, 6, 12, 24), window 7, mlp_ratio 4, qkv_bias, patch_norm, drop_path_rate 0.3,
out_indices (0, 1, 2, 3)), no neck, DAHead on the last stage (in_channels 768, in_index 3,
channels 512, pam_channels 64, 19 classes) and upernet_swin's auxiliary FCNHead on stage 3
(in_channels 384, in_index 2, channels 256, one conv, no concat). BN instead of SyncBN (the
same at inference, same keys).

Weights: every parameter and float buffer of the whole EncoderDecoder is set to its synthetic
value (synth.synthetic_values of its state-dict key, `backbone.*`, `decode_head.*`,
`auxiliary_head.*`), except mmseg's `relative_position_index` buffers: they are an integer
index that mmseg computes from the window size (a synthetic value would be no index at all),
so they keep mmseg's values; one copy is stored for the Rust side's state dict.

Files (tests/fixtures/compose/):
- mmseg_config.json: the mmseg config dict, as built;
- mmseg_state_dict_keys.json: every key of the model's state_dict with its shape, in order;
- swin_danet_1x3x512x512.safetensors: every head's logits (`logits` = DAHead's pam_cam,
  `pam_logits`, `cam_logits`, `aux_logits`), eval mode, whole tensors, on
  synth.synthetic_input((1, 3, 512, 512)); plus `relative_position_index` (49 x 49 int64);
- swin_danet_1x3x483x357.safetensors: the same at 483x357, a size that is neither a multiple of
  the patch (4) nor of 32, so the patch embedding, every window partition and the patch merging
  of an odd map (61 -> 31, 45 -> 23) pad;
- swin_danet_backbone_1x3x61x45.safetensors: the four normalised backbone outputs
  (`stage1`..`stage4`, mmseg's norm0..norm3) of the same model on a 61x45 input (maps smaller
  than a window, odd merges), whole tensors.

Run by `cargo xtask fixtures`, or: python tests/parity/gen_compose.py tests/fixtures
"""
import copy
import json
import os
import sys
import time

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import synth  # noqa: E402
import mmseg_stub  # noqa: E402,F401  (stubs mmcv.ops before importing mmseg)

NUM_CLASSES = 19
NORM_CFG = dict(type="BN", requires_grad=True)
MODEL = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(
        type="SegDataPreProcessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255),
    pretrained=None,
    backbone=dict(
        type="SwinTransformer",
        pretrain_img_size=224,
        embed_dims=96,
        patch_size=4,
        window_size=7,
        mlp_ratio=4,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        strides=(4, 2, 2, 2),
        out_indices=(0, 1, 2, 3),
        qkv_bias=True,
        qk_scale=None,
        patch_norm=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.3,
        use_abs_pos_embed=False,
        act_cfg=dict(type="GELU"),
        norm_cfg=dict(type="LN", requires_grad=True)),
    decode_head=dict(
        type="DAHead",
        in_channels=768,
        in_index=3,
        channels=512,
        pam_channels=64,
        dropout_ratio=0.1,
        num_classes=NUM_CLASSES,
        norm_cfg=NORM_CFG,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type="FCNHead",
        in_channels=384,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=NUM_CLASSES,
        norm_cfg=NORM_CFG,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"))

SEGMENTOR_INPUTS = [(1, 3, 512, 512), (1, 3, 483, 357)]
BACKBONE_INPUT = (1, 3, 61, 45)
INDEX_KEY = "backbone.stages.0.blocks.0.attn.w_msa.relative_position_index"


def build():
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    return MODELS.build(copy.deepcopy(MODEL)).eval()


def fill_synthetic_(model):
    """Every state-dict entry to its synthetic value, mmseg's index buffers aside."""
    sd = model.state_dict()
    new = {}
    for k, t in sd.items():
        if k.endswith(".relative_position_index"):
            new[k] = t
        else:
            new[k] = torch.from_numpy(synth.synthetic_values(k, t.shape)).to(t.dtype)
    model.load_state_dict(new)
    index = sd[INDEX_KEY]
    for k, t in sd.items():
        if k.endswith(".relative_position_index"):
            assert torch.equal(t, index), k  # one window size: one index
    return index


def write(path, tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    size = os.path.getsize(path)
    assert size < 5 << 20, f"{path}: {size} bytes"
    print("wrote", path, {k: tuple(v.shape) for k, v in tensors.items()}, f"{size} B", flush=True)


def main(out_dir):
    d = os.path.join(out_dir, "compose")
    os.makedirs(d, exist_ok=True)
    torch.set_grad_enabled(False)
    t0 = time.time()
    model = build()
    index = fill_synthetic_(model)

    with open(os.path.join(d, "mmseg_config.json"), "w") as f:
        json.dump(MODEL, f, indent=2)
        f.write("\n")
    keys = [[k, list(t.shape)] for k, t in model.state_dict().items()]
    with open(os.path.join(d, "mmseg_state_dict_keys.json"), "w") as f:
        f.write("[\n" + ",\n".join(json.dumps(k) for k in keys) + "\n]\n")
    print(len(keys), "state-dict keys", flush=True)

    for shape in SEGMENTOR_INPUTS:
        x = synth.synthetic_input(shape)
        feats = model.extract_feat(x)
        pam_cam, pam, cam = model.decode_head.forward(feats)
        aux = model.auxiliary_head.forward(feats)
        name = "swin_danet_" + "x".join(map(str, shape))
        write(os.path.join(d, name + ".safetensors"), {
            "logits": pam_cam,
            "pam_logits": pam,
            "cam_logits": cam,
            "aux_logits": aux,
            "relative_position_index": index,
        })

    x = synth.synthetic_input(BACKBONE_INPUT)
    feats = model.extract_feat(x)
    name = "swin_danet_backbone_" + "x".join(map(str, BACKBONE_INPUT))
    write(os.path.join(d, name + ".safetensors"),
          {f"stage{i + 1}": f for i, f in enumerate(feats)})
    print(f"done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures"))
