//! Experiment configuration: the RLT reward, teacher sampling and training
//! settings. Defaults are the reference implementation's constants
//! (`rlt_reference.json`, taken verbatim from SakanaAI/RLT), so an
//! experiment that overrides nothing reproduces the paper's setup.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

const REFERENCE_JSON: &str = include_str!("rlt_reference.json");

#[derive(Deserialize)]
struct Reference {
    teacher_system: String,
    student_system: String,
    tags: RltTags,
    reward_defaults: RewardDefaults,
}

#[derive(Deserialize)]
struct RewardDefaults {
    teacher_temperature: f64,
    student_temperature: f64,
    solution_logprob_coefs: [f64; 2],
    thought_kl_coefs: [f64; 2],
    missing_end_tag_penalty: f64,
}

fn reference() -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE.get_or_init(|| serde_json::from_str(REFERENCE_JSON).expect("the embedded reference JSON is valid"))
}

/// The tags of the RLT formats. Constants of the method, overridable for
/// experiments with other formats.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RltTags {
    pub begin_explanation: String,
    pub end_explanation: String,
    pub begin_thought: String,
    pub end_thought: String,
    pub begin_solution: String,
    pub end_solution: String,
    /// Padding after a begin tag and between sections: `"\n\n"`.
    pub pad: String,
}

impl Default for RltTags {
    fn default() -> Self {
        reference().tags.clone()
    }
}

/// Everything that decides the RLT reward of an explanation.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardConfig {
    pub teacher_system: String,
    pub student_system: String,
    pub tags: RltTags,
    /// τ for the teacher's log-probs on the thought.
    pub teacher_temperature: f64,
    /// τ for the student's log-probs on the thought and solution.
    pub student_temperature: f64,
    /// Weights of mean and min of the student's solution log-probs.
    pub solution_logprob_coefs: [f64; 2],
    /// Weights of mean and max of the thought KL (teacher − student).
    pub thought_kl_coefs: [f64; 2],
    /// Added when the completion has no end-of-explanation tag.
    pub missing_end_tag_penalty: f64,
}

impl Default for RewardConfig {
    fn default() -> Self {
        let r = reference();
        RewardConfig {
            teacher_system: r.teacher_system.clone(),
            student_system: r.student_system.clone(),
            tags: r.tags.clone(),
            teacher_temperature: r.reward_defaults.teacher_temperature,
            student_temperature: r.reward_defaults.student_temperature,
            solution_logprob_coefs: r.reward_defaults.solution_logprob_coefs,
            thought_kl_coefs: r.reward_defaults.thought_kl_coefs,
            missing_end_tag_penalty: r.reward_defaults.missing_end_tag_penalty,
        }
    }
}

impl RewardConfig {
    /// Field-level problems, e.g. `("teacher_temperature", "must be > 0")`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, t) in
            [("teacher_temperature", self.teacher_temperature), ("student_temperature", self.student_temperature)]
        {
            if !(t.is_finite() && t > 0.0) {
                out.push((name.to_owned(), "must be a positive number".to_owned()));
            }
        }
        for (name, c) in
            [("solution_logprob_coefs", self.solution_logprob_coefs), ("thought_kl_coefs", self.thought_kl_coefs)]
        {
            if !c.iter().all(|x| x.is_finite()) {
                out.push((name.to_owned(), "must be finite numbers".to_owned()));
            }
        }
        if !self.missing_end_tag_penalty.is_finite() {
            out.push(("missing_end_tag_penalty".to_owned(), "must be a finite number".to_owned()));
        }
        for (name, tag) in [
            ("tags.begin_explanation", &self.tags.begin_explanation),
            ("tags.end_explanation", &self.tags.end_explanation),
            ("tags.begin_thought", &self.tags.begin_thought),
            ("tags.end_thought", &self.tags.end_thought),
            ("tags.begin_solution", &self.tags.begin_solution),
            ("tags.end_solution", &self.tags.end_solution),
        ] {
            if tag.is_empty() {
                out.push((name.to_owned(), "must not be empty".to_owned()));
            }
        }
        out
    }
}

/// How the teacher samples explanations.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingConfig {
    /// Completions per question (GRPO's group size).
    pub num_samples: u32,
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: u32,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig { num_samples: 4, temperature: 0.7, top_p: 1.0, max_new_tokens: 512 }
    }
}

impl SamplingConfig {
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if !(1..=256).contains(&self.num_samples) {
            out.push(("num_samples".to_owned(), "must be between 1 and 256".to_owned()));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            out.push(("temperature".to_owned(), "must be a number >= 0 (0 is greedy)".to_owned()));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            out.push(("top_p".to_owned(), "must be in (0, 1]".to_owned()));
        }
        if !(1..=32_768).contains(&self.max_new_tokens) {
            out.push(("max_new_tokens".to_owned(), "must be between 1 and 32768".to_owned()));
        }
        out
    }
}

/// An experiment's configuration. Stored as JSON, immutable once a run uses
/// it; an edit creates a new version.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExperimentConfig {
    pub reward: RewardConfig,
    pub sampling: SamplingConfig,
    /// Score generated explanations right away in the same job.
    pub score_after_generate: bool,
    /// Training settings (GRPO/SFT), read by the training job kinds.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub training: serde_json::Value,
}

impl ExperimentConfig {
    /// Every invalid field, with its dotted path (`sampling.top_p`).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> =
            self.reward.problems().into_iter().map(|(f, m)| (format!("reward.{f}"), m)).collect();
        out.extend(self.sampling.problems().into_iter().map(|(f, m)| (format!("sampling.{f}"), m)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_reference_constants() {
        let r = RewardConfig::default();
        assert!(r.teacher_system.starts_with("Your role as an assistant involves providing precise"));
        assert!(r.student_system.ends_with("Now, try to solve the following question through the above guidelines:"));
        assert_eq!(r.tags.begin_explanation, "<|begin_of_explanation|>");
        assert_eq!(r.tags.pad, "\n\n");
        assert_eq!((r.teacher_temperature, r.student_temperature), (0.7, 0.7));
        assert_eq!(r.solution_logprob_coefs, [1.0, 0.01]);
        assert_eq!(r.thought_kl_coefs, [3.0, 0.03]);
        assert_eq!(r.missing_end_tag_penalty, -1.0);
        assert!(r.problems().is_empty());
    }

    #[test]
    fn partial_json_fills_in_defaults_and_unknown_fields_fail() {
        let c: ExperimentConfig = serde_json::from_str(r#"{"sampling": {"num_samples": 8}}"#).unwrap();
        assert_eq!(c.sampling.num_samples, 8);
        assert_eq!(c.sampling.temperature, 0.7);
        assert_eq!(c.reward, RewardConfig::default());
        assert!(serde_json::from_str::<ExperimentConfig>(r#"{"samplin": {}}"#).is_err());
        let bad: ExperimentConfig = serde_json::from_str(r#"{"sampling": {"top_p": 0}}"#).unwrap();
        assert_eq!(bad.problems()[0].0, "sampling.top_p");
    }
}
