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
  tests/fixtures/tiny_models/{qwen2,llama}.gguf
                                      the same models in the layout llama.cpp
                                      reads, with its converter's tensor
                                      names: the Llama's q/k rows (and
                                      biases) permuted for interleaved RoPE
                                      and its Llama 3 scaling as a
                                      `rope_freqs` tensor of per-frequency
                                      divisors, the Qwen2's matrices in bf16,
                                      a byte-level BPE vocabulary with one
                                      merge; llama.cpp's logits on them are
                                      checked against transformers' before
                                      anything is written, so the engine's
                                      GGUF path can be held to transformers'
                                      numbers
  tests/fixtures/tiny_models/{qwen2-yarn,llama-linear}.gguf
                                      the same weights with YaRN (as
                                      Qwen2.5's model card adds it) and
                                      linear RoPE scaling in llama.cpp's
                                      `rope.scaling` keys, checked the same
                                      way
  tests/fixtures/tiny_models/reference.json
                                      per model and token sequence, at every
                                      position: argmax, max, logsumexp, the
                                      logits of a few probe ids, and the
                                      log-prob of the next token at τ=1 and
                                      τ=0.7; under `variants`, the same for
                                      the base weights under other RoPE
                                      scalings (YaRN with defaults, YaRN
                                      with every parameter, linear)

Each directory also holds a byte-level BPE `tokenizer.json` (256 byte tokens
and the ChatML specials) and a `tokenizer_config.json` with a chat template,
and the reference records the ids transformers' tokenizer gives for a few
texts. transformers 5 writes the RoPE settings as `rope_parameters`; the
engine's test also rewrites them into the older `rope_theta`/`rope_scaling`
form of transformers 4 and expects the same logits.

Weights are drawn with larger spreads than transformers' initialisation
(0.02), and norms and biases are random too, so every part moves the logits
by much more than the 2e-4 the test allows.

Run once (seeded, reproducible), with the venv of scripts/reference/README.md:
  data/venv/bin/python scripts/reference/make_tiny_models.py
"""

import json
import math
import os
import shutil

import gguf
import numpy as np
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


def byte_chars():
    """GPT-2's byte-to-character table, which ByteLevel pre-tokenizes into:
    the character of each byte, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    chars = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    assert set(chars) == set(pre_tokenizers.ByteLevel.alphabet())
    return chars


def byte_level_tokenizer():
    """256 byte tokens in byte order, no merges, then the ChatML specials
    (ids 256 and 257)."""
    tok = Tokenizer(models.BPE(vocab={c: b for b, c in enumerate(byte_chars())}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    return tok


def llama_cpp_permute(w, heads):
    """llama.cpp's converter: rows [heads, 2, d/2] become [heads, d/2, 2]."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(cfg):
    """Per-frequency divisors for Llama 3 scaling, as convert_hf_to_gguf.py
    computes them (here from the scaling's own original context; the
    converter of some llama.cpp versions reads it from the config's top
    level, the same value for released Llama 3.x checkpoints)."""
    rope = cfg.rope_parameters
    base, dim = rope["rope_theta"], cfg.head_dim
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_ctx = rope["original_max_position_embeddings"]
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factors = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def write_gguf(path, arch, model, cfg):
    """The model in the layout llama.cpp reads, with convert_hf_to_gguf.py's
    tensor names and transformations: Llama's q/k rows permuted, Llama 3
    RoPE scaling as `rope_freqs`, linear and YaRN scaling as
    `rope.scaling.*` keys; 2-D weights in the checkpoint's dtype (bf16
    stays bf16), 1-D ones in f32."""
    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"tiny-random-{arch}")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    rope_type = cfg.rope_parameters.get("rope_type", "default")
    if rope_type == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(cfg.rope_parameters["factor"])
    elif rope_type == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(cfg.rope_parameters["factor"])
        w.add_rope_scaling_orig_ctx_len(cfg.rope_parameters["original_max_position_embeddings"])
        # As convert_hf_to_gguf.py writes them when the config states them.
        if "beta_fast" in cfg.rope_parameters:
            w.add_rope_scaling_yarn_beta_fast(cfg.rope_parameters["beta_fast"])
        if "beta_slow" in cfg.rope_parameters:
            w.add_rope_scaling_yarn_beta_slow(cfg.rope_parameters["beta_slow"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if model.dtype == torch.bfloat16 else gguf.LlamaFileType.ALL_F32)
    w.add_vocab_size(cfg.vocab_size)
    # GPT-2's byte characters, the ChatML specials, one merge, then
    # reserved control tokens up to the model's vocabulary.
    tokens = byte_chars()
    tokens += ["<|im_start|>", "<|im_end|>", "Ġt"]
    types = [gguf.TokenType.NORMAL] * 256 + [gguf.TokenType.CONTROL] * 2 + [gguf.TokenType.NORMAL]
    while len(tokens) < cfg.vocab_size:
        tokens.append(f"<|reserved_{len(tokens)}|>")
        types.append(gguf.TokenType.CONTROL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe" if arch == "llama" else "qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["Ġ t"])
    w.add_bos_token_id(256)
    w.add_eos_token_id(257)
    w.add_chat_template(CHAT_TEMPLATE)

    sd = {k: v.detach() for k, v in model.state_dict().items()}
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads

    def add(name, t):
        if t.dim() == 2 and t.dtype == torch.bfloat16:
            bits = t.contiguous().view(torch.int16).numpy().view(np.uint16)
            w.add_tensor(name, bits, raw_shape=bits.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            w.add_tensor(name, np.ascontiguousarray(t.to(torch.float32).numpy()))

    add("token_embd.weight", sd["model.embed_tokens.weight"])
    add("output_norm.weight", sd["model.norm.weight"])
    add("output.weight", sd["lm_head.weight"])
    if rope_type == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(cfg))
    names = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            for kind in ("weight", "bias"):
                key = f"model.layers.{i}.{hf}.{kind}"
                if key not in sd:
                    continue
                t = sd[key]
                if arch == "llama" and hf == "self_attn.q_proj":
                    t = llama_cpp_permute(t, heads)
                elif arch == "llama" and hf == "self_attn.k_proj":
                    t = llama_cpp_permute(t, kv_heads)
                add(f"blk.{i}.{gg}.{kind}", t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama_cpp_logits(path, ids, vocab):
    from llama_cpp import Llama

    # An f32 cache: llama.cpp keeps keys and values in f16 by default.
    llm = Llama(model_path=path, n_ctx=512, logits_all=True, n_threads=2, verbose=False, type_k=0, type_v=0)
    llm.eval(ids)
    return torch.tensor(np.array(llm.scores[: len(ids), :vocab]))


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
    write_checked_gguf(name, name, out, cls, dtype, model, config, sequences.values())
    return record


def write_checked_gguf(name, arch, out, cls, dtype, model, config, sequences):
    """Writes `{name}.gguf` from the directory `out` (weights in `dtype`)
    and checks that llama.cpp's logits on it are transformers' (`model`,
    f32) for every sequence."""
    path = os.path.join(OUT, f"{name}.gguf")
    write_gguf(path, arch, cls.from_pretrained(out, dtype=dtype).eval(), config)
    if dtype != torch.float32:
        # llama.cpp rounds activations to bf16 for bf16 weights (0.08 off
        # here), so the layout is checked on an f32 twin of the same values.
        path = os.path.join(OUT, f"{name}.f32-check.gguf")
        write_gguf(path, arch, model, config)
    for ids in sequences:
        with torch.no_grad():
            want = model(torch.tensor([ids])).logits[0]
        diff = float((llama_cpp_logits(path, ids, config.vocab_size) - want).abs().max())
        print(f"{name}.gguf: llama.cpp vs transformers, {len(ids)} tokens: max |diff| {diff:.2e}")
        assert diff < 1e-3, diff
    if path.endswith(".f32-check.gguf"):
        os.remove(path)


def build_variant(name, base, cls, dtype, rope, records, with_gguf):
    """The base model's weights under another RoPE scaling: the reference
    logits of its directory with `rope_parameters` rewritten (the engine's
    test makes the same directory from the base). For a scaling a GGUF
    states in metadata (`with_gguf`), `{name}.gguf` too, checked with
    llama.cpp."""
    src = os.path.join(OUT, base)
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    cfg["rope_parameters"] = {"rope_theta": cfg["rope_parameters"]["rope_theta"], **rope}
    out = os.path.join(OUT, f".{name}.tmp")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(src, out)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    model = cls.from_pretrained(out, dtype=torch.float32).eval()
    assert model.config.rope_parameters["rope_type"] == rope["rope_type"], model.config.rope_parameters
    base_record = records[base]
    probe_ids = base_record["probe_ids"]
    record = {"base": base, "rope_parameters": cfg["rope_parameters"], "gguf": with_gguf, "sequences": []}
    moved = 0.0
    with torch.no_grad():
        for seq in base_record["sequences"]:
            logits = model(torch.tensor([seq["ids"]])).logits[0].float()
            positions = summarise(logits, seq["ids"], probe_ids)
            moved = max(
                moved, max(abs(a["logsumexp"] - b["logsumexp"]) for a, b in zip(positions, seq["positions"]))
            )
            record["sequences"].append({"name": seq["name"], "ids": seq["ids"], "positions": positions})
    # The scaling must show, or the test could not tell it was applied.
    print(f"{name}: logsumexp moved by up to {moved:.2f} from {base}'s")
    assert moved > 0.05, moved
    if "beta_fast" in rope:
        # So must the β: the ramp's ends move with them.
        plain = {k: v for k, v in cfg["rope_parameters"].items() if not k.startswith("beta")}
        config = type(model.config).from_dict({**model.config.to_dict(), "rope_parameters": plain})
        other = cls(config).eval()
        other.load_state_dict(model.state_dict())
        with torch.no_grad():
            ids = torch.tensor([base_record["sequences"][1]["ids"]])
            beta_moved = float((other(ids).logits - model(ids).logits).abs().max())
        print(f"{name}: the β move logits by up to {beta_moved:.2f}")
        assert beta_moved > 0.05, beta_moved
    if with_gguf:
        ids = [seq["ids"] for seq in base_record["sequences"]]
        write_checked_gguf(name, base, out, cls, dtype, model, model.config, ids)
    shutil.rmtree(out)
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
    # Other RoPE scalings on the same weights: YaRN as Qwen2.5's model card
    # adds it (factor 4 on the config's own context; a GGUF states the
    # same), YaRN with every parameter given (llama.cpp ignores β written
    # to a GGUF, so that one has no GGUF), and linear interpolation.
    reference["variants"] = {
        "qwen2-yarn": build_variant(
            "qwen2-yarn",
            "qwen2",
            Qwen2ForCausalLM,
            torch.bfloat16,
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512},
            reference,
            True,
        ),
        "llama-yarn": build_variant(
            "llama-yarn",
            "llama",
            LlamaForCausalLM,
            torch.float32,
            {
                "rope_type": "yarn",
                "factor": 3.0,
                "original_max_position_embeddings": 48,
                "beta_fast": 16.0,
                "beta_slow": 2.0,
                "mscale": 1.5,
                "mscale_all_dim": 0.5,
                "truncate": False,
            },
            reference,
            False,
        ),
        "llama-linear": build_variant(
            "llama-linear",
            "llama",
            LlamaForCausalLM,
            torch.float32,
            {"rope_type": "linear", "factor": 2.5},
            reference,
            True,
        ),
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(reference, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
