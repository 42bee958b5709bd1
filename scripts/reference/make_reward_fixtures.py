"""Golden fixtures for the RLT reward, computed independently with PyTorch.

Writes tests/fixtures/rlt_reward_reference.json: for a handful of real CHAMP
questions and hand-written teacher completions, the RLT reward of the
reference code (SakanaAI/RLT, TeacherKLBasedReward) and all of its parts, with
SmolLM2-135M-Instruct (the Q4_1 GGUF, dequantized to f32 by transformers) as
both teacher and student.

Independence from the engine: nothing here calls the Rust code. The tokenizer
is rebuilt with the `tokenizers` library from the GGUF metadata (BPE from
tokenizer.ggml.tokens/merges, the SmolLM2 pre-tokenizer, control tokens as
special tokens), because transformers' GGUF tokenizer splits whitespace runs
before digits differently from the original SmolLM2 tokenizer. It is checked
against llama.cpp's ids in tests/fixtures/smollm2_tokenizer_cases.jsonl before
anything is computed, and the chat-template renderer is checked against
tests/fixtures/smollm2_chat_template_cases.json (rendered by transformers).

The scoring follows the reference's semantics (see ../shared/DESIGN.md, "The
RLT reward"):
  teacher text  = teacher prompt without its final "<|begin_of_explanation|>\n\n"
                  + comp, where comp = "<|begin_of_explanation|>\n\n" + completion
                  (+ "<|end_of_explanation|>" and a -1 penalty if no end tag)
  student text  = student chat with the thought and the solution (complete turn)
  spans         = token-subsequence search with the reference's boundary fallback
                  (find_valid_subsequence); teacher thought span = first
                  occurrence in tokens(comp), as offsets from the end; student
                  thought span = first occurrence in the student chat; solution
                  span = last occurrence in the student chat
  log-probs     = log_softmax(logits / tau) of the actual next token, tau = 0.7
  reward        = (1*mean(lp) + 0.01*min(lp)) - (3*mean(kl) + 0.03*max(kl)) + penalty

Everything in the model is f32 (one full forward per sequence, no KV cache);
the reductions are done in float64 from the f32 log-probs.

Run (about a minute on 2 cores; see scripts/reference/README.md):
  data/venv/bin/pip install torch transformers gguf numpy tokenizers jinja2
  data/venv/bin/python scripts/reference/make_reward_fixtures.py
"""

import argparse
import hashlib
import importlib.metadata
import json
import math
import os
import re

import jinja2
import numpy as np
import torch
import torch.nn.functional as F
import transformers
from gguf import GGUFReader
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.environ.get("RLT_DATA_DIR", os.path.join(ROOT, "data"))
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
OUTPUT = os.path.join(FIXTURES, "rlt_reward_reference.json")

# ---------------------------------------------------------------------------
# Tokenizer, built from the GGUF metadata
# ---------------------------------------------------------------------------

TOKEN_TYPE_CONTROL = 3


def gguf_metadata(path):
    reader = GGUFReader(path)

    def field(key):
        return reader.fields[key].contents()

    return {
        "tokens": field("tokenizer.ggml.tokens"),
        "merges": field("tokenizer.ggml.merges"),
        "token_type": field("tokenizer.ggml.token_type"),
        "chat_template": field("tokenizer.chat_template"),
        "bos_token_id": field("tokenizer.ggml.bos_token_id"),
        "eos_token_id": field("tokenizer.ggml.eos_token_id"),
    }


def build_tokenizer(meta):
    tokens = meta["tokens"]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens), "duplicate token strings in the GGUF vocabulary"
    merges = []
    for m in meta["merges"]:
        a, b = m.split(" ")
        merges.append((a, b))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [tokens[i] for i, t in enumerate(meta["token_type"]) if t == TOKEN_TYPE_CONTROL]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


def encode(tok, text):
    """Token ids of `text`, with no BOS/EOS (SmolLM2 adds none)."""
    return tok.encode(text, add_special_tokens=False).ids


def verify_tokenizer(tok, cases_path):
    n = 0
    for line in open(cases_path, encoding="utf-8"):
        if not line.strip():
            continue
        case = json.loads(line)
        assert not case.get("add_bos", False)
        ids = encode(tok, case["text"])
        assert ids == case["ids"], f"tokenizer mismatch on {case['text']!r}: {ids} != {case['ids']}"
        back = tok.decode(ids, skip_special_tokens=False)
        assert back == case["text"], f"decode mismatch on {case['text']!r}: {back!r}"
        n += 1
    assert n >= 20, f"only {n} tokenizer cases in {cases_path}"
    return n


