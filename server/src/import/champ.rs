//! CHAMP (Mao et al. 2024): 270 competition math problems with step-by-step
//! solutions, final answers and annotated model solutions, read from
//! `champ_dataset/dataset_files/v0.json` of the PyPI package `champ-dataset`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::json;

use super::{InputError, NewQuestion, NewReference};

/// Where `scripts/fetch-assets.sh` puts the file, under the data directory.
pub const DEFAULT_PATH: &str = "datasets/champ/v0.json";

#[derive(Deserialize)]
struct ChampFile {
    problems: BTreeMap<String, Problem>,
}

#[derive(Deserialize)]
struct Problem {
    identifier: String,
    #[serde(rename = "_text")]
    text: String,
    category: Option<String>,
    solution: Solution,
    #[serde(rename = "_answer")]
    answer: Option<String>,
    #[serde(default)]
    fws_annotations: Option<BTreeMap<String, Annotation>>,
}

#[derive(Deserialize)]
struct Solution {
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Step {
    #[serde(rename = "_text")]
    text: String,
}

/// A model's full solution annotated with its first wrong step (character
/// span), or no span when the annotator found no mistake.
#[derive(Deserialize)]
struct Annotation {
    text: String,
    start_idx: Option<i64>,
    end_idx: Option<i64>,
    author: String,
}

pub fn parse(input: &[u8]) -> Result<Vec<NewQuestion>, InputError> {
    let file: ChampFile = serde_json::from_slice(input).map_err(|e| InputError {
        line: Some(e.line() as u64),
        field: None,
        message: format!("not a CHAMP v0.json file: {e}"),
    })?;
    let mut problems: Vec<Problem> = file.problems.into_values().collect();
    // The package lists problems in natural order (…_9 before …_10).
    problems.sort_by_key(|p| natural_key(&p.identifier));
    problems
        .into_iter()
        .map(|p| {
            if p.solution.steps.is_empty() {
                return Err(InputError {
                    line: None,
                    field: Some("solution".into()),
                    message: format!("problem {} has no solution steps", p.identifier),
                });
            }
            let solution = p.solution.steps.iter().map(|s| s.text.trim()).collect::<Vec<_>>().join("\n");
            let references = p
                .fws_annotations
                .unwrap_or_default()
                .into_iter()
                .map(|(label, a)| NewReference {
                    author: Some(a.author),
                    label,
                    meta: json!({
                        "first_wrong_step": a.start_idx.zip(a.end_idx).map(|(s, e)| json!({"start": s, "end": e})),
                    }),
                    text: a.text,
                })
                .collect();
            Ok(NewQuestion {
                source_key: Some(p.identifier),
                question: p.text,
                solution,
                answer: p.answer,
                category: p.category,
                meta: json!({}),
                references,
            })
        })
        .collect()
}

fn natural_key(id: &str) -> (String, u64) {
    match id.rsplit_once('_') {
        Some((prefix, n)) => match n.parse() {
            Ok(n) => (prefix.to_owned(), n),
            Err(_) => (id.to_owned(), 0),
        },
        None => (id.to_owned(), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_problems_in_natural_order_with_annotations() {
        let input = json!({"problems": {
            "P_X_10": {"identifier": "P_X_10", "_text": "ten", "category": "X",
                "solution": {"steps": [{"_text": "a"}, {"_text": "b "}]}, "_answer": "10"},
            "P_X_9": {"identifier": "P_X_9", "_text": "nine", "category": "X",
                "solution": {"steps": [{"_text": "c"}]}, "_answer": "9",
                "fws_annotations": {"GPT-4|No C w/o H": {"text": "sol", "start_idx": 1, "end_idx": 3, "author": "GPT-4"}}}
        }, "concepts": {}, "hints": {}});
        let qs = parse(input.to_string().as_bytes()).unwrap();
        assert_eq!(qs[0].source_key.as_deref(), Some("P_X_9"));
        assert_eq!(qs[1].solution, "a\nb");
        assert_eq!(qs[0].references[0].author.as_deref(), Some("GPT-4"));
        assert_eq!(qs[0].references[0].meta["first_wrong_step"]["end"], 3);
    }

    #[test]
    fn rejects_other_json() {
        let err = parse(br#"{"problems": 3}"#).unwrap_err();
        assert!(err.message.contains("CHAMP"));
    }
}
