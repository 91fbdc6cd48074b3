#!/usr/bin/env python3
"""Golden fixtures for the `hourglass` crate, computed by PyTorch.

What it does
    Rebuilds, self-contained (no labml / labml_helpers dependency), the Hourglass model of the reference
    implementation `labml_nn.transformers.hour_glass` (Nawrot et al. 2021) with its exact module tree, so
    that `state_dict()` names are the reference's (`pre.self_attn.query.linear.weight`,
    `hour_glass.shortened.feed_forward.layer1.bias`, ...). For every case in CASES it

      * initialises the model with PyTorch's default initialisation from a fixed seed, then perturbs every
        LayerNorm weight and bias so they are not trivially ones / zeros;
      * draws `x` and `gy` ([seq_len, batch, d_model], standard normal) in float32;
      * converts model and inputs to float64 (exactly: they are f32 values) and computes, in eval mode,
        `y = model(x)`, `gx = d sum(y * gy) / dx` and `grad.<name> = d sum(y * gy) / d<name>` for every
        parameter;
      * writes, in float32, the file format of the crate's CLI
        `hourglass forward --config C.json --weights W.safetensors --input I.safetensors --output O.safetensors`:

            tests/fixtures/golden/<case>/config.json          {"n_heads", "d_model", "dropout", "d_ff",
                                                               "shortening_factors"}
            tests/fixtures/golden/<case>/weights.safetensors  the state_dict, f32
            tests/fixtures/golden/<case>/input.safetensors    x, gy
            tests/fixtures/golden/<case>/expected.safetensors y, gx, grad.<name> for every parameter

    and sanity-checks what it wrote, in float64: a finite-difference check of the exported gradients
    (directional derivatives, one random direction per tensor and one over everything), causality (changing
    x[t:] leaves y[:t] unchanged), equality with the reference's own ShiftRight (see below), a re-read of
    every file, and, for information, how far a float32 PyTorch run is from the float64 fixture (a guide
    to the tolerance a float32 implementation should be held to).

ShiftRight and short sequences
    The reference's ShiftRight(s) is `cat(zeros[s], x[:-s])`: when seq_len <= s, `x[:-s]` is empty and the
    result has length s, not seq_len. Here ShiftRight keeps the length: all zeros of x's shape when
    seq_len <= s (the crate does the same). AvgPoolShortening(k = s + 1, ceil_mode) turns either into a
    single all-zero vector (seq_len <= s < k), so the model's output and gradients are the same; the script
    asserts this by also running every case with the reference's ShiftRight.

Masking: the reference fills masked scores with -1e9, this script with -inf; with a causal mask (the
diagonal is never masked) both give exactly zero probability, so the results are the same.

How to run (CI does not run it; the fixtures are committed)
    python3 -m venv /some/venv outside the repo
    /some/venv/bin/pip install torch safetensors numpy     # CPU build is enough
    /some/venv/bin/python tools/golden.py                   # writes tests/fixtures/golden/
    /some/venv/bin/python tools/golden.py --out DIR         # writes elsewhere
    /some/venv/bin/python tools/golden.py --only f2_s8_b2   # one case
    GOLDEN_FD_VERBOSE=1 /some/venv/bin/python tools/golden.py  # also print every finite-difference check

Re-running with the same PyTorch version reproduces the files byte for byte.
"""

import argparse
import json
import math
import os
import sys
from typing import List

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from safetensors.numpy import load_file, save_file

# --------------------------------------------------------------------------------------------------
# The reference model (labml_nn.transformers.{mha,feed_forward,models,hour_glass}), replicated.
# --------------------------------------------------------------------------------------------------


class PrepareForMultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, d_k: int, bias: bool):
        super().__init__()
        self.linear = nn.Linear(d_model, heads * d_k, bias=bias)
        self.heads = heads
        self.d_k = d_k

    def forward(self, x):
        seq_len, batch_size, _ = x.shape
        x = self.linear(x)
        return x.view(seq_len, batch_size, self.heads, self.d_k)


