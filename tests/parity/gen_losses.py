"""Parity fixtures for segkit-losses: loss values and gradients from the PyTorch references.

References (versions pinned in tests/parity/requirements.txt):
- mmseg 1.2.2: `cross_entropy` / `CrossEntropyLoss`, `OHEMPixelSampler` (imported through
  mmseg_stub, mmcv-lite has no compiled ops);
- transformers: OneFormer's `dice_loss`, `sigmoid_cross_entropy_loss`, `pair_wise_*`,
  `sample_point`, `OneFormerHungarianMatcher`, `OneFormerLoss` (+ `get_loss_dict` weighting);
  MaskFormer's `sigmoid_focal_loss`; torchvision's `sigmoid_focal_loss`;
- scipy: `optimize.linear_sum_assignment`;
- Gated-SCNN (nv-tlabs/GSCNN `loss.py`, `my_functionals/DualTaskLoss.py`): not pip-installable
  and CUDA-bound, so its losses are re-expressed below in plain torch, operation for operation
  (including what the published code really computes: `compute_grad_mag` returns early, so the
  "gradient magnitude" is sqrt(2 E^2 + 1e-6) / max).

Usage: python tests/parity/gen_losses.py tests/fixtures
Writes tests/fixtures/losses/{cross_entropy,gscnn,mask,lsap,oneformer}.safetensors. Keys are
`<case>.<field>`; scalars are stored as one-element tensors. `torch.rand` draws made inside the
references are recorded in call order as `<case>.rand.<i>` (or reproduced from a seed with the
splitmix64 generator that segkit's `SeededPointSource` implements).
"""

import math
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmseg_stub  # noqa: F401,E402  (must precede mmseg imports)

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
import transformers  # noqa: E402
from mmseg.models.losses.cross_entropy_loss import CrossEntropyLoss as MMCrossEntropyLoss  # noqa: E402
from mmseg.models.losses.cross_entropy_loss import cross_entropy as mm_cross_entropy  # noqa: E402
from mmseg.structures.sampler.ohem_pixel_sampler import OHEMPixelSampler  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402
from transformers.models.maskformer.modeling_maskformer import sigmoid_focal_loss as mf_focal  # noqa: E402
from transformers.models.oneformer import modeling_oneformer as mo  # noqa: E402

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def i64(*v):
    return torch.tensor(list(v), dtype=torch.int64)


def f32(*v):
    return torch.tensor(list(v), dtype=torch.float32)


def one(t):
    return t.detach().reshape(1).float()


def leaf(t):
    return t.clone().detach().requires_grad_(True)


def labels_with_ignore(shape, c, frac=0.1, ignore=255):
    t = torch.randint(0, c, shape)
    t[torch.rand(shape) < frac] = ignore
    return t


# ---------------------------------------------------------------------------------------------
# splitmix64 uniforms: the Python twin of segkit_losses::SeededPointSource
# ---------------------------------------------------------------------------------------------
def _splitmix64(x):
    with np.errstate(over="ignore"):
        z = x + np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class Rand:
    """Stands in for `torch.rand` while a reference runs: records every draw (shape and values);
    with `seed`, the values come from splitmix64 instead of torch's generator."""

    def __init__(self, seed=None):
        self.seed = seed
        self.counter = 0
        self.draws = []
        self.orig = torch.rand

    def __call__(self, *size, device=None, dtype=None, **kw):
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        shape = tuple(int(s) for s in size)
        if self.seed is None:
            t = self.orig(*shape)
        else:
            n = int(np.prod(shape)) if shape else 1
            i = np.arange(self.counter, self.counter + n, dtype=np.uint64)
            self.counter += n
            with np.errstate(over="ignore"):
                z = _splitmix64(np.uint64(self.seed) + i * np.uint64(GOLDEN))
            v = (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)
            t = torch.from_numpy(v.astype(np.float32)).reshape(shape)
        self.draws.append(t.clone())
        return t if device is None else t.to(device)

    def __enter__(self):
        torch.rand = self
        return self

    def __exit__(self, *a):
        torch.rand = self.orig


