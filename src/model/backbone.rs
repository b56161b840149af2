//! The Llama backbone STATE runs over the cells of each set: pre-norm RMSNorm, multi-head attention,
//! SwiGLU MLP, no biases, final RMSNorm. Attention is bidirectional without positions by default (a
//! set has no order); the reference ran it causal with rotary positions over a randomly ordered set
//! (`causal` + `rope_theta`: the reference code's choices; docs/design.md, "Reference compatibility").

use super::layers::{norm_scale, Linear};
use super::ModelConfig;
use crate::cpu::attention::{AttentionShape, Rope};
use crate::scalar::Scalar;
use crate::tape::{ParamId, Params, Tape, Var};
use rand::Rng;

struct Layer {
    attn_norm: ParamId,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    mlp_norm: ParamId,
    gate: Linear,
    up: Linear,
    down: Linear,
}

pub struct Backbone {
    layers: Vec<Layer>,
    final_norm: ParamId,
}

impl Backbone {
    pub fn new<T: Scalar>(cfg: &ModelConfig, params: &mut Params<T>, rng: &mut impl Rng) -> Self {
        let (h, width) = (cfg.hidden, cfg.heads * cfg.head_dim);
        let layers = (0..cfg.layers)
            .map(|l| {
                let mut lin =
                    |name: &str, inp: usize, out: usize| Linear::normal(params, rng, &format!("layers.{l}.{name}"), inp, out, 0.02);
                let (q, k, v, o) = (lin("q", h, width), lin("k", h, width), lin("v", h, width), lin("o", width, h));
                let (gate, up, down) = (lin("gate", h, cfg.mlp), lin("up", h, cfg.mlp), lin("down", cfg.mlp, h));
                let attn_norm = norm_scale(params, &format!("layers.{l}.attn_norm"), h);
                let mlp_norm = norm_scale(params, &format!("layers.{l}.mlp_norm"), h);
                Layer { attn_norm, q, k, v, o, mlp_norm, gate, up, down }
            })
            .collect();
        let final_norm = norm_scale(params, "final_norm", h);
        Backbone { layers, final_norm }
    }

    /// `x: [sets * cells, H]` -> `[sets * cells, H]`.
    pub fn forward<T: Scalar>(
        &self,
        cfg: &ModelConfig,
        tape: &mut Tape<T>,
        params: &Params<T>,
        mut x: Var,
        sets: usize,
        cells: usize,
    ) -> Var {
        let shape = AttentionShape::within_sets(sets, cells, cfg.heads, cfg.head_dim, cfg.causal);
        let rope = cfg.rope_theta.map(|theta| Rope { cells, heads: cfg.heads, head_dim: cfg.head_dim, theta });
        for layer in &self.layers {
            let w = tape.param(params, layer.attn_norm);
            let y = tape.rmsnorm(x, w, cfg.rms_eps);
            let (mut q, mut k, v) = (layer.q.apply(tape, params, y), layer.k.apply(tape, params, y), layer.v.apply(tape, params, y));
            if let Some(rope) = rope {
                q = tape.rope(q, rope);
                k = tape.rope(k, rope);
            }
            let attended = tape.attention(q, k, v, shape);
            let mixed = layer.o.apply(tape, params, attended);
            x = tape.add(x, mixed);
            let w = tape.param(params, layer.mlp_norm);
            let y = tape.rmsnorm(x, w, cfg.rms_eps);
            let gate = layer.gate.apply(tape, params, y);
            let up = layer.up.apply(tape, params, y);
            let inner = tape.swiglu(gate, up);
            let out = layer.down.apply(tape, params, inner);
            x = tape.add(x, out);
        }
        let w = tape.param(params, self.final_norm);
        tape.rmsnorm(x, w, cfg.rms_eps)
    }
}
