//! ptrag-engine: PT-RAG perturbation-response prediction (see README.md).

pub mod bench;
pub mod cpu;
pub mod cuda;
pub mod data;
pub mod error;
pub mod machine;
pub mod progress;
pub mod scalar;
pub mod tape;

pub use error::{Error, Result};
pub mod eval;
pub mod model;
pub mod profile;
pub mod score;
pub mod train;
