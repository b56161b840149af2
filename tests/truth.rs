//! The planted truth of a synthetic store: its means against a direct Monte Carlo, the files it adds
//! beside the store, and a model's mean change averaged over control draws.

mod common;
use common::tolerance as tol;
use common::{small_config, tiny_store, trainer};

use ptrag_engine::data::sampler::evaluation_sets;
use ptrag_engine::data::store::Store;
use ptrag_engine::data::synth::{generate, SynthConfig};
use ptrag_engine::data::truth::{TruthMeans, MEANS_DATA, MEANS_META};
use ptrag_engine::model::ModelKind;

/// Per (cell type, perturbation): cells, and per gene the sum and sum of squares of the expression.
fn condition_moments(store: &Store) -> Vec<(f64, Vec<f64>, Vec<f64>)> {
    let (g, np) = (store.n_genes(), store.manifest.n_perturbations());
    let mut m = vec![(0.0, vec![0.0; g], vec![0.0; g]); store.manifest.cell_types.len() * np];
    let mut row = vec![0.0f32; g];
    for c in 0..store.manifest.n_cells {
        store.expression_row(c, &mut row);
        let slot = &mut m[store.cell_type[c] as usize * np + store.cell_perturbation[c] as usize];
        slot.0 += 1.0;
        for ((s, q), &v) in slot.1.iter_mut().zip(&mut slot.2).zip(&row) {
            *s += v as f64;
            *q += (v as f64).powi(2);
        }
    }
    m
}

/// With 1,500 cells per condition, each observed mean change differs from the stored planted one by
/// its own sampling error plus the planted means' stated Monte Carlo error, and by nothing more: the
/// summed squared differences over all 120 conditions and 48 genes (5,760 terms, so a relative
/// standard deviation of about 2%) are within 15% of their expectation. A truth without the
/// penetrance, with the substates or batches weighted wrongly, or with its own error understated
/// would be off by far more.
#[test]
fn stored_truth_agrees_with_a_direct_monte_carlo_within_its_stated_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = SynthConfig::preset("tiny", 5).unwrap();
    (cfg.cells_per_condition, cfg.controls_per_cell_type) = (1500, 6000);
    generate(&cfg, &tmp.path().join("s"), true, false).unwrap();
    let store = Store::open(tmp.path().join("s")).unwrap();
    let truth = TruthMeans::load(&store).unwrap().expect("the store has planted means");
    let (g, np) = (store.n_genes(), store.manifest.n_perturbations());
    let moments = condition_moments(&store);
    let mean_and_error = |(n, s, q): &(f64, Vec<f64>, Vec<f64>)| -> (Vec<f64>, Vec<f64>) {
        let mean: Vec<f64> = s.iter().map(|s| s / n).collect();
        let var_of_mean = q.iter().zip(&mean).map(|(q, m)| (q / n - m * m) * n / (n - 1.0) / n).collect();
        (mean, var_of_mean)
    };
    let (mut found, mut expected) = (0.0, 0.0);
    let (mut control_found, mut control_expected) = (0.0, 0.0);
    for ct in 0..store.manifest.cell_types.len() {
        let (control, control_error) = mean_and_error(&moments[ct * np + store.control_index as usize]);
        let planted_control = truth.control(ct as u32);
        control_found += control.iter().zip(&planted_control).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
        control_expected += control_error.iter().sum::<f64>() + g as f64 * truth.meta.control_mc_mse[ct];
        for p in (0..np as u32).filter(|&p| p != store.control_index) {
            let (mean, error) = mean_and_error(&moments[ct * np + p as usize]);
            let planted = truth.change(p, ct as u32);
            found += (0..g).map(|i| (mean[i] - control[i] - planted[i]).powi(2)).sum::<f64>();
            expected += (0..g).map(|i| error[i] + control_error[i]).sum::<f64>() + g as f64 * truth.meta.change_mc_mse[ct];
        }
    }
    let ratio = found / expected;
    assert!((0.85..1.15).contains(&ratio), "observed vs planted change: {found:.4} against an expected {expected:.4} ({ratio:.3})");
    // 4 x 48 terms: a relative standard deviation of about 10%.
    let control_ratio = control_found / control_expected;
    assert!((0.6..1.5).contains(&control_ratio), "control means: {control_found:.3e} against {control_expected:.3e}");
    // The stated error is small beside the sampling error of the built-in data's conditions (48 cells).
    assert!(truth.meta.change_mc_mse.iter().all(|&e| e > 0.0 && e < 0.01), "{:?}", truth.meta.change_mc_mse);
}

