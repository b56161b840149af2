//! STATE (Arc Institute's state-transition model), as the paper trains it:
//!   basal  = Linear(G -> H)(control cell)
//!   x      = basal + PertEncoder(perturbation) + BatchEmbedding(gem group)
//!   x      = Llama backbone over the cells of each set (pre-norm RMSNorm, multi-head attention
//!            without positions, SwiGLU MLP, no biases, final RMSNorm)
//!   pred   = ReLU(Linear(H -> G)(x + basal))
//! The one-hot perturbation encoder Linear(P -> H) is stored as its transposed weight, a `[P, H]`
//! table, so that encoding is a row lookup (identical result, identical parameter count).

use super::{ModelConfig, ModelInput};
use crate::cpu::attention::AttentionShape;
use crate::real::Real;
use crate::tape::{ParamId, Params, Tape, Var};
use rand::Rng;
use rand_distr::{Distribution, Normal};

struct Layer {
    attn_norm: ParamId,
    q: ParamId,
    k: ParamId,
    v: ParamId,
    o: ParamId,
    mlp_norm: ParamId,
    gate: ParamId,
    up: ParamId,
    down: ParamId,
}

pub struct StateModel {
    pub cfg: ModelConfig,
    basal_w: ParamId,
    basal_b: ParamId,
    pert_table: ParamId,
    pert_b: ParamId,
    batch_table: ParamId,
    layers: Vec<Layer>,
    final_norm: ParamId,
    head_w: ParamId,
    head_b: ParamId,
}

/// PyTorch's `nn.Linear` default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
fn uniform_fan_in(rng: &mut impl Rng, n: usize, fan_in: usize) -> Vec<f32> {
    let b = 1.0 / (fan_in as f32).sqrt();
    (0..n).map(|_| rng.gen_range(-b..b)).collect()
}
fn normal(rng: &mut impl Rng, n: usize, sd: f32) -> Vec<f32> {
    let d = Normal::new(0.0, sd).expect("finite sd");
    (0..n).map(|_| d.sample(rng)).collect()
}

impl StateModel {
    /// Registers the parameters (initialised from `rng`) and returns the model.
    pub fn new<T: Real>(cfg: &ModelConfig, params: &mut Params<T>, rng: &mut impl Rng) -> Self {
        let (g, h, p) = (cfg.genes, cfg.hidden, cfg.perturbations);
        let width = cfg.heads * cfg.head_dim;
        let mut add = |name: &str, shape: &[usize], v: Vec<f32>| params.add(name, shape, T::from_f32_slice(&v));
        let basal_w = add("basal.weight", &[h, g], uniform_fan_in(rng, h * g, g));
        let basal_b = add("basal.bias", &[h], uniform_fan_in(rng, h, g));
        // One-hot Linear(P -> H) is an embedding lookup; by default it is initialised like one
        // (N(0, 1), as `nn.Embedding`): every perturbation starts with a distinct code of the same
        // scale as the basal and batch terms, so the shared backbone can tell them apart from step 0.
        // `reference_init` keeps `nn.Linear`'s U(+-1/sqrt(P)), whose codes are ~sqrt(P) times smaller
        // and need tens of thousands of steps to grow (the paper's schedule).
        let pert_init = if cfg.reference_init { uniform_fan_in(rng, p * h, p) } else { normal(rng, p * h, 1.0) };
        let pert_table = add("pert.weight_t", &[p, h], pert_init);
        let pert_b = add("pert.bias", &[h], uniform_fan_in(rng, h, p));
        let batch_table = add("batch.weight", &[cfg.batches, h], normal(rng, cfg.batches * h, 1.0));
        // The backbone follows the Llama initialisation: N(0, 0.02) weights, unit norm scales.
        let layers = (0..cfg.layers)
            .map(|l| {
                let mut lin =
                    |name: &str, out: usize, inp: usize| add(&format!("layers.{l}.{name}"), &[out, inp], normal(rng, out * inp, 0.02));
                let (q, k, v, o) = (lin("q", width, h), lin("k", width, h), lin("v", width, h), lin("o", h, width));
                let (gate, up, down) = (lin("gate", cfg.mlp, h), lin("up", cfg.mlp, h), lin("down", h, cfg.mlp));
                let attn_norm = add(&format!("layers.{l}.attn_norm"), &[h], vec![1.0; h]);
                let mlp_norm = add(&format!("layers.{l}.mlp_norm"), &[h], vec![1.0; h]);
                Layer { attn_norm, q, k, v, o, mlp_norm, gate, up, down }
            })
            .collect();
        let final_norm = add("final_norm", &[h], vec![1.0; h]);
        let head_w = add("head.weight", &[g, h], uniform_fan_in(rng, g * h, h));
        let head_b = add("head.bias", &[g], uniform_fan_in(rng, g, h));
        StateModel { cfg: cfg.clone(), basal_w, basal_b, pert_table, pert_b, batch_table, layers, final_norm, head_w, head_b }
    }

