//! Evaluation: the paper's per-condition metrics (`metrics`) and the statistics that compare models
//! (`stats`).

pub mod baselines;
pub mod figures;
pub mod files;
pub mod learning_curve;
pub mod metrics;
pub mod oracles;
pub mod pca;
pub mod planted;
pub mod predict;
pub mod report;
pub mod retrieval;
pub mod screen;
pub mod stats;

/// One CSV field (RFC 4180): quoted, with its quotes doubled, when it holds a comma, a quote, a line
/// break or a carriage return, or starts or ends with a space; as it is otherwise. Every CSV the
/// engine writes goes through it, so a label can never split a row or a field.
pub fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}
