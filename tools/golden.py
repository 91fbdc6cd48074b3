#!/usr/bin/env python3
"""Golden fixtures for the `hourglass` crate, computed by PyTorch.

What it does
    Rebuilds, self-contained (no labml / labml_helpers dependency), the Hourglass model of the reference
    implementation `labml_nn.transformers.hour_glass` (Nawrot et al. 2021) with its exact module tree, so
    that `state_dict()` names are the reference's (`pre.self_attn.query.linear.weight`,
    `hour_glass.shortened.feed_forward.layer1.bias`, ...), and extends it with every component of
    docs/components.md, following that spec: linear and attention shortening (attention pooling avg | linear),
    linear and attention upsampling (attention upsampling naive | linear), the funnel and window attention
    resampling masks, depth triples (stacks of 0, 1 or n layers; n > 1 numbered like nn.Sequential),
    non-causal models and rotary positions ("positions": "rotary": RoPE with half-split pairing on q and k of
    every transformer layer's self-attention, at the level's own positions; not in the resamplers'
    cross-attention). With the default options the model is exactly the reference one, and the reference
    cases' files are unchanged. For every case in CASES it

      * initialises the model with PyTorch's default initialisation from a fixed seed, then perturbs every
        LayerNorm weight and bias so they are not trivially ones / zeros;
      * draws `x` and `gy` ([seq_len, batch, d_model], standard normal) in float32;
      * converts model and inputs to float64 (exactly: they are f32 values) and computes, in eval mode,
        `y = model(x)`, `gx = d sum(y * gy) / dx` and `grad.<name> = d sum(y * gy) / d<name>` for every
        parameter;
      * writes, in float32, the file format of the crate's CLI
        `hourglass forward --config C.json --weights W.safetensors --input I.safetensors --output O.safetensors`:

            tests/fixtures/golden/<case>/config.json          {"n_heads", "d_model", "dropout", "d_ff",
                                                               "shortening_factors"} and the case's keys of
                                                               docs/components.md ("shortening", "depth", ...)
            tests/fixtures/golden/<case>/weights.safetensors  the state_dict, f32
            tests/fixtures/golden/<case>/input.safetensors    x, gy
            tests/fixtures/golden/<case>/expected.safetensors y, gx, grad.<name> for every parameter

    and sanity-checks what it wrote, in float64: a finite-difference check of the exported gradients
    (directional derivatives, one random direction per tensor and one over everything), causality (changing
    x[t:] leaves y[:t] unchanged) for causal cases and, for non-causal ones, that changing x[t:] changes every
    row of y[:t], equality with the reference's own ShiftRight (see below; cases without attention
    shortening), parameter names and shapes against docs/components.md (an independent listing,
    spec_param_shapes), every ReLU input at least RELU_MARGIN from the kink, a clear gap between gradients
    that are zero in theory (f64 noise below NOISE_RMS, or exact zeros) and the others (above SIGNAL_RMS),
    a float32 PyTorch run within F32_REL_MAX of the fixture (badly conditioned fixtures are refused), for
    rotary cases that switching rotary off (or on in the cross-attention too) changes y by at least
    ROTARY_MIN_CHANGE, and a re-read of every file. Before the cases, fold / unfold are checked against their
    index formulas, the attention masks against the key-range table of docs/components.md, and rotary against
    its complex-number form (position 0 the identity, scores depending on relative positions only).

ShiftRight and short sequences
    The reference's ShiftRight(s) is `cat(zeros[s], x[:-s])`: when seq_len <= s, `x[:-s]` is empty and the
    result has length s, not seq_len. Here ShiftRight keeps the length: all zeros of x's shape when
    seq_len <= s (the crate does the same). AvgPoolShortening(k = s + 1, ceil_mode) turns either into a
    single all-zero vector (seq_len <= s < k), so the model's output and gradients are the same (so does
    linear pooling: one zero-padded window of zeros); the script asserts this by also running every case
    without attention shortening with the reference's ShiftRight. Attention shortening uses the shifted rows
    as keys, so there the crate's (and this script's) length-keeping ShiftRight is the definition.

Masking: the reference fills masked scores with -1e9, this script with -inf; every query of every mask here
keeps at least one key, so both give exactly zero probability to masked keys and the results are the same.

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
    """`rotary=True` (docs/components.md, "Positions"; not in the reference): rotary position embeddings on the
    projected queries and keys, each at its own positions 0..len. Only the transformer layers' self-attention
    sets it; the attention resamplers' cross-attention never does (make_case switches it on there only to
    show that a fixture would catch that mistake)."""

    def __init__(self, heads: int, d_model: int, dropout_prob: float = 0.1, bias: bool = True,
                 rotary: bool = False):
        super().__init__()
        self.d_k = d_model // heads
        self.rotary = rotary
        self.heads = heads
        self.query = PrepareForMultiHeadAttention(d_model, heads, self.d_k, bias)
        self.key = PrepareForMultiHeadAttention(d_model, heads, self.d_k, bias)
        self.value = PrepareForMultiHeadAttention(d_model, heads, self.d_k, bias)
        self.output = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout_prob)
        self.scale = 1 / math.sqrt(self.d_k)

    def forward(self, *, query, key, value, mask=None):
        # query: [seq_q, batch, d_model]; key, value: [seq_k, batch, d_model]; mask: [seq_q, seq_k, 1]
        # (True = may attend), None = every key
        seq_len, batch_size, _ = query.shape
        if mask is not None:
            assert mask.shape[:2] == (seq_len, key.shape[0]), (mask.shape, query.shape, key.shape)
            mask = mask.unsqueeze(-1)  # same mask for every head
        query = self.query(query)
        key = self.key(key)
        value = self.value(value)
        if self.rotary:
            query = rotary_embed(query)
            key = rotary_embed(key)
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
        # ceil_mode without padding: the last, partial window averages only the rows present.
        return self.pool(x.permute(1, 2, 0)).permute(2, 0, 1)


class NaiveUpSampling(nn.Module):
    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x, x_short):
        """x + repeat_k(x_short)[:T] (the residual skip included)."""
        expanded = torch.repeat_interleave(x_short, self.k, dim=0)
        return x + expanded[: x.shape[0]]


def _layer(n_heads, d_model, dropout, d_ff, rotary=False):
    return TransformerLayer(d_model=d_model,
                            self_attn=MultiHeadAttention(n_heads, d_model, dropout, rotary=rotary),
                            feed_forward=FeedForward(d_model, d_ff, dropout),
                            dropout_prob=dropout)


# --------------------------------------------------------------------------------------------------
# The components of docs/components.md beyond the reference: linear and attention shortening /
# upsampling, attention resampling masks, depth triples, non-causal mode, rotary positions.
# --------------------------------------------------------------------------------------------------


ROTARY_BASE = 10000.0


def rotary_cos_sin(seq_len: int, d_head: int, dtype, device=None):
    """cos and sin of the angles p * theta_i, [seq_len, d_head / 2], for positions p = 0..seq_len and
    theta_i = 10000^(-2i / d_head): computed in float64, then rounded to `dtype` (docs/components.md)."""
    assert d_head % 2 == 0, f"rotary needs an even head size, got {d_head}"
    i = torch.arange(d_head // 2, dtype=torch.float64, device=device)
    theta = ROTARY_BASE ** (-2.0 * i / d_head)
    angle = torch.arange(seq_len, dtype=torch.float64, device=device).unsqueeze(1) * theta.unsqueeze(0)
    return angle.cos().to(dtype), angle.sin().to(dtype)


def rotary_embed(x):
    """Rotary position embedding of x [seq, batch, heads, d_head] (docs/components.md, "Positions"): the
    half-split pairing of GPT-NeoX / LLaMA, pair i < d_head/2 of every head is (x[..., i], x[..., i + d_head/2]),
    and at position p (x's index along dim 0) the pair (a, b) becomes (a cos - b sin, a sin + b cos) of the
    angle p * theta_i. Autograd gives the backward (the transposed rotation)."""
    seq_len, _, _, d_head = x.shape
    cos, sin = rotary_cos_sin(seq_len, d_head, x.dtype, x.device)
    cos, sin = cos[:, None, None, :], sin[:, None, None, :]  # broadcast over batch and heads
    a, b = x[..., : d_head // 2], x[..., d_head // 2:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


def fold(x, k: int):
    """[T, B, D] -> [ceil(T/k), B, k*D]: window s holds x[s*k + r] at features r*D..(r+1)*D, the last, partial
    window zero-padded. (Any shift is applied before; the crate's `ops::window::fold(x, k, shift)`.)"""
    t, b, d = x.shape
    ts = -(-t // k)
    if ts * k > t:
        x = torch.cat([x, x.new_zeros([ts * k - t, b, d])])
    return x.reshape(ts, k, b, d).permute(0, 2, 1, 3).reshape(ts, b, k * d)


def unfold(g, k: int, t: int):
    """[Ts, B, k*D] -> [T, B, D]: features r*D..(r+1)*D of vector s become position s*k + r, truncated to T."""
    ts, b, kd = g.shape
    d = kd // k
    return g.reshape(ts, b, k, d).permute(0, 2, 1, 3).reshape(ts * k, b, d)[:t]


def attn_mask(kind: str, n_q: int, n_k: int, k: int = 1, device=None):
    """[n_q, n_k, 1] bool, True where query i may attend to key j (docs/components.md, `AttnMask`):
    causal j <= i; full; funnel j // k <= i; window j // k == i; up_causal j <= i // k; up_window j == i // k."""
    i = torch.arange(n_q, device=device).unsqueeze(1)
    j = torch.arange(n_k, device=device).unsqueeze(0)
    if kind == "causal":
        m = j <= i
    elif kind == "full":
        m = torch.ones(n_q, n_k, dtype=torch.bool, device=device)
    elif kind == "funnel":
        m = torch.div(j, k, rounding_mode="floor") <= i
    elif kind == "window":
        m = torch.div(j, k, rounding_mode="floor") == i
    elif kind == "up_causal":
        m = j <= torch.div(i, k, rounding_mode="floor")
    elif kind == "up_window":
        m = j == torch.div(i, k, rounding_mode="floor")
    else:
        raise ValueError(kind)
    return m.unsqueeze(-1)


def resampling_mask(direction: str, mask_option: str, causal: bool) -> str:
    """Mask of the attention inside attention shortening ("down") or upsampling ("up"). Non-causal: the
    funnel / causal variants see every key; the window variants keep their windows."""
    if mask_option == "window":
        return "window" if direction == "down" else "up_window"
    assert mask_option == "funnel", mask_option
    if not causal:
        return "full"
    return "funnel" if direction == "down" else "up_causal"


class LinearPoolingShortening(nn.Module):
    """Linear(k*D, D)(fold(x)); the level has shifted x already (causal)."""

    def __init__(self, k: int, d_model: int):
        super().__init__()
        self.k = k
        self.linear = nn.Linear(k * d_model, d_model)

    def forward(self, x):
        return self.linear(fold(x, self.k))


class LinearUpSampling(nn.Module):
    """x + unfold(Linear(D, k*D)(x_short))[:T]."""

    def __init__(self, k: int, d_model: int):
        super().__init__()
        self.k = k
        self.linear = nn.Linear(d_model, k * d_model)

    def forward(self, x, x_short):
        return x + unfold(self.linear(x_short), self.k, x.shape[0])


class AttentionShortening(nn.Module):
    """h = LN_in(x) (x shifted by the level when causal); q = LN_q(S(h)), S avg or linear pooling (no further
    shift); y = q + Dropout(MHA(q, h, h)) under the funnel (or window / full) mask;
    y = y + Dropout(FFN(LN_ff(y)))."""

    def __init__(self, k, n_heads, d_model, dropout, d_ff, pooling, mask_kind):
        super().__init__()
        self.k = k
        self.mask_kind = mask_kind
        self.pooling = pooling
        self.norm_input = nn.LayerNorm([d_model])
        if pooling == "linear":
            self.pool = nn.Linear(k * d_model, d_model)
        else:
            assert pooling == "avg", pooling
            self.pool = AvgPoolShortening(k)
        self.norm_query = nn.LayerNorm([d_model])
        self.attention = MultiHeadAttention(n_heads, d_model, dropout)
        self.norm_ff = nn.LayerNorm([d_model])
        self.feed_forward = FeedForward(d_model, d_ff, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        h = self.norm_input(x)
        s = self.pool(fold(h, self.k)) if self.pooling == "linear" else self.pool(h)
        q = self.norm_query(s)
        mask = attn_mask(self.mask_kind, q.shape[0], h.shape[0], self.k, x.device)
        y = q + self.dropout(self.attention(query=q, key=h, value=h, mask=mask))
        y = y + self.dropout(self.feed_forward(self.norm_ff(y)))
        return y


class AttentionUpSampling(nn.Module):
    """h = LN_in(x_short); q = LN_q(U(h)[:T]) + x, U naive (repeat) or linear (Linear(D, k*D), unfold);
    y = q + Dropout(MHA(q, h, h)) under "query i sees key j iff j <= i // k" (or up-window / full);
    y = y + Dropout(FFN(LN_ff(y))); returns x + LN_out(y)."""

    def __init__(self, k, n_heads, d_model, dropout, d_ff, upsampling, mask_kind):
        super().__init__()
        self.k = k
        self.mask_kind = mask_kind
        self.upsampling = upsampling
        self.norm_input = nn.LayerNorm([d_model])
        if upsampling == "linear":
            self.linear = nn.Linear(d_model, k * d_model)
        else:
            assert upsampling == "naive", upsampling
        self.norm_query = nn.LayerNorm([d_model])
        self.attention = MultiHeadAttention(n_heads, d_model, dropout)
        self.norm_ff = nn.LayerNorm([d_model])
        self.feed_forward = FeedForward(d_model, d_ff, dropout)
        self.norm_output = nn.LayerNorm([d_model])
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, x_short):
        t = x.shape[0]
        h = self.norm_input(x_short)
        if self.upsampling == "linear":
            u = unfold(self.linear(h), self.k, t)
        else:
            u = torch.repeat_interleave(h, self.k, dim=0)[:t]
        q = self.norm_query(u) + x
        mask = attn_mask(self.mask_kind, t, h.shape[0], self.k, x.device)
        y = q + self.dropout(self.attention(query=q, key=h, value=h, mask=mask))
        y = y + self.dropout(self.feed_forward(self.norm_ff(y)))
        return x + self.norm_output(y)


def make_stack(n, n_heads, d_model, dropout, d_ff, rotary=False):
    """n transformer layers: None for 0, the layer itself for 1 (names `pre.norm_ff.weight`, the reference's),
    a ModuleList for n > 1 (names `pre.0.norm_ff.weight`, `pre.1.` ..., as nn.Sequential numbers them)."""
    assert n >= 0, n
    if n == 0:
        return None
    if n == 1:
        return _layer(n_heads, d_model, dropout, d_ff, rotary)
    return nn.ModuleList([_layer(n_heads, d_model, dropout, d_ff, rotary) for _ in range(n)])


def run_stack(stack, x, causal):
    if stack is None:
        return x
    layers = [stack] if isinstance(stack, TransformerLayer) else list(stack)
    mask = subsequent_mask(len(x), x.device) if causal else None
    for layer in layers:
        x = layer(x=x, mask=mask)
    return x


def per_level(value, n_levels, key):
    """A string for every level, or a list with one entry per level."""
    if isinstance(value, str):
        return [value] * n_levels
    assert isinstance(value, list) and len(value) == n_levels, f"{key}: {value!r} needs {n_levels} entries"
    return list(value)


def default_depth(n_levels):
    return [1, 1 if n_levels == 1 else default_depth(n_levels - 1), 1]


def check_depth(depth, n_levels):
    assert isinstance(depth, list) and len(depth) == 3, f"depth {depth!r}: a triple per level"
    pre, mid, post = depth
    assert isinstance(pre, int) and pre >= 0 and isinstance(post, int) and post >= 0, depth
    if n_levels == 1:
        assert isinstance(mid, int) and mid >= 1, f"innermost valley {mid!r} needs at least 1 layer"
    else:
        check_depth(mid, n_levels - 1)


class HourGlass(nn.Module):
    """One level (and, through `hour_glass`, the levels below). With the default options this is exactly the
    reference model: one layer per stack, avg shortening, naive upsampling, causal."""

    def __init__(self, n_heads: int, d_model: int, dropout: float, d_ff: int, shortening_factors: List[int],
                 *, shortening="avg", upsampling="naive", attention_pooling="avg", attention_upsampling="naive",
                 attention_resampling_mask="funnel", depth=None, causal=True, positions="none"):
        super().__init__()
        n_levels = len(shortening_factors)
        shortening = per_level(shortening, n_levels, "shortening")
        upsampling = per_level(upsampling, n_levels, "upsampling")
        if depth is None:
            depth = default_depth(n_levels)
        check_depth(depth, n_levels)
        assert attention_resampling_mask in ("funnel", "window"), attention_resampling_mask
        assert positions in ("none", "rotary"), positions
        rotary = positions == "rotary"
        self.causal = causal
        # Construction order is the reference's (pre, shortened | hour_glass, post), with shortening and
        # upsampling parameters (if any) right before and after the valley: it fixes which random numbers
        # each parameter's default initialisation gets.
        self.pre = make_stack(depth[0], n_heads, d_model, dropout, d_ff, rotary)
        k = shortening_factors[0]
        self.shift_right = ShiftRight(k - 1 if causal else 0)
        if shortening[0] == "avg":
            self.shortening = AvgPoolShortening(k)
        elif shortening[0] == "linear":
            self.shortening = LinearPoolingShortening(k, d_model)
        elif shortening[0] == "attention":
            self.shortening = AttentionShortening(k, n_heads, d_model, dropout, d_ff, attention_pooling,
                                                  resampling_mask("down", attention_resampling_mask, causal))
        else:
            raise ValueError(f"shortening {shortening[0]!r}")
        if n_levels == 1:
            self.shortened = make_stack(depth[1], n_heads, d_model, dropout, d_ff, rotary)
            self.hour_glass = None
        else:
            self.hour_glass = HourGlass(n_heads, d_model, dropout, d_ff, shortening_factors[1:],
                                        shortening=shortening[1:], upsampling=upsampling[1:],
                                        attention_pooling=attention_pooling,
                                        attention_upsampling=attention_upsampling,
                                        attention_resampling_mask=attention_resampling_mask,
                                        depth=depth[1], causal=causal, positions=positions)
        if upsampling[0] == "naive":
            self.up_sampling = NaiveUpSampling(k)
        elif upsampling[0] == "linear":
            self.up_sampling = LinearUpSampling(k, d_model)
        elif upsampling[0] == "attention":
            self.up_sampling = AttentionUpSampling(k, n_heads, d_model, dropout, d_ff, attention_upsampling,
                                                   resampling_mask("up", attention_resampling_mask, causal))
        else:
            raise ValueError(f"upsampling {upsampling[0]!r}")
        self.post = make_stack(depth[2], n_heads, d_model, dropout, d_ff, rotary)

    def forward(self, x):
        x = run_stack(self.pre, x, self.causal)
        x_short = self.shortening(self.shift_right(x))
        if self.hour_glass is None:
            x_short = run_stack(self.shortened, x_short, self.causal)
        else:
            x_short = self.hour_glass(x_short)
        x = self.up_sampling(x, x_short)  # includes the residual skip
        x = run_stack(self.post, x, self.causal)
        return x


# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------

COMMON = dict(n_heads=2, d_model=16, dropout=0.1, d_ff=32)
CASES = [
    # name, shortening_factors, seq_len, batch, seed, options (the config keys of docs/components.md beyond the
    # reference's, written to config.json as given; those left out take their defaults)
    # The reference model:
    ("f2_s8_b2", [2], 8, 2, 1001, {}),
    ("f3_s7_b1", [3], 7, 1, 1002, {}),
    ("f2x3_s10_b3", [2, 3], 10, 3, 1003, {}),
    ("f2x2x2_s9_b2", [2, 2, 2], 9, 2, 1004, {}),
    ("f2x3_s1_b2", [2, 3], 1, 2, 1005, {}),  # seq_len 1 < every factor
    # The components of docs/components.md. Stacks of 0 layers (depth) keep the files small.
    ("short-linear_f2_s7_b2", [2], 7, 2, 2011,  # last window partial
     {"shortening": "linear"}),
    ("up-linear_f3_s8_b2", [3], 8, 2, 2002,  # last window partial
     {"upsampling": "linear"}),
    ("short-attn-avg-funnel_f2_s9_b1", [2], 9, 1, 2003,
     {"shortening": "attention", "upsampling": "naive", "attention_pooling": "avg",
      "attention_resampling_mask": "funnel", "depth": [1, 1, 0]}),
    ("attn-linear-window_f2x3_s9_b1", [2, 3], 9, 1, 2004,  # 9 -> 5 -> 2
     {"shortening": "attention", "upsampling": "attention", "attention_pooling": "linear",
      "attention_upsampling": "naive", "attention_resampling_mask": "window", "depth": [1, [0, 1, 0], 0]}),
    ("up-attn-linear_f2x2_s11_b2", [2, 2], 11, 2, 2005,  # 11 -> 6 -> 3
     {"shortening": "linear", "upsampling": ["attention", "attention"], "attention_upsampling": "linear",
      "depth": [0, [0, 1, 0], 1]}),
    ("depth_f2x3_s13_b1", [2, 3], 13, 1, 2006,  # 13 -> 7 -> 3
     {"depth": [2, [1, 2, 0], 1]}),
    ("noncausal-attn-linear_f2x2_s9_b2", [2, 2], 9, 2, 2022,  # 9 -> 5 -> 3
     {"shortening": "attention", "upsampling": ["linear", "attention"], "depth": [0, [0, 1, 0], 1],
      "causal": False}),
    ("noncausal-window_f3_s8_b1", [3], 8, 1, 2009,
     {"shortening": "attention", "upsampling": "attention", "attention_pooling": "linear",
      "attention_upsampling": "linear", "attention_resampling_mask": "window", "depth": [0, 1, 0],
      "causal": False}),
    ("short-attn_f3x2_s2_b2", [3, 2], 2, 2, 2010,  # seq_len 2 < 3
     {"shortening": ["attention", "linear"], "upsampling": ["attention", "naive"], "attention_pooling": "linear",
      "attention_upsampling": "linear", "depth": [1, [0, 1, 0], 0]}),
    # Rotary positions (docs/components.md, "Positions"): in every transformer layer's self-attention, at the
    # level's own positions, and not in the attention resamplers' cross-attention.
    ("rotary_f2x3_s17_b2", [2, 3], 17, 2, 3001,  # 17 -> 9 -> 3, the reference components otherwise
     {"positions": "rotary"}),
    ("rotary-attn_f3x2_s16_b2", [3, 2], 16, 2, 3002,  # 16 -> 6 -> 3
     {"shortening": "attention", "upsampling": "attention", "attention_pooling": "linear",
      "attention_upsampling": "naive", "depth": [1, [1, 1, 1], 1], "positions": "rotary"}),
    ("noncausal-rotary-attn_f2_s9_b1", [2], 9, 1, 3004,  # 9 -> 5
     {"shortening": "attention", "upsampling": "attention", "attention_upsampling": "linear", "causal": False,
      "positions": "rotary"}),
]

# Gradient RMS below NOISE_RMS: zero in theory (f64 rounding noise); every other gradient is above SIGNAL_RMS.
NOISE_RMS = 1e-12
# Largest accepted relative error of a float32 PyTorch run against a fixture (5x below tests/suite/golden.rs's 1e-5).
F32_REL_MAX = 2e-6
# Smallest accepted distance of a ReLU input from 0 (see relu_margin).
RELU_MARGIN = 5e-5
SIGNAL_RMS = 1e-4
# Smallest accepted relative change of y when rotary is switched off (or on in cross-attention too).
ROTARY_MIN_CHANGE = 1e-3

OPTION_DEFAULTS = {"shortening": "avg", "upsampling": "naive", "attention_pooling": "avg",
                   "attention_upsampling": "naive", "attention_resampling_mask": "funnel", "depth": None,
                   "causal": True, "positions": "none"}


def build_case(factors, seq_len, batch, seed, options):
    """Model (f32, eval mode, LayerNorms perturbed) and f32 inputs, all from `seed`."""
    assert set(options) <= set(OPTION_DEFAULTS), set(options) - set(OPTION_DEFAULTS)
    torch.manual_seed(seed)
    model = HourGlass(COMMON["n_heads"], COMMON["d_model"], COMMON["dropout"], COMMON["d_ff"], factors,
                      **options)
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


def relu_margin(model, x):
    """Smallest |input| of any ReLU in the forward pass. A float32 implementation agrees with the f64 fixture
    only when no ReLU input is within its rounding error of the kink (and the finite differences need the
    same margin)."""
    smallest = [math.inf]

    def hook(module, inputs, output):
        smallest[0] = min(smallest[0], float(inputs[0].detach().abs().min()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return smallest[0]


def set_rotary(model, self_attention: bool, cross_attention: bool):
    for m in model.modules():
        if isinstance(m, TransformerLayer):
            m.self_attn.rotary = self_attention
        elif isinstance(m, (AttentionShortening, AttentionUpSampling)):
            m.attention.rotary = cross_attention


def rotary_sensitivity(name, model, x, y):
    """A rotary case must tell rotary from no positions, and (with attention resamplers) rotary only in
    self-attention from rotary in the cross-attention too: y changes by far more than the tests' tolerance."""
    variants = {"no rotary": (False, False)}
    if any(isinstance(m, (AttentionShortening, AttentionUpSampling)) for m in model.modules()):
        variants["rotary in cross-attention too"] = (True, True)
    for label, (self_attention, cross_attention) in variants.items():
        set_rotary(model, self_attention, cross_attention)
        try:
            with torch.no_grad():
                other = model(x)
        finally:
            set_rotary(model, True, False)
        change = float((other - y).norm() / y.norm())
        print(f"  {label}: y changes by {change:.1e} (relative)")
        if change < ROTARY_MIN_CHANGE:
            raise AssertionError(f"{name}: {label} changes y by only {change:.1e}; pick another seed or shape")


def non_causality_check(model, x):
    """Non-causal model: changing x[t:] changes every output row before t (every position sees every other
    one through the full-mask layers), for every t."""
    seq_len = x.shape[0]
    with torch.no_grad():
        y = model(x)
        for t in range(1, seq_len):
            x2 = x.clone()
            x2[t:] += torch.randn_like(x2[t:])
            y2 = model(x2)
            for r in range(t):
                if torch.equal(y[r], y2[r]):
                    raise AssertionError(f"non-causal: output {r} does not depend on inputs at or after {t}")


def spec_param_shapes(factors, options):
    """Parameter names and shapes as docs/components.md ("Parameter names" and the component tables) gives
    them, written independently of the modules above."""
    d, f = COMMON["d_model"], COMMON["d_ff"]
    opts = dict(OPTION_DEFAULTS, **options)
    n = len(factors)
    shortening = [opts["shortening"]] * n if isinstance(opts["shortening"], str) else opts["shortening"]
    upsampling = [opts["upsampling"]] * n if isinstance(opts["upsampling"], str) else opts["upsampling"]
    depth = opts["depth"] or default_depth(n)
    shapes = {}

    def linear(p, n_out, n_in):
        shapes[p + "weight"] = [n_out, n_in]
        shapes[p + "bias"] = [n_out]

    def norm(p):
        shapes[p + "weight"] = [d]
        shapes[p + "bias"] = [d]

    def attention_ff(p, attn):
        for w in ("query", "key", "value"):
            linear(f"{p}{attn}.{w}.linear.", d, d)
        linear(f"{p}{attn}.output.", d, d)
        norm(p + "norm_ff.")
        linear(p + "feed_forward.layer1.", f, d)
        linear(p + "feed_forward.layer2.", d, f)

    def stack(p, count):
        for i in range(count):
            q = p + "." if count == 1 else f"{p}.{i}."
            norm(q + "norm_self_attn.")
            attention_ff(q, "self_attn")

    def level(p, lvl, dep):
        k = factors[lvl]
        stack(p + "pre", dep[0])
        stack(p + "post", dep[2])
        if shortening[lvl] == "linear":
            linear(p + "shortening.linear.", d, k * d)
        elif shortening[lvl] == "attention":
            norm(p + "shortening.norm_input.")
            if opts["attention_pooling"] == "linear":
                linear(p + "shortening.pool.", d, k * d)
            norm(p + "shortening.norm_query.")
            attention_ff(p + "shortening.", "attention")
        if upsampling[lvl] == "linear":
            linear(p + "up_sampling.linear.", k * d, d)
        elif upsampling[lvl] == "attention":
            norm(p + "up_sampling.norm_input.")
            if opts["attention_upsampling"] == "linear":
                linear(p + "up_sampling.linear.", k * d, d)
            norm(p + "up_sampling.norm_query.")
            attention_ff(p + "up_sampling.", "attention")
            norm(p + "up_sampling.norm_output.")
        if lvl + 1 == n:
            stack(p + "shortened", dep[1])
        else:
            level(p + "hour_glass.", lvl + 1, dep[1])

    level("", 0, depth)
    return shapes


def component_self_checks():
    """fold / unfold against their index formulas (docs/components.md), and the masks against the table of
    key ranges of query i, clamped to the key length."""
    gen = torch.Generator().manual_seed(7)
    for t, b, d, k in [(7, 2, 3, 2), (8, 1, 4, 3), (2, 2, 2, 3), (6, 1, 2, 3), (1, 3, 2, 1)]:
        x = torch.randn(t, b, d, generator=gen, dtype=torch.float64)
        ts = -(-t // k)
        want = torch.zeros(ts, b, k * d, dtype=torch.float64)
        for s in range(ts):
            for r in range(k):
                if s * k + r < t:
                    want[s, :, r * d:(r + 1) * d] = x[s * k + r]
        assert torch.equal(fold(x, k), want), ("fold", t, k)
        g = torch.randn(ts, b, k * d, generator=gen, dtype=torch.float64)
        want = torch.stack([g[p // k, :, (p % k) * d:(p % k + 1) * d] for p in range(t)])
        assert torch.equal(unfold(g, k, t), want), ("unfold", t, k)
        # Adjoint: <fold(x), g> = <x, unfold(g)>.
        assert abs(float((fold(x, k) * g).sum() - (x * unfold(g, k, t)).sum())) < 1e-12
    ranges = {"causal": lambda i, k: (0, i + 1), "funnel": lambda i, k: (0, (i + 1) * k),
              "window": lambda i, k: (i * k, (i + 1) * k), "up_causal": lambda i, k: (0, i // k + 1),
              "up_window": lambda i, k: (i // k, i // k + 1)}
    for kind, rng in ranges.items():
        for n_q, n_k, k in [(4, 7, 2), (3, 8, 3), (7, 4, 2), (8, 3, 3), (1, 2, 3), (2, 1, 3), (5, 5, 1)]:
            m = attn_mask(kind, n_q, n_k, k)[..., 0]
            for i in range(n_q):
                lo, hi = rng(i, k)
                want = [lo <= j < min(hi, n_k) for j in range(n_k)]
                assert m[i].tolist() == want, (kind, n_q, n_k, k, i)
    assert bool(attn_mask("full", 3, 5)[..., 0].all())
    assert torch.equal(attn_mask("causal", 6, 6), subsequent_mask(6))
    # Rotary: the same rotation written with complex numbers, z_i = x[i] + j x[i + dh/2] times e^{j p theta_i};
    # position 0 is the identity; scores of rotated queries and keys depend on positions only through p' - p.
    for t, dh in [(6, 8), (3, 2), (9, 4)]:
        x = torch.randn(t, 2, 3, dh, generator=gen, dtype=torch.float64)
        h = dh // 2
        theta = torch.tensor([10000.0 ** (-2.0 * i / dh) for i in range(h)], dtype=torch.float64)
        angle = torch.arange(t, dtype=torch.float64)[:, None] * theta
        turn = torch.polar(torch.ones(t, h, dtype=torch.float64), angle)
        z = torch.complex(x[..., :h], x[..., h:]) * turn[:, None, None, :]
        got = rotary_embed(x)
        assert torch.allclose(got, torch.cat([z.real, z.imag], dim=-1), rtol=0, atol=1e-13), ("rotary", t, dh)
        assert torch.equal(got[0], x[0]), ("rotary position 0", t, dh)
        q = rotary_embed(x[:1, :1, :1].expand(t, 1, 1, dh))[:, 0, 0]  # one query vector at every position
        k = rotary_embed(x[1:2, :1, :1].expand(t, 1, 1, dh))[:, 0, 0]  # one key vector at every position
        scores = q @ k.T  # [p, p']
        assert torch.allclose(scores[1:, 1:], scores[:-1, :-1], rtol=0, atol=1e-12), ("rotary relative", t, dh)


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    nb = np.linalg.norm(b)
    d = np.linalg.norm(a - b)
    return d / nb if nb > 0 else d


def to_np32(t):
    return np.ascontiguousarray(t.detach().to(torch.float32).cpu().numpy())


def make_case(name, factors, seq_len, batch, seed, options, out_root):
    model, x, gy = build_case(factors, seq_len, batch, seed, options)
    causal = options.get("causal", True)
    weights = {n: to_np32(t) for n, t in model.state_dict().items()}
    assert set(weights) == {n for n, _ in model.named_parameters()}, "state_dict has non-parameters"
    spec = spec_param_shapes(factors, options)
    if {n: list(w.shape) for n, w in weights.items()} != spec:
        raise AssertionError(f"{name}: parameters differ from docs/components.md: "
                             f"missing {sorted(set(spec) - set(weights))}, extra {sorted(set(weights) - set(spec))}, "
                             f"shapes {[(n, list(w.shape), spec[n]) for n, w in weights.items() if n in spec and list(w.shape) != spec[n]]}")

    # float32 PyTorch, for information only.
    y32, gx32, grads32 = forward_backward(model, x, gy)

    # float64 from the very same f32 values: the fixture.
    model64 = model.double()
    x64, gy64 = x.double(), gy.double()
    y, gx, grads = forward_backward(model64, x64, gy64)
    assert y.shape == x.shape

    # The reference's own ShiftRight (length `shift` when seq_len <= shift) gives the same result. (Not with
    # attention shortening: its keys are the shifted rows, so the number of keys would change.)
    if "attention" not in per_level(options.get("shortening", "avg"), len(factors), "shortening"):
        ShiftRight.reference_length = True
        try:
            y_ref, gx_ref, grads_ref = forward_backward(model64, x64, gy64)
        finally:
            ShiftRight.reference_length = False
        assert torch.equal(y, y_ref) and torch.equal(gx, gx_ref)
        assert all(torch.equal(grads[n], grads_ref[n]) for n in grads)

    if options.get("positions", "none") == "rotary":
        rotary_sensitivity(name, model64, x64, y)

    margin = relu_margin(model64, x64)
    if margin < RELU_MARGIN:
        raise AssertionError(f"{name}: a ReLU input is {margin:.1e} from the kink; pick another seed")
    fd_worst = finite_difference_check(model64, x64, gy64, gx, grads, seed)
    if causal:
        causality_check(model64, x64, gy64)
    else:
        non_causality_check(model64, x64)

    expected = {"y": to_np32(y), "gx": to_np32(gx)}
    expected.update({f"grad.{n}": to_np32(g) for n, g in grads.items()})
    inputs = {"x": to_np32(x), "gy": to_np32(gy)}
    config = {"n_heads": COMMON["n_heads"], "d_model": COMMON["d_model"], "dropout": COMMON["dropout"],
              "d_ff": COMMON["d_ff"], "shortening_factors": list(factors)}
    config.update(options)

    case_dir = os.path.join(out_root, name)
    os.makedirs(case_dir, exist_ok=True)
    with open(os.path.join(case_dir, "config.json"), "w") as f:
        json.dump(config, f)
        f.write("\n")
    save_file(weights, os.path.join(case_dir, "weights.safetensors"))
    save_file(inputs, os.path.join(case_dir, "input.safetensors"))
    save_file(expected, os.path.join(case_dir, "expected.safetensors"))

    # Read back what was written.
    with open(os.path.join(case_dir, "config.json")) as f:
        assert json.load(f) == config
    for fname, want in [("weights", weights), ("input", inputs), ("expected", expected)]:
        got = load_file(os.path.join(case_dir, f"{fname}.safetensors"))
        assert set(got) == set(want), fname
        for k in want:
            assert got[k].dtype == np.float32 and np.array_equal(got[k], want[k]), (fname, k)
            assert np.all(np.isfinite(got[k])), (fname, k)

    # Gradients that are zero in exact arithmetic come out of f64 as rounding noise (or exact zeros): the key
    # bias of every attention without rotary (softmax ignores a constant added to all of a query's scores;
    # rotary turns it differently at each position), and the query and
    # key projections of an attention whose queries each see one key or only identical keys. Every other
    # gradient here is far above the noise; the gap is asserted so a test can tell the two apart by size.
    rms = {n: float(g.norm()) / math.sqrt(g.numel()) for n, g in grads.items()}
    noise = sorted(n for n in grads if rms[n] < NOISE_RMS)
    grey = {n: r for n, r in rms.items() if NOISE_RMS <= r < SIGNAL_RMS}
    assert not grey, f"{name}: gradients neither noise nor signal: {grey}"
    assert all(n.endswith("key.linear.bias") or "query.linear" in n or "key.linear" in n
               or "shortening.linear." in n or "norm_input.weight" in n or "norm_self_attn.weight" in n
               for n in noise), f"{name}: unexpected zero gradients {noise}"

    # How far float32 PyTorch is from the f64 fixture (guide for a float32 implementation's tolerance).
    # Zero-in-theory gradients are measured by their largest absolute difference, not relatively.
    f32_vs_f64 = {"y": rel_err(to_np32(y32), expected["y"]), "gx": rel_err(to_np32(gx32), expected["gx"])}
    f32_vs_f64["grad.* (rel)"] = max(rel_err(to_np32(grads32[n]), expected[f"grad.{n}"])
                                     for n in grads32 if n not in noise)
    f32_vs_f64["zero-in-theory grad.* (max abs)"] = max(
        [float(np.max(np.abs(to_np32(grads32[n]) - expected[f"grad.{n}"]))) for n in noise] or [0.0])
    # A fixture on which float32 PyTorch is already near the crate's tolerance (1e-5, tests/suite/golden.rs) is badly
    # conditioned (e.g. a gradient that is a small difference of large terms): asserted away.
    assert f32_vs_f64["grad.* (rel)"] < F32_REL_MAX and f32_vs_f64["y"] < F32_REL_MAX, \
        f"{name}: float32 PyTorch is {f32_vs_f64} from the fixture; pick another seed or shape"
    size = sum(os.path.getsize(os.path.join(case_dir, f)) for f in os.listdir(case_dir))
    print(f"{name}: factors {factors} x {list(x.shape)}, {json.dumps(options)}, {len(grads)} parameters, "
          f"{size} bytes; ReLU margin {margin:.1e}; finite differences worst rel err {fd_worst:.1e}; "
          f"f32 PyTorch vs fixture: " + ", ".join(f"{k} {v:.1e}" for k, v in f32_vs_f64.items()))
    exact = [n for n in noise if not torch.any(grads[n] != 0)]
    if exact:
        print(f"  exactly-zero gradients ({len(exact)}): {', '.join(exact)}")
    if len(exact) < len(noise):
        print(f"  zero-in-theory gradients, f64 noise (RMS < {NOISE_RMS:g}): "
              + ", ".join(f"{n} {rms[n]:.0e}" for n in noise if n not in exact))
    print(f"  smallest other gradient RMS {min(r for n, r in rms.items() if n not in noise):.1e}")
    return size


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "golden"),
                        help="output folder (default: tests/fixtures/golden)")
    parser.add_argument("--only", action="append", help="case name to (re)generate; repeatable")
    args = parser.parse_args()
    torch.set_num_threads(1)  # deterministic reductions
    component_self_checks()
    cases = [c for c in CASES if not args.only or c[0] in args.only]
    if args.only and len(cases) != len(args.only):
        sys.exit(f"unknown case in {args.only}; cases: {[c[0] for c in CASES]}")
    total = sum(make_case(*c, os.path.normpath(args.out)) for c in cases)
    print(f"wrote {len(cases)} cases, {total} bytes, under {os.path.normpath(args.out)} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