# ---------------------------------------------------------------------------------------------
# cross-entropy (mmseg) + OHEM + PSSL
# ---------------------------------------------------------------------------------------------
def gen_cross_entropy():
    t = {}

    def case(name, logits, target, loss_fn, **params):
        x = leaf(logits)
        loss = loss_fn(x, target)
        loss.backward()
        t[f"{name}.logits"] = logits
        t[f"{name}.target"] = target.long()
        t[f"{name}.loss"] = one(loss)
        t[f"{name}.grad"] = x.grad
        for k, v in params.items():
            t[f"{name}.{k}"] = v
        return x

    shape = (2, 5, 9, 11)
    cw = torch.tensor([0.5, 1.0, 2.0, 1.5, 0.8])

    lg, tg = torch.randn(shape), labels_with_ignore((2, 9, 11), 5)
    case("default", lg, tg, lambda x, y: MMCrossEntropyLoss()(x, y, ignore_index=255))
    lg, tg = torch.randn(shape), labels_with_ignore((2, 9, 11), 5)
    case("non_ignore", lg, tg, lambda x, y: MMCrossEntropyLoss(avg_non_ignore=True)(x, y, ignore_index=255))
    lg, tg = torch.randn(shape), labels_with_ignore((2, 9, 11), 5)
    case("loss_weight", lg, tg, lambda x, y: MMCrossEntropyLoss(loss_weight=0.4)(x, y, ignore_index=255))
    # Class weights, no ignored pixel (mmseg's own code path works).
    lg, tg = torch.randn(shape), torch.randint(0, 5, (2, 9, 11))
    case(
        "class_weight_all",
        lg,
        tg,
        lambda x, y: MMCrossEntropyLoss(class_weight=cw.tolist())(x, y, ignore_index=255),
        class_weight=cw,
    )
    # Class weights and an ignore index inside 0..C: mmseg counts class_weight[ignore_index].
    lg, tg = torch.randn(shape), torch.randint(0, 5, (2, 9, 11))
    case(
        "ignore_in_range",
        lg,
        tg,
        lambda x, y: MMCrossEntropyLoss(class_weight=cw.tolist())(x, y, ignore_index=2),
        class_weight=cw,
        ignore_index=i64(2),
    )

    # Class weights with ignored pixels and avg_non_ignore: mmseg 1.2.2 raises IndexError (it
    # indexes class_weight[255] before masking); its intended avg_factor is passed explicitly.
    def intended(x, y, cwt, ignore, loss_weight=1.0):
        valid = y != ignore
        af = cwt[y[valid]].sum()
        return loss_weight * mm_cross_entropy(
            x, y, class_weight=cwt, reduction="mean", avg_factor=af, ignore_index=ignore
        )

    lg, tg = torch.randn(shape), labels_with_ignore((2, 9, 11), 5)
    x = case("class_weight_non_ignore", lg, tg, lambda x, y: intended(x, y, cw, 255), class_weight=cw)
    ref = F.cross_entropy(x.detach(), tg, weight=cw, ignore_index=255)
    assert abs(ref - t["class_weight_non_ignore.loss"][0]) < 1e-6

    lg, tg = torch.randn(13, 6), labels_with_ignore((13,), 6, frac=0.2)
    case("flat", lg, tg, lambda x, y: MMCrossEntropyLoss()(x, y, ignore_index=255))

    # PSSL: 1001 classes, background 1000 weighs 0.1, ignore 1001.
    pw = torch.ones(1001)
    pw[1000] = 0.1
    lg = torch.randn(1, 1001, 2, 3)
    tg = torch.tensor([[[1000, 5, 1001], [1000, 999, 17]]])
    x = case("pssl", lg, tg, lambda x, y: intended(x, y, pw, 1001))
    ref = F.cross_entropy(x.detach(), tg, weight=pw, ignore_index=1001)
    assert abs(ref - t["pssl.loss"][0]) < 1e-6

    # OHEM (mmseg OHEMPixelSampler + the decode head's CE with its weight).
    def ohem(thresh, min_kept, loss_module):
        ctx = types.SimpleNamespace(ignore_index=255, loss_decode=loss_module)
        sampler = OHEMPixelSampler(ctx, thresh=thresh, min_kept=min_kept)

        def f(x, y):
            w = sampler.sample(x, y.unsqueeze(1))
            f.weight = w
            return loss_module(x, y, weight=w, ignore_index=255)

        return f

    for name, thresh, min_kept, mod in (
        ("ohem_default", 0.7, 100000, MMCrossEntropyLoss()),
        ("ohem_kept20", 0.7, 20, MMCrossEntropyLoss()),
        ("ohem_kept150", 0.7, 150, MMCrossEntropyLoss(avg_non_ignore=True)),
        ("ohem_nothresh", None, 30, MMCrossEntropyLoss()),
    ):
        lg, tg = 3.0 * torch.randn(shape), labels_with_ignore((2, 9, 11), 5)
        fn = ohem(thresh, min_kept, mod)
        params = {"min_kept": i64(min_kept), "avg_non_ignore": i64(int(mod.avg_non_ignore))}
        if thresh is not None:
            params["thresh"] = f32(thresh)
        case(name, lg, tg, fn, **params)
        t[f"{name}.weight"] = fn.weight.float()
    return t


