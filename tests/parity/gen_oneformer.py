"""Parity fixtures for segkit's OneFormer (facade `segkit::OneFormer` over segkit-backbones'
Swin, segkit-necks' pixel decoder and segkit-oneformer's transformer decoder / text mapper)
against transformers' `OneFormerForUniversalSegmentation` (transformers 5.24, CPU, f32).

Weights: synthetic (synth.py) for every tensor of the checkpoint as `save_pretrained` writes
it (`model.*`, `criterion.*`; legacy Swin names such as `attention.self.query`), loaded back
with `from_pretrained` (as gen_swin.py). Inputs: `synth.synthetic_input`; task inputs are the CLIP ids of
"the task is {task}" padded to 77 as `OneFormerProcessor` makes them (tokenizer built offline
from open_clip's bpe_simple_vocab_16e6, see gen_tokenizer.py).

Cases (outputs stored with synth.sample_outputs):
- oneformer/full_swin_tiny_{task}: the oneformer_ade20k_swin_tiny architecture (150 queries,
  150 classes, Swin-T, 6 encoder layers, 10 decoder layers), eval mode, 1x3x97x129, for each
  task: class / mask logits, contrastive queries, task token, every auxiliary stage.
- oneformer/reduced_train: a reduced config (batch 2, 12 queries, 7 classes, width 64, Swin
  embed 16, MLP ratio 2) in training mode with dropout and drop path 0 and the text mapper (width 64, 2
  layers, 4 context embeddings, 8 text entries per image): logits, text queries, and HF's
  `loss_contrastive` for those queries.
- oneformer/resnet50: the reduced decoder (width 32) on transformers' ResNetBackbone
  (ResNet-50), eval, 1x3x65x97, task panoptic.
- oneformer/hf_dir_{safetensors,bin}/: the reduced config at width 32 without text mapper written by
  `save_pretrained` (model.safetensors), and the same with `torch.save`'s pytorch_model.bin + the model outputs for its input in
  oneformer/hf_dir_outputs.safetensors.

Run by `cargo xtask fixtures`, or: python tests/parity/gen_oneformer.py tests/fixtures
"""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import synth  # noqa: E402

TASKS = ["semantic", "instance", "panoptic"]


def clip_tokenizer():
    """HF CLIPTokenizer built offline from open_clip's embedded BPE file (the same file
    segkit-oneformer embeds)."""
    import tempfile

    from gen_tokenizer import clip_vocab_and_merges, write_pair
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    with tempfile.TemporaryDirectory(prefix="segkit_clip_") as d:
        write_pair(d, vocab, merges)
        return CLIPTokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"))


def task_inputs(tok, tasks, length=77):
    """OneFormerProcessor's task inputs (its own _preprocess_text: padded ids times the
    attention mask, so padding is 0), as floats."""
    from gen_tokenizer import preprocess_text

    ids = preprocess_text(tok, [f"the task is {t}" for t in tasks], max_length=length)
    return torch.cat(ids).float() if isinstance(ids, list) else ids.float()


def text_inputs(tok, entries, length=77):
    from gen_tokenizer import preprocess_text

    ids = preprocess_text(tok, entries, max_length=length)
    return torch.cat(ids).long() if isinstance(ids, list) else ids.long()


