#!/usr/bin/env python3
"""Rooflines and PyTorch kernel microbenchmarks at the enwik8 preset's shapes (docs/perf.md), one JSON line per
result appended to `--json`, each also printed.

Rooflines (`--only rooflines`): a large device-to-device copy (GB/s, bytes read + written), a large bf16 and
f32 (TF32 off) torch.matmul (TFLOP/s). Kernels (`--only kernels`), at full length L = 2048 and shortened
683 (factor 3), batch 8, 8 heads, d_head 64, d_model 512, d_ff 2048:

    attention_fwd / attention_bwd   causal SDPA, bf16 with the flash, cuDNN and efficient backends, f32 with the
                                    efficient and math backends; FLOPs 4 B H L^2 dh / 2 forward, 2.5x that back
    layernorm_fwd / layernorm_bwd   [L B, 512], f32 and bf16
    shift_shorten(_bwd)             ShiftRight(2) + AvgPool(3) on [2048, 8, 512] (golden.py's modules), f32
    upsample_skip(_bwd)             repeat 3 + residual back to [2048, 8, 512] (golden.NaiveUpSampling), f32
    embedding(_bwd)                 gather of 8 * 2048 ids from [256, 512], and its scatter-add backward, f32
    softmax_xent                    F.cross_entropy forward + backward on logits [8 * 2048, 256], f32
    adamw                           torch.optim.AdamW step over the preset's parameters (fused and foreach), f32
    gemm                            each GEMM of a layer (x [M, K] times W^T, W [N, K]): qkv 1536x512, proj
                                    512x512, ff1 2048x512, ff2 512x2048 at M = 16384 and 5464 tokens, and the
                                    head 256x512, f32 (TF32 off) and bf16

Memory-bound ops report GB/s over the bytes an ideal kernel moves (in the line's `bytes`) and
`fraction_of_copy` (GB/s over the copy roofline of the same run); compute-bound ones TFLOP/s and
`fraction_of_gemm` (over the gemm roofline of their precision). Times: median of CUDA-event-timed runs after
warm-up (time.perf_counter on the CPU).

    python3 tools/bench_torch_kernels.py --json results.jsonl                    # on a GPU
    python3 tools/bench_torch_kernels.py --tiny --device cpu --json /tmp/k.jsonl  # the tools' own test
"""
import argparse
import math
import os
import sys
import time

import torch
from torch.nn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_torch_step as step  # noqa: E402
import golden  # noqa: E402

# long: the longer contexts our gpu bench times attention at too, (L, B).
FULL = dict(L=2048, B=8, H=8, dh=64, D=512, F=2048, k=3, V=256, copy_bytes=1 << 30, gemm=8192,
            long=[(4096, 4), (8192, 2)])
TINY = dict(L=48, B=2, H=2, dh=16, D=32, F=64, k=3, V=256, copy_bytes=16 << 20, gemm=256, long=[(96, 1)])

ATTENTION_VARIANTS = [("bf16-flash", torch.bfloat16, "FLASH_ATTENTION"),
                      ("bf16-cudnn", torch.bfloat16, "CUDNN_ATTENTION"),
                      ("bf16-efficient", torch.bfloat16, "EFFICIENT_ATTENTION"),
                      ("f32-efficient", torch.float32, "EFFICIENT_ATTENTION"),
                      ("f32-math", torch.float32, "MATH")]


