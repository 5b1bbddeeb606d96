"""PyTorch side of the end-to-end (`e2e_*`) and batch-throughput (`*_b8`) cases of
`cargo xtask bench` (crates/cli/src/bench/e2e.rs, throughput.rs). bench_torch.py's `make`
hands these cases here; its main loop times them (median of --runs, peak RSS).

- e2e_pspnet_cityscapes: mmseg's user path, `init_model(config)` (the config file of segkit's
  `pspnet_r50-d8_cityscapes-512x1024` preset, SyncBN -> BN, synthetic weights by synth.fill_)
  once, then per image `inference_model(model, path)` (the config's test pipeline: load the PNG,
  Resize (2048, 1024) keep-ratio, the data preprocessor, `whole` inference, logits resized to
  the image, arg-max) and the class map, its palette colours and a 0.5 overlay written as PNGs
  (segkit's side writes the same three plus a JSON summary).
- e2e_oneformer_panoptic: transformers' user path, `OneFormerProcessor` (the
  oneformer_ade20k_swin_tiny preprocessing: shortest edge 512, longest 2048; CLIP task
  tokens) + `OneFormerForUniversalSegmentation` (gen_oneformer.build: synthetic weights through
  save_pretrained / from_pretrained) + `post_process_panoptic_segmentation` on a 640x480 PNG,
  read with PIL per image. Thresholds as gen_oneformer.py's photo case (synthetic weights give
  near-uniform class scores), stuff classes fused.
- resnet50_b8 / pspnet_r50-d8_b8: the resnet50 / pspnet_r50-d8 cases of bench_torch.py on an
  8x3x512x512 batch.

The e2e images come from `photo(w, h)`, the same integer formula as segkit's
`bench::e2e::synthetic_photo`, written to a temporary directory.
"""
import atexit
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import synth  # noqa: E402

CASES = ("e2e_pspnet_cityscapes", "e2e_oneformer_panoptic", "resnet50_b8", "pspnet_r50-d8_b8")
BATCH = 8


def photo(w, h):
    """RGB uint8 (h, w, 3): bit-equal to segkit's bench::e2e::synthetic_photo."""
    x = np.arange(w, dtype=np.int64)[None, :]
    y = np.arange(h, dtype=np.int64)[:, None]
    r = (x * 255 // (w - 1) + ((x // 64 + y // 48) % 3) * 40) % 256
    g = (y * 255 // (h - 1) + ((x // 80 * 7 + y // 60 * 5) % 4) * 30) % 256
    b = ((x ^ y) & 127) + ((x // 128 + y // 96) % 2) * 64
    r, g, b = np.broadcast_arrays(r, g, b)
    return np.stack([r, g, b], -1).astype(np.uint8)


def tmpdir():
    d = tempfile.mkdtemp(prefix="segkit_bench_e2e_")
    atexit.register(shutil.rmtree, d, True)
    return d


def write_photo(d, w, h):
    import cv2

    path = os.path.join(d, "photo.png")
    cv2.imwrite(path, cv2.cvtColor(photo(w, h), cv2.COLOR_RGB2BGR))
    return path


def pspnet_cityscapes():
    import cv2
    import mmseg_stub  # noqa: F401  (stubs mmcv.ops before importing mmseg)
    import gen_segmentors as gs
    from mmseg.apis import inference_model, init_model
    from mmseg.datasets import CityscapesDataset

    cfg = gs.load_config("pspnet_r50-d8_cityscapes-512x1024")
    cfg.model.pretrained = None
    gs.to_bn(cfg.model)
    model = init_model(cfg, None, device="cpu")
    synth.fill_(model)
    model.eval()
    d = tmpdir()
    img = write_photo(d, 2048, 1024)
    palette = np.array(CityscapesDataset.METAINFO["palette"], dtype=np.uint8)
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = palette

    def run():
        result = inference_model(model, img)
        cls = result.pred_sem_seg.data[0].to(torch.uint8).numpy()
        color = lut[cls]
        rgb = cv2.cvtColor(cv2.imread(img), cv2.COLOR_BGR2RGB)
        overlay = (rgb.astype(np.float32) * 0.5 + color.astype(np.float32) * 0.5).round().astype(np.uint8)
        cv2.imwrite(os.path.join(d, "photo_classes.png"), cls)
        cv2.imwrite(os.path.join(d, "photo_color.png"), cv2.cvtColor(color, cv2.COLOR_RGB2BGR))
        cv2.imwrite(os.path.join(d, "photo_overlay.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        return cls

    return run


def oneformer_panoptic():
    import json

    import gen_oneformer as go
    from gen_tokenizer import ONEFORMER_ADE20K
    from PIL import Image
    from transformers import OneFormerImageProcessor, OneFormerProcessor

    d = tmpdir()
    img_path = write_photo(d, 640, 480)
    info = {str(i): {"name": n, "isthing": t} for i, (n, t) in enumerate(ONEFORMER_ADE20K)}
    with open(os.path.join(d, "ade20k_panoptic.json"), "w") as f:
        json.dump(info, f)
    ip = OneFormerImageProcessor(
        repo_path=d, class_info_file="ade20k_panoptic.json", num_text=134, num_labels=150,
        size={"shortest_edge": 512, "longest_edge": 2048},
    )
    proc = OneFormerProcessor(image_processor=ip, tokenizer=go.clip_tokenizer())
    model = go.build(go.full_config()).eval()
    stuff = {i for i, (_, t) in enumerate(ONEFORMER_ADE20K) if not t}
    kw = dict(threshold=0.015, mask_threshold=0.018, overlap_mask_area_threshold=0.05)

    def run():
        img = Image.open(img_path).convert("RGB")
        enc = proc(images=[img], task_inputs=["panoptic"], return_tensors="pt")
        out = model(pixel_values=enc["pixel_values"], task_inputs=enc["task_inputs"])
        return ip.post_process_panoptic_segmentation(
            out, label_ids_to_fuse=stuff, target_sizes=[(img.height, img.width)], **kw
        )[0]

    return run


def make(case):
    if case == "e2e_pspnet_cityscapes":
        return pspnet_cityscapes()
    if case == "e2e_oneformer_panoptic":
        return oneformer_panoptic()
    if case == "resnet50_b8":
        import torchvision

        m = torchvision.models.resnet50(weights=None).eval()
        synth.fill_(m)
        x = synth.synthetic_input((BATCH, 3, 512, 512))

        def run():
            y = m.maxpool(m.relu(m.bn1(m.conv1(x))))
            return m.layer4(m.layer3(m.layer2(m.layer1(y))))

        return run
    if case == "pspnet_r50-d8_b8":
        import gen_segmentors as gs

        m, _ = gs.build("pspnet_r50-d8_ade20k-512x512")
        synth.fill_(m)
        x = synth.synthetic_input((BATCH, 3, 512, 512))
        return lambda: m._forward(x)
    raise SystemExit(f"unknown case {case}")
