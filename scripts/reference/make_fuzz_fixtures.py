"""Write two seeded (reproducible) fixtures of random inputs and what the
peers make of them with the SmolLM2 Q4_1 GGUF:

tests/fixtures/smollm2_tokenizer_fuzz.jsonl: texts and the ids llama.cpp
gives them with the GGUF's own vocabulary. Half the texts are glued from
pieces that stress the pre-tokenizer (whitespace runs before digits, digit
runs, contractions in either case, LaTeX, emoji with modifiers, the chat
and RLT tags, control characters); half are random code points from
ASCII, Latin, Greek, Cyrillic, CJK, emoji, punctuation and whitespace
blocks. Special tokens are parsed as such in the first half only.

tests/fixtures/smollm2_chat_template_fuzz.jsonl: conversations of random
roles and contents (template syntax, special tokens, leading and trailing
whitespace of every kind, empty messages) and transformers'
`apply_chat_template` rendering with the GGUF's template, complete, with a
generation prompt, or continuing the final assistant message.

    data/venv/bin/pip install llama-cpp-python transformers gguf
    data/venv/bin/python scripts/reference/make_fuzz_fixtures.py
"""

import json
import os
import random

import llama_cpp
from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.environ.get("RLT_DATA_DIR", os.path.join(ROOT, "data"))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CASES_EACH = 300
CONVERSATIONS = 300

PIECES = [
    "a", "b", "Z", " ", "  ", "\n", "\n\n", "\t", "\r\n", "1", "23", "456", "7890", "0.5", "-3",
    "x^2", "\\frac{1}{2}", "$", "$$", "é", "ñ", "中文", "日本語", "🙂", "👍🏽", "\u200b", "\u00a0",
    "'s", "'ll", "n't", "'S", " the", "The", "(", ")", "[", "]", "{", "}", "!", "?", "...", "—",
    "–", "«", "»", "\\alpha", "_", "__", "#", "##", "@", "http://x.y/z", "<|im_start|>",
    "<|im_end|>", "<|begin_of_thought|>", "<|end_of_thought|>", "<|endoftext|>", "  12", "\n\n3",
    "a\n\n2", " \u3000", "Ω", "ß", "ﬁ", "İ", "😀😀", "\x00", "\x7f", "€100", "1,000,000",
    "3.14159", "e-10", "ID", "iD", "I'M", "we'RE",
]

RANGES = [
    (0x20, 0x7E), (0x20, 0x7E), (0x20, 0x7E), (0xA0, 0x2FF), (0x370, 0x3FF), (0x400, 0x4FF),
    (0x4E00, 0x4FFF), (0x1F300, 0x1F6FF), (0x2000, 0x206F), (0x9, 0xD), (0x30, 0x39), (0x3000, 0x303F),
]


CONTENT = [
    "a", " ", "\n", "\n\n", "  ", "\t", "x", "{{ x }}", "{% if %}", "<|im_end|>",
    "<|begin_of_explanation|>", "é", "中文", "🙂", "$\\frac12$", "'", '"', "\\n", "end", " trailing ",
    "CONTINUE", "\u00a0", "\u3000",
]


def tokenizer_cases():
    vocab = llama_cpp.Llama(model_path=os.path.join(DATA, "models", GGUF), vocab_only=True, verbose=False)
    rng = random.Random(20261126)
    path = os.path.join(FIXTURES, "smollm2_tokenizer_fuzz.jsonl")
    with open(path, "w", encoding="utf-8") as out:
        for i in range(2 * CASES_EACH):
            special = i < CASES_EACH
            if special:
                text = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12)))
            else:
                text = "".join(chr(rng.randint(*rng.choice(RANGES))) for _ in range(rng.randint(1, 40)))
            ids = vocab.tokenize(text.encode("utf-8"), add_bos=False, special=special)
            out.write(json.dumps({"text": text, "special": special, "ids": ids}) + "\n")
    print(f"wrote {2 * CASES_EACH} cases to {path}")


def chat_template_cases():
    tok = AutoTokenizer.from_pretrained(os.path.join(DATA, "models"), gguf_file=GGUF)
    rng = random.Random(20261127)
    path = os.path.join(FIXTURES, "smollm2_chat_template_fuzz.jsonl")
    with open(path, "w", encoding="utf-8") as out:
        for _ in range(CONVERSATIONS):
            roles = ["system"] if rng.random() < 0.5 else []
            roles += [rng.choice(["user", "assistant"]) for _ in range(rng.randint(1, 4))]
            messages = [
                {"role": r, "content": "".join(rng.choice(CONTENT) for _ in range(rng.randint(0, 8)))} for r in roles
            ]
            ending = rng.choice(["complete", "generation_prompt", "continue_final"])
            if ending == "continue_final":
                messages[-1]["role"] = "assistant"
            rendered = tok.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=ending == "generation_prompt",
                continue_final_message=ending == "continue_final",
            )
            out.write(json.dumps({"messages": messages, "ending": ending, "expected": rendered}) + "\n")
    print(f"wrote {CONVERSATIONS} conversations to {path}")


def main():
    tokenizer_cases()
    chat_template_cases()


if __name__ == "__main__":
    main()