# ---------------------------------------------------------------------------
# Chat template, rendered like transformers' apply_chat_template
# ---------------------------------------------------------------------------


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def render_chat(template, messages, add_generation_prompt=False, continue_final_message=False):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = _raise_exception
    rendered = env.from_string(template).render(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
    )
    if continue_final_message:
        # transformers: cut the rendered text right after the final message's
        # content, so that no end-of-turn follows it.
        final = messages[-1]["content"]
        if final.strip() not in rendered:
            raise ValueError("final message not found in the rendered chat")
        loc = rendered.rindex(final.strip())
        if rendered[loc : loc + len(final.lstrip())] == final:
            rendered = rendered[: loc + len(final.lstrip())]
        else:
            rendered = rendered[: loc + len(final.strip())]
    return rendered


def verify_chat_template(template, cases_path):
    n = 0
    for case in json.load(open(cases_path, encoding="utf-8"))["cases"]:
        if case["template"] is not None:
            continue  # only the model's own template matters here
        got = render_chat(
            template,
            case["messages"],
            add_generation_prompt=case["add_generation_prompt"],
            continue_final_message=case["continue_final_message"],
        )
        assert got == case["expected"], f"chat template mismatch on {case['name']}: {got!r}"
        n += 1
    assert n >= 4
    return n


# ---------------------------------------------------------------------------
# Reference span helpers (same semantics as SakanaAI/RLT teacher_base.py)
# ---------------------------------------------------------------------------


def is_subsequence(sub, seq):
    n = len(sub)
    return any(sub == seq[i : i + n] for i in range(len(seq) - n + 1))


def find_valid_subsequence(sub, seq):
    """Returns (tokens, trim) where trim is none|first|last|both, or (None, None)."""
    if is_subsequence(sub, seq):
        return sub, "none"
    if len(sub) > 1:
        if is_subsequence(sub[1:], seq):
            return sub[1:], "first"
        if is_subsequence(sub[:-1], seq):
            return sub[:-1], "last"
    if len(sub) > 2 and is_subsequence(sub[1:-1], seq):
        return sub[1:-1], "both"
    return None, None


def find_sublist_start_end(lst, sub, from_end=False, reverse_search=False):
    if sub is None:
        return None
    n = len(sub)
    rng = range(len(lst) - n, -1, -1) if reverse_search else range(len(lst) - n + 1)
    for i in rng:
        if lst[i : i + n] == sub:
            if from_end:
                return i - len(lst), i + n - len(lst)
            return i, i + n
    return None


def span_values(lp, span):
    """lp[k] is the log-prob of token k+1; a span of negative token offsets
    (start, end) relative to the end of the sequence indexes lp directly."""
    s, e = span
    assert s < 0 and e <= 0 and s <= e
    if s == e:
        return lp[:0]
    n = lp.shape[0]
    assert n + s >= 0
    return lp[n + s : n + e]


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------


