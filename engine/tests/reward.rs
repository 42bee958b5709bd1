//! The RLT reward against an independent PyTorch/transformers computation of
//! the reference semantics on the same f32 weights
//! (`tests/fixtures/rlt_reward_reference.json`, made by
//! `scripts/reference/make_reward_fixtures.py` on real CHAMP questions), plus
//! behaviour the method depends on.

mod common;

use rlt_engine::reward::{RewardModels, ScoreInput, find_span, score_batch, valid_subsequence};
use rlt_types::RewardConfig;
use serde_json::Value;

fn models() -> RewardModels<'static> {
    let m = common::f32_model();
    RewardModels { teacher: m, student: m }
}

fn input(question: &str, solution: &str, completion: &str) -> ScoreInput {
    ScoreInput { question: question.into(), solution: solution.into(), completion: completion.into() }
}

#[test]
fn matches_the_reference_implementation_on_champ() {
    let text = std::fs::read_to_string(common::fixture("rlt_reward_reference.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(fixture["model"]["sha256"], common::f32_model().sha256.as_str(), "fixture made on the same weights");
    let cases = fixture["cases"].as_array().unwrap();
    let inputs: Vec<ScoreInput> = cases
        .iter()
        .map(|c| {
            input(c["question"].as_str().unwrap(), c["solution"].as_str().unwrap(), c["completion"].as_str().unwrap())
        })
        .collect();
    let results = score_batch(&models(), &RewardConfig::default(), &inputs);
    assert_eq!(results.len(), cases.len());
    for (case, result) in cases.iter().zip(results) {
        let name = case["name"].as_str().unwrap();
        let got = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = &case["expected"];
        let f = |k: &str| want[k].as_f64().unwrap_or_else(|| panic!("{name}: {k}"));
        assert_eq!(got.solution_tokens as u64, want["solution_tokens"].as_u64().unwrap(), "{name}: solution tokens");
        assert_eq!(got.thought_tokens as u64, want["thought_tokens"].as_u64().unwrap(), "{name}: thought tokens");
        assert_eq!(got.match_penalty, f("match_penalty"), "{name}: penalty");
        // The issue allows 1e-2 on means and 2e-2 on the reward; f32 on both
        // sides lands within about 5e-5, so drift is caught long before that.
        for (key, value, tol) in [
            ("solution_logprob_mean", got.solution_logprob_mean, 1e-3),
            ("solution_logprob_min", got.solution_logprob_min, 2e-3),
            ("thought_kl_mean", got.thought_kl_mean, 1e-3),
            ("thought_kl_max", got.thought_kl_max, 2e-3),
            ("reward", got.reward, 2e-3),
        ] {
            assert!((value - f(key)).abs() < tol, "{name}: {key} = {value}, reference {}", f(key));
        }
        let want_kl: Vec<f64> = want["thought_kl"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(got.thought_kl.len(), want_kl.len(), "{name}");
        for (a, b) in got.thought_kl.iter().zip(&want_kl) {
            assert!((a - b).abs() < 5e-3, "{name}: per-token KL {a} vs {b}");
        }
        assert_eq!(got.solution_token_texts.len(), got.solution_logprobs.len());
        assert_eq!(got.thought_token_texts.len(), got.thought_kl.len());
    }
}

#[test]
fn missing_end_tag_costs_exactly_the_penalty() {
    let q = "Find 3^105+4^105 mod 11.";
    let s = "3^105+4^105 mod 11=(3^5)^21 + (4^5)^21 mod 11=1^21+1^21 mod 11=2.";
    let body = "Since 3^5 = 243 = 1 mod 11 and 4^5 = 1024 = 1 mod 11, the sum is 1 + 1 = 2.";
    let results = score_batch(
        &models(),
        &RewardConfig::default(),
        &[input(q, s, &format!("{body}<|end_of_explanation|>")), input(q, s, body)],
    );
    let (closed, open) = (results[0].as_ref().unwrap(), results[1].as_ref().unwrap());
    assert_eq!((closed.match_penalty, open.match_penalty), (0.0, -1.0));
    // The appended tag rebuilds the same text, so only the penalty differs.
    assert!((closed.reward - 1.0 - open.reward).abs() < 1e-4, "{} vs {}", closed.reward, open.reward);
    let cfg = RewardConfig { missing_end_tag_penalty: -5.0, ..RewardConfig::default() };
    let open5 = score_batch(&models(), &cfg, &[input(q, s, body)]).remove(0).unwrap();
    assert!((open5.reward - (open.reward - 4.0)).abs() < 1e-4, "the penalty is configurable");
}

#[test]
fn stating_the_solution_beats_contradicting_it() {
    let q = "Compute (3 + 4) * 5 - 6.";
    let s = "First, 3 + 4 = 7.\nThen, 7 * 5 = 35.\nFinally, 35 - 6 = 29.\nThe answer is 29.";
    let states =
        "First, 3 + 4 = 7.\n\nThen, 7 * 5 = 35.\n\nFinally, 35 - 6 = 29.\n\nThe answer is 29.<|end_of_explanation|>";
    let contradicts =
        "First, 3 + 4 = 8.\n\nThen, 8 * 5 = 40.\n\nFinally, 40 - 6 = 34.\n\nThe answer is 34.<|end_of_explanation|>";
    let r = score_batch(&models(), &RewardConfig::default(), &[input(q, s, states), input(q, s, contradicts)]);
    let (good, bad) = (r[0].as_ref().unwrap(), r[1].as_ref().unwrap());
    assert!(good.reward > bad.reward, "stating {} vs contradicting {}", good.reward, bad.reward);
    assert!(good.solution_logprob_mean > bad.solution_logprob_mean);
}

#[test]
fn bad_items_fail_alone() {
    let q = "What is 2 + 2?";
    let results = score_batch(
        &models(),
        &RewardConfig::default(),
        &[input(q, "", "x<|end_of_explanation|>"), input(q, "4", "Two and two make four.<|end_of_explanation|>")],
    );
    assert!(results[0].is_err());
    let ok = results[1].as_ref().unwrap();
    assert!(ok.reward.is_finite() && ok.solution_tokens == 1);
}

/// Deterministic pseudo-random streams for the property tests below.
fn lcg(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    *seed >> 33
}

#[test]
fn span_finder_properties() {
    let mut seed = 7u64;
    for _ in 0..3000 {
        let len = (lcg(&mut seed) % 40) as usize;
        // A small alphabet makes repeated and overlapping occurrences common.
        let seq: Vec<u32> = (0..len).map(|_| (lcg(&mut seed) % 4) as u32).collect();
        let sub_len = 1 + (lcg(&mut seed) % 5) as usize;
        let sub: Vec<u32> = (0..sub_len).map(|_| (lcg(&mut seed) % 4) as u32).collect();
        let occurrences: Vec<usize> = (0..=seq.len().saturating_sub(sub.len()))
            .filter(|&i| seq.len() >= sub.len() && seq[i..i + sub.len()] == sub[..])
            .collect();
        let first = find_span(&seq, &sub, false);
        let last = find_span(&seq, &sub, true);
        match (occurrences.first(), occurrences.last()) {
            (Some(&f), Some(&l)) => {
                assert_eq!(first, Some(f..f + sub.len()));
                assert_eq!(last, Some(l..l + sub.len()));
            }
            _ => assert_eq!((first, last), (None, None)),
        }
        // A found trimmed sub-range really occurs and keeps all but at most
        // one token at each end, preferring the fullest candidate.
        match valid_subsequence(&sub, &seq) {
            Some(r) => {
                assert!(find_span(&seq, &sub[r.clone()], false).is_some());
                assert!(r.start <= 1 && sub.len() - r.end <= 1 && !r.is_empty());
                if !occurrences.is_empty() {
                    assert_eq!(r, 0..sub.len(), "the full sub wins when it occurs");
                }
            }
            None => assert!(occurrences.is_empty()),
        }
        // Any window cut from seq is found at or before where it was cut.
        if len > 0 {
            let a = (lcg(&mut seed) as usize) % len;
            let b = a + 1 + (lcg(&mut seed) as usize) % (len - a);
            let span = find_span(&seq, &seq[a..b], false).unwrap();
            assert!(span.start <= a && seq[span.clone()] == seq[a..b]);
            assert!(find_span(&seq, &seq[a..b], true).unwrap().start >= a);
        }
    }
}