def full_config():
    from transformers import OneFormerConfig, SwinConfig

    backbone = SwinConfig(
        embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
        drop_path_rate=0.3, out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    labels = {i: f"class_{i}" for i in range(150)}
    return OneFormerConfig(backbone_config=backbone, id2label=labels, label2id={v: k for k, v in labels.items()})


def reduced_config(is_training, width):
    from transformers import OneFormerConfig, SwinConfig

    backbone = SwinConfig(
        embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=7, mlp_ratio=2.0,
        drop_path_rate=0.0, out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    labels = {i: f"thing_{i}" for i in range(7)}
    return OneFormerConfig(
        backbone_config=backbone, id2label=labels, label2id={v: k for k, v in labels.items()},
        num_queries=12, conv_dim=width, mask_dim=width, hidden_dim=width, num_attention_heads=4,
        dim_feedforward=2 * width, encoder_layers=2, encoder_feedforward_dim=96, decoder_layers=4,
        query_dec_layers=1, dropout=0.0, is_training=is_training, text_encoder_width=64,
        text_encoder_num_layers=2, text_encoder_n_ctx=4, text_encoder_proj_layers=2,
    )


def resnet_config():
    """A reduced OneFormer on transformers' ResNetBackbone (ResNet-50, the official repo's R50
    configs' backbone): width 32 decoder, 12 queries."""
    from transformers import ResNetConfig

    cfg = reduced_config(False, 32)
    cfg.backbone_config = ResNetConfig(depths=[3, 4, 6, 3], layer_type="bottleneck",
                                       out_features=["stage1", "stage2", "stage3", "stage4"])
    return cfg


def resnet_case(out_dir, tok):
    write_config(out_dir, "resnet50", resnet_config())
    model = build(resnet_config()).eval()
    x = synth.synthetic_input((1, 3, 65, 97), key="oneformer.resnet")
    ti = task_inputs(tok, ["panoptic"])
    with torch.no_grad():
        out = model(pixel_values=x, task_inputs=ti)
    d = outputs_dict(out, "")
    d["task_inputs"] = ti
    print("resnet50", tuple(out.masks_queries_logits.shape), float(out.masks_queries_logits.abs().max()))
    save(out_dir, "resnet50", d)


def build(config):
    """The model with every tensor of its *checkpoint* (the key names `save_pretrained` writes,
    which transformers 5 converts on load, e.g. Swin's `attention.self.query`) set to its
    synthetic value, as gen_swin.py does."""
    import tempfile

    from safetensors.torch import load_file
    from transformers import OneFormerForUniversalSegmentation

    model = OneFormerForUniversalSegmentation(config)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        path = os.path.join(d, "model.safetensors")
        sd = load_file(path)
        filled = {k: torch.from_numpy(synth.synthetic_values(k, v.shape)).to(v.dtype) for k, v in sd.items()}
        save_file(filled, path, metadata={"format": "pt"})
        model, info = OneFormerForUniversalSegmentation.from_pretrained(d, output_loading_info=True)
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info.get(kind), f"{kind}: {info[kind]}"
    want = sorted(round(float(v.double().sum()), 4) for v in filled.values() if v.is_floating_point())
    got = sorted(round(float(p.detach().double().sum()), 4) for p in model.state_dict().values() if p.is_floating_point())
    missing = set(want) - set(got)
    assert not missing, f"loaded tensors differ from the synthetic checkpoint: {sorted(missing)[:5]}"
    return model


def outputs_dict(out, prefix, n=2048):
    d = {}
    d.update(synth.sample_outputs(f"{prefix}class_queries_logits", out.class_queries_logits, n=n))
    d.update(synth.sample_outputs(f"{prefix}masks_queries_logits", out.masks_queries_logits, n=n))
    d.update(synth.sample_outputs(f"{prefix}contrastive_queries", out.transformer_decoder_contrastive_queries, n=n))
    d.update(synth.sample_outputs(f"{prefix}task_token", out.task_token, n=n))
    # Every auxiliary stage (one per decoder layer but the last), with a lighter summary: the
    # same prediction head as the final outputs, at every layer.
    for i, aux in enumerate(out.auxiliary_predictions):
        for k in ("class_queries_logits", "masks_queries_logits"):
            d.update(synth.sample_outputs(f"{prefix}aux{i}.{k}", aux[k], n=min(n, 256), blocks=1024))
    d[f"{prefix}aux.count"] = torch.tensor([len(out.auxiliary_predictions)], dtype=torch.int64)
    return d


def save(out_dir, name, d):
    path = os.path.join(out_dir, "oneformer", name + ".safetensors")
    save_file({k: v.contiguous() for k, v in d.items()}, path)
    print("wrote", path, os.path.getsize(path), "bytes")


def write_config(out_dir, name, config):
    path = os.path.join(out_dir, "oneformer", name + "_config.json")
    with open(path, "w") as f:
        f.write(config.to_json_string(use_diff=False))


def full_cases(out_dir, tok):
    write_config(out_dir, "full", full_config())
    model = build(full_config()).eval()
    x = synth.synthetic_input((1, 3, 97, 129), key="oneformer.full")
    for task in TASKS:
        ti = task_inputs(tok, [task])
        with torch.no_grad():
            out = model(pixel_values=x, task_inputs=ti)
        d = outputs_dict(out, "")
        d["task_inputs"] = ti
        print(task, tuple(out.class_queries_logits.shape), tuple(out.masks_queries_logits.shape),
              float(out.masks_queries_logits.abs().max()), float(out.class_queries_logits.abs().max()))
        save(out_dir, f"full_swin_tiny_{task}", d)


def reduced_train(out_dir, tok):
    from transformers.models.oneformer.modeling_oneformer import OneFormerLoss

    write_config(out_dir, "reduced_train", reduced_config(True, 64))
    model = build(reduced_config(True, 64)).train()
    x = synth.synthetic_input((2, 3, 61, 83), key="oneformer.reduced")
    ti = task_inputs(tok, ["panoptic", "semantic"])
    # num_text = num_queries - n_ctx = 8 entries per image (the processor's padding texts).
    entries = [
        ["a photo with a thing_1", "a photo with a thing_4"] + ["an panoptic photo"] * 6,
        ["a photo with a thing_0"] + ["a semantic photo"] * 7,
    ]
    tx = torch.stack([text_inputs(tok, e) for e in entries])
    out = model(pixel_values=x, task_inputs=ti, text_inputs=tx)
    d = outputs_dict(out, "")
    d.update(synth.sample_outputs("text_queries", out.text_queries))
    d["task_inputs"] = ti
    d["text_inputs"] = tx
    crit = model.criterion
    # HF's contrastive loss on these queries (logit_scale = the synthetic criterion.logit_scale).
    loss = OneFormerLoss.loss_contrastive(crit, out.transformer_decoder_contrastive_queries, out.text_queries)
    d["loss_contrastive"] = loss["loss_contrastive"].detach().reshape(1)
    print("reduced train", tuple(out.text_queries.shape), float(d["loss_contrastive"]))
    save(out_dir, "reduced_train", d)


def hf_dirs(out_dir, tok):
    model = build(reduced_config(False, 32)).eval()
    x = synth.synthetic_input((1, 3, 45, 70), key="oneformer.hfdir")
    ti = task_inputs(tok, ["instance"])
    with torch.no_grad():
        out = model(pixel_values=x, task_inputs=ti)
    d = outputs_dict(out, "")
    d["task_inputs"] = ti
    save(out_dir, "hf_dir_outputs", d)
    for kind in ["safetensors", "bin"]:
        path = os.path.join(out_dir, "oneformer", f"hf_dir_{kind}")
        shutil.rmtree(path, ignore_errors=True)
        model.save_pretrained(path)
        if kind == "bin":
            # transformers 5 writes safetensors only; a pytorch_model.bin directory is what
            # transformers 4 (and the shi-labs hub repos) hold: torch.save of the checkpoint dict.
            from safetensors.torch import load_file

            st = os.path.join(path, "model.safetensors")
            torch.save(load_file(st), os.path.join(path, "pytorch_model.bin"))
            os.remove(st)
        size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
        print("wrote", path, sorted(os.listdir(path)), size, "bytes")


PHOTO = (128, 96)  # width, height of the real-photo case


def photo_case(out_dir, tok):
    """The real photo end to end: OneFormerProcessor (ADE20K class info of the shi-labs
    checkpoints, written to a temp dir as the processor's `class_info_file`), the full model,
    and the three post-processing functions of OneFormerImageProcessor."""
    import tempfile

    import numpy as np
    from gen_tokenizer import ONEFORMER_ADE20K
    from PIL import Image
    from transformers import OneFormerImageProcessor, OneFormerProcessor

    src = os.path.join(os.path.dirname(__file__), "..", "fixtures", "images", "astronaut.png")
    img = Image.open(src).convert("RGB").crop((0, 64, 512, 448)).resize(PHOTO, Image.BILINEAR)
    png = os.path.join(out_dir, "oneformer", "photo.png")
    img.save(png)
    img = Image.open(png).convert("RGB")
    tmp = tempfile.mkdtemp(prefix="segkit_oneformer_")
    info = {str(i): {"name": n, "isthing": t} for i, (n, t) in enumerate(ONEFORMER_ADE20K)}
    with open(os.path.join(tmp, "ade20k_panoptic.json"), "w") as f:
        json.dump(info, f)
    ip = OneFormerImageProcessor(
        repo_path=tmp, class_info_file="ade20k_panoptic.json", num_text=134, num_labels=150,
        size={"shortest_edge": PHOTO[1], "longest_edge": 2048},
    )
    proc = OneFormerProcessor(image_processor=ip, tokenizer=tok)
    with open(os.path.join(out_dir, "oneformer", "photo_preprocessor_config.json"), "w") as f:
        f.write(ip.to_json_string())
    model = build(full_config()).eval()
    stuff = [i for i, (_, t) in enumerate(ONEFORMER_ADE20K) if not t]
    d = {}
    meta = {"thing_ids": ip.metadata["thing_ids"], "stuff_ids": stuff, "tasks": {}}
    target = [(PHOTO[1], PHOTO[0])]
    for task in TASKS:
        enc = proc(images=[img], task_inputs=[task], return_tensors="pt")
        pv = enc["pixel_values"]
        assert tuple(pv.shape) == (1, 3, PHOTO[1], PHOTO[0]), pv.shape
        manual = (torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float() / 255.0
                  - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        print("processor vs manual normalisation", float((pv[0] - manual).abs().max()))
        with torch.no_grad():
            out = model(pixel_values=pv, task_inputs=enc["task_inputs"])
        d[f"{task}.task_inputs"] = enc["task_inputs"].float()
        d.update(synth.sample_outputs(f"{task}.class_queries_logits", out.class_queries_logits))
        d.update(synth.sample_outputs(f"{task}.masks_queries_logits", out.masks_queries_logits))
        probs = out.class_queries_logits.softmax(-1)[0, :, :-1]
        print(task, "max class prob", float(probs.max()))
        if task == "semantic":
            sem = ip.post_process_semantic_segmentation(out, target_sizes=target)[0]
            d["semantic.map"] = sem.to(torch.int32).contiguous()
            print("semantic classes", torch.unique(sem).tolist()[:20])
        elif task == "instance":
            # Synthetic weights give near-uniform class probabilities (max ~0.03): thresholds low
            # enough that segments exist.
            kw = dict(threshold=0.015, mask_threshold=0.02, overlap_mask_area_threshold=0.05)
            r = ip.post_process_instance_segmentation(out, task_type="instance", target_sizes=target, **kw)[0]
            d["instance.map"] = r["segmentation"].to(torch.int32).contiguous()
            meta["tasks"]["instance"] = {**kw, "segments": r["segments_info"]}
            print("instance segments", len(r["segments_info"]), torch.unique(r["segmentation"]).tolist())
        else:
            kw = dict(threshold=0.015, mask_threshold=0.018, overlap_mask_area_threshold=0.05)
            r = ip.post_process_panoptic_segmentation(out, label_ids_to_fuse=set(stuff), target_sizes=target, **kw)[0]
            d["panoptic.map"] = r["segmentation"].to(torch.int32).contiguous()
            # The full logits, so that the test can run segkit's post-processing on exactly
            # transformers' model outputs too (the synthetic weights give near-uniform class
            # scores, so a few pixels are near-ties end to end).
            d["panoptic.class_queries_logits.full"] = out.class_queries_logits.contiguous()
            # Per pixel, the margin between the best and second-best score x mask product of
            # the kept queries (HF's compute_segments arg-max input): where it is at float
            # rounding level, the arg-max is a tie.
            scores, labels = out.class_queries_logits.softmax(-1)[0].max(-1)
            keep = (labels != out.class_queries_logits.shape[-1] - 1) & (scores > kw["threshold"])
            mk = torch.nn.functional.interpolate(out.masks_queries_logits[0, keep].sigmoid()[None], size=target[0],
                                                 mode="bilinear", align_corners=False, antialias=True)[0]
            top2 = (scores[keep][:, None, None] * mk).topk(2, dim=0).values
            d["panoptic.margin"] = (top2[0] - top2[1]).contiguous()
            d["panoptic.masks_queries_logits.full"] = out.masks_queries_logits.contiguous()
            meta["tasks"]["panoptic"] = {**kw, "segments": r["segments_info"]}
            print("panoptic segments", len(r["segments_info"]), torch.unique(r["segmentation"]).tolist())
    save(out_dir, "photo", d)
    with open(os.path.join(out_dir, "oneformer", "photo.json"), "w") as f:
        json.dump(meta, f, indent=1, default=float)


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures")
    os.makedirs(os.path.join(out_dir, "oneformer"), exist_ok=True)
    torch.manual_seed(0)
    tok = clip_tokenizer()
    full_cases(out_dir, tok)
    reduced_train(out_dir, tok)
    hf_dirs(out_dir, tok)
    resnet_case(out_dir, tok)
    photo_case(out_dir, tok)


if __name__ == "__main__":
    main()
