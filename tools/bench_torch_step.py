#!/usr/bin/env python3
"""Whole training steps of the byte-level hourglass LM in PyTorch, in every fast mode: the yardstick for our
GPU kernels (docs/perf.md).

One step = forward, backward, clip_grad_norm_, AdamW step, on random bytes. The model is tools/golden.py's
HourGlass (the reference module tree and initialisation, rotary positions on q/k of self-attention) inside
the LM of `hourglass train` (byte embedding -> hourglass -> LayerNorm -> Linear(d, 256) -> cross-entropy).
Only the transformer layers' self-attention is swapped for a fast one (SdpaAttention: the q, k, v projections
as one GEMM, causal attention through F.scaled_dot_product_attention); `--check` proves it is the same model.

Modes (`--modes a,b,...`; default all, in RUN_ORDER; each in its own subprocess, killed after `--mode-timeout`
seconds, and with `--budget` all of them within that many seconds; the exit status is 1 only when no mode ran):

    eager-f32                f32, TF32 off (as our cuBLAS sgemm), SDPA's default backend
    eager-bf16-flash         bf16 autocast, SDPA forced to FLASH_ATTENTION
    eager-bf16-cudnn         bf16 autocast, SDPA forced to CUDNN_ATTENTION
    eager-bf16-efficient     bf16 autocast, SDPA forced to EFFICIENT_ATTENTION
    compile-default          bf16 autocast, torch.compile (mode default), SDPA's default backend
    compile-reduce-overhead  bf16 autocast, torch.compile(mode="reduce-overhead") (CUDA graphs)

AdamW is torch.optim.AdamW(fused=True) on CUDA, the default (foreach) implementation on the CPU. Each mode
appends one JSON line to `--json` as soon as it finishes (format: docs/perf.md), and prints a summary line.

    python3 tools/bench_torch_step.py --check                                   # the fast model == golden's
    python3 tools/bench_torch_step.py --config enwik8 --device cuda --json results.jsonl
    python3 tools/bench_torch_step.py --config tiny --device cpu --steps 3 --warmup 1 --modes eager-f32
    python3 tools/bench_torch_step.py --config-file runs/cpu/config.json --device cpu
"""
import argparse
import copy
import datetime
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import torch
from torch import nn
from torch.nn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import golden  # noqa: E402
from perf_report import peak_bf16_flops  # noqa: E402,F401 (the device peak table)

MODES = ["eager-f32", "eager-bf16-flash", "eager-bf16-cudnn", "eager-bf16-efficient", "compile-default",
         "compile-reduce-overhead"]
# Default order of the runs: the like-for-like f32 first, then PyTorch's usual best, so that a time budget that
# runs out loses the least informative modes.
RUN_ORDER = ["eager-f32", "eager-bf16-flash", "compile-default", "eager-bf16-cudnn", "eager-bf16-efficient",
             "compile-reduce-overhead"]
SDPA_BACKEND = {"eager-bf16-flash": "FLASH_ATTENTION", "eager-bf16-cudnn": "CUDNN_ATTENTION",
                "eager-bf16-efficient": "EFFICIENT_ATTENTION"}

# `hourglass train --preset NAME` (src/train/recipe.rs), and `tiny` for tests of these tools on a CPU.
PRESETS = {
    "enwik8": dict(model=dict(n_heads=8, d_model=512, dropout=0.2, d_ff=2048, shortening_factors=[3],
                              depth=[5, 24, 5], positions="rotary"),
                   seq_len=2048, batch=8, accum=1, lr=4.1e-4, beta1=0.9, beta2=0.98, eps=1e-8, weight_decay=0.0,
                   clip=1.0),
    "gpu": dict(model=dict(n_heads=8, d_model=512, dropout=0.2, d_ff=2048, shortening_factors=[3],
                           depth=[1, 4, 1], positions="rotary"),
                seq_len=1024, batch=16, accum=1, lr=6e-4, beta1=0.9, beta2=0.98, eps=1e-8, weight_decay=0.01,
                clip=1.0),
    "cpu": dict(model=dict(n_heads=4, d_model=128, dropout=0.0, d_ff=512, shortening_factors=[3],
                           depth=[1, 3, 1], positions="rotary"),
                seq_len=192, batch=8, accum=1, lr=3e-3, beta1=0.9, beta2=0.98, eps=1e-8, weight_decay=0.01,
                clip=1.0),
    "tiny": dict(model=dict(n_heads=2, d_model=32, dropout=0.2, d_ff=64, shortening_factors=[3],
                            depth=[1, 1, 1], positions="rotary"),
                 seq_len=48, batch=2, accum=1, lr=4.1e-4, beta1=0.9, beta2=0.98, eps=1e-8, weight_decay=0.0,
                 clip=1.0),
}
BASE_KEYS = ("n_heads", "d_model", "dropout", "d_ff", "shortening_factors")
VOCAB = 256

