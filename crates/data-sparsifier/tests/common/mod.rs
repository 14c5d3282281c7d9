//! Test code shared by several integration tests (and, through `#[path]`, the crate's unit tests).
pub mod golden;
pub mod oracle;
pub mod quant;