def seeded_uniform(seed, n):
    """splitmix64 uniforms `k / 2^24` (k a 24-bit integer), values 0..n of `seed`: the Python
    twin of `segkit_losses::SeededPointSource`; returns (k as int64, u as float32)."""
    i = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = _splitmix64(np.uint64(seed) + i * np.uint64(GOLDEN))
    k = (z >> np.uint64(40)).astype(np.int64)
    return k, (k.astype(np.float32) / np.float32(1 << 24))


def gen_cross_entropy_resized():
    """mmseg's decode-head loss on low-resolution logits: `resize` (bilinear, the head's
    align_corners) to the label size, then `CrossEntropyLoss`. Logits and labels come from
    splitmix64 (seed stored, nothing large but the gradient): logits `(u - 0.5) * 8`, labels
    `k % (C + 2)` with the two values past the classes ignored (255)."""
    from mmseg.models.utils import resize

    t = {}
    cases = (
        # name, seed, (N, C, h, w), (H, W), align_corners, loss
        ("cityscapes", 11, (1, 19, 64, 128), (512, 1024), False, MMCrossEntropyLoss()),
        ("ade_weighted", 12, (2, 150, 16, 16), (128, 128), False, "weighted"),
        ("corners", 13, (2, 5, 9, 13), (37, 50), True, MMCrossEntropyLoss(loss_weight=0.4)),
    )
    for name, seed, (n, c, h, w), (oh, ow), ac, loss_fn in cases:
        _, u = seeded_uniform(seed, n * c * h * w)
        logits = torch.from_numpy((u - np.float32(0.5)) * np.float32(8.0)).reshape(n, c, h, w)
        k, _ = seeded_uniform(seed + 1, n * oh * ow)
        lab = torch.from_numpy(k % (c + 2)).reshape(n, oh, ow)
        lab[lab >= c] = 255
        x = leaf(logits)
        up = resize(input=x, size=(oh, ow), mode="bilinear", align_corners=ac)
        if loss_fn == "weighted":
            # Class weights + avg_non_ignore: mmseg 1.2.2 raises IndexError on ignored pixels
            # (see gen_cross_entropy); its intended averaging factor is passed explicitly.
            cw = torch.linspace(0.5, 2.0, c)
            af = cw[lab[lab != 255]].sum()
            loss = mm_cross_entropy(up, lab, class_weight=cw, reduction="mean", avg_factor=af, ignore_index=255)
            assert abs(loss.item() - F.cross_entropy(up.detach(), lab, weight=cw, ignore_index=255).item()) < 1e-5
            loss_fn = types.SimpleNamespace(class_weight=cw.tolist(), avg_non_ignore=True, loss_weight=1.0)
        else:
            loss = loss_fn(up, lab, ignore_index=255)
        loss.backward()
        t[f"{name}.seed"] = i64(seed)
        t[f"{name}.shape"] = i64(n, c, h, w, oh, ow)
        t[f"{name}.align_corners"] = i64(int(ac))
        t[f"{name}.loss"] = one(loss)
        t[f"{name}.grad"] = x.grad
        if loss_fn.class_weight is not None:
            t[f"{name}.class_weight"] = torch.tensor(loss_fn.class_weight, dtype=torch.float32)
        t[f"{name}.avg_non_ignore"] = i64(int(loss_fn.avg_non_ignore))
        t[f"{name}.loss_weight"] = f32(loss_fn.loss_weight)
    return t


