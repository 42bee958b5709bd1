//! The RLT reward: how much a teacher's explanation helps a student predict
//! the known solution, minus how unnatural the explanation is to the student
//! (Cetin, Zhao, Tang 2025, "Reinforcement Learning Teachers of Test Time
//! Scaling", §3). Everything here follows the reference implementation
//! (SakanaAI/RLT, `TeacherKLBasedReward`) token for token:
//!
//! 1. `comp = "<|begin_of_explanation|>\n\n" + completion`; the thought is the
//!    first non-greedy `begin…end` match. Without an end tag the match
//!    penalty applies and the end tag is appended.
//! 2. The student sees `<|begin_of_thought|>{thought}<|end_of_thought|>\n\n
//!    <|begin_of_solution|>{solution}<|end_of_solution|>` as a complete
//!    assistant turn after its own system prompt and the question.
//! 3. Spans are found by token-subsequence search, allowing the thought to
//!    lose its first and/or last token where a tag merged with it.
//! 4. Log-probs are `log_softmax(logits / τ)` of each actual next token.
//! 5. `reward = c₀·mean(lp) + c₁·min(lp) − (k₀·mean(kl) + k₁·max(kl)) + penalty`,
//!    with `lp` the student's log-probs on the solution and
//!    `kl = lp_teacher − lp_student` on the thought.

use std::ops::Range;

use rlt_types::{RewardConfig, ScoreResult};

use crate::chat_template::{ChatTemplate, Ending, Message};
use crate::load::LoadedModel;
use crate::logprobs::token_logprobs;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// One explanation to score.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreInput {
    pub question: String,
    pub solution: String,
    /// What the teacher wrote after `<|begin_of_explanation|>\n\n`.
    pub completion: String,
}

/// The teacher prompt: the teacher's chat template over the teacher system
/// prompt, the question, and an assistant turn holding the solution and the
/// opened explanation, left open for the teacher to continue.
pub fn teacher_prompt(template: &ChatTemplate, cfg: &RewardConfig, question: &str, solution: &str) -> Result<String> {
    let t = &cfg.tags;
    let assistant =
        format!("{}{solution}{}{}{}{}", t.begin_solution, t.end_solution, t.pad, t.begin_explanation, t.pad);
    template.render(
        &[Message::system(&cfg.teacher_system), Message::user(question), Message::assistant(assistant)],
        Ending::ContinueFinal,
    )
}

/// The student chat: a complete turn with the thought and the solution.
pub fn student_chat(
    template: &ChatTemplate,
    cfg: &RewardConfig,
    question: &str,
    thought: &str,
    solution: &str,
) -> Result<String> {
    let t = &cfg.tags;
    let assistant = format!(
        "{}{thought}{}{}{}{solution}{}",
        t.begin_thought, t.end_thought, t.pad, t.begin_solution, t.end_solution
    );
    template.render(
        &[Message::system(&cfg.student_system), Message::user(question), Message::assistant(assistant)],
        Ending::Complete,
    )
}

/// The explanation as the reward sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedCompletion {
    /// `begin tag + pad + completion`, plus an end tag if it had none.
    pub comp: String,
    /// Text between the first begin tag and the next end tag (with the
    /// leading pad).
    pub thought: String,
    /// Byte range of the thought in `comp`.
    pub thought_range: Range<usize>,
    /// The missing-end-tag penalty, or 0.
    pub match_penalty: f64,
}

/// Step 1: find the thought, appending the end tag (and taking the penalty)
/// when the teacher never closed its explanation.
pub fn parse_completion(cfg: &RewardConfig, completion: &str) -> ParsedCompletion {
    let (begin, end) = (&cfg.tags.begin_explanation, &cfg.tags.end_explanation);
    let mut comp = format!("{begin}{}{completion}", cfg.tags.pad);
    let mut match_penalty = 0.0;
    let mut range = first_match(&comp, begin, end);
    if range.is_none() {
        match_penalty = cfg.missing_end_tag_penalty;
        comp.push_str(end);
        range = first_match(&comp, begin, end);
    }
    // comp starts with the begin tag and now ends with the end tag.
    let thought_range = range.expect("comp is wrapped in both tags");
    ParsedCompletion { thought: comp[thought_range.clone()].to_owned(), comp, thought_range, match_penalty }
}

/// The group of `begin(.*?)end` (dot matches newline) at its first match.
fn first_match(text: &str, begin: &str, end: &str) -> Option<Range<usize>> {
    let start = text.find(begin)? + begin.len();
    let len = text[start..].find(end)?;
    Some(start..start + len)
}

