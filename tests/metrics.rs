//! Metrics and statistics against values computed by hand or by an independent derivation; the
//! source of every expected value is next to it.

mod common;
use common::tolerance as tol;
use common::{assert_close, TestRng};
use ptrag_engine::score::metrics::*;
use ptrag_engine::score::stats::*;

#[test]
fn welch_t_test_matches_an_independent_integration() {
    // a = 1..5 (mean 3, variance 2.5), b = 2, 4, .., 10 (mean 6, variance 10): t = -3 / sqrt(0.5 + 2)
    // = -1.8974, Welch-Satterthwaite df = 2.5^2 / (0.5^2/4 + 2^2/4) = 5.882. Expected p from Simpson's
    // rule (200,000 intervals) on the Student t density written with lgamma, in plain Python:
    // p = 1 - 2 * integral_0^1.8974 f(t) dt = 0.10753119493063323.
    let p = welch_t_test((3.0, 2.5, 5), (6.0, 10.0, 5));
    assert_close(&[p], &[0.10753119493063323], tol::SCIPY_WELCH_P.atol, 0.0, "Welch p");
    assert_eq!(welch_t_test((1.0, 0.0, 3), (1.0, 0.0, 3)), 1.0, "identical constant samples");
    assert_eq!(welch_t_test((1.0, 0.0, 3), (2.0, 0.0, 3)), 0.0, "different constant samples");
}

#[test]
fn mann_whitney_matches_the_scipy_documentation_example() {
    // SciPy's `mannwhitneyu` documentation (data from Conover, Practical Nonparametric Statistics):
    // males [19, 22, 16, 29, 24], females [20, 11, 17, 12]: U = 17, asymptotic two-sided
    // p = 0.11134688653314041. By hand: ranks of the males 5, 7, 3, 9, 8 (sum 32), U = 32 - 15 = 17,
    // z = (17 - 10 - 0.5) / sqrt(5 * 4 * 10 / 12) = 1.592, p = erfc(z / sqrt 2).
    let r = mann_whitney_u(&[19.0, 22.0, 16.0, 29.0, 24.0], &[20.0, 11.0, 17.0, 12.0]);
    assert_eq!(r.u, 17.0);
    assert_close(&[r.p], &[0.11134688653314041], tol::SCIPY_P_VALUE.atol, 0.0, "Mann-Whitney p");
}

#[test]
fn mann_whitney_corrects_for_ties() {
    // x = [1, 2, 2], y = [2, 3, 3], by hand: pooled ranks 1, 3, 3 | 3, 5.5, 5.5 (ties of sizes 3 and
    // 2), U = 7 - 6 = 1; variance = 3*3/12 * (7 - (24 + 6) / 30) = 0.75 * 6 = 4.5;
    // z = (8 - 4.5 - 0.5) / sqrt(4.5) = 1.41421, p = erfc(z / sqrt 2) = 0.15729920705028513.
    let r = mann_whitney_u(&[1.0, 2.0, 2.0], &[2.0, 3.0, 3.0]);
    assert_eq!(r.u, 1.0);
    assert_close(&[r.p], &[0.15729920705028513], tol::SCIPY_P_VALUE.atol, 0.0, "tie-corrected p");
    assert_eq!(mann_whitney_u(&[1.0, 1.0], &[1.0, 1.0]).p, 1.0, "all tied");
}

#[test]
fn benjamini_hochberg_matches_the_original_papers_example() {
    // Benjamini & Hochberg (1995), J. R. Statist. Soc. B 57:289-300, section 4: the 15 p-values of
    // the thrombolysis example; at level 0.05 the procedure rejects the four smallest. Adjusted
    // values by hand, q_(i) = min_{j >= i} 15 p_(j) / j.
    let p = [0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344, 0.0459, 0.3240, 0.4262, 0.5719, 0.6528, 0.7590, 1.0];
    let q = benjamini_hochberg(&p);
    assert_eq!(q.iter().filter(|&&q| q <= 0.05).count(), 4);
    let hand = [
        0.0015,
        0.003,
        0.0095,
        0.035625,
        0.0603,
        0.0298 * 15.0 / 7.0,
        0.0298 * 15.0 / 7.0,
        0.0645,
        0.0765,
        0.486,
        0.4262 * 15.0 / 11.0,
        0.5719 * 15.0 / 12.0,
        0.6528 * 15.0 / 13.0,
        0.7590 * 15.0 / 14.0,
        1.0,
    ];
    assert_close(&q, &hand, tol::F64_EXACT.atol, 0.0, "BH adjusted p");
    // Input order is kept.
    let shuffled = benjamini_hochberg(&[p[9], p[0], p[4]]);
    assert_close(&shuffled, &[0.3240, 0.0003, 0.0201 * 3.0 / 2.0], tol::F64_EXACT.atol, 0.0, "order");
    assert_eq!(
        (significance_mark(0.005), significance_mark(0.03), significance_mark(0.07), significance_mark(0.2)),
        ("***", "**", "*", "")
    );
}

