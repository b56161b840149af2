//! `Scalar`: the number type of the CPU reference backend. Training runs in f32; the gradient tests
//! instantiate the same kernels in f64 so that central finite differences are accurate.

use std::fmt::Debug;

pub trait Scalar: num_traits::Float + num_traits::FromPrimitive + Default + Debug + Send + Sync + std::iter::Sum + 'static {
    fn f(x: f64) -> Self {
        <Self as num_traits::FromPrimitive>::from_f64(x).unwrap_or_else(Self::nan)
    }
    /// The Gauss error function (exact GELU needs it; std has none). f64: libm's; f32: a
    /// branch-free approximation (absolute error below 2e-7) that the compiler vectorises.
    fn erf(self) -> Self;
    /// `exp` for the activations. f64: libm's; f32: branch-free (relative error below 3e-7) so the
    /// activation loops vectorise instead of calling libm per element.
    fn exp_activation(self) -> Self;
    fn from_f32_slice(v: &[f32]) -> Vec<Self>;
}

impl Scalar for f32 {
    #[inline(always)]
    fn erf(self) -> Self {
        // Abramowitz and Stegun 7.1.26 (absolute error 1.5e-7).
        let ax = self.abs();
        let t = 1.0 / (1.0 + 0.327_591_1 * ax);
        let poly = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_8) * t - 0.284_496_74) * t + 0.254_829_6) * t;
        (1.0 - poly * exp_f32(-ax * ax)).copysign(self)
    }
    #[inline(always)]
    fn exp_activation(self) -> Self {
        exp_f32(self)
    }
    fn from_f32_slice(v: &[f32]) -> Vec<Self> {
        v.to_vec()
    }
}

impl Scalar for f64 {
    fn erf(self) -> Self {
        libm::erf(self)
    }
    fn exp_activation(self) -> Self {
        self.exp()
    }
    fn from_f32_slice(v: &[f32]) -> Vec<Self> {
        v.iter().map(|&x| x as f64).collect()
    }
}

/// `exp(x)` for f32 without branches or calls: `x = n ln2 + r` with `|r| <= ln2 / 2`, Cephes' degree-6
/// polynomial for `e^r`, and `2^n` built from its bits. Inputs are clamped to [-87, 88] (below, the
/// result underflows towards 0 as the true one does; above, f32 overflows anyway).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer in the low bits
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let poly = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5) * r * r
        + r
        + 1.0;
    let exponent = (shifted.to_bits() as i32 - ROUND.to_bits() as i32 + 127) as u32;
    poly * f32::from_bits(exponent << 23)
}