# ---------------------------------------------------------------------------------------------
# Gated-SCNN (re-expressed from loss.py / DualTaskLoss.py, see the module docstring)
# ---------------------------------------------------------------------------------------------
def gscnn_bce2d(inp, target):
    log_p = inp.transpose(1, 2).transpose(2, 3).contiguous().view(1, -1)
    target_t = target.transpose(1, 2).transpose(2, 3).contiguous().view(1, -1)
    pos = (target_t == 1).numpy()
    neg = (target_t == 0).numpy()
    ign = (target_t > 1).numpy()
    weight = torch.zeros(log_p.size()).numpy()
    pos_num, neg_num = pos.sum(), neg.sum()
    sum_num = pos_num + neg_num
    weight[pos] = neg_num * 1.0 / sum_num
    weight[neg] = pos_num * 1.0 / sum_num
    weight[ign] = 0
    return F.binary_cross_entropy_with_logits(log_p, target_t, torch.from_numpy(weight), reduction="mean")


def gscnn_class_weights(target, num_classes, upper_bound, norm):
    hist = np.histogram(target.flatten(), range(num_classes + 1), density=True)[0]
    if norm:
        return ((hist != 0) * upper_bound * (1 / hist)) + 1
    return ((hist != 0) * upper_bound * (1 - hist)) + 1


def gscnn_image_ce(inputs, targets, num_classes, upper_bound=1.0, norm=False, batch_weights=False, ignore=255):
    target_cpu = targets.numpy()
    if batch_weights:
        weights = gscnn_class_weights(target_cpu, num_classes, upper_bound, norm)
    loss = 0.0
    for i in range(inputs.shape[0]):
        if not batch_weights:
            weights = gscnn_class_weights(target_cpu[i], num_classes, upper_bound, norm)
        nll = torch.nn.NLLLoss(torch.Tensor(weights), ignore_index=ignore)
        loss += nll(F.log_softmax(inputs[i].unsqueeze(0), dim=1), targets[i].unsqueeze(0))
    return loss


def gscnn_ce2d(inputs, targets, ignore=255):
    return torch.nn.NLLLoss(ignore_index=ignore)(F.log_softmax(inputs, dim=1), targets)


def gscnn_edge_attention(inputs, target, edge, seg_loss):
    filler = torch.ones_like(target) * 255
    return seg_loss(inputs, torch.where(edge.max(1)[0] > 0.8, target, filler))


def gscnn_grad_mag(e):
    # convTri and gradient_central_diff return early in the published code.
    ox, oy = e, e
    mag = torch.sqrt(torch.mul(ox, ox) + torch.mul(oy, oy) + 1e-6)
    return mag / mag.max()


def gscnn_dual(input_logits, gts, u=None, ignore_pixel=255, tau=0.5):
    n, c, h, w = input_logits.shape
    th, eps = 1e-8, 1e-10
    ignore_mask = (gts == ignore_pixel).detach()
    input_logits = torch.where(ignore_mask.view(n, 1, h, w).expand(n, c, h, w), torch.zeros(n, c, h, w), input_logits)
    gt = torch.where(ignore_mask, torch.zeros(n, h, w).long(), gts.detach())
    gt = torch.eye(c)[gt].permute(0, 3, 1, 2).detach()
    logits = input_logits.view(n, c, -1)
    if u is not None:
        logits = logits + (-torch.log(eps - torch.log(u + eps)))
    g = F.softmax(logits / tau, 1).reshape((n, c, h, w))
    g = gscnn_grad_mag(g)
    g_hat = gscnn_grad_mag(gt)
    # `.view` in the original (PyTorch 1.0 returned contiguous results for permuted inputs).
    g = g.reshape(n, -1)
    g_hat = g_hat.reshape(n, -1)
    loss_ewise = F.l1_loss(g, g_hat, reduction="none")
    m1 = (g >= th).detach().float()
    l1 = torch.sum(loss_ewise * m1) / (torch.sum(m1) + eps)
    m2 = (g_hat >= th).detach().float()
    l2 = torch.sum(loss_ewise * m2) / (torch.sum(m2) + eps)
    return 0.5 * l1 + 0.5 * l2


