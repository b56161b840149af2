//! Every tape operation's backward pass against central finite differences, in f64.
//! Tolerance: `tol::FINITE_DIFFERENCE` (tests/common/tolerance.rs says why).

mod common;
use common::tolerance as tol;
use common::{assert_close, assert_within, TestRng};
use ptrag_engine::cpu::selection::TripletLayout;
use ptrag_engine::cpu::{
    attention::{AttentionShape, Rope},
    energy::EnergyShape,
};
use ptrag_engine::tape::{Params, Tape, Var};

const H: f64 = 1e-6;

/// Builds `f` on fresh inputs, reduces its output to `sum(out * r)` with a fixed random `r`, and
/// compares the tape's gradient of every input with central differences.
fn check(name: &str, inputs: &[(Vec<usize>, Vec<f64>)], f: impl Fn(&mut Tape<f64>, &[Var]) -> Var) {
    let run = |values: &[Vec<f64>]| -> (f64, Tape<f64>, Vec<Var>, Var) {
        let mut tape = Tape::new();
        let vars: Vec<Var> = inputs.iter().zip(values).map(|((s, _), v)| tape.input(s, v.clone())).collect();
        let out = f(&mut tape, &vars);
        let n = tape.value(out).len();
        let r = tape.constant(&[n], TestRng::new(99).vec(n));
        let flat = tape.reshape(out, &[n]);
        let prod = tape.mul(flat, r);
        let loss = tape.sum(prod);
        (tape.scalar(loss), tape, vars, loss)
    };
    let base: Vec<Vec<f64>> = inputs.iter().map(|(_, v)| v.clone()).collect();
    let (_, tape, vars, loss) = run(&base);
    let grads = tape.backward(loss);
    for (i, var) in vars.iter().enumerate() {
        let analytic = grads.get(*var).map(|g| g.to_vec()).unwrap_or_else(|| vec![0.0; base[i].len()]);
        let mut numeric = vec![0.0; base[i].len()];
        for j in 0..base[i].len() {
            let mut plus = base.clone();
            plus[i][j] += H;
            let mut minus = base.clone();
            minus[i][j] -= H;
            numeric[j] = (run(&plus).0 - run(&minus).0) / (2.0 * H);
        }
        assert_within(&analytic, &numeric, tol::FINITE_DIFFERENCE, &format!("{name}: d/d input {i}"));
    }
}

fn rand(seed: u64, shape: &[usize]) -> (Vec<usize>, Vec<f64>) {
    (shape.to_vec(), TestRng::new(seed).vec(shape.iter().product()))
}

#[test]
fn matmul_all_transposes() {
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let a = if ta { [4, 3] } else { [3, 4] };
        let b = if tb { [5, 4] } else { [4, 5] };
        check(&format!("matmul ta={ta} tb={tb}"), &[rand(1, &a), rand(2, &b)], |t, v| t.matmul(v[0], v[1], ta, tb));
    }
}

#[test]
fn linear_with_bias() {
    check("linear", &[rand(1, &[2, 3, 4]), rand(2, &[5, 4]), rand(3, &[5])], |t, v| t.linear(v[0], v[1], Some(v[2])));
}

#[test]
fn add_mul_scale_sum_mean() {
    check("add", &[rand(1, &[3, 4]), rand(2, &[3, 4])], |t, v| t.add(v[0], v[1]));
    check("add same input twice", &[rand(1, &[3, 4])], |t, v| t.add(v[0], v[0]));
    check("add_bias", &[rand(1, &[3, 4]), rand(2, &[4])], |t, v| t.add_bias(v[0], v[1]));
    check("mul", &[rand(1, &[3, 4]), rand(2, &[3, 4])], |t, v| t.mul(v[0], v[1]));
    check("mul square", &[rand(1, &[7])], |t, v| t.mul(v[0], v[0]));
    check("scale", &[rand(1, &[5])], |t, v| t.scale(v[0], -2.5));
    check("sum", &[rand(1, &[3, 4])], |t, v| t.sum(v[0]));
    check("mean", &[rand(1, &[3, 4])], |t, v| t.mean(v[0]));
}