/// `sub` itself, or `sub` without its first token, without its last, or
/// without both, whichever first occurs in `seq`: a tag can merge with the
/// token at a boundary. Returns the sub-range of `sub` that was found.
pub fn valid_subsequence(sub: &[u32], seq: &[u32]) -> Option<Range<usize>> {
    let n = sub.len();
    let candidates = [(0, n, true), (1, n, n > 1), (0, n.saturating_sub(1), n > 1), (1, n.saturating_sub(1), n > 2)];
    candidates
        .into_iter()
        .filter(|&(_, _, allowed)| allowed)
        .map(|(start, end, _)| start..end)
        .find(|r| find_span(seq, &sub[r.clone()], false).is_some())
}

/// Where `sub` occurs in `seq`: the first occurrence, or the last with
/// `last`. An empty `sub` never matches.
pub fn find_span(seq: &[u32], sub: &[u32], last: bool) -> Option<Range<usize>> {
    if sub.is_empty() || sub.len() > seq.len() {
        return None;
    }
    let hit = |&i: &usize| seq[i..i + sub.len()] == *sub;
    let starts = 0..=seq.len() - sub.len();
    let start = if last { starts.rev().find(hit) } else { starts.clone().find(hit) }?;
    Some(start..start + sub.len())
}

/// Token-level layout of one item, before any model runs.
#[derive(Clone, Debug)]
pub struct PreparedItem {
    pub match_penalty: f64,
    pub teacher_ids: Vec<u32>,
    pub student_ids: Vec<u32>,
    /// Token ranges (absolute) in the teacher and student sequences.
    pub teacher_thought: Range<usize>,
    pub student_thought: Range<usize>,
    pub student_solution: Range<usize>,
}

/// The models the reward needs; they may be one and the same.
pub struct RewardModels<'a> {
    pub teacher: &'a LoadedModel,
    pub student: &'a LoadedModel,
}

