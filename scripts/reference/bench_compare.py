"""Side-by-side benchmark of the engine and its peers (`make bench-compare`).

Runs, in rounds so that each pair is measured within the same minute:
the engine's bench example (teacher-forced f32 scoring at 512 and 2048
tokens, single-stream Q4_1 decode, a group of 16) next to PyTorch
(bench_torch.py, same GGUF dequantized to f32) and llama.cpp
(bench_llama_cpp.py, same Q4_1 GGUF), keeps the best of the rounds for
each number, and prints the ratios against the targets of issue 3.

  data/venv/bin/python scripts/reference/bench_compare.py --engine target/release/examples/bench

Both peers and the engine use RAYON_NUM_THREADS threads (default: all
cores). The machine should be otherwise idle: PyTorch's and llama.cpp's
thread pools spin-wait, so they lose far more than the engine to a busy
neighbour, which would flatter the ratios.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def json_lines(cmd, env=None):
    """Runs `cmd` and returns its stdout lines that parse as JSON objects."""
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    rows = []
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def best(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", required=True, help="path of the engine's bench example binary")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lens", default="512,2048")
    args = ap.parse_args()
    lens = [int(x) for x in args.lens.split(",")]
    # The targets are for a group of 16 whatever the caller's environment says.
    env = dict(os.environ, RLT_BENCH_LENS=args.lens, RLT_BENCH_GROUP="16")
    py = sys.executable

    eng_score = {n: [] for n in lens}
    eng_gflops = {n: [] for n in lens}
    eng_pct = {n: [] for n in lens}
    torch_score = {n: [] for n in lens}
    eng_rss, torch_rss = [], []
    eng_single, eng_group, llama = [], [], []
    machine = {}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}: scoring (engine, PyTorch)", file=sys.stderr, flush=True)
        for row in json_lines([args.engine, "score"], env):
            if row.get("bench") == "machine":
                machine = row
            elif row.get("bench") == "score_f32":
                eng_score[row["tokens"]].append(row["tokens_per_s"])
                eng_gflops[row["tokens"]].append(row["gflops"])
                eng_pct[row["tokens"]].append(row["pct_of_peak"])
            elif row.get("bench") == "score_peak_rss":
                eng_rss.append(row["mib"])
        for row in json_lines([py, os.path.join(HERE, "bench_torch.py")], env):
            if "torch_score_f32_tokens" in row:
                torch_score[row["torch_score_f32_tokens"]].append(row["tokens_per_s"])
            elif "torch_peak_rss_mib" in row:
                torch_rss.append(row["torch_peak_rss_mib"])
        print(f"round {r + 1}/{args.rounds}: decoding (engine, llama.cpp, engine group of 16)", file=sys.stderr, flush=True)
        for row in json_lines([args.engine, "decode-q4"], env):
            if row.get("bench") == "decode":
                eng_single.append(row["tokens_per_s"])
        for row in json_lines([py, os.path.join(HERE, "bench_llama_cpp.py")], env):
            if "llama_cpp_decode_tokens" in row:
                llama.append(row["tokens_per_s"])
        for row in json_lines([args.engine, "group-q4"], env):
            if row.get("bench") == "decode":
                eng_group.append(row["tokens_per_s"])

    rows = []

    def add(metric, engine, peer, peer_name, ratio, target, ok):
        rows.append((metric, engine, f"{peer} ({peer_name})", ratio, target, "met" if ok else "NOT met"))

    for n in lens:
        e, t = best(eng_score[n]), best(torch_score[n])
        if e and t:
            g, p = best(eng_gflops[n]), best(eng_pct[n])
            add(f"scoring f32, {n} tokens (tok/s)", f"{e:.0f} [{g:.0f} GFLOP/s, {p:.0f}% of peak]", f"{t:.0f}", "PyTorch",
                f"{e / t:.2f}x", ">= 1.2x", e / t >= 1.2)
    e, t = best(eng_single), best(llama)
    if e and t:
        add("single-stream decode, Q4_1 (tok/s)", f"{e:.0f}", f"{t:.0f}", "llama.cpp", f"{e / t:.2f}x", ">= 0.8x", e / t >= 0.8)
    g, s = best(eng_group), best(eng_single)
    if g and s:
        add("group of 16, Q4_1, aggregate (tok/s)", f"{g:.0f}", f"{s:.0f}", "engine single-stream", f"{g / s:.2f}x",
            ">= 4x", g / s >= 4)
    e = min(eng_rss) if eng_rss else None
    t = min(torch_rss) if torch_rss else None
    if e and t:
        add("peak RSS while scoring (MiB)", f"{e:.0f}", f"{t:.0f}", "PyTorch", f"{e / t:.2f}x", "<= 1x", e <= t)

    print()
    print(f"CPU: {machine.get('cpu', '?')}, {machine.get('threads', '?')} threads, "
          f"f32 peak {machine.get('f32_peak_gflops', '?')} GFLOP/s at the measured {machine.get('measured_ghz', '?')} GHz "
          f"({machine.get('f32_peak_gflops_base_clock', '?')} at the base {machine.get('base_ghz', '?')} GHz); "
          f"best of {args.rounds} rounds")
    head = ("metric", "engine", "peer", "ratio", "target", "")
    widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
    for row in [head] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


if __name__ == "__main__":
    main()
