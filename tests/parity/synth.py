"""Deterministic synthetic weights: the Python twin of segkit_core::testing.

A weight is a pure function of (state-dict key, element index); see the Rust module's docs for
the definition. Values are bit-identical to Rust's (f64 arithmetic, one rounding to f32).
"""
import hashlib
import math

import numpy as np
import torch

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
M64 = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & M64
    return h


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def uniform(key: str, n: int) -> np.ndarray:
    """u in [0, 1), 24-bit dyadic, as f64."""
    seed = np.uint64(fnv1a64(key.encode("utf-8")))
    i = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = _splitmix64(seed + i * GOLDEN)
    return (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)


def synthetic_values(key: str, shape, period=None) -> np.ndarray:
    """The synthetic tensor `key` of `shape`. With `period`, element i takes the value of
    element i % period (a low-entropy variant that gzip shrinks ~100x, for committing whole
    checkpoints written by torch.save)."""
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape)) if shape else 1
    u = uniform(key, n if period is None else min(n, period))
    last = key.rsplit(".", 1)[-1]
    if last == "running_var":
        v = 0.5 + u
    elif last == "running_mean":
        v = 0.2 * (u - 0.5)
    elif last == "num_batches_tracked":
        v = np.zeros(u.size)
    elif len(shape) == 0:
        v = 0.5 + u
    elif len(shape) == 1:
        v = 0.5 + u if last == "weight" else 0.2 * (u - 0.5)
    else:
        fan_in = int(np.prod(shape[1:])) or 1
        v = (2.0 * u - 1.0) * (1.0 / math.sqrt(fan_in))
    if v.size != n:
        v = np.resize(v, n)
    return v.reshape(shape)


def synthetic_input(shape, key: str = "input") -> torch.Tensor:
    """An input image batch: U(-2, 2), same function as segkit_core::testing::synthetic_input."""
    shape = tuple(int(s) for s in shape)
    u = uniform(key, int(np.prod(shape)))
    return torch.from_numpy((4.0 * u - 2.0).reshape(shape).astype(np.float32))


def fill_(module: torch.nn.Module, prefix: str = "") -> torch.nn.Module:
    """Overwrites every parameter and buffer of `module` with its synthetic value."""
    sd = module.state_dict()
    new = {}
    for k, t in sd.items():
        v = synthetic_values(prefix + k, t.shape)
        new[k] = torch.from_numpy(v).to(t.dtype)
    module.load_state_dict(new)
    return module


def _signs(key: str, start: int, stop: int) -> np.ndarray:
    """Elements start..stop of the sign sequence `key`: -1 where uniform(key, .) < 0.5, else +1
    (chunks of one sequence, so a long tensor needs no n-sized u64 temporaries at once)."""
    seed = np.uint64(fnv1a64(key.encode("utf-8")))
    i = np.arange(start, stop, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = _splitmix64(seed + i * GOLDEN)
    return np.where((z >> np.uint64(63)) == 0, -1.0, 1.0)


def summary_seed(name: str, flat: np.ndarray) -> int:
    """A 63-bit seed from the output's name and values (sha256), so two fixtures with the same
    output name and shape probe different elements and use different projection signs."""
    h = hashlib.sha256(name.encode("utf-8") + b"\0" + np.ascontiguousarray(flat).tobytes())
    return int.from_bytes(h.digest()[:8], "little") & ((1 << 63) - 1)


def block_bounds(total: int, blocks: int):
    """Block b of an n-element tensor split into k = min(blocks, n) blocks covers flat indices
    [b * n // k, (b + 1) * n // k) (segkit_tests::sampled::block_bounds)."""
    k = min(blocks, total)
    return [(b * total // k, (b + 1) * total // k) for b in range(k)]


def sample_outputs(name: str, t: torch.Tensor, n: int = 2048, blocks: int = 4096) -> dict:
    """A compact summary of an output tensor that every element enters (checked by
    segkit_tests::assert_sampled_close):

    - `shape`; `n`; `seed` (summary_seed: from the name and the values, so it differs per fixture);
    - `val`: the values at up to n flat indices, unique(floor(uniform("sample.{seed:016x}", n) * N))
      (every element when N <= n);
    - `sum`, `abssum`, `absmax` of the whole tensor (float64);
    - `proj`: k = min(blocks, N) random projections, one per contiguous block of the flattened
      tensor (block_bounds): sum over the block of s_i * x_i with s_i = +-1 from
      uniform-style bits of "proj.{seed:016x}" (the top bit of splitmix64), in float64 stored
      as float32. A defect anywhere, even confined to a 16x16 patch, moves the projections of
      the blocks it touches.
    """
    t = t.detach().float().contiguous()
    flat = t.reshape(-1)
    arr = flat.numpy()
    total = flat.numel()
    seed = summary_seed(name, arr)
    if total <= n:
        idx = torch.arange(total, dtype=torch.int64)
    else:
        u = uniform(f"sample.{seed:016x}", n)
        idx = torch.from_numpy(np.unique((u * total).astype(np.int64)))
    x = arr.astype(np.float64)
    key = f"proj.{seed:016x}"
    proj = np.empty(min(blocks, total), dtype=np.float64)
    for b, (lo, hi) in enumerate(block_bounds(total, blocks)):
        proj[b] = float(np.dot(_signs(key, lo, hi), x[lo:hi]))
    return {
        f"{name}.shape": torch.tensor(list(t.shape), dtype=torch.int64),
        f"{name}.seed": torch.tensor([seed], dtype=torch.int64),
        f"{name}.n": torch.tensor([n], dtype=torch.int64),
        f"{name}.val": flat[idx].clone(),
        f"{name}.sum": torch.tensor([x.sum()], dtype=torch.float64),
        f"{name}.abssum": torch.tensor([np.abs(x).sum()], dtype=torch.float64),
        f"{name}.absmax": torch.tensor([np.abs(x).max() if total else 0.0], dtype=torch.float64),
        f"{name}.proj": torch.from_numpy(proj.astype(np.float32)),
    }


if __name__ == "__main__":
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    print(synthetic_values("conv1.weight", (2, 3, 1, 1)).ravel())
