//! Planted-truth retrieval metrics against values derived by hand.

mod common;
use common::tolerance as tol;

use ptrag_engine::data::truth::TruthFile;
use ptrag_engine::score::planted::{planted_metrics, PlantedTruth};
use ptrag_engine::score::retrieval::RetrievalRecord;

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Pathway 0 is active in X only, pathway 1 in both. Q acts through 0 and 1; A through 0; B
/// through 1; C through none (no pathway).
fn truth() -> PlantedTruth {
    let t = TruthFile {
        pathways_of: vec![vec![], vec![0, 1], vec![0], vec![1], vec![]],
        activity: vec![vec![1.0, 0.5], vec![0.0, 0.7]],
        acting: None,
    };
    PlantedTruth::new(t, &names(&["ctrl", "Q", "A", "B", "C"]), &names(&["X", "Y"])).unwrap()
}

fn record(cell_type: &str, cells: usize, selected: Option<Vec<f64>>) -> RetrievalRecord {
    RetrievalRecord {
        perturbation: "Q".into(),
        cell_type: cell_type.into(),
        set: 0,
        cells,
        retrieved: names(&["A", "B", "C"]),
        similarity: vec![0.9, 0.8, 0.7],
        selected,
    }
}

#[test]
fn relevance_follows_the_pathways_active_in_the_cell_type() {
    let t = truth();
    assert!(t.relevant("X", "Q", "A") && t.relevant("X", "Q", "B") && !t.relevant("X", "Q", "C"));
    // pathway 0 is silent in Y: A no longer shares an active pathway with Q there
    assert!(!t.relevant("Y", "Q", "A") && t.relevant("Y", "Q", "B"));
}

#[test]
fn precision_recall_and_jaccard_match_hand_values() {
    let t = truth();
    // X: A and B relevant. 4 cells gave weights A 4, B 0, C 2. Y: only B relevant; weights A 1, B 1, C 0 over 2 cells.
    let records = vec![record("X", 4, Some(vec![4.0, 0.0, 2.0])), record("Y", 2, Some(vec![1.0, 1.0, 0.0]))];
    let m = planted_metrics(&records, &t);
    let (x, y) = (&m["X"], &m["Y"]);
    assert!(
        (x.retrieval_precision - 2.0 / 3.0).abs() < tol::F64_EXACT_ABS && (y.retrieval_precision - 1.0 / 3.0).abs() < tol::F64_EXACT_ABS
    );
    assert!((x.selection_precision.unwrap() - 4.0 / 6.0).abs() < tol::F64_EXACT_ABS, "{x:?}");
    assert!((x.selection_recall.unwrap() - 4.0 / 8.0).abs() < tol::F64_EXACT_ABS, "{x:?}");
    assert!((x.mean_selected.unwrap() - 1.5).abs() < tol::F64_EXACT_ABS);
    assert!(
        (y.selection_precision.unwrap() - 0.5).abs() < tol::F64_EXACT_ABS && (y.selection_recall.unwrap() - 0.5).abs() < tol::F64_EXACT_ABS
    );
    // ideal sets {A, B} and {B}: Jaccard 1/2. Measured top-10 (positive weights): {A, C} and {A, B}: 1/3.
    assert!((x.ideal_jaccard.unwrap() - 0.5).abs() < tol::F64_EXACT_ABS && (y.ideal_jaccard.unwrap() - 0.5).abs() < tol::F64_EXACT_ABS);
    assert!((x.measured_jaccard.unwrap() - 1.0 / 3.0).abs() < tol::F64_EXACT_ABS, "{x:?}");

    // A model that does not select: retrieval precision only; its top 10 retrieved are the same
    // in both cell types.
    let m = planted_metrics(&[record("X", 4, None), record("Y", 2, None)], &t);
    assert!(m["X"].selection_precision.is_none() && m["X"].mean_selected.is_none());
    assert_eq!(m["X"].measured_jaccard, Some(1.0));
    // One cell type: no Jaccard.
    assert!(planted_metrics(&[record("X", 4, None)], &t)["X"].ideal_jaccard.is_none());
}

