"""Write tests/fixtures/smollm2_tokenizer_fuzz.jsonl: random texts and the
ids llama.cpp gives them with the SmolLM2 Q4_1 GGUF's own vocabulary.

The texts are seeded, so the file is reproducible. Half are glued from
pieces that stress the pre-tokenizer (whitespace runs before digits, digit
runs, contractions in either case, LaTeX, emoji with modifiers, the chat
and RLT tags, control characters); half are random code points from
ASCII, Latin, Greek, Cyrillic, CJK, emoji, punctuation and whitespace
blocks. Special tokens are parsed as such in the first half only.

    data/venv/bin/pip install llama-cpp-python
    data/venv/bin/python scripts/reference/make_tokenizer_fuzz.py
"""

import json
import os
import random

import llama_cpp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.environ.get("RLT_DATA_DIR", os.path.join(ROOT, "data"))
OUT = os.path.join(ROOT, "tests", "fixtures", "smollm2_tokenizer_fuzz.jsonl")
CASES_EACH = 300

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


def main():
    model = os.path.join(DATA, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
    vocab = llama_cpp.Llama(model_path=model, vocab_only=True, verbose=False)
    rng = random.Random(20261126)
    with open(OUT, "w", encoding="utf-8") as out:
        for i in range(2 * CASES_EACH):
            special = i < CASES_EACH
            if special:
                text = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12)))
            else:
                text = "".join(chr(rng.randint(*rng.choice(RANGES))) for _ in range(rng.randint(1, 40)))
            ids = vocab.tokenize(text.encode("utf-8"), add_bos=False, special=special)
            out.write(json.dumps({"text": text, "special": special, "ids": ids}) + "\n")
    print(f"wrote {2 * CASES_EACH} cases to {OUT}")


if __name__ == "__main__":
    main()
