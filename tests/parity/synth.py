"""Deterministic synthetic weights: the Python twin of segkit_core::testing.

A weight is a pure function of (state-dict key, element index); see the Rust module's docs for
the definition. Values are bit-identical to Rust's (f64 arithmetic, one rounding to f32).
"""
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


def sample_outputs(name: str, t: torch.Tensor, n: int = 2048) -> dict:
    """A compact, order-sensitive summary of an output tensor: values at n deterministic flat
    indices, the shape, and the full sum and absolute sum (float64)."""
    t = t.detach().float().contiguous()
    flat = t.reshape(-1)
    total = flat.numel()
    if total <= n:
        idx = torch.arange(total, dtype=torch.int64)
    else:
        u = uniform("sample." + name, n)
        idx = torch.from_numpy(np.unique((u * total).astype(np.int64)))
    return {
        f"{name}.shape": torch.tensor(list(t.shape), dtype=torch.int64),
        f"{name}.idx": idx,
        f"{name}.val": flat[idx].clone(),
        f"{name}.sum": flat.double().sum().reshape(1),
        f"{name}.abssum": flat.double().abs().sum().reshape(1),
    }


if __name__ == "__main__":
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    print(synthetic_values("conv1.weight", (2, 3, 1, 1)).ravel())
