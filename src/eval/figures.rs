//! Report figures as SVG: training/validation curves from `log.jsonl`, the distribution of every
//! metric per model, and the retrieval Jaccard heatmap. plotters' SVG backend writes text as SVG
//! text, so no system fonts or font libraries are needed to build or draw.

use super::report::{ConditionRow, HIGHER_IS_BETTER, METRICS};
use super::retrieval::RetrievalAnalysis;
use crate::{Error, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

/// One run's training curve (moving mean of the per-step energy) and its validation points.
#[derive(Clone, Debug, Default)]
pub struct Curve {
    pub label: String,
    pub train: Vec<(f64, f64)>,
    pub val: Vec<(f64, f64)>,
}

/// Steps averaged per point of a training curve: single steps are too noisy to read.
const SMOOTHING: usize = 10;

/// Reads `dir/log.jsonl`: per-step `energy` lines and validation `val_energy` lines.
pub fn read_curve(dir: &Path, label: &str) -> Result<Curve> {
    let path = dir.join("log.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut raw = Vec::new();
    let mut curve = Curve { label: label.to_string(), ..Curve::default() };
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| Error::bad_file(&path, format!("line {}", i + 1), format!("a JSON object ({e})")))?;
        let (Some(step), energy, val) = (v["step"].as_f64(), v["energy"].as_f64(), v["val_energy"].as_f64()) else { continue };
        if let Some(e) = energy {
            raw.push((step, e));
        }
        if let Some(e) = val {
            curve.val.push((step, e));
        }
    }
    curve.train = raw
        .chunks(SMOOTHING)
        .map(|c| (c.iter().map(|p| p.0).sum::<f64>() / c.len() as f64, c.iter().map(|p| p.1).sum::<f64>() / c.len() as f64))
        .collect();
    Ok(curve)
}

fn plot_error(figure: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("figure {figure}"), e.to_string())
}

/// A range around finite values with 5% margins (a unit range around a constant).
fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5 };
    (lo - pad, hi + pad)
}

/// Training (lines) and validation (points) energy of every run against the step.
pub fn curves_svg(curves: &[Curve]) -> Result<String> {
    let fail = |e: &dyn std::fmt::Display| plot_error("curves", e);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let points = || curves.iter().flat_map(|c| c.train.iter().chain(&c.val));
        let (_, x_max) = padded_range(points().map(|p| p.0));
        let (y_min, y_max) = padded_range(points().map(|p| p.1));
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("Energy distance per step (training: mean of {SMOOTHING} steps; validation: points)"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, y_min..y_max)
            .map_err(|e| fail(&e))?;
        chart.configure_mesh().x_desc("step").y_desc("energy distance").draw().map_err(|e| fail(&e))?;
        for (i, c) in curves.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(c.train.iter().copied(), colour.stroke_width(2)))
                .map_err(|e| fail(&e))?
                .label(c.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
            chart.draw_series(c.val.iter().map(|&p| Circle::new(p, 4, colour.filled()))).map_err(|e| fail(&e))?;
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    Ok(svg)
}

/// Models in a fixed reading order: the baselines, then the models from simplest to PT-RAG.
pub fn model_order(rows: &[ConditionRow]) -> Vec<String> {
    const ORDER: [&str; 9] =
        ["control", "training-mean", "cross-cell-type", "neighbours", "linear", "state", "state-genept", "vanilla-rag", "pt-rag"];
    let mut names: Vec<String> = rows.iter().map(|r| r.model.clone()).collect();
    names.sort_by_key(|n| (ORDER.iter().position(|o| o == n).unwrap_or(ORDER.len()), n.clone()));
    names.dedup();
    names
}

/// The linear-interpolation quantile of sorted values (numpy's default), `q` in [0, 1].
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    sorted[i] + frac * (sorted[(i + 1).min(sorted.len() - 1)] - sorted[i])
}

/// Tukey's box plot of one sample: quartiles, whiskers to the most extreme values within 1.5 IQR
/// of the box, and the values beyond them.
#[derive(Clone, Debug, PartialEq)]
pub struct BoxStats {
    pub q1: f64,
    pub median: f64,
    pub q3: f64,
    pub whisker_low: f64,
    pub whisker_high: f64,
    pub outliers: Vec<f64>,
}

impl BoxStats {
    /// `None` without finite values.
    pub fn new(values: &[f64]) -> Option<BoxStats> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let (q1, median, q3) = (quantile(&v, 0.25), quantile(&v, 0.5), quantile(&v, 0.75));
        let (lo_fence, hi_fence) = (q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1));
        let inside = || v.iter().copied().filter(|x| (lo_fence..=hi_fence).contains(x));
        Some(BoxStats {
            q1,
            median,
            q3,
            whisker_low: inside().fold(f64::INFINITY, f64::min),
            whisker_high: inside().fold(f64::NEG_INFINITY, f64::max),
            outliers: v.iter().copied().filter(|x| !(lo_fence..=hi_fence).contains(x)).collect(),
        })
    }
}

