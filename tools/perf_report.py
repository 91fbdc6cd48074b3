#!/usr/bin/env python3
"""Writes the dated results section of docs/perf.md from JSON-lines result files (ours, from the Rust benches
with HOURGLASS_BENCH_JSON, and PyTorch's, from tools/bench_torch_step.py and tools/bench_torch_kernels.py), and
with `--sanitizer LOGDIR` the compute-sanitizer table of docs/gpu-validation.md. Standard library only.

    python3 tools/perf_report.py results.jsonl [more.jsonl ...] [--sanitizer LOGDIR]
            [--perf docs/perf.md] [--validation docs/gpu-validation.md] [--date YYYY-MM-DD] [--device NAME]

docs/perf.md keeps its fixed introduction down to the marker line; below it, one section per run, newest
first, headed `## <date> — <device>`. A section with the same heading is replaced, never duplicated. The
line format and every column: docs/perf.md. Lines of other devices than the section's are left out (listed).

The sanitizer logs (tools/gpu-validate.sh writes them): LOGDIR/runs.tsv (tool, binary, rc, seconds, limit per
run; rc 124 = timed out), LOGDIR/<tool>-<binary>.log (the run's output, libtest with --test-threads 1), or
LOGDIR/skipped.txt (why nothing ran). Each kernels/*.cu gets the memcheck and racecheck result of the tests that
exercised it: a sanitizer report naming a kernel function counts against the .cu file defining it, and a test
counts for the files its name points to (TEST_KERNELS below). The table goes under `### compute-sanitizer
<date>` in the `## compute-sanitizer` section of docs/gpu-validation.md (replaced on a re-run of that date).
"""
import argparse
import datetime
import glob
import json
import os
import re
import sys
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MARKER = "<!-- perf_report.py writes the sections below, newest first; do not edit them by hand -->"
NO_GPU_LINE = "No GPU run yet:"

# Dense bf16 tensor-core peak (no sparsity), FLOP/s, by device name (tools/bench_torch_step.py uses it too);
# None when unknown.
def peak_bf16_flops(name):
    n = (name or "").upper()
    if "H100" in n:
        if "PCIE" in n:
            return 756e12
        if "SXM" in n or "HBM3" in n:
            return 989.4e12
        return None
    if "H200" in n and "NVL" not in n:
        return 989.4e12
    if "A100" in n:
        return 312e12
    return None


# Row order of the step table: ours (by precision, and -device / -graph for steps issued without host round
# trips / replayed as a CUDA graph), then PyTorch's modes as tools/bench_torch_step.py runs them.
MODE_ORDER = ["f32", "f32-graph", "tf32", "bf16", "bf16-device", "bf16-graph", "eager-f32", "eager-bf16-flash", "eager-bf16-cudnn", "eager-bf16-efficient",
              "compile-default", "compile-reduce-overhead"]


def is_cpu(device):
    return (device or "").lower().startswith("cpu")


# --------------------------------------------------------------------------------------------------
# Reading results
# --------------------------------------------------------------------------------------------------


def load(paths):
    records = []
    for path in paths:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError as e:
                    print(f"perf_report: {path}:{n}: not JSON ({e}); skipped", file=sys.stderr)
                    continue
                if not isinstance(rec, dict) or "kind" not in rec:
                    print(f"perf_report: {path}:{n}: no \"kind\"; skipped", file=sys.stderr)
                    continue
                records.append(rec)
    return records


def dedupe(records, key):
    """The last record of each key, in first-seen order."""
    out = OrderedDict()
    for r in records:
        k = key(r)
        out.pop(k, None)
        out[k] = r
    return list(out.values())


def norm_shape(shape):
    if isinstance(shape, list):
        return "x".join(str(s) for s in shape)
    return " ".join(sorted(str(shape or "").replace(",", " ").lower().split()))


def num(x, digits=2, unit=""):
    if x is None:
        return "—"
    return f"{x:,.{digits}f}{unit}"


def ok(r):
    return r.get("status", "ok") == "ok"


