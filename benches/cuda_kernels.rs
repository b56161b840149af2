//! criterion benchmarks of the CUDA kernel families at the paper's shapes (group `cuda/<family>`,
//! the twins of `benches/cpu_kernels.rs`). Each iteration launches and waits for the GPU. Without
//! a usable GPU the reason is printed and nothing is measured (never an estimate).
//! Throughput: FLOPs as criterion's elements/s, or bytes moved where the kernel is memory-bound.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ptrag_engine::cpu::{attention::AttentionShape, energy::EnergyShape};
use ptrag_engine::cuda::{self, Buffer, Gpu};

fn filled(gpu: &Gpu, n: usize, seed: u32) -> Buffer<f32> {
    let data: Vec<f32> = (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2000) as f32 / 1000.0 - 1.0).collect();
    gpu.upload(&data).expect("upload")
}

fn benches(c: &mut Criterion) {
    let gpu = match Gpu::cuda() {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("cuda benchmarks skipped: {e}");
            return;
        }
    };
    let sync = |r: ptrag_engine::Result<()>| {
        r.expect("kernel");
        gpu.synchronize().expect("synchronize");
    };

    // Stage one: 64 queries (one per set) over the paper's 2,009 x 1,536 GenePT table, top-32.
    let (rows, dim, queries, k) = (2009, 1536, 64, 32);
    let (db, q) = (filled(&gpu, rows * dim, 1), filled(&gpu, queries * dim, 2));
    let allowed = gpu.upload(&vec![1u8; rows]).unwrap();
    let exclude = gpu.upload(&(0..queries as i32).collect::<Vec<_>>()).unwrap();
    let (mut idx, mut sims) = (gpu.zeros::<u32>(queries * k).unwrap(), gpu.zeros::<f32>(queries * k).unwrap());
    let mut g = c.benchmark_group("cuda/retrieval");
    g.throughput(Throughput::Elements((2 * queries * rows * dim) as u64));
    g.bench_function("topk_64q_2009x1536_k32", |b| {
        b.iter(|| sync(cuda::retrieval::cosine_topk(&gpu, &q, &db, dim, &allowed, &exclude, k, &mut idx, &mut sims)))
    });
    g.finish();

    let shape = AttentionShape::within_sets(64, 64, 12, 58, false);
    let len = 64 * 64 * 12 * 58;
    let (qa, ka, va) = (filled(&gpu, len, 3), filled(&gpu, len, 4), filled(&gpu, len, 5));
    let (mut out, mut lse) = (gpu.zeros::<f32>(len).unwrap(), gpu.zeros::<f32>(64 * 12 * 64).unwrap());
    let (dout, mut dq, mut dk, mut dv) = (filled(&gpu, len, 6), gpu.zeros(len).unwrap(), gpu.zeros(len).unwrap(), gpu.zeros(len).unwrap());
    let mut g = c.benchmark_group("cuda/attention");
    g.throughput(Throughput::Elements(4 * 64 * 12 * 64 * 64 * 58u64));
    g.bench_function("forward_64x64_12x58", |b| {
        b.iter(|| sync(cuda::attention::attention_forward(&gpu, &qa, &ka, &va, shape, &mut out, &mut lse)))
    });
    g.throughput(Throughput::Elements(10 * 64 * 12 * 64 * 64 * 58u64));
    g.bench_function("backward_64x64_12x58", |b| {
        b.iter(|| sync(cuda::attention::attention_backward(&gpu, &qa, &ka, &va, &out, &lse, &dout, shape, &mut dq, &mut dk, &mut dv)))
    });
    g.finish();

    let es = EnergyShape { sets: 64, cells_pred: 64, cells_obs: 64, genes: 2000 };
    let (x, y, mut e) = (filled(&gpu, 64 * 64 * 2000, 7), filled(&gpu, 64 * 64 * 2000, 8), gpu.zeros::<f32>(64).unwrap());
    let (de, mut dx) = (gpu.upload(&[1.0f32; 64]).unwrap(), gpu.zeros::<f32>(64 * 64 * 2000).unwrap());
    let mut g = c.benchmark_group("cuda/energy");
    g.throughput(Throughput::Elements(64 * 3 * 2 * 64 * 64 * 2000u64));
    g.bench_function("forward_64sets_64x64x2000", |b| b.iter(|| sync(cuda::energy::energy_forward(&gpu, &x, &y, es, &mut e))));
    g.bench_function("backward_64sets_64x64x2000", |b| b.iter(|| sync(cuda::energy::energy_backward(&gpu, &x, &y, es, &de, &mut dx))));
    g.finish();

    let (rows, cols) = (4096, 128);
    let (xn, w) = (filled(&gpu, rows * cols, 9), gpu.upload(&vec![1.0f32; cols]).unwrap());
    let (mut yn, mut r) = (gpu.zeros::<f32>(rows * cols).unwrap(), gpu.zeros::<f32>(rows).unwrap());
    let mut g = c.benchmark_group("cuda/norm");
    g.throughput(Throughput::Bytes((2 * rows * cols * 4) as u64));
    g.bench_function("rmsnorm_4096x128", |b| b.iter(|| sync(cuda::norm::rmsnorm_forward(&gpu, &xn, &w, 1e-6, &mut yn, &mut r))));
    g.finish();

    let n = 4096 * 2784;
    let (xe, mut ye) = (filled(&gpu, n, 10), gpu.zeros::<f32>(n).unwrap());
    let mut g = c.benchmark_group("cuda/elementwise");
    g.throughput(Throughput::Bytes((2 * n * 4) as u64));
    g.bench_function("silu_4096x2784", |b| b.iter(|| sync(cuda::elementwise::silu_forward(&gpu, &xe, &mut ye))));
    let (upe, mut oute) = (filled(&gpu, n, 13), gpu.zeros::<f32>(n).unwrap());
    g.throughput(Throughput::Bytes((3 * n * 4) as u64));
    g.bench_function("swiglu_4096x2784", |b| b.iter(|| sync(cuda::elementwise::swiglu_forward(&gpu, &xe, &upe, &mut oute))));
    g.finish();

    let n = 21_000_000;
    let (mut p, grad, mut m, mut v) =
        (filled(&gpu, n, 11), filled(&gpu, n, 12), gpu.zeros::<f32>(n).unwrap(), gpu.zeros::<f32>(n).unwrap());
    let mut g = c.benchmark_group("cuda/optim");
    g.throughput(Throughput::Bytes((7 * n * 4) as u64));
    let s = ptrag_engine::cpu::optim::AdamStep { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, step: 3 };
    let clip = gpu.upload(&[1.0f64, 1.0, 1.0]).unwrap();
    g.bench_function("adam_21M", |b| b.iter(|| sync(cuda::optim::adam_update(&gpu, &mut p, &grad, &mut m, &mut v, &s, &clip))));
    g.finish();

    let rows = 64 * 64 * 32;
    let (logits, noise) = (filled(&gpu, rows * 2, 13), filled(&gpu, rows * 2, 14));
    let (mut soft, mut hard) = (gpu.zeros::<f32>(rows * 2).unwrap(), gpu.zeros::<f32>(rows * 2).unwrap());
    let mut g = c.benchmark_group("cuda/selection");
    g.throughput(Throughput::Bytes((4 * rows * 2 * 4) as u64));
    g.bench_function("gumbel_st_131072x2", |b| {
        b.iter(|| sync(cuda::selection::gumbel_st_forward(&gpu, &logits, &noise, 1.0, 2, &mut soft, &mut hard)))
    });
    g.finish();
}

criterion_group! {
    name = cuda;
    config = Criterion::default().sample_size(20);
    targets = benches
}
criterion_main!(cuda);
