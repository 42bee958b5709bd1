"""llama.cpp baseline for the engine bench: single-stream decode tokens/s
on the same Q4_1 GGUF, through llama-cpp-python. Prints a JSON line like
engine/examples/bench.rs.
  data/venv/bin/pip install llama-cpp-python
  data/venv/bin/python scripts/reference/bench_llama_cpp.py
"""

import json
import os
import time

from llama_cpp import Llama

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.environ.get("RLT_DATA_DIR", os.path.join(ROOT, "data"))
PROMPT = "<|im_start|>user\nWrite a long story about a robot.<|im_end|>\n<|im_start|>assistant\n"


def main():
    threads = int(os.environ.get("RAYON_NUM_THREADS", os.cpu_count() or 1))
    llm = Llama(
        model_path=os.path.join(DATA, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        n_ctx=2048,
        n_threads=threads,
        n_threads_batch=threads,
        seed=1,
        verbose=False,
    )
    tokens = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
    llm.eval(tokens)
    # Decode only, like the engine bench: time 128 sampled tokens after the prefill.
    n = 128
    t = time.perf_counter()
    for _ in range(n):
        tok = llm.sample(temp=0.7)
        llm.eval([tok])
    s = time.perf_counter() - t
    print(json.dumps({"llama_cpp_decode_tokens": n, "threads": threads, "tokens_per_s": round(n / s, 1)}))


if __name__ == "__main__":
    main()
