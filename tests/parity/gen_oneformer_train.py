"""Parity fixtures for OneFormer training (issue 15): the targets OneFormerProcessor builds from
panoptic ground truth, and one training step of `OneFormerForUniversalSegmentation` (the loss
dictionary and every parameter's gradient), transformers 5.x, CPU, f32.

Oracle: transformers' `OneFormerProcessor` (image processor with a `class_info_file`, CLIP
tokenizer built offline as gen_oneformer.py does) and `OneFormerForUniversalSegmentation`
with `mask_labels`, `class_labels` and `text_inputs` (`get_loss_dict`, `get_loss`).

Data: three 64x64 panoptic id maps drawn here (0 = void, segments 1.. in annotation order,
5 classes of which 0-2 are things), stored with their segments (id, class).
- `targets.{i}.{task}.*`: for each image and each task, the processor's `class_labels`,
  `mask_labels`, `text_inputs` and `task_inputs` on that image alone (a call per image: the
  processor shares its per-class text counts across a batch call, see segkit's targets docs).
- The training step: the batch of the three images with tasks (panoptic, instance, semantic)
  and the processor's targets, a reduced config (Swin embed 8, width 64 (the text mapper width, which HF requires to be the hidden width; conv_dim = hidden_dim, since transformers leaves the decoder's input projections unregistered otherwise), 10 queries, 2 context
  embeddings, 8 text entries, 3 decoder layers -> 2 auxiliary layers, text mapper width 64 (one head: HF uses width // 64 heads),
  1 pixel-decoder encoder layer), dropout and drop path 0, train mode, synthetic weights for
  every checkpoint key (gen_oneformer.build). The criterion uses OneFormer's defaults (12544
  points, oversample 3, importance 0.75, no-object weight 0.1, weights 2 / 5 / 5 / 0.5).
  Random point draws: `torch.rand` is replaced during the loss by splitmix64 uniforms from
  `SEED` (gen_losses.Rand), the values segkit's `SeededPointSource::new(SEED)` yields, in the
  same call order; the forward pass itself makes no `torch.rand` call (checked).
  Stored: `loss.<key>` (every key of the weighted loss dict), `loss.total`, and
  `grad.<checkpoint key>` for every parameter; the text mapper's token embedding
  (49408 rows) only at the rows of the tokens used (`grad_rows.<key>` lists them; every other
  row's gradient is exactly 0 in PyTorch, which the test asserts for segkit).

Run: .venv/bin/python tests/parity/gen_oneformer_train.py tests/fixtures
"""
import json
import os
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import synth  # noqa: E402
from gen_oneformer import build, clip_tokenizer  # noqa: E402

SEED = 20261205
TASKS = ["panoptic", "instance", "semantic"]
CLASSES = [("person", 1), ("car", 1), ("dog", 1), ("sky", 0), ("grass", 0)]
H = W = 64
NUM_QUERIES, N_CTX = 10, 2
NUM_TEXT = NUM_QUERIES - N_CTX


