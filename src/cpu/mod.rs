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

/// Whether this CPU has AVX-512F, for the kernels with an AVX-512 path (`gemm`, `elementwise`).
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