def status_cell(r):
    if ok(r):
        return "ok"
    why = str(r.get("why") or "").replace("|", "\\|").replace("\n", " ")
    if len(why) > 160:
        why = why[:157] + "..."
    return f"{r.get('status')}: {why}"


# --------------------------------------------------------------------------------------------------
# The section
# --------------------------------------------------------------------------------------------------


def step_tables(steps, device):
    lines = []
    peak = peak_bf16_flops(device)
    configs = OrderedDict()
    for r in steps:
        configs.setdefault(r.get("config", "?"), []).append(r)
    for config, rows in configs.items():
        rows.sort(key=lambda r: (r.get("impl") != "hourglass",
                                 MODE_ORDER.index(r.get("mode")) if r.get("mode") in MODE_ORDER else len(MODE_ORDER)))
        ours = [r for r in rows if r.get("impl") == "hourglass" and ok(r) and r.get("tokens_per_s")]
        any_row = rows[0]
        fpt = {}
        for r in rows:
            if r.get("flops_per_token"):
                fpt.setdefault(r.get("impl"), r["flops_per_token"])
        fwd = next((r.get("flops_per_token_fwd") for r in rows if r.get("flops_per_token_fwd")), None)
        train = fpt.get("pytorch") or fpt.get("hourglass")
        if fwd is None and train:
            fwd = train / 3
        lines.append(f"**{config}**: seq_len {any_row.get('seq_len')} × batch {any_row.get('batch')}"
                     + (f" × accum {any_row['accum']}" if any_row.get("accum", 1) not in (1, None) else "")
                     + (f"; model FLOPs per token {fwd:,.0f} forward, {3 * fwd:,.0f} per training step"
                        if fwd else "")
                     + (f"; MFU against {peak / 1e12:,.1f} TFLOP/s dense bf16" if peak else
                        "; MFU: no peak known for this device"))
        lines.append("")
        if "hourglass" in fpt and "pytorch" in fpt:
            a, b = fpt["hourglass"], fpt["pytorch"]
            diff = abs(a - b) / max(abs(b), 1e-30)
            if diff > 0.01:
                lines.append(f"**Warning: FLOPs per token differ** between ours ({a:,.0f}) and PyTorch's ({b:,.0f}) "
                             f"by {100 * diff:.2f}%: one side counts differently (docs/perf.md), so TFLOP/s and "
                             f"MFU are not comparable.")
            else:
                lines.append(f"FLOPs per token: ours {a:,.0f}, PyTorch {b:,.0f} (agree within 1%).")
            lines.append("")
        head = ["impl", "mode", "status", "ms/step", "tokens/s", "TFLOP/s", "MFU", "peak mem (GiB)", "compile (s)"]
        head += [f"ours {o.get('mode')} ÷ this" for o in ours]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for r in rows:
            good = ok(r) and r.get("tokens_per_s")
            if r.get("mfu") is None and peak and r.get("tflops"):
                r["mfu"] = r["tflops"] * 1e12 / peak  # model FLOPs over the dense bf16 peak, as PyTorch's rows
            mem = r.get("peak_mem_bytes")
            cells = [r.get("impl", "?"), r.get("mode", "?"), status_cell(r),
                     num(r.get("ms")) if good else "—",
                     num(r.get("tokens_per_s"), 0) if good else "—",
                     num(r.get("tflops"), 3 if (r.get("tflops") or 0) < 1 else 1) if good else "—",
                     (num(100 * r["mfu"], 1, "%") if r.get("mfu") is not None else "—") if good else "—",
                     num(mem / 2 ** 30, 2) if good and mem else "—",
                     num(r.get("compile_s"), 1) if good else "—"]
            for o in ours:
                cells.append(f"{o['tokens_per_s'] / r['tokens_per_s']:.2f}×" if good and o is not r else "—")
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        lines.append("")
    return lines


def roofline_lookup(roofs):
    out = {}
    for r in roofs:
        if not ok(r):
            continue
        if r.get("gbps"):
            out[r["name"]] = r["gbps"]
        elif r.get("tflops"):
            out[r["name"]] = r["tflops"]
    return out


