//! The decoder's batching, cache and training paths agree with its plain
//! full-sequence forward on the real model.

mod common;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarMap;
use rlt_engine::load::load_trainable;
use rlt_engine::logprobs::{batch_logprobs, sequence_logprobs, token_logprobs};

fn ids(text: &str) -> Vec<u32> {
    common::f32_model().tokenizer.encode(text).unwrap()
}

fn row(t: &[u32]) -> Tensor {
    Tensor::new(t, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn left_padded_rows_match_their_unpadded_forward() {
    let m = &common::f32_model().model;
    let a = ids("<|im_start|>user\nWhat is 12 * 7?<|im_end|>\n<|im_start|>assistant\n12 * 7 = 84");
    let b = ids("Short one.");
    let alone_a = m.forward(&row(&a), &[0]).unwrap().squeeze(0).unwrap();
    let alone_b = m.forward(&row(&b), &[0]).unwrap().squeeze(0).unwrap();
    let pad = a.len() - b.len();
    let mut padded_b = vec![0u32; pad];
    padded_b.extend(&b);
    let batch = Tensor::new(vec![a.clone(), padded_b], &Device::Cpu).unwrap();
    let out = m.forward(&batch, &[0, pad]).unwrap();
    assert!(max_abs_diff(&out.get(0).unwrap(), &alone_a) < 1e-3);
    let b_part = out.get(1).unwrap().narrow(0, pad, b.len()).unwrap();
    assert!(max_abs_diff(&b_part, &alone_b) < 1e-3);
    // Padding must change nothing only because it is masked: shifting the
    // positions instead would fail this.
    let unmasked = m.forward(&batch, &[0, 0]).unwrap().get(1).unwrap().narrow(0, pad, b.len()).unwrap();
    assert!(max_abs_diff(&unmasked, &alone_b) > 1e-2);
}

#[test]
fn incremental_decoding_matches_the_full_forward() {
    let m = &common::f32_model().model;
    let seq = ids("The quick brown fox jumps over the lazy dog. 3 + 4 = 7");
    let full = m.forward(&row(&seq), &[0]).unwrap().squeeze(0).unwrap();
    let mut cache = m.new_cache(vec![0]);
    let split = 5;
    let h = m.forward_cached(&row(&seq[..split]), &mut cache).unwrap();
    let mut steps = vec![m.logits(&h).unwrap().squeeze(0).unwrap()];
    for &t in &seq[split..] {
        let h = m.forward_cached(&row(&[t]), &mut cache).unwrap();
        steps.push(m.logits(&h).unwrap().squeeze(0).unwrap());
    }
    assert_eq!(cache.len(), seq.len());
    let stepped = Tensor::cat(&steps, 0).unwrap();
    assert!(max_abs_diff(&stepped, &full) < 1e-3);
}

#[test]
fn cache_rows_can_be_fanned_out_and_dropped() {
    let m = &common::f32_model().model;
    let prompt = ids("Once upon a time");
    let mut cache = m.new_cache(vec![0]);
    m.forward_cached(&row(&prompt), &mut cache).unwrap();
    let mut group = cache.select_rows(&[0, 0, 0]).unwrap();
    // Different next tokens per row, then keep rows 2 and 0 (reordered).
    let next = Tensor::new(&[[11u32], [22], [33]], &Device::Cpu).unwrap();
    m.forward_cached(&next, &mut group).unwrap();
    let mut kept = group.select_rows(&[2, 0]).unwrap();
    let h = m.forward_cached(&Tensor::new(&[[5u32], [5]], &Device::Cpu).unwrap(), &mut kept).unwrap();
    let got = m.logits(&h).unwrap().squeeze(1).unwrap();
    for (r, first) in [(0usize, 33u32), (1, 11)] {
        let mut s = prompt.clone();
        s.extend([first, 5]);
        let want = m.forward(&row(&s), &[0]).unwrap().squeeze(0).unwrap().get(s.len() - 1).unwrap();
        assert!(max_abs_diff(&got.get(r).unwrap(), &want) < 1e-3, "row {r}");
    }
    // The group shares the prompt's keys and values; a step of several
    // tokens copies them back into each row and goes on from there.
    let h = m.forward_cached(&Tensor::new(&[[7u32, 8], [9, 10]], &Device::Cpu).unwrap(), &mut kept).unwrap();
    let got = m.logits(&h.narrow(1, 1, 1).unwrap()).unwrap().squeeze(1).unwrap();
    for (r, tail) in [(0usize, [33u32, 5, 7, 8]), (1, [11, 5, 9, 10])] {
        let mut s = prompt.clone();
        s.extend(tail);
        let want = m.forward(&row(&s), &[0]).unwrap().squeeze(0).unwrap().get(s.len() - 1).unwrap();
        assert!(max_abs_diff(&got.get(r).unwrap(), &want) < 1e-3, "row {r} after a two-token step");
    }
}

#[test]
fn quantized_weights_stay_close_to_f32() {
    let f32m = &common::f32_model().model;
    let q8 = &common::q8_model().model;
    let seq = ids("<|im_start|>user\nName three primes.<|im_end|>\n<|im_start|>assistant\n2, 3 and 5.");
    let a = token_logprobs(f32m, std::slice::from_ref(&seq), 1.0).unwrap().remove(0);
    let b = token_logprobs(q8, std::slice::from_ref(&seq), 1.0).unwrap().remove(0);
    let mean_diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    // 8-bit activations (as in llama.cpp) cost a few hundredths of a nat.
    assert!(mean_diff < 0.1, "mean |Δ log-prob| {mean_diff}");
    for (x, y) in a.iter().zip(&b) {
        if *x > -0.1 {
            assert!(*y > -0.2, "a confident token lost confidence: {x} vs {y}");
        }
    }
    // and not identical: the quantized path is really used.
    assert!(mean_diff > 0.0);
}

#[test]
fn training_mode_matches_inference_and_has_gradients() {
    let (trainable, varmap): (_, VarMap) = load_trainable(&common::model_path(), &Device::Cpu).unwrap();
    let m = &trainable.model;
    let seq = ids("<|begin_of_thought|>2+2 is 4.<|end_of_thought|>");
    let input = row(&seq);
    let lp_train = batch_logprobs(m, &input, &[0], 0.7).unwrap();
    let lp_infer = batch_logprobs(&common::f32_model().model, &input, &[0], 0.7).unwrap();
    assert!(max_abs_diff(&lp_train, &lp_infer) < 1e-3);

    let loss = lp_train.mean_all().unwrap().neg().unwrap();
    let grads = loss.backward().unwrap();
    let vars = varmap.all_vars();
    assert!(vars.len() > 200);
    let with_grad = vars
        .iter()
        .filter(|v| {
            grads
                .get(v.as_tensor())
                .is_some_and(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0)
        })
        .count();
    // Every weight (embedding, norms, all projections) gets a gradient,
    // which fails if any op on the path lacks a backward pass.
    assert_eq!(with_grad, vars.len());
    let _ = (DType::F32, D::Minus1);
}

/// A long text scored in passes through the cache, with progress, gives
/// what one pass gives, in f32 and with quantized weights.
#[test]
fn chunked_scoring_matches_one_pass_and_reports_progress() {
    let text = "<|im_start|>user\nCount: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20.<|im_end|>\n".repeat(6);
    let seq = ids(&text);
    assert!(seq.len() > 200, "{}", seq.len());
    for (m, quantized) in [(&common::f32_model().model, false), (&common::q8_model().model, true)] {
        let what = if quantized { "quantized" } else { "f32" };
        let whole = token_logprobs(m, std::slice::from_ref(&seq), 0.7).unwrap().remove(0);
        // 64-token passes, the last one holding a single position with
        // nothing after it to score.
        let cut = &seq[..seq.len() - (seq.len() - 1) % 64];
        for (seq, chunk) in [(&seq[..], 64), (cut, 64)] {
            let mut seen = Vec::new();
            let lp = sequence_logprobs(m, seq, 0.7, chunk, |done, total| seen.push((done, total))).unwrap();
            assert_eq!(lp.len(), seq.len() - 1);
            let diffs: Vec<f32> = lp.iter().zip(&whole).map(|(a, b)| (a - b).abs()).collect();
            let worst = diffs.iter().copied().fold(0f32, f32::max);
            let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
            if quantized {
                // A last-bit change in attention can tip an activation's
                // 8-bit rounding, and a few positions then move by tenths.
                assert!(mean < 5e-3 && worst < 0.5, "{what}: chunked differs by {mean} on average, {worst} at most");
            } else {
                assert!(worst < 1e-3, "{what}: chunked differs by {worst}");
            }
            let total = seq.len() - 1;
            assert_eq!(seen.last(), Some(&(total, total)), "{what}");
            assert_eq!(seen.len(), seq.len().div_ceil(chunk), "{what}: one call per pass");
            assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{what}: progress goes forward");
        }
        // Passes of 0 positions mean 2, not a panic.
        let lp = sequence_logprobs(m, &seq[..9], 0.7, 0, |_, _| {}).unwrap();
        let worst = lp.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(lp.len() == 8 && worst < if quantized { 0.5 } else { 1e-3 }, "{what}: {worst}");
        // Short enough for one pass: exactly token_logprobs.
        let short = &seq[..50];
        let lp = sequence_logprobs(m, short, 0.7, 64, |_, _| {}).unwrap();
        assert_eq!(lp, token_logprobs(m, &[short.to_vec()], 0.7).unwrap().remove(0));
    }
}

#[test]
fn context_overflow_is_an_error() {
    let m = &common::f32_model().model;
    let context = m.config().max_position_embeddings;
    let too_long = vec![216u32; context + 1];
    let err = token_logprobs(m, &[too_long], 1.0).unwrap_err();
    assert!(matches!(err, rlt_engine::Error::ContextOverflow { .. }), "{err}");
    assert!(err.to_string().contains(&context.to_string()));
    assert!(token_logprobs(m, &[vec![1, 2]], 0.0).is_err());
    // 1/τ past f32's range gave NaN log-probs (null in JSON).
    let e = token_logprobs(m, &[vec![1, 2]], 1e-40).unwrap_err().to_string();
    assert!(e.contains("temperature must be a finite number >= 0.00001"), "{e}");
    assert!(token_logprobs(m, &[vec![1, 2]], 1e-5).unwrap()[0].iter().all(|lp| lp.is_finite()));
    assert!(token_logprobs(m, &[vec![1, 999_999]], 1.0).is_err());
}
