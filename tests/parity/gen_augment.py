"""Parity fixtures for segkit-data's augmentation (tests/fixtures/augment/) against mmseg 1.2.2
and mmcv-lite 2.1.0 with OpenCV 5.0 (opencv-python 5.0.0.93).

The random parts of mmseg's transforms are made deterministic by scripting numpy's random
functions (`np.random.randint`, `random_sample`, and the `random` module PhotoMetricDistortion
imported from numpy) for the duration of one call; the transforms themselves run unmodified:

- `Resize(scale, keep_ratio)` (mmseg) on the image and its label map; `RandomResize` with a
  scripted `random_sample()` draw;
- `RandomCrop(crop_size, cat_max_ratio=0.75)` with scripted offsets, including windows that
  fail the category-ratio test (redraws) and eleven failing windows (the last one is kept);
- `RandomFlip(prob=1.0)` horizontal and vertical;
- `PhotoMetricDistortion` with scripted coin flips and draws (brightness, contrast in either
  position, saturation, hue), on the 64-wide input and on a 61-wide crop (OpenCV's HSV->BGR
  rounds the last `width mod 32` pixels of each row differently from the rest);
- mmcv `Pad` (fixed size, size divisor) and mmseg's `SegDataPreProcessor` in training mode
  (BGR->RGB, `(x - mean) / std`, pad to a size with 0 / 255);
- checksums of whole outputs, for broad sweeps that would not fit as images: `mmcv.imresize`
  bilinear and nearest on ~200 (source, target) size pairs of a synthetic image with 1 and 3
  channels; `mmcv.bgr2hsv` on all 2^24 colours; `mmcv.hsv2bgr` on all 180 x 256 x 256 inputs,
  as 4096-wide rows and as 31-wide rows.

checksum(bytes) = sum_i bytes[i] * (mix(i) | 1) mod 2^64, mix = splitmix64's finaliser of
(i + 0x9E3779B97F4A7C15) (the same function is in crates/data/tests/augment.rs); the synthetic
image's byte i (row-major HWC) is mix(i + 12345) >> 56.

The input is a 64x48 crop of tests/fixtures/images/astronaut.png (rows 32..416, area
downscale by 8) with a synthetic label map (grey levels in 5 classes, a 255 column every 16
pixels, the bottom-right 40x32 all class 3). Images and label maps are stored as PNG (BGR
images written by cv2.imwrite, i.e. RGB in the file), everything else in augment.json.

Run by `cargo xtask fixtures augment`, or: python tests/parity/gen_augment.py tests/fixtures
"""
import contextlib
import json
import os
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import mmseg_stub  # noqa: E402,F401  (stubs mmcv.ops before importing mmseg)

import mmcv  # noqa: E402
import torch  # noqa: E402
from mmcv.transforms import Pad, RandomResize  # noqa: E402
from mmseg.datasets.transforms import (  # noqa: E402
    PhotoMetricDistortion,
    RandomCrop,
    RandomFlip,
    Resize,
)
import mmseg.datasets.transforms.transforms as mmseg_transforms  # noqa: E402

M64 = (1 << 64) - 1
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix(i):
    """splitmix64's finaliser of (i + golden) on a uint64 array (wrapping)."""
    with np.errstate(over="ignore"):
        z = i.astype(np.uint64) + GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def checksum(a):
    b = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
    total = 0
    step = 1 << 22
    for s in range(0, b.size, step):
        idx = np.arange(s, min(s + step, b.size), dtype=np.uint64)
        w = mix(idx) | np.uint64(1)
        with np.errstate(over="ignore"):
            total = (total + int(np.sum(b[s : s + step].astype(np.uint64) * w, dtype=np.uint64))) & M64
    return f"{total:016x}"


def synthetic(h, w, c):
    idx = np.arange(h * w * c, dtype=np.uint64) + np.uint64(12345)
    return (mix(idx) >> np.uint64(56)).astype(np.uint8).reshape(h, w, c)


