//! Seeded batched generation on the real model.

mod common;

use rlt_engine::chat_template::{Ending, Message};
use rlt_engine::generate::{FinishReason, GenerateParams, generate};
use rlt_engine::logprobs::token_logprobs;

fn prompt(question: &str) -> Vec<u32> {
    let lm = common::f32_model();
    let text = lm.chat_template().unwrap().render(&[Message::user(question)], Ending::GenerationPrompt).unwrap();
    lm.tokenizer.encode(&text).unwrap()
}

#[test]
fn same_seed_same_text_and_logprobs_match_teacher_forcing() {
    let lm = common::f32_model();
    let prompts = vec![prompt("What is 2+2?"), prompt("Name a colour.")];
    let params =
        GenerateParams { n: 3, max_new_tokens: 12, temperature: 0.7, top_p: 0.95, seed: 42, ..Default::default() };
    let mut events = 0;
    let a = generate(&lm.model, &lm.tokenizer, &prompts, &params, |_| events += 1).unwrap();
    assert_eq!(a.len(), 6);
    assert_eq!(events, a.iter().map(|c| c.token_ids.len()).sum::<usize>());
    // Same seed, different batching: identical completions.
    let b = generate(&lm.model, &lm.tokenizer, &prompts, &GenerateParams { max_batch: 2, ..params.clone() }, |_| {})
        .unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.prompt_index, x.sample_index), (y.prompt_index, y.sample_index));
        assert_eq!(x.token_ids, y.token_ids);
        assert_eq!(x.text, y.text);
    }
    // Different seed: different completions somewhere.
    let c =
        generate(&lm.model, &lm.tokenizer, &prompts, &GenerateParams { seed: 43, ..params.clone() }, |_| {}).unwrap();
    assert!(a.iter().zip(&c).any(|(x, y)| x.token_ids != y.token_ids));
    // Samples of one prompt differ from each other.
    assert!(a[0].token_ids != a[1].token_ids || a[1].token_ids != a[2].token_ids);

    for comp in &a {
        assert!(comp.token_ids.len() <= 12);
        assert_eq!(comp.logprobs.len(), comp.token_ids.len());
        match comp.finish_reason {
            FinishReason::Length => assert_eq!(comp.token_ids.len(), 12),
            FinishReason::EndOfText => assert!(lm.tokenizer.stop_ids().contains(comp.token_ids.last().unwrap())),
            FinishReason::StopString => panic!("no stop strings were given"),
        }
        // The reported log-probs are the policy's at τ: teacher forcing
        // the completion must give the same numbers.
        let mut full = prompts[comp.prompt_index].clone();
        full.extend(&comp.token_ids);
        let tf = token_logprobs(&lm.model, &[full], 0.7).unwrap().remove(0);
        let tail = &tf[tf.len() - comp.token_ids.len()..];
        for (g, t) in comp.logprobs.iter().zip(tail) {
            assert!((g - t).abs() < 2e-3, "{g} vs {t}");
        }
    }
}

#[test]
fn greedy_is_deterministic_and_ends_its_turn() {
    let lm = common::f32_model();
    let params = GenerateParams { n: 2, max_new_tokens: 64, temperature: 0.0, ..Default::default() };
    let out = generate(&lm.model, &lm.tokenizer, &[prompt("Say hello.")], &params, |_| {}).unwrap();
    assert_eq!(out[0].token_ids, out[1].token_ids);
    assert_eq!(out[0].finish_reason, FinishReason::EndOfText, "{:?}", out[0].text);
    assert!(!out[0].text.contains("<|im_end|>"));
    assert!(!out[0].text.trim().is_empty());

    // A temperature too small for f32 (1/τ overflows) decodes greedily,
    // as in vLLM, instead of sampling from NaNs.
    let tiny = GenerateParams { n: 1, temperature: 1e-40, ..params };
    let cold = generate(&lm.model, &lm.tokenizer, &[prompt("Say hello.")], &tiny, |_| {}).unwrap();
    assert_eq!(cold[0].token_ids, out[0].token_ids);
    assert!(cold[0].logprobs.iter().all(|lp| lp.is_finite()));
}

