//! One file per page.

mod experiment;
mod job;
mod not_found;
mod overview;
mod question;
mod questions;
mod run;

pub use experiment::ExperimentPage;
pub use job::JobPage;
pub use not_found::NotFound;
pub use overview::OverviewPage;
pub use question::QuestionPage;
pub use questions::QuestionBrowserPage;
pub use run::RunPage;

use leptos::prelude::ServerFnError;

/// The message a person should read, without the transport's prefix.
pub(crate) fn error_message(e: &ServerFnError) -> String {
    match e {
        ServerFnError::ServerError(message) => message.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn fmt_reward(r: Option<f64>) -> String {
    match r {
        Some(r) if r.is_finite() => format!("{r:.3}"),
        Some(_) => "NaN".to_owned(),
        None => "–".to_owned(),
    }
}

/// Query-string encoding of a value.
pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}
