"""Check the engine's Qwen2 and Llama 3 pre-tokenizers against llama.cpp.

A Qwen2.5 or Llama 3 GGUF (the teachers of the RLT paper, and the likely
next students) is tokenized with the regex its `tokenizer.ggml.pre` names,
which llama.cpp implements by hand and the engine hands to the `tokenizers`
crate. The SmolLM2 fixtures never exercise those two. This writes, under
tests/fixtures/:

  tokenizer_qwen2.gguf, tokenizer_llama-bpe.gguf
      vocabulary-only GGUFs (no tensors) with the same byte-level BPE, 1,500
      tokens trained with `tokenizers` on CHAMP's problems and solutions plus
      the stress pieces of make_fuzz_fixtures.py (so digit runs, whitespace
      runs, contractions and punctuation have merges that only apply when
      the pre-tokenizer splits the text the same way), and the ChatML special
      tokens; only `tokenizer.ggml.pre` differs
  pretokenizer_cases.jsonl
      per pre-tokenizer, 300 seeded random texts (stress pieces with special
      tokens, random code points from many scripts, and excerpts of CHAMP
      cut at random places) with llama.cpp's ids

Run once (seeded, reproducible), with the venv of scripts/reference/README.md:
  data/venv/bin/python scripts/reference/make_pretokenizer_fixtures.py
"""

import json
import os
import random

import gguf
import llama_cpp
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from make_fuzz_fixtures import random_text

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.environ.get("RLT_DATA_DIR", os.path.join(ROOT, "data"))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CASES_EACH = 100


def champ_texts():
    with open(os.path.join(DATA, "datasets", "champ", "v0.json"), encoding="utf-8") as f:
        champ = json.load(f)
    texts = []

    def walk(x):
        if isinstance(x, str):
            texts.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(champ)
    return texts


def corpus():
    rng = random.Random(7)
    return champ_texts() + [random_text(rng, special=True) for _ in range(3000)]


def train():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1500,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return tokens, merges


def write_vocab_gguf(path, pre, tokens, merges):
    w = gguf.GGUFWriter(path, "qwen2" if pre == "qwen2" else "llama")
    arch = "qwen2" if pre == "qwen2" else "llama"
    # Hyperparameters llama.cpp reads even for a vocabulary-only load.
    for key, value in [("context_length", 512), ("embedding_length", 64), ("block_count", 1),
                       ("feed_forward_length", 128), ("attention.head_count", 4)]:
        w.add_uint32(f"{arch}.{key}", value)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    tokens, merges = train()
    excerpts = [t for t in champ_texts() if len(t) > 40]
    rng = random.Random(20261126)
    out_path = os.path.join(FIXTURES, "pretokenizer_cases.jsonl")
    with open(out_path, "w", encoding="utf-8") as out:
        for pre in ("qwen2", "llama-bpe"):
            path = os.path.join(FIXTURES, f"tokenizer_{pre}.gguf")
            write_vocab_gguf(path, pre, tokens, merges)
            vocab = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
            for i in range(3 * CASES_EACH):
                special = i < CASES_EACH
                if i < 2 * CASES_EACH:
                    text = random_text(rng, special)
                else:
                    source = rng.choice(excerpts)
                    start = rng.randrange(len(source) - 20)
                    text = source[start : start + rng.randint(20, 200)]
                ids = vocab.tokenize(text.encode("utf-8"), add_bos=False, special=special)
                out.write(json.dumps({"pre": pre, "text": text, "special": special, "ids": ids}) + "\n")
    print(f"{len(tokens)} tokens, {len(merges)} merges; wrote {out_path}")


if __name__ == "__main__":
    main()
