//! Every CUDA kernel family against its CPU reference (`src/cpu/<family>.rs`, run in f64), on
//! awkward shapes (not multiples of the block or tile sizes):
//! - `<family>_<direction>_emulated_matches_cpu`: the same `.cu` source run by the CPU emulator,
//!   under forward and reverse thread order; always runs (CI has no GPU);
//! - `<family>_<direction>_cuda_matches_cpu`: on a real GPU; skipped with the reason printed where
//!   none is usable, and FAILING instead when `PTRAG_REQUIRE_GPU=1` (the GPU-check script sets it).
//!
//! Outputs that a kernel overwrites start as NaN, so an element it forgets stays NaN and fails;
//! gradients start from random values, so the accumulate (`+=`) contract is checked too.

mod common;
use common::tolerance as tol;
use common::{assert_within, cuda_or_skip, TestRng};
use ptrag_engine::cpu;
use ptrag_engine::cpu::attention::{AttentionShape, Rope};
use ptrag_engine::cpu::energy::EnergyShape;
use ptrag_engine::cpu::selection::TripletLayout;
use ptrag_engine::cuda::{self, kernels, Args, Buffer, Gpu, Kernel, Launch, Param, ThreadOrder};

fn emulators() -> Vec<Gpu> {
    [ThreadOrder::Forward, ThreadOrder::Reverse].into_iter().map(|o| Gpu::emulated(o).expect("the emulated kernels are built")).collect()
}

macro_rules! kernel_tests {
    ($($check:ident => $emulated:ident, $cuda:ident;)*) => {$(
        #[test]
        fn $emulated() {
            for gpu in emulators() {
                $check(&gpu);
            }
        }
        #[test]
        fn $cuda() {
            if let Some(gpu) = cuda_or_skip() {
                $check(&gpu);
            }
        }
    )*};
}

kernel_tests! {
    elementwise_forward => elementwise_forward_emulated_matches_cpu, elementwise_forward_cuda_matches_cpu;
    elementwise_backward => elementwise_backward_emulated_matches_cpu, elementwise_backward_cuda_matches_cpu;
    norm_forward => norm_forward_emulated_matches_cpu, norm_forward_cuda_matches_cpu;
    norm_backward => norm_backward_emulated_matches_cpu, norm_backward_cuda_matches_cpu;
    optim_forward => optim_forward_emulated_matches_cpu, optim_forward_cuda_matches_cpu;
    energy_forward => energy_forward_emulated_matches_cpu, energy_forward_cuda_matches_cpu;
    energy_backward => energy_backward_emulated_matches_cpu, energy_backward_cuda_matches_cpu;
    retrieval_forward => retrieval_forward_emulated_matches_cpu, retrieval_forward_cuda_matches_cpu;
    attention_forward => attention_forward_emulated_matches_cpu, attention_forward_cuda_matches_cpu;
    attention_backward => attention_backward_emulated_matches_cpu, attention_backward_cuda_matches_cpu;
    selection_forward => selection_forward_emulated_matches_cpu, selection_forward_cuda_matches_cpu;
    selection_backward => selection_backward_emulated_matches_cpu, selection_backward_cuda_matches_cpu;
    triplets_forward => triplets_forward_emulated_matches_cpu, triplets_forward_cuda_matches_cpu;
    triplets_backward => triplets_backward_emulated_matches_cpu, triplets_backward_cuda_matches_cpu;
    tensor_forward => tensor_forward_emulated_matches_cpu, tensor_forward_cuda_matches_cpu;
    tensor_backward => tensor_backward_emulated_matches_cpu, tensor_backward_cuda_matches_cpu;
    gemm_forward => gemm_forward_emulated_matches_cpu, gemm_forward_cuda_matches_cpu;
    readback_before_later_work => readback_emulated_holds_the_values_when_queued, readback_cuda_holds_the_values_when_queued;
}

// ---- readback (the training loop reads a step's statistics while the next step runs) ---------

fn readback_before_later_work(gpu: &Gpu) {
    let (a, b) = (vec![-1.0f32, 2.0, -3.0], vec![5.0f32; 1000]);
    let (mut ga, gb) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
    let early = gpu.read_later(&[&ga, &gb]).unwrap();
    // work queued after the readback overwrites the first buffer
    let source = gpu.upload(&[7.0f32, -8.0, 9.0]).unwrap();
    cuda::elementwise::relu_forward(gpu, &source, &mut ga).unwrap();
    let late = gpu.read_later(&[&ga]).unwrap();
    assert_eq!(early.wait().unwrap(), vec![a, b], "the readback holds the values at the time it was queued");
    assert_eq!(late.wait().unwrap(), vec![vec![7.0f32, 0.0, 9.0]], "a later readback sees the later work");
}

// ---- gemm (cuBLAS on a GPU; the emulator runs the CPU GEMM, so there this checks the plumbing) ----

fn gemm_forward(gpu: &Gpu) {
    let (m, k, n) = (37, 19, 53);
    let mut rng = TestRng::new(30);
    let (a, b, c0) = (inputs(&mut rng, m * k, 1.0), inputs(&mut rng, k * n, 1.0), inputs(&mut rng, m * n, 1.0));
    for (trans_a, trans_b, accumulate) in [(false, false, false), (true, false, true), (false, true, false), (true, true, true)] {
        let mut want = c0.clone();
        cpu::gemm::matmul(&a, &b, &mut want, m, k, n, trans_a, trans_b, accumulate);
        let mut c = up(gpu, &c0);
        cuda::gemm::matmul(gpu, &up(gpu, &a), &up(gpu, &b), &mut c, m, k, n, trans_a, trans_b, accumulate).unwrap();
        check(
            gpu,
            &down(gpu, &c),
            &want,
            tol::F32_REDUCTION,
            &format!("matmul {m}x{k}x{n} trans ({trans_a}, {trans_b}) accumulate {accumulate}"),
        );
    }
}

// ---- helpers ---------------------------------------------------------------------------------

fn f32s(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}
fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}
fn up(gpu: &Gpu, x: &[f64]) -> Buffer<f32> {
    gpu.upload(&f32s(x)).unwrap()
}
/// An output buffer poisoned with NaN.
fn poisoned(gpu: &Gpu, n: usize) -> Buffer<f32> {
    gpu.upload(&vec![f32::NAN; n]).unwrap()
}
fn down(gpu: &Gpu, b: &Buffer<f32>) -> Vec<f64> {
    f64s(&gpu.download(b).unwrap())
}
/// Inputs rounded to f32 first, so the reference sees exactly what the kernel sees.
fn inputs(rng: &mut TestRng, n: usize, scale: f64) -> Vec<f64> {
    rng.vec(n).iter().map(|v| (v * scale) as f32 as f64).collect()
}
fn check(gpu: &Gpu, actual: &[f64], expected: &[f64], tol: tol::Tol, what: &str) {
    assert_within(actual, expected, tol, &format!("{what} on {}", gpu.name()));
}

// ---- elementwise -----------------------------------------------------------------------------

