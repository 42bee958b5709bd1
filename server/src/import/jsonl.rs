//! JSONL in the RLT / Bespoke-Stratos style.
//!
//! Each non-blank line is one JSON object in either shape:
//! - flat (the RLT reference's custom-data format): `prompt` (or `question`,
//!   `problem`), `solution`, optional `reasoning_trace` (or `reasoning`,
//!   `explanation`), optional `answer`, `id` and `category`;
//! - Bespoke-Stratos: `conversations: [{"from": "user", "value": question},
//!   {"from": "assistant", "value": "<|begin_of_thought|>…<|end_of_thought|>
//!   \n\n<|begin_of_solution|>…<|end_of_solution|>"}]`, whose thought becomes
//!   the reference explanation and whose solution becomes the solution.

use serde_json::{Map, Value, json};

use super::{InputError, NewQuestion, NewReference, scalar_field, string_field};

/// Longest accepted line. Bespoke-Stratos traces reach tens of kilobytes; a
/// line of megabytes is almost certainly a broken file.
pub const MAX_LINE_BYTES: usize = 2 * 1024 * 1024;
/// Errors reported for one file before giving up on the rest.
const MAX_ERRORS: usize = 20;

const QUESTION_FIELDS: [&str; 3] = ["question", "prompt", "problem"];
const REASONING_FIELDS: [&str; 3] = ["reasoning_trace", "reasoning", "explanation"];

/// Parses a whole file. On failure returns every bad line (up to a limit), in
/// order, so a user can fix them in one go.
pub fn parse(input: &[u8]) -> Result<Vec<NewQuestion>, Vec<InputError>> {
    let mut questions = Vec::new();
    let mut errors = Vec::new();
    let mut saw_content = false;
    for (index, raw) in input.split(|&b| b == b'\n').enumerate() {
        let line_no = index as u64 + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        saw_content = true;
        match parse_line(raw, line_no) {
            Ok(q) => questions.push(q),
            Err(e) => {
                errors.push(e);
                if errors.len() >= MAX_ERRORS {
                    break;
                }
            }
        }
    }
    if !saw_content {
        return Err(vec![InputError::whole_file("the file is empty: expected one JSON object per line")]);
    }
    if errors.is_empty() { Ok(questions) } else { Err(errors) }
}

fn parse_line(raw: &[u8], line: u64) -> Result<NewQuestion, InputError> {
    if raw.len() > MAX_LINE_BYTES {
        return Err(InputError::at_line(
            line,
            None,
            format!("line is {} bytes long; the limit is {MAX_LINE_BYTES}", raw.len()),
        ));
    }
    let text =
        std::str::from_utf8(raw).map_err(|e| InputError::at_line(line, None, format!("not valid UTF-8 ({e})")))?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| InputError::at_line(line, None, format!("malformed JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(InputError::at_line(line, None, "expected a JSON object"));
    };
    if obj.contains_key("conversations") { parse_conversation(&obj, line) } else { parse_flat(&obj, line) }
}

fn parse_flat(obj: &Map<String, Value>, line: u64) -> Result<NewQuestion, InputError> {
    let question = first_present(obj, line, &QUESTION_FIELDS)?.ok_or_else(|| {
        InputError::at_line(line, Some("question"), "missing field (also accepted: `prompt`, `problem`)")
    })?;
    let solution = string_field(obj, line, "solution")?
        .ok_or_else(|| InputError::at_line(line, Some("solution"), "missing field"))?;
    require_text(&question.1, line, question.0)?;
    require_text(&solution, line, "solution")?;
    let references = match first_present(obj, line, &REASONING_FIELDS)? {
        Some((field, text)) if !text.trim().is_empty() => vec![NewReference {
            author: string_field(obj, line, "reasoning_author")?,
            label: field.to_owned(),
            text,
            meta: json!({}),
        }],
        _ => Vec::new(),
    };
    Ok(NewQuestion {
        source_key: scalar_field(obj, line, "id")?,
        question: question.1,
        solution,
        answer: scalar_field(obj, line, "answer")?,
        category: scalar_field(obj, line, "category")?,
        meta: json!({ "line": line }),
        references,
    })
}

fn parse_conversation(obj: &Map<String, Value>, line: u64) -> Result<NewQuestion, InputError> {
    let field = "conversations";
    let turns =
        obj[field].as_array().ok_or_else(|| InputError::at_line(line, Some(field), "must be an array of turns"))?;
    let turn_text = |role: &str| -> Result<String, InputError> {
        let turn = turns
            .iter()
            .find(|t| t.get("from").and_then(Value::as_str) == Some(role))
            .ok_or_else(|| InputError::at_line(line, Some(field), format!("has no turn with \"from\": \"{role}\"")))?;
        turn.get("value")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| InputError::at_line(line, Some(field), format!("the {role} turn has no string `value`")))
    };
    let question = turn_text("user")?;
    require_text(&question, line, field)?;
    let assistant = turn_text("assistant")?;
    let solution = between(&assistant, "<|begin_of_solution|>", "<|end_of_solution|>").ok_or_else(|| {
        InputError::at_line(
            line,
            Some(field),
            "the assistant turn has no <|begin_of_solution|>…<|end_of_solution|> section",
        )
    })?;
    let solution = solution.trim().to_owned();
    require_text(&solution, line, field)?;
    let references = between(&assistant, "<|begin_of_thought|>", "<|end_of_thought|>")
        .filter(|t| !t.trim().is_empty())
        .map(|thought| NewReference {
            author: None,
            label: "reasoning_trace".to_owned(),
            text: thought.trim().to_owned(),
            meta: json!({}),
        })
        .into_iter()
        .collect();
    Ok(NewQuestion {
        source_key: scalar_field(obj, line, "id")?,
        question,
        solution,
        answer: scalar_field(obj, line, "answer")?,
        category: scalar_field(obj, line, "category")?,
        meta: json!({ "line": line }),
        references,
    })
}

