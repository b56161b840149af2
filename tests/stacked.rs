//! The stacked model (`--output-anchor linear`): at step 0 it is the `linear` baseline, validation
//! may keep step 0, and a training condition's anchor comes from a ridge that did not see it.

mod common;
use common::tolerance as tol;

use ptrag_engine::data::responses::mean_of;
use ptrag_engine::model::{CandidateContext, ModelKind, OutputAnchor};
use ptrag_engine::score::baselines::{linear_for_every_condition, Baseline, Baselines};

/// At step 0 the predicted mean change of every validation and test condition is `linear`'s, for
/// a backbone without context and for PT-RAG with observed responses and the readout (whose gate
/// starts at zero too).
#[test]
fn the_stacked_model_at_step_zero_predicts_what_linear_predicts() {
    let (_dir, store) = common::tiny_store();
    for kind in [ModelKind::StateGenept, ModelKind::PtRag] {
        let mut cfg = common::small_config(&store, kind);
        cfg.model.output_anchor = OutputAnchor::Linear;
        if kind == ModelKind::PtRag {
            (cfg.model.candidate_context, cfg.model.response_readout) = (CandidateContext::Both, true);
        }
        let t = common::trainer(&store, cfg);
        let linear = Baselines::fit(&store, &t.fold).unwrap();
        let mut rng = t.eval_rng();
        for c in t.fold.val.iter().chain(&t.fold.test) {
            let (pred, _, _) = t.predict_condition(c, &mut rng).unwrap();
            let g = store.n_genes();
            let control = mean_of(&store, &t.fold.controls[c.cell_type as usize]);
            let rows = pred.len() / g;
            let change: Vec<f64> =
                (0..g).map(|j| (0..rows).map(|r| pred[r * g + j] as f64).sum::<f64>() / rows as f64 - control[j]).collect();
            let want = linear.shift(Baseline::Linear, c.perturbation);
            common::assert_within(&change, &want, tol::F32_REDUCTION, &format!("{}: condition {}", kind.name(), c.perturbation));
        }
    }
}

/// A run whose training only worsens validation (a learning rate far too large) ends at step 0's
/// weights: step 0 was validated and kept as the best checkpoint.
#[test]
fn validation_can_choose_step_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dir, store) = common::tiny_store();
    let run = tmp.path().join("run");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ptrag-engine"))
        .args(["train", "--quiet", "--model", "state-genept", "--output-anchor", "linear", "--lr", "5", "--steps", "4"])
        .args(["--val-every", "2", "--sets-per-batch", "2", "--cells-per-set", "8", "--hidden", "16", "--layers", "1"])
        .args(["--heads", "2", "--head-dim", "4", "--mlp", "16", "--data"])
        .arg(&store.dir)
        .arg("--run-dir")
        .arg(&run)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    let energies: Vec<(u64, f64)> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| Some((v["step"].as_u64()?, v.get("val_energy")?.as_f64()?)))
        .collect();
    assert_eq!(energies.first().map(|e| e.0), Some(0), "step 0 validated: {energies:?}");
    assert!(energies[1..].iter().all(|e| e.1 > energies[0].1), "training worsened validation: {energies:?}");
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["best_step"], 0, "{metrics}");
}

/// Cross-fitting: a training condition's anchor does not change when its own cells change, in the
/// target cell type and in another (neither its ridge nor that ridge's penalty saw them); the
/// anchors of the other conditions of its cell type, whose ridges saw it, do (so the test can fail).
#[test]
fn a_training_conditions_anchor_does_not_see_its_own_cells() {
    let (tmp, store) = common::tiny_store();
    let cfg = common::small_config(&store, ModelKind::StateGenept);
    let t = common::trainer(&store, cfg);
    let fold = &t.fold;
    let before = linear_for_every_condition(&store, fold).unwrap();
    let other_type = (fold.target as u32 + 1) % fold.controls.len() as u32;
    for cell_type in [fold.target as u32, other_type] {
        let c = fold.train.iter().find(|c| c.cell_type == cell_type && c.perturbation != store.control_index).unwrap();
        let changed = common::copy_changing(&store, &tmp.path().join(format!("changed-{cell_type}")), &c.cells);
        let after = linear_for_every_condition(&changed, fold).unwrap();
        let key = (c.perturbation, cell_type);
        common::assert_within(&after[&key], &before[&key], tol::F64_FACTORISED, &format!("the anchor of {key:?}"));
        let moved = before.keys().filter(|k| k.1 == cell_type && **k != key && before[*k] != after[*k]).count();
        assert!(moved > 0, "no other anchor of cell type {cell_type} saw the changed condition");
    }
}
