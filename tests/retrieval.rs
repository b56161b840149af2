//! Stage one (cosine top-K) and the two formulations of retrieval: once per set (ours) and once per
//! cell (the reference's) must give the same predictions, selections and gradients.

mod common;
use common::tolerance as tol;
use common::{assert_close, assert_within, small_config, tiny_store, trainer, TestRng};
use ptrag_engine::cpu::retrieval::{cosine_topk, normalise_rows};
use ptrag_engine::data::split::SplitFile;
use ptrag_engine::model::knowledge::Knowledge;
use ptrag_engine::model::{energy_loss, Model, ModelInput, ModelKind, Selection, SelfExclusion};
use ptrag_engine::tape::{Params, Tape};
use ptrag_engine::train::{knowledge_for, RetrievalDatabase, Trainer};
use rand::SeedableRng;

#[test]
fn cosine_topk_matches_brute_force_and_honours_database_and_exclusion() {
    let (n, d, k) = (40, 6, 5);
    let mut db: Vec<f32> = TestRng::new(1).vec(n * d).iter().map(|&v| v as f32).collect();
    db[7 * d..8 * d].iter_mut().for_each(|v| *v = 0.0); // a control-like zero row
    let mut normed = db.clone();
    normalise_rows(&mut normed, d);
    let allowed: Vec<bool> = (0..n).map(|i| i % 7 != 3).collect();
    let queries = [0usize, 12, 39];
    let q: Vec<f32> = queries.iter().flat_map(|&i| normed[i * d..(i + 1) * d].to_vec()).collect();
    let exclude: Vec<Option<usize>> = queries.iter().map(|&i| Some(i)).collect();
    let (mut idx, mut sims) = (vec![0u32; 3 * k], vec![0f32; 3 * k]);
    cosine_topk(&q, &normed, d, &allowed, &exclude, k, &mut idx, &mut sims);
    for (r, &qi) in queries.iter().enumerate() {
        let cos = |j: usize| {
            let (a, b) = (&db[qi * d..][..d], &db[j * d..][..d]);
            let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            if nb == 0.0 {
                0.0
            } else {
                dot / (na * nb)
            }
        };
        let mut brute: Vec<(f64, usize)> = (0..n).filter(|&j| allowed[j] && j != qi).map(|j| (cos(j), j)).collect();
        brute.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let expect: Vec<u32> = brute[..k].iter().map(|&(_, j)| j as u32).collect();
        assert_eq!(&idx[r * k..(r + 1) * k], &expect[..], "query {qi}");
        let got: Vec<f64> = sims[r * k..(r + 1) * k].iter().map(|&s| s as f64).collect();
        assert_close(
            &got,
            &brute[..k].iter().map(|&(s, _)| s).collect::<Vec<_>>(),
            tol::F32_COSINE.atol,
            tol::F32_COSINE.rtol,
            "similarities",
        );
    }
}

#[test]
fn per_set_and_per_cell_retrieval_give_identical_outputs_and_gradients() {
    let (_tmp, store) = tiny_store();
    let split = SplitFile::read(&store.split_path).unwrap();
    for kind in [ModelKind::VanillaRag, ModelKind::PtRag] {
        let cfg = small_config(&store, kind);
        let t = Trainer::new(cfg.clone(), &store, &split, &store.split_path).unwrap();
        let (batch, rng) = t.batch_for_step(0);
        let run = |per_cell: bool| {
            let mut mcfg = cfg.model.clone();
            mcfg.per_cell_retrieval = per_cell;
            let knowledge = knowledge_for(&store, &t.fold, RetrievalDatabase::All).unwrap();
            let mut params = Params::<f64>::new();
            let model = Model::new(&mcfg, Some(knowledge), &mut params, &mut rand_chacha::ChaCha8Rng::seed_from_u64(3)).unwrap();
            let noise = model.sample_noise(true, &mut rng.clone());
            let mut tape = Tape::new();
            let out =
                model.forward(&mut tape, &params, &ModelInput::from_batch(&batch, true, Selection::from_noise(noise.as_ref())).unwrap());
            let target =
                tape.constant(&[batch.sets * batch.cells, batch.genes], batch.values().unwrap().target.iter().map(|&x| x as f64).collect());
            let mut loss = energy_loss(&mut tape, out.pred, target, batch.sets, batch.cells, batch.genes);
            let w = out.selection.map(|w| tape.value(w).to_vec());
            if let Some(sel) = out.selection {
                let m = tape.mean(sel);
                let term = tape.scale(m, 0.1);
                loss = tape.add(loss, term);
            }
            let pred = tape.value(out.pred).to_vec();
            tape.backward(loss).accumulate_into(&tape, &mut params).unwrap();
            let r = out.retrieval.unwrap();
            (pred, w, params, r.rows, r.candidates)
        };
        let (pred_set, w_set, params_set, rows_set, cand_set) = run(false);
        let (pred_cell, w_cell, params_cell, rows_cell, cand_cell) = run(true);
        assert_eq!((rows_set, rows_cell), (batch.sets, batch.sets * batch.cells), "{kind:?}: query rows");
        for c in 0..rows_cell {
            let s = c / batch.cells;
            assert_eq!(cand_cell[c * 4..(c + 1) * 4], cand_set[s * 4..(s + 1) * 4], "{kind:?}: cell {c} candidates");
        }
        assert_within(&pred_cell, &pred_set, tol::F64_PER_SET_PREDICTIONS, &format!("{kind:?}: predictions"));
        assert_eq!(w_cell, w_set, "{kind:?}: selections");
        if let Some(w) = &w_set {
            assert!(w.contains(&1.0) && w.contains(&0.0), "{kind:?}: the test should select some, not all");
        }
        for (a, b) in params_cell.entries.iter().zip(&params_set.entries) {
            assert_within(&a.grad, &b.grad, tol::F64_PER_SET_GRADIENTS, &format!("{kind:?}: gradient of {}", a.name));
        }
    }
}

