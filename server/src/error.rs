//! The one error type of the server crate, mapped to HTTP status in one place.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rlt_types::{ErrorBody, ErrorDetail, ErrorItem};

use crate::import::InputError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is malformed (bad JSON, bad query parameter).
    #[error("{message}")]
    BadRequest { field: Option<String>, message: String },
    /// The request is well-formed but its content is invalid, e.g. a bad line
    /// in an uploaded dataset.
    #[error("{message}")]
    Invalid { field: Option<String>, line: Option<u64>, message: String },
    /// Several located problems in an uploaded file; the first one leads.
    #[error("{}", describe_input_errors(.0))]
    InvalidInput(Vec<InputError>),
    #[error("{0} not found")]
    NotFound(String),
    #[error("this endpoint does not accept that HTTP method")]
    MethodNotAllowed,
    #[error("{message}")]
    Conflict { field: Option<String>, message: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl Error {
    pub fn bad_request(field: impl Into<Option<&'static str>>, message: impl Into<String>) -> Self {
        Error::BadRequest { field: field.into().map(str::to_owned), message: message.into() }
    }

    pub fn invalid(field: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        Error::Invalid { field: field.into(), line: None, message: message.into() }
    }

    pub fn conflict(field: impl Into<Option<&'static str>>, message: impl Into<String>) -> Self {
        Error::Conflict { field: field.into().map(str::to_owned), message: message.into() }
    }

    /// Text Postgres cannot store (a NUL character) that got past the
    /// extractors: the client's input, so a 400 rather than a 500.
    fn is_unstorable_text(&self) -> bool {
        matches!(self, Error::Database(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("22021" | "22P05")))
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            Error::BadRequest { .. } => StatusCode::BAD_REQUEST,
            _ if self.is_unstorable_text() => StatusCode::BAD_REQUEST,
            Error::Invalid { .. } | Error::InvalidInput(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::Database(_) | Error::Migrate(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Error::BadRequest { .. } => "bad_request",
            _ if self.is_unstorable_text() => "bad_request",
            Error::Invalid { .. } | Error::InvalidInput(_) => "invalid_input",
            Error::NotFound(_) => "not_found",
            Error::MethodNotAllowed => "method_not_allowed",
            Error::Conflict { .. } => "conflict",
            _ => "internal",
        }
    }

    pub fn to_body(&self) -> ErrorBody {
        let (field, line) = match self {
            Error::BadRequest { field, .. } | Error::Conflict { field, .. } => (field.clone(), None),
            Error::Invalid { field, line, .. } => (field.clone(), *line),
            Error::InvalidInput(errors) => errors.first().map_or((None, None), |e| (e.field.clone(), e.line)),
            _ => (None, None),
        };
        let details = match self {
            Error::InvalidInput(errors) if errors.len() > 1 => errors
                .iter()
                .map(|e| ErrorItem { line: e.line, field: e.field.clone(), message: e.to_string() })
                .collect(),
            _ => Vec::new(),
        };
        // Internal details stay in the log; clients get a generic message.
        let message =
            if self.status_code().is_server_error() { "internal server error".to_owned() } else { self.to_string() };
        ErrorBody { error: ErrorDetail { code: self.code().to_owned(), message, field, line, details } }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!(error = ?self, "request failed");
        }
        (status, Json(self.to_body())).into_response()
    }
}

/// Turns constraint violations into client errors instead of 500s.
pub trait ResultExt<T> {
    fn on_constraint(self, name: &str, map: impl FnOnce() -> Error) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn on_constraint(self, name: &str, map: impl FnOnce() -> Error) -> Result<T> {
        self.map_err(|e| match e.into() {
            Error::Database(sqlx::Error::Database(db)) if db.constraint() == Some(name) => map(),
            other => other,
        })
    }
}

fn describe_input_errors(errors: &[InputError]) -> String {
    match errors {
        [] => "invalid input".to_owned(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} (and {} more problems)", rest.len()),
    }
}