# --------------------------------------------------------------------------------------------------
# Model FLOPs per token (docs/perf.md): matmuls only, forward; a training step is 3x forward.
# --------------------------------------------------------------------------------------------------


def model_flops_per_token(m, seq_len, vocab=VOCAB, causal_half=True):
    """Forward FLOPs per byte of the full-length sequence, counted from the config.

    A transformer layer at a level of length L = ceil(seq_len / s) (s the product of the factors above it)
    costs per token of that level 2(4d^2 + 2 d d_ff) (q, k, v, output projections and the feed-forward) plus
    4 d per (query, key) pair of attention (QK^T and PV): L/2 pairs per query when causal (the mask counted as
    half), L when not, i.e. 2 L d causal; the sequence's total over all levels is divided by seq_len (so a
    level's count per byte is L / seq_len of its count per token, exactly what runs at ragged lengths too;
    src/model/size.rs counts the same). Avg shortening and naive
    upsampling cost nothing; linear resamplers 2 k d^2 per shortened token; attention resamplers as a layer
    (projections of queries at the query length, of keys and values at the key length, the FFN at the query
    length, 4 d per pair of its mask: half of Lq x Lk for funnel / up-causal, all of it when non-causal, k or 1
    key per query for the window masks) plus their inner linear pooling / upsampling; the LM head 2 d vocab.
    `causal_half=False` counts causal attention as full (what torch.utils.flop_counter counts; --check)."""
    d, dff = m["d_model"], m["d_ff"]
    factors = list(m["shortening_factors"])
    n = len(factors)
    shortening = golden.per_level(m.get("shortening", "avg"), n, "shortening")
    upsampling = golden.per_level(m.get("upsampling", "naive"), n, "upsampling")
    depth = m.get("depth") or golden.default_depth(n)
    causal = m.get("causal", True)
    mask_opt = m.get("attention_resampling_mask", "funnel")
    pooling = m.get("attention_pooling", "avg")
    up_inner = m.get("attention_upsampling", "naive")
    half = 0.5 if causal_half else 1.0
    proj_ffn = 2 * (4 * d * d + 2 * d * dff)
    total = 0.0

    def layers(count, length):
        pairs_per_query = length * (half if causal else 1.0)
        return count * (proj_ffn + 4 * d * pairs_per_query) * length / seq_len

    def level(i, s, dep):
        nonlocal total
        k = factors[i]
        length = math.ceil(seq_len / s)
        short = math.ceil(seq_len / (s * k))
        total += layers(dep[0], length) + layers(dep[2], length)
        # Shortening: counts per shortened token (x short / seq_len), per level token (x length / seq_len).
        if shortening[i] == "linear":
            total += 2 * k * d * d * short / seq_len
        elif shortening[i] == "attention":
            inner = 2 * k * d * d if pooling == "linear" else 0
            per_short = inner + 2 * d * d * 2 + 4 * d * dff  # pooling, q and output projections, FFN
            per_level = 2 * d * d * 2  # k and v projections of the full-length keys
            if mask_opt == "window":
                pairs = k
            elif causal:
                pairs = length * half
            else:
                pairs = length
            total += (per_short + 4 * d * pairs) * short / seq_len + per_level * length / seq_len
        # Upsampling.
        if upsampling[i] == "linear":
            total += 2 * k * d * d * short / seq_len
        elif upsampling[i] == "attention":
            inner = 2 * k * d * d if up_inner == "linear" else 0
            per_short = inner + 2 * d * d * 2  # inner upsampling, k and v projections of the shortened keys
            per_level = 2 * d * d * 2 + 4 * d * dff  # q and output projections, FFN
            if mask_opt == "window":
                pairs = 1
            elif causal:
                pairs = short * half
            else:
                pairs = short
            total += per_short * short / seq_len + (per_level + 4 * d * pairs) * length / seq_len
        if i + 1 == n:
            total += layers(dep[1], short)
        else:
            level(i + 1, s * k, dep[1])

    level(0, 1, depth)
    return total + 2 * d * vocab


