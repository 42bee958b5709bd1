//! Durable jobs: a Postgres queue, workers on any number of machines, and
//! the job kinds (generate, score, …) that do the work.

pub mod context;
pub mod events;
pub mod kind;
pub mod kinds;
pub mod queue;
pub mod registry;
pub mod submit;
pub mod worker;

pub use context::JobContext;
pub use kind::{JobKind, PreparedJob};
pub use registry::Registry;