#[test]
fn activations_and_softmax() {
    check("silu", &[rand(1, &[3, 5])], |t, v| t.silu(v[0]));
    check("gelu", &[rand(2, &[3, 5])], |t, v| {
        let x = t.scale(v[0], 3.0);
        t.gelu(x)
    });
    check("relu", &[rand(3, &[3, 5])], |t, v| t.relu(v[0]));
    check("swiglu", &[rand(5, &[3, 5]), rand(6, &[3, 5])], |t, v| {
        let gate = t.scale(v[0], 3.0);
        t.swiglu(gate, v[1])
    });
    check("swiglu, one input as gate and up", &[rand(7, &[4, 3])], |t, v| t.swiglu(v[0], v[0]));
    // p = 0.5 over 60 elements: some dropped, some kept (the mask is fixed by its key)
    let mask = ptrag_engine::cpu::elementwise::DropoutMask::new(11, 0.5);
    assert!((0..60).any(|i| mask.keeps(i)) && !(0..60).all(|i| mask.keeps(i)));
    check("dropout", &[rand(8, &[6, 10])], |t, v| t.dropout(v[0], mask));
    check("softmax", &[rand(4, &[3, 5])], |t, v| {
        let x = t.scale(v[0], 4.0);
        t.softmax(x)
    });
}

/// The fused SwiGLU computes what the backbone computed before it, `silu(gate) * up`, with the
/// same f32 operations in the same order: bit for bit the same values and gradients.
#[test]
fn swiglu_is_silu_times_up_bit_for_bit() {
    let n = 40_000; // several parallel chunks
    let mut rng = TestRng::new(11);
    let gate: Vec<f32> = rng.vec(n).iter().map(|&v| (v * 12.0) as f32).collect();
    let up: Vec<f32> = rng.vec(n).iter().map(|&v| v as f32).collect();
    let weights: Vec<f32> = rng.vec(n).iter().map(|&v| v as f32).collect();
    let run = |fused: bool| {
        let mut t = Tape::<f32>::new();
        let (g, u) = (t.input(&[n], gate.clone()), t.input(&[n], up.clone()));
        let y = if fused {
            t.swiglu(g, u)
        } else {
            let s = t.silu(g);
            t.mul(s, u)
        };
        let w = t.constant(&[n], weights.clone());
        let weighted = t.mul(y, w);
        let loss = t.sum(weighted);
        let grads = t.backward(loss);
        (t.value(y).to_vec(), grads.get(g).unwrap().to_vec(), grads.get(u).unwrap().to_vec())
    };
    let (fused, unfused) = (run(true), run(false));
    assert!(fused.0 == unfused.0, "swiglu forward differs from silu * up");
    assert!(fused.1 == unfused.1, "swiglu gradient for gate differs");
    assert!(fused.2 == unfused.2, "swiglu gradient for up differs");
}

/// The tape's own elementwise ops run in parallel tasks of whole rows; on a tensor of several tasks
/// (rows not a multiple of a task) every element is what a plain loop gives.
#[test]
fn elementwise_ops_over_several_parallel_tasks() {
    let (rows, cols) = (301, 97);
    let mut rng = TestRng::new(21);
    let (a, b, bias, w) = (rng.vec(rows * cols), rng.vec(rows * cols), rng.vec(cols), rng.vec(rows));
    let mut t = Tape::<f64>::new();
    let (va, vb) = (t.constant(&[rows, cols], a.clone()), t.constant(&[rows, cols], b.clone()));
    let (vbias, vw) = (t.constant(&[cols], bias.clone()), t.constant(&[rows], w.clone()));
    let results = [
        (t.add(va, vb), Box::new(|i: usize| a[i] + b[i]) as Box<dyn Fn(usize) -> f64>),
        (t.mul(va, vb), Box::new(|i| a[i] * b[i])),
        (t.scale(va, 1.5), Box::new(|i| a[i] * 1.5)),
        (t.add_bias(va, vbias), Box::new(|i| a[i] + bias[i % cols])),
        (t.scale_rows(va, vw), Box::new(|i| a[i] * w[i / cols])),
        (t.scale_cols(va, vbias), Box::new(|i| a[i] * bias[i % cols])),
    ];
    for (k, (v, want)) in results.iter().enumerate() {
        let got = t.value(*v);
        assert_eq!(got.len(), rows * cols);
        assert!((0..rows * cols).all(|i| got[i] == want(i)), "op {k} differs from a plain loop");
    }
}