class Scorer:
    def __init__(self, model, tok, template, ref, cfg):
        self.model = model
        self.tok = tok
        self.template = template
        self.tags = ref["tags"]
        self.teacher_system = ref["teacher_system"]
        self.student_system = ref["student_system"]
        self.cfg = cfg

    def teacher_prompt(self, question, solution):
        t = self.tags
        prefix = (
            t["begin_solution"] + solution + t["end_solution"] + t["pad"] + t["begin_explanation"] + t["pad"]
        )
        messages = [
            {"role": "system", "content": self.teacher_system},
            {"role": "user", "content": question},
            {"role": "assistant", "content": prefix},
        ]
        return render_chat(self.template, messages, continue_final_message=True)

    def student_chat(self, question, solution, thought):
        t = self.tags
        content = (
            t["begin_thought"] + thought + t["end_thought"] + t["pad"] + t["begin_solution"] + solution + t["end_solution"]
        )
        messages = [
            {"role": "system", "content": self.student_system},
            {"role": "user", "content": question},
            {"role": "assistant", "content": content},
        ]
        return render_chat(self.template, messages, continue_final_message=False)

    @torch.no_grad()
    def logprobs(self, ids, temperature):
        """f32 log-probs at `temperature` of each actual next token (length T-1)."""
        x = torch.tensor([ids], dtype=torch.long)
        logits = self.model(input_ids=x).logits[0].float()
        assert logits.dtype == torch.float32
        lp = F.log_softmax(logits[:-1] / temperature, dim=-1)
        return lp.gather(1, x[0, 1:].unsqueeze(-1)).squeeze(-1)

    def spans(self, question, solution, completion):
        """Text and token bookkeeping of one completion, without the model."""
        t = self.tags
        prefix_mask = t["begin_explanation"] + t["pad"]
        prompt = self.teacher_prompt(question, solution)
        assert prompt.endswith(prefix_mask)
        prompt_no_prefix = prompt[: -len(prefix_mask)]

        comp = prefix_mask + completion
        pattern = re.escape(t["begin_explanation"]) + r"(.*?)" + re.escape(t["end_explanation"])
        m = re.search(pattern, comp, flags=re.DOTALL)
        penalty = 0.0
        if not m:
            penalty = self.cfg["missing_end_tag_penalty"]
            comp = comp + t["end_explanation"]
            m = re.search(pattern, comp, flags=re.DOTALL)
            assert m
        thought = comp[m.start(1) : m.end(1)]

        comp_tokens = encode(self.tok, comp)
        thought_tokens_orig = encode(self.tok, thought)
        thought_tokens, thought_trim = find_valid_subsequence(thought_tokens_orig, comp_tokens)
        teacher_span = find_sublist_start_end(comp_tokens, thought_tokens, from_end=True)
        fallback_trims = 0
        # The reference then drops trailing thought tokens one at a time until
        # some version is found (its `while` loop). It also decodes the shorter
        # thought for the student chat.
        while teacher_span is None:
            fallback_trims += 1
            thought_tokens_orig = thought_tokens_orig[:-1]
            thought_tokens, thought_trim = find_valid_subsequence(thought_tokens_orig, comp_tokens)
            teacher_span = find_sublist_start_end(comp_tokens, thought_tokens, from_end=True)
            thought = self.tok.decode(thought_tokens_orig, skip_special_tokens=False)
        if fallback_trims:
            thought_trim = f"drop_last_{fallback_trims}+{thought_trim}"

        teacher_text = prompt_no_prefix + comp
        teacher_tokens = encode(self.tok, teacher_text)
        comp_is_tail = teacher_tokens[-len(comp_tokens) :] == comp_tokens

        student_text = self.student_chat(question, solution, thought)
        student_tokens = encode(self.tok, student_text)
        student_span = find_sublist_start_end(student_tokens, thought_tokens, from_end=True)
        assert student_span is not None, "thought tokens missing from the student chat"
        solution_tokens, solution_trim = find_valid_subsequence(encode(self.tok, solution), student_tokens)
        solution_span = find_sublist_start_end(student_tokens, solution_tokens, from_end=True, reverse_search=True)
        assert solution_span is not None, "solution tokens missing from the student chat"
        return {
            "penalty": penalty,
            "thought": thought,
            "comp": comp,
            "comp_tokens": comp_tokens,
            "thought_tokens": thought_tokens,
            "thought_trim": thought_trim,
            "teacher_text": teacher_text,
            "teacher_tokens": teacher_tokens,
            "comp_is_tail": comp_is_tail,
            "teacher_span": teacher_span,
            "student_text": student_text,
            "student_tokens": student_tokens,
            "student_span": student_span,
            "solution_tokens": solution_tokens,
            "solution_trim": solution_trim,
            "solution_span": solution_span,
        }

    def score(self, question, solution, completion):
        cfg = self.cfg
        s = self.spans(question, solution, completion)
        assert s["comp_is_tail"], "tokens(comp) is not the tail of the teacher tokens"
        t_lp = self.logprobs(s["teacher_tokens"], cfg["teacher_temperature"])
        s_lp = self.logprobs(s["student_tokens"], cfg["student_temperature"])

        sol = span_values(s_lp, s["solution_span"]).numpy()
        th_t = span_values(t_lp, s["teacher_span"]).numpy()
        th_s = span_values(s_lp, s["student_span"]).numpy()
        assert th_t.shape == th_s.shape
        assert len(sol) == len(s["solution_tokens"]) and len(th_t) == len(s["thought_tokens"])

        # The teacher's and student's thought tokens must be the same tokens.
        tt, st = s["teacher_tokens"], s["student_tokens"]
        a, b = s["teacher_span"]
        c, d = s["student_span"]
        assert tt[len(tt) + a : len(tt) + b] == st[len(st) + c : len(st) + d] == s["thought_tokens"]

        sol64 = sol.astype(np.float64)
        kl64 = th_t.astype(np.float64) - th_s.astype(np.float64)
        lp_coef = cfg["solution_logprob_coefs"]
        kl_coef = cfg["thought_kl_coefs"]
        # The reference turns a NaN reduction (empty span) into the penalty on
        # the log-prob side and into -penalty on the KL side.
        nan_lp = cfg["missing_end_tag_penalty"]
        nan_kl = -cfg["missing_end_tag_penalty"]
        lp_mean = float(sol64.mean()) if len(sol64) else nan_lp
        lp_min = float(sol64.min()) if len(sol64) else nan_lp
        kl_mean = float(kl64.mean()) if len(kl64) else nan_kl
        kl_max = float(kl64.max()) if len(kl64) else nan_kl
        reward = (lp_coef[0] * lp_mean + lp_coef[1] * lp_min) - (kl_coef[0] * kl_mean + kl_coef[1] * kl_max) + s["penalty"]
        assert math.isfinite(reward)

        def r6(xs):
            return [round(float(x), 6) for x in xs]

        tok = self.tok
        return {
            "expected": {
                "reward": reward,
                "solution_logprob_mean": lp_mean,
                "solution_logprob_min": lp_min,
                "thought_kl_mean": kl_mean,
                "thought_kl_max": kl_max,
                "match_penalty": s["penalty"],
                "solution_tokens": len(s["solution_tokens"]),
                "thought_tokens": len(s["thought_tokens"]),
                "thought_trim": s["thought_trim"],
                "solution_trim": s["solution_trim"],
                "teacher_sequence_length": len(s["teacher_tokens"]),
                "student_sequence_length": len(s["student_tokens"]),
                "teacher_thought_span": list(s["teacher_span"]),
                "student_thought_span": list(s["student_span"]),
                "student_solution_span": list(s["solution_span"]),
                "solution_logprobs": r6(sol),
                "thought_teacher_logprobs": r6(th_t),
                "thought_student_logprobs": r6(th_s),
                "thought_kl": r6(kl64),
                "thought_token_texts": [tok.decode([i], skip_special_tokens=False) for i in s["thought_tokens"]],
                "solution_token_texts": [tok.decode([i], skip_special_tokens=False) for i in s["solution_tokens"]],
            },
            "debug": {
                "thought": s["thought"],
                "teacher_text": s["teacher_text"],
                "student_text": s["student_text"],
                "teacher_token_ids": s["teacher_tokens"],
                "student_token_ids": s["student_tokens"],
            },
        }


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------


