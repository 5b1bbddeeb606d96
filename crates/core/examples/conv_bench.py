"""PyTorch side of conv_bench.rs: the same layers, median of 11 runs, conv + bias (+ relu).

`python conv_bench.py [THREADS]` (default 2)."""
import os
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
CASES = [
    ("3x3 512->512 @16", (1, 512, 16, 16), 512, 3, 1, 1, 1, 1),
    ("3x3 256->256 @32", (1, 256, 32, 32), 256, 3, 1, 1, 1, 1),
    ("3x3 128->128 @64", (1, 128, 64, 64), 128, 3, 1, 1, 1, 1),
    ("3x3 256->256 @128", (1, 256, 128, 128), 256, 3, 1, 1, 1, 1),
    ("1x1 1024->256 @64", (1, 1024, 64, 64), 256, 1, 1, 0, 1, 1),
    ("3x3 s2 64->64 @256", (1, 64, 256, 256), 64, 3, 2, 1, 1, 1),
    ("7x7 s2 3->64 @512", (1, 3, 512, 512), 64, 7, 2, 3, 1, 1),
    ("dw3x3 d4 512 @64", (1, 512, 64, 64), 512, 3, 1, 4, 4, 512),
    ("3x3 d2 512->512 @64", (1, 512, 64, 64), 512, 3, 1, 2, 2, 1),
    ("1x1 256->1024 @64", (1, 256, 64, 64), 1024, 1, 1, 0, 1, 1),
    ("1x1 1024->256 @32", (1, 1024, 32, 32), 256, 1, 1, 0, 1, 1),
    ("1x1 2048->512 @16", (1, 2048, 16, 16), 512, 1, 1, 0, 1, 1),
    ("1x1 512->2048 @16", (1, 512, 16, 16), 2048, 1, 1, 0, 1, 1),
]


# SEGKIT_BENCH_CPU: process CPU time instead of wall time (for a busy machine, 1 thread);
# SEGKIT_BENCH_MIN: minimum instead of median. Same switches as conv_bench.rs.
CLOCK = time.process_time if os.environ.get("SEGKIT_BENCH_CPU") else time.perf_counter
RUNS = int(os.environ.get("SEGKIT_BENCH_RUNS", "11"))


def median_ms(f, runs=RUNS):
    f()
    t = []
    for _ in range(runs):
        s = CLOCK()
        f()
        t.append((CLOCK() - s) * 1e3)
    return sorted(t)[0 if os.environ.get("SEGKIT_BENCH_MIN") else runs // 2]


print("threads", torch.get_num_threads(), "torch", torch.__version__)
with torch.inference_mode():
    for name, xs, o, k, s, p, d, g in CASES:
        x = torch.randn(xs)
        w = torch.randn(o, xs[1] // g, k, k) * 0.05
        b = torch.randn(o) * 0.1
        ours = median_ms(lambda: F.conv2d(x, w, b, s, p, d, g))
        relu = median_ms(lambda: F.relu(F.conv2d(x, w, b, s, p, d, g)))
        print(f"{name:<22} torch  {ours:8.2f} ms (+relu {relu:8.2f})")
