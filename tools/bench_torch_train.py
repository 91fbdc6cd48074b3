#!/usr/bin/env python3
"""PyTorch baseline for `cargo bench --bench train`: whole training steps of the same byte-level LM as a preset
(byte embedding -> the HourGlass of tools/golden.py with rotary positions -> LayerNorm -> head, cross-entropy,
AdamW with the preset's betas, gradient clipping), f32, training mode, random byte batches; median of 7 steps
after 2 warm-up steps, printed as tokens (bytes) per second like the Rust bench.

    python3 tools/bench_torch_train.py                 # the cpu preset on the CPU (torch threads = cores)
    python3 tools/bench_torch_train.py --device cuda   # the gpu preset on a GPU (TF32 off, as our sgemm)

The preset numbers below mirror src/train/recipe.rs (the printed line shows what ran); `--config
runs/<preset>/config.json` uses the exact settings a `hourglass train` run wrote instead.
"""
import argparse
import json
import os
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import golden  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


class LM(nn.Module):
    def __init__(self, m):
        super().__init__()
        d = m["d_model"]
        self.embedding = nn.Embedding(256, d)
        self.hourglass = golden.HourGlass(m["n_heads"], d, m["dropout"], m["d_ff"], m["shortening_factors"],
                                          depth=m.get("depth"), positions=m.get("positions", "none"))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 256)

    def forward(self, ids, targets):
        h = self.norm(self.hourglass(self.embedding(ids)))
        return F.cross_entropy(self.head(h).reshape(-1, 256), targets.reshape(-1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", help="a run's config.json (default: the cpu or gpu preset, by --device)")
    args = parser.parse_args()
    if args.config:
        with open(args.config) as f:
            c = json.load(f)
    else:
        # `hourglass train --preset cpu|gpu` writes these to config.json (src/train/recipe.rs).
        presets = {
            "cpu": dict(model=dict(n_heads=4, d_model=128, dropout=0.0, d_ff=512, shortening_factors=[3],
                                   depth=[1, 3, 1], positions="rotary"),
                        seq_len=192, batch=8, lr=3e-3, beta1=0.9, beta2=0.98, eps=1e-8, weight_decay=0.01,
                        clip=1.0),
            "gpu": dict(model=dict(n_heads=8, d_model=512, dropout=0.2, d_ff=2048, shortening_factors=[3],
                                   depth=[1, 4, 1], positions="rotary"),
                        seq_len=1024, batch=16, lr=6e-4, beta1=0.9, beta2=0.98, eps=1e-8, weight_decay=0.01,
                        clip=1.0),
        }
        c = presets["cpu" if args.device == "cpu" else "gpu"]
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = LM(c["model"]).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=c["lr"], betas=(c["beta1"], c["beta2"]), eps=c["eps"],
                            weight_decay=c["weight_decay"])
    seq, batch = c["seq_len"], c["batch"]
    tokens = seq * batch

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step():
        ids = torch.randint(0, 256, (seq + 1, batch), device=dev)
        opt.zero_grad(set_to_none=False)
        loss = model(ids[:-1], ids[1:])
        loss.backward()
        if c.get("clip", 0) > 0:
            nn.utils.clip_grad_norm_(model.parameters(), c["clip"])
        opt.step()

    times = []
    for i in range(9):
        sync()
        t = time.perf_counter()
        step()
        sync()
        if i >= 2:
            times.append(time.perf_counter() - t)
    median = sorted(times)[len(times) // 2]
    where = torch.cuda.get_device_name() if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    m = c["model"]
    print(f"torch {torch.__version__} {where}: d_model {m['d_model']} heads {m['n_heads']} d_ff {m['d_ff']} "
          f"factors {m['shortening_factors']} depth {m.get('depth')} positions {m.get('positions')} | "
          f"seq {seq} x batch {batch} | {median * 1e3:9.1f} ms/step {tokens / median:10.0f} tokens/s")


if __name__ == "__main__":
    main()