class Bench:
    def __init__(self, device, json_path, reps, warmup):
        self.device = torch.device(device)
        self.cuda = device == "cuda"
        self.json = json_path
        self.reps, self.warmup = reps, warmup
        self.name = step.device_name(device)
        self.date = step.today()
        self.copy_gbps = None
        self.gemm_tflops = {}

    def time(self, fn, setup=None):
        """Median seconds of fn() over self.reps runs after self.warmup (setup() before each, untimed)."""
        times = []
        for i in range(self.warmup + self.reps):
            if setup is not None:
                setup()
            if self.cuda:
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                t = start.elapsed_time(end) / 1e3
            else:
                t0 = time.perf_counter()
                fn()
                t = time.perf_counter() - t0
            if i >= self.warmup:
                times.append(t)
        times.sort()
        return times[len(times) // 2]

    def emit(self, rec, show=True):
        rec = dict(rec, date=self.date, device=self.name, impl="pytorch")
        step.append_json(self.json, rec)
        if show:
            print(describe(rec), flush=True)
        return rec

    def memory(self, op, variant, shape, seconds, nbytes, **extra):
        gbps = nbytes / seconds / 1e9
        return self.emit(dict(kind="kernel", op=op, variant=variant, shape=shape, ms=seconds * 1e3, tflops=None,
                              gbps=gbps, bytes=nbytes,
                              fraction_of_copy=gbps / self.copy_gbps if self.copy_gbps else None, **extra))

    def compute(self, op, variant, shape, seconds, flops, **extra):
        tflops = flops / seconds / 1e12
        roof = self.gemm_tflops.get("bf16" if variant.startswith("bf16") else "f32")
        return self.emit(dict(kind="kernel", op=op, variant=variant, shape=shape, ms=seconds * 1e3, tflops=tflops,
                              gbps=None, flops=flops, fraction_of_gemm=tflops / roof if roof else None, **extra))

    def skipped(self, op, variant, shape, why):
        return self.emit(dict(kind="kernel", op=op, variant=variant, shape=shape, ms=None, tflops=None, gbps=None,
                              status="skipped", why=why))


def describe(rec):
    if rec.get("status") == "skipped":
        return (f"{rec['kind']:<8} {rec.get('op', rec.get('name'))} {rec.get('variant', '')} [{rec.get('shape')}] "
                f"skipped: {rec['why']}")
    if rec["kind"] == "roofline":
        rate = f"{rec['gbps']:9.1f} GB/s" if rec.get("gbps") else f"{rec['tflops']:9.2f} TFLOP/s"
        return f"roofline {rec['name']:<26} {rate}  shape {rec['shape']}  ({rec['ms']:.3f} ms)"
    rate = f"{rec['tflops']:9.2f} TFLOP/s" if rec.get("tflops") is not None else f"{rec['gbps']:9.1f} GB/s   "
    frac = rec.get("fraction_of_copy") if rec.get("gbps") is not None else rec.get("fraction_of_gemm")
    frac = f"  {100 * frac:5.1f}% of roofline" if frac is not None else ""
    label = f"{rec['op']} {rec.get('name', '')}".strip()
    return f"kernel   {label:<22} {rec['variant']:<15} {rec['shape']:<28} {rec['ms']:9.4f} ms {rate}{frac}"


# --------------------------------------------------------------------------------------------------
# Rooflines
# --------------------------------------------------------------------------------------------------


def copy_roofline(b, nbytes):
    n = nbytes // 4
    src = torch.randn(n, device=b.device)
    dst = torch.empty_like(src)
    return n, b.time(lambda: dst.copy_(src))


def gemm_roofline(b, g, dtype):
    x = torch.randn(g, g, device=b.device, dtype=dtype)
    w = torch.randn(g, g, device=b.device, dtype=dtype)
    return b.time(lambda: torch.matmul(x, w))


def rooflines(b, s, emit):
    n, t = copy_roofline(b, s["copy_bytes"])
    b.copy_gbps = 2 * n * 4 / t / 1e9
    if emit:
        b.emit(dict(kind="roofline", name="copy_d2d", gbps=b.copy_gbps, ms=t * 1e3, shape=[n], bytes=2 * n * 4,
                    dtype="float32"))
    g = s["gemm"]
    for label, dtype in (("bf16", torch.bfloat16), ("f32", torch.float32)):
        t = gemm_roofline(b, g, dtype)
        b.gemm_tflops[label] = 2 * g ** 3 / t / 1e12
        if emit:
            b.emit(dict(kind="roofline", name=f"gemm_{label}", tflops=b.gemm_tflops[label], ms=t * 1e3,
                        shape=[g, g, g]))
    if b.cuda:
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


def one_attention(b, B, H, L, dh, variant, dtype, backend, dropout=0.0):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    shape = f"L={L} B={B} H={H} dh={dh}"
    if dropout:
        variant = f"{variant} dropout"
    fwd_flops = 4 * B * H * L * L * dh / 2
    q, k, v = (torch.randn(B, H, L, dh, device=b.device, dtype=dtype, requires_grad=True) for _ in range(3))
    go = torch.randn(B, H, L, dh, device=b.device, dtype=dtype)

    def fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
    try:
        with sdpa_kernel(getattr(SDPBackend, backend)):
            t = b.time(fwd)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
    except RuntimeError as e:
        why = str(e).strip().splitlines()[0][:200]
        for op in ("attention_fwd", "attention_bwd"):
            b.skipped(op, variant, shape, f"{backend}: {why}")
        return
    b.compute("attention_fwd", variant, shape, t, fwd_flops, backend=backend)
    t = b.time(lambda: torch.autograd.grad(out, (q, k, v), go, retain_graph=True))
    b.compute("attention_bwd", variant, shape, t, 2.5 * fwd_flops, backend=backend)


def attention(b, s):
    H, dh = s["H"], s["dh"]
    shapes = [(s["L"], s["B"]), (math.ceil(s["L"] / s["k"]), s["B"])] + s["long"]
    for L, B in shapes:
        for variant, dtype, backend in ATTENTION_VARIANTS:
            if not b.cuda and backend in ("CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
                for op in ("attention_fwd", "attention_bwd"):
                    b.skipped(op, variant, f"L={L} B={B} H={H} dh={dh}", f"SDPA backend {backend} needs CUDA")
                continue
            # With the preset's dropout too, where the backend takes it (the flash one does, in training).
            for dropout in (0.0, 0.2) if backend == "FLASH_ATTENTION" else (0.0,):
                one_attention(b, B, H, L, dh, variant, dtype, backend, dropout)
            if b.cuda:
                torch.cuda.empty_cache()


def layernorm(b, s):
    N, D = s["L"] * s["B"], s["D"]
    shape = f"N={N} D={D}"
    for variant, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        es = torch.finfo(dtype).bits // 8
        x = torch.randn(N, D, device=b.device, dtype=dtype, requires_grad=True)
        w = torch.randn(D, device=b.device, dtype=dtype, requires_grad=True)
        bias = torch.randn(D, device=b.device, dtype=dtype, requires_grad=True)
        dy = torch.randn(N, D, device=b.device, dtype=dtype)

        def fwd():
            with torch.no_grad():
                F.layer_norm(x, (D,), w, bias)
        b.memory("layernorm_fwd", variant, shape, b.time(fwd), 2 * N * D * es)
        y = F.layer_norm(x, (D,), w, bias)
        t = b.time(lambda: torch.autograd.grad(y, (x, w, bias), dy, retain_graph=True))
        b.memory("layernorm_bwd", variant, shape, t, 3 * N * D * es)


def resampling(b, s):
    T, B, D, k = s["L"], s["B"], s["D"], s["k"]
    Ts = math.ceil(T / k)
    shape = f"T={T} B={B} D={D} k={k}"
    shift, pool, up = golden.ShiftRight(k - 1), golden.AvgPoolShortening(k), golden.NaiveUpSampling(k)
    x = torch.randn(T, B, D, device=b.device, requires_grad=True)

    def shorten_fwd():
        with torch.no_grad():
            pool(shift(x))
    b.memory("shift_shorten", "f32", shape, b.time(shorten_fwd), (T + Ts) * B * D * 4)
    y = pool(shift(x))
    dy = torch.randn_like(y)
    t = b.time(lambda: torch.autograd.grad(y, x, dy, retain_graph=True))
    b.memory("shift_shorten_bwd", "f32", shape, t, (T + Ts) * B * D * 4)

    short = torch.randn(Ts, B, D, device=b.device, requires_grad=True)

    def up_fwd():
        with torch.no_grad():
            up(x, short)
    b.memory("upsample_skip", "f32", shape, b.time(up_fwd), (2 * T + Ts) * B * D * 4)
    y = up(x, short)
    dy = torch.randn_like(y)
    t = b.time(lambda: torch.autograd.grad(y, (x, short), dy, retain_graph=True))
    b.memory("upsample_skip_bwd", "f32", shape, t, (T + Ts) * B * D * 4)


def embedding(b, s):
    N, D, V = s["L"] * s["B"], s["D"], s["V"]
    shape = f"N={N} D={D} V={V}"
    table = torch.randn(V, D, device=b.device, requires_grad=True)
    ids = torch.randint(0, V, (N,), device=b.device)

    def fwd():
        with torch.no_grad():
            F.embedding(ids, table)
    b.memory("embedding", "f32", shape, b.time(fwd), 2 * N * D * 4 + N * 8)
    y = F.embedding(ids, table)
    dy = torch.randn_like(y)
    t = b.time(lambda: torch.autograd.grad(y, table, dy, retain_graph=True))
    b.memory("embedding_bwd", "f32", shape, t, N * D * 4 + V * D * 4 + N * 8)


def softmax_xent(b, s):
    N, V = s["L"] * s["B"], s["V"]
    shape = f"N={N} V={V}"
    logits = torch.randn(N, V, device=b.device, requires_grad=True)
    targets = torch.randint(0, V, (N,), device=b.device)

    def fwd_bwd():
        torch.autograd.grad(F.cross_entropy(logits, targets), logits)
    b.memory("softmax_xent", "f32", shape, b.time(fwd_bwd), 2 * N * V * 4 + N * 8)


def adamw(b, s, model_config):
    if model_config is None:
        m = dict(n_heads=s["H"], d_model=s["D"], dropout=0.2, d_ff=s["F"], shortening_factors=[s["k"]],
                 depth=[1, 1, 1], positions="rotary")
    else:
        m = model_config
    with torch.device("meta"):
        shapes = [p.shape for p in step.LM(m).parameters()]
    params = [torch.nn.Parameter(torch.randn(shape, device=b.device)) for shape in shapes]
    P = sum(p.numel() for p in params)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    shape = f"P={P}"
    impls = [("f32-fused", dict(fused=True)), ("f32-foreach", dict(foreach=True))] if b.cuda else \
        [("f32-foreach", dict(foreach=True))]
    for variant, kw in impls:
        opt = torch.optim.AdamW(params, lr=4.1e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0, **kw)
        # 7 f32 streams: read p, g, m, v; write p, m, v.
        b.memory("adamw", variant, shape, b.time(opt.step), 7 * P * 4, params=P, tensors=len(params))
    if b.cuda:
        torch.cuda.empty_cache()


def gemms(b, s):
    D, Fd, V = s["D"], s["F"], s["V"]
    full = s["L"] * s["B"]
    short = math.ceil(s["L"] / s["k"]) * s["B"]
    shapes = []
    for M in (full, short):
        shapes += [("qkv", M, 3 * D, D), ("proj", M, D, D), ("ff1", M, Fd, D), ("ff2", M, D, Fd)]
    shapes.append(("head", full, V, D))
    for variant, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        for name, M, N, K in shapes:
            x = torch.randn(M, K, device=b.device, dtype=dtype)
            w = torch.randn(N, K, device=b.device, dtype=dtype)
            wt = w.t()
            t = b.time(lambda: torch.matmul(x, wt))
            b.compute("gemm", variant, f"M={M} N={N} K={K}", t, 2 * M * N * K, name=name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (L 48, B 2, H 2, dh 16, D 32): tests")
    parser.add_argument("--only", default="all", choices=["all", "rooflines", "kernels"],
                        help="rooflines only, kernels only (the rooflines are still measured, not written, for "
                             "the fractions), or both (default)")
    parser.add_argument("--reps", type=int, default=20, help="timed runs per measurement (default 20)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", help="append one JSON line per result to this file")
    args = parser.parse_args()
    if args.device is None:
        # Only asked when not given: on a CUDA build without a GPU, asking slows every later CPU op.
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_torch_kernels: --device cuda but no CUDA device is available")
    step.set_ieee_f32()
    torch.manual_seed(0)
    s = TINY if args.tiny else FULL
    b = Bench(args.device, args.json, args.reps, args.warmup)
    print(f"torch {torch.__version__} on {b.name}: {'tiny' if args.tiny else 'enwik8'} shapes {s}", flush=True)
    rooflines(b, s, emit=args.only != "kernels")
    if args.only == "rooflines":
        return 0
    failed = 0
    for fn in (attention, layernorm, resampling, embedding, softmax_xent,
               lambda b, s: adamw(b, s, None if args.tiny else step.PRESETS["enwik8"]["model"]), gemms):
        try:
            fn(b, s)
        except Exception as e:  # noqa: BLE001 - one op's failure must not lose the others
            failed += 1
            print(f"bench_torch_kernels: {getattr(fn, '__name__', 'op')} failed: {type(e).__name__}: {e}",
                  file=sys.stderr, flush=True)
        if b.cuda:
            torch.cuda.empty_cache()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
