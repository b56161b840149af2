//! Report figures: the numbers they draw (box plot statistics, smoothed curves) against values
//! worked out by hand, and the SVG they write carries every label and value it should.

use ptrag_engine::eval::figures::*;
use ptrag_engine::eval::report::ConditionRow;
use ptrag_engine::score::retrieval::RetrievalAnalysis;

#[test]
fn box_statistics_follow_tukey() {
    // 1..8 and 100, sorted positions 0..8: quartiles at positions 2, 4, 6 -> 3, 5, 7 (numpy's
    // percentile gives the same); IQR 4, fences -3 and 13: whiskers at 1 and 8, 100 is an outlier.
    let b = BoxStats::new(&[5.0, 1.0, 2.0, 100.0, 3.0, 4.0, 6.0, 7.0, 8.0, f64::NAN]).unwrap();
    assert_eq!(b, BoxStats { q1: 3.0, median: 5.0, q3: 7.0, whisker_low: 1.0, whisker_high: 8.0, outliers: vec![100.0] });
    // 1..4: positions 0.75, 1.5, 2.25 interpolate to 1.75, 2.5, 3.25 (numpy: the same); no outliers.
    let b = BoxStats::new(&[4.0, 3.0, 2.0, 1.0]).unwrap();
    assert_eq!((b.q1, b.median, b.q3, b.whisker_low, b.whisker_high), (1.75, 2.5, 3.25, 1.0, 4.0));
    assert!(b.outliers.is_empty());
    assert!(BoxStats::new(&[f64::NAN]).is_none(), "no finite values, no box");
}

#[test]
fn curves_average_ten_training_steps_and_keep_validation_points() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = String::new();
    for step in 1..=25 {
        log += &format!("{{\"step\":{step},\"loss\":{},\"energy\":{}}}\n", step as f64 + 0.5, step as f64);
        if step % 10 == 0 {
            log += &format!("{{\"step\":{step},\"val_energy\":{}}}\n", 100.0 + step as f64);
        }
    }
    log += "{\"step\":25,\"event\":\"stopped\",\"why\":\"test\"}\n";
    std::fs::write(dir.path().join("log.jsonl"), log).unwrap();
    let c = read_curve(dir.path(), "pt-rag K562").unwrap();
    // steps 1-10, 11-20, 21-25: means 5.5, 15.5, 23 in both step and energy
    assert_eq!(c.train, vec![(5.5, 5.5), (15.5, 15.5), (23.0, 23.0)]);
    assert_eq!(c.val, vec![(10.0, 110.0), (20.0, 120.0)]);
    let svg = curves_svg(&[c]).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("pt-rag K562"), "legend names the run");

    std::fs::write(dir.path().join("log.jsonl"), "{\"step\":1}\nnot json\n").unwrap();
    let err = read_curve(dir.path(), "x").unwrap_err().to_string();
    assert!(err.contains("log.jsonl") && err.contains("line 2"), "{err}");
}

#[test]
fn distributions_draw_every_model_in_reading_order() {
    let row = |model: &str, v: f64| ConditionRow {
        model: model.into(),
        target: "K562".into(),
        perturbation: "A".into(),
        cell_type: "K562".into(),
        cells: 8,
        values: vec![v; ptrag_engine::eval::report::METRICS.len()],
    };
    let rows = vec![row("pt-rag", 0.5), row("control", 0.1), row("state", 0.3), row("training-mean", 0.2), row("pt-rag", 0.7)];
    assert_eq!(model_order(&rows), ["control", "training-mean", "state", "pt-rag"]);
    let svg = distributions_svg(&rows).unwrap();
    for name in ["control", "training-mean", "state", "pt-rag", "pearson_deg (higher is better)", "energy (lower is better)"] {
        assert!(svg.contains(name), "{name} missing");
    }
    assert!(!svg.contains("degs ("), "the DEG count is not a score and gets no panel");
}

#[test]
fn jaccard_heatmap_labels_cell_types_and_values() {
    let a = RetrievalAnalysis {
        cell_types: vec!["HepG2".into(), "K562".into()],
        top10: Default::default(),
        shared_genes: vec!["A".into(), "B".into()],
        jaccard: vec![vec![1.0, 0.191], vec![0.191, 1.0]],
        mean_selected: Default::default(),
    };
    let svg = jaccard_svg(&a).unwrap();
    for text in ["HepG2", "K562", "0.191", "1.000", "(2 genes)"] {
        assert!(svg.contains(text), "{text} missing");
    }
}
