//! The CPU reference backend: one module per kernel family, each the twin of `kernels/<family>.cu`
//! (and of `src/cuda/<family>.rs` once the CUDA backend lands). The tape calls only these functions,
//! so a backend is exactly this set of kernels.
//!
//! Conventions for every kernel here:
//! - tensors are flat row-major slices; the shape is in the doc comment and the length is checked;
//! - forward kernels overwrite their outputs;
//! - backward kernels ACCUMULATE (`+=`) into input gradients, so an input used twice receives the
//!   sum of both contributions and parameter gradients build up until they are zeroed.

pub mod attention;
pub mod elementwise;
pub mod energy;
pub mod gemm;
pub mod norm;
pub mod optim;
pub mod retrieval;
pub mod selection;
pub mod tensor;

/// A vector of `n` zeros, written by all threads: the tape allocates its largest buffers (activations
/// and gradients of up to 45 MB) this way, and filling them on one thread while the others waited
/// took about a tenth of a training step.
pub fn zeros<T: crate::scalar::Scalar>(n: usize) -> Vec<T> {
    use rayon::prelude::*;
    if n < 1 << 16 {
        return vec![T::zero(); n];
    }
    let mut v = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n].par_chunks_mut(1 << 15).for_each(|chunk| {
        chunk.iter_mut().for_each(|x| {
            x.write(T::zero());
        })
    });
    // SAFETY: the capacity is at least n and the first n elements were all written just above.
    unsafe { v.set_len(n) };
    v
}

/// `vectorised!(fn name<T>(args...) => body);` defines `name`, which calls `body(args...)` compiled
/// for AVX-512 where the CPU has it, else for AVX2 where it has that (the crate's baseline target is
/// SSE2), so its loops, with the branch-free f32 `exp_activation` and `erf`, vectorise 16 or 8
/// wide; same operations either way (Rust never fuses a multiply and an add by itself), so the same
/// results. `body` must be `#[inline(always)]`: called by name from the `target_feature`
/// function it is then compiled inside it. (A closure handed to such a function is inlined only when
/// LLVM chooses to; large ones, GELU's backward loop among them, were not, and ran at SSE2 speed.)
macro_rules! vectorised {
    ($(#[$meta:meta])* $vis:vis fn $name:ident<$t:ident>($($arg:ident: $ty:ty),* $(,)?) => $body:ident) => {
        $(#[$meta])*
        $vis fn $name<$t: crate::scalar::Scalar>($($arg: $ty),*) {
            crate::cpu::vectorised!(@on "avx512f", has_avx512, $t, $body, $($arg: $ty),*);
            crate::cpu::vectorised!(@on "avx2,fma", has_avx2_fma, $t, $body, $($arg: $ty),*);
            $body($($arg),*)
        }
    };
    // `body` compiled with `feature` and returned from the caller, when `has()` says the CPU has it
    (@on $feature:literal, $has:ident, $t:ident, $body:ident, $($arg:ident: $ty:ty),*) => {
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::$has() {
            #[target_feature(enable = $feature)]
            fn wide<$t: crate::scalar::Scalar>($($arg: $ty),*) {
                $body($($arg),*)
            }
            // SAFETY: `$has()` checked that the CPU has the features `wide` is compiled for.
            return unsafe { wide($($arg),*) };
        }
    };
}
pub(crate) use vectorised;

/// Counter-based random draws: draw `i` of the stream `key` is SplitMix64's finaliser of
/// `key + i * golden`, a pure function of `(key, i)`, so every engine (the CUDA twin is
/// `counter_draw` in kernels/common.cuh) and every split over threads computes the same values,
/// with no generator state and nothing stored or uploaded. Used for PT-RAG's dropout and Gumbel noise.
#[inline(always)]
pub fn counter_draw(key: u64, i: u64) -> u64 {
    mix64(key.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
}

/// SplitMix64's finaliser (a bijection of u64 with good avalanche).
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The environment variable that forces a narrower CPU path: `PTRAG_CPU=avx2` runs as on a CPU
/// without AVX-512 (tests and benchmarks of that path on an AVX-512 machine).
pub const CPU_PATH_VAR: &str = "PTRAG_CPU";

/// Whether the AVX-512 kernels run (`gemm`, `elementwise`): the CPU has AVX-512F and `PTRAG_CPU`
/// does not say `avx2`. Read once per process.
pub fn has_avx512() -> bool {
    static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX512.get_or_init(|| {
        let forced_off = std::env::var(CPU_PATH_VAR).is_ok_and(|v| v.eq_ignore_ascii_case("avx2"));
        !forced_off && cpu_has("avx512f")
    })
}

/// Whether the CPU has AVX2 and FMA (matrixmultiply's fast kernel; `gemm`'s FMA path).
pub fn has_avx2_fma() -> bool {
    cpu_has("avx2") && cpu_has("fma")
}

fn cpu_has(feature: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match feature {
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            "avx2" => std::arch::is_x86_feature_detected!("avx2"),
            "fma" => std::arch::is_x86_feature_detected!("fma"),
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = feature;
        false
    }
}

/// The CPU path the kernels take, as `bench` and `info` report it.
pub fn cpu_path() -> &'static str {
    match (has_avx512(), cpu_has("avx512f"), cpu_has("avx2") && cpu_has("fma")) {
        (true, _, _) => "avx512 (own GEMM micro-kernel)",
        (false, true, _) => "avx2+fma, forced by PTRAG_CPU=avx2 (matrixmultiply GEMM kernel)",
        (false, false, true) => "avx2+fma (matrixmultiply GEMM kernel)",
        _ => "no AVX2 (gemm crate, scalar/SSE)",
    }
}
