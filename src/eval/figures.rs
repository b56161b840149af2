//! Report figures as SVG: training/validation curves from `log.jsonl`, the distribution of every
//! metric per model, and the retrieval Jaccard heatmap. plotters' SVG backend writes text as SVG
//! text, so no system fonts or font libraries are needed to build or draw.

use crate::score::metrics::{ConditionRow, METRICS};
use crate::score::retrieval::RetrievalAnalysis;
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
    /// On synthetic data: validation retrieval and selection precision against the planted truth.
    pub val_retrieval_precision: Vec<(f64, f64)>,
    pub val_selection_precision: Vec<(f64, f64)>,
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
        if let Some(p) = v["val_retrieval_precision"].as_f64() {
            curve.val_retrieval_precision.push((step, p));
        }
        if let Some(p) = v["val_selection_precision"].as_f64() {
            curve.val_selection_precision.push((step, p));
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

/// Validation selection precision (solid, with points) and retrieval precision (dashed) against
/// the planted truth per step, for the runs that log them: whether and when the selection learns.
pub fn planted_svg(curves: &[Curve]) -> Result<String> {
    let fail = |e: &dyn std::fmt::Display| plot_error("planted", e);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let points = || curves.iter().flat_map(|c| c.val_retrieval_precision.iter().chain(&c.val_selection_precision));
        let (_, x_max) = padded_range(points().map(|p| p.0));
        let mut chart = ChartBuilder::on(&root)
            .caption("Validation precision against the planted truth (selection: solid; retrieval: dashed)", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..1.0)
            .map_err(|e| fail(&e))?;
        chart.configure_mesh().x_desc("step").y_desc("relevant share").draw().map_err(|e| fail(&e))?;
        for (i, c) in curves.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            if !c.val_selection_precision.is_empty() {
                chart
                    .draw_series(LineSeries::new(c.val_selection_precision.iter().copied(), colour.stroke_width(2)))
                    .map_err(|e| fail(&e))?
                    .label(format!("{} selection", c.label))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
                chart.draw_series(c.val_selection_precision.iter().map(|&p| Circle::new(p, 3, colour.filled()))).map_err(|e| fail(&e))?;
            }
            if !c.val_retrieval_precision.is_empty() {
                chart
                    .draw_series(DashedLineSeries::new(c.val_retrieval_precision.iter().copied(), 6, 4, colour.stroke_width(1)))
                    .map_err(|e| fail(&e))?
                    .label(format!("{} retrieval", c.label))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(1)));
            }
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    Ok(svg)
}

/// One model's mean test metric after a number of training steps (one report of a learning curve).
#[derive(Clone, Debug)]
pub struct CurvePoint {
    pub model: String,
    pub steps: usize,
    pub value: f64,
}

/// Colours of the baselines' dashed lines, distinct from the models' palette.
const BASELINE_COLOURS: [RGBColor; 5] =
    [RGBColor(0, 0, 0), RGBColor(130, 130, 130), RGBColor(0, 140, 140), RGBColor(190, 0, 190), RGBColor(160, 100, 0)];
/// Colours of the models' lines.
const MODEL_COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
];

/// One panel of the learning curve: the metric, the models' points, and each baseline's value.
pub type CurvePanel = (String, Vec<CurvePoint>, Vec<(String, f64)>);