#[test]
fn norms() {
    check("rmsnorm", &[rand(1, &[4, 6]), rand(2, &[6])], |t, v| t.rmsnorm(v[0], v[1], 1e-6));
    check("layernorm", &[rand(1, &[4, 6]), rand(2, &[6]), rand(3, &[6])], |t, v| t.layernorm(v[0], v[1], v[2], 1e-5));
}

#[test]
fn set_attention_bidirectional_and_causal() {
    for causal in [false, true] {
        let shape = AttentionShape::within_sets(2, 5, 3, 4, causal);
        let dims = [shape.sets * shape.cells, shape.heads * shape.head_dim];
        check(&format!("attention causal={causal}"), &[rand(1, &dims), rand(2, &dims), rand(3, &dims)], |t, v| {
            let q = t.scale(v[0], 2.0);
            t.attention(q, v[1], v[2], shape)
        });
    }
}

#[test]
fn cross_attention_to_fewer_keys() {
    // Vanilla RAG: every cell of a set attends to the set's K candidates.
    let shape = AttentionShape { sets: 2, cells: 5, keys: 3, heads: 2, head_dim: 4, causal: false };
    let w = shape.heads * shape.head_dim;
    check("cross attention", &[rand(1, &[10, w]), rand(2, &[6, w]), rand(3, &[6, w])], |t, v| {
        let q = t.scale(v[0], 2.0);
        t.attention(q, v[1], v[2], shape)
    });
}

#[test]
fn rotary_encoding_is_a_rotation_per_position() {
    let rope = Rope { cells: 4, heads: 2, head_dim: 6, theta: 10000.0 };
    check("rope", &[rand(1, &[8, 12])], |t, v| t.rope(v[0], rope));
    // Position 0 is left unchanged; every row keeps its norm per head.
    let x = TestRng::new(3).vec(8 * 12);
    let mut tape = Tape::new();
    let xv = tape.constant(&[8, 12], x.clone());
    let y = tape.rope(xv, rope);
    let y = tape.value(y);
    assert_eq!(&y[..12], &x[..12]);
    assert_eq!(&y[48..60], &x[48..60], "the second set starts again at position 0");
    for (a, b) in x.chunks(6).zip(y.chunks(6)) {
        let (na, nb): (f64, f64) = (a.iter().map(|v| v * v).sum(), b.iter().map(|v| v * v).sum());
        assert!((na - nb).abs() < tol::F64_EXACT_ABS);
    }
}

#[test]
fn row_scaling_group_sums_and_std_scaling() {
    check("scale_rows", &[rand(1, &[6, 3]), rand(2, &[6])], |t, v| t.scale_rows(v[0], v[1]));
    check("sum_groups", &[rand(1, &[6, 3])], |t, v| t.sum_groups(v[0], 3));
    check("scale_by_std", &[rand(1, &[5, 2])], |t, v| t.scale_by_std(v[0], 1e-6));
    // Below the floor the std is a constant.
    check("scale_by_std clamped", &[rand(1, &[5, 2])], |t, v| {
        let tiny = t.scale(v[0], 1e-9);
        t.scale_by_std(tiny, 1e-3)
    });
    let mut tape = Tape::<f64>::new();
    let x = tape.constant(&[4], vec![1.0, 2.0, 3.0, 4.0]);
    let y = tape.scale_by_std(x, 1e-6);
    let sd = (5.0f64 / 3.0).sqrt(); // unbiased: sum of squared deviations 5, over n - 1 = 3
    assert_close(
        tape.value(y),
        &[1.0 / sd, 2.0 / sd, 3.0 / sd, 4.0 / sd],
        tol::F64_CLOSED_FORM.atol,
        tol::F64_CLOSED_FORM.rtol,
        "scale_by_std values",
    );
}