def gen_gscnn():
    t = {}
    c = 5
    shape = (2, c, 9, 11)

    edge = torch.sigmoid(torch.randn(2, 1, 9, 11))
    et = (torch.rand(2, 1, 9, 11) < 0.3).float()
    et[torch.rand(2, 1, 9, 11) < 0.1] = 2.0
    x = leaf(edge)
    loss = gscnn_bce2d(x, et)
    loss.backward()
    t.update({"bce2d.input": edge, "bce2d.target": et, "bce2d.loss": one(loss), "bce2d.grad": x.grad})

    for name, kw in (
        ("image_ce", {}),
        ("image_ce_batch", {"batch_weights": True}),
        ("image_ce_norm", {"norm": True}),
        ("image_ce_bound", {"upper_bound": 2.5}),
    ):
        lg, tg = torch.randn(shape), labels_with_ignore((2, 9, 11), c, frac=0.15)
        tg[0, 0, :] = 3  # uneven class frequencies
        x = leaf(lg)
        loss = gscnn_image_ce(x, tg, c, **kw)
        loss.backward()
        t.update({f"{name}.logits": lg, f"{name}.target": tg, f"{name}.loss": one(loss), f"{name}.grad": x.grad})

    lg, tg = torch.randn(shape), labels_with_ignore((2, 9, 11), c)
    x = leaf(lg)
    loss = gscnn_ce2d(x, tg)
    loss.backward()
    t.update({"val_ce.logits": lg, "val_ce.target": tg, "val_ce.loss": one(loss), "val_ce.grad": x.grad})

    lg, tg = torch.randn(shape), labels_with_ignore((2, 9, 11), c)
    edge = torch.sigmoid(2.0 * torch.randn(2, 1, 9, 11))
    x = leaf(lg)
    loss = gscnn_edge_attention(x, tg, edge, lambda a, b: gscnn_image_ce(a, b, c))
    loss.backward()
    t.update(
        {"att.logits": lg, "att.target": tg, "att.edge": edge, "att.loss": one(loss), "att.grad": x.grad}
    )

    for name, noise in (("dual_noise", True), ("dual_plain", False)):
        lg, tg = torch.randn(shape), labels_with_ignore((2, 9, 11), c)
        u = torch.rand(2, c, 99) if noise else None
        x = leaf(lg)
        loss = gscnn_dual(x, tg, u)
        loss.backward()
        t.update({f"{name}.logits": lg, f"{name}.target": tg, f"{name}.loss": one(loss), f"{name}.grad": x.grad})
        if noise:
            t[f"{name}.uniform"] = u

    # Saturated softmax: many pixels tie at the max of the gradient magnitude.
    lg, tg = torch.randn(shape), labels_with_ignore((2, 9, 11), c)
    lg[:, 0] += 40.0
    x = leaf(lg)
    loss = gscnn_dual(x, tg, None)
    loss.backward()
    t.update({"dual_ties.logits": lg, "dual_ties.target": tg, "dual_ties.loss": one(loss), "dual_ties.grad": x.grad})

    # JointEdgeSegLoss (train mode, weights 1, 1, 1, 1).
    lg, tg = torch.randn(shape), labels_with_ignore((2, 9, 11), c)
    edge = torch.sigmoid(2.0 * torch.randn(2, 1, 9, 11))
    et = (torch.rand(2, 1, 9, 11) < 0.3).float()
    u = torch.rand(2, c, 99)
    x, e = leaf(lg), leaf(edge)
    seg_loss = lambda a, b: gscnn_image_ce(a, b, c)  # noqa: E731
    losses = {
        "seg": 1.0 * seg_loss(x, tg),
        "edge": 1.0 * 20 * gscnn_bce2d(e, et),
        "att": 1.0 * gscnn_edge_attention(x, tg, e, seg_loss),
        "dual": 1.0 * gscnn_dual(x, tg, u),
    }
    total = losses["seg"] + losses["edge"] + losses["att"] + losses["dual"]
    total.backward()
    t.update({"joint.logits": lg, "joint.target": tg, "joint.edge": edge, "joint.edge_target": et, "joint.uniform": u})
    for k, v in losses.items():
        t[f"joint.loss_{k}"] = one(v)
    t.update({"joint.total": one(total), "joint.grad": x.grad, "joint.edge_grad": e.grad})
    return t