class MultiHeadAttention(nn.Module):
    def __init__(self, heads: int, d_model: int, dropout_prob: float = 0.1, bias: bool = True):
        super().__init__()
        self.d_k = d_model // heads
        self.heads = heads
        self.query = PrepareForMultiHeadAttention(d_model, heads, self.d_k, bias)
        self.key = PrepareForMultiHeadAttention(d_model, heads, self.d_k, bias)
        self.value = PrepareForMultiHeadAttention(d_model, heads, self.d_k, bias)
        self.output = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout_prob)
        self.scale = 1 / math.sqrt(self.d_k)

    def forward(self, *, query, key, value, mask=None):
        # query, key, value: [seq_len, batch, d_model]; mask: [seq_q, seq_k, 1] (True = may attend)
        seq_len, batch_size, _ = query.shape
        if mask is not None:
            assert mask.shape[0] == 1 or mask.shape[0] == mask.shape[1]
            mask = mask.unsqueeze(-1)  # same mask for every head
        query = self.query(query)
        key = self.key(key)
        value = self.value(value)
        scores = torch.einsum("ibhd,jbhd->ijbh", query, key)  # [seq_q, seq_k, batch, heads]
        scores = scores * self.scale
        if mask is not None:
            scores = scores.masked_fill(mask == 0, float("-inf"))
        attn = F.softmax(scores, dim=1)  # over keys
        attn = self.dropout(attn)
        x = torch.einsum("ijbh,jbhd->ibhd", attn, value)
        x = x.reshape(seq_len, batch_size, -1)
        return self.output(x)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.1):
        super().__init__()
        self.layer1 = nn.Linear(d_model, d_ff, bias=True)
        self.layer2 = nn.Linear(d_ff, d_model, bias=True)
        self.dropout = nn.Dropout(dropout)
        self.activation = nn.ReLU()

    def forward(self, x):
        x = self.activation(self.layer1(x))
        x = self.dropout(x)
        return self.layer2(x)


class TransformerLayer(nn.Module):
    """Pre-norm: x + dropout(MHA(LN(x))), then x + dropout(FFN(LN(x)))."""

    def __init__(self, *, d_model: int, self_attn: MultiHeadAttention, feed_forward: FeedForward,
                 dropout_prob: float):
        super().__init__()
        self.size = d_model
        self.self_attn = self_attn
        self.feed_forward = feed_forward
        self.dropout = nn.Dropout(dropout_prob)
        self.norm_self_attn = nn.LayerNorm([d_model])  # eps 1e-5
        self.norm_ff = nn.LayerNorm([d_model])

    def forward(self, *, x, mask):
        z = self.norm_self_attn(x)
        x = x + self.dropout(self.self_attn(query=z, key=z, value=z, mask=mask))
        z = self.norm_ff(x)
        x = x + self.dropout(self.feed_forward(z))
        return x


def subsequent_mask(seq_len: int, device=None):
    """[seq_len, seq_len, 1], True where key j <= query i."""
    return torch.tril(torch.ones(seq_len, seq_len, device=device)).to(torch.bool).unsqueeze(-1)


class ShiftRight(nn.Module):
    """Shift right by `shift` steps, zero-filled, keeping the length (all zeros when seq_len <= shift).

    `reference_length=True` reproduces labml exactly: length `shift` (not seq_len) when seq_len <= shift.
    """

    reference_length = False  # class-wide switch used by the self-check

    def __init__(self, shift: int):
        super().__init__()
        assert shift >= 0
        self.shift = shift

    def forward(self, x):
        if self.shift == 0:
            return x
        if ShiftRight.reference_length:
            prefix = x.new_zeros([self.shift, *x.shape[1:]])
            return torch.cat([prefix, x[:-self.shift]])
        if x.shape[0] <= self.shift:
            return torch.zeros_like(x)
        prefix = x.new_zeros([self.shift, *x.shape[1:]])
        return torch.cat([prefix, x[:-self.shift]])