def panoptic_maps():
    """Three id maps: stuff bands (sky top, grass bottom, sometimes two grass segments) and
    thing blobs (rectangles and discs) on top, a few void pixels."""
    rng = np.random.default_rng(7)
    maps, segs = [], []
    yy, xx = np.mgrid[0:H, 0:W]
    for i in range(3):
        ids = np.zeros((H, W), np.int32)
        seg = []

        def add(mask, cls):
            sid = len(seg) + 1
            ids[mask] = sid
            seg.append((sid, cls))

        add(yy < 24 + 4 * i, 3)
        add(yy >= 24 + 4 * i, 4)
        if i == 2:
            add((yy >= 40) & (xx >= 48), 4)  # a second grass segment: merged for semantic
        for k in range(3 + i):
            cls = int(rng.integers(0, 3))
            cy, cx = rng.integers(8, H - 8, size=2)
            r = int(rng.integers(4, 9))
            if k % 2 == 0:
                m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                m = (abs(yy - cy) <= r) & (abs(xx - cx) <= r // 2 + 2)
            add(m, cls)
        ids[rng.random((H, W)) < 0.01] = 0  # void
        # Drop segments fully overwritten (none expected), keep annotation order.
        present = set(np.unique(ids).tolist())
        seg = [(s, c) for s, c in seg if s in present]
        maps.append(ids)
        segs.append(seg)
    return maps, segs


def processor(tok):
    from transformers import OneFormerImageProcessor, OneFormerProcessor

    tmp = tempfile.mkdtemp(prefix="segkit_oneformer_train_")
    info = {str(i): {"name": n, "isthing": t} for i, (n, t) in enumerate(CLASSES)}
    with open(os.path.join(tmp, "classes.json"), "w") as f:
        json.dump(info, f)
    ip = OneFormerImageProcessor(
        repo_path=tmp, class_info_file="classes.json", num_text=NUM_TEXT, num_labels=len(CLASSES),
        do_resize=False, ignore_index=0,
    )
    return OneFormerProcessor(image_processor=ip, tokenizer=tok)


def targets_case(proc, maps, segs, d):
    img = np.zeros((H, W, 3), np.uint8)
    out = {}
    for i, (ids, seg) in enumerate(zip(maps, segs)):
        d[f"pan.{i}.ids"] = torch.from_numpy(ids.astype(np.int64))
        d[f"pan.{i}.segments"] = torch.tensor(seg, dtype=torch.int64).reshape(-1, 2)
        inst2sem = {s: c for s, c in seg}
        inst2sem[0] = 0  # void: removed by ignore_index=0 before the lookup
        for task in TASKS:
            enc = proc(images=[img], task_inputs=[task], segmentation_maps=[ids],
                       instance_id_to_semantic_id=inst2sem, return_tensors="pt")
            p = f"targets.{i}.{task}"
            d[f"{p}.class_labels"] = enc["class_labels"][0].long()
            d[f"{p}.mask_labels"] = enc["mask_labels"][0].to(torch.uint8).contiguous()  # 0 / 1
            d[f"{p}.text_inputs"] = enc["text_inputs"][0].long()
            d[f"{p}.task_inputs"] = enc["task_inputs"][0].float()
            out[(i, task)] = enc
            print(p, enc["class_labels"][0].tolist())
    return out


def tiny_config():
    from transformers import OneFormerConfig, SwinConfig

    backbone = SwinConfig(
        embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=7, mlp_ratio=2.0,
        drop_path_rate=0.0, out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    labels = {i: n for i, (n, _) in enumerate(CLASSES)}
    return OneFormerConfig(
        backbone_config=backbone, id2label=labels, label2id={v: k for k, v in labels.items()},
        num_queries=NUM_QUERIES, conv_dim=64, mask_dim=64, hidden_dim=64, num_attention_heads=4,
        dim_feedforward=128, encoder_layers=1, encoder_feedforward_dim=64, decoder_layers=3,
        query_dec_layers=1, dropout=0.0, is_training=True, text_encoder_width=64,
        text_encoder_num_layers=1, text_encoder_n_ctx=N_CTX, text_encoder_proj_layers=2,
        text_encoder_context_length=77,
    )


class NoRand:
    """Fails if the forward pass draws from torch.rand (it must not: dropout / drop path 0)."""

    def __init__(self):
        self.orig = torch.rand

    def __call__(self, *a, **k):
        raise AssertionError("torch.rand called during the forward pass")

    def __enter__(self):
        torch.rand = self

    def __exit__(self, *a):
        torch.rand = self.orig


def checkpoint_names(model):
    """Parameter name -> the checkpoint key save_pretrained writes for it (transformers 5
    renames a few legacy keys on load/save; matched by the synthetic values)."""
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as dd:
        model.save_pretrained(dd)
        sd = load_file(os.path.join(dd, "model.safetensors"))
    by_key = {}
    params = dict(model.named_parameters())
    for name in params:
        if name in sd:
            by_key[name] = name
    rest = [n for n in params if n not in by_key]
    used = set(by_key.values())
    for name in rest:
        p = params[name].detach()
        cands = [k for k, v in sd.items() if k not in used and v.shape == p.shape and torch.equal(v, p)]
        assert len(cands) == 1, f"{name}: checkpoint candidates {cands}"
        by_key[name] = cands[0]
        used.add(cands[0])
    return by_key


def train_step(proc, maps, segs, encs, d, out_dir):
    from gen_losses import Rand

    cfg = tiny_config()
    with open(os.path.join(out_dir, "oneformer_train_config.json"), "w") as f:
        f.write(cfg.to_json_string(use_diff=False))
    model = build(cfg).train()
    # build() gives every checkpoint tensor a synthetic value, the criterion's class-weight
    # buffer too; training uses its real value (1 per class, no_object_weight for "no object"),
    # which segkit takes from the config.
    with torch.no_grad():
        w = model.criterion.empty_weight
        w.fill_(1.0)
        w[-1] = cfg.no_object_weight
    names = checkpoint_names(model)
    x = synth.synthetic_input((3, 3, H, W), key="oneformer.train")
    encs = [encs[(i, t)] for i, t in enumerate(TASKS)]
    task_inputs = torch.cat([e["task_inputs"] for e in encs]).float()
    text_inputs = torch.cat([e["text_inputs"] for e in encs]).long()
    mask_labels = [e["mask_labels"][0].float() for e in encs]
    class_labels = [e["class_labels"][0].long() for e in encs]
    captured = {}
    get_loss_dict = model.get_loss_dict

    def capture(*a, **k):
        with Rand(SEED) as r:
            ld = get_loss_dict(*a, **k)
        captured["draws"] = len(r.draws)
        captured["dict"] = ld
        return ld

    model.get_loss_dict = capture
    with NoRand():
        # The model's forward up to the loss: NoRand is lifted by capture's Rand inside.
        out = model(pixel_values=x, task_inputs=task_inputs, text_inputs=text_inputs,
                    mask_labels=mask_labels, class_labels=class_labels)
    out.loss.backward()
    ld = captured["dict"]
    print("rand calls", captured["draws"], "loss keys", list(ld))
    for k, v in ld.items():
        d[f"loss.{k}"] = v.detach().reshape(1)
        print(f"  {k} = {float(v.detach()):.6f}")
    d["loss.total"] = out.loss.detach().reshape(1)
    d["loss.keys"] = torch.tensor([len(ld)], dtype=torch.int64)
    d["seed"] = torch.tensor([SEED], dtype=torch.int64)
    d["input"] = x
    n_grad, no_grad = 0, []
    for name, p in model.named_parameters():
        key = names[name]
        if p.grad is None:  # weights the forward never uses (Swin's final layernorm)
            no_grad.append(key)
            continue
        g = p.grad.detach().float()
        if key.endswith("text_mapper.text_encoder.token_embedding.weight"):
            rows = torch.nonzero(g.abs().sum(1) > 0).reshape(-1)
            d[f"grad_rows.{key}"] = rows.long()
            g = g[rows]
        d[f"grad.{key}"] = g.contiguous()
        n_grad += g.numel()
    print("parameters", len(names), "gradient values stored", n_grad, "without gradient", no_grad)
    return no_grad


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tok = clip_tokenizer()
    proc = processor(tok)
    maps, segs = panoptic_maps()
    d = {}
    encs = targets_case(proc, maps, segs, d)
    no_grad = train_step(proc, maps, segs, encs, d, out_dir)
    path = os.path.join(out_dir, "oneformer_train.safetensors")
    save_file({k: v.contiguous() for k, v in d.items()}, path)
    meta = {"classes": [n for n, _ in CLASSES], "thing_ids": [i for i, (_, t) in enumerate(CLASSES) if t],
            "tasks": TASKS, "num_text": NUM_TEXT, "height": H, "width": W, "seed": SEED,
            "no_gradient": no_grad}
    with open(os.path.join(out_dir, "oneformer_train.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print("wrote", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