#[test]
fn context_specificity_plants_cell_type_specific_pathways() {
    use ptrag_engine::data::synth::{generate, SynthConfig};
    let tmp = tempfile::tempdir().unwrap();
    let read = |x: f64, name: &str| -> TruthFile {
        let cfg = SynthConfig::preset("tiny", 3).unwrap().with_context_specificity(x).unwrap();
        let dir = generate(&cfg, &tmp.path().join(name), true, false).unwrap().dir;
        serde_json::from_str(&std::fs::read_to_string(dir.join("synth_truth.json")).unwrap()).unwrap()
    };
    let silent = |t: &TruthFile| t.activity.iter().flatten().filter(|&&a| a == 0.0).count();
    let (default, high) = (read(0.25, "default"), read(0.75, "high"));
    assert!(silent(&high) > silent(&default), "more silent pathways at 0.75");
    // At 0.75 some two-pathway perturbation acts through a pathway in one cell type that is active,
    // but not acting, in another: switched off there.
    let acting = high.acting.as_ref().unwrap();
    let switched = (0..high.pathways_of.len()).any(|p| {
        high.pathways_of[p].iter().any(|&pw| (0..acting.len()).any(|ct| high.activity[ct][pw] > 0.0 && !acting[ct][p].contains(&pw)))
    });
    assert!(switched, "no perturbation switches pathway between cell types");
    // At the default nothing is switched off: acting = the pathways active there.
    let acting = default.acting.as_ref().unwrap();
    for (ct, act) in default.activity.iter().enumerate() {
        for (p, pws) in default.pathways_of.iter().enumerate() {
            let active: Vec<usize> = pws.iter().copied().filter(|&pw| act[pw] > 0.0).collect();
            assert_eq!(acting[ct][p], active);
        }
    }
    assert!(SynthConfig::preset("tiny", 3).unwrap().with_context_specificity(1.0).is_err());
    assert_eq!(SynthConfig::preset("tiny", 3).unwrap().with_context_specificity(0.25).unwrap(), SynthConfig::preset("tiny", 3).unwrap());
}

/// The `calibrated` preset, at the size of `tiny`: a two-pathway gene acts in each cell type through
/// its more active pathway only; its mechanisms are recorded in the store's source (and the original
/// presets' sources do not change); `--context-specificity` is its rewiring; and its rewiring moves
/// how much of a perturbation's response transfers between cell types.
#[test]
fn calibrated_preset_uses_the_more_active_pathway_and_rewires_programs() {
    use ptrag_engine::data::synth::{generate, SynthConfig, CALIBRATED};
    let tmp = tempfile::tempdir().unwrap();
    let at_tiny_size = |rewiring: f64| {
        let mut cfg = SynthConfig::preset("calibrated", 3).unwrap().with_context_specificity(rewiring).unwrap();
        let tiny = SynthConfig::preset("tiny", 3).unwrap();
        (cfg.genes, cfg.perturbations, cfg.pathways, cfg.embed_dim) = (tiny.genes, tiny.perturbations, tiny.pathways, tiny.embed_dim);
        (cfg.cells_per_condition, cfg.controls_per_cell_type, cfg.batches_per_cell_type) = (12, 60, 2);
        cfg
    };
    let cfg = at_tiny_size(CALIBRATED.rewiring);
    assert!(cfg.source().contains("\"biology\"") && !SynthConfig::preset("small", 42).unwrap().source().contains("biology"));
    assert_eq!(cfg.context_specificity_of(), (CALIBRATED.rewiring, true));
    assert_eq!(at_tiny_size(0.2).biology.unwrap().rewiring, 0.2);
    let dir = generate(&cfg, &tmp.path().join("c"), true, false).unwrap().dir;
    let truth: TruthFile = serde_json::from_str(&std::fs::read_to_string(dir.join("synth_truth.json")).unwrap()).unwrap();
    let acting = truth.acting.as_ref().unwrap();
    let mut two = 0;
    for (p, pws) in truth.pathways_of.iter().enumerate().filter(|(_, pws)| pws.len() == 2) {
        two += 1;
        for (ct, act) in truth.activity.iter().enumerate() {
            let more_active = if act[pws[1]] > act[pws[0]] { pws[1] } else { pws[0] };
            let expected: Vec<usize> = [more_active].into_iter().filter(|&pw| act[pw] > 0.0).collect();
            assert_eq!(acting[ct][p], expected, "perturbation {p} in cell type {ct}");
        }
    }
    assert!(two > 0, "no two-pathway perturbation to check");

    // The planted changes of the same perturbation in two cell types correlate less when the
    // programs are rewired more.
    let transfer = |rewiring: f64, name: &str| -> f64 {
        let dir = generate(&at_tiny_size(rewiring), &tmp.path().join(name), true, false).unwrap().dir;
        let means = ptrag_engine::data::truth::TruthMeans::load(&ptrag_engine::data::store::Store::open(&dir).unwrap()).unwrap().unwrap();
        let perts = means.meta.perturbations as u32;
        let r: Vec<f64> = (1..perts).map(|p| pearson(&means.change(p, 0), &means.change(p, 1))).collect();
        r.iter().sum::<f64>() / r.len() as f64
    };
    let (shared, rewired) = (transfer(0.0, "r0"), transfer(0.9, "r9"));
    assert!(shared > rewired + 0.1, "cross-cell-type correlation {shared:.3} unrewired vs {rewired:.3} at 0.9");
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    ptrag_engine::score::metrics::pearson(a, b)
}