#[test]
fn correlations_by_hand() {
    // [1,2,3,4] vs [1,3,2,4]: deviations (-1.5,-.5,.5,1.5) and (-1.5,.5,-.5,1.5), cross sum 4, sums of
    // squares 5 and 5: r = 0.8.
    assert_close(&[pearson(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0])], &[0.8], tol::F64_CLOSED_FORM.atol, 0.0, "pearson");
    assert_close(&[pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0])], &[-1.0], tol::F64_CLOSED_FORM.atol, 0.0, "anti");
    assert_eq!(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), 0.0, "constant side");
    // Ranks of [1,2,2,3] are (1, 2.5, 2.5, 4): deviations (-1.5,0,0,1.5) vs (-1.5,-.5,.5,1.5) give
    // 4.5 / sqrt(4.5 * 5) = 0.9486832980505138.
    assert_close(
        &[spearman(&[1.0, 2.0, 2.0, 3.0], &[10.0, 20.0, 30.0, 40.0])],
        &[0.9486832980505138],
        tol::F64_CLOSED_FORM.atol,
        0.0,
        "spearman",
    );
}

#[test]
fn degs_follow_the_chosen_rule() {
    // Gene 0 differs strongly, gene 1 is identical, gene 2 differs a little with large noise.
    let control = [0.0, 1.0, 0.0, 0.1, 1.0, 2.0, -0.1, 1.0, -2.0, 0.0, 1.0, 0.5];
    let real = [2.0, 1.0, 0.3, 2.1, 1.0, -1.5, 1.9, 1.0, 2.2, 2.0, 1.0, -0.4];
    assert_eq!(deg_mask(&real, &control, 3, DegRule::Paper), vec![true, false, false]);
    assert_eq!(deg_mask(&real, &control, 3, DegRule::Reference), vec![true, false, false]);
    // No gene passes: all genes are used.
    assert_eq!(deg_mask(&control, &control, 3, DegRule::Paper), vec![true; 3]);
}

#[test]
fn distances_between_clouds_by_hand() {
    // 1-D: x = {0, 2}, y = {1}: E|X-Y| = 1, E|X-X'| = (0 + 2 + 2 + 0) / 4 = 1, E|Y-Y'| = 0 -> 2 - 1 = 1.
    assert_close(&[energy_distance(&[0.0, 2.0], &[1.0], 1)], &[1.0], tol::F64_CLOSED_FORM.atol, 0.0, "energy");
    // x = {0}, y = {1}: one pooled distance, bandwidth 1: MMD^2 = 1 + 1 - 2 exp(-1/2).
    assert_close(&[mmd_rbf(&[0.0], &[1.0], 1)], &[2.0 - 2.0 * (-0.5f64).exp()], tol::F64_CLOSED_FORM.atol, 0.0, "mmd");
    assert!(mmd_rbf(&[0.0, 1.0, 3.0], &[0.0, 1.0, 3.0], 1).abs() < tol::F64_CLOSED_FORM.atol);

    // 2-D: x = {(0,0), (2,0)}, y listed in the other order {(2,1), (0,1)}: the optimal matching pairs
    // points one unit apart, W1 = W2 = 1.
    let (w1, w2) = wasserstein(&[0.0, 0.0, 2.0, 0.0], &[2.0, 1.0, 0.0, 1.0], 2).unwrap();
    assert_close(&[w1, w2], &[1.0, 1.0], tol::F64_CLOSED_FORM.atol, 0.0, "W on a square");
    // 1-D x = {0, 1}, y = {1, 2}: both matchings cost 2 in W1 (W1 = 1), but W2 prefers (0-1, 1-2):
    // sqrt((1 + 1) / 2) = 1, not sqrt((4 + 0) / 2).
    let (w1, w2) = wasserstein(&[0.0, 1.0], &[1.0, 2.0], 1).unwrap();
    assert_close(&[w1, w2], &[1.0, 1.0], tol::F64_CLOSED_FORM.atol, 0.0, "W1 vs W2");
    assert!(wasserstein(&[0.0, 1.0], &[1.0], 1).unwrap_err().to_string().contains("same size"));
}