def roofline_table(roofs, device):
    lines = ["| roofline | measured | shape | of the spec peak |", "|---|---|---|---|"]
    peak = peak_bf16_flops(device)
    for r in roofs:
        if not ok(r):
            lines.append(f"| {r.get('name')} | {status_cell(r)} | | |")
            continue
        if r.get("gbps"):
            value = f"{r['gbps']:,.0f} GB/s"
        else:
            value = f"{r['tflops']:,.1f} TFLOP/s"
        spec = f"{100 * r['tflops'] * 1e12 / peak:.0f}% of {peak / 1e12:,.1f} TFLOP/s" \
            if r.get("name") == "gemm_bf16" and peak and r.get("tflops") else "—"
        lines.append(f"| {r.get('name')} | {value} | {norm_shape(r.get('shape'))} | {spec} |")
    lines.append("")
    return lines


def fraction(r, roofs):
    """(fraction, roofline name) of a kernel line: GB/s over copy_d2d, TFLOP/s over its precision's gemm."""
    if r.get("gbps") is not None and roofs.get("copy_d2d"):
        return r["gbps"] / roofs["copy_d2d"], "copy"
    if r.get("tflops") is not None:
        name = "gemm_bf16" if str(r.get("variant", "")).startswith(("bf16", "fp16", "f16")) else "gemm_f32"
        if roofs.get(name):
            return r["tflops"] / roofs[name], name
    return None, None


def kernel_tables(kernels, roofs):
    lines = []
    ops = OrderedDict()
    for r in kernels:
        ops.setdefault(r.get("op", "?"), []).append(r)
    for op, rows in ops.items():
        ours_variants = list(OrderedDict.fromkeys(r.get("variant") for r in rows
                                                  if r.get("impl") == "hourglass" and ok(r) and r.get("ms")))
        shapes = list(OrderedDict.fromkeys(norm_shape(r.get("shape")) for r in rows))
        lines.append(f"**{op}**")
        lines.append("")
        head = ["shape", "impl", "variant", "ms", "TFLOP/s", "GB/s", "of roofline"]
        head += [f"ours {v}: speed-up" for v in ours_variants]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for shape in shapes:
            group = [r for r in rows if norm_shape(r.get("shape")) == shape]
            group.sort(key=lambda r: (r.get("impl") != "hourglass", str(r.get("variant"))))
            ours = {r.get("variant"): r for r in group if r.get("impl") == "hourglass" and ok(r) and r.get("ms")}
            for r in group:
                label = str(r.get("shape"))
                if r.get("name"):
                    label = f"{r['name']}: {label}"
                if not ok(r):
                    cells = [label, r.get("impl"), r.get("variant"), status_cell(r), "", "", ""]
                    cells += ["—"] * len(ours_variants)
                else:
                    frac, roof = fraction(r, roofs)
                    cells = [label, r.get("impl"), r.get("variant"), num(r.get("ms"), 4),
                             num(r.get("tflops"), 2),
                             num(r.get("gbps"), 0 if (r.get("gbps") or 0) >= 100 else 1),
                             f"{100 * frac:.0f}% {roof}" if frac is not None else "—"]
                    for v in ours_variants:
                        o = ours.get(v)
                        # > 1: ours is faster than this row (its time over ours).
                        cells.append(f"{r['ms'] / o['ms']:.2f}×" if o and o is not r and r.get("ms") else "—")
                lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        lines.append("")
    return lines