# ---------------------------------------------------------------------------------------------
# mask losses and point sampling (transformers / torchvision)
# ---------------------------------------------------------------------------------------------
def gen_mask():
    t = {}
    inputs = 2.0 * torch.randn(5, 40)
    inputs[0, :4] = 0.0  # kinks at 0
    labels = (torch.rand(5, 40) < 0.4).float()
    t["masks.inputs"], t["masks.labels"], t["masks.num_masks"] = inputs, labels, f32(3.0)
    for name, fn in (
        ("dice", lambda x: mo.dice_loss(x, labels, 3.0)),
        ("sigmoid_ce", lambda x: mo.sigmoid_cross_entropy_loss(x, labels, 3.0)),
        ("focal", lambda x: mf_focal(x, labels, 3.0, alpha=0.25, gamma=2)),
        ("focal_noalpha_g1_5", lambda x: mf_focal(x, labels, 3.0, alpha=-1.0, gamma=1.5)),
        ("tv_focal_mean", lambda x: torchvision.ops.sigmoid_focal_loss(x, labels, reduction="mean")),
        ("tv_focal_sum", lambda x: torchvision.ops.sigmoid_focal_loss(x, labels, reduction="sum")),
    ):
        x = leaf(inputs)
        loss = fn(x)
        loss.backward()
        t[f"{name}.loss"], t[f"{name}.grad"] = one(loss), x.grad
    t["tv_focal_none.loss"] = torchvision.ops.sigmoid_focal_loss(inputs, labels, reduction="none")

    q = 2.0 * torch.randn(7, 40)
    tl = (torch.rand(3, 40) < 0.5).float()
    t["pair.inputs"], t["pair.labels"] = q, tl
    t["pair.dice"] = mo.pair_wise_dice_loss(q, tl)
    t["pair.sigmoid_ce"] = mo.pair_wise_sigmoid_cross_entropy_loss(q, tl)

    # sample_point: per-mask and shared coordinates, incl. the [0, 1] borders.
    for name, rc in (("point_sample", 3), ("point_sample_shared", 1)):
        inp = torch.randn(3, 9, 11)
        coords = torch.rand(rc, 50, 2)
        coords[0, :4] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.5, 0.5]])
        g = torch.randn(3, 50)
        x = leaf(inp)
        full = coords if rc == 3 else coords.repeat(3, 1, 1)
        out = mo.sample_point(x[:, None], full, align_corners=False).squeeze(1)
        (out * g).sum().backward()
        t.update(
            {
                f"{name}.input": inp,
                f"{name}.coords": coords,
                f"{name}.out": out.detach(),
                f"{name}.upstream": g,
                f"{name}.grad": x.grad,
            }
        )

    # Importance sampling: the coordinates chosen from recorded draws.
    crit = mo.OneFormerLoss(
        num_classes=5,
        matcher=mo.OneFormerHungarianMatcher(num_points=40),
        weight_dict={},
        eos_coef=0.1,
        num_points=40,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    )
    lg = torch.randn(3, 1, 9, 11)
    with Rand() as r:
        coords = crit.sample_points_using_uncertainty(lg, crit.calculate_uncertainty, 40, 3.0, 0.75)
    t["uncertainty.logits"] = lg.squeeze(1)
    t["uncertainty.coords"] = coords
    for i, d in enumerate(r.draws):
        t[f"uncertainty.rand.{i}"] = d
    return t


