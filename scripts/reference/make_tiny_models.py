"""Generate tiny random Hugging Face model directories and their logits.

The SmolLM2 GGUF exercises one point of the decoder's configuration space
(Llama, tied embeddings, no biases, no RoPE scaling). Teachers that users
bring as Hugging Face directories (Qwen2.5, Llama 3.x) use the rest, so this
writes two small models with random weights, saved by transformers'
`save_pretrained`, and the f32 logits transformers computes with them:

  tests/fixtures/tiny_models/qwen2/   Qwen2: q/k/v biases, untied lm_head,
                                      rope_theta 1e6, 4 query heads on 2
                                      key/value heads, bf16 weights (as the
                                      released Qwen2.5 checkpoints), a
                                      vocabulary that is not a multiple of 16
  tests/fixtures/tiny_models/llama/   Llama: Llama 3 RoPE scaling with a small
                                      original context (so most frequencies
                                      are scaled), head_dim 24 given
                                      explicitly (not hidden/heads), 4 query
                                      heads on one key/value head,
                                      attention_bias (q/k/v *and* o biases in
                                      transformers' Llama), untied lm_head
  tests/fixtures/tiny_models/reference.json
                                      per model and token sequence, at every
                                      position: argmax, max, logsumexp, the
                                      logits of a few probe ids, and the
                                      log-prob of the next token at τ=1 and
                                      τ=0.7

Each directory also holds a byte-level BPE `tokenizer.json` (256 byte tokens
and the ChatML specials) and a `tokenizer_config.json` with a chat template,
and the reference records the ids transformers' tokenizer gives for a few
texts. transformers 5 writes the RoPE settings as `rope_parameters`; the
engine's test also rewrites them into the older `rope_theta`/`rope_scaling`
form of transformers 4 and expects the same logits.

Weights are drawn with larger spreads than transformers' initialisation
(0.02), and norms and biases are random too, so every part moves the logits
by much more than the 1e-3 the test allows.

Run once (seeded, reproducible), with the venv of scripts/reference/README.md:
  data/venv/bin/python scripts/reference/make_tiny_models.py
"""

import json
import os
import shutil

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "tiny_models")

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TEXTS = ["Hello, world!", "x^2 + 1 = 10\n\n  é ü 漢字", "<|im_start|>user\nHi<|im_end|>\n"]


def byte_level_tokenizer():
    """256 byte tokens in byte order, no merges, then the ChatML specials
    (ids 256 and 257)."""
    # GPT-2's byte-to-character table, which ByteLevel pre-tokenizes into.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    char_of = {b: chr(b) if b in printable else chr(next(extra)) for b in range(256)}
    assert set(char_of.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={char_of[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    return tok


def randomise(model, generator, weight_std):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=generator))
            elif name.endswith(".bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(weight_std * torch.randn(p.shape, generator=generator))


def summarise(logits, ids, probe_ids):
    positions = []
    for p in range(len(ids)):
        row = logits[p]
        entry = {
            "argmax": int(row.argmax()),
            "max": float(row.max()),
            "logsumexp": float(torch.logsumexp(row.double(), 0)),
            "probe": [float(row[i]) for i in probe_ids],
        }
        if p + 1 < len(ids):
            nxt = ids[p + 1]
            entry["next_logprob"] = float(torch.log_softmax(row.double(), 0)[nxt])
            entry["next_logprob_t07"] = float(torch.log_softmax(row.double() / 0.7, 0)[nxt])
        positions.append(entry)
    return positions


def build(name, config, cls, dtype, seed, weight_std):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = cls(config).to(torch.float32).eval()
    randomise(model, generator, weight_std)
    model = model.to(dtype)
    out = os.path.join(OUT, name)
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out, safe_serialization=True)
    # Generation defaults are not part of what the engine reads.
    for extra in ("generation_config.json",):
        path = os.path.join(out, extra)
        if os.path.exists(path):
            os.remove(path)

    tok = byte_level_tokenizer()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", chat_template=CHAT_TEMPLATE
    )
    fast.save_pretrained(out)
    for extra in ("special_tokens_map.json",):
        path = os.path.join(out, extra)
        if os.path.exists(path):
            os.remove(path)

    # The reference runs in f32 on the saved weights, loaded as users load
    # them (casting the bf16 model back would also keep RoPE's inverse
    # frequencies rounded to bf16, which a loaded model does not have).
    model = cls.from_pretrained(out, dtype=torch.float32).eval()
    vocab = config.vocab_size
    gen = torch.Generator().manual_seed(seed + 1)
    sequences = {
        "short": torch.randint(0, vocab, (17,), generator=gen).tolist(),
        "long": torch.randint(0, vocab, (150,), generator=gen).tolist(),
    }
    probe_ids = sorted({0, 1, 7, 100, 255, 256, 257, vocab - 1})
    record = {"probe_ids": probe_ids, "sequences": [], "tokenizer": []}
    with torch.no_grad():
        for seq_name, ids in sequences.items():
            logits = model(torch.tensor([ids])).logits[0].float()
            record["sequences"].append({"name": seq_name, "ids": ids, "positions": summarise(logits, ids, probe_ids)})
    for text in TEXTS:
        ids = fast(text, add_special_tokens=False)["input_ids"]
        record["tokenizer"].append({"text": text, "ids": ids})
    record["chat"] = fast.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    spread = statistics(model, sequences["long"])
    print(f"{name}: logits std {spread:.2f}")
    return record


def statistics(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    return float(logits.std())


def main():
    os.makedirs(OUT, exist_ok=True)
    qwen2 = Qwen2Config(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    llama = LlamaConfig(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=24,
        rope_theta=500_000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
        rms_norm_eps=1e-5,
        max_position_embeddings=512,
        attention_bias=True,
        tie_word_embeddings=False,
    )
    reference = {
        "qwen2": build("qwen2", qwen2, Qwen2ForCausalLM, torch.bfloat16, 11, 0.25),
        "llama": build("llama", llama, LlamaForCausalLM, torch.float32, 23, 0.25),
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(reference, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