#[test]
fn gather_concat_split_reshape() {
    check("gather with repeats", &[rand(1, &[4, 3])], |t, v| t.gather(v[0], &[2, 0, 2, 3, 2]));
    check("concat", &[rand(1, &[3, 2]), rand(2, &[3, 4]), rand(3, &[3, 1])], |t, v| t.concat(&[v[0], v[1], v[2]]));
    check("split", &[rand(1, &[3, 7])], |t, v| {
        let parts = t.split(v[0], &[2, 4, 1]);
        let a = t.scale(parts[0], 2.0);
        let b = t.scale(parts[2], -1.0);
        t.concat(&[b, parts[1], a])
    });
    check("reshape", &[rand(1, &[2, 6])], |t, v| {
        let r = t.reshape(v[0], &[3, 4]);
        t.matmul(r, r, true, false)
    });
}

#[test]
fn energy_distance_wrt_prediction() {
    // unequal set sizes, and an observation set that shares a point with the prediction (distance
    // clamped: zero gradient there by definition, so keep points apart here)
    let shape = EnergyShape { sets: 3, cells_pred: 4, cells_obs: 5, genes: 6 };
    let obs = rand(7, &[3, 5, 6]).1;
    check("energy", &[rand(1, &[3, 4, 6])], move |t, v| {
        let o = t.constant(&[3, 5, 6], obs.clone());
        t.energy(v[0], o, shape)
    });
}

#[test]
fn gumbel_straight_through_forward_is_hard_backward_is_soft() {
    let (rows, classes, tau) = (6, 2, 0.5);
    let logits = TestRng::new(5).vec(rows * classes);
    let noise: Vec<f64> = TestRng::new(6).vec(rows * classes).iter().map(|u| -(-(0.5 * (u + 1.0) + 1e-3).ln()).ln()).collect();
    let upstream = TestRng::new(7).vec(rows * classes);

    let mut tape = Tape::new();
    let l = tape.input(&[rows, classes], logits.clone());
    let noise_var = tape.constant(&[rows, classes], noise.clone());
    let w = tape.gumbel_st(l, noise_var, tau);
    assert!(tape.value(w).iter().all(|&x| x == 0.0 || x == 1.0), "forward weights must be exactly 0/1");
    for row in tape.value(w).chunks(classes) {
        assert_eq!(row.iter().sum::<f64>(), 1.0);
    }
    let r = tape.constant(&[rows, classes], upstream.clone());
    let p = tape.mul(w, r);
    let loss = tape.sum(p);
    let analytic = tape.backward(loss).get(l).unwrap().to_vec();

    // finite differences of the soft path: sum(r * softmax((logits + noise) / tau))
    let soft_loss = |x: &[f64]| -> f64 {
        x.chunks(classes)
            .zip(noise.chunks(classes))
            .zip(upstream.chunks(classes))
            .map(|((l, g), r)| {
                let z: Vec<f64> = l.iter().zip(g).map(|(l, g)| (l + g) / tau).collect();
                let m = z.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = z.iter().map(|z| (z - m).exp()).collect();
                let s: f64 = e.iter().sum();
                e.iter().zip(r).map(|(e, r)| e / s * r).sum::<f64>()
            })
            .sum()
    };
    let numeric: Vec<f64> = (0..logits.len())
        .map(|j| {
            let (mut p, mut m) = (logits.clone(), logits.clone());
            p[j] += H;
            m[j] -= H;
            (soft_loss(&p) - soft_loss(&m)) / (2.0 * H)
        })
        .collect();
    assert_within(&analytic, &numeric, tol::FINITE_DIFFERENCE, "gumbel-st backward vs soft finite differences");
}

#[test]
fn parameter_gradients_accumulate() {
    let mut params = Params::<f64>::new();
    let w = params.add("w", &[3], vec![1.0, 2.0, 3.0]);
    for _ in 0..2 {
        let mut tape = Tape::new();
        let wv = tape.param(&params, w);
        let sq = tape.mul(wv, wv);
        let loss = tape.sum(sq);
        tape.backward(loss).accumulate_into(&tape, &mut params).unwrap();
    }
    assert_eq!(params.get(w).grad, vec![4.0, 8.0, 12.0], "two backward passes add 2w twice");
    params.zero_grad();
    assert_eq!(params.get(w).grad, vec![0.0; 3]);
}

/// 6 cells in 2 rows (sets) of 3 cells, 2 candidates each: 12 triplets.
const TRIPLETS: TripletLayout = TripletLayout { cells: 6, rows: 2, k: 2 };