    /// Sets the output bias to `mean` (typically the training cells' mean expression), so that a
    /// short run starts from the population mean instead of spending its first steps learning it.
    pub fn set_output_bias<T: Real>(&self, params: &mut Params<T>, mean: &[f32]) {
        let bias = &mut params.entries[self.head_b.0];
        assert_eq!(bias.value.len(), mean.len(), "output bias length");
        bias.value = std::sync::Arc::new(T::from_f32_slice(mean));
    }

    /// The backbone: `x: [sets * cells, H]` -> `[sets * cells, H]`.
    pub fn backbone<T: Real>(&self, tape: &mut Tape<T>, params: &Params<T>, mut x: Var, sets: usize, cells: usize) -> Var {
        let c = &self.cfg;
        let shape = AttentionShape { sets, cells, heads: c.heads, head_dim: c.head_dim, causal: c.causal };
        for layer in &self.layers {
            let p = |tape: &mut Tape<T>, id| tape.param(params, id);
            let norm_w = p(tape, layer.attn_norm);
            let y = tape.rmsnorm(x, norm_w, c.rms_eps);
            let (wq, wk, wv, wo) = (p(tape, layer.q), p(tape, layer.k), p(tape, layer.v), p(tape, layer.o));
            let (q, k, v) = (tape.linear(y, wq, None), tape.linear(y, wk, None), tape.linear(y, wv, None));
            let attended = tape.attention(q, k, v, shape);
            let mixed = tape.linear(attended, wo, None);
            x = tape.add(x, mixed);
            let norm_w = p(tape, layer.mlp_norm);
            let y = tape.rmsnorm(x, norm_w, c.rms_eps);
            let (wg, wu, wd) = (p(tape, layer.gate), p(tape, layer.up), p(tape, layer.down));
            let gate = tape.linear(y, wg, None);
            let gate = tape.silu(gate);
            let up = tape.linear(y, wu, None);
            let inner = tape.mul(gate, up);
            let out = tape.linear(inner, wd, None);
            x = tape.add(x, out);
        }
        let w = tape.param(params, self.final_norm);
        tape.rmsnorm(x, w, c.rms_eps)
    }

    /// Predicted expression `[sets * cells, genes]`.
    pub fn forward<T: Real>(&self, tape: &mut Tape<T>, params: &Params<T>, input: &ModelInput) -> Var {
        let (n, g) = (input.sets * input.cells, self.cfg.genes);
        assert_eq!(input.control.len(), n * g, "control cells: expected {n} x {g} values");
        let control = tape.constant(&[n, g], T::from_f32_slice(input.control));
        let (bw, bb) = (tape.param(params, self.basal_w), tape.param(params, self.basal_b));
        let basal = tape.linear(control, bw, Some(bb));

        let table = tape.param(params, self.pert_table);
        let per_set: Vec<usize> = input.perturbation.iter().map(|&p| p as usize).collect();
        let pert = tape.gather(table, &per_set);
        let pb = tape.param(params, self.pert_b);
        let pert = tape.add_bias(pert, pb);
        let set_of_cell: Vec<usize> = (0..n).map(|i| i / input.cells).collect();
        let pert = tape.gather(pert, &set_of_cell);

        let batch_table = tape.param(params, self.batch_table);
        let batch_ids: Vec<usize> = input.batch.iter().map(|&b| b as usize).collect();
        let batch = tape.gather(batch_table, &batch_ids);

        let x = tape.add(basal, pert);
        let x = tape.add(x, batch);
        let x = self.backbone(tape, params, x, input.sets, input.cells);
        let x = tape.add(x, basal);
        let (hw, hb) = (tape.param(params, self.head_w), tape.param(params, self.head_b));
        let out = tape.linear(x, hw, Some(hb));
        tape.relu(out)
    }
}
