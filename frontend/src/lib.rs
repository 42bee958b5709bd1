//! RLT Studio UI: Leptos components and pages, rendered by the server (`ssr`)
//! and hydrated in the browser (`hydrate`).
//!
//! Data reaches pages through `#[server]` functions in [`api`], which call the
//! same domain functions as the REST API through the [`backend::Backend`]
//! trait that the server implements, so no query is written twice.

pub mod api;
pub mod app;
#[cfg(feature = "ssr")]
pub mod backend;
pub mod components;
pub mod pages;

pub use app::{App, shell};

#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(App);
}