class AvgPoolShortening(nn.Module):
    def __init__(self, k: int):
        super().__init__()
        self.pool = nn.AvgPool1d(k, ceil_mode=True)

    def forward(self, x):
        # [seq, batch, d] -> [batch, d, seq] -> pool -> [seq', batch, d]
        return self.pool(x.permute(1, 2, 0)).permute(2, 0, 1)


class NaiveUpSampling(nn.Module):
    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x, x_short):
        expanded = torch.repeat_interleave(x_short, self.k, dim=0)
        return expanded[: x.shape[0]]


def _layer(n_heads, d_model, dropout, d_ff):
    return TransformerLayer(d_model=d_model,
                            self_attn=MultiHeadAttention(n_heads, d_model, dropout),
                            feed_forward=FeedForward(d_model, d_ff, dropout),
                            dropout_prob=dropout)


class HourGlass(nn.Module):
    def __init__(self, n_heads: int, d_model: int, dropout: float, d_ff: int, shortening_factors: List[int]):
        super().__init__()
        # Construction order is the reference's (pre, shortened | hour_glass, post): it fixes which
        # random numbers each parameter's default initialisation gets.
        self.pre = _layer(n_heads, d_model, dropout, d_ff)
        k = shortening_factors[0]
        self.shift_right = ShiftRight(k - 1)
        self.shortening = AvgPoolShortening(k)
        if len(shortening_factors) == 1:
            self.shortened = _layer(n_heads, d_model, dropout, d_ff)
            self.hour_glass = None
        else:
            self.hour_glass = HourGlass(n_heads, d_model, dropout, d_ff, shortening_factors[1:])
        self.up_sampling = NaiveUpSampling(k)
        self.post = _layer(n_heads, d_model, dropout, d_ff)

    def forward(self, x):
        x = self.pre(x=x, mask=subsequent_mask(len(x), x.device))
        x_short = self.shortening(self.shift_right(x))
        if self.hour_glass is None:
            x_short = self.shortened(x=x_short, mask=subsequent_mask(len(x_short), x.device))
        else:
            x_short = self.hour_glass(x_short)
        x = x + self.up_sampling(x, x_short)
        x = self.post(x=x, mask=subsequent_mask(len(x), x.device))
        return x


# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------

COMMON = dict(n_heads=2, d_model=16, dropout=0.1, d_ff=32)
CASES = [
    # name, shortening_factors, seq_len, batch, seed
    ("f2_s8_b2", [2], 8, 2, 1001),
    ("f3_s7_b1", [3], 7, 1, 1002),
    ("f2x3_s10_b3", [2, 3], 10, 3, 1003),
    ("f2x2x2_s9_b2", [2, 2, 2], 9, 2, 1004),
    ("f2x3_s1_b2", [2, 3], 1, 2, 1005),  # seq_len 1 < every factor
]


def build_case(factors, seq_len, batch, seed):
    """Model (f32, eval mode, LayerNorms perturbed) and f32 inputs, all from `seed`."""
    torch.manual_seed(seed)
    model = HourGlass(COMMON["n_heads"], COMMON["d_model"], COMMON["dropout"], COMMON["d_ff"], factors)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.add_(0.2 * torch.randn_like(module.weight))
                module.bias.add_(0.1 * torch.randn_like(module.bias))
    model.eval()
    shape = (seq_len, batch, COMMON["d_model"])
    x = torch.randn(shape, dtype=torch.float32)
    gy = torch.randn(shape, dtype=torch.float32)
    return model, x, gy