fn first_present(
    obj: &Map<String, Value>,
    line: u64,
    names: &[&'static str],
) -> Result<Option<(&'static str, String)>, InputError> {
    for &name in names {
        if let Some(v) = string_field(obj, line, name)? {
            return Ok(Some((name, v)));
        }
    }
    Ok(None)
}

fn require_text(text: &str, line: u64, field: &str) -> Result<(), InputError> {
    if text.trim().is_empty() {
        return Err(InputError::at_line(line, Some(field), "must not be empty"));
    }
    Ok(())
}

/// The text between the first `start` and the next `end` after it.
fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    let len = s[from..].find(end)?;
    Some(&s[from..from + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_lines_with_aliases() {
        let input = br#"{"prompt": "1+1?", "solution": "2", "reasoning_trace": "add"}

{"question": "2+2?", "solution": "4", "answer": 4, "id": "q2"}
"#;
        let qs = parse(input).unwrap();
        assert_eq!(qs.len(), 2);
        assert_eq!(qs[0].question, "1+1?");
        assert_eq!(qs[0].references[0].label, "reasoning_trace");
        assert_eq!(qs[1].answer.as_deref(), Some("4"));
        assert_eq!(qs[1].source_key.as_deref(), Some("q2"));
    }

    #[test]
    fn bespoke_stratos_conversation() {
        let line = json!({"system": "s", "conversations": [
            {"from": "user", "value": "What is 3*3?"},
            {"from": "assistant", "value": "<|begin_of_thought|>\n\nthree threes\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n9\n\n<|end_of_solution|>"}
        ]});
        let qs = parse(line.to_string().as_bytes()).unwrap();
        assert_eq!(qs[0].question, "What is 3*3?");
        assert_eq!(qs[0].solution, "9");
        assert_eq!(qs[0].references[0].text, "three threes");
    }

    #[test]
    fn errors_name_line_and_field() {
        let input = b"{\"question\": \"a\", \"solution\": \"b\"}\n{\"question\": \"a\"}\n{bad json\n{\"question\": 5, \"solution\": \"x\"}\n[1]\n";
        let errs = parse(input).unwrap_err();
        assert_eq!(errs.len(), 4);
        assert_eq!((errs[0].line, errs[0].field.as_deref()), (Some(2), Some("solution")));
        assert_eq!(errs[1].line, Some(3));
        assert!(errs[1].message.contains("malformed JSON"), "{}", errs[1].message);
        assert_eq!(errs[2].line, Some(4));
        assert!(errs[2].to_string().contains("question") || errs[2].to_string().contains("solution"));
        assert_eq!(errs[3].line, Some(5));
    }

    #[test]
    fn wrong_type_is_named() {
        let errs = parse(br#"{"question": "q", "solution": ["x"]}"#).unwrap_err();
        assert_eq!(errs[0].field.as_deref(), Some("solution"));
        assert!(errs[0].message.contains("must be a string, found an array"));
    }

    #[test]
    fn empty_and_blank_files_are_rejected() {
        for input in [&b""[..], b"\n\n  \n"] {
            let errs = parse(input).unwrap_err();
            assert!(errs[0].message.contains("empty"));
            assert_eq!(errs[0].line, None);
        }
    }

    #[test]
    fn huge_line_is_rejected_by_number() {
        let mut input = br#"{"question": "q", "solution": "s"}"#.to_vec();
        input.push(b'\n');
        input.extend(format!("{{\"question\": \"{}\", \"solution\": \"s\"}}", "x".repeat(MAX_LINE_BYTES)).bytes());
        let errs = parse(&input).unwrap_err();
        assert_eq!(errs[0].line, Some(2));
        assert!(errs[0].message.contains("limit"));
    }

    #[test]
    fn invalid_utf8_is_reported() {
        let errs = parse(b"{\"question\": \"\xff\", \"solution\": \"s\"}").unwrap_err();
        assert!(errs[0].message.contains("UTF-8"));
    }
}
