//! RLT Studio server: HTTP API, Leptos pages, Postgres, the job queue and the
//! `rlt` command line. `main.rs` only parses arguments and calls [`cli::run`].

pub mod artifacts;
pub mod cli;
pub mod datasets;
pub mod db;
pub mod demo;
pub mod embedded_pg;
pub mod error;
pub mod experiments;
pub mod explanations;
pub mod http;
pub mod import;
pub mod jobs;
pub mod model_cache;
pub mod models;
pub mod priority;
pub mod questions;
pub mod report;
pub mod runs;
pub mod scoring;
pub mod ui;
pub mod views;