def step_flops_per_token(m, seq_len):
    return 3 * model_flops_per_token(m, seq_len)


# --------------------------------------------------------------------------------------------------
# The fast model: golden's module tree, self-attention through SDPA.
# --------------------------------------------------------------------------------------------------

_ROTARY_CACHE = {}


def rotary(x):
    """golden.rotary_embed (half-split pairs, positions along dim 0 of x [seq, batch, heads, d_head]), with
    cos / sin cached per (length, d_head, dtype, device) in eager mode; compiled graphs use golden's own."""
    if torch.compiler.is_compiling():
        return golden.rotary_embed(x)
    seq_len, _, _, d_head = x.shape
    key = (seq_len, d_head, x.dtype, x.device)
    cs = _ROTARY_CACHE.get(key)
    if cs is None:
        cos, sin = golden.rotary_cos_sin(seq_len, d_head, x.dtype, x.device)
        cs = _ROTARY_CACHE[key] = (cos[:, None, None, :], sin[:, None, None, :])
    cos, sin = cs
    a, b = x[..., : d_head // 2], x[..., d_head // 2:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


class SdpaAttention(golden.MultiHeadAttention):
    """golden.MultiHeadAttention (same parameters, same names) as a transformer layer's self-attention: the
    three projections as one GEMM (the weights concatenated; every output is the same dot product), rotary as
    golden's, and the causal mask (golden's run_stack passes subsequent_mask, or None when non-causal) and
    softmax(QK^T / sqrt(d_k)) V with dropout on the probabilities through F.scaled_dot_product_attention."""

    def forward(self, *, query, key, value, mask=None):
        assert query is key and key is value, "SdpaAttention is for self-attention"
        seq_len, batch, d_model = query.shape
        weight = torch.cat([self.query.linear.weight, self.key.linear.weight, self.value.linear.weight])
        bias = torch.cat([self.query.linear.bias, self.key.linear.bias, self.value.linear.bias])
        qkv = F.linear(query, weight, bias).view(seq_len, batch, 3, self.heads, self.d_k)
        q, k, v = qkv.unbind(2)  # each [seq, batch, heads, d_k]
        if self.rotary:
            q, k = rotary(q), rotary(k)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))  # [batch, heads, seq, d_k], views
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout.p if self.training else 0.0,
                                           is_causal=mask is not None)
        return self.output(x.permute(2, 0, 1, 3).reshape(seq_len, batch, d_model))


class LM(nn.Module):
    """The LM of `hourglass train` (src/model/lm.rs) around golden.HourGlass, on ids [seq, batch] (the
    hourglass is sequence-first). Parameter names: embedding.weight, hourglass.*, norm.*, head.* (with
    `tie_embedding` the head is the embedding's transpose plus head.bias)."""

    def __init__(self, m, tie_embedding=False):
        super().__init__()
        d = m["d_model"]
        extra = {k: v for k, v in m.items() if k not in BASE_KEYS}
        self.embedding = nn.Embedding(VOCAB, d)
        self.hourglass = golden.HourGlass(m["n_heads"], d, m["dropout"], m["d_ff"], list(m["shortening_factors"]),
                                          **extra)
        self.norm = nn.LayerNorm(d)
        self.tie_embedding = tie_embedding
        if tie_embedding:
            self.head = nn.Module()
            self.head.bias = nn.Parameter(torch.zeros(VOCAB))
        else:
            self.head = nn.Linear(d, VOCAB)

    def forward(self, ids, targets):
        h = self.norm(self.hourglass(self.embedding(ids)))
        if self.tie_embedding:
            logits = F.linear(h, self.embedding.weight, self.head.bias)
        else:
            logits = self.head(h)
        return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))


