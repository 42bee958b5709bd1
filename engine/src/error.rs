//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the engine. Variants name the problem in
/// terms a user can act on (which file, which parameter), so callers can show
/// `to_string()` directly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model file not found: {0}")]
    ModelNotFound(PathBuf),

    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is not a valid GGUF file: {reason}")]
    CorruptGguf { path: PathBuf, reason: String },

    #[error("{path} is not a valid model directory: {reason}")]
    BadModelDir { path: PathBuf, reason: String },

    #[error("unsupported model architecture `{0}` (supported: llama, qwen2)")]
    UnsupportedArchitecture(String),

    #[error("missing or invalid model metadata `{key}`: {reason}")]
    Metadata { key: String, reason: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("chat template: {0}")]
    ChatTemplate(String),

    #[error("invalid sampling parameter: {0}")]
    InvalidSampling(String),

    #[error("invalid input: {0}")]
    InvalidInput(String),

    #[error("sequence of {len} tokens exceeds the model's context of {context} tokens")]
    ContextOverflow { len: usize, context: usize },

    #[error("device: {0}")]
    Device(String),

    /// The weights cannot fit in the memory left (see `memory`).
    #[error("not enough memory: {0}")]
    InsufficientMemory(String),

    #[error("cancelled")]
    Cancelled,

    /// Not a `#[source]`: chains printed with their sources (`{:#}`) would
    /// repeat the reason and bring back candle's backtrace.
    #[error("{}", candle_reason(.0))]
    Candle(candle_core::Error),
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Candle(e)
    }
}

/// A candle error's message without the backtrace candle attaches when
/// `RUST_BACKTRACE` is set: messages reach CLI users and API clients,
/// who need the reason, not the engine's stack.
pub(crate) fn candle_reason(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } => candle_reason(inner),
        E::Context { inner, context } => format!("{context}: {}", candle_reason(inner)),
        E::WithPath { inner, path } => format!("{}: {}", path.display(), candle_reason(inner)),
        other => other.to_string(),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::ModelNotFound(path.into())
        } else {
            Error::Io { path: path.into(), source }
        }
    }

    pub(crate) fn metadata(key: impl Into<String>, reason: impl ToString) -> Self {
        Error::Metadata { key: key.into(), reason: reason.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_messages_leave_out_backtraces() {
        let bare = candle_core::Error::Msg("unknown magic".into());
        let wrapped = candle_core::Error::WithBacktrace {
            inner: Box::new(bare),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        }
        .context("reading the header");
        let e = Error::from(wrapped);
        assert_eq!(e.to_string(), "reading the header: unknown magic");
        // Printed with its sources, as the CLI does, it says it once.
        assert!(std::error::Error::source(&e).is_none());
    }
}
