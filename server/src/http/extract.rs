//! A JSON body extractor whose errors use the API's error body and name the
//! offending field.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;

use crate::error::Error;

pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(Error::bad_request(None, "expected a JSON body with Content-Type: application/json"));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| Error::bad_request(None, format!("cannot read the request body: {e}")))?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Deserializes with the path of the failing field, so `{"count": "x"}`
/// reports `count` rather than only a column number.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let syntax = e.inner().is_syntax() || e.inner().is_eof();
        located_error(e.path().to_string(), e.inner().to_string(), syntax)
    })
}

/// Deserializes an already-parsed JSON value, naming the failing field.
pub fn parse_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, Error> {
    serde_path_to_error::deserialize(value)
        .map_err(|e| located_error(e.path().to_string(), e.inner().to_string(), false))
}

fn located_error(path: String, message: String, syntax: bool) -> Error {
    // serde reports a missing field at its parent's path (an unknown one is
    // already in the path).
    let field = named_field(&message)
        .map(|name| if path == "." { name.to_owned() } else { format!("{path}.{name}") })
        .or_else(|| (path != ".").then_some(path));
    let kind = if syntax { "malformed JSON" } else { "invalid request" };
    let message = match &field {
        Some(f) => format!("{kind}: field `{f}`: {message}"),
        None => format!("{kind}: {message}"),
    };
    Error::BadRequest { field, message }
}

fn named_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// Path parameters with API-style errors: `/datasets/abc` is a 400 naming `id`.
pub struct ApiPath<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Error> {
        use axum::extract::path::ErrorKind;
        use axum::extract::rejection::PathRejection;
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                let field = match e.kind() {
                    ErrorKind::ParseErrorAtKey { key, .. } | ErrorKind::InvalidUtf8InPathParam { key } => {
                        Some(key.clone())
                    }
                    // A lone parameter parsed as a plain value has no key in the
                    // error; the route knows its name.
                    _ => match axum::extract::RawPathParams::from_request_parts(parts, state).await {
                        Ok(params) if params.iter().count() == 1 => params.iter().next().map(|(k, _)| k.to_owned()),
                        _ => None,
                    },
                };
                let message = match &field {
                    Some(key) => format!("path parameter `{key}` is invalid: {}", e.body_text()),
                    None => e.body_text(),
                };
                Err(Error::BadRequest { field, message })
            }
            Err(e) => Err(Error::bad_request(None, e.body_text())),
        }
    }
}

/// Query strings with API-style errors naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Self, Error> {
        let query = parts.uri.query().unwrap_or("");
        // Postgres text cannot hold NUL; say which parameter has one.
        if let Some((key, _)) = form_urlencoded::parse(query.as_bytes()).find(|(_, v)| v.contains('\0')) {
            return Err(Error::BadRequest {
                message: format!("query parameter `{key}` must not contain NUL characters"),
                field: Some(key.into_owned()),
            });
        }
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de).map(ApiQuery).map_err(|e| {
            let path = e.path().to_string();
            let field = (path != ".").then_some(path);
            let message = match &field {
                Some(f) => format!("query parameter `{f}` is invalid: {}", e.inner()),
                None => format!("invalid query string: {}", e.inner()),
            };
            Error::BadRequest { field, message }
        })
    }
}