type Forward = fn(&[f64], &mut [f64]);
type Backward = fn(&[f64], &[f64], &mut [f64]);
type GpuForward = fn(&Gpu, &Buffer<f32>, &mut Buffer<f32>) -> ptrag_engine::Result<()>;
type GpuBackward = fn(&Gpu, &Buffer<f32>, &Buffer<f32>, &mut Buffer<f32>) -> ptrag_engine::Result<()>;

fn activations() -> [(&'static str, Forward, Backward, GpuForward, GpuBackward); 3] {
    use cpu::elementwise as c;
    use cuda::elementwise as g;
    [
        ("silu", c::silu_forward, c::silu_backward, g::silu_forward, g::silu_backward),
        ("gelu", c::gelu_forward, c::gelu_backward, g::gelu_forward, g::gelu_backward),
        ("relu", c::relu_forward, c::relu_backward, g::relu_forward, g::relu_backward),
    ]
}

fn elementwise_forward(gpu: &Gpu) {
    let mut rng = TestRng::new(1);
    let (x, up_half) = (inputs(&mut rng, 1000, 4.0), inputs(&mut rng, 1000, 1.0));
    for (name, cpu_f, _, gpu_f, _) in activations() {
        let mut want = vec![0.0; x.len()];
        cpu_f(&x, &mut want);
        let mut y = poisoned(gpu, x.len());
        gpu_f(gpu, &up(gpu, &x), &mut y).unwrap();
        check(gpu, &down(gpu, &y), &want, tol::F32_ELEMENTWISE, name);
    }
    let mut want = vec![0.0; x.len()];
    cpu::elementwise::swiglu_forward(&x, &up_half, &mut want);
    let mut y = poisoned(gpu, x.len());
    cuda::elementwise::swiglu_forward(gpu, &up(gpu, &x), &up(gpu, &up_half), &mut y).unwrap();
    check(gpu, &down(gpu, &y), &want, tol::F32_ELEMENTWISE, "swiglu");

    // Dropout recomputes its mask from the key: the kernel must drop exactly the CPU's elements
    // (past the CPU's 16,384-element chunks, so their offsets count too) and scale the rest alike.
    let long = inputs(&mut rng, 40_001, 1.0);
    for (seed, p) in [(3, 0.1), (4, 0.5)] {
        let mask = cpu::elementwise::DropoutMask::new(seed, p);
        let mut want = vec![0.0f32; long.len()];
        cpu::elementwise::dropout(&f32s(&long), &mut want, &mask);
        let mut y = poisoned(gpu, long.len());
        cuda::elementwise::dropout(gpu, &up(gpu, &long), &mask, &mut y).unwrap();
        check(gpu, &down(gpu, &y), &f64s(&want), tol::EXACT, &format!("dropout p = {p}"));
    }

    for cols in [2, 37] {
        let mut want = vec![0.0; x.len() / cols * cols];
        cpu::elementwise::softmax_forward(&x[..want.len()], &mut want, cols);
        let mut y = poisoned(gpu, want.len());
        cuda::elementwise::softmax_forward(gpu, &up(gpu, &x[..want.len()]), &mut y, cols).unwrap();
        check(gpu, &down(gpu, &y), &want, tol::F32_REDUCTION, &format!("softmax over {cols}"));
    }
}

fn elementwise_backward(gpu: &Gpu) {
    let mut rng = TestRng::new(2);
    let (x, dy, dx0) = (inputs(&mut rng, 1000, 4.0), inputs(&mut rng, 1000, 1.0), inputs(&mut rng, 1000, 1.0));
    for (name, _, cpu_b, _, gpu_b) in activations() {
        let mut want = dx0.clone();
        cpu_b(&x, &dy, &mut want);
        let mut dx = up(gpu, &dx0);
        gpu_b(gpu, &up(gpu, &x), &up(gpu, &dy), &mut dx).unwrap();
        check(gpu, &down(gpu, &dx), &want, tol::F32_ELEMENTWISE, name);
    }
    let (up_half, dup0) = (inputs(&mut rng, 1000, 1.0), inputs(&mut rng, 1000, 1.0));
    let (mut want_dgate, mut want_dup) = (dx0.clone(), dup0.clone());
    cpu::elementwise::swiglu_backward(&x, &up_half, &dy, &mut want_dgate, &mut want_dup);
    let (mut dgate, mut dup) = (up(gpu, &dx0), up(gpu, &dup0));
    cuda::elementwise::swiglu_backward(gpu, &up(gpu, &x), &up(gpu, &up_half), &up(gpu, &dy), &mut dgate, &mut dup).unwrap();
    check(gpu, &down(gpu, &dgate), &want_dgate, tol::F32_ELEMENTWISE, "swiglu dgate");
    check(gpu, &down(gpu, &dup), &want_dup, tol::F32_ELEMENTWISE, "swiglu dup");

    for cols in [2, 37] {
        let n = x.len() / cols * cols;
        let mut y = vec![0.0; n];
        cpu::elementwise::softmax_forward(&x[..n], &mut y, cols);
        let y = f64s(&f32s(&y));
        let mut want = dx0[..n].to_vec();
        cpu::elementwise::softmax_backward(&y, &dy[..n], &mut want, cols);
        let mut dx = up(gpu, &dx0[..n]);
        cuda::elementwise::softmax_backward(gpu, &up(gpu, &y), &up(gpu, &dy[..n]), &mut dx, cols).unwrap();
        check(gpu, &down(gpu, &dx), &want, tol::F32_REDUCTION, &format!("softmax backward over {cols}"));
    }
}

// ---- norm ------------------------------------------------------------------------------------

/// (rows, cols): wider than a block, and narrower than one warp's share.
const NORM_SHAPES: [(usize, usize); 2] = [(7, 300), (5, 37)];

fn norm_forward(gpu: &Gpu) {
    for (rows, cols) in NORM_SHAPES {
        let mut rng = TestRng::new(3);
        let (x, w, b) = (inputs(&mut rng, rows * cols, 2.0), inputs(&mut rng, cols, 1.0), inputs(&mut rng, cols, 1.0));
        let (mut y, mut rstd, mut mean) = (vec![0.0; rows * cols], vec![0.0; rows], vec![0.0; rows]);
        cpu::norm::rmsnorm_forward(&x, &w, 1e-6, &mut y, &mut rstd);
        let (mut gy, mut grstd) = (poisoned(gpu, rows * cols), poisoned(gpu, rows));
        cuda::norm::rmsnorm_forward(gpu, &up(gpu, &x), &up(gpu, &w), 1e-6, &mut gy, &mut grstd).unwrap();
        check(gpu, &down(gpu, &gy), &y, tol::F32_REDUCTION, "rmsnorm y");
        check(gpu, &down(gpu, &grstd), &rstd, tol::F32_REDUCTION, "rmsnorm rstd");

        cpu::norm::layernorm_forward(&x, &w, &b, 1e-5, &mut y, &mut mean, &mut rstd);
        let (mut gy, mut gmean, mut grstd) = (poisoned(gpu, rows * cols), poisoned(gpu, rows), poisoned(gpu, rows));
        cuda::norm::layernorm_forward(gpu, &up(gpu, &x), &up(gpu, &w), &up(gpu, &b), 1e-5, &mut gy, &mut gmean, &mut grstd).unwrap();
        check(gpu, &down(gpu, &gy), &y, tol::F32_REDUCTION, "layernorm y");
        check(gpu, &down(gpu, &gmean), &mean, tol::F32_REDUCTION, "layernorm mean");
        check(gpu, &down(gpu, &grstd), &rstd, tol::F32_REDUCTION, "layernorm rstd");
    }
}

fn norm_backward(gpu: &Gpu) {
    for (rows, cols) in NORM_SHAPES {
        let mut rng = TestRng::new(4);
        let (x, w, dy) = (inputs(&mut rng, rows * cols, 2.0), inputs(&mut rng, cols, 1.0), inputs(&mut rng, rows * cols, 1.0));
        let (dx0, dw0, db0) = (inputs(&mut rng, rows * cols, 1.0), inputs(&mut rng, cols, 1.0), inputs(&mut rng, cols, 1.0));
        // Statistics from the reference forward pass, rounded to f32 as the kernel would store them.
        let (mut y, mut rstd, mut mean) = (vec![0.0; rows * cols], vec![0.0; rows], vec![0.0; rows]);
        cpu::norm::rmsnorm_forward(&x, &w, 1e-6, &mut y, &mut rstd);
        let rms_rstd: Vec<f64> = f64s(&f32s(&rstd));
        let (mut dx, mut dw) = (dx0.clone(), dw0.clone());
        cpu::norm::rmsnorm_backward(&x, &w, &rms_rstd, &dy, &mut dx, &mut dw);
        let (mut gdx, mut gdw) = (up(gpu, &dx0), up(gpu, &dw0));
        cuda::norm::rmsnorm_backward(gpu, &up(gpu, &x), &up(gpu, &w), &up(gpu, &rms_rstd), &up(gpu, &dy), &mut gdx, &mut gdw).unwrap();
        check(gpu, &down(gpu, &gdx), &dx, tol::F32_REDUCTION, "rmsnorm dx");
        check(gpu, &down(gpu, &gdw), &dw, tol::F32_REDUCTION, "rmsnorm dw");

        cpu::norm::layernorm_forward(&x, &w, &w, 1e-5, &mut y, &mut mean, &mut rstd);
        let (mean, rstd) = (f64s(&f32s(&mean)), f64s(&f32s(&rstd)));
        let (mut dx, mut dw, mut db) = (dx0.clone(), dw0.clone(), db0.clone());
        cpu::norm::layernorm_backward(&x, &w, &mean, &rstd, &dy, &mut dx, &mut dw, &mut db);
        let (mut gdx, mut gdw, mut gdb) = (up(gpu, &dx0), up(gpu, &dw0), up(gpu, &db0));
        let (gx, gw, gmean, grstd, gdy) = (up(gpu, &x), up(gpu, &w), up(gpu, &mean), up(gpu, &rstd), up(gpu, &dy));
        cuda::norm::layernorm_backward(gpu, &gx, &gw, &gmean, &grstd, &gdy, &mut gdx, &mut gdw, &mut gdb).unwrap();
        check(gpu, &down(gpu, &gdx), &dx, tol::F32_REDUCTION, "layernorm dx");
        check(gpu, &down(gpu, &gdw), &dw, tol::F32_REDUCTION, "layernorm dw");
        check(gpu, &down(gpu, &gdb), &db, tol::F32_REDUCTION, "layernorm db");
    }
}

// ---- optimiser -------------------------------------------------------------------------------

fn optim_forward(gpu: &Gpu) {
    use cpu::optim::Clip;
    let mut rng = TestRng::new(5);
    let n = 1000;
    let (p, g) = (f32s(&rng.vec(n)), f32s(&rng.vec(n)));
    let (m, v) = (f32s(&rng.vec(n)), f32s(&rng.vec(n)).iter().map(|v| v.abs()).collect::<Vec<f32>>());
    let upload = |x: &[f32]| gpu.upload(x).unwrap();
    for (step, weight_decay, grad_scale) in [(1, 0.0, 1.0), (7, 0.01, 0.37)] {
        let s = cpu::optim::AdamStep { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay, step };
        let (mut want_p, mut want_m, mut want_v) = (p.clone(), m.clone(), v.clone());
        cpu::optim::adam_update(&mut want_p, &g, &mut want_m, &mut want_v, &s, grad_scale);
        let (mut gp, gg, mut gm, mut gv) = (upload(&p), upload(&g), upload(&m), upload(&v));
        let clip = gpu.upload(&[5.0, grad_scale as f64, 1.0]).unwrap();
        cuda::optim::adam_update(gpu, &mut gp, &gg, &mut gm, &mut gv, &s, &clip).unwrap();
        for (name, got, want) in [("param", &gp, &want_p), ("m", &gm, &want_m), ("v", &gv, &want_v)] {
            check(gpu, &f64s(&gpu.download(got).unwrap()), &f64s(want), tol::F32_ELEMENTWISE, &format!("adam {name} at step {step}"));
        }
        // a step that does not apply changes nothing
        let skip = gpu.upload(&[f64::NAN, 1.0, 0.0]).unwrap();
        cuda::optim::adam_update(gpu, &mut gp, &gg, &mut gm, &mut gv, &s, &skip).unwrap();
        for (name, got, want) in [("param", &gp, &want_p), ("m", &gm, &want_m), ("v", &gv, &want_v)] {
            assert!(gpu.download(got).unwrap() == *want, "adam changed {name} in a step that does not apply");
        }
    }
    // The clipping: several tensors sharing one partial buffer, one with more elements than one
    // block-stride pass covers (the grid-stride loop), one of a single element; limits that clip
    // (the norm is about 316), that do not, and none; a non-finite loss, and a NaN gradient.
    let xs = [f32s(&rng.vec(300_001)), f32s(&rng.vec(1)), f32s(&rng.vec(777))];
    let mut with_nan = xs[2].clone();
    with_nan[5] = f32::NAN;
    let (on_gpu, nan_gpu) = (xs.iter().map(|x| upload(x)).collect::<Vec<_>>(), upload(&with_nan));
    let squares = |xs: &[&[f32]]| xs.iter().map(|x| cpu::optim::squared_norm(x)).sum::<f64>();
    let (all, nan) = (squares(&[&xs[0], &xs[1], &xs[2]]), squares(&[&xs[0], &with_nan]));
    let cases = [
        (10.0, 1.5, vec![&on_gpu[0], &on_gpu[1], &on_gpu[2]], all),
        (1e6, 1.5, vec![&on_gpu[0], &on_gpu[1], &on_gpu[2]], all),
        (0.0, 1.5, vec![&on_gpu[0], &on_gpu[1], &on_gpu[2]], all),
        (10.0, f32::INFINITY, vec![&on_gpu[0], &on_gpu[1], &on_gpu[2]], all),
        (10.0, 1.5, vec![&on_gpu[0], &nan_gpu], nan),
    ];
    for (limit, loss, tensors, squares) in cases {
        let got = Clip::from_values(&gpu.download(&cuda::optim::clip(gpu, &tensors, &upload(&[loss]), limit).unwrap()).unwrap());
        let want = Clip::new(squares, loss, limit);
        let what = format!("clip at limit {limit} with loss {loss} on {}", gpu.name());
        assert_eq!(got.apply, want.apply, "{what}: apply");
        if want.norm.is_finite() {
            assert_within(&[got.norm, got.scale as f64], &[want.norm, want.scale as f64], tol::CLIP, &what);
        } else {
            assert!(got.norm.is_nan(), "{what}: norm {}", got.norm);
        }
    }
}

// ---- energy ----------------------------------------------------------------------------------

/// (sets, predicted cells, observed cells, genes), with duplicated rows so clamped pairs occur.
const ENERGY_SHAPES: [EnergyShape; 2] =
    [EnergyShape { sets: 3, cells_pred: 13, cells_obs: 11, genes: 70 }, EnergyShape { sets: 2, cells_pred: 33, cells_obs: 40, genes: 517 }];

fn energy_inputs(shape: EnergyShape, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let EnergyShape { sets, cells_pred: n, cells_obs: m, genes: g } = shape;
    let mut rng = TestRng::new(seed);
    let mut pred = inputs(&mut rng, sets * n * g, 1.0);
    let obs = inputs(&mut rng, sets * m * g, 1.0);
    // Cell 1 of every set repeats cell 0: their distance is clamped (no gradient through it).
    for s in 0..sets {
        let (a, b) = pred[s * n * g..].split_at_mut(g);
        b[..g].copy_from_slice(a);
    }
    (pred, obs)
}

fn energy_forward(gpu: &Gpu) {
    for shape in ENERGY_SHAPES {
        let (pred, obs) = energy_inputs(shape, 6);
        let mut want = vec![0.0; shape.sets];
        cpu::energy::energy_forward(&pred, &obs, shape, &mut want);
        let mut got = poisoned(gpu, shape.sets);
        cuda::energy::energy_forward(gpu, &up(gpu, &pred), &up(gpu, &obs), shape, &mut got).unwrap();
        check(gpu, &down(gpu, &got), &want, tol::F32_ENERGY, &format!("energy {shape:?}"));
    }
}

fn energy_backward(gpu: &Gpu) {
    for shape in ENERGY_SHAPES {
        let (pred, obs) = energy_inputs(shape, 7);
        let mut rng = TestRng::new(8);
        let (upstream, dpred0) = (inputs(&mut rng, shape.sets, 1.0), inputs(&mut rng, pred.len(), 1.0));
        let mut want = dpred0.clone();
        cpu::energy::energy_backward(&pred, &obs, shape, &upstream, &mut want);
        let mut got = up(gpu, &dpred0);
        cuda::energy::energy_backward(gpu, &up(gpu, &pred), &up(gpu, &obs), shape, &up(gpu, &upstream), &mut got).unwrap();
        check(gpu, &down(gpu, &got), &want, tol::F32_ENERGY, &format!("energy gradient {shape:?}"));
    }
}

// ---- retrieval -------------------------------------------------------------------------------

fn retrieval_forward(gpu: &Gpu) {
    let mut rng = TestRng::new(9);
    let (rows, dim, k) = (301, 77, 7);
    let mut db = f32s(&rng.vec(rows * dim));
    db[5 * dim..6 * dim].fill(0.0); // a zero row (the control's GenePT vector) stays zero
    let mut want_db = db.clone();
    cpu::retrieval::normalise_rows(&mut want_db, dim);
    let mut gdb = gpu.upload(&db).unwrap();
    cuda::retrieval::normalise_rows(gpu, &mut gdb, dim).unwrap();
    let got_db = gpu.download(&gdb).unwrap();
    check(gpu, &f64s(&got_db), &f64s(&want_db), tol::F32_REDUCTION, "normalised rows");

    // Queries are database rows (as in training: a set's own perturbation), excluded from their
    // own results; a fifth of the rows are outside the database.
    let query_rows = [0usize, 17, 150, 299, 300];
    let allowed: Vec<bool> = (0..rows).map(|j| j % 5 != 3).collect();
    let exclude: Vec<Option<usize>> = query_rows.iter().map(|&r| Some(r)).collect();
    let queries: Vec<f32> = query_rows.iter().flat_map(|&r| want_db[r * dim..][..dim].to_vec()).collect();
    let (mut want_idx, mut want_sims) = (vec![0u32; query_rows.len() * k], vec![0f32; query_rows.len() * k]);
    cpu::retrieval::cosine_topk(&queries, &want_db, dim, &allowed, &exclude, k, &mut want_idx, &mut want_sims);
    let allowed_u8: Vec<u8> = allowed.iter().map(|&a| a as u8).collect();
    let exclude_i32: Vec<i32> = exclude.iter().map(|e| e.map_or(-1, |r| r as i32)).collect();
    let (mut idx, mut sims) = (gpu.upload(&vec![u32::MAX - 1; want_idx.len()]).unwrap(), poisoned(gpu, want_sims.len()));
    let (gq, gdb, ga, ge) =
        (gpu.upload(&queries).unwrap(), gpu.upload(&want_db).unwrap(), gpu.upload(&allowed_u8).unwrap(), gpu.upload(&exclude_i32).unwrap());
    cuda::retrieval::cosine_topk(gpu, &gq, &gdb, dim, &ga, &ge, k, &mut idx, &mut sims).unwrap();
    assert_eq!(gpu.download(&idx).unwrap(), want_idx, "top-{k} indices on {}", gpu.name());
    check(gpu, &down(gpu, &sims), &f64s(&want_sims), tol::F32_REDUCTION, "top-k similarities");

    // Fewer allowed rows than k: the unfilled slots are marked, not left as garbage.
    let few: Vec<u8> = (0..rows).map(|j| (j < 4) as u8).collect();
    let ga = gpu.upload(&few).unwrap();
    cuda::retrieval::cosine_topk(gpu, &gq, &gdb, dim, &ga, &ge, k, &mut idx, &mut sims).unwrap();
    let got = gpu.download(&idx).unwrap();
    assert!(
        got[..k].iter().skip(3).all(|&i| i == u32::MAX) && got[..3].iter().all(|&i| (1..4).contains(&i)),
        "query 0 got {:?}",
        &got[..k]
    );
}

// ---- attention -------------------------------------------------------------------------------

/// Several tiles of keys (37 > 32), keys != cells, the paper's 58-wide heads and the 128 maximum.
fn attention_shapes() -> Vec<AttentionShape> {
    vec![
        AttentionShape::within_sets(2, 37, 3, 17, false),
        AttentionShape::within_sets(2, 37, 3, 17, true),
        AttentionShape { sets: 3, cells: 5, keys: 7, heads: 1, head_dim: 40, causal: false },
        AttentionShape::within_sets(1, 11, 2, 58, false),
        AttentionShape::within_sets(1, 9, 1, 128, true),
    ]
}

fn attention_inputs(shape: AttentionShape, seed: u64) -> [Vec<f64>; 3] {
    let w = shape.heads * shape.head_dim;
    let mut rng = TestRng::new(seed);
    [
        inputs(&mut rng, shape.sets * shape.cells * w, 1.5),
        inputs(&mut rng, shape.sets * shape.keys * w, 1.5),
        inputs(&mut rng, shape.sets * shape.keys * w, 1.0),
    ]
}

fn attention_forward(gpu: &Gpu) {
    for shape in attention_shapes() {
        let [q, k, v] = attention_inputs(shape, 10);
        let stats = shape.sets * shape.heads * shape.cells;
        let (mut out, mut lse) = (vec![0.0; q.len()], vec![0.0; stats]);
        cpu::attention::attention_forward(&q, &k, &v, shape, &mut out, &mut lse);
        let (mut gout, mut glse) = (poisoned(gpu, q.len()), poisoned(gpu, stats));
        cuda::attention::attention_forward(gpu, &up(gpu, &q), &up(gpu, &k), &up(gpu, &v), shape, &mut gout, &mut glse).unwrap();
        check(gpu, &down(gpu, &gout), &out, tol::F32_ATTENTION, &format!("attention out {shape:?}"));
        check(gpu, &down(gpu, &glse), &lse, tol::F32_ATTENTION, &format!("attention lse {shape:?}"));
    }
    for rope in ROPES {
        let x = inputs(&mut TestRng::new(13), 3 * rope.cells * rope.heads * rope.head_dim, 1.0);
        let mut want = vec![0.0; x.len()];
        cpu::attention::rope_forward(rope, &x, &mut want);
        let mut y = poisoned(gpu, x.len());
        cuda::attention::rope_forward(gpu, rope, &up(gpu, &x), &mut y).unwrap();
        check(gpu, &down(gpu, &y), &want, tol::F32_ELEMENTWISE, &format!("{rope:?}"));
    }
}

/// Three sets of cells each: one with an odd number of pairs per head, one with the paper's head size.
const ROPES: [Rope; 2] =
    [Rope { cells: 7, heads: 3, head_dim: 10, theta: 10_000.0 }, Rope { cells: 5, heads: 2, head_dim: 58, theta: 500_000.0 }];

fn attention_backward(gpu: &Gpu) {
    for shape in attention_shapes() {
        let [q, k, v] = attention_inputs(shape, 11);
        let mut rng = TestRng::new(12);
        let dout = inputs(&mut rng, q.len(), 1.0);
        let (dq0, dk0, dv0) = (inputs(&mut rng, q.len(), 1.0), inputs(&mut rng, k.len(), 1.0), inputs(&mut rng, k.len(), 1.0));
        let (mut out, mut lse) = (vec![0.0; q.len()], vec![0.0; shape.sets * shape.heads * shape.cells]);
        cpu::attention::attention_forward(&q, &k, &v, shape, &mut out, &mut lse);
        let (out, lse) = (f64s(&f32s(&out)), f64s(&f32s(&lse)));
        let (mut dq, mut dk, mut dv) = (dq0.clone(), dk0.clone(), dv0.clone());
        cpu::attention::attention_backward(&q, &k, &v, &out, &lse, &dout, shape, &mut dq, &mut dk, &mut dv);
        let (mut gdq, mut gdk, mut gdv) = (up(gpu, &dq0), up(gpu, &dk0), up(gpu, &dv0));
        let (gq, gk, gv, gout, glse, gdout) = (up(gpu, &q), up(gpu, &k), up(gpu, &v), up(gpu, &out), up(gpu, &lse), up(gpu, &dout));
        cuda::attention::attention_backward(gpu, &gq, &gk, &gv, &gout, &glse, &gdout, shape, &mut gdq, &mut gdk, &mut gdv).unwrap();
        check(gpu, &down(gpu, &gdq), &dq, tol::F32_ATTENTION, &format!("attention dq {shape:?}"));
        check(gpu, &down(gpu, &gdk), &dk, tol::F32_ATTENTION, &format!("attention dk {shape:?}"));
        check(gpu, &down(gpu, &gdv), &dv, tol::F32_ATTENTION, &format!("attention dv {shape:?}"));
    }
    for rope in ROPES {
        let mut rng = TestRng::new(14);
        let (dy, dx0) = (
            inputs(&mut rng, 3 * rope.cells * rope.heads * rope.head_dim, 1.0),
            inputs(&mut rng, 3 * rope.cells * rope.heads * rope.head_dim, 1.0),
        );
        let mut want = dx0.clone();
        cpu::attention::rope_backward(rope, &dy, &mut want);
        let mut dx = up(gpu, &dx0);
        cuda::attention::rope_backward(gpu, rope, &up(gpu, &dy), &mut dx).unwrap();
        check(gpu, &down(gpu, &dx), &want, tol::F32_ELEMENTWISE, &format!("{rope:?} backward"));
    }
}

// ---- selection -------------------------------------------------------------------------------

fn selection_forward(gpu: &Gpu) {
    for classes in [2, 5] {
        let mut rng = TestRng::new(13);
        let rows = 300;
        let (logits, noise) = (inputs(&mut rng, rows * classes, 3.0), inputs(&mut rng, rows * classes, 1.0));
        let (mut soft, mut hard) = (vec![0.0; logits.len()], vec![0.0; logits.len()]);
        cpu::selection::gumbel_st_forward(&logits, &noise, 0.7, classes, &mut soft, &mut hard);
        let (mut gsoft, mut ghard) = (poisoned(gpu, logits.len()), poisoned(gpu, logits.len()));
        cuda::selection::gumbel_st_forward(gpu, &up(gpu, &logits), &up(gpu, &noise), 0.7, classes, &mut gsoft, &mut ghard).unwrap();
        check(gpu, &down(gpu, &gsoft), &soft, tol::F32_ELEMENTWISE, "gumbel soft");
        check(gpu, &down(gpu, &ghard), &hard, tol::EXACT, "gumbel hard");
    }
    // The noise drawn from its key: the same samples as the CPU's (past its 16,384-element chunks).
    // The GPU's double-precision log may differ from the host's in the last bit, hence not exact.
    let n = 40_001;
    let mut want = vec![0.0f32; n];
    cpu::selection::gumbel_noise(77, &mut want);
    let mut got = poisoned(gpu, n);
    cuda::selection::gumbel_noise(gpu, 77, &mut got).unwrap();
    check(gpu, &down(gpu, &got), &f64s(&want), tol::F32_GUMBEL_NOISE, "gumbel noise");
}

fn selection_backward(gpu: &Gpu) {
    for classes in [2, 5] {
        let mut rng = TestRng::new(14);
        let rows = 300;
        let logits = inputs(&mut rng, rows * classes, 3.0);
        let mut soft = vec![0.0; logits.len()];
        cpu::elementwise::softmax_forward(&logits, &mut soft, classes);
        let soft = f64s(&f32s(&soft));
        let (dy, dl0) = (inputs(&mut rng, logits.len(), 1.0), inputs(&mut rng, logits.len(), 1.0));
        let mut want = dl0.clone();
        cpu::selection::gumbel_st_backward(&soft, &dy, 0.7, classes, &mut want);
        let mut got = up(gpu, &dl0);
        cuda::selection::gumbel_st_backward(gpu, &up(gpu, &soft), &up(gpu, &dy), 0.7, classes, &mut got).unwrap();
        check(gpu, &down(gpu, &got), &want, tol::F32_ELEMENTWISE, "gumbel gradient");
    }
}

// ---- the emulator catches what a GPU would get wrong ---------------------------------------

/// One of the emulator's self-test kernels (`kernels/emulation/selftest.cu`), each writing one buffer.
fn run_selftest(gpu: &Gpu, symbol: &'static str, shared_floats: usize) -> ptrag_engine::Result<Vec<f32>> {
    let kernel = Kernel { symbol, params: &[Param::Out] };
    let mut out = gpu.upload(&[f32::NAN; 64]).unwrap();
    gpu.launch(&kernel, Launch::new([1, 1, 1], 64, shared_floats)?, Args::new().output(&mut out))?;
    Ok(gpu.download(&out).unwrap())
}

#[test]
fn emulator_reports_divergent_barriers_missing_barriers_and_bad_shuffles() {
    for gpu in emulators() {
        let err = run_selftest(&gpu, "selftest_divergent_barrier_f32", 0).unwrap_err().to_string();
        assert!(err.contains("__syncthreads") && err.contains("reached by 5 of 64"), "{err}");
        let err = run_selftest(&gpu, "selftest_shuffle_outside_mask_f32", 0).unwrap_err().to_string();
        assert!(err.contains("not in mask"), "{err}");
        let good = run_selftest(&gpu, "selftest_with_barrier_f32", 64).unwrap();
        assert_eq!(good, (0..64).map(|t| ((t + 1) % 64) as f32).collect::<Vec<_>>());
    }
    // Without the barrier, forward order reads slots not yet written: the poison shows.
    let forward = run_selftest(&Gpu::emulated(ThreadOrder::Forward).unwrap(), "selftest_missing_barrier_f32", 64).unwrap();
    assert!(forward[..63].iter().all(|v| v.is_nan()), "{forward:?}");
}

#[test]
fn launch_errors_are_values_not_panics() {
    let gpu = Gpu::emulated(ThreadOrder::Forward).unwrap();
    let mut out = gpu.upload(&[0.0f32; 4]).unwrap();
    let missing = Kernel { symbol: "no_such_kernel_f32", params: &[Param::Out] };
    let err = gpu.launch(&missing, Launch::elementwise(4), Args::new().output(&mut out)).unwrap_err();
    assert!(err.to_string().contains("no_such_kernel_f32"), "{err}");
    let bad_block = Launch { block: 48, ..Launch::elementwise(4) };
    assert!(gpu.launch(&kernels::RELU_FORWARD_F32, bad_block, Args::new()).is_err());
    // CUDA's grid limits hold under the emulator too: 65,535 blocks in y and z, none empty
    for grid in [[1, 65_536, 1], [1, 1, 65_536], [0, 1, 1]] {
        let err = gpu.launch(&kernels::RELU_FORWARD_F32, Launch { grid, ..Launch::elementwise(4) }, Args::new()).unwrap_err();
        assert!(err.to_string().contains("grid of"), "{err}");
    }
    assert!(Launch::new([1, 1, 0], 32, 0).is_err() && Launch::new([1 << 32, 1, 1], 32, 0).is_err());
    let (x, mut y) = (gpu.upload(&[1.0f32; 5]).unwrap(), gpu.upload(&[0.0f32; 4]).unwrap());
    let err = cuda::elementwise::relu_forward(&gpu, &x, &mut y).unwrap_err();
    assert!(err.to_string().contains("y has 4 elements, expected 5"), "{err}");
}

// ---- triplets (PT-RAG's factorised scorer and projection) -----------------------------------

/// 2 sets of 5 cells with 3 candidates (30 triplets), and per-cell retrieval (rows == cells).
const TRIPLET_LAYOUTS: [TripletLayout; 2] = [TripletLayout { cells: 10, rows: 2, k: 3 }, TripletLayout { cells: 7, rows: 7, k: 2 }];
const TRIPLET_H: usize = 37;

fn triplet_parts(layout: TripletLayout, width: usize, rng: &mut TestRng) -> [Vec<f64>; 3] {
    layout.part_rows().map(|rows| inputs(rng, rows * width, 1.0))
}

/// Row sums and sums of squares with a positive variance for every triplet (width 3 * 37).
fn triplet_moments(layout: TripletLayout, rng: &mut TestRng) -> ([Vec<f64>; 3], [Vec<f64>; 3]) {
    let sums = layout.part_rows().map(|rows| inputs(rng, rows, 3.0));
    let squares = layout.part_rows().map(|rows| inputs(rng, rows, 5.0).iter().map(|v| 40.0 + v).collect());
    (sums, squares)
}

fn triplet_stats(layout: TripletLayout, rng: &mut TestRng) -> Vec<f64> {
    (0..2 * layout.triplets())
        .map(|i| if i % 2 == 1 { (1.0 + 0.5 * rng.uniform()) as f32 as f64 } else { rng.uniform() as f32 as f64 })
        .collect()
}

fn triplets_forward(gpu: &Gpu) {
    for layout in TRIPLET_LAYOUTS {
        let mut rng = TestRng::new(15);
        let (sums, squares) = triplet_moments(layout, &mut rng);
        let mut want = vec![0.0; 2 * layout.triplets()];
        cpu::selection::triplet_stats_forward(
            [&sums[0], &sums[1], &sums[2]],
            [&squares[0], &squares[1], &squares[2]],
            layout,
            3 * TRIPLET_H,
            1e-5,
            &mut want,
        );
        let (gs, gq) = (sums.each_ref().map(|s| up(gpu, s)), squares.each_ref().map(|s| up(gpu, s)));
        let mut got = poisoned(gpu, want.len());
        cuda::selection::triplet_stats_forward(gpu, gs.each_ref(), gq.each_ref(), layout, 3 * TRIPLET_H, 1e-5, &mut got).unwrap();
        check(gpu, &down(gpu, &got), &want, tol::F32_REDUCTION, &format!("triplet stats {layout:?}"));

        let parts = triplet_parts(layout, TRIPLET_H, &mut rng);
        let (stats, v, c) = (triplet_stats(layout, &mut rng), inputs(&mut rng, TRIPLET_H, 1.0), inputs(&mut rng, TRIPLET_H, 1.0));
        let mut want = vec![0.0; layout.triplets() * TRIPLET_H];
        cpu::selection::triplet_assemble_forward([&parts[0], &parts[1], &parts[2]], &stats, &v, &c, layout, &mut want);
        let gparts = parts.each_ref().map(|p| up(gpu, p));
        let mut got = poisoned(gpu, want.len());
        cuda::selection::triplet_assemble_forward(gpu, gparts.each_ref(), &up(gpu, &stats), &up(gpu, &v), &up(gpu, &c), layout, &mut got)
            .unwrap();
        check(gpu, &down(gpu, &got), &want, tol::F32_REDUCTION, &format!("triplet assemble {layout:?}"));
    }
}

fn triplets_backward(gpu: &Gpu) {
    for layout in TRIPLET_LAYOUTS {
        let mut rng = TestRng::new(16);
        let stats = triplet_stats(layout, &mut rng);
        let dstats = inputs(&mut rng, stats.len(), 1.0);
        let (ds0, dq0) = (layout.part_rows().map(|r| inputs(&mut rng, r, 1.0)), layout.part_rows().map(|r| inputs(&mut rng, r, 1.0)));
        let (mut ds, mut dq) = (ds0.clone(), dq0.clone());
        {
            let [a, b, c] = &mut ds;
            let [d, e, f] = &mut dq;
            cpu::selection::triplet_stats_backward(&stats, &dstats, layout, 3 * TRIPLET_H, [a, b, c], [d, e, f]);
        }
        let (mut gds, mut gdq) = (ds0.each_ref().map(|x| up(gpu, x)), dq0.each_ref().map(|x| up(gpu, x)));
        cuda::selection::triplet_stats_backward(
            gpu,
            &up(gpu, &stats),
            &up(gpu, &dstats),
            layout,
            3 * TRIPLET_H,
            gds.each_mut(),
            gdq.each_mut(),
        )
        .unwrap();
        for p in 0..3 {
            check(gpu, &down(gpu, &gds[p]), &ds[p], tol::F32_REDUCTION, &format!("triplet stats dsums[{p}] {layout:?}"));
            check(gpu, &down(gpu, &gdq[p]), &dq[p], tol::F32_REDUCTION, &format!("triplet stats dsquares[{p}] {layout:?}"));
        }

        let parts = triplet_parts(layout, TRIPLET_H, &mut rng);
        let v = inputs(&mut rng, TRIPLET_H, 1.0);
        let dout = inputs(&mut rng, layout.triplets() * TRIPLET_H, 1.0);
        let dp0 = triplet_parts(layout, TRIPLET_H, &mut rng);
        let (dst0, dv0, dc0) = (inputs(&mut rng, stats.len(), 1.0), inputs(&mut rng, TRIPLET_H, 1.0), inputs(&mut rng, TRIPLET_H, 1.0));
        let (mut dp, mut dst, mut dv, mut dc) = (dp0.clone(), dst0.clone(), dv0.clone(), dc0.clone());
        {
            let [a, b, c] = &mut dp;
            cpu::selection::triplet_assemble_backward(
                [&parts[0], &parts[1], &parts[2]],
                &stats,
                &v,
                &dout,
                layout,
                [a, b, c],
                &mut dst,
                &mut dv,
                &mut dc,
            );
        }
        let gparts = parts.each_ref().map(|p| up(gpu, p));
        let mut gdp = dp0.each_ref().map(|p| up(gpu, p));
        let (mut gdst, mut gdv, mut gdc) = (up(gpu, &dst0), up(gpu, &dv0), up(gpu, &dc0));
        let (gstats, gv, gdout) = (up(gpu, &stats), up(gpu, &v), up(gpu, &dout));
        cuda::selection::triplet_assemble_backward(
            gpu,
            gparts.each_ref(),
            &gstats,
            &gv,
            &gdout,
            layout,
            gdp.each_mut(),
            &mut gdst,
            &mut gdv,
            &mut gdc,
        )
        .unwrap();
        for p in 0..3 {
            check(gpu, &down(gpu, &gdp[p]), &dp[p], tol::F32_REDUCTION, &format!("triplet assemble dparts[{p}] {layout:?}"));
        }
        check(gpu, &down(gpu, &gdst), &dst, tol::F32_REDUCTION, &format!("triplet assemble dstats {layout:?}"));
        check(gpu, &down(gpu, &gdv), &dv, tol::F32_REDUCTION, &format!("triplet assemble dv {layout:?}"));
        check(gpu, &down(gpu, &gdc), &dc, tol::F32_REDUCTION, &format!("triplet assemble dc {layout:?}"));
    }
}

// ---- tensor (the tape's glue) ----------------------------------------------------------------

/// (rows, cols): several blocks of 256 elements and more than one 1,024-thread reduction pass, and
/// a shape narrower than a warp's row.
const TENSOR_SHAPES: [(usize, usize); 2] = [(300, 70), (13, 5)];
/// Rows of the gather table: fewer than the gathered rows, so indices repeat.
const TABLE_ROWS: usize = 11;

fn gather_index(rows: usize) -> Vec<usize> {
    (0..rows).map(|r| (r * 7 + 3) % TABLE_ROWS).collect()
}
fn up_index(gpu: &Gpu, index: &[usize]) -> Buffer<i32> {
    gpu.upload(&index.iter().map(|&i| i as i32).collect::<Vec<_>>()).unwrap()
}

fn tensor_forward(gpu: &Gpu) {
    use cpu::tensor as c;
    use cuda::tensor as g;
    for (rows, cols) in TENSOR_SHAPES {
        let n = rows * cols;
        let mut rng = TestRng::new(20);
        let (a, b, col, row) =
            (inputs(&mut rng, n, 2.0), inputs(&mut rng, n, 1.0), inputs(&mut rng, cols, 1.0), inputs(&mut rng, rows, 1.0));
        let (ga, gb, gcol, grow) = (up(gpu, &a), up(gpu, &b), up(gpu, &col), up(gpu, &row));
        let what = |op: &str| format!("{op} {rows}x{cols}");
        let mut want = vec![0.0; n];

        type Binary = (
            &'static str,
            fn(&[f64], &[f64], &mut [f64]),
            fn(&Gpu, &Buffer<f32>, &Buffer<f32>, &mut Buffer<f32>) -> ptrag_engine::Result<()>,
        );
        let per_element: [Binary; 2] = [("add", c::add, g::add), ("mul", c::mul, g::mul)];
        let broadcasts: [(Binary, &[f64], &Buffer<f32>); 3] = [
            (("add_bias", c::add_bias, g::add_bias), &col, &gcol),
            (("scale_rows", c::scale_rows, g::scale_rows), &row, &grow),
            (("scale_cols", c::scale_cols, g::scale_cols), &col, &gcol),
        ];
        for ((name, cpu_f, gpu_f), v, gv) in per_element.into_iter().map(|f| (f, &b[..], &gb)).chain(broadcasts) {
            cpu_f(&a, v, &mut want);
            let mut out = poisoned(gpu, n);
            gpu_f(gpu, &ga, gv, &mut out).unwrap();
            check(gpu, &down(gpu, &out), &want, tol::F32_ELEMENTWISE, &what(name));
        }
        c::scale(&a, -0.75, &mut want);
        let mut out = poisoned(gpu, n);
        g::scale(gpu, &ga, -0.75, &mut out).unwrap();
        check(gpu, &down(gpu, &out), &want, tol::F32_ELEMENTWISE, &what("scale"));

        for b_used in [None, Some((&b, &gb))] {
            let mut want = vec![0.0; cols];
            c::column_dots(&a, b_used.map(|(b, _)| &b[..]), &mut want);
            let mut out = poisoned(gpu, cols);
            g::column_dots(gpu, &ga, b_used.map(|(_, gb)| gb), &mut out).unwrap();
            check(gpu, &down(gpu, &out), &want, tol::F32_REDUCTION, &what(&format!("column_dots (b: {})", b_used.is_some())));
        }
        let mut want = vec![0.0; rows];
        c::row_dots(&a, &b, &mut want);
        let mut out = poisoned(gpu, rows);
        g::row_dots(gpu, &ga, &gb, &mut out).unwrap();
        check(gpu, &down(gpu, &out), &want, tol::F32_REDUCTION, &what("row_dots"));

        let (table, index) = (inputs(&mut rng, TABLE_ROWS * cols, 1.0), gather_index(rows));
        let mut want = vec![0.0; n];
        c::gather_rows(&table, cols, &index, &mut want);
        let mut out = poisoned(gpu, n);
        g::gather_rows(gpu, &up(gpu, &table), cols, &up_index(gpu, &index), &mut out).unwrap();
        check(gpu, &down(gpu, &out), &want, tol::EXACT, &what("gather_rows"));
        // f16 bit patterns: random values plus signed zeros, the extreme subnormals and normals
        let special = [0x0000u16, 0x8000, 0x0001, 0x83ff, 0x0400, 0x7bff, 0xfbff, 0x3c00];
        let mut halves: Vec<u16> = table.iter().map(|&v| half::f16::from_f64(4.0 * v).to_bits()).collect();
        for (k, &h) in special.iter().enumerate().take(n) {
            halves[index[k / cols] * cols + k % cols] = h;
        }
        let mut want = vec![0.0f32; n];
        c::gather_rows_f16(&halves, cols, &index, &mut want);
        let mut out = poisoned(gpu, n);
        g::gather_rows_f16(gpu, &gpu.upload(&halves).unwrap(), cols, &up_index(gpu, &index), &mut out).unwrap();
        check(gpu, &down(gpu, &out), &f64s(&want), tol::EXACT, &what("gather_rows_f16"));

        // a slice of columns 2..2+w of a, copied into columns 1.. of a wider tensor over random values
        let (width, wide) = (cols.min(3), cols + 4);
        let dst0 = inputs(&mut rng, rows * wide, 1.0);
        for accumulate in [false, true] {
            let mut want = dst0.clone();
            c::copy_cols(&a, cols, cols - width, &mut want, wide, 1, width, accumulate);
            let mut out = up(gpu, &dst0);
            g::copy_cols(gpu, &ga, cols, cols - width, &mut out, wide, 1, width, accumulate).unwrap();
            check(gpu, &down(gpu, &out), &want, tol::F32_ELEMENTWISE, &what(&format!("copy_cols (accumulate: {accumulate})")));
        }

        let group = if rows % 3 == 0 { 3 } else { 1 };
        let mut want = vec![0.0; n / group];
        c::sum_groups_forward(&a, cols, group, &mut want);
        let mut out = poisoned(gpu, n / group);
        g::sum_groups_forward(gpu, &ga, cols, group, &mut out).unwrap();
        check(gpu, &down(gpu, &out), &want, tol::F32_REDUCTION, &what(&format!("sum_groups of {group}")));

        let mut want = vec![0.0];
        c::sum(&a, &mut want);
        let mut out = poisoned(gpu, 1);
        g::sum(gpu, &ga, &mut out).unwrap();
        check(gpu, &down(gpu, &out), &want, tol::F32_REDUCTION, &what("sum"));

        // a floor below the std (divided by the std) and above it (clamped)
        for floor in [1e-3, 10.0] {
            let (mut want, mut stats) = (vec![0.0; n], vec![0.0; 3]);
            c::std_scale_forward(&a, floor, &mut want, &mut stats);
            let (mut out, mut gstats) = (poisoned(gpu, n), poisoned(gpu, 3));
            g::std_scale_forward(gpu, &ga, floor, &mut out, &mut gstats).unwrap();
            check(gpu, &down(gpu, &out), &want, tol::F32_REDUCTION, &what(&format!("std_scale (floor {floor})")));
            check(gpu, &down(gpu, &gstats), &stats, tol::F32_REDUCTION, &what(&format!("std_scale stats (floor {floor})")));
        }
    }
}

fn tensor_backward(gpu: &Gpu) {
    use cpu::tensor as c;
    use cuda::tensor as g;
    for (rows, cols) in TENSOR_SHAPES {
        let n = rows * cols;
        let mut rng = TestRng::new(21);
        let (x, dy, dx0) = (inputs(&mut rng, n, 2.0), inputs(&mut rng, n, 1.0), inputs(&mut rng, n, 1.0));
        let (gx, gdy) = (up(gpu, &x), up(gpu, &dy));
        let what = |op: &str| format!("{op} {rows}x{cols}");

        let mut want = dx0.clone();
        c::accumulate(&dy, &mut want);
        let mut dx = up(gpu, &dx0);
        g::accumulate(gpu, &gdy, &mut dx).unwrap();
        check(gpu, &down(gpu, &dx), &want, tol::F32_ELEMENTWISE, &what("accumulate"));

        let (index, table0) = (gather_index(rows), inputs(&mut rng, TABLE_ROWS * cols, 1.0));
        let mut want = table0.clone();
        c::scatter_add_rows(&dy, cols, &index, &mut want);
        let mut dtable = up(gpu, &table0);
        g::scatter_add_rows(gpu, &gdy, cols, &up_index(gpu, &index), &mut dtable).unwrap();
        check(gpu, &down(gpu, &dtable), &want, tol::F32_ELEMENTWISE, &what("scatter_add_rows"));

        let group = if rows % 3 == 0 { 3 } else { 1 };
        let dgroups = inputs(&mut rng, n / group, 1.0);
        let mut want = dx0.clone();
        c::sum_groups_backward(&dgroups, cols, group, &mut want);
        let mut dx = up(gpu, &dx0);
        g::sum_groups_backward(gpu, &up(gpu, &dgroups), cols, group, &mut dx).unwrap();
        check(gpu, &down(gpu, &dx), &want, tol::F32_ELEMENTWISE, &what(&format!("sum_groups backward of {group}")));

        let mut want = dx0.clone();
        c::sum_backward(&[0.625], &mut want);
        let mut dx = up(gpu, &dx0);
        g::sum_backward(gpu, &up(gpu, &[0.625]), &mut dx).unwrap();
        check(gpu, &down(gpu, &dx), &want, tol::F32_ELEMENTWISE, &what("sum backward"));

        for floor in [1e-3, 10.0] {
            let (mut y, mut stats) = (vec![0.0; n], vec![0.0; 3]);
            c::std_scale_forward(&x, floor, &mut y, &mut stats);
            let stats = f64s(&f32s(&stats));
            let mut want = dx0.clone();
            c::std_scale_backward(&x, &stats, &dy, &mut want);
            let mut dx = up(gpu, &dx0);
            g::std_scale_backward(gpu, &gx, &up(gpu, &stats), &gdy, &mut dx).unwrap();
            check(gpu, &down(gpu, &dx), &want, tol::F32_REDUCTION, &what(&format!("std_scale backward (floor {floor})")));
        }
    }
}