#[test]
fn assignment_is_optimal_against_brute_force_and_1d_sorting() {
    // Brute force over all 720 matchings of 6 random 3-D points.
    let mut rng = TestRng::new(7);
    for _ in 0..20 {
        let (x, y) = (rng.vec(18), rng.vec(18));
        let (w1, w2) = wasserstein(&x, &y, 3).unwrap();
        let (mut best1, mut best2) = (f64::INFINITY, f64::INFINITY);
        let mut perm: Vec<usize> = (0..6).collect();
        permutations(&mut perm, 0, &mut |p| {
            let d = |i: usize| (0..3).map(|k| (x[i * 3 + k] - y[p[i] * 3 + k]).powi(2)).sum::<f64>();
            best1 = best1.min((0..6).map(|i| d(i).sqrt()).sum::<f64>() / 6.0);
            best2 = best2.min((0..6).map(d).sum::<f64>() / 6.0);
        });
        assert_close(&[w1, w2], &[best1, best2.sqrt()], tol::F64_EXACT.atol, 0.0, "assignment vs brute force");
    }
    // In 1-D the optimal plan matches sorted order (a standard property of 1-D transport).
    let (mut x, mut y) = (rng.vec(40), rng.vec(40));
    let (w1, w2) = wasserstein(&x, &y, 1).unwrap();
    x.sort_by(f64::total_cmp);
    y.sort_by(f64::total_cmp);
    let sorted_w1 = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).sum::<f64>() / 40.0;
    let sorted_w2 = (x.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / 40.0).sqrt();
    assert_close(&[w1, w2], &[sorted_w1, sorted_w2], tol::F64_EXACT.atol, 0.0, "1-D sorted matching");
}

fn permutations(p: &mut Vec<usize>, k: usize, f: &mut impl FnMut(&[usize])) {
    if k == p.len() {
        f(p);
        return;
    }
    for i in k..p.len() {
        p.swap(k, i);
        permutations(p, k + 1, f);
        p.swap(k, i);
    }
}

#[test]
fn pseudobulk_errors_by_hand() {
    let cells = [1.0, 2.0, 3.0, 6.0];
    assert_eq!(mean_rows(&cells, 2), vec![2.0, 4.0]);
    assert_eq!(mse(&[1.0, 2.0], &[2.0, 4.0]), 2.5);
    assert_eq!(mae(&[1.0, 2.0], &[2.0, 4.0]), 1.5);
}

#[test]
fn jacobi_eigen_by_hand() {
    // [[2,1,0],[1,2,0],[0,0,5]]: eigenvalues 5 (0,0,1), 3 ((1,1,0)/sqrt 2), 1 ((1,-1,0)/sqrt 2).
    let (values, vectors) = ptrag_engine::score::pca::symmetric_eigen(&[2.0, 1.0, 0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 5.0], 3);
    assert_close(&values, &[5.0, 3.0, 1.0], tol::F64_EXACT.atol, 0.0, "eigenvalues");
    let h = 0.5f64.sqrt();
    for (row, want) in vectors.chunks(3).zip([[0.0, 0.0, 1.0], [h, h, 0.0], [h, -h, 0.0]]) {
        let sign = if row.iter().zip(&want).map(|(a, b)| a * b).sum::<f64>() < 0.0 { -1.0 } else { 1.0 };
        assert_close(&row.iter().map(|v| v * sign).collect::<Vec<_>>(), &want, tol::F64_EXACT.atol, 0.0, "eigenvector");
    }
}