def champ_problem(problems, pid):
    p = problems[pid]
    solution = "\n".join(step["_text"].strip() for step in p["solution"]["steps"])
    return p["_text"], solution


END = "<|end_of_explanation|>"

# Candidates for the boundary-token case: the thought's last token merges
# with the end tag inside comp (or its first token with the begin tag).
# With SmolLM2's pre-tokenizer the first thought token never merges (the
# thought starts with "\n\n" right after ">", a hard pre-token boundary), and
# any trailing punctuation merges with "<|" of the end tag, so "last" is by far
# the most common trim. The first candidate that trims is used; it is listed
# first on purpose: a trailing "\n\n" is one token (ĊĊ) alone but two (Ċ Ċ)
# before "<", a different mechanism from the punctuation merge that the
# other cases already exercise.
BOUNDARY_CANDIDATES = [
    "The remainder is 0.\n\n" + END,
    "The remainder is 0." + END,
    "The remainder is 0.\n" + END,
    "The remainder is 0. " + END,
    "The remainder is 0 (since 7 | 3^105+4^105)" + END,
    "The remainder is 0 |" + END,
    "\nThe remainder is 0." + END,
    " \nThe remainder is 0." + END,
    "  The remainder is 0." + END,
    "(3+4) divides the sum, so the remainder is 0." + END,
]


