//! criterion benchmarks of the CPU kernel families at the paper's shapes (group `cpu/<family>`).
//! Throughput is in FLOPs (reported by criterion as elements/s = FLOP/s).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ptrag_engine::cpu::{attention, elementwise, energy, gemm, norm, retrieval, selection};

fn filled(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32 - 0.5).collect()
}

/// The step's products through each candidate, side by side: `engine` (ours: the AVX-512 kernel,
/// or with PTRAG_CPU=avx2 matrixmultiply's AVX2+FMA kernel on rayon blocks) and the `gemm` crate
/// called directly (its AVX2+FMA kernels on stable Rust), which the engine used before.
fn gemm_candidates(c: &mut Criterion, backward: &[(&str, usize, usize, usize, bool, bool)]) {
    let mut shapes = vec![("fwd_4096x128x2784_tb", 4096, 128, 2784, false, true)];
    shapes.extend_from_slice(backward);
    let mut g = c.benchmark_group("cpu/gemm-candidates");
    g.sample_size(10);
    for (name, m, k, n, ta, tb) in shapes {
        let (a, b, mut out) = (filled(m * k, 1), filled(k * n, 2), vec![0.0f32; m * n]);
        // strides of op(a) [m, k] and op(b) [k, n] inside the stored matrices
        let (a_rs, a_cs) = if ta { (1, m) } else { (k, 1) };
        let (b_rs, b_cs) = if tb { (1, k) } else { (n, 1) };
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        g.bench_function(format!("engine/{name}"), |bench| bench.iter(|| gemm::matmul(&a, &b, &mut out, m, k, n, ta, tb, false)));
        g.bench_function(format!("gemm-crate/{name}"), |bench| {
            // SAFETY: a, b and out hold m*k, k*n and m*n floats at these strides; out is a distinct borrow.
            bench.iter(|| unsafe {
                ::gemm::gemm(
                    m,
                    n,
                    k,
                    out.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    a_cs as isize,
                    a_rs as isize,
                    b.as_ptr(),
                    b_cs as isize,
                    b_rs as isize,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    ::gemm::Parallelism::Rayon(0),
                )
            })
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    // 64 sets x 64 cells = 4096 rows, hidden 128 -> SwiGLU 2784: the largest GEMM of a step.
    let (m, k, n) = (4096, 128, 2784);
    let (a, b, mut out) = (filled(m * k, 1), filled(n * k, 2), vec![0.0f32; m * n]);
    let mut g = c.benchmark_group("cpu/gemm");
    g.throughput(Throughput::Elements((2 * m * k * n) as u64));
    g.bench_function("4096x128x2784", |bench| bench.iter(|| gemm::matmul(&a, &b, &mut out, m, k, n, false, true, false)));
    g.finish();
    // The same layer's backward products, and PT-RAG's selector (4096 cells x 32 candidates, 384 -> 128):
    // (name, m, k, n, trans_a, trans_b) as the tape's matmul backward calls them.
    let shapes = [
        ("dx_4096x2784x128", 4096, 2784, 128, false, false),
        ("dw_2784x4096x128_ta", 2784, 4096, 128, true, false),
        ("selector_131072x384x128", 131072, 384, 128, false, true),
        ("selector_dw_128x131072x384_ta", 128, 131072, 384, true, false),
    ];
    let mut g = c.benchmark_group("cpu/gemm");
    g.sample_size(10);
    for (name, m, k, n, ta, tb) in shapes {
        let (a, b, mut out) = (filled(m * k, 1), filled(k * n, 2), vec![0.0f32; m * n]);
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        g.bench_function(name, |bench| bench.iter(|| gemm::matmul(&a, &b, &mut out, m, k, n, ta, tb, false)));
    }
    g.finish();

    gemm_candidates(c, &shapes);

    let shape = attention::AttentionShape::within_sets(64, 64, 12, 58, false);
    let len = 64 * 64 * 12 * 58;
    let (q, kk, v) = (filled(len, 3), filled(len, 4), filled(len, 5));
    let (mut o, mut lse) = (vec![0.0f32; len], vec![0.0f32; 64 * 12 * 64]);
    let mut g = c.benchmark_group("cpu/attention");
    g.throughput(Throughput::Elements(4 * 64 * 12 * 64 * 64 * 58u64));
    g.bench_function("forward_64x64_12x58", |bench| bench.iter(|| attention::attention_forward(&q, &kk, &v, shape, &mut o, &mut lse)));
    g.finish();

    let es = energy::EnergyShape { sets: 64, cells_pred: 64, cells_obs: 64, genes: 2000 };
    let (x, y, mut e) = (filled(64 * 64 * 2000, 6), filled(64 * 64 * 2000, 7), vec![0.0f32; 64]);
    let mut g = c.benchmark_group("cpu/energy");
    g.throughput(Throughput::Elements(64 * 3 * 2 * 64 * 64 * 2000u64));
    g.bench_function("forward_64sets_64x64x2000", |bench| bench.iter(|| energy::energy_forward(&x, &y, es, &mut e)));
    g.finish();

    // Stage one: 64 queries (one per set) over the paper's 2,009 x 1,536 GenePT table, top-32.
    let (rows, dim, queries, k) = (2009, 1536, 64, 32);
    let (db, q) = (filled(rows * dim, 11), filled(queries * dim, 12));
    let allowed = vec![true; rows];
    let exclude: Vec<Option<usize>> = (0..queries).map(Some).collect();
    let (mut idx, mut sims) = (vec![0u32; queries * k], vec![0.0f32; queries * k]);
    let mut g = c.benchmark_group("cpu/retrieval");
    g.throughput(Throughput::Elements((2 * queries * rows * dim) as u64));
    g.bench_function("topk_64q_2009x1536_k32", |bench| {
        bench.iter(|| retrieval::cosine_topk(&q, &db, dim, &allowed, &exclude, k, &mut idx, &mut sims))
    });
    g.finish();

    let rows = 64 * 64 * 32;
    let (logits, noise) = (filled(rows * 2, 13), filled(rows * 2, 14));
    let (mut soft, mut hard) = (vec![0.0f32; rows * 2], vec![0.0f32; rows * 2]);
    let mut g = c.benchmark_group("cpu/selection");
    g.throughput(Throughput::Bytes((4 * rows * 2 * 4) as u64));
    g.bench_function("gumbel_st_131072x2", |bench| {
        bench.iter(|| selection::gumbel_st_forward(&logits, &noise, 1.0, 2, &mut soft, &mut hard))
    });
    g.finish();

    // The backbone's SwiGLU gate (8 layers of 4096 x 2784) and PT-RAG's scorer GELU (131072 x 128).
    let n = 4096 * 2784;
    let (x, dy) = (filled(n, 15), filled(n, 16));
    let (mut y, mut dx) = (vec![0.0f32; n], vec![0.0f32; n]);
    let mut g = c.benchmark_group("cpu/elementwise");
    g.throughput(Throughput::Bytes((2 * n * 4) as u64));
    g.bench_function("silu_4096x2784", |bench| bench.iter(|| elementwise::silu_forward(&x, &mut y)));
    g.bench_function("gelu_4096x2784", |bench| bench.iter(|| elementwise::gelu_forward(&x, &mut y)));
    g.throughput(Throughput::Bytes((3 * n * 4) as u64));
    g.bench_function("silu_backward_4096x2784", |bench| bench.iter(|| elementwise::silu_backward(&x, &dy, &mut dx)));
    g.bench_function("gelu_backward_4096x2784", |bench| bench.iter(|| elementwise::gelu_backward(&x, &dy, &mut dx)));
    g.bench_function("swiglu_4096x2784", |bench| bench.iter(|| elementwise::swiglu_forward(&x, &dy, &mut y)));
    g.throughput(Throughput::Bytes((5 * n * 4) as u64));
    let mut dup = vec![0.0f32; n];
    g.bench_function("swiglu_backward_4096x2784", |bench| bench.iter(|| elementwise::swiglu_backward(&x, &y, &dy, &mut dx, &mut dup)));
    g.finish();

    let (rows, cols) = (4096, 128);
    let (x, w) = (filled(rows * cols, 8), vec![1.0f32; cols]);
    let (mut y, mut r) = (vec![0.0f32; rows * cols], vec![0.0f32; rows]);
    let mut g = c.benchmark_group("cpu/norm");
    g.throughput(Throughput::Bytes((2 * rows * cols * 4) as u64));
    g.bench_function("rmsnorm_4096x128", |bench| bench.iter(|| norm::rmsnorm_forward(&x, &w, 1e-6, &mut y, &mut r)));
    g.finish();
}

criterion_group! {
    name = cpu;
    config = Criterion::default().sample_size(10);
    targets = benches
}
criterion_main!(cpu);