#[test]
fn pca_recovers_planted_directions_and_variances() {
    // Cells = mean + 3 a u1 + 2 b u2 + 1 c u3 with u orthonormal in 8-D and (a, b, c) running over
    // all sign patterns of (+-1, +-1, +-1), each pattern twice: the sample covariance (n - 1 = 15)
    // has eigenvalues 9, 4, 1 times 16/15 along u1, u2, u3, and 0 elsewhere.
    let g = 8;
    let mut rng = TestRng::new(11);
    let mut u = rng.vec(3 * g);
    for i in 0..3 {
        for j in 0..i {
            let d: f64 = (0..g).map(|c| u[i * g + c] * u[j * g + c]).sum();
            (0..g).for_each(|c| u[i * g + c] -= d * u[j * g + c]);
        }
        let n = (0..g).map(|c| u[i * g + c].powi(2)).sum::<f64>().sqrt();
        (0..g).for_each(|c| u[i * g + c] /= n);
    }
    let mean = rng.vec(g);
    let mut cells = Vec::new();
    for pattern in 0..16 {
        let s = |bit: usize| if pattern >> bit & 1 == 1 { 1.0 } else { -1.0 };
        let (a, b, c) = (3.0 * s(0), 2.0 * s(1), s(2));
        cells.extend((0..g).map(|k| mean[k] + a * u[k] + b * u[g + k] + c * u[2 * g + k]));
    }
    let pca = ptrag_engine::score::pca::Pca::fit(&cells, g, 3);
    assert_close(&pca.variance, &[9.0 * 16.0 / 15.0, 4.0 * 16.0 / 15.0, 16.0 / 15.0], tol::PCA.atol, 0.0, "variances");
    for i in 0..3 {
        let dot: f64 = (0..g).map(|k| pca.components[i * g + k] * u[i * g + k]).sum();
        assert_close(&[dot.abs()], &[1.0], tol::PCA.atol, 0.0, "component direction");
    }
    // Projections of the first cell are (3, 2, 1) * signs (-1,-1,-1) up to each component's sign.
    let p = pca.project(&cells[..g]);
    assert_close(&p.iter().map(|v| v.abs()).collect::<Vec<_>>(), &[3.0, 2.0, 1.0], tol::PCA.atol, 0.0, "projection");
}

#[test]
fn per_component_compatibility_mode_by_hand() {
    // x = {(0,0), (2,0)}, y = {(0,1), (2,1)}. Component 0: identical samples, all four distances 0.
    // Component 1: {0,0} vs {1,1}: W1 = W2 = 1, energy 2 * 1 - 0 - 0 = 2, MMD^2 = 2 - 2 exp(-1/2)
    // (pooled distances 0,0,1,1,1,1: median 1). Means over the two components:
    let d = ptrag_engine::eval::report::per_component_distances(&[0.0, 0.0, 2.0, 0.0], &[0.0, 1.0, 2.0, 1.0], 2).unwrap();
    assert_close(&d, &[0.5, 0.5, 1.0, 1.0 - (-0.5f64).exp()], tol::F64_CLOSED_FORM.atol, 0.0, "per-component W1, W2, energy, MMD");
}

#[test]
fn retrieval_analysis_by_hand() {
    use ptrag_engine::score::retrieval::analyse;
    use ptrag_engine::score::retrieval::RetrievalRecord;
    let rec = |gene: &str, ct: &str, retrieved: &[&str], selected: &[f64]| RetrievalRecord {
        perturbation: gene.into(),
        cell_type: ct.into(),
        set: 0,
        cells: 4,
        retrieved: retrieved.iter().map(|s| s.to_string()).collect(),
        similarity: vec![0.0; retrieved.len()],
        selected: Some(selected.to_vec()),
    };
    // Gene G: in A, P1 (4 + 1 = 5 over two sets) > P2 (2) > P3 (0); in B only P2 and P4 are selected.
    // Gene H is tested only in A, so it is not in the Jaccard average.
    let records = vec![
        rec("G", "A", &["P1", "P2", "P3"], &[4.0, 2.0, 0.0]),
        rec("G", "A", &["P1", "P2", "P3"], &[1.0, 0.0, 0.0]),
        rec("G", "B", &["P2", "P4", "P1"], &[3.0, 1.0, 0.0]),
        rec("H", "A", &["P5"], &[2.0]),
    ];
    let a = analyse(&records);
    assert_eq!(a.cell_types, vec!["A", "B"]);
    assert_eq!(a.shared_genes, vec!["G"]);
    let names = |ct: &str| a.top10["G"][ct].iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>();
    // Never-selected candidates (count 0) are not in a top list.
    assert_eq!(names("A"), vec!["P1", "P2"]);
    assert_eq!(names("B"), vec!["P2", "P4"]);
    // {P1, P2} vs {P2, P4}: Jaccard 1 / 3.
    assert_close(
        &[a.jaccard[0][1], a.jaccard[1][0], a.jaccard[0][0]],
        &[1.0 / 3.0, 1.0 / 3.0, 1.0],
        tol::F64_CLOSED_FORM.atol,
        0.0,
        "Jaccard",
    );
    // Mean selected per cell: A (6 + 1 + 2) / 12 cells = 0.75; B 4 / 4 = 1.
    assert_close(&[a.mean_selected["A"], a.mean_selected["B"]], &[0.75, 1.0], tol::F64_CLOSED_FORM.atol, 0.0, "mean selected");
}

