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
