//! ptrag-engine: PT-RAG perturbation-response prediction (see README.md).

pub mod cpu;
pub mod error;
pub mod real;
pub mod tape;

pub use error::{Error, Result};