/// Sums of squares that keep every triplet's variance positive (width 12).
fn squares(seed: u64, n: usize) -> (Vec<usize>, Vec<f64>) {
    (vec![n], TestRng::new(seed).vec(n).iter().map(|v| 4.0 + v).collect())
}

#[test]
fn column_scaling_and_triplet_ops() {
    check("scale_cols", &[rand(1, &[4, 3]), rand(2, &[3])], |t, v| t.scale_cols(v[0], v[1]));
    let [c, p, k] = TRIPLETS.part_rows();
    check("triplet_stats", &[rand(1, &[c]), rand(2, &[p]), rand(3, &[k]), squares(4, c), squares(5, p), squares(6, k)], |t, v| {
        t.triplet_stats([v[0], v[1], v[2]], [v[3], v[4], v[5]], TRIPLETS, 12, 1e-5)
    });
    let stats =
        |seed| (vec![12, 2], TestRng::new(seed).vec(24).iter().enumerate().map(|(i, v)| if i % 2 == 1 { 1.5 + v } else { *v }).collect());
    check("triplet_assemble", &[rand(1, &[c, 4]), rand(2, &[p, 4]), rand(3, &[k, 4]), stats(4), rand(5, &[4]), rand(6, &[4])], |t, v| {
        t.triplet_assemble([v[0], v[1], v[2]], v[3], v[4], v[5], TRIPLETS)
    });
}

/// The selector's factorised form equals the explicit one: gather the three parts into triplets,
/// concatenate, LayerNorm, then the linear layer.
#[test]
fn triplet_ops_equal_layernorm_of_the_concatenated_triplets_then_linear() {
    let (hw, out) = (4, 5);
    let [c, p, k] = TRIPLETS.part_rows();
    let mut tape = Tape::<f64>::new();
    let mut input = |seed, shape: &[usize]| tape.input(shape, TestRng::new(seed).vec(shape.iter().product()));
    let (cells, rows, cands) = (input(1, &[c, hw]), input(2, &[p, hw]), input(3, &[k, hw]));
    let (gamma, beta, w, b) = (input(4, &[3 * hw]), input(5, &[3 * hw]), input(6, &[out, 3 * hw]), input(7, &[out]));
    let eps = 1e-5;

    let index = |f: &dyn Fn(usize, usize, usize) -> usize| -> Vec<usize> {
        (0..TRIPLETS.triplets()).map(|t| f(t / 2, (t / 2) / 3, t % 2)).collect()
    };
    let parts = [
        tape.gather(cells, &index(&|i, _, _| i)),
        tape.gather(rows, &index(&|_, s, _| s)),
        tape.gather(cands, &index(&|_, s, j| s * 2 + j)),
    ];
    let triplet = tape.concat(&parts);
    let normed = tape.layernorm(triplet, gamma, beta, eps);
    let explicit = tape.linear(normed, w, Some(b));

    let wg = tape.scale_cols(w, gamma);
    let ones = tape.constant(&[3 * hw, 1], vec![1.0; 3 * hw]);
    let ones_h = tape.constant(&[hw, 1], vec![1.0; hw]);
    let mut projected = Vec::new();
    let (mut sums, mut sq) = (Vec::new(), Vec::new());
    for (x, part) in [cells, rows, cands].into_iter().enumerate() {
        let block = tape.slice_cols(wg, x * hw, hw);
        projected.push(tape.matmul(part, block, false, true));
        sums.push(tape.matmul(part, ones_h, false, false));
        let squared = tape.mul(part, part);
        sq.push(tape.matmul(squared, ones_h, false, false));
    }
    let stats = tape.triplet_stats([sums[0], sums[1], sums[2]], [sq[0], sq[1], sq[2]], TRIPLETS, 3 * hw, eps);
    let v = tape.matmul(wg, ones, false, false);
    let v = tape.reshape(v, &[out]);
    let beta_col = tape.reshape(beta, &[3 * hw, 1]);
    let wb = tape.matmul(w, beta_col, false, false);
    let wb = tape.reshape(wb, &[out]);
    let c0 = tape.add(wb, b);
    let factorised = tape.triplet_assemble([projected[0], projected[1], projected[2]], stats, v, c0, TRIPLETS);
    assert_within(tape.value(factorised), tape.value(explicit), tol::F64_FACTORISED, "factorised vs explicit");
}
