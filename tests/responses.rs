//! The observed-response context (`--candidate-context responses|both`, and with it the response
//! cosine of `--similarity-features` and the training mean change of `--output-anchor shift`): the
//! target cell type's test and validation cells never reach a feature, while its training cells do.

mod common;
use common::tolerance as tol;

use ptrag_engine::data::store::Store;
use ptrag_engine::model::{CandidateContext, ModelKind, OutputAnchor};
use ptrag_engine::train::Trainer;

/// A trainer of `kind` with the response context (and the similarity features), after `steps` steps.
fn trained(store: &Store, kind: ModelKind, similarity: bool, steps: usize) -> Trainer<'_> {
    trained_with(store, kind, (similarity, false), steps)
}

/// `trained` with the similarity features and the shifted output as asked.
fn trained_with(store: &Store, kind: ModelKind, (similarity, shift): (bool, bool), steps: usize) -> Trainer<'_> {
    let mut cfg = common::small_config(store, kind);
    cfg.model.candidate_context = CandidateContext::Both;
    cfg.model.similarity_features = similarity;
    cfg.model.output_anchor = if shift { OutputAnchor::Shift } else { OutputAnchor::None };
    let mut t = common::trainer(store, cfg);
    for _ in 0..steps {
        t.train_step().unwrap();
    }
    t
}

/// Every validation and test condition's predicted cells, in fold order.
fn predictions(t: &Trainer) -> Vec<Vec<f32>> {
    t.fold.val.iter().chain(&t.fold.test).map(|c| t.predict_condition(c, &mut t.eval_rng()).unwrap().0).collect()
}

#[test]
fn a_test_conditions_cells_reach_no_prediction() {
    let (tmp, store) = common::tiny_store();
    // (the shifted output reads the mean training change)
    let variants = [(ModelKind::PtRag, (false, false)), (ModelKind::VanillaRag, (false, false)), (ModelKind::PtRag, (true, true))];
    for (kind, options) in variants {
        let t = trained_with(&store, kind, options, 3);
        let name = t.cfg.model.variant_name();
        // One test and one validation condition of the target cell type, changed.
        let changed: Vec<u32> = t.fold.test[0].cells.iter().chain(&t.fold.val[0].cells).copied().collect();
        let other = common::copy_changing(&store, &tmp.path().join(format!("changed-{name}")), &changed);
        let u = trained_with(&other, kind, options, 3);
        let (a, b) = (predictions(&t), predictions(&u));
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(x == y, "{name}: condition {i} of validation + test moved when a test condition's cells changed");
        }
    }
}

/// The counterpart that makes the test above able to fail: the target cell type's training
/// cells do reach the predictions, through the candidates' observed responses alone (no step is
/// taken, so the weights are the same).
#[test]
fn a_target_training_conditions_cells_do_reach_predictions() {
    let (tmp, store) = common::tiny_store();
    let t = trained(&store, ModelKind::PtRag, false, 0);
    let target = t.fold.target as u32;
    let changed: Vec<u32> = t
        .fold
        .train
        .iter()
        .filter(|c| c.cell_type == target && c.perturbation != store.control_index)
        .flat_map(|c| c.cells.clone())
        .collect();
    let other = common::copy_changing(&store, &tmp.path().join("changed"), &changed);
    let u = trained(&other, ModelKind::PtRag, false, 0);
    assert!(predictions(&t) != predictions(&u), "the candidates' observed responses did not reach any prediction");
}

/// The reference's self-retrieval bug would hand a training set its own observed change (its
/// label) as a candidate: refused with observed responses.
#[test]
fn observed_responses_refuse_the_self_retrieval_bug() {
    use ptrag_engine::model::{ModelConfig, SelfExclusion};
    let mut cfg = ModelConfig::paper(ModelKind::PtRag, 8, 40, 1, 4);
    cfg.candidate_context = CandidateContext::Both;
    assert!(cfg.validate().is_ok());
    cfg.self_exclusion = SelfExclusion::FirstSetInTraining;
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("self-retrieval bug"), "{err}");
}

/// The similarity features read the candidates' GenePT vectors and responses: for the retrieval
/// models only.
#[test]
fn similarity_features_apply_to_the_retrieval_models_only() {
    use ptrag_engine::model::ModelConfig;
    for kind in ModelKind::ALL {
        let mut cfg = ModelConfig::paper(kind, 8, 40, 1, 4);
        cfg.similarity_features = true;
        assert_eq!(cfg.validate().is_ok(), kind.retrieves(), "{}", kind.name());
    }
}

