//! What training and evaluation both measure, below both: the paper's per-condition metrics
//! (`metrics`) and the statistics that compare models (`stats`, `pca`), the baselines and oracles,
//! the planted truth of synthetic stores (`planted`) and the retrieval records and their analysis
//! (`retrieval`).

pub mod baselines;
pub mod metrics;
pub mod oracles;
pub mod pca;
pub mod planted;
pub mod retrieval;
pub mod stats;
