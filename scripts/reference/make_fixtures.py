"""Generate the engine's reference fixtures with PyTorch + transformers.

Writes, under tests/fixtures/:
  smollm2_logits_reference.json   f32 logits of SmolLM2-135M-Instruct (the Q4_1
                                   GGUF, dequantized by transformers) for a few
                                   token sequences
  smollm2_chat_template_cases.json  chat templates rendered by
                                   tokenizer.apply_chat_template

Token ids come from tests/fixtures/smollm2_tokenizer_cases.jsonl (llama.cpp's
tokenization), never from transformers' GGUF tokenizer, which splits
whitespace before digits differently from the original tokenizer.

Run once, outside the repo's build (see scripts/reference/README.md):
  python -m venv data/venv
  data/venv/bin/pip install torch transformers gguf numpy accelerate
  data/venv/bin/python scripts/reference/make_fixtures.py
"""

import argparse
import json
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.environ.get("RLT_DATA_DIR", os.path.join(ROOT, "data"))
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FIXTURES = os.path.join(ROOT, "tests", "fixtures")

# Vocabulary entries whose logits are recorded at every position, besides
# the argmax and the actual next token.
PROBE_IDS = [0, 1, 2, 28, 30, 33, 34, 198, 216, 314, 446, 1116, 4093, 9531, 24362, 49151]
# Contiguous vocabulary slice recorded for a few positions.
SLICE = (0, 4096)

TEACHER_SYSTEM = (
    "Your role as an assistant involves providing precise and accurate solutions before "
    "providing detailed explanations with your full work showing your systematic thinking "
    "process leading to each solution."
)


def sequences():
    cases = [json.loads(line) for line in open(os.path.join(FIXTURES, "smollm2_tokenizer_cases.jsonl"))]
    by_text = {c["text"]: c["ids"] for c in cases}
    chat = by_text["<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"]
    rlt = by_text[
        "<|begin_of_thought|>Let me think.\n\nOK.<|end_of_thought|>\n\n"
        "<|begin_of_solution|>4<|end_of_solution|>"
    ]
    longer = []
    for c in cases:
        longer.extend(c["ids"])
    return [
        ("chat_prompt_plus_rlt_answer", chat + rlt),
        ("step_list", by_text["Step:\n\n1. Expand\n2. Simplify\n    10 + 20 = 30"]),
        ("all_cases_concatenated", longer),
        ("single_token", [1]),
    ]


def logits_fixture(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=GGUF, dtype=torch.float32)
    model.eval()
    out = []
    for name, ids in sequences():
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        lse = torch.logsumexp(logits, dim=-1)
        lse_07 = torch.logsumexp(logits / 0.7, dim=-1)
        positions = []
        for p in range(len(ids)):
            row = logits[p]
            entry = {
                "argmax": int(row.argmax()),
                "max": float(row.max()),
                "logsumexp": float(lse[p]),
                "probe": [float(row[i]) for i in PROBE_IDS],
            }
            if p + 1 < len(ids):
                nxt = ids[p + 1]
                entry["next_logprob"] = float(row[nxt] - lse[p])
                entry["next_logprob_t07"] = float(row[nxt] / 0.7 - lse_07[p])
            positions.append(entry)
        slices = {
            str(p): [float(x) for x in logits[p, SLICE[0]:SLICE[1]]]
            for p in sorted({0, len(ids) - 1})
        }
        out.append({"name": name, "ids": ids, "positions": positions, "slices": slices})
    return {
        "model": GGUF,
        "generator": "scripts/reference/make_fixtures.py",
        "torch": torch.__version__,
        "probe_ids": PROBE_IDS,
        "slice": list(SLICE),
        "sequences": out,
    }


# A template that exercises what real chat templates use: whitespace control,
# trim/lstrip blocks, namespace, loop variables, string methods, tojson,
# bos_token and raise_exception.
FEATURE_TEMPLATE = """{{ bos_token }}
{%- set ns = namespace(n=0) %}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('bad role') }}
    {% endif %}
    {%- set ns.n = ns.n + 1 %}
[{{ ns.n }}:{{ message.role | upper }}] {{ message['content'].strip() }}
{%- if loop.last and message.role == 'assistant' %} (last){% endif %}

    {% if message.role == 'system' %}meta={{ {'k': message.content[:5], 'n': [1, 2]} | tojson }}
{% endif %}
{% endfor %}
{% if add_generation_prompt %}[ASSISTANT]{% endif %}"""


def template_fixture(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=GGUF)
    prefix = (
        "<|begin_of_solution|>\\frac{1}{2} = 0.5<|end_of_solution|>\n\n<|begin_of_explanation|>\n\n"
    )
    conversations = [
        ("user_generation_prompt", [{"role": "user", "content": "What is 2+2?"}], True, False, None),
        ("user_no_prompt", [{"role": "user", "content": "Hi"}], False, False, None),
        (
            "system_user_assistant",
            [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Name a prime."},
                {"role": "assistant", "content": "7"},
            ],
            False,
            False,
            None,
        ),
        (
            "rlt_teacher_continue",
            [
                {"role": "system", "content": TEACHER_SYSTEM},
                {"role": "user", "content": "Compute 1/2 as a decimal."},
                {"role": "assistant", "content": prefix},
            ],
            False,
            True,
            None,
        ),
        (
            "continue_trailing_spaces",
            [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hello  "}],
            False,
            True,
            None,
        ),
        (
            "multi_turn_unicode",
            [
                {"role": "user", "content": "π ≈ ?"},
                {"role": "assistant", "content": "π ≈ 3.14159 😀"},
                {"role": "user", "content": "  café\n\n"},
            ],
            True,
            False,
            None,
        ),
        (
            "feature_template",
            [
                {"role": "system", "content": "Be <careful> & \"exact\""},
                {"role": "user", "content": "  padded question  "},
                {"role": "assistant", "content": "answer"},
            ],
            True,
            False,
            FEATURE_TEMPLATE,
        ),
        (
            "feature_template_continue",
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "partial answer  "},
            ],
            False,
            True,
            FEATURE_TEMPLATE,
        ),
    ]
    cases = []
    for name, messages, gen, cont, template in conversations:
        kwargs = {}
        if template is not None:
            kwargs["chat_template"] = template
        rendered = tok.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=gen,
            continue_final_message=cont,
            **kwargs,
        )
        cases.append(
            {
                "name": name,
                "messages": messages,
                "add_generation_prompt": gen,
                "continue_final_message": cont,
                "template": template,
                "bos_token": tok.bos_token,
                "eos_token": tok.eos_token,
                "expected": rendered,
            }
        )
    return {"generator": "scripts/reference/make_fixtures.py", "model_template_from": GGUF, "cases": cases}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", default=os.path.join(DATA, "models"))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    with open(os.path.join(FIXTURES, "smollm2_chat_template_cases.json"), "w") as f:
        json.dump(template_fixture(args.model_dir), f, ensure_ascii=False, indent=1)
    with open(os.path.join(FIXTURES, "smollm2_logits_reference.json"), "w") as f:
        json.dump(logits_fixture(args.model_dir), f, separators=(",", ":"))


if __name__ == "__main__":
    main()