def make_fast(lm):
    """Swaps every transformer layer's self-attention for SdpaAttention, in place (same parameters)."""
    for module in lm.modules():
        if isinstance(module, golden.TransformerLayer) and type(module.self_attn) is golden.MultiHeadAttention:
            module.self_attn.__class__ = SdpaAttention
    return lm


def transformer_layers(lm):
    return [m for m in lm.modules() if isinstance(m, golden.TransformerLayer)]


# --------------------------------------------------------------------------------------------------
# Configs, devices, records
# --------------------------------------------------------------------------------------------------


def load_config(args):
    """(name, config) from --config-file (a `hourglass train` run's config.json) or the --config preset."""
    if args.config_file:
        with open(args.config_file) as f:
            c = json.load(f)
        out = dict(model=c["model"], seq_len=c["seq_len"], batch=c["batch"], accum=c.get("accum", 1),
                   lr=c.get("lr", 1e-3), beta1=c.get("beta1", 0.9), beta2=c.get("beta2", 0.999),
                   eps=c.get("eps", 1e-8), weight_decay=c.get("weight_decay", 0.0), clip=c.get("clip", 0.0),
                   tie_embedding=c.get("tie_embedding", False))
        return os.path.basename(os.path.dirname(os.path.abspath(args.config_file))) or "file", out
    return args.config, copy.deepcopy(PRESETS[args.config])


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"cpu ({torch.get_num_threads()} threads)"


def set_ieee_f32():
    """TF32 off for f32 matmuls and convolutions (the new API where it exists, the old flags otherwise)."""
    try:
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
    except (AttributeError, RuntimeError):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def today():
    return datetime.date.today().isoformat()


def append_json(path, record):
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def param_count(m, tie_embedding=False):
    with torch.device("meta"):
        return sum(p.numel() for p in LM(m, tie_embedding).parameters())


# --------------------------------------------------------------------------------------------------
# One mode, in a worker process
# --------------------------------------------------------------------------------------------------


class Unsupported(Exception):
    pass


def make_optimizer(lm, c, device):
    # As src/train/optim.rs: decoupled weight decay, none on norms and biases (the 1-D parameters).
    decay = [p for p in lm.parameters() if p.ndim >= 2]
    rest = [p for p in lm.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": c["weight_decay"]}, {"params": rest, "weight_decay": 0.0}]
    kwargs = dict(lr=c["lr"], betas=(c["beta1"], c["beta2"]), eps=c["eps"])
    if device == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs)


