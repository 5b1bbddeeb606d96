"""Parity fixtures for `segkit_oneformer::tokenizer` (the OneFormer task / text tokenizer).

Reference: transformers' `CLIPTokenizer` (models/clip/tokenization_clip.py, backed by the
`tokenizers` library) and `OneFormerProcessor` / `OneFormerImageProcessor`
(models/oneformer/processing_oneformer.py, image_processing_oneformer.py), versions pinned in
tests/parity/requirements.txt. No network: the CLIP vocabulary is built from the BPE file that the
Rust crate embeds (crates/oneformer/assets/bpe_simple_vocab_16e6.txt.gz, the file OpenAI CLIP and
open_clip ship), exactly as OpenAI's SimpleTokenizer derives it, and written out as the
vocab.json + merges.txt pair that HF checkpoints (e.g. shi-labs/oneformer_ade20k_swin_tiny) hold;
`CLIPTokenizer.from_pretrained` then loads that directory.

Usage: python tests/parity/gen_tokenizer.py tests/fixtures
Writes
  tests/fixtures/tokenizer/clip_ids.json   expected ids (see `main` for the layout)
  tests/fixtures/tokenizer/toy/{vocab.json,merges.txt}, toy_ids.json
                                           a small BPE pair (CLIP's first TOY_MERGES merges, other
                                           ids for the special tokens) to test loading from files.
"""

import ast
import collections
import gzip
import hashlib
import json
import os
import sys
import tempfile
import types

import numpy as np

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
BPE_GZ = os.path.join(ROOT, "crates", "oneformer", "assets", "bpe_simple_vocab_16e6.txt.gz")
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
SEQ_LEN = 77  # OneFormerProcessor's max_seq_length and task_seq_length defaults
TOY_MERGES = 600

# OneFormer's ADE20K-150 panoptic metadata (name, isthing), as in the OneFormer repository's
# ADE20K_150_CATEGORIES and transformers' tests/models/oneformer (the class_info that
# OneFormerImageProcessor reads). Names verbatim, trailing space of "window " included.
ONEFORMER_ADE20K = [
    ("wall", 0), ("building", 0), ("sky", 0), ("floor", 0), ("tree", 0), ("ceiling", 0),
    ("road, route", 0), ("bed", 1), ("window ", 1), ("grass", 0), ("cabinet", 1),
    ("sidewalk, pavement", 0), ("person", 1), ("earth, ground", 0), ("door", 1), ("table", 1),
    ("mountain, mount", 0), ("plant", 0), ("curtain", 1), ("chair", 1), ("car", 1), ("water", 0),
    ("painting, picture", 1), ("sofa", 1), ("shelf", 1), ("house", 0), ("sea", 0), ("mirror", 1),
    ("rug", 0), ("field", 0), ("armchair", 1), ("seat", 1), ("fence", 1), ("desk", 1),
    ("rock, stone", 0), ("wardrobe, closet, press", 1), ("lamp", 1), ("tub", 1), ("rail", 1),
    ("cushion", 1), ("base, pedestal, stand", 0), ("box", 1), ("column, pillar", 1),
    ("signboard, sign", 1), ("chest of drawers, chest, bureau, dresser", 1), ("counter", 1),
    ("sand", 0), ("sink", 1), ("skyscraper", 0), ("fireplace", 1), ("refrigerator, icebox", 1),
    ("grandstand, covered stand", 0), ("path", 0), ("stairs", 1), ("runway", 0),
    ("case, display case, showcase, vitrine", 1), ("pool table, billiard table, snooker table", 1),
    ("pillow", 1), ("screen door, screen", 1), ("stairway, staircase", 0), ("river", 0),
    ("bridge, span", 0), ("bookcase", 1), ("blind, screen", 0), ("coffee table", 1),
    ("toilet, can, commode, crapper, pot, potty, stool, throne", 1), ("flower", 1), ("book", 1),
    ("hill", 0), ("bench", 1), ("countertop", 1), ("stove", 1), ("palm, palm tree", 1),
    ("kitchen island", 1), ("computer", 1), ("swivel chair", 1), ("boat", 1), ("bar", 0),
    ("arcade machine", 1), ("hovel, hut, hutch, shack, shanty", 0), ("bus", 1), ("towel", 1),
    ("light", 1), ("truck", 1), ("tower", 0), ("chandelier", 1), ("awning, sunshade, sunblind", 1),
    ("street lamp", 1), ("booth", 1), ("tv", 1), ("plane", 1), ("dirt track", 0), ("clothes", 1),
    ("pole", 1), ("land, ground, soil", 0),
    ("bannister, banister, balustrade, balusters, handrail", 1),
    ("escalator, moving staircase, moving stairway", 0), ("ottoman, pouf, pouffe, puff, hassock", 1),
    ("bottle", 1), ("buffet, counter, sideboard", 0), ("poster, posting, placard, notice, bill, card", 0),
    ("stage", 0), ("van", 1), ("ship", 1), ("fountain", 1),
    ("conveyer belt, conveyor belt, conveyer, conveyor, transporter", 0), ("canopy", 0),
    ("washer, automatic washer, washing machine", 1), ("plaything, toy", 1), ("pool", 0),
    ("stool", 1), ("barrel, cask", 1), ("basket, handbasket", 1), ("falls", 0), ("tent", 0),
    ("bag", 1), ("minibike, motorbike", 1), ("cradle", 0), ("oven", 1), ("ball", 1),
    ("food, solid food", 1), ("step, stair", 1), ("tank, storage tank", 0), ("trade name", 1),
    ("microwave", 1), ("pot", 1), ("animal", 1), ("bicycle", 1), ("lake", 0), ("dishwasher", 1),
    ("screen", 1), ("blanket, cover", 0), ("sculpture", 1), ("hood, exhaust hood", 1), ("sconce", 1),
    ("vase", 1), ("traffic light", 1), ("tray", 1), ("trash can", 1), ("fan", 1), ("pier", 0),
    ("crt screen", 0), ("plate", 1), ("monitor", 1), ("bulletin board", 1), ("shower", 0),
    ("radiator", 1), ("glass, drinking glass", 1), ("clock", 1), ("flag", 1),
]

