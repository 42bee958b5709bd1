"""Write three fixtures (the random ones seeded, so reproducible) of inputs
and what the peers make of them with the SmolLM2 Q4_1 GGUF:

tests/fixtures/smollm2_tokenizer_fuzz.jsonl: texts and the ids llama.cpp
gives them with the GGUF's own vocabulary. Half the texts are glued from
pieces that stress the pre-tokenizer (whitespace runs before digits, digit
runs, contractions in either case, LaTeX, emoji with modifiers, the chat
and RLT tags, control characters); half are random code points from
ASCII, Latin, Greek, Cyrillic, CJK, emoji, punctuation and whitespace
blocks. Special tokens are parsed as such in the first half only.

tests/fixtures/chat_template_features.json: small templates that use what
chat templates in the wild use (filters, tests, loops and loop variables,
namespaces, macros, block sets, break/continue, dict and string methods,
tojson, escaping, whitespace control, raise_exception, the named special
tokens) rendered by transformers' `apply_chat_template` on one
conversation, or the error it raised, with the special tokens transformers
reads from the GGUF.

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


def random_text(rng, special):
    """Stress pieces glued together (which may hold special tokens), or
    random code points from the blocks of RANGES."""
    if special:
        return "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12)))
    return "".join(chr(rng.randint(*rng.choice(RANGES))) for _ in range(rng.randint(1, 40)))


def tokenizer_cases():
    vocab = llama_cpp.Llama(model_path=os.path.join(DATA, "models", GGUF), vocab_only=True, verbose=False)
    rng = random.Random(20261126)
    path = os.path.join(FIXTURES, "smollm2_tokenizer_fuzz.jsonl")
    with open(path, "w", encoding="utf-8") as out:
        for i in range(2 * CASES_EACH):
            special = i < CASES_EACH
            text = random_text(rng, special)
            ids = vocab.tokenize(text.encode("utf-8"), add_bos=False, special=special)
            out.write(json.dumps({"text": text, "special": special, "ids": ids}) + "\n")
    print(f"wrote {2 * CASES_EACH} cases to {path}")


FEATURE_MESSAGES = [
    {"role": "system", "content": "  Be brief. "},
    {"role": "user", "content": "Hi <b> & 'q'"},
    {"role": "assistant", "content": "<think>hmm</think>Hello!\n"},
    {"role": "user", "content": "2+2?"},
]

FEATURE_TEMPLATES = {
    "llama3": "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    "gemma_like": "{{ bos_token }}{% for message in messages[1:] %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('alternate') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}",
    "deepseek_like": "{% set ns = namespace(is_first=false, is_tool=false, system_prompt='') %}{%- for message in messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}{%- for message in messages %}{%- if message['role'] == 'user' %}{{'<|User|>' + message['content']}}{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is not none %}{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}{{'<|Assistant|>' + content + '<|end|>'}}{%- endif %}{%- endfor -%}{% if add_generation_prompt %}{{'<|Assistant|><think>\n'}}{% endif %}",
    "tests_filters": "{{ messages|length }}|{{ messages|map(attribute='role')|join(',') }}|{{ messages|selectattr('role','equalto','user')|list|length }}|{{ (messages|first).role }}|{{ (messages|last)['content'] }}|{{ messages[0].content is string }}|{{ messages[0] is mapping }}|{{ none is none }}|{{ undefined_var is defined }}|{{ 'x' ~ 3 ~ none }}|{{ messages[::-1][0].role }}|{{ 'a,b,,c'.split(',') }}|{{ [1,2,3] }}|{{ {'k': 'v'} }}|{{ 'AbC'.lower() }}{{ 'abc'.upper() }}|{{ '  x  '.strip() }}|{{ 'ab'.startswith('a') }}|{{ 3 / 2 }}|{{ 7 // 2 }}|{{ 2 ** 3 }}|{{ 1 == 1.0 }}|{{ 'hello world'.title() }}|{{ none }}|{{ true }}|{{ [none, true, 1.5] }}|{{ 'x' * 3 }}|{{ messages|length > 2 }}",
    "loops": "{% for m in messages %}{{ loop.index }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}{% if not loop.first %}{{ loop.previtem.role }}{% endif %}{% if not loop.last %}{{ loop.nextitem.role }}{% endif %};{% endfor %}{% for i in range(3) %}{{ i }}{% endfor %}{% for k, v in messages[0].items() %}{{ k }}={{ v }};{% endfor %}",
    "whitespace": "A\n  {%- for m in messages %}\n    {{ m.role }}\n  {% endfor -%}\n  B\n{% if true %}\n  C\n{% endif %}\nD {# comment #}\n  E",
    "escapes": "{{ messages[1].content }}|{{ messages[1].content|e }}|{{ messages[1].content|tojson }}|{{ '\\u00e9\\t' }}|{{ messages|tojson }}",
    "strings": "{{ messages[2].content.rstrip() }}|{{ messages[2].content.replace('<think>', '[') }}|{{ messages[0].content|trim|length }}|{{ messages[1]['content'][0:2] }}|{{ 'abc'[-1] }}|{{ messages[2].content.endswith('\\n') }}|{{ 'a b  c'.split() }}|{{ '%s-%d'|format('x', 3) }}|{{ 'x'|default('y') }}{{ nothere|default('y') }}|{{ 12|string + 'a' }}|{{ '3'|int + 1 }}|{{ [3,1,2]|sort|list }}|{{ ['b','a']|join }}|{{ 'abc'|reverse }}|{{ 'x' in 'xyz' }}|{{ 'ab'|capitalize }}",
    "numbers": "{{ 1.0 }}|{{ 10/5 }}|{{ 0.1+0.2 }}|{{ 3 }}|{{ -7 // 2 }}|{{ -7 % 3 }}|{{ 2.5|round }}|{{ 3.7|int }}|{{ '%.2f'|format(3.14159) }}|{{ 1/3 }}|{{ 100000000000000000000 }}|{{ 5 > 3 and 2 < 1 }}",
    "dicts": "{% set d = {'b': 1, 'a': none} %}{{ d.get('a') }}|{{ d.get('zz', 'dflt') }}|{{ d.get('zz') }}|{{ d['b'] }}|{{ 'b' in d }}|{{ d|length }}|{% for k, v in d|items %}{{ k }}{{ v }}{% endfor %}|{% for k, v in d|dictsort %}{{ k }}{% endfor %}|{{ messages[0].get('tool_calls') is none }}|{{ messages[0].tool_calls is defined }}|{{ messages[0]['content'] is defined }}",
    "macro_set": "{% macro fmt(m, sep='|') %}{{ m.role|upper }}{{ sep }}{{ m.content }}{% endmacro %}{% for m in messages %}{{ fmt(m) }}{{ fmt(m, sep='=') }};{% endfor %}{% set block %}X{{ messages|length }}Y{% endset %}{{ block }}{{ block|length }}",
    "control": "{% for m in messages %}{% if m.role == 'assistant' %}{% break %}{% endif %}{{ m.role }}{% endfor %}|{% for m in messages %}{% if loop.index is even %}{% continue %}{% endif %}{{ m.content }}{% endfor %}|{{ 'y' if messages else 'n' }}|{{ 'y' if [] else 'n' }}|{{ messages[5] is defined }}|{% for m in messages if m.role == 'user' %}{{ loop.index }}{{ m.content }}{% endfor %}|{{ loop is defined }}",
    "cycle_etc": "{% for m in messages %}{{ loop.cycle('a','b') }}{{ loop.depth }}{% endfor %}|{{ messages|map(attribute='content')|map('upper')|join('/') }}|{{ messages|rejectattr('role','equalto','user')|map(attribute='role')|list }}|{{ [1,2,2,3]|unique|list }}|{{ messages|groupby('role')|length }}|{{ range(2,8,2)|list }}|{{ [3,1]|max }}{{ [3,1]|min }}|{{ [1,2,3]|sum }}|{{ 'a\nb'|indent(2) }}|{{ ' a '|trim('') }}",
    "strmethods": "{{ 'Abc'.capitalize() }}|{{ 'abc'.find('c') }}|{{ 'a b'.split(' ', 1) }}|{{ ' x '.lstrip() }}|{{ 'x'.join(['a','b']) }}|{{ 'aaa'.count('a') }}|{{ 'abc'.isalpha() }}|{{ '{}-{}'.format(1, 2) }}|{{ 'a b c'.split(' ', 1) }}|{{ 'ab'.startswith(('x','a')) }}|{{ 'x\\x1c'.strip()|length }}|{{ 'a\\nb\\n'.splitlines() }}|{{ \"it's\".title() }}|{{ 'a'.strip(none) }}|{{ 'a  b'.split(none, 1) }}",
    "tools_none": "{{ tools is none }}|{{ documents is none }}|{{ tools is defined }}|{% if tools is not none %}T{% endif %}|{% if tools %}t{% endif %}",
    "raise": "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}",
    "special_tokens": "{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ pad_token }}|{{ sep_token }}|{{ cls_token is defined }}|{{ mask_token|default('m') }}|{{ pad_token is none }}",
}


def template_feature_cases(tok):
    cases = []
    for name, template in FEATURE_TEMPLATES.items():
        for generation_prompt in (False, True):
            case = {"name": name, "template": template, "add_generation_prompt": generation_prompt}
            try:
                case["expected"] = tok.apply_chat_template(
                    FEATURE_MESSAGES,
                    chat_template=template,
                    tokenize=False,
                    add_generation_prompt=generation_prompt,
                )
            except Exception as e:  # noqa: BLE001 - the error is the expected outcome
                case["error"] = str(e)
            cases.append(case)
    path = os.path.join(FIXTURES, "chat_template_features.json")
    with open(path, "w", encoding="utf-8") as out:
        fixture = {"messages": FEATURE_MESSAGES, "special_tokens": tok.special_tokens_map, "cases": cases}
        json.dump(fixture, out, ensure_ascii=False, indent=1)
    print(f"wrote {len(cases)} template cases to {path}")


def chat_template_cases(tok):
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
    tok = AutoTokenizer.from_pretrained(os.path.join(DATA, "models"), gguf_file=GGUF)
    template_feature_cases(tok)
    chat_template_cases(tok)


if __name__ == "__main__":
    main()