impl RewardModels<'_> {
    /// The KL compares the two models token by token, so the thought must be
    /// tokenized identically on both sides. Different models of one family
    /// (Qwen2.5-7B teacher, Qwen2.5-1.5B student) share a vocabulary; others
    /// are refused up front.
    pub fn check_compatible(&self) -> Result<()> {
        let (t, s) = (&self.teacher.tokenizer, &self.student.tokenizer);
        let probe = "Step 1: 12 × 7 = 84, so x² − 3x + 2 = 0 ⇒ x ∈ {1, 2}.\n\n";
        if t.vocab_size() != s.vocab_size() || t.encode(probe)? != s.encode(probe)? {
            return Err(Error::InvalidInput(
                "the teacher and student tokenizers differ, so the thought KL cannot be computed token by token; \
                 use models that share a tokenizer (e.g. one model family)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Steps 1–3 for one item: build both sequences and locate the spans.
pub fn prepare(models: &RewardModels<'_>, cfg: &RewardConfig, input: &ScoreInput) -> Result<PreparedItem> {
    if input.solution.is_empty() {
        return Err(Error::InvalidInput("the solution is empty".into()));
    }
    let tok = &models.teacher.tokenizer;
    let parsed = parse_completion(cfg, &input.completion);
    let prompt = teacher_prefix(models.teacher, cfg, input)?;

    // The thought is located in the completion's own tokens, as an offset
    // from its end, which carries over to the tail of the full teacher
    // sequence (prompt and completion tokenized together).
    let comp_ids = tok.encode(&parsed.comp)?;
    let mut thought_ids = tok.encode(&parsed.thought)?;
    if let Some(r) = valid_subsequence(&thought_ids, &comp_ids) {
        let thought_ids = &thought_ids[r];
        let span = find_span(&comp_ids, thought_ids, false).expect("valid_subsequence found it");
        let teacher_ids = tok.encode(&format!("{prompt}{}", parsed.comp))?;
        return finish_prepare(
            models,
            cfg,
            input,
            &parsed.thought,
            thought_ids,
            teacher_ids,
            comp_ids.len() - span.start,
            parsed.match_penalty,
        );
    }
    // The reference's last resort: drop trailing thought tokens until they
    // occur in a completion rebuilt from them. It is reached when the thought
    // is a single token that merges with a tag (an empty explanation: just
    // the pad), and then ends with an empty thought.
    while !thought_ids.is_empty() {
        thought_ids.pop();
        let shortened = tok.decode(&thought_ids)?;
        let comp = format!("{}{shortened}{}", cfg.tags.begin_explanation, cfg.tags.end_explanation);
        let rebuilt = tok.encode(&comp)?;
        // An empty token list matches at the start, as in the reference.
        let span = if thought_ids.is_empty() { Some(0..0) } else { find_span(&rebuilt, &thought_ids, false) };
        if let Some(span) = span {
            let teacher_ids = tok.encode(&format!("{prompt}{comp}"))?;
            let from_end = rebuilt.len() - span.start;
            return finish_prepare(
                models,
                cfg,
                input,
                &shortened,
                &thought_ids,
                teacher_ids,
                from_end,
                parsed.match_penalty,
            );
        }
    }
    Err(Error::InvalidInput("the explanation's tokens cannot be located in the completion".into()))
}

/// The teacher prompt without its final `begin_explanation + pad`, which
/// `comp` supplies again.
fn teacher_prefix(teacher: &LoadedModel, cfg: &RewardConfig, input: &ScoreInput) -> Result<String> {
    let prompt = teacher_prompt(teacher.chat_template()?, cfg, &input.question, &input.solution)?;
    let suffix = format!("{}{}", cfg.tags.begin_explanation, cfg.tags.pad);
    Ok(prompt.strip_suffix(&suffix).map(str::to_owned).unwrap_or(prompt))
}

#[allow(clippy::too_many_arguments)]
fn finish_prepare(
    models: &RewardModels<'_>,
    cfg: &RewardConfig,
    input: &ScoreInput,
    thought: &str,
    thought_ids: &[u32],
    teacher_ids: Vec<u32>,
    thought_from_end: usize,
    match_penalty: f64,
) -> Result<PreparedItem> {
    let student_tok = &models.student.tokenizer;
    let teacher_start = teacher_ids
        .len()
        .checked_sub(thought_from_end)
        .ok_or_else(|| Error::InvalidInput("the thought span falls outside the teacher sequence".into()))?;
    let teacher_thought = teacher_start..teacher_start + thought_ids.len();
    if (teacher_thought.start == 0 && !thought_ids.is_empty()) || teacher_thought.end > teacher_ids.len() {
        return Err(Error::InvalidInput("the thought span falls outside the teacher sequence".into()));
    }

    let chat = student_chat(models.student.chat_template()?, cfg, &input.question, thought, &input.solution)?;
    let student_ids = student_tok.encode(&chat)?;
    // The same token ids must be found on the student side; with a shared
    // tokenizer they are, by construction. An empty thought has no tokens
    // to compare.
    let student_thought = if thought_ids.is_empty() {
        1..1
    } else {
        find_span(&student_ids, thought_ids, false).ok_or_else(|| {
            Error::InvalidInput(
                "the thought's tokens do not occur in the student chat (incompatible tokenizers?)".into(),
            )
        })?
    };
    let solution_ids = student_tok.encode(&input.solution)?;
    let sol = valid_subsequence(&solution_ids, &student_ids)
        .ok_or_else(|| Error::InvalidInput("the solution's tokens do not occur in the student chat".into()))?;
    let student_solution = find_span(&student_ids, &solution_ids[sol], true).expect("valid_subsequence found it");
    if student_thought.start == 0 || student_solution.start == 0 {
        return Err(Error::InvalidInput("a span starts at the first token, which has no log-prob".into()));
    }
    Ok(PreparedItem { match_penalty, teacher_ids, student_ids, teacher_thought, student_thought, student_solution })
}

/// Steps 4–5 for prepared items, given each sequence's log-probs
/// (`lp[k]` is the log-prob of token `k + 1`).
pub fn combine(
    cfg: &RewardConfig,
    item: &PreparedItem,
    teacher_lp: &[f32],
    student_lp: &[f32],
    tokenizer: &Tokenizer,
) -> Result<ScoreResult> {
    let lp_of = |lp: &[f32], span: &Range<usize>| -> Vec<f64> {
        lp[span.start - 1..span.end - 1].iter().map(|&x| f64::from(x)).collect()
    };
    let solution_lp = lp_of(student_lp, &item.student_solution);
    let teacher_thought = lp_of(teacher_lp, &item.teacher_thought);
    let student_thought = lp_of(student_lp, &item.student_thought);
    let kl: Vec<f64> = teacher_thought.iter().zip(&student_thought).map(|(t, s)| t - s).collect();

    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let solution_logprob_mean = mean(&solution_lp);
    let solution_logprob_min = solution_lp.iter().copied().fold(f64::INFINITY, f64::min);
    // An empty thought makes the KL reductions undefined; the reference
    // replaces them by the negated missing-tag penalty (+1 by default).
    let (thought_kl_mean, thought_kl_max) = if kl.is_empty() {
        (-cfg.missing_end_tag_penalty, -cfg.missing_end_tag_penalty)
    } else {
        (mean(&kl), kl.iter().copied().fold(f64::NEG_INFINITY, f64::max))
    };
    let [c0, c1] = cfg.solution_logprob_coefs;
    let [k0, k1] = cfg.thought_kl_coefs;
    let reward = (c0 * solution_logprob_mean + c1 * solution_logprob_min)
        - (k0 * thought_kl_mean + k1 * thought_kl_max)
        + item.match_penalty;

    let texts = |ids: &[u32]| -> Result<Vec<String>> { ids.iter().map(|&id| tokenizer.decode(&[id])).collect() };
    Ok(ScoreResult {
        reward,
        solution_logprob_mean,
        solution_logprob_min,
        thought_kl_mean,
        thought_kl_max,
        match_penalty: item.match_penalty,
        solution_tokens: solution_lp.len(),
        thought_tokens: kl.len(),
        solution_token_texts: texts(&item.student_ids[item.student_solution.clone()])?,
        solution_logprobs: solution_lp,
        thought_token_texts: texts(&item.student_ids[item.student_thought.clone()])?,
        thought_teacher_logprobs: teacher_thought,
        thought_student_logprobs: student_thought,
        thought_kl: kl,
    })
}

/// Scores many completions with one batched teacher pass and one batched
/// student pass. A bad item gets its own error; the others are scored.
pub fn score_batch(models: &RewardModels<'_>, cfg: &RewardConfig, inputs: &[ScoreInput]) -> Vec<Result<ScoreResult>> {
    let prepared: Vec<Result<PreparedItem>> = inputs.iter().map(|input| prepare(models, cfg, input)).collect();
    let ok: Vec<&PreparedItem> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
    let teacher_seqs: Vec<Vec<u32>> = ok.iter().map(|p| p.teacher_ids.clone()).collect();
    let student_seqs: Vec<Vec<u32>> = ok.iter().map(|p| p.student_ids.clone()).collect();
    let lps = token_logprobs(&models.teacher.model, &teacher_seqs, cfg.teacher_temperature)
        .and_then(|t| token_logprobs(&models.student.model, &student_seqs, cfg.student_temperature).map(|s| (t, s)));
    let (teacher_lps, student_lps) = match lps {
        Ok(v) => v,
        Err(e) => {
            let message = e.to_string();
            return prepared
                .into_iter()
                .map(|p| p.and_then(|_| Err(Error::InvalidInput(format!("scoring failed: {message}")))))
                .collect();
        }
    };
    let mut next = 0;
    prepared
        .into_iter()
        .map(|p| {
            let item = p?;
            let i = next;
            next += 1;
            combine(cfg, &item, &teacher_lps[i], &student_lps[i], &models.student.tokenizer)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RewardConfig {
        RewardConfig::default()
    }

    #[test]
    fn thought_is_the_first_match_with_its_leading_pad() {
        let p = parse_completion(&cfg(), "Add.\n\n<|end_of_explanation|> trailing <|end_of_explanation|>");
        assert_eq!(p.thought, "\n\nAdd.\n\n");
        assert_eq!(p.match_penalty, 0.0);
        assert!(p.comp.ends_with(" trailing <|end_of_explanation|>"), "text after the tag stays in comp");
    }

    #[test]
    fn missing_end_tag_is_appended_with_the_penalty() {
        let p = parse_completion(&cfg(), "never closed");
        assert_eq!(p.thought, "\n\nnever closed");
        assert_eq!(p.match_penalty, -1.0);
        assert_eq!(p.comp, "<|begin_of_explanation|>\n\nnever closed<|end_of_explanation|>");
    }

    #[test]
    fn span_search_first_last_and_trimmed() {
        let seq = [5, 1, 2, 3, 9, 1, 2, 3];
        assert_eq!(find_span(&seq, &[1, 2, 3], false), Some(1..4));
        assert_eq!(find_span(&seq, &[1, 2, 3], true), Some(5..8));
        assert_eq!(find_span(&seq, &[], false), None);
        assert_eq!(find_span(&[1], &[1, 2], false), None);
        // First token merged with a tag: [7, 2, 3] is not in seq, [2, 3] is.
        assert_eq!(valid_subsequence(&[7, 2, 3], &seq), Some(1..3));
        assert_eq!(valid_subsequence(&[1, 2, 8], &seq), Some(0..2));
        assert_eq!(valid_subsequence(&[7, 2, 8], &seq), Some(1..2));
        assert_eq!(valid_subsequence(&[7, 8], &seq), None);
    }
}