def forward_backward(model, x, gy):
    """y, gx and {name: grad} of L = sum(y * gy), in the model's dtype."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    y = model(x)
    (y * gy).sum().backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    return y.detach(), x.grad.detach(), grads


def loss_at(model, x, gy):
    with torch.no_grad():
        return float((model(x) * gy).sum())


def finite_difference_check(model, x, gy, gx, grads, seed, eps=1e-5, tol=1e-6):
    """Directional derivatives in f64: one random direction per tensor (x and each parameter) and one over
    all of them at once, (L(+eps v) - L(-eps v)) / 2 eps against <grad, v>. The error is relative to
    max(|analytic|, |numeric|, 1): derivatives that are exactly zero in theory (e.g. the key bias's, as
    softmax ignores a per-query constant) come out of the difference quotient as rounding noise of about
    1e-16 |L| / eps. The truncation error (eps^2 times a third derivative) stays below about 1e-7; a
    wrong gradient gives errors of order one. Returns the worst error."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    names = ["x"] + list(params)
    dirs = {n: torch.randn((x if n == "x" else params[n]).shape, generator=gen, dtype=torch.float64)
            for n in names}
    analytic = {"x": gx}
    analytic.update(grads)

    def shifted_loss(scale, which):
        with torch.no_grad():
            saved = {n: params[n].detach().clone() for n in which if n != "x"}
            for n in saved:
                params[n].add_(scale * dirs[n])
            xx = x + scale * dirs["x"] if "x" in which else x
            loss = loss_at(model, xx, gy)
            for n, v in saved.items():
                params[n].copy_(v)
        return loss

    worst = 0.0
    for which in [[n] for n in names] + [names]:
        numeric = (shifted_loss(eps, which) - shifted_loss(-eps, which)) / (2 * eps)
        exact = sum(float((analytic[n] * dirs[n]).sum()) for n in which)
        denom = max(abs(exact), abs(numeric), 1.0)
        err = abs(numeric - exact) / denom
        worst = max(worst, err)
        if os.environ.get("GOLDEN_FD_VERBOSE"):
            label = which[0] if len(which) == 1 else "all"
            print(f"    fd {label}: analytic {exact:.9e} numeric {numeric:.9e} err {err:.1e}")
        if err > tol:
            raise AssertionError(f"finite differences disagree for {which if len(which) == 1 else 'all'}: "
                                 f"numeric {numeric!r}, analytic {exact!r}, rel err {err:.3e}")
    return worst


def causality_check(model, x, gy):
    seq_len = x.shape[0]
    with torch.no_grad():
        y = model(x)
        for t in range(1, seq_len):
            x2 = x.clone()
            x2[t:] += torch.randn_like(x2[t:])
            y2 = model(x2)
            if not torch.equal(y[:t], y2[:t]):
                raise AssertionError(f"output before {t} depends on inputs at or after {t}")


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    nb = np.linalg.norm(b)
    d = np.linalg.norm(a - b)
    return d / nb if nb > 0 else d


def to_np32(t):
    return np.ascontiguousarray(t.detach().to(torch.float32).cpu().numpy())