/// Test metrics against training steps (log scale), one panel per metric, a line per model and a
/// dashed horizontal line per baseline. The legend is a strip below the panels, so it hides no point.
pub fn learning_curve_svg(panels: &[CurvePanel]) -> Result<String> {
    let fail = |e: &dyn std::fmt::Display| plot_error("learning curve", e);
    let mut models: Vec<String> = panels.iter().flat_map(|p| p.1.iter().map(|c| c.model.clone())).collect();
    models.sort();
    models.dedup();
    let baselines: Vec<String> = panels.first().map(|p| p.2.iter().map(|b| b.0.clone()).collect()).unwrap_or_default();
    let model_colour = |m: &str| MODEL_COLOURS[models.iter().position(|x| x == m).unwrap_or(0) % MODEL_COLOURS.len()];
    let baseline_colour = |j: usize| BASELINE_COLOURS[j % BASELINE_COLOURS.len()];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (420 * panels.len().max(1) as u32, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let (charts, legend) = root.split_vertically(460);
        let areas = charts.split_evenly((1, panels.len().max(1)));
        for ((metric, points, lines), area) in panels.iter().zip(areas.iter()) {
            let (s_min, s_max) = points.iter().fold((f64::INFINITY, 0.0f64), |(l, h), p| (l.min(p.steps as f64), h.max(p.steps as f64)));
            let (s_min, s_max) = if s_min.is_finite() { (s_min / 1.5, s_max * 1.5) } else { (1.0, 10.0) };
            let (y_min, y_max) = padded_range(points.iter().map(|p| p.value).chain(lines.iter().map(|b| b.1)));
            let mut chart = ChartBuilder::on(area)
                .caption(metric, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(56)
                .build_cartesian_2d((s_min..s_max).log_scale(), y_min..y_max)
                .map_err(|e| fail(&e))?;
            // Few whole-number step labels and no minor grid: a log axis labels every minor tick otherwise.
            chart
                .configure_mesh()
                .x_desc("training steps (log scale)")
                .x_labels(4)
                .x_label_formatter(&|v| format!("{v:.0}"))
                .light_line_style(WHITE)
                .draw()
                .map_err(|e| fail(&e))?;
            for (j, (_, value)) in lines.iter().enumerate() {
                let style = baseline_colour(j).stroke_width(1);
                chart.draw_series(DashedLineSeries::new(vec![(s_min, *value), (s_max, *value)], 6, 4, style)).map_err(|e| fail(&e))?;
            }
            for model in &models {
                let colour = model_colour(model);
                let mut line: Vec<(f64, f64)> = points.iter().filter(|p| &p.model == model).map(|p| (p.steps as f64, p.value)).collect();
                line.sort_by(|a, b| a.0.total_cmp(&b.0));
                chart.draw_series(LineSeries::new(line.iter().copied(), colour.stroke_width(2))).map_err(|e| fail(&e))?;
                chart.draw_series(line.iter().map(|&p| Circle::new(p, 4, colour.filled()))).map_err(|e| fail(&e))?;
            }
        }
        let font = ("sans-serif", 13).into_font();
        let entries = models
            .iter()
            .map(|m| (m.clone(), model_colour(m), false))
            .chain(baselines.iter().enumerate().map(|(j, b)| (format!("{b} (baseline)"), baseline_colour(j), true)));
        for (i, (label, colour, dashed)) in entries.enumerate() {
            let (x, y) = (20 + 200 * (i % 5) as i32, 20 + 28 * (i / 5) as i32);
            let style = colour.stroke_width(if dashed { 1 } else { 3 });
            let segment = if dashed { vec![(x, y), (x + 10, y)] } else { vec![(x, y), (x + 24, y)] };
            legend.draw(&PathElement::new(segment, style)).map_err(|e| fail(&e))?;
            if dashed {
                legend.draw(&PathElement::new(vec![(x + 14, y), (x + 24, y)], style)).map_err(|e| fail(&e))?;
            }
            legend.draw(&Text::new(label, (x + 30, y - 7), font.clone())).map_err(|e| fail(&e))?;
        }
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
    // Metrics without a value (the truth metrics on real data) get no panel.
    let metrics: Vec<usize> =
        (0..METRICS.len()).filter(|&m| !METRICS[m].is_count && rows.iter().any(|r| r.values[m].is_finite())).collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1500, 760)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let panels = root.split_evenly((2, metrics.len().div_ceil(2)));
        for (panel, &m) in panels.iter().zip(&metrics) {
            let (lo, hi) = padded_range(rows.iter().map(|r| r.values[m]));
            let better = if METRICS[m].higher_is_better { "higher is better" } else { "lower is better" };
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{} ({better})", METRICS[m].name), ("sans-serif", 15))
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