ODD_STRINGS = [
    "",
    " ",
    "\t\n  \r\n",
    "Hello, World!",
    "HELLO   world\t\tagain\n\nnew line",
    "  leading and trailing  ",
    "café",
    "cafe\u0301",  # combining acute: NFC makes it "café"
    "naïve résumé Ångström straße",
    "A\u030a and \u212b",  # combining ring / angstrom sign, both NFC to U+00C5
    "ΣΊΣΥΦΟΣ Οδυσσεύς",
    "İstanbul ǅemal ﬁne",
    "日本語のテキスト",
    "中文分词测试，标点。",
    "한국어 텍스트",
    "Привет, мир!",
    "مرحبا بالعالم",
    "שָׁלוֹם",
    "नमस्ते दुनिया",
    "ภาษาไทย",
    "I ❤️ 🍕 and 👨‍👩‍👧‍👦 family 🏳️‍🌈 🫠",
    "wait... what?!?! --- (yes) [no] {maybe} <tag> a/b\\c ~~~ @#$%^&*",
    "'s 't 're 've 'm 'll 'd",
    "don't you're I'M we'LL it's",
    "it\u2019s \u201cquoted\u201d",
    "1234567890",
    "3.14159 and 1,000,000 and 2nd 3rd 42nd",
    "٣٤٥ ½ ² Ⅻ ①",
    "&amp; &lt;b&gt; %20",
    "<|startoftext|>",
    "<|endoftext|>",
    "a <|endoftext|> b",
    "<|ENDOFTEXT|>",
    "<|endoftext|><|endoftext|>",
    "a\u0000b\u0007c",
    "zero\u200bwidth nbsp\u00a0space ideographic\u3000space",
    "tabs\tand\u000bvertical\u000cfeed\u0085nel\u2028ls",
    "the task is semantic",
    "the task is instance",
    "the task is panoptic",
    "a semantic photo",
    "an instance photo",
    "an panoptic photo",
    "the task is semantic " * 30,  # 151 tokens: truncated to 77
    "supercalifragilisticexpialidocious" * 20,  # one long word
    "\u00e9\u0301" * 100 + " 東京" * 60,  # long unicode
    "7" * 75,  # exactly fills 77
    "7" * 76,  # one token too many
]


