"""Fixtures for segkit-data's Canny (tests/fixtures/canny/), checked by tests/tests/canny_parity.rs.

Oracle: opencv-python 5.0.0.93, `cv2.Canny(img, 10, 100)` (aperture 3, L1 gradient) on
3-channel 8-bit images, exactly as Gated-SCNN calls it (nv-tlabs/GSCNN `network/gscnn.py`).

Real photos: scikit-image's data set (`skimage.data`, public domain / CC0 per its docs):
astronaut (512x512; already committed as tests/fixtures/images/astronaut.png), coffee
(400x600), chelsea (300x451), rocket (427x640). Two inputs per photo:
- `<photo>.canny.png`: Canny of the 8-bit RGB photo (the "8-bit image" mode);
- `<photo>.released_input.png` / `<photo>.released_canny.png`: the official input, i.e. the
  photo through torchvision's `ToTensor()` + `Normalize([0.485, 0.456, 0.406],
  [0.229, 0.224, 0.225])` (float32), transposed to HWC and cast with numpy's
  `.astype(np.uint8)` (truncation, negative values wrap), then Canny of that.

Everything is a lossless 8-bit PNG. Run by:
    python tests/parity/gen_canny.py tests/fixtures
"""
import os
import sys

import cv2
import numpy as np
import skimage.data
import torch
import torchvision.transforms as T

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket"]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def write_png(path, arr):
    # cv2 writes BGR: flip RGB images so the file holds RGB.
    img = arr[:, :, ::-1] if arr.ndim == 3 else arr
    assert cv2.imwrite(path, np.ascontiguousarray(img)), path


def released_input(rgb):
    x = T.Normalize(MEAN, STD)(T.ToTensor()(rgb))  # 3 x H x W float32
    return x.numpy().transpose((1, 2, 0)).astype(np.uint8)


def main(root):
    out = os.path.join(root, "canny")
    os.makedirs(out, exist_ok=True)
    for name in PHOTOS:
        rgb = getattr(skimage.data, name)()
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, name
        if name == "astronaut":
            stored = cv2.imread(os.path.join(root, "images", "astronaut.png"))[:, :, ::-1]
            assert np.array_equal(stored, rgb), "tests/fixtures/images/astronaut.png differs"
        else:
            write_png(os.path.join(out, f"{name}.png"), rgb)
        edges = cv2.Canny(rgb, 10, 100)
        write_png(os.path.join(out, f"{name}.canny.png"), edges)
        rel = released_input(rgb)
        write_png(os.path.join(out, f"{name}.released_input.png"), rel)
        rel_edges = cv2.Canny(rel, 10, 100)
        write_png(os.path.join(out, f"{name}.released_canny.png"), rel_edges)
        print(f"{name} {rgb.shape}: {int((edges > 0).sum())} edge pixels (8-bit), "
              f"{int((rel_edges > 0).sum())} (as released)")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