def build_section(records, date, device, sources, others):
    heading = f"## {date} — {device}"
    if is_cpu(device):
        heading += " (CPU smoke run of the tools: not GPU numbers)"
    lines = [heading, ""]
    if is_cpu(device):
        lines += ["_Written from a CPU run of the benchmark tools on tiny shapes, to show the format; none of these "
                  "numbers says anything about a GPU._", ""]
    torch_versions = sorted({r.get("torch") for r in records if r.get("torch")})
    lines.append(f"Generated by `tools/perf_report.py` from {', '.join(f'`{s}`' for s in sources)}"
                 + (f"; PyTorch {', '.join(torch_versions)}" if torch_versions else "") + ".")
    if others:
        lines.append(f"Left out: {len(others)} line(s) of other devices ({', '.join(sorted(others))}).")
    lines.append("")
    steps = dedupe([r for r in records if r["kind"] == "step"],
                   lambda r: (r.get("impl"), r.get("mode"), r.get("config"), r.get("seq_len"), r.get("batch")))
    roofs = dedupe([r for r in records if r["kind"] == "roofline"], lambda r: r.get("name"))
    kernels = dedupe([r for r in records if r["kind"] == "kernel"],
                     lambda r: (r.get("impl"), r.get("op"), r.get("variant"), norm_shape(r.get("shape")),
                                r.get("name")))
    lines += ["### Whole training step", ""]
    lines += step_tables(steps, device) if steps else ["No step results.", ""]
    lines += ["### Rooflines", ""]
    lines += roofline_table(roofs, device) if roofs else ["No roofline results.", ""]
    lines += ["### Kernels", ""]
    lines += kernel_tables(kernels, roofline_lookup(roofs)) if kernels else ["No kernel results.", ""]
    return heading, "\n".join(lines).rstrip() + "\n"


PERF_STUB = f"""# Performance

Written by `tools/perf_report.py` (see its docstring); the introduction was missing.

{MARKER}
"""


def update_sections(text, marker, heading, body, level="## "):
    """text with `body` as the section `heading`, first after the marker line, in place of any section of the
    same heading. Sections are delimited by lines starting with `level`; what precedes the marker is kept."""
    if marker not in text:
        text = text.rstrip("\n") + "\n\n" + marker + "\n"
    head, tail = text.split(marker, 1)
    preamble, sections = [], []
    for line in tail.splitlines(keepends=True):
        if line.startswith(level):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            preamble.append(line)
    parts = ["".join(preamble), body] + ["".join(s) for s in sections if s[0].rstrip("\n") != heading]
    parts = [p.strip("\n") for p in parts if p.strip()]
    return head + marker + "\n\n" + "\n\n".join(parts) + "\n"


def write_perf(path, heading, body, device):
    text = open(path).read() if os.path.exists(path) else PERF_STUB
    if not is_cpu(device):
        # A GPU section now exists: the introduction's "no GPU run yet" line is no longer true.
        text = "".join(line for line in text.splitlines(keepends=True) if not line.startswith(NO_GPU_LINE))
    text = update_sections(text, MARKER, heading, body)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


# --------------------------------------------------------------------------------------------------
# compute-sanitizer
# --------------------------------------------------------------------------------------------------

# Test-name keywords (matched against "<binary>::<test>", binary without its hash) -> the kernels/*.cu files
# such a test exercises. A test matching none is listed as exercising no named kernel.
MODEL_KERNELS = ["attention.cu", "layernorm.cu", "shorten.cu", "upsample.cu", "elementwise.cu"]
TEST_KERNELS = [
    (r"gpu_attention::|attention", ["attention.cu"]),
    (r"layernorm", ["layernorm.cu"]),
    (r"shorten", ["shorten.cu"]),
    (r"upsample", ["upsample.cu"]),
    (r"fold|window_fold", ["window.cu"]),
    (r"embedding", ["embedding.cu"]),
    (r"softmax|cross_entropy|xent|loss", ["loss.cu"]),
    (r"adamw", ["adamw.cu"]),
    (r"sum_squares|clip_grad|grad_norm", ["reduce.cu"]),
    (r"scale|clip_grad|add_and|add_assign|dropout|relu|linear|bias", ["elementwise.cu"]),
    (r"rotary", ["rotary.cu"]),
    (r"lm_training_step|training_step|whole_model|models_match|model_is", MODEL_KERNELS
     + ["embedding.cu", "loss.cu"]),
]
SANITIZER_BINARIES = ["gpu_ops", "gpu_attention", "gpu_lm_ops", "gpu_train_ops", "gpu_rotary"]


