#!/usr/bin/env python3
"""PyTorch baseline for `cargo bench --bench gpu`: the same HourGlass (the reference model of tools/golden.py),
training mode, f32 (TF32 off, as our cuBLAS sgemm), timed with CUDA events after warm-up, median of 10.

Prints tokens/s for forward and forward+backward, for the reference's attention (einsum, the full score
matrix in memory) and for the same model with PyTorch's fused `scaled_dot_product_attention`.
Run on a GPU machine: python3 tools/bench_torch.py
"""
import os
import sys

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import golden  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def sdpa_forward(self, *, query, key, value, mask=None):
    """MultiHeadAttention.forward with PyTorch's fused causal attention instead of einsum + softmax."""
    seq_len, batch, _ = query.shape
    q, k, v = (p(t).permute(1, 2, 0, 3) for p, t in ((self.query, query), (self.key, key), (self.value, value)))
    x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout.p if self.training else 0.0, is_causal=True)
    return self.output(x.permute(2, 0, 1, 3).reshape(seq_len, batch, -1))


def median_ms(fn, warmup=3, runs=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[runs // 2]


def bench(name, heads, d_model, d_ff, factors, seq, batch):
    model = golden.HourGlass(heads, d_model, 0.1, d_ff, factors).cuda().train()
    x = torch.randn(seq, batch, d_model, device="cuda")
    gy = torch.randn_like(x)
    tokens = seq * batch

    def fwd():
        with torch.no_grad():
            model(x)

    def fwd_bwd():
        model.zero_grad(set_to_none=False)
        model(x).backward(gy)

    label = f"{name} [{seq}, {batch}, {d_model}] {factors}"
    for attn in ("reference einsum", "sdpa"):
        golden.MultiHeadAttention.forward = sdpa_forward if attn == "sdpa" else original_forward
        try:
            ms = median_ms(fwd)
            print(f"torch {attn:<17} {label:<36} forward  {ms:9.3f} ms {tokens / ms * 1e3:12.0f} tokens/s")
            ms = median_ms(fwd_bwd)
            print(f"torch {attn:<17} {label:<36} fwd+bwd  {ms:9.3f} ms {tokens / ms * 1e3:12.0f} tokens/s")
        except torch.OutOfMemoryError:
            print(f"torch {attn:<17} {label:<36} out of memory")
        torch.cuda.empty_cache()


original_forward = golden.MultiHeadAttention.forward

if __name__ == "__main__":
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    bench("seed", 4, 512, 2048, [2, 3], 10, 32)
    bench("large", 8, 512, 2048, [2, 2], 4096, 8)
