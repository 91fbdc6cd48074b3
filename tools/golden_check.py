#!/usr/bin/env python3
"""Compare an `hourglass forward` output file with PyTorch's expected values.

    python3 tools/golden_check.py OUTPUT.safetensors EXPECTED.safetensors [--rtol 1e-4] [--atol 1e-5]

Prints, for every tensor of EXPECTED (y, gx, grad.<name> ...), the relative error ||a - b|| / ||b|| (a from
OUTPUT, b from EXPECTED; Frobenius norms, computed in float64) and the largest absolute difference. A
tensor passes when ||a - b|| <= rtol * ||b|| + atol * sqrt(numel), i.e. a relative error of rtol plus an
RMS absolute error of atol: the absolute part is for tensors that are zero in theory, such as every
`grad.*.self_attn.key.linear.bias` (softmax ignores a constant added to all of a query's scores), whose
values in any float32 run are rounding noise and whose relative error means nothing.

Exits 0 when every tensor of EXPECTED is in OUTPUT with the same shape and passes, 1 otherwise. Tensors
only in OUTPUT are listed but do not fail. Needs numpy and safetensors only (no torch):
`pip install numpy safetensors`. For a golden case of tests/fixtures/golden/<case>/:

    hourglass forward --config tests/fixtures/golden/<case>/config.json \\
        --weights tests/fixtures/golden/<case>/weights.safetensors \\
        --input tests/fixtures/golden/<case>/input.safetensors --output /tmp/out.safetensors
    python3 tools/golden_check.py /tmp/out.safetensors tests/fixtures/golden/<case>/expected.safetensors
"""

import argparse
import sys

import numpy as np
from safetensors.numpy import load_file


def main():
    parser = argparse.ArgumentParser(description="Per-tensor relative error of OUTPUT against EXPECTED.")
    parser.add_argument("output", help="safetensors file to check (e.g. written by `hourglass forward`)")
    parser.add_argument("expected", help="safetensors file with the reference values")
    parser.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance (default 1e-4)")
    parser.add_argument("--atol", type=float, default=1e-5,
                        help="RMS absolute tolerance, for tensors that are (near) zero (default 1e-5)")
    args = parser.parse_args()

    out = load_file(args.output)
    exp = load_file(args.expected)
    width = max(len(n) for n in exp) if exp else 4
    print(f"{'tensor':<{width}}  {'shape':<14} {'rel err':>9} {'max abs':>9}")
    failed = []
    worst = 0.0
    for name in sorted(exp, key=lambda n: (n.startswith("grad."), n)):
        b = exp[name].astype(np.float64)
        if name not in out:
            print(f"{name:<{width}}  MISSING from {args.output}")
            failed.append(name)
            continue
        a = out[name].astype(np.float64)
        if a.shape != b.shape:
            print(f"{name:<{width}}  SHAPE {list(a.shape)} != expected {list(b.shape)}")
            failed.append(name)
            continue
        diff = np.linalg.norm(a - b)
        norm = np.linalg.norm(b)
        rel = diff / norm if norm > 0 else (0.0 if diff == 0 else float("inf"))
        max_abs = float(np.max(np.abs(a - b))) if a.size else 0.0
        ok = bool(np.all(np.isfinite(a))) and diff <= args.rtol * norm + args.atol * np.sqrt(a.size)
        near_zero = norm <= args.atol * np.sqrt(a.size)
        if not ok:
            failed.append(name)
        elif not near_zero:
            worst = max(worst, rel)
        note = "  FAIL" if not ok else ("  (expected ~0: judged by atol)" if near_zero else "")
        print(f"{name:<{width}}  {str(list(b.shape)):<14} {rel:9.2e} {max_abs:9.2e}{note}")
    extra = sorted(set(out) - set(exp))
    if extra:
        print(f"only in {args.output} (not checked): {', '.join(extra)}")
    if failed:
        print(f"FAIL: {len(failed)} of {len(exp)} tensors (rtol {args.rtol:g}, atol {args.atol:g}): "
              f"{', '.join(failed)}")
        sys.exit(1)
    print(f"OK: {len(exp)} tensors within rtol {args.rtol:g} + atol {args.atol:g}; "
          f"worst relative error of a non-zero tensor {worst:.2e}")


if __name__ == "__main__":
    main()