def bytes_to_unicode():
    """OpenAI CLIP's byte -> printable unicode table (clip/simple_tokenizer.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_vocab_and_merges(n_merges=49152 - 256 - 2):
    with open(BPE_GZ, "rb") as f:
        raw = f.read()
    assert hashlib.sha256(raw).hexdigest() == BPE_SHA256, "unexpected BPE file"
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = lines[1 : n_merges + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    for m in merges:
        a, b = m.split(" ")
        vocab.append(a + b)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(set(vocab)) == len(vocab)
    return {t: i for i, t in enumerate(vocab)}, merges


def write_pair(d, vocab, merges):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")


def mmseg_ade20k_classes():
    """mmseg's ADE20KDataset METAINFO['classes'], read from the source without importing mmseg."""
    import mmseg

    path = os.path.join(os.path.dirname(mmseg.__file__), "datasets", "ade.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "METAINFO" for t in node.targets):
            for kw in node.value.keywords:
                if kw.arg == "classes":
                    return list(ast.literal_eval(kw.value))
    raise RuntimeError(f"no METAINFO classes in {path}")


def preprocess_text(tok, texts, max_length):
    """OneFormerProcessor._preprocess_text, the reference code itself (unbound)."""
    from transformers import OneFormerProcessor

    me = types.SimpleNamespace(tokenizer=tok)
    return OneFormerProcessor._preprocess_text(me, texts, max_length=max_length)


def end_to_end(tok, tmp):
    """OneFormerProcessor on a tiny image + annotation: task_inputs and text_inputs."""
    import torch
    from transformers import OneFormerImageProcessor, OneFormerProcessor

    info = {str(i): {"name": n, "isthing": t} for i, (n, t) in enumerate(ONEFORMER_ADE20K)}
    with open(os.path.join(tmp, "ade20k_panoptic.json"), "w", encoding="utf-8") as f:
        json.dump(info, f)
    names = [n for n, _ in ONEFORMER_ADE20K]
    img = np.zeros((24, 20, 3), dtype=np.uint8)
    # instance map: id -> class (person x3, car x2, wall, road, tree, window, sky x1)
    inst = {1: 12, 2: 12, 3: 20, 4: 0, 5: 12, 6: 20, 7: 6, 8: 4, 9: 8, 10: 2}
    seg_inst = np.full((24, 20), 255, dtype=np.int64)
    for k in inst:
        seg_inst[2 * k : 2 * k + 2] = k
    seg_inst[22:] = 255
    seg_sem = np.full((24, 20), 255, dtype=np.int64)
    for r, c in enumerate([3, 12, 20, 0, 6, 8, 149]):
        seg_sem[3 * r : 3 * r + 3] = c
    cases = []
    for num_text in (4, 12):
        ip = OneFormerImageProcessor(
            repo_path=tmp, class_info_file="ade20k_panoptic.json", num_text=num_text, num_labels=150,
            ignore_index=255, size={"shortest_edge": 32, "longest_edge": 64},
        )
        proc = OneFormerProcessor(image_processor=ip, tokenizer=tok, max_seq_length=SEQ_LEN, task_seq_length=SEQ_LEN)
        for task in ("semantic", "instance", "panoptic"):
            for kind, seg, mapping in (("instances", seg_inst, inst), ("classes", seg_sem, None)):
                enc = ip.encode_inputs([img], [task], segmentation_maps=[seg], instance_id_to_semantic_id=mapping)
                out = proc(images=[img], task_inputs=[task], segmentation_maps=[seg],
                           instance_id_to_semantic_id=mapping, return_tensors="pt")
                labels = enc["class_labels"][0].tolist()
                counts = collections.Counter(labels)
                if task == "semantic":  # get_semantic_annotations keeps one entry per class
                    counts = collections.Counter(set(labels))
                class_counts = [[names[c], counts[c]] for c in range(len(names)) if counts[c] > 0]
                ti = out["task_inputs"]
                assert ti.dtype == torch.int64 and tuple(ti.shape) == (1, SEQ_LEN)
                cases.append({
                    "task": task,
                    "annotation": kind,
                    "num_text": num_text,
                    "class_counts": class_counts,
                    "texts": enc["text_inputs"][0],
                    "text_inputs": out["text_inputs"][0].tolist(),
                    "task_inputs": ti[0].tolist(),
                })
    return cases


def main(out_root):
    from transformers import CLIPTokenizer

    out = os.path.join(out_root, "tokenizer")
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = clip_vocab_and_merges()
        assert len(vocab) == 49408
        clip_dir = os.path.join(tmp, "clip")
        write_pair(clip_dir, vocab, merges)
        tok = CLIPTokenizer.from_pretrained(clip_dir)
        assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)

        mmseg_names = mmseg_ade20k_classes()
        assert len(mmseg_names) == 150
        texts = list(ODD_STRINGS)
        texts += [f"a photo with a {n}" for n, _ in ONEFORMER_ADE20K]
        texts += [f"a photo with a {n}" for n in mmseg_names]
        encode = [{"text": t, "ids": tok(t)["input_ids"]} for t in texts]

        padded = []
        for length in (SEQ_LEN, 8, 3, 2):
            subset = ODD_STRINGS if length == SEQ_LEN else ODD_STRINGS[:12] + ODD_STRINGS[-9:]
            rows = preprocess_text(tok, list(subset), length)
            assert tuple(rows.shape) == (len(subset), length)
            padded += [{"text": t, "len": length, "ids": r} for t, r in zip(subset, rows.tolist())]

        e2e = end_to_end(tok, tmp)

        with open(os.path.join(out, "clip_ids.json"), "w", encoding="utf-8") as f:
            json.dump({
                "reference": "transformers CLIPTokenizer / OneFormerProcessor "
                             "(tests/parity/gen_tokenizer.py)",
                "vocab_size": len(tok),
                "seq_len": SEQ_LEN,
                "encode": encode,
                "padded": padded,
                "end_to_end": e2e,
            }, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")

        # Toy pair: CLIP's first TOY_MERGES merges; the special tokens get other ids.
        toy_vocab, toy_merges = clip_vocab_and_merges(TOY_MERGES)
        toy_dir = os.path.join(out, "toy")
        write_pair(toy_dir, toy_vocab, toy_merges)
        toy = CLIPTokenizer.from_pretrained(toy_dir)
        toy_texts = ODD_STRINGS[:30] + [f"a photo with a {n}" for n in mmseg_names[:20]]
        with open(os.path.join(out, "toy_ids.json"), "w", encoding="utf-8") as f:
            json.dump({
                "bos": toy.bos_token_id,
                "eos": toy.eos_token_id,
                "encode": [{"text": t, "ids": toy(t)["input_ids"]} for t in toy_texts],
            }, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
    print(f"wrote {out}: {len(encode)} encode cases, {len(padded)} padded, {len(e2e)} end-to-end")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "fixtures"))