/// One box plot panel per metric (the DEG count is data, not a score, and is left out): the
/// distribution over test conditions of each model's values, Tukey whiskers, outliers as dots.
pub fn distributions_svg(rows: &[ConditionRow]) -> Result<String> {
    let fail = |e: &dyn std::fmt::Display| plot_error("distributions", e);
    let models = model_order(rows);
    let k = models.len() as f64;
    let metrics: Vec<usize> = (0..METRICS.len()).filter(|&m| METRICS[m] != "degs").collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1500, 760)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let panels = root.split_evenly((2, metrics.len().div_ceil(2)));
        for (panel, &m) in panels.iter().zip(&metrics) {
            let (lo, hi) = padded_range(rows.iter().map(|r| r.values[m]));
            let better = if HIGHER_IS_BETTER[m] { "higher is better" } else { "lower is better" };
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{} ({better})", METRICS[m]), ("sans-serif", 15))
                .margin(8)
                .x_label_area_size(80)
                .y_label_area_size(50)
                .build_cartesian_2d(0.0..k, lo..hi)
                .map_err(|e| fail(&e))?;
            chart.configure_mesh().disable_x_mesh().x_labels(0).draw().map_err(|e| fail(&e))?;
            // model names under their boxes, turned to fit (plotters puts axis labels at round numbers)
            for (i, model) in models.iter().enumerate() {
                let (px, py) = chart.backend_coord(&(i as f64 + 0.5, lo));
                let style = ("sans-serif", 11).into_font().transform(FontTransform::Rotate90).color(&BLACK);
                root.draw(&Text::new(model.clone(), (px - 5, py + 6), style)).map_err(|e| fail(&e))?;
            }
            for (i, model) in models.iter().enumerate() {
                let values: Vec<f64> = rows.iter().filter(|r| &r.model == model).map(|r| r.values[m]).collect();
                let Some(b) = BoxStats::new(&values) else { continue };
                let (x, colour) = (i as f64, Palette99::pick(i).to_rgba());
                let line = |x0: f64, y0: f64, x1: f64, y1: f64| PathElement::new(vec![(x0, y0), (x1, y1)], colour.stroke_width(2));
                let shapes = [
                    line(x + 0.5, b.whisker_low, x + 0.5, b.q1),
                    line(x + 0.5, b.q3, x + 0.5, b.whisker_high),
                    line(x + 0.35, b.whisker_low, x + 0.65, b.whisker_low),
                    line(x + 0.35, b.whisker_high, x + 0.65, b.whisker_high),
                    line(x + 0.2, b.median, x + 0.8, b.median),
                ];
                chart
                    .draw_series(std::iter::once(Rectangle::new([(x + 0.2, b.q1), (x + 0.8, b.q3)], colour.stroke_width(2))))
                    .map_err(|e| fail(&e))?;
                chart.draw_series(shapes).map_err(|e| fail(&e))?;
                chart.draw_series(b.outliers.iter().map(|&y| Circle::new((x + 0.5, y), 2, colour.filled()))).map_err(|e| fail(&e))?;
            }
        }
        root.present().map_err(|e| fail(&e))?;
    }
    Ok(svg)
}

/// The cell type x cell type matrix of mean Jaccard overlaps (row i from the top, column j from
/// the left: cell types i and j), each cell labelled with its value.
pub fn jaccard_svg(a: &RetrievalAnalysis) -> Result<String> {
    let fail = |e: &dyn std::fmt::Display| plot_error("jaccard", e);
    let n = a.cell_types.len();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (180 + 110 * n as u32, 140 + 110 * n as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("Mean Jaccard of top-10 selections ({} genes)", a.shared_genes.len()), ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..n as f64, 0.0..n as f64)
            .map_err(|e| fail(&e))?;
        chart.configure_mesh().disable_mesh().x_labels(0).y_labels(0).draw().map_err(|e| fail(&e))?;
        let centre = |v: plotters::style::TextStyle<'static>| v.pos(Pos::new(HPos::Center, VPos::Center));
        for (i, row) in a.jaccard.iter().enumerate() {
            let y = (n - 1 - i) as f64;
            for (j, &v) in row.iter().enumerate() {
                let x = j as f64;
                // white at 0 to a saturated blue at 1
                let t = v.clamp(0.0, 1.0);
                let shade = RGBColor((255.0 * (1.0 - 0.85 * t)) as u8, (255.0 * (1.0 - 0.6 * t)) as u8, 255);
                chart.draw_series(std::iter::once(Rectangle::new([(x, y), (x + 1.0, y + 1.0)], shade.filled()))).map_err(|e| fail(&e))?;
                let label = Text::new(format!("{v:.3}"), (x + 0.5, y + 0.5), centre(("sans-serif", 16).into_font().color(&BLACK)));
                chart.draw_series(std::iter::once(label)).map_err(|e| fail(&e))?;
            }
        }
        // cell type names beside the rows and under the columns
        for (i, name) in a.cell_types.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            let style = centre(("sans-serif", 13).into_font().color(&BLACK));
            root.draw(&Text::new(name.clone(), (px, py + 14), style.clone())).map_err(|e| fail(&e))?;
            let (px, py) = chart.backend_coord(&(0.0, (n - 1 - i) as f64 + 0.5));
            root.draw(&Text::new(name.clone(), (px - 40, py), style)).map_err(|e| fail(&e))?;
        }
        root.present().map_err(|e| fail(&e))?;
    }
    Ok(svg)
}
