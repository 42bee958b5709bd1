//! Plain serde types shared by the REST API, the server and the browser UI.
//!
//! This crate is compiled to wasm as part of the frontend, so it depends on
//! serde only: no candle, sqlx or tokio may enter here.

mod datasets;
mod page;

pub use datasets::*;
pub use page::*;