/// Against `scipy.stats.wilcoxon(x, method="approx")` (SciPy 1.17.1): one sample of differences,
/// and a paired sample with a zero difference (dropped) and tied absolute differences.
#[test]
fn wilcoxon_signed_rank_matches_scipy() {
    let x = [0.5, 1.2, -0.3, 2.2, 0.8, -1.1, 0.4, 1.7, 0.9, -0.2, 1.3, 0.6];
    let r = wilcoxon_signed_rank(&x, &[0.0; 12]);
    assert_eq!(r.statistic, 11.0);
    assert!((r.p - 0.0280561241492436).abs() < tol::SCIPY_P_VALUE.atol, "{r:?}");
    let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
    let b = [1.5, 1.0, 3.0, 2.0, 5.5, 3.0, 8.5, 4.0];
    let r = wilcoxon_signed_rank(&a, &b);
    assert_eq!(r.statistic, 7.0);
    assert!((r.p - 0.23588521058805278).abs() < tol::SCIPY_P_VALUE.atol, "{r:?}");
    assert_eq!(wilcoxon_signed_rank(&a, &a).p, 1.0, "no nonzero difference");
}

/// The paired tests of a report pair two models' rows by condition, whatever their order, drop a
/// condition only one of them has, count the conditions each is better on by the metric's
/// direction, and test with the Wilcoxon signed-rank.
#[test]
fn paired_tests_pair_rows_by_condition() {
    use ptrag_engine::eval::report::summarise;
    let row = |model: &str, pert: &str, mse: f64| {
        let mut values = vec![1.0; METRICS.len()];
        values[METRICS.iter().position(|m| m.name == "mse").unwrap()] = mse;
        ConditionRow { model: model.into(), target: "K562".into(), perturbation: pert.into(), cell_type: "K562".into(), cells: 10, values }
    };
    let a = [("P1", 0.10), ("P2", 0.20), ("P3", 0.30), ("P4", 0.40), ("P5", 0.55), ("P6", 0.05)];
    let b = [("P6", 0.07), ("P4", 0.35), ("P3", 0.33), ("P2", 0.21), ("P1", 0.18), ("P9", 9.0)];
    let rows: Vec<ConditionRow> = a.iter().map(|(p, v)| row("a", p, *v)).chain(b.iter().map(|(p, v)| row("b", p, *v))).collect();
    let summary = summarise(&rows);
    let t = summary.paired.iter().find(|t| t.metric == "mse").unwrap();
    assert_eq!((t.a.as_str(), t.b.as_str(), t.conditions, t.a_better, t.b_better), ("a", "b", 5, 4, 1));
    let want = wilcoxon_signed_rank(&[0.10, 0.20, 0.30, 0.40, 0.05], &[0.18, 0.21, 0.33, 0.35, 0.07]).p;
    assert!((t.p - want).abs() < tol::F64_EXACT_ABS, "{} vs {want}", t.p);
}

/// Every metric of the table is computed: on cells with a planted change given, each value of
/// `condition_metrics` is finite, one per entry of `METRICS` (a metric added to the table without
/// its computation is an error, which fails here).
#[test]
fn condition_metrics_computes_every_metric_of_the_table() {
    use ptrag_engine::eval::report::{condition_metrics, EvalOptions, MeanInputs};
    use ptrag_engine::score::metrics::METRICS;
    let (g, n) = (6, 12);
    let mut rng = TestRng::new(5);
    let controls: Vec<f64> = rng.vec(n * g).iter().map(|v| v.abs()).collect();
    // real cells: genes 0 and 1 moved far, so they are differentially expressed
    let real: Vec<f64> = controls.iter().enumerate().map(|(i, v)| v + if i % g < 2 { 5.0 + (i / g) as f64 * 0.1 } else { 0.0 }).collect();
    let pred: Vec<f64> = real.iter().zip(rng.vec(n * g)).map(|(r, e)| r + 0.3 * e.abs()).collect();
    let truth: Vec<f64> = (0..g).map(|k| if k < 2 { 5.0 + k as f64 } else { 0.1 * k as f64 }).collect();
    let pca = ptrag_engine::score::pca::Pca::fit(&real, g, 3);
    let opts = EvalOptions { pca_components: 3, ..EvalOptions::default() };
    let values = condition_metrics(&pred, &real, &controls, g, &pca, &opts, MeanInputs { mean_pred: None, truth: Some(&truth) }).unwrap();
    assert_eq!(values.len(), METRICS.len());
    for (metric, value) in METRICS.iter().zip(&values) {
        assert!(value.is_finite(), "{}: {value}", metric.name);
    }
    assert_eq!(METRICS.iter().filter(|m| m.is_count).map(|m| m.name).collect::<Vec<_>>(), ["degs"]);
}
