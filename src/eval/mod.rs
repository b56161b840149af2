//! Evaluation of trained runs and prediction files: the reports (`report`, `figures`), the files
//! evaluated (`files`), predictions and screens written for other tools (`predict`, `screen`) and
//! learning curves. What is measured (metrics, statistics, baselines, oracles, the planted truth) is
//! in `score`, below training.

pub mod figures;
pub mod files;
pub mod learning_curve;
pub mod predict;
pub mod report;
pub mod screen;

/// Rows as CSV, written by the `csv` crate (RFC 4180: a field holding a comma, a quote or a line
/// break is quoted, its quotes doubled), so a label can never split a row or a field. Every CSV the
/// engine writes goes through it; rows of unequal length are refused (a programming error).
pub fn csv_bytes<R, F>(rows: impl IntoIterator<Item = R>) -> crate::Result<Vec<u8>>
where
    R: IntoIterator<Item = F>,
    F: AsRef<[u8]>,
{
    let failed = |e: csv::Error| crate::Error::Shape { op: "csv", why: e.to_string() };
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        writer.write_record(row).map_err(failed)?;
    }
    writer.into_inner().map_err(|e| failed(e.into_error().into()))
}
