//! Chat templates rendered with minijinja, byte-identical to Hugging Face
//! `tokenizer.apply_chat_template`.
//!
//! transformers compiles templates in a sandboxed Jinja2 environment with
//! `trim_blocks` and `lstrip_blocks`, a `raise_exception` global and its own
//! `tojson` (no HTML escaping, Python's `json.dumps` spacing). The same
//! settings are reproduced here.

use std::collections::BTreeMap;

use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, ErrorKind, context};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// How the end of the conversation is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ending {
    /// Render the messages as they are (complete turns).
    #[default]
    Complete,
    /// Append the header of a new assistant turn (`add_generation_prompt`).
    GenerationPrompt,
    /// Leave the final assistant message open so the model continues it
    /// (`continue_final_message`): no end-of-turn token after its content.
    ContinueFinal,
}

/// The named special tokens a template sees (`bos_token`, `pad_token`,
/// ...), as transformers passes its `special_tokens_map`: only the ones
/// the model has, so a missing one is undefined in the template (renders
/// as nothing, `is defined` is false) rather than `none`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SpecialTokens(BTreeMap<String, String>);

impl SpecialTokens {
    /// The names transformers passes (`SPECIAL_TOKENS_ATTRIBUTES`).
    pub const NAMES: [&'static str; 7] =
        ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

    /// Sets `name` to `token` when there is one.
    pub fn with(mut self, name: &str, token: Option<String>) -> Self {
        if let Some(t) = token {
            self.0.insert(name.to_string(), t);
        }
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// A compiled chat template with the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    special: SpecialTokens,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("source", &self.source).finish()
    }
}

impl Clone for ChatTemplate {
    fn clone(&self) -> Self {
        Self::new(&self.source, self.special.clone()).expect("template compiled once already")
    }
}

fn template_err(e: minijinja::Error) -> Error {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    Error::ChatTemplate(msg)
}

impl ChatTemplate {
    pub fn new(source: &str, special: SpecialTokens) -> Result<Self> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(template_err)?,
        );
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        // transformers offers this (Llama 3.x templates date their system
        // prompt with it when it is defined).
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", python_tojson);
        env.add_filter("e", markupsafe_escape);
        env.add_filter("escape", markupsafe_escape);
        env.set_unknown_method_callback(python_methods);
        env.add_template_owned("chat", source.to_string()).map_err(template_err)?;
        Ok(Self { env, source: source.to_string(), special })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// Renders `messages`. With [`Ending::ContinueFinal`] the text is cut
    /// right after the final message's content, as transformers does.
    pub fn render(&self, messages: &[Message], ending: Ending) -> Result<String> {
        if ending != Ending::ContinueFinal {
            return self.render_raw(messages, ending == Ending::GenerationPrompt);
        }
        let last = messages.last().ok_or_else(|| Error::ChatTemplate("continuing an empty conversation".into()))?;
        if last.role != "assistant" {
            return Err(Error::ChatTemplate(format!(
                "continuing a final message needs an assistant message last, got `{}`",
                last.role
            )));
        }
        // transformers (render_jinja_template) appends a marker to the final
        // content, renders, and cuts at the marker: the cut then falls right
        // after the content whatever the template writes after it.
        let mut tagged = messages.to_vec();
        if let Some(m) = tagged.last_mut() {
            m.content.push_str(CONTINUE_TAG);
        }
        let rendered = self.render_raw(&tagged, false)?;
        let tag = CONTINUE_TAG.trim_end();
        if !rendered.contains(py_strip(&last.content)) || !rendered.contains(tag) {
            return Err(Error::ChatTemplate(
                "the final message does not appear in the rendered chat, so it cannot be continued".into(),
            ));
        }
        let loc = rendered.rfind(tag).expect("checked above");
        Ok(if rendered[loc..].starts_with(CONTINUE_TAG) {
            rendered[..loc].to_string()
        } else {
            // The template trimmed the message's trailing space.
            rendered[..loc].trim_end_matches(py_is_space).to_string()
        })
    }

