//! One file per page.

mod dataset;
mod datasets;
mod not_found;
mod question;

pub use dataset::DatasetPage;
pub use datasets::DatasetsPage;
pub use not_found::NotFound;
pub use question::QuestionPage;

use leptos::prelude::ServerFnError;

/// The message a person should read, without the transport's prefix.
pub(crate) fn error_message(e: &ServerFnError) -> String {
    match e {
        ServerFnError::ServerError(message) => message.clone(),
        other => other.to_string(),
    }
}
