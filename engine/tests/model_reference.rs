//! f32 logits against PyTorch/transformers on the same GGUF
//! (tests/fixtures/smollm2_logits_reference.json, made by
//! scripts/reference/make_fixtures.py), within 1e-3.

mod common;

use candle_core::{Device, Tensor};
use rlt_engine::logprobs::token_logprobs;

use common::{Position, assert_close, check_logit_rows, check_next_logprobs};

const TOL: f32 = 1e-3;

#[derive(serde::Deserialize)]
struct Fixture {
    probe_ids: Vec<usize>,
    slice: (usize, usize),
    sequences: Vec<Sequence>,
}

#[derive(serde::Deserialize)]
struct Sequence {
    name: String,
    ids: Vec<u32>,
    positions: Vec<Position>,
    slices: std::collections::HashMap<String, Vec<f32>>,
}

fn fixture() -> Fixture {
    let text = std::fs::read_to_string(common::fixture("smollm2_logits_reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn logits_of(ids: &[u32]) -> Vec<Vec<f32>> {
    let m = &common::f32_model().model;
    let input = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    m.forward(&input, &[0]).unwrap().squeeze(0).unwrap().to_vec2().unwrap()
}

#[test]
fn f32_logits_match_transformers() {
    let fx = fixture();
    for seq in &fx.sequences {
        let logits = logits_of(&seq.ids);
        assert_eq!(logits.len(), seq.ids.len());
        check_logit_rows(&logits, &seq.positions, &fx.probe_ids, TOL, &seq.name);
        for (pos, values) in &seq.slices {
            let row = &logits[pos.parse::<usize>().unwrap()];
            for (i, &v) in values.iter().enumerate() {
                assert_close(row[fx.slice.0 + i], v, TOL, &format!("{} pos {pos} slice {i}", seq.name));
            }
        }
    }
}

#[test]
fn teacher_forced_logprobs_match_transformers() {
    let fx = fixture();
    let m = &common::f32_model().model;
    let seqs: Vec<Vec<u32>> = fx.sequences.iter().map(|s| s.ids.clone()).collect();
    // Batched together: the padded rows must give what each gives alone.
    for (temp, t07) in [(1.0, false), (0.7, true)] {
        let lps = token_logprobs(m, &seqs, temp).unwrap();
        for (seq, lp) in fx.sequences.iter().zip(&lps) {
            assert_eq!(lp.len(), seq.ids.len() - 1, "{}", seq.name);
            check_next_logprobs(lp, &seq.positions, t07, TOL, &seq.name);
        }
    }
}