def run_mode(mode, c, device, steps, warmup, compile_scope):
    """Times `steps` training steps after `warmup`; returns the measured fields of the record."""
    from contextlib import nullcontext

    dev = torch.device(device)
    set_ieee_f32()
    if mode in SDPA_BACKEND and device != "cuda" and SDPA_BACKEND[mode] != "FLASH_ATTENTION":
        raise Unsupported(f"SDPA backend {SDPA_BACKEND[mode]} needs CUDA")
    if mode == "compile-reduce-overhead" and device != "cuda":
        raise Unsupported("CUDA graphs (reduce-overhead) need CUDA")
    torch.manual_seed(0)
    with dev:  # initialised where it runs: no host-side init of 100M parameters
        lm = make_fast(LM(c["model"], c.get("tie_embedding", False))).train()
    opt = make_optimizer(lm, c, device)
    params = [p for p in lm.parameters()]
    seq, batch, accum = c["seq_len"], c["batch"], c.get("accum", 1)
    bf16 = mode != "eager-f32"
    compiled = mode.startswith("compile-")
    if compiled:
        cmode = None if mode == "compile-default" else "reduce-overhead"
        from torch import _dynamo

        # Room for every layer and length to get its own graph should the layers not share one: past the limit
        # dynamo would fall back to eager without a word, and the numbers would not be torch.compile's.
        for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                     "accumulated_cache_size_limit"):
            if hasattr(_dynamo.config, name):
                setattr(_dynamo.config, name, max(getattr(_dynamo.config, name), 256))
        if compile_scope == "layers":
            # Regional compilation: each transformer layer compiled (one graph per distinct length, reused by
            # every layer of that length); the few ops between layers stay eager. Compiles in a fraction of
            # the whole model's time, and a layer holds every fusion the model offers.
            for layer in transformer_layers(lm):
                layer.compile(mode=cmode, dynamic=False)
            forward = lm
        else:
            forward = torch.compile(lm, mode=cmode, dynamic=False)
    else:
        forward = lm

    def context():
        if not bf16:
            return nullcontext()
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)

    def sdpa_context():
        if mode not in SDPA_BACKEND:
            return nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel(getattr(SDPBackend, SDPA_BACKEND[mode]))

    def step():
        opt.zero_grad(set_to_none=True)
        for _ in range(accum):
            if mode == "compile-reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            ids = torch.randint(0, VOCAB, (seq + 1, batch), device=dev)
            with context(), sdpa_context():
                loss = forward(ids[:-1], ids[1:])
            (loss / accum if accum > 1 else loss).backward()
        if c.get("clip", 0) > 0:
            nn.utils.clip_grad_norm_(params, c["clip"])
        opt.step()
        return loss

    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    wall = []
    times = []
    t_start = time.perf_counter()
    caught = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        if cuda:
            start.record()
        if i == 0:
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    loss = step()
            except RuntimeError as e:
                if "No available kernel" not in str(e):
                    raise
                # SDPA says why in its warnings ("Flash attention requires ...", "... does not support ...").
                reasons = [re.sub(r"\s*\(Triggered internally at [^)]*\)\.?", "", str(w.message)).strip()
                           for w in caught if "sdp_utils" in str(w.filename)
                           or "attention" in str(w.message).lower() or "kernel" in str(w.message).lower()]
                raise Unsupported(f"{SDPA_BACKEND.get(mode, 'SDPA')}: "
                                  + "; ".join([str(e).splitlines()[0]] + reasons[:3])) from e
        else:
            loss = step()
        if cuda:
            end.record()
            end.synchronize()
        t1 = time.perf_counter()
        wall.append(t1 - t0)
        if i >= warmup:
            times.append(start.elapsed_time(end) / 1e3 if cuda else t1 - t0)
        if i == 0:
            for w in caught:
                print(f"  [{mode}] warning: {str(w.message).splitlines()[0][:200]}", file=sys.stderr)
            print(f"  [{mode}] first step {t1 - t0:.2f} s, loss {float(loss.detach()):.4f}", file=sys.stderr,
                  flush=True)
    loss = float(loss.detach())
    if not math.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss}")
    times.sort()
    median = times[len(times) // 2] if len(times) % 2 else 0.5 * sum(times[len(times) // 2 - 1:len(times) // 2 + 1])
    # Compile (and CUDA-graph recording, autotuning) time: what the warm-up steps took beyond a normal step.
    compile_s = sum(w - median for w in wall[:max(warmup, 1)]) if compiled else None
    graphs = None
    if compiled:
        try:
            from torch._dynamo.utils import counters
            graphs = int(counters["stats"]["unique_graphs"])
        except Exception:  # noqa: BLE001 - only informative
            pass
    return dict(graphs=graphs, ms=median * 1e3, step_times_ms=[t * 1e3 for t in times],
                first_step_s=wall[0], total_s=time.perf_counter() - t_start,
                peak_mem_bytes=torch.cuda.max_memory_allocated() if cuda else None,
                compile_s=compile_s, final_loss=loss,
                compile_scope=compile_scope if compiled else None)


def worker(args):
    name, c = args.worker_config
    try:
        r = run_mode(args.worker, c, args.device, args.steps, args.warmup, args.compile_scope)
        r["status"], r["why"] = "ok", None
    except Unsupported as e:
        r = dict(status="skipped", why=str(e))
    except torch.OutOfMemoryError as e:
        r = dict(status="failed", why="out of memory: " + str(e).splitlines()[0])
    except Exception as e:  # noqa: BLE001 - any failure becomes a record
        msg = str(e).strip().splitlines()
        r = dict(status="failed", why=f"{type(e).__name__}: {msg[0] if msg else ''}"[:500])
        import traceback
        traceback.print_exc()
    print("RESULT " + json.dumps(r), flush=True)


# --------------------------------------------------------------------------------------------------
# The driver: one subprocess per mode
# --------------------------------------------------------------------------------------------------

_CHILD = None
_CURRENT = None  # (mode, config name, config, device, device name, json path) of the mode running


def _on_term(signum, frame):
    """SIGTERM (tools/gpu-validate.sh's stage timeout): end the running mode's process group, record that mode
    as failed, then exit."""
    if _CHILD is not None and _CHILD.poll() is None:
        try:
            os.killpg(_CHILD.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if _CURRENT is not None:
        mode, name, c, device, dev_name, path = _CURRENT
        rec = record(mode, name, c, device, dev_name, dict(status="failed", why=f"killed by signal {signum} "
                                                          "(the caller's time limit) while running"))
        append_json(path, rec)
        print(describe(rec), flush=True)
    sys.exit(128 + signum)


def run_worker_process(mode, args, name, c, timeout):
    """(result dict, stderr tail) of one mode in a fresh process (own session: torch.compile's worker pool dies
    with it)."""
    global _CHILD
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", mode, "--worker-config", json.dumps([name, c]),
           "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--compile-scope", args.compile_scope]
    _CHILD = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        out, err = _CHILD.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(_CHILD.pid, signal.SIGKILL)
        out, err = _CHILD.communicate()
        tail = (err or "").strip().splitlines()[-1:] or [""]
        return dict(status="failed", why=f"timed out after {timeout:.0f} s (last: {tail[0][:200]})"), err
    finally:
        rc = _CHILD.returncode
        _CHILD = None
    for line in reversed((out or "").splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):]), err
    tail = (err or "").strip().splitlines()[-1:] or [""]
    return dict(status="failed", why=f"worker exited with rc {rc}: {tail[0][:300]}"), err