# ---------------------------------------------------------------------------------------------
# linear_sum_assignment (scipy)
# ---------------------------------------------------------------------------------------------
def gen_lsap():
    rng = np.random.default_rng(1234)
    cases = []
    for _ in range(40):
        r, c = rng.integers(1, 9, size=2)
        cases.append((rng.random((r, c)), False))
    for _ in range(40):
        r, c = rng.integers(1, 9, size=2)
        cases.append((rng.integers(0, 3, size=(r, c)).astype(np.float64), False))
    for _ in range(10):
        r, c = rng.integers(1, 7, size=2)
        cases.append((rng.integers(-2, 2, size=(r, c)).astype(np.float64), True))
    for shape in ((3, 3), (4, 6), (6, 4), (1, 5), (5, 1), (1, 1)):
        cases.append((np.full(shape, 2.5), False))
    cases.append((rng.random((1, 7)), False))
    cases.append((rng.random((7, 1)), False))
    cases.append((np.zeros((0, 4)), False))
    cases.append((np.zeros((4, 0)), False))
    cases.append((np.zeros((0, 0)), False))
    cases.append((rng.random((30, 40)), False))
    cases.append((rng.integers(0, 4, size=(40, 30)).astype(np.float64), False))
    cases.append((rng.random((25, 25)).astype(np.float32).astype(np.float64), False))
    big = rng.random((6, 6))
    big[0, 0] = 1e300
    cases.append((big, False))
    inf = np.inf
    cases.append((np.array([[inf, 1.0, 2.0], [3.0, inf, 1.0], [inf, 2.0, inf]]), False))
    cases.append((np.array([[inf, 1.0], [inf, 2.0]]), False))  # infeasible
    cases.append((np.array([[inf, 1.0], [inf, 2.0], [3.0, inf]]), False))  # feasible, tall
    cases.append((np.array([[1.0, np.nan], [0.0, 1.0]]), False))  # invalid
    cases.append((np.array([[1.0, -inf], [0.0, 1.0]]), False))  # invalid
    cases.append((np.array([[1.0, inf], [0.0, 1.0]]), True))  # maximize: +inf -> invalid

    costs, shapes, status, inds = [], [], [], []
    for m, maximize in cases:
        try:
            a, b = linear_sum_assignment(m, maximize=maximize)
            st = 0
        except ValueError as e:
            a, b = np.zeros(0, np.int64), np.zeros(0, np.int64)
            st = 2 if "infeasible" in str(e) else 1
        costs.append(m.reshape(-1))
        shapes.append([m.shape[0], m.shape[1], int(maximize)])
        status.append(st)
        inds.append(np.stack([a, b], 1).reshape(-1).astype(np.int64))
    return {
        "cost": torch.from_numpy(np.concatenate(costs).astype(np.float64)),
        "shape": torch.tensor(shapes, dtype=torch.int64),
        "status": torch.tensor(status, dtype=torch.int64),
        "indices": torch.from_numpy(np.concatenate(inds)),
    }


# ---------------------------------------------------------------------------------------------
# OneFormer: matcher, set criterion (aux layers), contrastive loss
# ---------------------------------------------------------------------------------------------
WEIGHTS = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0, "loss_contrastive": 0.5}


def oneformer_criterion(num_points):
    matcher = mo.OneFormerHungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=num_points)
    return mo.OneFormerLoss(
        num_classes=5,
        matcher=matcher,
        weight_dict=WEIGHTS,
        eos_coef=0.1,
        num_points=num_points,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
        contrastive_temperature=0.07,
    )


def targets(specs):
    """specs: list of (classes, (h, w)); masks are random blobs (0/1 floats)."""
    masks, classes = [], []
    for cls, (h, w) in specs:
        m = (F.avg_pool2d(torch.randn(len(cls), 1, h, w), 5, 1, 2) > 0.1).float().squeeze(1)
        masks.append(m.reshape(len(cls), h, w))
        classes.append(torch.tensor(cls, dtype=torch.int64))
    return masks, classes


