//! The baselines against values derived by hand on a store small enough to read, and the proof
//! that none of them reads a test condition's cells.

mod common;
use common::tolerance as tol;

use ptrag_engine::data::split::{Fold, HeldOut, SplitFile};
use ptrag_engine::data::store::{ExprDtype, Manifest, Store, StoreWriter, FORMAT, VERSION};
use ptrag_engine::score::baselines::{Baseline, Baselines, RIDGE_PENALTIES};
use std::path::Path;

const PERTS: [&str; 7] = ["non-targeting", "P1", "P2", "P3", "P4", "P5", "P6"];

/// Two genes, cell types A (the target) and B. In A: P1-P3 train, P4 validation, P5 and P6 test;
/// in B every perturbation is training data. A's control mean is [2, 2], B's [1, 1].
fn store(dir: &Path, p6_in_a: [f32; 2]) -> Store {
    let mut w = StoreWriter::create(dir, 2, ExprDtype::F32).unwrap();
    let a: [(u32, [f32; 2]); 8] = [
        (0, [1.0, 1.0]),
        (0, [3.0, 3.0]),
        (1, [3.0, 2.0]),
        (1, [3.0, 2.0]),
        (2, [2.0, 4.0]),
        (3, [5.0, 5.0]),
        (4, [3.0, 3.0]),
        (5, [9.0, 9.0]),
    ];
    for (p, x) in a.iter().chain(&[(6, p6_in_a)]) {
        w.push_cell(x, *p, 0, 0).unwrap();
    }
    let b: [(u32, [f32; 2]); 8] = [
        (0, [0.0, 0.0]),
        (0, [2.0, 2.0]),
        (1, [2.0, 1.0]),
        (2, [1.0, 3.0]),
        (3, [4.0, 4.0]),
        (4, [2.0, 2.0]),
        (5, [2.0, 4.0]),
        (6, [3.0, 1.0]),
    ];
    for (p, x) in &b {
        w.push_cell(x, *p, 1, 0).unwrap();
    }
    let genept: [f32; 14] = [0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.2, 1.0, 0.1, 0.1, 1.0];
    let mut split = SplitFile { dataset: "t".into(), ..SplitFile::default() };
    split.fewshot.insert("a".into(), HeldOut { val: vec!["P4".into()], test: vec!["P5".into(), "P6".into()] });
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        source: "hand-made".into(),
        n_cells: 0,
        expression_dtype: ExprDtype::F32,
        genes: vec!["G0".into(), "G1".into()],
        perturbations: PERTS.iter().map(|s| s.to_string()).collect(),
        control: PERTS[0].into(),
        cell_types: vec!["A".into(), "B".into()],
        n_batches: 1,
        embed_dim: 2,
        fingerprint: None,
    };
    Store::open(w.finish(manifest, &genept, &split.to_toml(), &[]).unwrap()).unwrap()
}

fn fit(store: &Store) -> Baselines {
    let split = SplitFile::read(&store.split_path).unwrap();
    Baselines::fit(store, &Fold::new(store, &split, &store.split_path, 0).unwrap()).unwrap()
}

fn close(got: &[f64], want: &[f64], what: &str) {
    assert!(got.iter().zip(want).all(|(a, b)| (a - b).abs() < tol::SAME_VALUES) && got.len() == want.len(), "{what}: {got:?} != {want:?}");
}