def record(mode, name, c, device, dev_name, r):
    m = c["model"]
    seq, batch, accum = c["seq_len"], c["batch"], c.get("accum", 1)
    fwd = model_flops_per_token(m, seq)
    rec = dict(kind="step", impl="pytorch", mode=mode, config=name, seq_len=seq, batch=batch, accum=accum,
               date=today(), device=dev_name, torch=torch.__version__, status=r.get("status", "failed"),
               why=r.get("why"), flops_per_token=3 * fwd, flops_per_token_fwd=fwd,
               params=param_count(m, c.get("tie_embedding", False)),
               ms=None, tokens_per_s=None, tflops=None, mfu=None, peak_mem_bytes=None, compile_s=None)
    if rec["status"] == "ok":
        tokens = seq * batch * accum
        tps = tokens / (r["ms"] / 1e3)
        peak = peak_bf16_flops(dev_name) if device == "cuda" else None
        rec.update(ms=r["ms"], tokens_per_s=tps, tflops=3 * fwd * tps / 1e12,
                   mfu=(3 * fwd * tps / peak) if peak else None, peak_mem_bytes=r.get("peak_mem_bytes"),
                   compile_s=r.get("compile_s"), first_step_s=r.get("first_step_s"),
                   step_times_ms=r.get("step_times_ms"), final_loss=r.get("final_loss"),
                   compile_scope=r.get("compile_scope"), graphs=r.get("graphs"))
    return rec


