//! `learning-curve`: the `evaluate` reports of the same experiment at several run lengths, drawn
//! as test metric against training steps with the baselines as horizontal lines, and tabulated
//! with each model's Mann-Whitney/BH q-value against the strongest baseline at each length.

use super::figures::{learning_curve_svg, CurvePoint};
use crate::score::baselines::Baseline;
use crate::score::metrics::{metric_index, METRICS};
use crate::score::stats::significance_mark;
use crate::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The metrics drawn: mean-change MSE, Pearson over DEGs, energy distance.
pub const CURVE_METRICS: [&str; 3] = ["mse", "pearson_deg", "energy"];

fn read_summary(report: &Path) -> Result<Value> {
    let path = report.join("summary.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(&path, "json", format!("an evaluate summary ({e})")))
}

fn higher_is_better(metric: &str) -> bool {
    metric_index(metric).is_some_and(|i| METRICS[i].higher_is_better)
}

/// Mean of `metric` for `model` in a summary.
fn mean(summary: &Value, model: &str, metric: &str) -> Option<f64> {
    summary["models"][model][metric][0].as_f64()
}

/// The BH q-value of the test between `a` and `b` on `metric`.
fn q_value(summary: &Value, metric: &str, a: &str, b: &str) -> Option<f64> {
    summary["tests"].as_array()?.iter().find_map(|t| {
        let (m, x, y) = (t[0].as_str()?, t[1].as_str()?, t[2].as_str()?);
        (m == metric && ((x == a && y == b) || (x == b && y == a))).then(|| t[5].as_f64()).flatten()
    })
}

/// The baseline with the best mean on `metric`.
fn strongest_baseline(summary: &Value, metric: &str) -> Option<(String, f64)> {
    let models = summary["models"].as_object()?;
    let better = |a: f64, b: f64| if higher_is_better(metric) { a > b } else { a < b };
    models
        .keys()
        .filter(|m| Baseline::is_baseline(m))
        .filter_map(|m| Some((m.clone(), mean(summary, m, metric)?)))
        .filter(|(_, v)| v.is_finite())
        .reduce(|a, b| if better(b.1, a.1) { b } else { a })
}

/// Writes the figure to `out` and returns the Markdown table.
pub fn learning_curve(reports: &[PathBuf], out: &Path) -> Result<String> {
    let summaries: Vec<(PathBuf, Value)> = reports.iter().map(|r| Ok((r.clone(), read_summary(r)?))).collect::<Result<_>>()?;
    let mut panels = Vec::new();
    for metric in CURVE_METRICS {
        let mut points = Vec::new();
        for (_, s) in &summaries {
            for (model, steps) in s["steps"].as_object().into_iter().flatten() {
                if let (Some(steps), Some(value)) = (steps.as_u64(), mean(s, model, metric)) {
                    points.push(CurvePoint { model: model.clone(), steps: steps as usize, value });
                }
            }
        }
        // Baselines do not train: their values are the same in every report of one experiment.
        let baselines: Vec<(String, f64)> = summaries
            .first()
            .map(|(_, s)| Baseline::ALL.iter().filter_map(|b| Some((b.name().to_string(), mean(s, b.name(), metric)?))).collect())
            .unwrap_or_default();
        panels.push((metric.to_string(), points, baselines));
    }
    crate::data::write_atomic(out, learning_curve_svg(&panels)?.as_bytes())?;

    let mut md = "| steps | model |".to_string();
    CURVE_METRICS.iter().for_each(|m| md += &format!(" {m} (vs strongest baseline, q) |"));
    md += "\n|---|---|";
    CURVE_METRICS.iter().for_each(|_| md += "---|");
    md += "\n";
    let mut rows: Vec<(usize, String, &Value)> = Vec::new();
    for (_, s) in &summaries {
        for (model, steps) in s["steps"].as_object().into_iter().flatten() {
            rows.push((steps.as_u64().unwrap_or(0) as usize, model.clone(), s));
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    for (steps, model, s) in rows {
        md += &format!("| {steps} | {model} |");
        for metric in CURVE_METRICS {
            let value = mean(s, &model, metric).unwrap_or(f64::NAN);
            match strongest_baseline(s, metric).and_then(|(b, bv)| Some((q_value(s, metric, &model, &b)?, b, bv))) {
                Some((q, b, bv)) => {
                    let better = if higher_is_better(metric) { value > bv } else { value < bv };
                    let word = if better { "better than" } else { "worse than" };
                    md += &format!(" {value:.4} ({word} {b} {bv:.4}, q {q:.1e}{}) |", significance_mark(q));
                }
                None => md += &format!(" {value:.4} |"),
            }
        }
        md += "\n";
    }
    Ok(md)
}