#[test]
fn baselines_match_hand_derived_values() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(&tmp.path().join("s"), [7.0, 1.0]);
    let b = fit(&s);
    // A's training changes: P1 [1, 0], P2 [0, 2], P3 [3, 3]; the control's cells are not among them.
    close(&b.shift(Baseline::Control, 5), &[0.0, 0.0], "control");
    close(&b.shift(Baseline::TrainingMean, 5), &[4.0 / 3.0, 5.0 / 3.0], "training-mean");
    // P5 in B: [2, 4] - [1, 1]
    close(&b.shift(Baseline::CrossCellType, 5), &[1.0, 3.0], "cross-cell-type P5");
    close(&b.shift(Baseline::CrossCellType, 6), &[2.0, 0.0], "cross-cell-type P6");
    // P5 = (1, 0.1) is nearest to P1 (1, 0), then P3 (1, 1); P6 = (0.1, 1) nearest to P2.
    close(&b.neighbours(5, 1), &[1.0, 0.0], "neighbours k=1");
    close(&b.neighbours(5, 2), &[2.0, 1.5], "neighbours k=2");
    close(&b.neighbours(6, 1), &[0.0, 2.0], "neighbours P6 k=1");
    // Three training perturbations: every k of the grid is clamped to 3, the training mean.
    assert_eq!(b.choices.neighbours_k, 3);
    close(&b.shift(Baseline::Neighbours, 5), &[4.0 / 3.0, 5.0 / 3.0], "neighbours, chosen k");
    // Ridge: an infinite penalty leaves the intercept (the training mean); a vanishing one
    // interpolates the three training perturbations (more features than points).
    close(&b.linear_at(5, 1e12), &[4.0 / 3.0, 5.0 / 3.0], "linear, huge penalty");
    let fit_p1 = b.linear_at(1, 1e-12);
    assert!(
        (fit_p1[0] - 1.0).abs() < tol::RIDGE_VANISHING_PENALTY && fit_p1[1].abs() < tol::RIDGE_VANISHING_PENALTY,
        "linear, tiny penalty, P1: {fit_p1:?}"
    );
    // The chosen penalty is the validation argmin; P4's validation change is [1, 1].
    assert_eq!(b.choices.ridge_val_mse.len(), RIDGE_PENALTIES.len());
    let argmin = b.choices.ridge_val_mse.iter().min_by(|a, c| a.1.total_cmp(&c.1)).unwrap().0;
    assert_eq!(b.choices.ridge_penalty, argmin);
    close(&b.shift(Baseline::Linear, 5), &b.linear_at(5, argmin), "linear at the chosen penalty");
    // Cells: the paired controls centred on A's control mean [2, 2], plus the shift, not clamped.
    let cells = b.predict_cells(Baseline::CrossCellType, 6, &[1.0, 1.0, 0.0, 0.0]);
    close(&cells, &[2.0 + 0.5 + 2.0, 2.0 + 0.5, 2.0 - 0.5 + 2.0, 2.0 - 0.5], "predicted cells");
    let cells = b.predict_cells(Baseline::Control, 5, &[0.5, -9.0]);
    close(&cells, &[2.0, 2.0], "a single paired cell lands on the control mean");
}

#[test]
fn no_baseline_reads_a_test_conditions_cells() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, other) = (fit(&store(&tmp.path().join("a"), [7.0, 1.0])), fit(&store(&tmp.path().join("b"), [0.5, 40.0])));
    for baseline in Baseline::ALL {
        for p in 1..PERTS.len() as u32 {
            assert_eq!(one.shift(baseline, p), other.shift(baseline, p), "{} moved for {}", baseline.name(), PERTS[p as usize]);
        }
    }
    assert_eq!(format!("{:?}", one.choices), format!("{:?}", other.choices));
}

/// `linear-pcs` and `linear-neighbours` take the validation argmin of their grids; the blend is
/// the weighted sum of `linear` and the chosen `neighbours`, and `linear-pcs` is never worse than
/// `linear` on validation (its grid holds `linear`'s own components and penalty).
#[test]
fn the_tuned_baselines_choose_on_validation() {
    use ptrag_engine::score::baselines::{BLEND_WEIGHTS, COMPONENT_GRID, LINEAR_COMPONENTS};
    let tmp = tempfile::tempdir().unwrap();
    let b = fit(&store(&tmp.path().join("s"), [7.0, 1.0]));
    let argmin = |scores: &[(f64, f64)]| scores.iter().min_by(|a, c| a.1.total_cmp(&c.1)).unwrap().0;
    assert_eq!(b.choices.blend_val_mse.len(), BLEND_WEIGHTS.len());
    assert_eq!(b.choices.blend_weight, argmin(&b.choices.blend_val_mse));
    let w = b.choices.blend_weight;
    let (linear, neighbours) = (b.shift(Baseline::Linear, 5), b.shift(Baseline::Neighbours, 5));
    let want: Vec<f64> = linear.iter().zip(&neighbours).map(|(l, n)| w * l + (1.0 - w) * n).collect();
    close(&b.shift(Baseline::LinearNeighbours, 5), &want, "the blend at the chosen weight");
    // Weight 1 is `linear`: its validation error is `linear`'s at the chosen penalty.
    let at_one = b.choices.blend_val_mse.iter().find(|(w, _)| *w == 1.0).unwrap().1;
    let linear_val = b.choices.ridge_val_mse.iter().find(|(l, _)| *l == b.choices.ridge_penalty).unwrap().1;
    assert!((at_one - linear_val).abs() < tol::SAME_VALUES, "{at_one} vs {linear_val}");

    assert_eq!(b.choices.pcs_val_mse.len(), COMPONENT_GRID.len() * RIDGE_PENALTIES.len());
    let best = b.choices.pcs_val_mse.iter().min_by(|a, c| a.1.total_cmp(&c.1)).unwrap();
    assert_eq!((b.choices.pcs_components, b.choices.pcs_penalty), best.0);
    let own = b.choices.pcs_val_mse.iter().find(|((c, l), _)| *c == LINEAR_COMPONENTS && *l == b.choices.ridge_penalty).unwrap().1;
    assert!((own - linear_val).abs() < tol::SAME_VALUES && best.1 <= own, "{} vs {own}", best.1);
}
