//! Plain serde types shared by the REST API, the server and the browser UI.
//!
//! This crate is compiled to wasm as part of the frontend, so it depends on
//! serde only: no candle, sqlx or tokio may enter here.

mod config;
mod datasets;
mod experiments;
mod explanations;
mod jobs;
mod page;
mod views;

pub use config::*;
pub use datasets::*;
pub use experiments::*;
pub use explanations::*;
pub use jobs::*;
pub use page::*;
pub use views::*;
