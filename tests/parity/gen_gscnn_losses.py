"""Fixtures for Gated-SCNN's losses and edge ground truth (tests/fixtures/gscnn_losses/),
checked by tests/tests/gscnn_losses_parity.rs.

Oracle: nv-tlabs/GSCNN is not installable (and is CC BY-NC-SA), so the reference below is a
small PyTorch re-expression of the official code's math, written from `loss.py`
(`JointEdgeSegLoss`, `bce2d`, `edge_attention`, `ImageBasedCrossEntropyLoss2d`),
`my_functionals/DualTaskLoss.py`, `my_functionals/custom_functional.py` (`compute_grad_mag`,
`convTri`, `gradient_central_diff`, `conv2d_same`) and `datasets/edge_utils.py`
(`mask_to_onehot`, `onehot_to_binary_edges`, with scipy's `distance_transform_edt`).
Behaviours pinned down here, each as the released code computes it:
- `ImageBasedCrossEntropyLoss2d`: per image, class weights from numpy's
  `histogram(t, range(C + 1), density=True)` (255 outside the bins), `(h != 0) * 1 * (1 - h) + 1`,
  a class-weighted NLL mean, summed over the batch. An image with no counted pixel adds 0:
  PyTorch 1.0's `NLLLoss2d` divided by the total weight only when positive (PyTorch 2 returns
  NaN there, so the reference skips such an image explicitly).
- `bce2d`: BCE-with-logits on the *sigmoided* edge map (as `GSCNN.forward` passes it), weights
  neg/(pos+neg) on target 1, pos/(pos+neg) on target 0, 0 on target > 1, mean over everything.
- attention: the seg loss with targets 255 where `edge.max(1) <= 0.8`.
- `DualTaskLoss`: ignored pixels' logits 0 and label 0, Gumbel softmax (tau 0.5) with the noise
  `-log(eps - log(U + eps))` from a given U, `compute_grad_mag` of prediction and one-hot,
  L1 averaged over each map's `>= 1e-8` pixels, halved and summed. "released": the early
  returns of `convTri` / `gradient_central_diff` kept (no spatial derivative); "paper": the
  code after them (convTri radius 4, central differences). `mag.max()` is PyTorch 2's
  (gradient shared evenly among tied maxima).
- weights seg / edge / att / dual = 1 / 20 / 1 / 1.

Inputs: logits (2 x 19 x 33 x 47) = 6u - 3 and edge probabilities = u (image 1 scaled by 0.79,
so its attention target is all 255), Gumbel U = u, each u from tests/parity/synth.py's
`uniform(key)` (mirrored by segkit_core::testing::uniform, so only labels are stored). Labels:
a seeded Voronoi map over the 19 Cityscapes classes with 255 void bands. Edge ground truth also
on the real VOC label maps of tests/fixtures/data (radii 1, 2, 3; 19 and 20 classes), stored
bit-packed. Boundary F-score (`utils/f_boundary.py` with skimage's `binary_dilation` /
`disk`, `np.bool` read as `bool`) on the VOC prediction / ground-truth pairs of
tests/fixtures/data, 21 classes, the official thresholds and 9 pixels.

Run by:
    python tests/parity/gen_gscnn_losses.py tests/fixtures
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from scipy.ndimage import distance_transform_edt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from synth import uniform  # noqa: E402

N, C, H, W = 2, 19, 33, 47
IGNORE = 255


# ---------------------------------------------------------------- edge ground truth (edge_utils)
def edge_gt(label, num_classes, radius):
    onehot = np.array([label == (i + 1) for i in range(num_classes)]).astype(np.uint8)
    padded = np.pad(onehot, ((0, 0), (1, 1), (1, 1)), mode="constant", constant_values=0)
    edge = np.zeros(label.shape)
    for i in range(num_classes):
        d = distance_transform_edt(padded[i]) + distance_transform_edt(1.0 - padded[i])
        d = d[1:-1, 1:-1]
        d[d > radius] = 0
        edge += d
    return (edge > 0).astype(np.uint8)


# ---------------------------------------------------------------- losses (loss.py)
def class_weights(t, num_classes):
    hist = np.histogram(t.flatten(), range(num_classes + 1), density=True)[0]
    return (hist != 0) * 1.0 * (1 - hist) + 1


def image_ce(logits, target):
    loss = logits.sum() * 0.0
    t_np = target.numpy()
    for i in range(logits.shape[0]):
        if (t_np[i] != IGNORE).sum() == 0:
            continue  # PyTorch 1.0: NLLLoss2d of an all-ignored image is 0
        w = torch.tensor(class_weights(t_np[i], C), dtype=torch.float32)
        lp = F.log_softmax(logits[i].unsqueeze(0), dim=1)
        loss = loss + F.nll_loss(lp, target[i].unsqueeze(0), weight=w, ignore_index=IGNORE)
    return loss


def bce2d(inp, target):
    log_p = inp.permute(0, 2, 3, 1).reshape(1, -1)
    t = target.permute(0, 2, 3, 1).reshape(1, -1)
    pos, neg = (t == 1).numpy(), (t == 0).numpy()
    weight = np.zeros(log_p.shape, dtype=np.float32)
    s = pos.sum() + neg.sum()
    weight[pos] = neg.sum() * 1.0 / s
    weight[neg] = pos.sum() * 1.0 / s
    weight[(t > 1).numpy()] = 0
    return F.binary_cross_entropy_with_logits(log_p, t, torch.from_numpy(weight), reduction="mean")


def attention(logits, target, edge):
    return image_ce(logits, torch.where(edge.max(1)[0] > 0.8, target, torch.full_like(target, IGNORE)))


# ---------------------------------------------------------------- DualTaskLoss / custom_functional
def conv_tri(x, r):
    n, c, h, w = x.shape
    f = list(range(1, r + 1)) + [r + 1] + list(reversed(range(1, r + 1)))
    k = torch.tensor([f], dtype=x.dtype) / (r + 1) ** 2
    p = F.pad(F.pad(x, (1, 1, 0, 0), mode="replicate"), (r, r, 0, 0), mode="reflect")
    t = torch.cat([p[:, :, :, :r], x, p[:, :, :, -r:]], 3)
    p = F.pad(F.pad(t, (0, 0, 1, 1), mode="replicate"), (0, 0, r, r), mode="reflect")
    p = torch.cat([p[:, :, :r, :], t, p[:, :, -r:, :]], 2)
    out = F.conv2d(p, k.unsqueeze(0).unsqueeze(0).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(out, k.t().unsqueeze(0).unsqueeze(0).repeat(c, 1, 1, 1), groups=c)


def conv_same(x, kernel):
    c = x.shape[1]
    kh, kw = kernel.shape
    ph, pw = kh - 1, kw - 1
    xp = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    return F.conv2d(xp, kernel.unsqueeze(0).unsqueeze(0).repeat(c, 1, 1, 1), groups=c)


def grad_mag(e, paper):
    if paper:
        e = conv_tri(e, 4)
        k = 0.5 * torch.tensor([[1.0, 0.0, -1.0]]) * -1.0
        ox, oy = conv_same(e, k), conv_same(e, k.t())
    else:
        ox, oy = e, e
    mag = torch.sqrt(ox * ox + oy * oy + 1e-6)
    return mag / mag.max()


def dual(logits, gts, u, paper, tau=0.5):
    n, c, h, w = logits.shape
    ignore = gts == IGNORE
    x = torch.where(ignore.view(n, 1, h, w).expand(n, c, h, w), torch.zeros(n, c, h, w), logits)
    gt = torch.where(ignore, torch.zeros_like(gts), gts)
    onehot = torch.eye(c)[gt].permute(0, 3, 1, 2)
    eps = 1e-10
    noise = -torch.log(eps - torch.log(u.view(n, c, -1) + eps))
    g = F.softmax((x.view(n, c, -1) + noise) / tau, 1).reshape(n, c, h, w)
    g = grad_mag(g, paper).view(n, -1)
    g_hat = grad_mag(onehot, paper).reshape(n, -1)  # .view in PyTorch 1.0 (contiguous results)
    l1 = (g - g_hat).abs()
    m = (g >= 1e-8).detach().float()
    a = (l1 * m).sum() / (m.sum() + eps)
    m = (g_hat >= 1e-8).float()
    b = (l1 * m).sum() / (m.sum() + eps)
    return 0.5 * a + 0.5 * b


# ---------------------------------------------------------------- boundary F (utils/f_boundary.py)
def seg2bmap(seg):
    seg = seg.astype(bool)  # np.bool in the original (removed from numpy)
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def db_eval_boundary(fg, gt, ignore, bound_th):
    from skimage.morphology import binary_dilation, disk

    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(fg.shape))
    fg[ignore] = 0
    gt[ignore] = 0
    fb, gb = seg2bmap(fg), seg2bmap(gt)
    fg_dil = binary_dilation(fb, disk(bound_pix))
    gt_dil = binary_dilation(gb, disk(bound_pix))
    gt_match, fg_match = gb * fg_dil, fb * gt_dil
    n_fg, n_gt = np.sum(fb), np.sum(gb)
    if n_fg == 0 and n_gt > 0:
        p, r = 1, 0
    elif n_fg > 0 and n_gt == 0:
        p, r = 0, 1
    elif n_fg == 0 and n_gt == 0:
        p, r = 1, 1
    else:
        p, r = np.sum(fg_match) / float(n_fg), np.sum(gt_match) / float(n_gt)
    return 0 if p + r == 0 else 2 * p * r / (p + r)


def boundary_f(preds, gts, num_classes, bound_th):
    fpc, fc = np.zeros(num_classes), np.zeros(num_classes)
    for c in range(num_classes):
        for p, g in zip(preds, gts):
            f = db_eval_boundary((p == c).astype(np.uint8), (g == c).astype(np.uint8), g == 255, bound_th)
            fpc[c] += f
            fc[c] += 1
    return fpc, fc, np.sum(fpc / fc) / num_classes


# ---------------------------------------------------------------- inputs
def labels():
    rng = np.random.default_rng(12)
    out = np.zeros((N, H, W), dtype=np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    for i in range(N):
        seeds = rng.uniform([0, 0], [H, W], size=(14, 2))
        cls = rng.permutation(C)[:14]
        cls[0] = 0  # road present
        d = np.stack([np.hypot(yy - sy, xx - sx) for sy, sx in seeds])
        order = np.sort(d, axis=0)
        out[i] = cls[np.argmin(d, axis=0)]
        if i == 0:
            out[i][(order[1] - order[0]) < 0.7] = IGNORE  # void bands on some borders
        else:
            out[i][5:11, 30:44] = IGNORE
    return out


def synth(key, shape, scale, shift):
    u = uniform(key, int(np.prod(shape)))
    return torch.from_numpy((scale * u + shift).reshape(shape).astype(np.float32))


def leaf(t):
    return t.clone().requires_grad_(True)


def main(root):
    out_dir = os.path.join(root, "gscnn_losses")
    os.makedirs(out_dir, exist_ok=True)
    lab = labels()
    et = np.stack([edge_gt(lab[i], C, 2) for i in range(N)])[:, None]
    t = torch.from_numpy(lab).long()
    e_t = torch.from_numpy(et).float()
    logits = synth("gscnn_losses.logits", (N, C, H, W), 6.0, -3.0)
    edge = synth("gscnn_losses.edge", (N, 1, H, W), 1.0, 0.0)
    edge[1] *= 0.79
    u = synth("gscnn_losses.gumbel", (N, C, H, W), 1.0, 0.0)
    f = {"labels": torch.from_numpy(lab), "edge_target": torch.from_numpy(et)}

    x = leaf(logits)
    loss = image_ce(x, t)
    loss.backward()
    f.update({"seg.loss": loss.detach(), "seg.grad": x.grad})

    e = leaf(edge)
    loss = bce2d(e, e_t)
    loss.backward()
    f.update({"edge.loss": loss.detach(), "edge.grad": e.grad})

    x = leaf(logits)
    loss = attention(x, t, edge)
    loss.backward()
    f.update({"att.loss": loss.detach(), "att.grad": x.grad})

    for mode, paper in (("released", False), ("paper", True)):
        x = leaf(logits)
        loss = dual(x, t, u, paper)
        loss.backward()
        f.update({f"dual_{mode}.loss": loss.detach(), f"dual_{mode}.grad": x.grad})

        x, e = leaf(logits), leaf(edge)
        parts = {
            "seg": image_ce(x, t),
            "edge": 20.0 * bce2d(e, e_t),
            "att": attention(x, t, e),
            "dual": dual(x, t, u, paper),
        }
        total = sum(parts.values())
        total.backward()
        for k, v in parts.items():
            f[f"joint_{mode}.{k}"] = v.detach()
        f.update({f"joint_{mode}.total": total.detach(), f"joint_{mode}.grad": x.grad,
                  f"joint_{mode}.edge_grad": e.grad})
        print(f"joint ({mode}): " + ", ".join(f"{k} {v.item():.6f}" for k, v in parts.items()))

    for name in ("voc_gt_sem_a", "voc_gt_sem_b"):
        voc = np.array(Image.open(os.path.join(root, "data", f"{name}.png")))
        for k, r in ((19, 1), (19, 2), (19, 3), (20, 2)):
            # Bit-packed (np.packbits, most significant bit first) to keep the file small.
            f[f"voc.{name}.k{k}_r{r}"] = torch.from_numpy(np.packbits(edge_gt(voc, k, r)))
    # Boundary F on the VOC prediction / ground-truth pairs (21 classes, 255 void).
    load = lambda n: np.array(Image.open(os.path.join(root, "data", f"{n}.png")))  # noqa: E731
    preds = [load("voc_pred_sem_a"), load("voc_pred_sem_b")]
    gts = [load("voc_gt_sem_a"), load("voc_gt_sem_b")]
    for th in (0.0005, 0.001875, 0.00375, 0.005, 9):
        fpc, fc, mean = boundary_f(preds, gts, 21, th)
        f[f"boundary.{th}.per_class"] = torch.from_numpy(fpc / fc)
        f[f"boundary.{th}.mean"] = torch.tensor(mean, dtype=torch.float64)
        print(f"boundary F (bound_th {th}): {mean:.6f}")
    f = {k: v.contiguous() for k, v in f.items()}
    save_file(f, os.path.join(out_dir, "gscnn_losses.safetensors"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
