//! Chat templates against strings rendered by transformers'
//! `apply_chat_template` (tests/fixtures/smollm2_chat_template_cases.json,
//! made by scripts/reference/make_fixtures.py, and random conversations in
//! smollm2_chat_template_fuzz.jsonl, by make_fuzz_fixtures.py).

mod common;

use rlt_engine::chat_template::{ChatTemplate, Ending, Message, SpecialTokens};

#[derive(serde::Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    messages: Vec<Message>,
    add_generation_prompt: bool,
    continue_final_message: bool,
    template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    expected: String,
}

fn fixture() -> Fixture {
    let text = std::fs::read_to_string(common::fixture("smollm2_chat_template_cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn gguf_template() -> ChatTemplate {
    let gguf = rlt_engine::gguf::GgufFile::open(&common::model_path()).unwrap();
    let src = gguf.get_str("tokenizer.chat_template").unwrap();
    let special = SpecialTokens::default()
        .with("bos_token", Some("<|im_start|>".into()))
        .with("eos_token", Some("<|im_end|>".into()));
    ChatTemplate::new(src, special).unwrap()
}

#[derive(serde::Deserialize)]
struct Features {
    messages: Vec<Message>,
    special_tokens: SpecialTokens,
    cases: Vec<FeatureCase>,
}

#[derive(serde::Deserialize)]
struct FeatureCase {
    name: String,
    template: String,
    add_generation_prompt: bool,
    expected: Option<String>,
    error: Option<String>,
}

/// What chat templates in the wild use (filters, tests, loop variables,
/// namespaces, macros, break/continue, Python string and dict methods,
/// tojson, escaping, whitespace control), each rendered by transformers
/// or failing there; made by `scripts/reference/make_fuzz_fixtures.py`.
#[test]
fn template_features_render_like_transformers() {
    let text = std::fs::read_to_string(common::fixture("chat_template_features.json")).unwrap();
    let f: Features = serde_json::from_str(&text).unwrap();
    assert!(f.cases.len() >= 30);
    for case in &f.cases {
        let template = ChatTemplate::new(&case.template, f.special_tokens.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let ending = if case.add_generation_prompt { Ending::GenerationPrompt } else { Ending::Complete };
        let got = template.render(&f.messages, ending);
        match (&case.expected, &case.error) {
            (Some(want), _) => assert_eq!(got.as_deref().ok(), Some(want.as_str()), "{}: {got:?}", case.name),
            (None, Some(err)) => {
                let e = got.expect_err(&case.name).to_string();
                assert!(e.contains(err.as_str()), "{}: {e} should carry {err}", case.name);
            }
            (None, None) => panic!("{}: neither output nor error", case.name),
        }
    }
}

#[derive(serde::Deserialize)]
struct FuzzCase {
    messages: Vec<Message>,
    ending: String,
    expected: String,
}

/// 300 seeded random conversations (template syntax, special tokens and
/// whitespace of every kind in the contents, empty messages, all three
/// endings) rendered by transformers with the GGUF's template; made by
/// `scripts/reference/make_fuzz_fixtures.py`.
#[test]
fn renders_random_conversations_like_transformers() {
    let template = gguf_template();
    let text = std::fs::read_to_string(common::fixture("smollm2_chat_template_fuzz.jsonl")).unwrap();
    let cases: Vec<FuzzCase> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(cases.len(), 300);
    let mut continued = 0;
    for (i, case) in cases.iter().enumerate() {
        let ending = match case.ending.as_str() {
            "generation_prompt" => Ending::GenerationPrompt,
            "continue_final" => Ending::ContinueFinal,
            "complete" => Ending::Complete,
            other => panic!("unknown ending {other}"),
        };
        continued += usize::from(ending == Ending::ContinueFinal);
        let got = template.render(&case.messages, ending).unwrap();
        assert_eq!(got, case.expected, "case {i}: {:?}", case.messages);
    }
    assert!(continued > 50, "too few continued conversations: {continued}");
}

#[test]
fn renders_byte_identical_to_transformers() {
    let model_template = gguf_template();
    let fixture = fixture();
    assert!(fixture.cases.len() >= 8);
    for case in &fixture.cases {
        let own;
        let template = match &case.template {
            Some(src) => {
                let special = SpecialTokens::default()
                    .with("bos_token", case.bos_token.clone())
                    .with("eos_token", case.eos_token.clone());
                own = ChatTemplate::new(src, special).unwrap();
                &own
            }
            None => &model_template,
        };
        let ending = match (case.add_generation_prompt, case.continue_final_message) {
            (true, _) => Ending::GenerationPrompt,
            (_, true) => Ending::ContinueFinal,
            _ => Ending::Complete,
        };
        let got = template.render(&case.messages, ending).unwrap();
        assert_eq!(got, case.expected, "case {}", case.name);
    }
}

#[test]
fn continued_teacher_prompt_ends_right_after_the_prefix() {
    let t = gguf_template();
    let prefix = "<|begin_of_solution|>4<|end_of_solution|>\n\n<|begin_of_explanation|>\n\n";
    let text = t
        .render(&[Message::system("S"), Message::user("Q"), Message::assistant(prefix)], Ending::ContinueFinal)
        .unwrap();
    assert!(text.ends_with(&format!("<|im_start|>assistant\n{prefix}")), "{text:?}");
    assert!(!text.ends_with("<|im_end|>\n"));
    let complete =
        t.render(&[Message::system("S"), Message::user("Q"), Message::assistant(prefix)], Ending::Complete).unwrap();
    assert_eq!(complete, format!("{text}<|im_end|>\n"));
}

#[test]
fn template_errors_are_reported_not_panics() {
    let t = ChatTemplate::new("{{ raise_exception('no system role allowed') }}", SpecialTokens::default()).unwrap();
    let err = t.render(&[Message::user("x")], Ending::Complete).unwrap_err();
    assert!(err.to_string().contains("no system role allowed"), "{err}");
    assert!(ChatTemplate::new("{% for %}", SpecialTokens::default()).is_err());
    let gguf = gguf_template();
    assert!(gguf.render(&[Message::user("x")], Ending::ContinueFinal).is_err());
    assert!(gguf.render(&[], Ending::ContinueFinal).is_err());
}