@contextlib.contextmanager
def scripted(**funcs):
    """Replaces numpy.random functions by scripted ones for the duration of the block."""
    saved = {k: getattr(np.random, k) for k in funcs}
    for k, f in funcs.items():
        setattr(np.random, k, f)
    try:
        yield
    finally:
        for k, f in saved.items():
            setattr(np.random, k, f)


def queue(values, name):
    values = list(values)

    def f(*args, **kwargs):
        if not values:
            raise RuntimeError(f"scripted {name} ran out of values (args {args})")
        return values.pop(0)

    f.remaining = values
    return f


def load_input(root):
    src = cv2.imread(os.path.join(root, "images", "astronaut.png"), cv2.IMREAD_COLOR)
    assert src is not None and src.shape == (512, 512, 3)
    crop = src[32:416, :, :]
    img = cv2.resize(crop, (64, 48), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    label = (grey // 52).astype(np.uint8)  # 0..4
    label[16:, 24:] = 3
    label[:, ::16] = 255
    return img, label


def results(img, label):
    return dict(img=img.copy(), gt_seg_map=label.copy(), seg_fields=["gt_seg_map"],
                img_shape=img.shape[:2], ori_shape=img.shape[:2])


def write_png(path, a):
    assert cv2.imwrite(path, a), path


def gen_resize(out, img, label, meta):
    cases = []
    for scale, keep in [((100, 40), True), ((128, 128), True), ((97, 1000), True),
                        ((1000, 24), True), ((200, 45), True), ((80, 30), False)]:
        r = Resize(scale=scale, keep_ratio=keep)(results(img, label))
        h, w = r["img"].shape[:2]
        name = f"resize_{w}x{h}{'' if keep else '_free'}"
        case = dict(scale=list(scale), keep_ratio=keep, width=w, height=h,
                    img=checksum(r["img"][:, :, ::-1]), seg=checksum(r["gt_seg_map"]))
        if w * h <= 64 * 48:  # small ones also as images, to look at
            case["name"] = name
            write_png(os.path.join(out, name + "_img.png"), r["img"])
            write_png(os.path.join(out, name + "_seg.png"), r["gt_seg_map"])
        cases.append(case)
    meta["resize"] = cases
    rr = []
    for u in [0.0, 0.3, 0.77, 0.999]:
        t = RandomResize(scale=(128, 32), ratio_range=(0.5, 2.0), keep_ratio=True)
        with scripted(random_sample=queue([u], "random_sample")):
            r = t(results(img, label))
        h, w = r["img"].shape[:2]
        rr.append(dict(u=u, scale=list(r["scale"]), width=w, height=h,
                       img=checksum(r["img"][:, :, ::-1]), seg=checksum(r["gt_seg_map"])))
    meta["random_resize"] = dict(scale=[128, 32], ratio_range=[0.5, 2.0], cases=rr)


def gen_resize_sweep(meta):
    srcs = [(64, 48), (37, 23), (5, 7), (100, 3), (1, 9), (640, 480)]
    dsts = [(1, 1), (3, 2), (9, 1), (1, 9), (32, 24), (33, 25), (50, 40), (64, 30), (20, 48),
            (97, 73), (128, 96), (130, 48), (31, 80), (200, 150), (513, 385), (7, 5)]
    cases = []
    for (sw, sh) in srcs:
        for c in (1, 3):
            src = synthetic(sh, sw, c)
            for (dw, dh) in dsts:
                s = src if c == 3 else src[:, :, 0]  # (h, w, 1) -> (h, w)
                lin = mmcv.imresize(s, (dw, dh), interpolation="bilinear")
                nn = mmcv.imresize(s, (dw, dh), interpolation="nearest")
                cases.append(dict(src=[sw, sh], dst=[dw, dh], channels=c,
                                  bilinear=checksum(lin), nearest=checksum(nn)))
    meta["resize_sweep"] = cases


def crop_passes(lab, oy, ox, ch, cw):
    """mmseg's cat_max_ratio test (0.75) on one window."""
    labels, cnt = np.unique(lab[oy:oy + ch, ox:ox + cw], return_counts=True)
    cnt = cnt[labels != 255]
    return len(cnt) > 1 and np.max(cnt) / np.sum(cnt) < 0.75


def gen_crop(out, img, label, meta):
    t = RandomCrop(crop_size=(32, 40), cat_max_ratio=0.75)
    offsets = [(oy, ox) for oy in range(48 - 32 + 1) for ox in range(64 - 40 + 1)]
    # The bottom-right of the label map is one class: windows there fail the test.
    bad = [o for o in offsets if not crop_passes(label, *o, 32, 40)]
    good = [o for o in offsets if crop_passes(label, *o, 32, 40)]
    assert bad and good, "the label map should give failing and passing windows"
    # A map that is mostly one class, so that eleven windows fail.
    label2 = label.copy()
    label2[:, 20:] = 2
    bad2 = [o for o in offsets if not crop_passes(label2, *o, 32, 40)]
    assert len(bad2) >= 11
    scripts = {
        "first": (label, [good[len(good) // 2]]),
        "retry": (label, [bad[0], bad[-1], good[3]]),
        "exhausted": (label2, [bad2[k * 7 % len(bad2)] for k in range(11)]),
    }
    cases = []
    for name, (lab, offs) in scripts.items():
        q = queue([v for o in offs for v in o], "randint")
        with scripted(randint=q):
            r = t(results(img, lab))
        assert not q.remaining, name
        write_png(os.path.join(out, f"crop_{name}_img.png"), r["img"])
        write_png(os.path.join(out, f"crop_{name}_seg.png"), r["gt_seg_map"])
        cases.append(dict(name=name, offsets=[list(o) for o in offs],
                          height=r["img"].shape[0], width=r["img"].shape[1]))
    write_png(os.path.join(out, "label_mostly_2.png"), label2)
    # A crop larger than the image: margin 0, the window clamps to the image.
    t2 = RandomCrop(crop_size=(64, 80), cat_max_ratio=1.0)
    with scripted(randint=queue([0, 0], "randint")):
        r = t2(results(img, label))
    cases.append(dict(name="oversize", crop_size=[64, 80], offsets=[[0, 0]],
                      height=r["img"].shape[0], width=r["img"].shape[1],
                      img=checksum(r["img"][:, :, ::-1]), seg=checksum(r["gt_seg_map"])))
    meta["crop"] = dict(crop_size=[32, 40], cat_max_ratio=0.75, cases=cases)


def gen_flip(out, img, label, meta):
    cases = []
    for d in ["horizontal", "vertical"]:
        r = RandomFlip(prob=1.0, direction=d)(results(img, label))
        cases.append(dict(direction=d, img=checksum(r["img"][:, :, ::-1]), seg=checksum(r["gt_seg_map"])))
    meta["flip"] = cases


class ScriptedRandom:
    """Stands in for `numpy.random` inside mmseg's PhotoMetricDistortion."""

    def __init__(self, values):
        self.values = list(values)

    def _next(self, what):
        if not self.values:
            raise RuntimeError(f"scripted {what} ran out")
        return self.values.pop(0)

    def randint(self, *args):
        return self._next("randint")

    def uniform(self, *args):
        return self._next("uniform")


def photometric_script(p):
    """The draws PhotoMetricDistortion makes for the parameters p (segkit's field names)."""
    v = []
    b = p.get("brightness")
    v += [1, b] if b is not None else [0]
    first = p.get("contrast_first", False)
    v.append(1 if first else 0)
    c = p.get("contrast")
    if first:
        v += [1, c] if c is not None else [0]
    s = p.get("saturation")
    v += [1, s] if s is not None else [0]
    h = p.get("hue")
    v += [1, h] if h is not None else [0]
    if not first:
        v += [1, c] if c is not None else [0]
    return v


def gen_photometric(out, img, meta):
    cases = [
        ("all_last", dict(brightness=20.7, contrast_first=False, contrast=1.3, saturation=0.7, hue=11)),
        ("all_first", dict(brightness=-31.2, contrast_first=True, contrast=0.6, saturation=1.45, hue=-18)),
        ("saturation", dict(saturation=1.5)),
        ("hue", dict(hue=17)),
        ("contrast", dict(contrast=0.5)),
        ("brightness", dict(brightness=31.99)),
    ]
    t = PhotoMetricDistortion()
    out_cases = []
    saved = mmseg_transforms.random
    try:
        for name, p in cases:
            for tag, im in [("", img), ("_w61", img[:45, :61])]:
                if tag and name not in ("all_last", "all_first"):
                    continue
                sr = ScriptedRandom(photometric_script(p))
                mmseg_transforms.random = sr
                r = t(dict(img=im.copy()))
                assert not sr.values, name
                fname = f"photometric_{name}{tag}.png"
                write_png(os.path.join(out, fname), r["img"])
                full = dict(brightness=None, contrast_first=False, contrast=None, saturation=None, hue=None)
                full.update(p)
                out_cases.append(dict(name=name + tag, params=full, file=fname,
                                      width=im.shape[1], height=im.shape[0]))
    finally:
        mmseg_transforms.random = saved
    meta["photometric"] = out_cases


def gen_hsv(meta):
    v = np.arange(1 << 24, dtype=np.uint32)
    bgr = np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255], -1).astype(np.uint8).reshape(4096, 4096, 3)
    hsv = mmcv.bgr2hsv(bgr)
    v = np.arange(180 * 65536, dtype=np.uint32)
    hsv_in = np.stack([v >> 16, (v >> 8) & 255, v & 255], -1).astype(np.uint8)
    wide = mmcv.hsv2bgr(hsv_in.reshape(-1, 4096, 3))
    n = hsv_in.shape[0] // 31 * 31
    narrow = mmcv.hsv2bgr(hsv_in[:n].reshape(-1, 31, 3))
    meta["hsv"] = dict(bgr2hsv_all=checksum(hsv), hsv2bgr_4096=checksum(wide),
                       hsv2bgr_31=checksum(narrow), hsv2bgr_31_pixels=n)


def gen_pad_normalize(img, label, meta):
    cases = []
    for kw in [dict(size=(80, 56)), dict(size_divisor=32), dict(pad_to_square=True)]:
        r = Pad(pad_val=dict(img=0, seg=255), **kw)(results(img, label))
        cases.append(dict(args={k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()},
                          width=r["img"].shape[1], height=r["img"].shape[0],
                          img=checksum(r["img"][:, :, ::-1]), seg=checksum(r["gt_seg_map"])))
    meta["pad"] = cases

    from mmengine.structures import PixelData
    from mmseg.models.data_preprocessor import SegDataPreProcessor
    from mmseg.structures import SegDataSample

    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    pre = SegDataPreProcessor(mean=mean, std=std, bgr_to_rgb=True, size=(56, 80), pad_val=0,
                              seg_pad_val=255)
    sample = SegDataSample()
    sample.gt_sem_seg = PixelData(data=torch.from_numpy(label[None].astype(np.int64)))
    data = dict(inputs=[torch.from_numpy(img.transpose(2, 0, 1).copy())], data_samples=[sample])
    res = pre(data, training=True)
    x = res["inputs"][0].numpy().astype(np.float32)  # 3 x 56 x 80, RGB
    seg = res["data_samples"][0].gt_sem_seg.data.numpy()[0].astype(np.uint8)
    meta["normalize"] = dict(mean=mean, std=std, pad=[80, 56], width=x.shape[2], height=x.shape[1],
                             chw=checksum(x.astype("<f4")), seg=checksum(seg),
                             first=[float(v) for v in x[:, 0, 0]])


def main(fixtures):
    root = os.path.abspath(fixtures)
    out = os.path.join(root, "augment")
    os.makedirs(out, exist_ok=True)
    img, label = load_input(root)
    write_png(os.path.join(out, "input.png"), img)
    write_png(os.path.join(out, "label.png"), label)
    meta = dict(versions=dict(mmcv=mmcv.__version__, opencv=cv2.__version__, numpy=np.__version__))
    gen_resize(out, img, label, meta)
    gen_resize_sweep(meta)
    gen_crop(out, img, label, meta)
    gen_flip(out, img, label, meta)
    gen_photometric(out, img, meta)
    gen_pad_normalize(img, label, meta)
    gen_hsv(meta)
    with open(os.path.join(out, "augment.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures"))
