"""Reference numbers for segkit-train's parameter groups and gradient clipping
(crates/train/src/optim.rs, test `groups_and_clipping_match_torch`).

Four named parameters in PyTorch param_groups with their own lr / weight_decay (segkit's
ParamGroup multipliers: backbone lr x 0.1, no decay on the norm and the embedding),
`torch.nn.utils.clip_grad_norm_(all params, 0.5)` before each step (OneFormer's full-model
clipping), three steps of torch.optim.AdamW and of torch.optim.SGD. Prints the final
parameters and the pre-clip norms as Rust arrays (f64 math in the test compares with 1e-6).

Run: .venv/bin/python tests/parity/gen_optim_groups.py
"""
import torch

torch.set_default_dtype(torch.float32)

INIT = {
    "backbone.w": [[1.0, -2.0], [0.5, 3.0]],
    "head.b": [0.25, -1.0],
    "head.norm.weight": [1.0, 0.5],
    "head.embed.weight": [[0.3, -0.7], [1.1, 0.2]],
}
# (lr_mult, decay_mult)
GROUPS = {
    "backbone.w": (0.1, 1.0),
    "head.b": (1.0, 1.0),
    "head.norm.weight": (1.0, 0.0),
    "head.embed.weight": (1.0, 0.0),
}


def grads(i):
    s = float(i + 1)
    return {
        "backbone.w": [[0.1 * s, -0.2], [0.3, 0.05 * s]],
        "head.b": [0.5, -0.1 * s],
        "head.norm.weight": [0.2 * s, 0.4],
        "head.embed.weight": [[-0.3, 0.1 * s], [0.05, 0.6 / s]],
    }


def run(make_opt, base_lr, wd):
    params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in INIT.items()}
    groups = [
        {"params": [params[k]], "lr": base_lr * GROUPS[k][0], "weight_decay": wd * GROUPS[k][1]}
        for k in INIT
    ]
    opt = make_opt(groups)
    norms = []
    for i in range(3):
        g = grads(i)
        for k, p in params.items():
            p.grad = torch.tensor(g[k])
        n = torch.nn.utils.clip_grad_norm_([params[k] for k in INIT], 0.5, norm_type=2.0)
        norms.append(float(n))
        opt.step()
    flat = [x for k in INIT for x in params[k].detach().flatten().tolist()]
    return flat, norms


def show(name, vals):
    print(f"const {name}: [f64; {len(vals)}] = [{', '.join(repr(float(v)) for v in vals)}];")


adamw, n1 = run(lambda g: torch.optim.AdamW(g, lr=0.1, betas=(0.9, 0.999), eps=1e-8), 0.1, 0.1)
sgd, n2 = run(lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9), 0.1, 0.01)
show("TORCH_ADAMW", adamw)
show("TORCH_ADAMW_NORMS", n1)
show("TORCH_SGD", sgd)
show("TORCH_SGD_NORMS", n2)