def make_cases(problems, scorer):
    cases = []

    def add(name, pid, completion, note, question=None, solution=None):
        q, s = champ_problem(problems, pid)
        cases.append(
            {
                "name": name,
                "champ_id": pid,
                "note": note,
                "question": question if question is not None else q,
                "solution": solution if solution is not None else s,
                "completion": completion,
            }
        )

    add(
        "normal_restates_solution",
        "P_Number-Theory_32",
        "We want 3^105+4^105 mod 11.\n\n"
        "First, 3^5 = 243 = 22*11 + 1, so 3^5 mod 11 = 1.\n\n"
        "Also 4^5 = 1024 = 93*11 + 1, so 4^5 mod 11 = 1.\n\n"
        "Since 105 = 5*21, we get 3^105+4^105 = (3^5)^21 + (4^5)^21 = 1^21 + 1^21 = 2 mod 11.\n\n"
        "So the answer is 2." + END,
        "(a) a normal completion that restates the solution's reasoning and ends with the end tag",
    )
    add(
        "missing_end_tag",
        "P_Polynomial_14",
        "We add and subtract x^2 to complete the square.\n\n"
        "x^4+x^2+1 = x^4+2x^2+1-x^2 = (x^2+1)^2 - x^2.\n\n"
        "This is a difference of squares, so it factors as (x^2+x+1)(x^2-x+1)",
        "(b) no end tag: penalty -1 and the end tag is appended",
    )
    add(
        "text_after_end_tag",
        "P_Number-Theory_37",
        "Note 3^3 = 27 = 1 mod 13 and 4^3 = 64 = -1 mod 13.\n\n"
        "Then 3^105 = (3^3)^35 = 1 and 4^105 = (4^3)^35 = (-1)^35 = -1 mod 13, so the sum is 0 mod 13.\n"
        + END
        + "\n\nThat is all. Extra text after the tag should not count.",
        "(c) text after the end tag stays in the teacher sequence but not in the thought; the thought ends with "
        "a single newline, which does not merge with the tag, so no trim",
    )
    q, s = champ_problem(problems, "P_Inequality_2")
    add(
        "unicode_latex",
        "P_Inequality_2",
        "By QM-AM, $\\frac{a+b}{2} \\le \\sqrt{\\frac{a^2+b^2}{2}}$, i.e. (a+b)/2 ≤ √((a²+b²)/2).\n\n"
        "Squaring: (a+b)²/4 ≤ (a²+b²)/2, hence (a²+b²)/(a+b)² ≥ ½ = $\\frac{1}{2}$.\n\n"
        "Equality holds at a = b (no π or ∞ involved), so the minimum is 1/2." + END,
        "(d) unicode and LaTeX in question, solution and completion (question and solution are CHAMP's, with a "
        "LaTeX/unicode sentence appended)",
        question=q + " Give the answer as a fraction $\\frac{p}{q}$ (e.g. not π or √2).",
        solution=s + "\nIn LaTeX: $\\min \\frac{a^2+b^2}{(a+b)^2} = \\frac{1}{2}$, and ½ ≤ 1 ≤ √2 < π.",
    )

    # (e) search the boundary candidates for a thought whose tokens are
    # trimmed by the fallback.
    q, s = champ_problem(problems, "P_Number-Theory_22")
    search = []
    chosen = None
    for cand in BOUNDARY_CANDIDATES:
        sp = scorer.spans(q, s, cand)
        search.append({"completion": cand, "thought_trim": sp["thought_trim"], "solution_trim": sp["solution_trim"]})
        if chosen is None and sp["thought_trim"] != "none":
            chosen = cand
    assert chosen is not None, "no boundary-trim candidate found"
    add(
        "boundary_token_trim",
        "P_Number-Theory_22",
        "Since 105 is odd, a^105 + b^105 is divisible by a + b.\n\n" + chosen,
        "(e) the thought ends with \"\\n\\n\": one token alone, two tokens before the end tag inside comp, so "
        "the fallback drops the thought's last token",
    )

    add(
        "contradiction_pair_states",
        "P_Number-Theory_22",
        "Since 105 is odd, a^105 + b^105 is divisible by a + b.\n\n"
        "Here a + b = 3 + 4 = 7, so 7 divides 3^105 + 4^105.\n\n"
        "Therefore 3^105 + 4^105 mod 7 = 0." + END,
        "(f) explanation that states and derives the solution (compare with contradiction_pair_contradicts)",
    )
    add(
        "contradiction_pair_contradicts",
        "P_Number-Theory_22",
        "Since 105 is odd, a^105 + b^105 is not divisible by a + b.\n\n"
        "Here 3^105 mod 7 = 6 and 4^105 mod 7 = 4, so 7 does not divide 3^105 + 4^105.\n\n"
        "Therefore 3^105 + 4^105 mod 7 = 3." + END,
        "(f) explanation that contradicts the solution. Issue 4 expects a lower reward than for the one that "
        "states it; see checks.contradiction_* for what this model gives (the student's solution log-prob drops, "
        "but so does the teacher-student KL, by more)",
    )
    add(
        "empty_explanation",
        "P_Number-Theory_22",
        END,
        "(g) empty explanation: the thought is just the pad '\\n\\n', one token (ĊĊ) that does not occur in "
        "tokens(comp) (there it is Ċ Ċ before '<'), and find_valid_subsequence gives up on one token. The "
        "reference's `while` loop then drops trailing tokens until a (here empty) match: the thought becomes '' "
        "(so the student chat has '<|begin_of_thought|><|end_of_thought|>'), both thought spans are empty, the "
        "KL reductions are NaN and nan_to_num turns them into -penalty = +1 each (KL part 3*1 + 0.03*1). The "
        "reference also rebuilds its teacher text from re.escape'd tags in that loop; that text only feeds the "
        "(empty) teacher span, so it is ignored here and teacher_sequence_length is that of the unmodified text.",
    )
    add(
        "longer_multi_step",
        "P_Polynomial_41",
        "We want n+10 to divide n^3+100.\n\n"
        "Polynomial division: n^3+100 = (n+10)(n^2-10n+100) - 900, since (n+10)(n^2-10n+100) = n^3+1000.\n\n"
        "The first term is a multiple of n+10, so n+10 divides n^3+100 exactly when n+10 divides 900.\n\n"
        "The largest divisor of 900 is 900 itself, so n+10 = 900 and n = 890.\n\n"
        "Check: 890^3+100 = 704969100 and 704969100 / 900 = 783299, an integer." + END,
        "extra: a longer multi-step explanation",
    )
    return cases, search