def make_case(name, factors, seq_len, batch, seed, out_root):
    model, x, gy = build_case(factors, seq_len, batch, seed)
    weights = {n: to_np32(t) for n, t in model.state_dict().items()}
    assert set(weights) == {n for n, _ in model.named_parameters()}, "state_dict has non-parameters"

    # float32 PyTorch, for information only.
    y32, gx32, grads32 = forward_backward(model, x, gy)

    # float64 from the very same f32 values: the fixture.
    model64 = model.double()
    x64, gy64 = x.double(), gy.double()
    y, gx, grads = forward_backward(model64, x64, gy64)
    assert y.shape == x.shape

    # The reference's own ShiftRight (length `shift` when seq_len <= shift) gives the same result.
    ShiftRight.reference_length = True
    try:
        y_ref, gx_ref, grads_ref = forward_backward(model64, x64, gy64)
    finally:
        ShiftRight.reference_length = False
    assert torch.equal(y, y_ref) and torch.equal(gx, gx_ref)
    assert all(torch.equal(grads[n], grads_ref[n]) for n in grads)

    fd_worst = finite_difference_check(model64, x64, gy64, gx, grads, seed)
    causality_check(model64, x64, gy64)

    expected = {"y": to_np32(y), "gx": to_np32(gx)}
    expected.update({f"grad.{n}": to_np32(g) for n, g in grads.items()})
    inputs = {"x": to_np32(x), "gy": to_np32(gy)}
    config = {"n_heads": COMMON["n_heads"], "d_model": COMMON["d_model"], "dropout": COMMON["dropout"],
              "d_ff": COMMON["d_ff"], "shortening_factors": list(factors)}

    case_dir = os.path.join(out_root, name)
    os.makedirs(case_dir, exist_ok=True)
    with open(os.path.join(case_dir, "config.json"), "w") as f:
        json.dump(config, f)
        f.write("\n")
    save_file(weights, os.path.join(case_dir, "weights.safetensors"))
    save_file(inputs, os.path.join(case_dir, "input.safetensors"))
    save_file(expected, os.path.join(case_dir, "expected.safetensors"))

    # Read back what was written.
    for fname, want in [("weights", weights), ("input", inputs), ("expected", expected)]:
        got = load_file(os.path.join(case_dir, f"{fname}.safetensors"))
        assert set(got) == set(want), fname
        for k in want:
            assert got[k].dtype == np.float32 and np.array_equal(got[k], want[k]), (fname, k)
            assert np.all(np.isfinite(got[k])), (fname, k)

    # How far float32 PyTorch is from the f64 fixture (guide for a float32 implementation's tolerance).
    # The key projection's bias has a gradient of exactly zero in theory (softmax ignores a constant added
    # to all of a query's scores): the fixture holds f64 rounding noise (~1e-16) there and a float32 run
    # gets f32 rounding noise, so it is measured by its largest absolute difference, not relatively.
    f32_vs_f64 = {"y": rel_err(to_np32(y32), expected["y"]), "gx": rel_err(to_np32(gx32), expected["gx"])}
    key_bias = [n for n in grads32 if n.endswith("self_attn.key.linear.bias")]
    f32_vs_f64["grad.* (rel)"] = max(rel_err(to_np32(grads32[n]), expected[f"grad.{n}"])
                                     for n in grads32 if n not in key_bias)
    f32_vs_f64["grad.*key.linear.bias (max abs)"] = max(
        float(np.max(np.abs(to_np32(grads32[n]) - expected[f"grad.{n}"]))) for n in key_bias)
    zero_grads = [n for n in grads if not torch.any(grads[n] != 0)]
    size = sum(os.path.getsize(os.path.join(case_dir, f)) for f in os.listdir(case_dir))
    print(f"{name}: factors {factors} x {list(x.shape)}, {len(grads)} parameters, {size} bytes; "
          f"finite differences worst rel err {fd_worst:.1e}; "
          f"f32 PyTorch vs fixture: " + ", ".join(f"{k} {v:.1e}" for k, v in f32_vs_f64.items()))
    if zero_grads:
        print(f"  exactly-zero gradients ({len(zero_grads)}): {', '.join(zero_grads)}")
    return size


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "golden"),
                        help="output folder (default: tests/fixtures/golden)")
    parser.add_argument("--only", action="append", help="case name to (re)generate; repeatable")
    args = parser.parse_args()
    torch.set_num_threads(1)  # deterministic reductions
    cases = [c for c in CASES if not args.only or c[0] in args.only]
    if args.only and len(cases) != len(args.only):
        sys.exit(f"unknown case in {args.only}; cases: {[c[0] for c in CASES]}")
    total = sum(make_case(*c, os.path.normpath(args.out)) for c in cases)
    print(f"wrote {len(cases)} cases, {total} bytes, under {os.path.normpath(args.out)} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