/// The planted means are files added beside the store: every other file is the same, byte for byte,
/// with them or without them.
#[test]
fn planted_means_leave_every_other_file_of_the_store_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SynthConfig::preset("tiny", 9).unwrap();
    let (with, without) = (tmp.path().join("with"), tmp.path().join("without"));
    generate(&cfg, &with, true, false).unwrap();
    generate(&cfg, &without, false, false).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&without).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert!(names.contains(&"manifest.json".to_string()) && names.contains(&"synth_truth.json".to_string()), "{names:?}");
    for name in &names {
        assert_eq!(std::fs::read(with.join(name)).unwrap(), std::fs::read(without.join(name)).unwrap(), "{name} differs");
    }
    assert!(with.join(MEANS_META).exists() && with.join(MEANS_DATA).exists());
    assert!(!without.join(MEANS_META).exists());
    assert!(TruthMeans::load(&Store::open(&without).unwrap()).unwrap().is_none());
}

/// Damaged means are an error naming the file and what was expected, never a silent truth.
#[test]
fn damaged_planted_means_name_the_file() {
    let (_tmp, store) = tiny_store();
    let data = store.dir.join(MEANS_DATA);
    let bytes = std::fs::read(&data).unwrap();
    std::fs::write(&data, &bytes[..bytes.len() - 4]).unwrap();
    let err = TruthMeans::load(&store).unwrap_err().to_string();
    assert!(err.contains(MEANS_DATA) && err.contains("length"), "{err}");
    let mut nan = bytes.clone();
    nan[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&data, &nan).unwrap();
    let err = TruthMeans::load(&store).unwrap_err().to_string();
    assert!(err.contains(MEANS_DATA) && err.contains("finite"), "{err}");
    std::fs::write(&data, &bytes).unwrap();
    let meta = store.dir.join(MEANS_META);
    let text = std::fs::read_to_string(&meta).unwrap().replace("\"genes\": 48", "\"genes\": 47");
    std::fs::write(&meta, text).unwrap();
    let err = TruthMeans::load(&store).unwrap_err().to_string();
    assert!(err.contains(MEANS_META) && err.contains("genes"), "{err}");
}

/// The R-draw predicted mean is the mean of R single-draw predictions made with the same draws: the
/// first pairing from the evaluation RNG, the others from the draws' own stream, each set paired anew.
#[test]
fn drawn_prediction_is_the_mean_of_single_draw_predictions() {
    let (_tmp, store) = tiny_store();
    let tr = trainer(&store, small_config(&store, ModelKind::PtRag));
    let g = store.n_genes();
    let cond = &tr.fold.test[0];
    let draws = 3;
    let drawn = tr.predict_condition_drawn(cond, draws, &mut tr.eval_rng(), &mut tr.draws_rng()).unwrap();

    let (mut rng, mut draws_rng) = (tr.eval_rng(), tr.draws_rng());
    let sets = evaluation_sets(&store, &tr.fold, cond, tr.cfg.cells_per_set, &mut rng);
    let mut per_draw = vec![vec![0.0f64; g]; draws];
    let mut first = Vec::new();
    for set in &sets {
        let cells = tr.predict_sets(std::slice::from_ref(set), &mut rng).unwrap();
        first.extend_from_slice(&cells);
        let mut add = |draw: usize, cells: &[f32]| {
            for row in cells.chunks(g) {
                per_draw[draw].iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64 / cond.cells.len() as f64);
            }
        };
        add(0, &cells);
        for draw in 1..draws {
            let repaired = set.repaired(&store, &tr.fold.controls[cond.cell_type as usize], &mut draws_rng);
            assert_ne!(repaired.control_rows, set.control_rows, "a new draw pairs other control cells");
            add(draw, &tr.predict_sets(&[repaired], &mut draws_rng).unwrap());
        }
    }
    let mean: Vec<f64> = (0..g).map(|i| per_draw.iter().map(|d| d[i]).sum::<f64>() / draws as f64).collect();
    common::assert_within(&drawn.mean_pred, &mean, tol::F32_REDUCTION, "R-draw mean");
    assert_eq!(drawn.pred, first, "the cells are the first draw's");
    let spread = per_draw[1].iter().zip(&per_draw[0]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(spread > 1e-6, "the draws must differ for this test to mean anything ({spread})");
}
