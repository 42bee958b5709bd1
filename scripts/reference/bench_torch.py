"""PyTorch f32 baseline for the engine bench: teacher-forced scoring of the
same GGUF (dequantized by transformers) at 512 and 2048 tokens (or
RLT_BENCH_LENS), and peak RSS. Prints JSON lines like engine/examples/bench.rs.
  data/venv/bin/python scripts/reference/bench_torch.py
"""

import json
import os
import resource
import time

import torch
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.environ.get("RLT_DATA_DIR", os.path.join(ROOT, "data"))


def tokens(n, salt):
    # Same pseudo-text ids as engine/examples/bench.rs.
    return [20 + (((i * 2654435761 + salt) & 0xFFFFFFFF) >> 7) % 40000 for i in range(n)]


def main():
    # RAYON_NUM_THREADS, as for the engine, so both use the same cores.
    torch.set_num_threads(int(os.environ.get("RAYON_NUM_THREADS", os.cpu_count() or 1)))
    model = AutoModelForCausalLM.from_pretrained(
        os.path.join(DATA, "models"), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32
    )
    model.eval()
    lens = [int(x) for x in os.environ.get("RLT_BENCH_LENS", "512,2048").split(",") if x.strip()]
    for n in lens:
        ids = torch.tensor([tokens(n, 1)])
        with torch.no_grad():
            model(ids[:, :64])
            # Best of a few runs, like the engine's bench.
            reps = 3 if n <= 512 else 2
            s = float("inf")
            for _ in range(reps):
                t = time.perf_counter()
                logits = model(ids).logits
                torch.log_softmax(logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])
                s = min(s, time.perf_counter() - t)
        print(json.dumps({"torch_score_f32_tokens": n, "seconds": round(s, 3), "tokens_per_s": round(n / s, 1)}))
    print(json.dumps({"torch_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