def gen_oneformer():
    t = {}

    def run(name, num_points, specs, n_aux, contrastive, seed=None, q=7, hw=(12, 12), scale=None):
        b = len(specs)
        mask_labels, class_labels = targets(specs)
        layers = [(torch.randn(b, q, *hw) * 2.0, torch.randn(b, q, 6)) for _ in range(1 + n_aux)]
        leaves = [(leaf(m), leaf(c)) for m, c in layers]
        crit = oneformer_criterion(num_points)
        if scale is not None:
            with torch.no_grad():
                crit.logit_scale.fill_(scale)
        img_q = leaf(torch.randn(b, q, 8)) if contrastive else None
        txt_q = leaf(torch.randn(b, q, 8)) if contrastive else None
        aux = [{"masks_queries_logits": m, "class_queries_logits": c} for m, c in leaves[1:]]
        matchings = []
        matcher_forward = crit.matcher.forward

        def recording_forward(*a, **k):
            out = matcher_forward(*a, **k)
            matchings.append(out)
            return out

        crit.matcher.forward = recording_forward
        with Rand(seed) as r:
            losses = crit(
                leaves[0][0],
                leaves[0][1],
                img_q,
                mask_labels,
                class_labels,
                txt_q,
                auxiliary_predictions=aux if n_aux else None,
                calculate_contrastive_loss=contrastive,
            )
        raw = {k: v.detach().clone() for k, v in losses.items()}
        for key, weight in WEIGHTS.items():  # get_loss_dict
            for loss_key, loss in losses.items():
                if key in loss_key:
                    loss *= weight
        total = sum(losses.values())
        total.backward()
        for i, ((m, c), (lm, lc)) in enumerate(zip(layers, leaves)):
            t[f"{name}.layer{i}.masks"], t[f"{name}.layer{i}.classes"] = m, c
            t[f"{name}.layer{i}.masks_grad"], t[f"{name}.layer{i}.classes_grad"] = lm.grad, lc.grad
        for i, (m, cl) in enumerate(zip(mask_labels, class_labels)):
            t[f"{name}.target{i}.masks"], t[f"{name}.target{i}.classes"] = m, cl
        for layer, indices in enumerate(matchings):
            for i, (src, tgt) in enumerate(indices):
                t[f"{name}.match.{layer}.{i}"] = torch.stack([src, tgt], 1).reshape(-1).long()
        for k, v in raw.items():
            t[f"{name}.{k}"] = one(v)
        t[f"{name}.total"] = one(total)
        if contrastive:
            t[f"{name}.image_queries"], t[f"{name}.text_queries"] = img_q.detach(), txt_q.detach()
            t[f"{name}.image_queries_grad"], t[f"{name}.text_queries_grad"] = img_q.grad, txt_q.grad
            t[f"{name}.logit_scale"] = one(crit.logit_scale)
            t[f"{name}.logit_scale_grad"] = one(crit.logit_scale.grad)
        if seed is None:
            for i, d in enumerate(r.draws):
                t[f"{name}.rand.{i}"] = d
        else:
            t[f"{name}.seed"] = i64(seed)
        t[f"{name}.num_points"] = i64(num_points)
        t[f"{name}.num_aux"] = i64(n_aux)

    # Q=7, K=5, 3 + 2 targets (16x16 and 14x16: padded to the batch max), 12x12 predictions.
    run("criterion", 40, [([1, 4, 2], (16, 16)), ([0, 3], (14, 16))], n_aux=2, contrastive=True)
    run("one_empty", 40, [([2, 2, 0], (16, 16)), ([], (16, 16))], n_aux=0, contrastive=False)
    run("clamped_scale", 24, [([3], (16, 16)), ([1, 0], (16, 16))], n_aux=0, contrastive=True, scale=5.0)
    # OneFormer's default point counts, uniforms from splitmix64 (nothing random stored).
    run("default_points", 12544, [([1, 4], (16, 16))], n_aux=0, contrastive=False, seed=20240611)
    return t


def main(out_dir):
    torch.manual_seed(20240611)
    np.random.seed(20240611)
    torch.set_num_threads(1)
    d = os.path.join(out_dir, "losses")
    os.makedirs(d, exist_ok=True)
    meta = {
        "reference": f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"torchvision {torchvision.__version__}, scipy {scipy.__version__}, mmseg 1.2.2"
    }
    for name, gen in (
        ("cross_entropy", gen_cross_entropy),
        ("gscnn", gen_gscnn),
        ("mask", gen_mask),
        ("lsap", gen_lsap),
        ("oneformer", gen_oneformer),
        ("cross_entropy_resized", gen_cross_entropy_resized),
    ):
        tensors = {k: v.detach().clone().contiguous() for k, v in gen().items()}
        for k, v in tensors.items():
            assert v.dtype in (torch.float32, torch.float64, torch.int64), (k, v.dtype)
            if v.dtype == torch.float32:
                assert torch.isfinite(v).all(), k
        path = os.path.join(d, f"{name}.safetensors")
        save_file(tensors, path, metadata=meta)
        print(f"{path}: {len(tensors)} tensors, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