def test_kernels(binary, test):
    full = f"{binary}::{test}"
    files = []
    for pattern, names in TEST_KERNELS:
        if re.search(pattern, full):
            files += [n for n in names if n not in files]
    if binary == "gpu_attention":  # the mask tests name masks, not attention ("dropout_masks" is gpu_ops')
        files = ["attention.cu"]
    return files


def kernel_functions(kernel_dir):
    """[(regex, file)] matching the name of every __global__ function of kernels/*.cu (macro-pasted names such as
    attention_fwd_d##D##_f32 become attention_fwd_d\\w+_f32), and each file's stem (a device function such as
    `attention_fwd<64, ...>` inside a kernel of attention.cu)."""
    out = []
    for path in sorted(glob.glob(os.path.join(kernel_dir, "*.cu"))):
        name = os.path.basename(path)
        with open(path, errors="replace") as f:
            src = f.read()
        for m in re.finditer(r"__global__\s+(?:void\s+)?(?:__launch_bounds__\s*\([^)]*\)\s*)?(?:void\s+)?"
                             r"(?:\\\s*)?([\w#]+)\s*\(", src):
            pattern = re.sub(r"##\w+?##|##\w+$", lambda _: "\\w+", m.group(1))
            out.append((re.compile(pattern + r"$"), name))
        out.append((re.compile(re.escape(name[:-3]) + r"(_\w*)?$"), name))
    return out


def kernel_file(identifier, functions):
    for pattern, name in functions:
        if pattern.match(identifier):
            return name
    return None


SAN_ERROR = re.compile(r"^=========\s+(Invalid|Out-of-range|Misaligned|Malformed|Error|Warning|Race|Barrier|"
                       r"Uninitialized|Leaked|Program hit|Cuda|CUDA|Host API)", re.I)


