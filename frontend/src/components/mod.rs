//! Pieces shared by several pages.

pub mod chart;
mod error_box;
pub mod heatmap;
mod job_progress;
pub mod live;
mod page_ready;

pub use error_box::ErrorBox;
pub use heatmap::{HeatmapLegend, HeatmapStyles, TokenHeatmap};
pub use job_progress::{JobList, JobProgress, eta_text};
pub use page_ready::PageReady;