#[test]
fn retrieval_excludes_the_query_and_the_reference_bug_is_reachable() {
    let (_tmp, store) = tiny_store();
    let split = SplitFile::read(&store.split_path).unwrap();
    let mut cfg = small_config(&store, ModelKind::PtRag);
    let t = Trainer::new(cfg.clone(), &store, &split, &store.split_path).unwrap();
    let (batch, _) = t.batch_for_step(0);
    let candidates = |t: &Trainer, training: bool| {
        let mut tape = Tape::new();
        t.model
            .forward(&mut tape, &t.params, &ModelInput::from_batch(&batch, training, Selection::Hard).unwrap())
            .retrieval
            .unwrap()
            .candidates
    };
    let k = cfg.model.top_k;
    let fixed = candidates(&t, true);
    for (s, &p) in batch.perturbation.iter().enumerate() {
        assert!(!fixed[s * k..(s + 1) * k].contains(&p), "set {s} retrieved its own perturbation");
        assert!(!fixed[s * k..(s + 1) * k].contains(&store.control_index), "the control is not in the database");
    }
    cfg.model.self_exclusion = SelfExclusion::FirstSetInTraining;
    let buggy = Trainer::new(cfg.clone(), &store, &split, &store.split_path).unwrap();
    let train = candidates(&buggy, true);
    assert!(!train[..k].contains(&batch.perturbation[0]), "set 0 still excludes itself");
    for s in 1..batch.sets {
        assert_eq!(train[s * k], batch.perturbation[s], "with the reference bug, set {s} retrieves itself first in training");
    }
    assert_eq!(candidates(&buggy, false), fixed, "evaluation excludes correctly even in the bug mode");
}

#[test]
fn the_training_database_holds_only_training_perturbations() {
    let (_tmp, store) = tiny_store();
    let split = SplitFile::read(&store.split_path).unwrap();
    let mut cfg = small_config(&store, ModelKind::PtRag);
    cfg.retrieval_database = RetrievalDatabase::Training;
    let t = Trainer::new(cfg, &store, &split, &store.split_path).unwrap();
    let knowledge: &Knowledge = t.model.knowledge().unwrap();
    let held_out: Vec<u32> = t.fold.test.iter().chain(&t.fold.val).map(|c| c.perturbation).collect();
    let training: Vec<u32> = t.fold.train.iter().map(|c| c.perturbation).collect();
    for p in 0..store.manifest.n_perturbations() as u32 {
        let expected = training.contains(&p) && p != store.control_index;
        assert_eq!(knowledge.in_database[p as usize], expected, "perturbation {p} (held out in target: {})", held_out.contains(&p));
    }
}

#[test]
fn too_large_a_top_k_is_a_clear_error() {
    let (_tmp, store) = tiny_store();
    let split = SplitFile::read(&store.split_path).unwrap();
    let mut cfg = small_config(&store, ModelKind::VanillaRag);
    cfg.model.top_k = 500;
    let err = Trainer::new(cfg, &store, &split, &store.split_path).err().unwrap().to_string();
    assert!(err.contains("top-500") && err.contains("database"), "{err}");
}

#[test]
fn expected_selection_is_the_mean_of_sampled_selections_and_hard_its_rounding() {
    let (_tmp, store) = tiny_store();
    let t = trainer(&store, small_config(&store, ModelKind::PtRag));
    let (batch, mut rng) = t.batch_for_step(0);
    let weights = |selection: Selection| {
        let mut tape = Tape::<f32>::new();
        let out = t.model.forward(&mut tape, &t.params, &ModelInput::from_batch(&batch, false, selection).unwrap());
        tape.value(out.selection.unwrap()).iter().map(|&w| w as f64).collect::<Vec<f64>>()
    };
    let expected = weights(Selection::Expected);
    assert!(expected.iter().all(|&p| p > 0.0 && p < 1.0));
    let draws = 4000;
    let mut mean = vec![0.0; expected.len()];
    for _ in 0..draws {
        let noise = t.model.sample_noise(false, &mut rng).unwrap();
        assert!(noise.dropout.is_none(), "no dropout at evaluation");
        mean.iter_mut().zip(weights(Selection::Sampled(&noise))).for_each(|(m, w)| *m += w / draws as f64);
    }
    assert_close(&mean, &expected, tol::SAMPLED_FREQUENCY, 0.0, "sampled frequency vs expected weight");
    let hard = weights(Selection::Hard);
    let rounded: Vec<f64> = expected.iter().map(|&p| if p > 0.5 { 1.0 } else { 0.0 }).collect();
    assert_eq!(hard, rounded, "hard selection includes exactly the candidates with probability above 1/2");
}