def parse_sanitizer_log(path, functions):
    """{"tests": {name: {"status", "errors": [msg], "kernels": set of files}}, "summary": str|None,
    "outside": [msg]} of one compute-sanitizer log (libtest's pretty output, one test at a time)."""
    tests = OrderedDict()
    cur = None
    outside = []
    summary = None
    in_report = False
    with open(path, errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            m = re.match(r"^test (\S+) \.\.\. ?(.*)$", line)
            if m:
                cur = m.group(1)
                tests[cur] = {"status": "started", "errors": [], "kernels": set()}
                in_report = False
                line = m.group(2)
            if cur is not None and tests[cur]["status"] == "started":
                word = line.strip()
                if word in ("ok", "FAILED", "ignored"):
                    tests[cur]["status"] = word
                    continue
                tail = re.search(r"(?:^|\s)(ok|FAILED)$", line)
                if tail and "=========" not in line:
                    tests[cur]["status"] = tail.group(1)
            if "=========" not in line:
                continue
            line = line[line.index("========="):]
            if re.search(r"(ERROR|RACECHECK|LEAK) SUMMARY", line):
                summary = line.split("=========", 1)[1].strip()
                in_report = False
                continue
            if SAN_ERROR.search(line):
                msg = line.split("=========", 1)[1].strip()
                owner = tests[cur] if cur is not None and tests[cur]["status"] == "started" else None
                (owner["errors"] if owner else outside).append(msg)
                in_report = owner is not None
            elif not line[len("========="):].strip():
                in_report = False
            if in_report and "Host Frame" not in line:
                for ident in re.findall(r"[A-Za-z_]\w*", line):
                    k = kernel_file(ident, functions)
                    if k:
                        tests[cur]["kernels"].add(k)
                        break
    return {"tests": tests, "summary": summary, "outside": outside}


def sanitizer_section(logdir, date, device, kernel_dir):
    kernels = sorted(os.path.basename(p) for p in glob.glob(os.path.join(kernel_dir, "*.cu")))
    functions = kernel_functions(kernel_dir)
    heading = f"### compute-sanitizer {date}"
    lines = [heading, ""]
    skipped = os.path.join(logdir, "skipped.txt")
    if os.path.exists(skipped) or not os.path.isdir(logdir):
        why = open(skipped).read().strip() if os.path.exists(skipped) else f"no log folder {logdir}"
        lines += [f"Device: {device}. Not run ({why}); every kernel below is **not run**.", "",
                  "| kernel | memcheck | racecheck | tests |", "|---|---|---|---|"]
        lines += [f"| {k} | not run | not run | — |" for k in kernels]
        return heading, "\n".join(lines) + "\n"
    runs = []
    tsv = os.path.join(logdir, "runs.tsv")
    if os.path.exists(tsv):
        for row in open(tsv):
            parts = row.rstrip("\n").split("\t")
            if len(parts) >= 5 and parts[0] in ("memcheck", "racecheck"):
                runs.append(dict(tool=parts[0], binary=parts[1], rc=parts[2], seconds=parts[3], limit=parts[4]))
    for log in sorted(glob.glob(os.path.join(logdir, "*.log"))):
        tool, _, binary = os.path.basename(log)[:-4].partition("-")
        if tool in ("memcheck", "racecheck") and not any(r["tool"] == tool and r["binary"] == binary for r in runs):
            runs.append(dict(tool=tool, binary=binary, rc="?", seconds="?", limit="?"))
    # per (tool, kernel file): errors, tests clean, tests incomplete
    result = {(t, k): {"errors": [], "clean": [], "failed": [], "incomplete": []} for t in ("memcheck", "racecheck")
              for k in kernels}
    exercised = {k: [] for k in kernels}
    run_lines = []
    for run in runs:
        log = os.path.join(logdir, f"{run['tool']}-{run['binary']}.log")
        if run["rc"] == "not run":
            run_lines.append(f"| {run['tool']} | {run['binary']} | not run (no time left) | | |")
            continue
        if not os.path.exists(log):
            run_lines.append(f"| {run['tool']} | {run['binary']} | no log | | |")
            continue
        parsed = parse_sanitizer_log(log, functions)
        timed_out = run["rc"] in ("124", "137")
        n_err = sum(len(t["errors"]) for t in parsed["tests"].values()) + len(parsed["outside"])
        done = sum(t["status"] in ("ok", "FAILED") for t in parsed["tests"].values())
        run_lines.append(f"| {run['tool']} | {run['binary']} | "
                         f"{'timed out' if timed_out else 'rc ' + run['rc']} ({run['seconds']} s of {run['limit']}) | "
                         f"{done} finished, {len(parsed['tests']) - done} cut off | "
                         f"{n_err} reported; {parsed['summary'] or 'no summary (cut off)'} |")
        for test, t in parsed["tests"].items():
            files = set(test_kernels(run["binary"], test)) | t["kernels"]
            for k in files:
                if k not in exercised:
                    continue
                if f"{run['binary']}::{test}" not in exercised[k]:
                    exercised[k].append(f"{run['binary']}::{test}")
                slot = result[(run["tool"], k)]
                if t["errors"] and (not t["kernels"] or k in t["kernels"]):
                    slot["errors"].append((test, t["errors"][0], len(t["errors"])))
                elif t["status"] == "ok":
                    slot["clean"].append(test)
                elif t["status"] == "FAILED":
                    slot["failed"].append(test)
                else:
                    slot["incomplete"].append(test)

    def cell(tool, k):
        s = result[(tool, k)]
        if s["errors"]:
            n = sum(c for _, _, c in s["errors"])
            test, first, _ = s["errors"][0]
            return f"**{n} reported** ({test}: {first[:120].replace('|', '/')})"
        if s["clean"]:
            extra = f"; test failed: {', '.join(s['failed'])}" if s["failed"] else ""
            extra += f"; cut off: {', '.join(s['incomplete'])}" if s["incomplete"] else ""
            n = len(set(s["clean"]))
            return f"clean ({n} test{'s' if n != 1 else ''}{extra})"
        if s["failed"]:
            return f"test failed, no report: {', '.join(s['failed'])}"
        if s["incomplete"]:
            return f"incomplete (cut off in {', '.join(s['incomplete'])})"
        return "not run"

    lines += [f"Device: {device}. `compute-sanitizer --tool memcheck` and `--tool racecheck` on the GPU op test "
              f"binaries (`--include-ignored --test-threads 1`), written by `tools/perf_report.py --sanitizer` "
              f"from `tools/gpu-validate.sh`'s logs. A report naming a kernel function counts against its file; "
              f"otherwise a test counts for the files its name points to.", "",
              "| kernel | memcheck | racecheck | tests that exercised it |", "|---|---|---|---|"]
    for k in kernels:
        tests = ", ".join(f"`{t}`" for t in exercised[k]) or "—"
        lines.append(f"| {k} | {cell('memcheck', k)} | {cell('racecheck', k)} | {tests} |")
    lines += ["", "| tool | binary | result | tests | sanitizer |", "|---|---|---|---|---|"] + run_lines
    return heading, "\n".join(lines) + "\n"


SAN_SECTION = "## compute-sanitizer"
SAN_MARKER = "<!-- perf_report.py --sanitizer writes the dated tables below, newest first -->"


def write_validation(path, heading, body):
    text = open(path).read() if os.path.exists(path) else "# GPU validation\n"
    if SAN_MARKER not in text:
        block = f"{SAN_SECTION}\n\n{SAN_MARKER}\n"
        m = re.search(r"^## \d{4}-\d{2}-\d{2}", text, re.M)
        if m:
            text = text[:m.start()] + block + "\n" + text[m.start():]
        else:
            text = text.rstrip("\n") + "\n\n" + block
    head, rest = text.split(SAN_MARKER, 1)
    # The sanitizer part ends at the next level-2 heading.
    m = re.search(r"^## ", rest, re.M)
    part, after = (rest[:m.start()], rest[m.start():]) if m else (rest, "")
    part = update_sections(SAN_MARKER + part, SAN_MARKER, heading, body, level="### ")
    text = head + part.rstrip("\n") + "\n" + ("\n" + after if after else "")
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


# --------------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="*", help="JSON-lines result files")
    parser.add_argument("--sanitizer", metavar="LOGDIR", help="compute-sanitizer logs of tools/gpu-validate.sh")
    parser.add_argument("--perf", default=os.path.join(ROOT, "docs", "perf.md"))
    parser.add_argument("--validation", default=os.path.join(ROOT, "docs", "gpu-validation.md"))
    parser.add_argument("--kernels", default=os.path.join(ROOT, "kernels"), help="folder of the .cu files")
    parser.add_argument("--date", help="section date (default: the newest date in the results, else today)")
    parser.add_argument("--device", help="section device (default: the device of most result lines)")
    args = parser.parse_args()
    if not args.results and not args.sanitizer:
        parser.error("give result files and/or --sanitizer LOGDIR")
    records = load(args.results)
    device = args.device or None
    if device is None:
        counts = OrderedDict()
        for r in records:
            counts[r.get("device")] = counts.get(r.get("device"), 0) + 1
        device = max(counts, key=counts.get) if counts else "unknown device"
    mine = [r for r in records if r.get("device") == device]
    others = {str(r.get("device")) for r in records if r.get("device") != device}
    date = args.date or max((r.get("date") for r in mine if r.get("date")), default=None) \
        or datetime.date.today().isoformat()
    status = 0
    if args.results:
        if not mine:
            print(f"perf_report: no result lines for device {device!r}", file=sys.stderr)
            status = 1
        else:
            heading, body = build_section(mine, date, device, [os.path.basename(p) for p in args.results], others)
            write_perf(args.perf, heading, body, device)
            print(f"perf_report: wrote {heading!r} ({len(mine)} lines) into {args.perf}")
    if args.sanitizer:
        heading, body = sanitizer_section(args.sanitizer, date, device, args.kernels)
        write_validation(args.validation, heading, body)
        print(f"perf_report: wrote {heading!r} into {args.validation}")
    return status


if __name__ == "__main__":
    sys.exit(main())