    fn render_raw(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template("chat").map_err(template_err)?;
        tmpl.render(context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            // transformers passes these as None when there are none, so
            // `tools is not none` is false, not true as for an undefined name.
            tools => (),
            documents => (),
            ..Value::from(minijinja::value::Serde(&self.special))
        })
        .map_err(template_err)
    }
}

/// The marker transformers appends to a message being continued.
const CONTINUE_TAG: &str = "CONTINUE_FINAL_MESSAGE_TAG ";

fn py_is_space(c: char) -> bool {
    // Python's str.isspace: Unicode whitespace plus the ASCII separators.
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

fn py_strip(s: &str) -> &str {
    s.trim_matches(py_is_space)
}

/// transformers' `strftime_now(format)`: the local time now, formatted.
fn strftime_now(format: String) -> std::result::Result<Value, minijinja::Error> {
    use std::fmt::Write;
    let mut out = String::new();
    // Written, not `to_string()`: chrono reports a bad specifier as a
    // formatting error, which `to_string()` would turn into a panic.
    write!(out, "{}", chrono::Local::now().format(&format)).map_err(|_| {
        minijinja::Error::new(ErrorKind::InvalidOperation, format!("strftime_now: invalid format {format:?}"))
    })?;
    Ok(Value::from(out))
}

/// Jinja's `escape` as markupsafe does it (`&#39;` and `&#34;` for quotes;
/// minijinja's own writes `&#x27;`, `&quot;` and also escapes `/`).
fn markupsafe_escape(value: Value) -> Value {
    if value.is_safe() {
        return value;
    }
    let text = value.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Value::from_safe_string(out)
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent)`,
/// dict keys in insertion order as in Python (minijinja keeps it with
/// `preserve_order`; a detour through `serde_json::Value` would sort them).
fn python_tojson(
    value: Value,
    indent: Option<usize>,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
    let indent = kwargs.get::<Option<usize>>("indent")?.or(indent);
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_py_json(&value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_py_json(
    v: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    // With an indent Python uses "," + newline; without, ", ".
    let sep = if indent.is_some() { "," } else { ", " };
    let scalar = |x: &Value| {
        serde_json::to_string(x).map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))
    };
    match v.kind() {
        ValueKind::Seq | ValueKind::Iterable | ValueKind::Map => {
            let map = v.kind() == ValueKind::Map;
            let items: Vec<Value> = v.try_iter()?.collect();
            let (open, close) = if map { ('{', '}') } else { ('[', ']') };
            out.push(open);
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                if map {
                    // Python writes every key as a string: 1 as "1", None as "null".
                    let key = match item.as_str() {
                        Some(k) => k.to_string(),
                        None => scalar(item)?,
                    };
                    out.push_str(&scalar(&Value::from(key))?);
                    out.push_str(": ");
                    write_py_json(&v.get_item(item)?, indent, depth + 1, out)?;
                } else {
                    write_py_json(item, indent, depth + 1, out)?;
                }
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(close);
        }
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        _ => out.push_str(&scalar(v)?),
    }
    Ok(())
}

/// Python's string and dict methods for chat templates: minijinja-contrib's
/// `pycompat`, except where Python differs from it: `strip`, `lstrip`,
/// `rstrip` and `split()` by Python's whitespace (which includes
/// U+001C..U+001F), and `title` (a letter after an apostrophe is
/// capitalised, as in Python).
fn python_methods(
    state: &mut minijinja::State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, minijinja::Error> {
    if let Some(s) = value.as_str() {
        let chars = match args {
            [] => None,
            [c] if c.is_none() => None,
            [c] => c.as_str(),
            _ => return minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args),
        };
        let set = |c: char| match chars {
            Some(cs) => cs.contains(c),
            None => py_is_space(c),
        };
        match method {
            "strip" => return Ok(Value::from(s.trim_matches(set))),
            "lstrip" => return Ok(Value::from(s.trim_start_matches(set))),
            "rstrip" => return Ok(Value::from(s.trim_end_matches(set))),
            "title" if args.is_empty() => return Ok(Value::from(title_case(s))),
            "split" if chars.is_none() => {
                return Ok(Value::from(
                    s.split(py_is_space).filter(|p| !p.is_empty()).map(Value::from).collect::<Vec<_>>(),
                ));
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

fn title_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_alpha = false;
    for c in s.chars() {
        if prev_alpha {
            out.extend(c.to_lowercase());
        } else {
            out.extend(c.to_uppercase());
        }
        prev_alpha = c.is_alphabetic();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_now_dates_like_python() {
        // Llama 3.2's opening lines.
        let src = concat!(
            r#"{%- if strftime_now is defined %}{%- set date_string = strftime_now("%d %b %Y") %}"#,
            r#"{%- else %}{%- set date_string = "26 Jul 2024" %}{%- endif %}{{ date_string }}"#,
        );
        let before = chrono::Local::now().format("%d %b %Y").to_string();
        let got = ChatTemplate::new(src, SpecialTokens::default()).unwrap().render(&[], Ending::Complete).unwrap();
        let after = chrono::Local::now().format("%d %b %Y").to_string();
        assert!(got == before || got == after, "{got}");
        let bad = ChatTemplate::new("{{ strftime_now('%Q') }}", SpecialTokens::default()).unwrap();
        assert!(bad.render(&[], Ending::Complete).unwrap_err().to_string().contains("invalid format"));
    }

    #[test]
    fn a_missing_special_token_is_undefined_not_none() {
        // Qwen2.5 has no bos_token: transformers leaves it out of the
        // template's variables, so it renders as nothing.
        let src = "{{ bos_token }}|{{ bos_token is defined }}|{{ eos_token }}";
        let special = SpecialTokens::default().with("bos_token", None).with("eos_token", Some("<e>".into()));
        let got = ChatTemplate::new(src, special).unwrap().render(&[], Ending::Complete).unwrap();
        assert_eq!(got, "|False|<e>");
    }

    #[test]
    fn escape_matches_markupsafe() {
        let t = ChatTemplate::new(
            "{{ messages[0].content | e }}|{{ messages[0].content | escape | e }}",
            SpecialTokens::default(),
        )
        .unwrap();
        let got = t.render(&[Message::user(r#"<a href="/x">&'</a>"#)], Ending::Complete).unwrap();
        // markupsafe.escape, and a second escape leaves the safe string be.
        let want = "&lt;a href=&#34;/x&#34;&gt;&amp;&#39;&lt;/a&gt;";
        assert_eq!(got, format!("{want}|{want}"));
    }

    #[test]
    fn tojson_matches_python_dumps() {
        // Expected strings from transformers' jinja environment (json.dumps
        // with ensure_ascii=False): insertion order, ", " and ": ", floats
        // keep their ".0", indent puts "," at line ends.
        let t = ChatTemplate::new(
            concat!(
                r#"{% set d = {"z": 1, "a": [2, 1.0, none, true, "é\n"]} %}{{ d | tojson }}|"#,
                r#"{% for k, v in d.items() %}{{ k }}{% endfor %}|{{ messages[0] | tojson }}|"#,
                r#"{{ d | tojson(indent=2) }}|{{ {} | tojson }}{{ [] | tojson }}"#,
            ),
            SpecialTokens::default(),
        )
        .unwrap();
        let got = t.render(&[Message::user("hi <b>")], Ending::Complete).unwrap();
        assert_eq!(
            got,
            concat!(
                r#"{"z": 1, "a": [2, 1.0, null, true, "é\n"]}|za|{"role": "user", "content": "hi <b>"}|"#,
                "{\n  \"z\": 1,\n  \"a\": [\n    2,\n    1.0,\n    null,\n    true,\n    \"é\\n\"\n  ]\n}|{}[]",
            )
        );
    }
}
