//! Parameter helpers shared by the models: `nn.Linear` layout and the initialisations we use.

use crate::scalar::Scalar;
use crate::tape::{ParamId, Params, Tape, Var};
use rand::Rng;
use rand_distr::{Distribution, Normal};

/// PyTorch's `nn.Linear` default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
pub fn uniform_fan_in(rng: &mut impl Rng, n: usize, fan_in: usize) -> Vec<f32> {
    let b = 1.0 / (fan_in as f32).sqrt();
    (0..n).map(|_| rng.gen_range(-b..b)).collect()
}

pub fn normal(rng: &mut impl Rng, n: usize, sd: f32) -> Vec<f32> {
    let d = Normal::new(0.0, sd).expect("finite sd");
    (0..n).map(|_| d.sample(rng)).collect()
}

/// `y = x W^T (+ b)` with `W: [out, in]`, PyTorch's layout and names (`<name>.weight`, `<name>.bias`).
#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub weight: ParamId,
    pub bias: Option<ParamId>,
}

impl Linear {
    /// `nn.Linear(inp, out, bias)` with PyTorch's default initialisation.
    pub fn new<T: Scalar>(params: &mut Params<T>, rng: &mut impl Rng, name: &str, inp: usize, out: usize, bias: bool) -> Self {
        let weight = params.add(&format!("{name}.weight"), &[out, inp], T::from_f32_slice(&uniform_fan_in(rng, out * inp, inp)));
        let bias = bias.then(|| params.add(&format!("{name}.bias"), &[out], T::from_f32_slice(&uniform_fan_in(rng, out, inp))));
        Linear { weight, bias }
    }
    /// A bias-free linear map with N(0, sd) weights (Llama's initialisation).
    pub fn normal<T: Scalar>(params: &mut Params<T>, rng: &mut impl Rng, name: &str, inp: usize, out: usize, sd: f32) -> Self {
        let weight = params.add(&format!("{name}.weight"), &[out, inp], T::from_f32_slice(&normal(rng, out * inp, sd)));
        Linear { weight, bias: None }
    }
    pub fn apply<T: Scalar>(&self, tape: &mut Tape<T>, params: &Params<T>, x: Var) -> Var {
        let w = tape.param(params, self.weight);
        let b = self.bias.map(|b| tape.param(params, b));
        tape.linear(x, w, b)
    }
}

/// LayerNorm / RMSNorm scale (and shift) parameters, initialised to 1 (and 0).
pub fn norm_scale<T: Scalar>(params: &mut Params<T>, name: &str, width: usize) -> ParamId {
    params.add(name, &[width], vec![T::one(); width])
}
pub fn norm_shift<T: Scalar>(params: &mut Params<T>, name: &str, width: usize) -> ParamId {
    params.add(name, &[width], vec![T::zero(); width])
}