# ---------------------------------------------------------------------------


def check_against_logits_fixture(scorer, path, name="chat_prompt_plus_rlt_answer"):
    """Same weights, same forward: compare tau=0.7 log-probs with the engine's
    logits fixture (made by make_fixtures.py)."""
    seq = next(s for s in json.load(open(path))["sequences"] if s["name"] == name)
    lp = scorer.logprobs(seq["ids"], 0.7).numpy()
    want = np.array([p["next_logprob_t07"] for p in seq["positions"][:-1]])
    diff = float(np.abs(lp - want).max())
    assert diff < 1e-3, f"log-probs differ from {path} by {diff}"
    return diff


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", default=os.path.join(DATA, "models"))
    parser.add_argument("--champ", default=os.path.join(DATA, "datasets", "champ", "v0.json"))
    parser.add_argument("--reference", default=os.path.join(SHARED, "rlt", "reference.json"))
    parser.add_argument("--tokenizer-cases", default=os.path.join(FIXTURES, "smollm2_tokenizer_cases.jsonl"))
    parser.add_argument("--template-cases", default=os.path.join(FIXTURES, "smollm2_chat_template_cases.json"))
    parser.add_argument("--logits-fixture", default=os.path.join(FIXTURES, "smollm2_logits_reference.json"))
    parser.add_argument("--output", default=OUTPUT)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    gguf_path = os.path.join(args.model_dir, GGUF)
    meta = gguf_metadata(gguf_path)
    tok = build_tokenizer(meta)
    n_tok = verify_tokenizer(tok, args.tokenizer_cases)
    n_tpl = verify_chat_template(meta["chat_template"], args.template_cases)
    print(f"tokenizer: {n_tok} llama.cpp cases match; chat template: {n_tpl} cases match")

    ref = json.load(open(args.reference, encoding="utf-8"))
    cfg = dict(ref["reward_defaults"])
    problems = json.load(open(args.champ, encoding="utf-8"))["problems"]

    model = transformers.AutoModelForCausalLM.from_pretrained(args.model_dir, gguf_file=GGUF, dtype=torch.float32)
    model.eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())

    scorer = Scorer(model, tok, meta["chat_template"], ref, cfg)
    logits_diff = check_against_logits_fixture(scorer, args.logits_fixture)
    print(f"log-probs vs {os.path.basename(args.logits_fixture)}: max |diff| = {logits_diff:.2e}")
    cases, search = make_cases(problems, scorer)
    names = [c["name"] for c in cases]
    assert len(set(names)) == len(names)

    out_cases = []
    for case in cases:
        res = scorer.score(case["question"], case["solution"], case["completion"])
        e = res["expected"]
        print(
            f"{case['name']:32s} reward={e['reward']:+.4f} lp_mean={e['solution_logprob_mean']:+.4f} "
            f"lp_min={e['solution_logprob_min']:+.4f} kl_mean={e['thought_kl_mean']:+.4f} "
            f"kl_max={e['thought_kl_max']:+.4f} pen={e['match_penalty']} sol={e['solution_tokens']} "
            f"th={e['thought_tokens']} trim={e['thought_trim']}/{e['solution_trim']} "
            f"T={e['teacher_sequence_length']} S={e['student_sequence_length']}"
        )
        out_cases.append({**case, "expected": e, "debug": res["debug"]})

    by = {c["name"]: c["expected"] for c in out_cases}
    states, contra = by["contradiction_pair_states"], by["contradiction_pair_contradicts"]
    contradiction_lower = contra["reward"] < states["reward"]
    contradiction_lower_lp = contra["solution_logprob_mean"] < states["solution_logprob_mean"]
    contradiction_lower_kl = contra["thought_kl_mean"] < states["thought_kl_mean"]
    print(
        f"contradicting explanation: lower reward: {contradiction_lower}, lower solution log-prob mean: "
        f"{contradiction_lower_lp}, lower thought KL mean: {contradiction_lower_kl}"
    )

    fixture = {
        "generator": "scripts/reference/make_reward_fixtures.py",
        "note": (
            "Independent PyTorch/transformers computation of the RLT reward (SakanaAI/RLT "
            "TeacherKLBasedReward semantics, see shared/DESIGN.md 'The RLT reward') with "
            "SmolLM2-135M-Instruct as teacher and student: the Q4_1 GGUF dequantized to f32 by "
            "transformers, one full f32 forward per sequence (no KV cache). Tokenizer rebuilt with "
            "the `tokenizers` library from the GGUF metadata and checked against llama.cpp ids; "
            "chat template rendered with jinja2 (trim_blocks, lstrip_blocks) and transformers' "
            "continue_final_message cut. Log-probs are f32 log_softmax(logits/tau) of the actual "
            "next token; reductions in float64. Per-token arrays are rounded to 6 decimals; the "
            "scalar outputs are not. Spans are [start, end) token offsets from the end of the "
            "sequence (they index the T-1 log-probs directly). An empty span reduces to the "
            "reference's nan_to_num values (penalty on the log-prob side, -penalty on the KL side)."
        ),
        "tolerances_from_issue_4": {
            "token_counts": "exact",
            "solution_logprob_mean": 1e-2,
            "thought_kl_mean": 1e-2,
            "reward": 2e-2,
        },
        "model": {"file": GGUF, "sha256": sha256_of(gguf_path), "dtype": "float32"},
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": importlib.metadata.version("tokenizers"),
            "gguf": importlib.metadata.version("gguf"),
            "jinja2": importlib.metadata.version("jinja2"),
            "numpy": np.__version__,
        },
        "config": {
            **cfg,
            "teacher_system": ref["teacher_system"],
            "student_system": ref["student_system"],
            "tags": ref["tags"],
            "teacher_prompt_suffix_masked_out": ref["tags"]["begin_explanation"] + ref["tags"]["pad"],
        },
        "checks": {
            "tokenizer_cases_matched": n_tok,
            "chat_template_cases_matched": n_tpl,
            "logprobs_vs_smollm2_logits_reference_max_abs_diff": logits_diff,
            "contradiction_gets_lower_reward": contradiction_lower,
            "contradiction_gets_lower_solution_logprob_mean": contradiction_lower_lp,
            "contradiction_gets_lower_thought_kl_mean": contradiction_lower_kl,
        },
        "boundary_candidate_search": search,
        "cases": out_cases,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {args.output} ({os.path.getsize(args.output)} bytes)")


if __name__ == "__main__":
    main()