#[test]
fn stop_strings_cut_the_text() {
    let lm = common::f32_model();
    let base = GenerateParams { n: 1, max_new_tokens: 40, temperature: 0.0, ..Default::default() };
    let free = generate(&lm.model, &lm.tokenizer, &[prompt("Count from 1 to 20.")], &base, |_| {}).unwrap().remove(0);
    // Stop on a word the free run produced after its start.
    let words: Vec<&str> = free.text.split_whitespace().collect();
    assert!(words.len() > 4, "{:?}", free.text);
    let stop = words[3].to_string();
    let at = free.text.find(&stop).unwrap();
    let cut = generate(
        &lm.model,
        &lm.tokenizer,
        &[prompt("Count from 1 to 20.")],
        &GenerateParams { stop: vec![stop.clone()], ..base.clone() },
        |_| {},
    )
    .unwrap()
    .remove(0);
    assert_eq!(cut.finish_reason, FinishReason::StopString);
    assert_eq!(cut.text, free.text[..at]);
    let kept = generate(
        &lm.model,
        &lm.tokenizer,
        &[prompt("Count from 1 to 20.")],
        &GenerateParams { stop: vec![stop.clone()], include_stop_str: true, ..base },
        |_| {},
    )
    .unwrap()
    .remove(0);
    assert_eq!(kept.text, free.text[..at + stop.len()]);
    assert!(kept.token_ids.len() < free.token_ids.len());
}

#[test]
fn quantized_model_generates_too() {
    let lm = common::q8_model();
    // Prompts of several lengths (one of teacher-prompt size): the row's
    // own keys then start at different offsets in the attention's runs of
    // keys.
    let long = "Explain, step by step, why the sum of the first n odd numbers is n squared. ".repeat(5);
    let questions = ["Hi!", "Name a prime.", "What is 2+2?", "Say yes or no, please.", long.as_str()];
    let lens: std::collections::BTreeSet<usize> = questions.iter().map(|q| prompt(q).len() % 8).collect();
    assert!(lens.len() >= 3, "prompt lengths mod 8: {lens:?}");
    for q in questions {
        // Nine rows: enough for a decoding step to run as independent
        // passes over parts of the group (see `cpu::rows_per_part`), of
        // unequal size.
        let params = GenerateParams { n: 9, max_new_tokens: 8, seed: 5, ..Default::default() };
        let out = generate(&lm.model, &lm.tokenizer, &[prompt(q)], &params, |_| {}).unwrap();
        assert_eq!(out.len(), 9);
        assert!(out.iter().all(|c| !c.token_ids.is_empty()));
        // The 8-bit kernels and the attention give a row the same numbers
        // alone as in a batch (where the prompt's keys are shared), so a
        // group decoded together is the group decoded one by one.
        let alone = generate(
            &lm.model,
            &lm.tokenizer,
            &[prompt(q)],
            &GenerateParams { max_batch: 1, ..params.clone() },
            |_| {},
        )
        .unwrap();
        for (x, y) in out.iter().zip(&alone) {
            assert_eq!(x.token_ids, y.token_ids, "{q}");
            assert_eq!(x.logprobs, y.logprobs, "{q}");
        }
    }
}

#[test]
fn bad_parameters_are_clear_errors() {
    let lm = common::f32_model();
    let p = vec![prompt("x")];
    let run = |params: GenerateParams| generate(&lm.model, &lm.tokenizer, &p, &params, |_| {}).unwrap_err().to_string();
    assert!(run(GenerateParams { temperature: -1.0, ..Default::default() }).contains("temperature"));
    assert!(run(GenerateParams { top_p: 0.0, ..Default::default() }).contains("top_p"));
    assert!(run(GenerateParams { n: 0, ..Default::default() }).contains("n must"));
    // A typo'd n is refused before it fills memory.
    assert!(run(GenerateParams { n: 1_000_000_000, ..Default::default() }).contains("n must be at most 4096"));
    assert!(run(GenerateParams { max_new_tokens: 0, ..Default::default() }).contains("max_new_tokens must"));
    assert!(run(GenerateParams { stop: vec![String::new()], ..Default::default() }).contains("stop"));
    let context = lm.model.config().max_position_embeddings;
    let long = vec![vec![216u32; context]];
    let err = generate(&lm.model, &lm.tokenizer, &long, &GenerateParams::default(), |_| {}).unwrap_err();
    assert!(matches!(err, rlt_engine::Error::ContextOverflow { .. }), "{err}");
}