def describe(rec):
    if rec["status"] != "ok":
        return f"{rec['mode']:<24} {rec['status']}: {rec['why']}"
    mem = f"{rec['peak_mem_bytes'] / 2**30:6.2f} GiB" if rec["peak_mem_bytes"] else "     - GiB"
    mfu = f"{100 * rec['mfu']:5.1f}%" if rec["mfu"] is not None else "    -"
    comp = f" compile {rec['compile_s']:.1f} s" if rec["compile_s"] is not None else ""
    return (f"{rec['mode']:<24} {rec['ms']:9.2f} ms/step {rec['tokens_per_s']:11.0f} tokens/s "
            f"{rec['tflops']:7.2f} TFLOP/s MFU {mfu} peak {mem}{comp}")


def main():
    global _CURRENT
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="enwik8", choices=sorted(PRESETS))
    parser.add_argument("--config-file", help="a `hourglass train` run's config.json (model, seq_len, batch, ...)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    parser.add_argument("--modes", help=f"comma-separated subset of {','.join(MODES)} (default: all)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--mode-timeout", type=float, default=120.0, help="seconds per mode (default 120)")
    parser.add_argument("--budget", type=float, help="seconds for all modes together; modes that would start "
                        "with less than 10 s left are recorded as skipped")
    parser.add_argument("--compile-scope", default="layers", choices=["layers", "model"],
                        help="torch.compile each transformer layer (default; fast to compile) or the whole LM")
    parser.add_argument("--json", help="append one JSON line per mode to this file")
    parser.add_argument("--check", action="store_true", help="prove the fast model equals golden's (CPU, f64)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-config", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        # Only asked when not given: on a CUDA build without a GPU, asking slows every later CPU op.
        args.device = "cuda" if torch.cuda.is_available() else "cpu"

    if args.worker:
        worker(args)
        return 0
    if args.check:
        return check()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    modes = RUN_ORDER if not args.modes else [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; modes: {','.join(MODES)}")
    name, c = load_config(args)
    signal.signal(signal.SIGTERM, _on_term)
    if args.device == "cuda" and not torch.cuda.is_available():
        dev_name, no_cuda = "cuda (none available)", True
    else:
        dev_name, no_cuda = device_name(args.device), False
    m = c["model"]
    fwd = model_flops_per_token(m, c["seq_len"])
    print(f"torch {torch.__version__} on {dev_name}: config {name}: d_model {m['d_model']} heads {m['n_heads']} "
          f"d_ff {m['d_ff']} factors {m['shortening_factors']} depth {m.get('depth')} positions "
          f"{m.get('positions', 'none')} dropout {m['dropout']} | seq {c['seq_len']} x batch {c['batch']}"
          f"{' x accum ' + str(c.get('accum', 1)) if c.get('accum', 1) > 1 else ''} | "
          f"{param_count(m, c.get('tie_embedding', False)):,} parameters | FLOPs/token forward {fwd:,.0f}, "
          f"training step {3 * fwd:,.0f}", flush=True)
    deadline = time.monotonic() + args.budget if args.budget else None
    measured = False
    for mode in modes:
        timeout = args.mode_timeout
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
        if no_cuda:
            r = dict(status="skipped", why="no CUDA device available")
        elif deadline is not None and deadline - time.monotonic() < 10:
            r = dict(status="skipped", why="time budget exhausted before this mode")
        else:
            t = time.monotonic()
            _CURRENT = (mode, name, c, args.device, dev_name, args.json)
            r, err = run_worker_process(mode, args, name, c, timeout)
            _CURRENT = None
            if r.get("status") == "failed" and err:
                sys.stderr.write("".join(err.splitlines(keepends=True)[-15:]))
            print(f"  ({time.monotonic() - t:.1f} s)", end=" ")
        rec = record(mode, name, c, args.device, dev_name, r)
        append_json(args.json, rec)
        print(describe(rec), flush=True)
        measured |= rec["status"] == "ok"
    # A mode PyTorch cannot run is a result (its record says why), not a failure of this script.
    return 0 if measured else 1


# --------------------------------------------------------------------------------------------------
# --check: the fast model is golden's model
# --------------------------------------------------------------------------------------------------


def rel(a, b):
    return float((a - b).norm() / b.norm()) if float(b.norm()) > 0 else float((a - b).norm())


def check():
    """On the CPU in float64: for several small configs, the fast LM (SdpaAttention) and the same LM with
    golden's einsum attention, loaded with the same weights, give the same loss and gradients (relative error
    below 1e-10); and the FLOPs formula equals what torch.utils.flop_counter counts in a forward pass (with
    causal attention counted in full, as the counter does)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    tiny = PRESETS["tiny"]["model"]
    cases = [
        ("tiny (enwik8's shape: factor 3, rotary, depth [1,1,1])", dict(tiny, dropout=0.0), 48, 2, False),
        ("two levels [2, 3], depth [1,[1,2,1],1], no positions", dict(
            tiny, dropout=0.0, shortening_factors=[2, 3], depth=[1, [1, 2, 1], 1], positions="none"), 48, 3, False),
        ("tied embedding, depth [2,1,0], rotary, ragged 31", dict(tiny, dropout=0.0, depth=[2, 1, 0]), 31, 2, True),
        ("attention resamplers (golden's cross-attention kept), rotary", dict(
            tiny, dropout=0.0, shortening="attention", upsampling="attention", attention_pooling="linear",
            attention_upsampling="linear"), 24, 2, False),
    ]
    worst = 0.0
    for label, m, seq, batch, tie in cases:
        torch.manual_seed(1)
        ref = LM(m, tie).double().train()
        with torch.no_grad():  # LayerNorms away from ones / zeros, as golden.py does
            for mod in ref.modules():
                if isinstance(mod, nn.LayerNorm):
                    mod.weight.add_(0.2 * torch.randn_like(mod.weight))
                    mod.bias.add_(0.1 * torch.randn_like(mod.bias))
        fast = make_fast(LM(m, tie)).double().train()
        fast.load_state_dict(ref.state_dict())
        assert list(fast.state_dict()) == list(ref.state_dict())
        n_sdpa = sum(isinstance(x, SdpaAttention) for x in fast.modules())
        assert n_sdpa == len(transformer_layers(fast)) > 0
        ids = torch.randint(0, VOCAB, (seq + 1, batch))
        results = []
        for model in (ref, fast):
            model.zero_grad(set_to_none=True)
            loss = model(ids[:-1], ids[1:])
            loss.backward()
            results.append((loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}))
        (l_ref, g_ref), (l_fast, g_fast) = results
        errs = {"loss": rel(l_fast, l_ref)}
        errs.update({n: rel(g_fast[n], g_ref[n]) for n in g_ref if float(g_ref[n].norm()) > 1e-12})
        zero_ok = all(float((g_fast[n] - g_ref[n]).abs().max()) < 1e-12 for n in g_ref
                      if float(g_ref[n].norm()) <= 1e-12)
        bad = {n: e for n, e in errs.items() if not e < 1e-10}
        case_worst = max(errs.values())
        worst = max(worst, case_worst)
        # FLOPs: the formula (causal attention in full) against the counter on the fast model's forward.
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            fast(ids[:-1], ids[1:])
        counted = counter.get_total_flops() / (seq * batch)
        formula_full = model_flops_per_token(m, seq, causal_half=False)
        flops_ok = abs(counted - formula_full) <= 1e-9 * counted
        print(f"check {label}: loss {float(l_ref):.6f}, worst rel err {case_worst:.1e} over loss + "
              f"{len(errs) - 1} gradients{'' if zero_ok else ', zero-gradient mismatch!'}; FLOPs/token counted "
              f"{counted:,.1f}, formula (causal in full) {formula_full:,.1f}")
        if bad or not zero_ok or not flops_ok:
            print(f"CHECK FAILED: {bad or ''} {'' if flops_ok else 'FLOPs formula differs'}", file=sys.stderr)
            return 1
    enwik8 = PRESETS["enwik8"]
    fwd = model_flops_per_token(enwik8["model"], enwik8["seq_len"])
    print(f"check passed: worst rel err {worst:.1e} (< 1e-10). enwik8 preset: {fwd:,.0f} FLOPs/token forward, "
          f"{3 * fwd:,.0f} per training step; {param_count(enwik8['model']):,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
