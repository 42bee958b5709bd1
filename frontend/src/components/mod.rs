//! Pieces shared by several pages.

mod error_box;

pub use error_box::ErrorBox;