/// Run records and checkpoints written before `output_anchor` name the anchor by booleans: the
/// shift is read as `output_anchor = "shift"`, the retired anchors are refused by name, and the
/// booleans at false read as no anchor.
#[test]
fn saved_boolean_anchors_are_upgraded_or_refused() {
    use ptrag_engine::model::{upgrade_saved_model, ModelConfig};
    let saved = |field: &str, on: bool| {
        let mut v = serde_json::to_value(ModelConfig::paper(ModelKind::State, 8, 40, 1, 0)).unwrap();
        let table = v.as_object_mut().unwrap();
        table.remove("output_anchor");
        for old in ["anchor_output", "residual_output", "shift_output"] {
            table.insert(old.into(), (old == field && on).into());
        }
        v
    };
    let read = |mut v: serde_json::Value| -> Result<ModelConfig, String> {
        upgrade_saved_model(&mut v).map_err(|e| e.to_string())?;
        Ok(serde_json::from_value(v).unwrap())
    };
    assert_eq!(read(saved("shift_output", false)).unwrap().output_anchor, OutputAnchor::None);
    assert_eq!(read(saved("shift_output", true)).unwrap().output_anchor, OutputAnchor::Shift);
    for retired in ["anchor_output", "residual_output"] {
        let err = read(saved(retired, true)).unwrap_err();
        assert!(err.contains(&format!("--{}", retired.replace('_', "-"))) && err.contains("retired"), "{err}");
    }
}

/// `--tau-start`: PT-RAG only, positive; the temperature runs geometrically from it at the first
/// step to `tau` at the last, and is `tau` throughout without it.
#[test]
fn the_temperature_anneals_from_tau_start_to_tau() {
    use ptrag_engine::model::ModelConfig;
    let mut cfg = ModelConfig::paper(ModelKind::PtRag, 8, 40, 1, 4);
    assert_eq!((cfg.tau_at(0, 400), cfg.tau_at(399, 400)), (cfg.tau, cfg.tau), "no annealing by default");
    cfg.tau_start = Some(2.0);
    cfg.tau = 0.5;
    assert!(cfg.validate().is_ok());
    let (first, middle, last) = (cfg.tau_at(0, 401), cfg.tau_at(200, 401), cfg.tau_at(400, 401));
    assert!(
        (first - 2.0).abs() < tol::F64_EXACT_ABS && (middle - 1.0).abs() < tol::F64_EXACT_ABS && (last - 0.5).abs() < tol::F64_EXACT_ABS,
        "{first} {middle} {last}"
    );
    assert!((cfg.tau_at(10_000, 401) - 0.5).abs() < tol::F64_EXACT_ABS, "past the last step it stays at tau");
    for bad in [0.0, -1.0, f64::NAN] {
        cfg.tau_start = Some(bad);
        assert!(cfg.validate().is_err(), "{bad}");
    }
    for kind in [ModelKind::State, ModelKind::StateGenept, ModelKind::VanillaRag] {
        let mut cfg = ModelConfig::paper(kind, 8, 40, 1, 4);
        cfg.tau_start = Some(2.0);
        assert!(cfg.validate().unwrap_err().to_string().contains("tau-start"), "{}", kind.name());
    }
}

/// `--soft-selection-steps`: PT-RAG only; its warm-up steps train on the expected selection. The
/// first step's energy is the energy of the expected selection's prediction on that step's batch,
/// and differs from the straight-through step's.
#[test]
fn soft_selection_steps_train_on_the_expected_selection() {
    use ptrag_engine::model::{energy_loss, Cells, ModelConfig, ModelInput, Selection};
    use ptrag_engine::tape::Tape;
    for kind in [ModelKind::State, ModelKind::StateGenept, ModelKind::VanillaRag] {
        let mut cfg = ModelConfig::paper(kind, 8, 40, 1, 4);
        cfg.soft_selection_steps = 10;
        assert!(cfg.validate().unwrap_err().to_string().contains("soft-selection-steps"), "{}", kind.name());
    }
    let (_dir, store) = common::tiny_store();
    let mut cfg = common::small_config(&store, ModelKind::PtRag);
    let sampled = common::trainer(&store, cfg.clone()).train_step().unwrap();
    cfg.model.soft_selection_steps = 1;
    let mut t = common::trainer(&store, cfg);
    let (batch, _) = t.batch_for_step(0);
    let mut tape = Tape::<f32>::new();
    let out = t.model.forward(&mut tape, &t.params, &ModelInput::from_batch(&batch, true, Selection::Expected).unwrap());
    let target = Cells::Values(&batch.values().unwrap().target).on_tape(&mut tape, batch.sets * batch.cells, batch.genes);
    let energy = energy_loss(&mut tape, out.pred, target, batch.sets, batch.cells, batch.genes);
    let want = tape.value(energy)[0] as f64;
    let soft = t.train_step().unwrap();
    assert!((soft.energy - want).abs() <= tol::F32_MODEL.atol + tol::F32_MODEL.rtol * want.abs(), "{} vs {want}", soft.energy);
    assert_ne!(soft.energy, sampled.energy, "the warm-up step is the sampled step");
}
