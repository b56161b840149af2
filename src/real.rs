//! `Real`: the element type of the CPU reference backend. Training runs in f32; the gradient tests
//! instantiate the same kernels in f64 so that central finite differences are accurate.

use std::fmt::Debug;

pub trait Real: num_traits::Float + num_traits::FromPrimitive + Default + Debug + Send + Sync + std::iter::Sum + 'static {
    fn f(x: f64) -> Self {
        <Self as num_traits::FromPrimitive>::from_f64(x).unwrap_or_else(Self::nan)
    }
    /// The Gauss error function (exact GELU needs it; std has none).
    fn erf(self) -> Self;
    fn from_f32_slice(v: &[f32]) -> Vec<Self>;
}

impl Real for f32 {
    fn erf(self) -> Self {
        libm::erff(self)
    }
    fn from_f32_slice(v: &[f32]) -> Vec<Self> {
        v.to_vec()
    }
}

impl Real for f64 {
    fn erf(self) -> Self {
        libm::erf(self)
    }
    fn from_f32_slice(v: &[f32]) -> Vec<Self> {
        v.iter().map(|&x| x as f64).collect()
    }
}
