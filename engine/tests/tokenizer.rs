//! The GGUF-built tokenizer against llama.cpp's ids for the same file.

mod common;

use rlt_engine::gguf::GgufFile;
use rlt_engine::tokenizer::Tokenizer;

fn tokenizer() -> Tokenizer {
    let gguf = GgufFile::open(&common::model_path()).unwrap();
    Tokenizer::from_gguf(&gguf).unwrap()
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    add_bos: bool,
}

#[test]
fn reproduces_llama_cpp_ids_and_decodes_back() {
    let tok = tokenizer();
    let text = std::fs::read_to_string(common::fixture("smollm2_tokenizer_cases.jsonl")).unwrap();
    let cases: Vec<Case> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(cases.len(), 22);
    for case in &cases {
        let mut ids = Vec::new();
        if case.add_bos {
            ids.push(tok.bos_token_id().expect("bos"));
        }
        ids.extend(tok.encode(&case.text).unwrap());
        assert_eq!(ids, case.ids, "ids of {:?}", case.text);
        let body = if case.add_bos { &ids[1..] } else { &ids[..] };
        assert_eq!(tok.decode(body).unwrap(), case.text, "decode of {:?}", case.text);
    }
}

#[derive(serde::Deserialize)]
struct FuzzCase {
    /// The pre-tokenizer, in the fixture of several.
    #[serde(default)]
    pre: String,
    text: String,
    ids: Vec<u32>,
}

/// Every case encodes to llama.cpp's ids and decodes back to its text.
fn assert_reproduces(tok: &Tokenizer, cases: &[&FuzzCase], what: &str) {
    let wrong: Vec<&str> = cases
        .iter()
        .filter(|c| tok.encode(&c.text).unwrap() != c.ids || tok.decode(&c.ids).unwrap() != c.text)
        .map(|c| c.text.as_str())
        .collect();
    assert!(
        wrong.is_empty(),
        "{what}: {} of {} differ from llama.cpp, e.g. {:?}",
        wrong.len(),
        cases.len(),
        &wrong[..wrong.len().min(5)]
    );
}

fn fuzz_cases(fixture: &str) -> Vec<FuzzCase> {
    let text = std::fs::read_to_string(common::fixture(fixture)).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// 600 seeded random texts (pre-tokenizer stress pieces and random code
/// points from many scripts) and llama.cpp's ids for them, made by
/// `scripts/reference/make_fuzz_fixtures.py`.
#[test]
fn reproduces_llama_cpp_on_random_texts() {
    let cases = fuzz_cases("smollm2_tokenizer_fuzz.jsonl");
    assert_eq!(cases.len(), 600);
    assert_reproduces(&tokenizer(), &cases.iter().collect::<Vec<_>>(), "smollm");
}

/// Qwen2's and Llama 3's pre-tokenizers (the regexes a Qwen2.5 or Llama 3
/// GGUF names) against llama.cpp's own: one trained byte-level BPE whose
/// merges only apply where both split alike, 300 random texts each
/// (`scripts/reference/make_pretokenizer_fixtures.py`).
#[test]
fn qwen2_and_llama3_pre_tokenizers_reproduce_llama_cpp() {
    let cases = fuzz_cases("pretokenizer_cases.jsonl");
    for pre in ["qwen2", "llama-bpe"] {
        let gguf = GgufFile::open(&common::fixture(&format!("tokenizer_{pre}.gguf"))).unwrap();
        let mine: Vec<&FuzzCase> = cases.iter().filter(|c| c.pre == pre).collect();
        assert_eq!(mine.len(), 300);
        assert_reproduces(&Tokenizer::from_gguf(&gguf).unwrap(), &mine, pre);
    }
    // The two really split differently: digits one by one against runs of
    // up to three.
    let ids = |pre: &str| {
        let gguf = GgufFile::open(&common::fixture(&format!("tokenizer_{pre}.gguf"))).unwrap();
        Tokenizer::from_gguf(&gguf).unwrap().encode("x = 123456").unwrap()
    };
    assert!(ids("qwen2").len() > ids("llama-bpe").len());
}

#[test]
fn chat_tokens_are_single_ids_and_rlt_tags_are_text() {
    let tok = tokenizer();
    assert_eq!(tok.encode("<|im_start|>").unwrap(), vec![1]);
    assert_eq!(tok.encode("<|im_end|>").unwrap(), vec![2]);
    for tag in [
        "<|begin_of_thought|>",
        "<|end_of_thought|>",
        "<|begin_of_solution|>",
        "<|end_of_solution|>",
        "<|begin_of_explanation|>",
        "<|end_of_explanation|>",
    ] {
        let ids = tok.encode(tag).unwrap();
        assert!(ids.len() > 3, "{tag} should be plain text, got {ids:?}");
        assert!(!ids.contains(&1) && !ids.contains(&2));
        assert_eq!(tok.decode(&ids).unwrap(), tag);
    }
    // <|im_end|> (2) ends a turn; generation stops on it.
    assert!(tok.stop_ids().contains(&2));
    assert_eq!(tok.eos_token(), Some("<|im_end|>"));
}

#[test]
fn digits_split_one_by_one_even_after_whitespace_runs() {
    let tok = tokenizer();
    // " 2024" is a space token then four single digits, never a merged number.
    let ids = tok.encode("year 2024").unwrap();
    let digits: Vec<String> = ids.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
    assert_eq!(&digits[digits.len() - 4..], ["2", "0", "2", "4"], "{digits:?}");
    // Whitespace runs before a digit: the run stays one token, the digit another.
    for text in ["a\n\n\n7", "x   9", "\t\t3", "a \n 5", "1\r\n2"] {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text);
        let last = tok.id_to_token(*ids.last().unwrap()).unwrap();
        assert_eq!(last.len(), 1, "{text:?} -> {ids:?}");
    }
}

#[test]
fn round_trips_awkward_text() {
    let tok = tokenizer();
    for text in [
        "",
        " ",
        "\u{0}",
        "  leading and trailing  ",
        "tabs\tand\u{a0}nbsp and zero\u{200b}width",
        "ℝ^n → ℂ, ∀ε>0 ∃δ",
        "日本語のテキストと한국어",
        "<|im_start|>assistant\n<|begin_of_explanation|>\n\n",
        "<|im_start|><|im_end|><|im_start|>",
        "<|im_start",
        "emoji sequence 👩‍👩‍👧 and flags 🇫🇷",
        "\\begin{align} x &= 1 \\\\ y &= 2 \\end{align}",
    ] {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text, "{text:?} -> {ids:?}");
    }
    assert!(tok.encode("").unwrap().is_empty());
    // A partial special token is plain text.
    assert!(!tok.encode("<|im_start").unwrap().contains(&1));
    assert_eq!(tok.encode("<|im_start|><|im_end|><|im_start|>").unwrap(), vec![1, 2, 1]);
}

#[test]
fn vocabulary_matches_the_model() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.id_to_token(0).as_deref(), Some("<|endoftext|>"));
}
