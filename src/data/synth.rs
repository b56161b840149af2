//! The built-in benchmark: seeded Perturb-seq-like data shaped like Replogle-Nadig. The
//! `calibrated` preset (the default) adds the mechanisms of `Biology`, set from real
//! cross-cell-line statistics; `tiny`, `small` and `replogle` are the original data, byte for byte.
//!
//! What is planted (and why retrieval matters on it), in log-expression space per cell:
//! - 4 cell types, each with its own baseline profile and 3 control sub-states (heterogeneity);
//! - pathways, each with a sparse response program over genes; a pathway's ACTIVITY differs per
//!   cell type and is zero ("silent") in some cell types;
//! - each perturbation belongs to one pathway (some to two, a few to none) with its own strength;
//!   with a context specificity above the default, a two-pathway perturbation may act through only
//!   one of its pathways in a cell type (`SynthConfig::with_context_specificity`);
//!   a small idiosyncratic effect, and knock-down of its target gene when that gene is measured;
//! - each cell type has a generic response program that every perturbation triggers in proportion
//!   to its strength; batches (gem groups, nested in cell types) add small offsets;
//! - perturbed cells respond with partial penetrance; counts are negative binomial around
//!   `library_size * softmax(log-expression)`, then library-size normalised to 1e4 and log1p'd;
//! - GenePT-like embeddings (unit norm) sit near their pathways' centroids plus noise, around a
//!   shared direction (real GenePT vectors are anisotropic); the control has a zero vector.
//!
//! A held-out perturbation's response in the target cell type = its pathway's program scaled by
//! that cell type's activity, plus effects every cell type shares: a linear image of its responses
//! in the other cell types, whose per-pathway gains any training perturbation observed in the target
//! reveals (so a ridge learns them; same-pathway retrieval is one way to read them). The planted
//! means (`truth_means`, `data::truth`) give every figure its noise floor.

use super::split::{SplitFile, DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION};
use super::store::{ExprDtype, Manifest, StoreWriter, FORMAT, VERSION};
use super::truth::TruthFile;
use crate::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma, Normal, Poisson};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const CELL_TYPES: [&str; 4] = ["K562", "RPE1", "Jurkat", "HepG2"];
pub const CONTROL: &str = "non-targeting";

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SynthConfig {
    pub preset: String,
    pub seed: u64,
    pub genes: usize,
    /// Non-control perturbations (the control is added on top).
    pub perturbations: usize,
    pub pathways: usize,
    pub embed_dim: usize,
    /// Mean cells per (perturbation, cell type); actual counts vary 0.5x..1.5x.
    pub cells_per_condition: usize,
    pub controls_per_cell_type: usize,
    pub batches_per_cell_type: usize,
    /// How cell-type-specific the planted biology is (`with_context_specificity`); None is the
    /// original data (0.25), kept out of `source` so that its cached stores stay valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_specificity: Option<f64>,
    /// The mechanisms of the `calibrated` preset (`Biology`); None for the original presets, kept
    /// out of `source` so that their cached stores stay valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub biology: Option<Biology>,
}

/// The planted biology of the `calibrated` preset, each mechanism standing for something reported
/// in real screens, with strengths set from real cross-cell-line statistics (docs/design.md,
/// "The calibrated preset"). Drawn from RNG streams of their own, after everything the original
/// presets draw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Biology {
    /// Share of each pathway's program rewired per cell type: a cell type's program is
    /// `sqrt(1 - r) shared + sqrt(r) private` (programs partly rewired across lines). This is the
    /// preset's `--context-specificity`.
    pub rewiring: f64,
    /// Share of the perturbations that belong to two pathways; such a gene acts only through the
    /// one more active in the cell type (context-dependent pathway use).
    pub two_pathway_share: f64,
    /// SD of the log of a perturbation's strength, shared by all cell types (knock-downs differ
    /// widely in impact, and consistently across lines).
    pub strength_sd: f64,
    /// SD of the log of a per-cell-type factor on that strength (context-dependent essentiality).
    pub essentiality_sd: f64,
    /// Weight of a response program every perturbation triggers in every cell type, in proportion
    /// to its strength (a common stress response).
    pub universal: f64,
    /// Share of a perturbation's idiosyncratic effect that is specific to each cell type.
    pub private_idiosyncratic: f64,
    /// A gene's change saturates at this many log units (`c tanh(d / c)`).
    pub saturation: f64,
}

/// The calibrated strengths (set on seed 7, never on the benchmark's data: docs/design.md).
pub const CALIBRATED: Biology = Biology {
    rewiring: 0.6,
    two_pathway_share: 0.3,
    strength_sd: 0.6,
    essentiality_sd: 0.3,
    universal: 0.5,
    private_idiosyncratic: 0.5,
    saturation: 1.5,
};

/// The preset `train`, `reproduce` and `synth` use when none is named.
pub const DEFAULT_PRESET: &str = "calibrated";

/// The context specificity of the original built-in data: a quarter of the pathways silent per
/// cell type, and no perturbation switching pathway between cell types.
pub const DEFAULT_CONTEXT_SPECIFICITY: f64 = 0.25;

impl SynthConfig {
    pub fn preset(name: &str, seed: u64) -> Result<SynthConfig> {
        let (genes, perturbations, pathways, embed_dim, cells_per_condition, controls_per_cell_type, batches_per_cell_type) = match name {
            "tiny" => (48, 30, 5, 32, 12, 60, 2),
            "small" => (512, 200, 16, 1536, 48, 1000, 4),
            "replogle" => (2000, 2023, 60, 1536, 75, 10000, 14),
            "calibrated" => (512, 200, 16, 1536, 96, 2000, 4),
            _ => return Err(Error::invalid("preset", format!("`{name}`: expected calibrated, tiny, small or replogle"))),
        };
        Ok(SynthConfig {
            preset: name.into(),
            seed,
            genes,
            perturbations,
            pathways,
            embed_dim,
            cells_per_condition,
            controls_per_cell_type,
            batches_per_cell_type,
            context_specificity: None,
            biology: (name == "calibrated").then_some(CALIBRATED),
        })
    }

    /// The data at context specificity `x` in [0, 1): each pathway is silent in a cell type with
    /// probability `x`; above the default 0.25 a growing share of the perturbations belongs to two
    /// pathways (10% at 0.25, up to 50%) and acts through only one of them, chosen per cell type, in
    /// a share `m = (x - 0.25) / 0.75` of the cell types. A cell-type-agnostic retrieval then finds
    /// neighbours through the wrong pathway more often. `x = 0.25` gives the original data exactly.
    /// On `calibrated`, `x` is the rewired share of each pathway's program (`Biology::rewiring`).
    pub fn with_context_specificity(mut self, x: f64) -> Result<SynthConfig> {
        if !(0.0..1.0).contains(&x) {
            return Err(Error::invalid("--context-specificity", format!("a value in [0, 1), got {x}")));
        }
        match &mut self.biology {
            Some(b) => b.rewiring = x,
            None => self.context_specificity = (x != DEFAULT_CONTEXT_SPECIFICITY).then_some(x),
        }
        Ok(self)
    }
    /// The context specificity of this configuration, and whether it is its preset's default.
    pub fn context_specificity_of(&self) -> (f64, bool) {
        match &self.biology {
            Some(b) => (b.rewiring, b.rewiring == CALIBRATED.rewiring),
            None => (self.specificity(), self.context_specificity.is_none()),
        }
    }
    fn specificity(&self) -> f64 {
        self.context_specificity.unwrap_or(DEFAULT_CONTEXT_SPECIFICITY)
    }
    /// The share of cell types in which a two-pathway perturbation acts through one pathway only.
    fn switching(&self) -> f64 {
        ((self.specificity() - DEFAULT_CONTEXT_SPECIFICITY) / (1.0 - DEFAULT_CONTEXT_SPECIFICITY)).clamp(0.0, 1.0)
    }
    pub fn source(&self) -> String {
        format!("synth {}", serde_json::to_string(self).expect("config serialises"))
    }
    pub fn n_batches(&self) -> usize {
        self.batches_per_cell_type * CELL_TYPES.len()
    }
}

struct Model {
    cfg: SynthConfig,
    base: Vec<Vec<f32>>,                   // [ct][g]: baseline log-expression
    substates: Vec<Vec<Vec<f32>>>,         // [ct][s][g]
    batch_offset: Vec<Vec<f32>>,           // [batch][g]
    programs: Vec<Vec<f32>>,               // [pathway][g]
    activity: Vec<Vec<f32>>,               // [ct][pathway]
    generic: Vec<Vec<f32>>,                // [ct][g]
    pert_pathways: Vec<Vec<usize>>,        // [pert] (index 0 = control)
    switched_off: Vec<Vec<Option<usize>>>, // [ct][pert]: a pathway of the perturbation not acting there
    strength: Vec<f32>,
    penetrance: Vec<f32>,
    idiosyncratic: Vec<Vec<(usize, f32)>>,
    target_gene: Vec<Option<usize>>,
    library_mean: f32,
    /// The `calibrated` preset's mechanisms; None for the original presets.
    context: Option<Context>,
}

/// What `Biology` draws: per cell type private programs and idiosyncratic effects, per
/// perturbation and cell type its strength factor, and the universal program.
struct Context {
    private_programs: Vec<Vec<Vec<f32>>>,               // [ct][pathway][g]
    private_idiosyncratic: Vec<Vec<Vec<(usize, f32)>>>, // [ct][pert]
    strength_factor: Vec<Vec<f32>>,                     // [ct][pert]: shared log-normal x per-cell-type essentiality
    universal: Vec<f32>,                                // [g]
}

impl Context {
    fn new(cfg: &SynthConfig, biology: &Biology) -> Context {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xB101_0617);
        let (g, n_ct, np) = (cfg.genes, CELL_TYPES.len(), cfg.perturbations + 1);
        let private_programs = (0..n_ct).map(|_| (0..cfg.pathways).map(|_| sparse(&mut rng, g, 0.08, 1.0)).collect()).collect();
        let private_idiosyncratic = (0..n_ct)
            .map(|_| {
                (0..np)
                    .map(|_| (0..g).filter_map(|i| if rng.gen_bool(0.02) { Some((i, normal(&mut rng, 0.3))) } else { None }).collect())
                    .collect()
            })
            .collect();
        // exp(sd z - sd^2 / 2): a mean of 1, so the typical effect keeps the original presets' scale.
        let log_normal = |rng: &mut ChaCha8Rng, sd: f64| (sd * normal(rng, 1.0) as f64 - sd * sd / 2.0).exp() as f32;
        let shared: Vec<f32> = (0..np).map(|_| log_normal(&mut rng, biology.strength_sd)).collect();
        let strength_factor =
            (0..n_ct).map(|_| shared.iter().map(|&s| s * log_normal(&mut rng, biology.essentiality_sd)).collect()).collect();
        let universal = sparse(&mut rng, g, 0.05, 1.0);
        Context { private_programs, private_idiosyncratic, strength_factor, universal }
    }
}

fn normal(rng: &mut impl Rng, sd: f32) -> f32 {
    Normal::new(0.0, sd).expect("finite sd").sample(rng)
}
fn sparse(rng: &mut impl Rng, n: usize, fraction: f64, sd: f32) -> Vec<f32> {
    (0..n).map(|_| if rng.gen_bool(fraction) { normal(rng, sd) } else { 0.0 }).collect()
}

impl Model {
    fn new(cfg: &SynthConfig) -> Model {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let (g, n_ct, np) = (cfg.genes, CELL_TYPES.len(), cfg.perturbations + 1);
        let global: Vec<f32> = (0..g).map(|_| normal(&mut rng, 1.2)).collect();
        let base = (0..n_ct).map(|_| global.iter().map(|&m| m + normal(&mut rng, 0.4)).collect()).collect();
        let substates = (0..n_ct).map(|_| (0..3).map(|_| sparse(&mut rng, g, 0.1, 0.5)).collect()).collect();
        let batch_offset = (0..cfg.n_batches()).map(|_| (0..g).map(|_| normal(&mut rng, 0.08)).collect()).collect();
        let programs = (0..cfg.pathways).map(|_| sparse(&mut rng, g, 0.08, 1.0)).collect();
        let silent = cfg.specificity();
        let activity = (0..n_ct)
            .map(|_| (0..cfg.pathways).map(|_| if rng.gen_bool(silent) { 0.0 } else { rng.gen_range(0.3..1.5) }).collect())
            .collect();
        let generic = (0..n_ct).map(|_| sparse(&mut rng, g, 0.05, 0.5)).collect();
        let mut pert_pathways = vec![vec![]];
        let two_pathways = match &cfg.biology {
            Some(b) => 0.05 + b.two_pathway_share,
            None => 0.15 + 0.4 * cfg.switching(),
        };
        for _ in 0..cfg.perturbations {
            let u: f64 = rng.gen();
            let first = rng.gen_range(0..cfg.pathways);
            pert_pathways.push(if u < 0.05 {
                vec![]
            } else if u < two_pathways {
                let second = (first + 1 + rng.gen_range(0..cfg.pathways - 1)) % cfg.pathways;
                vec![first, second]
            } else {
                vec![first]
            });
        }
        // From a stream of its own, so that the original data (no switching) draws nothing here.
        let mut switch_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5EC1_F1C1);
        let switched_off = (0..n_ct)
            .map(|_| {
                pert_pathways
                    .iter()
                    .map(|pws: &Vec<usize>| {
                        (pws.len() == 2 && cfg.switching() > 0.0 && switch_rng.gen_bool(cfg.switching()))
                            .then(|| pws[switch_rng.gen_range(0..2)])
                    })
                    .collect()
            })
            .collect();
        let strength = (0..np).map(|j| if j == 0 { 0.0 } else { rng.gen_range(0.6..1.4) }).collect();
        let penetrance = (0..np).map(|_| rng.gen_range(0.6..0.95)).collect();
        let idiosyncratic = (0..np)
            .map(|j| {
                if j == 0 {
                    vec![]
                } else {
                    (0..g).filter_map(|i| if rng.gen_bool(0.02) { Some((i, normal(&mut rng, 0.3))) } else { None }).collect()
                }
            })
            .collect();
        // A quarter of the perturbations knock down a measured gene (as in HVG-restricted data).
        let target_gene = (0..np).map(|j| if j > 0 && j <= g / 4 { Some(j - 1) } else { None }).collect();
        Model {
            cfg: cfg.clone(),
            base,
            substates,
            batch_offset,
            programs,
            activity,
            generic,
            pert_pathways,
            switched_off,
            strength,
            penetrance,
            idiosyncratic,
            target_gene,
            library_mean: (2 * g) as f32,
            context: cfg.biology.as_ref().map(|b| Context::new(cfg, b)),
        }
    }

    /// Mean log-expression shift of perturbation `p` in cell type `ct` (responding cells).
    fn effect(&self, p: usize, ct: usize) -> Vec<f32> {
        if let Some(context) = &self.context {
            return self.context_effect(context, p, ct);
        }
        let g = self.cfg.genes;
        let mut d = vec![0.0f32; g];
        if p == 0 {
            return d;
        }
        let s = self.strength[p];
        for pw in self.acting(p, ct) {
            let a = self.activity[ct][pw] * s / (self.pert_pathways[p].len() as f32).sqrt();
            d.iter_mut().zip(&self.programs[pw]).for_each(|(d, &v)| *d += a * v);
        }
        d.iter_mut().zip(&self.generic[ct]).for_each(|(d, &v)| *d += 0.5 * s * v);
        for &(i, v) in &self.idiosyncratic[p] {
            d[i] += v;
        }
        if let Some(t) = self.target_gene[p] {
            d[t] += (0.15f32).ln();
        }
        d
    }

    /// `effect` on the `calibrated` preset: the acting pathway's program as rewired in the cell
    /// type, scaled by its activity and the perturbation's strength there; the cell type's generic
    /// and the universal program; idiosyncratic effects partly private to the cell type; the
    /// knock-down; every gene's change saturating.
    fn context_effect(&self, context: &Context, p: usize, ct: usize) -> Vec<f32> {
        let (g, b) = (self.cfg.genes, self.cfg.biology.as_ref().expect("a context comes from the configuration's biology"));
        let mut d = vec![0.0f32; g];
        if p == 0 {
            return d;
        }
        let s = self.strength[p] * context.strength_factor[ct][p];
        let (shared, private) = ((1.0 - b.rewiring).sqrt() as f32, b.rewiring.sqrt() as f32);
        for pw in self.acting(p, ct) {
            let a = self.activity[ct][pw] * s;
            let programs = self.programs[pw].iter().zip(&context.private_programs[ct][pw]);
            d.iter_mut().zip(programs).for_each(|(d, (&u, &v))| *d += a * (shared * u + private * v));
        }
        let universal = b.universal as f32 * s;
        for ((d, &v), &u) in d.iter_mut().zip(&self.generic[ct]).zip(&context.universal) {
            *d += 0.5 * s * v + universal * u;
        }
        let (shared, private) = ((1.0 - b.private_idiosyncratic).sqrt() as f32, b.private_idiosyncratic.sqrt() as f32);
        for &(i, v) in &self.idiosyncratic[p] {
            d[i] += shared * v;
        }
        for &(i, v) in &context.private_idiosyncratic[ct][p] {
            d[i] += private * v;
        }
        if let Some(t) = self.target_gene[p] {
            d[t] += (0.15f32).ln();
        }
        let c = b.saturation as f32;
        d.iter_mut().for_each(|d| *d = c * (*d / c).tanh());
        d
    }

    /// The pathways through which perturbation `p` acts in cell type `ct`: its pathways, less one
    /// switched off there (silent pathways included: they act with activity 0). On `calibrated`, a
    /// two-pathway gene acts through the one more active in the cell type (the first on a tie).
    fn acting(&self, p: usize, ct: usize) -> Vec<usize> {
        let pathways = &self.pert_pathways[p];
        if self.context.is_some() && pathways.len() == 2 {
            let more_active = if self.activity[ct][pathways[1]] > self.activity[ct][pathways[0]] { pathways[1] } else { pathways[0] };
            return vec![more_active];
        }
        pathways.iter().copied().filter(|&pw| self.switched_off[ct][p] != Some(pw)).collect()
    }

    /// One normalised, log1p'd expression profile.
    fn cell(&self, ct: usize, batch: usize, effect: Option<&[f32]>, rng: &mut impl Rng, out: &mut [f32]) {
        let sub = &self.substates[ct][rng.gen_range(0..3)];
        let mut logit: Vec<f32> = (0..self.cfg.genes).map(|i| self.base[ct][i] + sub[i] + self.batch_offset[batch][i]).collect();
        if let Some(e) = effect {
            logit.iter_mut().zip(e).for_each(|(l, &e)| *l += e);
        }
        let max = logit.iter().cloned().fold(f32::MIN, f32::max);
        let z: f32 = logit.iter().map(|&l| (l - max).exp()).sum();
        let library = self.library_mean * (normal(rng, 0.3)).exp();
        let shape = 5.0; // negative-binomial dispersion: Gamma(shape, mean/shape) then Poisson
        let gamma = Gamma::new(shape, 1.0 / shape).expect("valid gamma");
        let mut total = 0.0f32;
        for (o, &l) in out.iter_mut().zip(&logit) {
            let mean = library * (l - max).exp() / z;
            let lambda = mean * gamma.sample(rng);
            *o = poisson(lambda, rng);
            total += *o;
        }
        let scale = if total > 0.0 { 1e4 / total } else { 0.0 };
        out.iter_mut().for_each(|o| *o = (*o * scale).ln_1p());
    }
}

/// Monte Carlo cells per (substate, batch) stratum of each condition in `truth_means`, by preset:
/// the estimate's own MSE is then about 1% of the noise floor (`synth_means.json` states it).
pub fn truth_samples(preset: &str) -> usize {
    match preset {
        "tiny" => 256,
        _ => 48,
    }
}

/// Per-stratum sums of a per-gene quantity and of its square: its mean and the variance of that mean.
struct Moments {
    sum: Vec<f64>,
    squares: Vec<f64>,
}

impl Moments {
    fn new(g: usize) -> Moments {
        Moments { sum: vec![0.0; g], squares: vec![0.0; g] }
    }
    fn add(&mut self, x: &[f64]) {
        for ((s, q), &v) in self.sum.iter_mut().zip(&mut self.squares).zip(x) {
            *s += v;
            *q += v * v;
        }
    }
    /// Per gene, the sample variance over the `n` values added, divided by `n`.
    fn variance_of_mean(&self, n: usize) -> impl Iterator<Item = f64> + '_ {
        let n = n as f64;
        self.sum.iter().zip(&self.squares).map(move |(&s, &q)| ((q - s * s / n) / (n - 1.0)).max(0.0) / n)
    }
}

/// The planted means of the generator (`data::truth`): for each cell type and perturbation, the
/// expectation of a cell's normalised, log1p'd expression with and without the perturbation's effect,
/// over what `Model::cell` draws. The substate and the batch are enumerated (each stratum weighs
/// equally, as they are drawn uniformly); within a stratum, `samples` cells by Monte Carlo over the
/// library size and the negative-binomial counts. The two profiles of a sample share their library
/// size, gamma multipliers and Poisson uniforms (counts by inversion), so their difference, the
/// change, is estimated with far less error than either mean. The change is the penetrance times
/// that difference. The expectation is of the f32 values before the store's f16 rounding.
pub fn truth_means(cfg: &SynthConfig, samples: usize) -> super::truth::TruthMeans {
    let start = std::time::Instant::now();
    let model = Model::new(cfg);
    let (g, n_ct, np) = (cfg.genes, CELL_TYPES.len(), cfg.perturbations + 1);
    let samples = samples.max(2);
    let strata = 3 * cfg.batches_per_cell_type;
    // Per (cell type, perturbation): the change, its MC MSE, and the moments of the plain profiles
    // (every condition's draws without the effect are control cells: their mean is the control mean).
    let results: Vec<(Vec<f32>, f64, Moments)> = (0..n_ct * np)
        .into_par_iter()
        .map(|job| {
            let (ct, p) = (job / np, job % np);
            let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x7A0E_3EA5);
            rng.set_stream(job as u64);
            let effect: Vec<f64> = model.effect(p, ct).iter().map(|&e| e as f64).collect();
            let (mut change, mut variance) = (vec![0.0f64; g], vec![0.0f64; g]);
            let mut plain = Moments::new(g);
            let (mut with, mut without, mut difference) = (vec![0.0; g], vec![0.0; g], vec![0.0; g]);
            for stratum in 0..strata {
                let (sub, batch) = (stratum % 3, ct * cfg.batches_per_cell_type + stratum / 3);
                let logit: Vec<f64> =
                    (0..g).map(|i| (model.base[ct][i] + model.substates[ct][sub][i] + model.batch_offset[batch][i]) as f64).collect();
                let shares_without = softmax(&logit);
                let shares_with = softmax(&logit.iter().zip(&effect).map(|(l, e)| l + e).collect::<Vec<f64>>());
                let mut moments = Moments::new(g);
                for _ in 0..samples {
                    coupled_cells(&model, &shares_without, &shares_with, &mut rng, &mut without, &mut with);
                    difference.iter_mut().zip(&with).zip(&without).for_each(|((d, a), b)| *d = a - b);
                    moments.add(&difference);
                    plain.add(&without);
                }
                change.iter_mut().zip(&moments.sum).for_each(|(c, s)| *c += s / (samples * strata) as f64);
                variance.iter_mut().zip(moments.variance_of_mean(samples)).for_each(|(v, m)| *v += m / (strata * strata) as f64);
            }
            let pen = if p == 0 { 0.0 } else { model.penetrance[p] as f64 };
            let mse = pen * pen * variance.iter().sum::<f64>() / g as f64;
            (change.iter().map(|&c| (pen * c) as f32).collect(), mse, plain)
        })
        .collect();
    let per_ct_samples = np * strata * samples;
    let mut control = Vec::with_capacity(n_ct * g);
    let (mut change_mc_mse, mut control_mc_mse) = (Vec::new(), Vec::new());
    for ct in 0..n_ct {
        let rows = &results[ct * np..(ct + 1) * np];
        let mut all = Moments::new(g);
        for (_, _, m) in rows {
            all.sum.iter_mut().zip(&m.sum).for_each(|(a, b)| *a += b);
            all.squares.iter_mut().zip(&m.squares).for_each(|(a, b)| *a += b);
        }
        control.extend(all.sum.iter().map(|s| (s / per_ct_samples as f64) as f32));
        // Strata pooled: an upper bound on the stratified estimate's variance.
        control_mc_mse.push(all.variance_of_mean(per_ct_samples).sum::<f64>() / g as f64);
        change_mc_mse.push(rows[1..].iter().map(|r| r.1).sum::<f64>() / (np - 1).max(1) as f64);
    }
    let change = results.into_iter().flat_map(|r| r.0).collect();
    let meta = super::truth::MeansMeta {
        genes: g,
        cell_types: n_ct,
        perturbations: np,
        samples_per_stratum: samples,
        change_mc_mse,
        control_mc_mse,
        seconds: start.elapsed().as_secs_f64(),
    };
    super::truth::TruthMeans { meta, control, change }
}

fn softmax(logit: &[f64]) -> Vec<f64> {
    let max = logit.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = logit.iter().map(|&l| (l - max).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|v| v / z).collect()
}

/// One Monte Carlo cell of `Model::cell`, twice: the normalised log1p profile from `without` and
/// from `with` (gene shares), sharing the library size, each gene's gamma multiplier and its
/// Poisson uniform.
fn coupled_cells(model: &Model, without: &[f64], with: &[f64], rng: &mut impl Rng, out_without: &mut [f64], out_with: &mut [f64]) {
    let library = model.library_mean as f64 * Normal::<f64>::new(0.0, 0.3).expect("finite sd").sample(rng).exp();
    let gamma = Gamma::new(5.0, 1.0 / 5.0).expect("valid gamma");
    let (mut total_without, mut total_with) = (0.0, 0.0);
    for i in 0..without.len() {
        let multiplier: f64 = gamma.sample(rng);
        let u: f64 = rng.gen();
        out_without[i] = poisson_quantile(library * without[i] * multiplier, u);
        out_with[i] = poisson_quantile(library * with[i] * multiplier, u);
        total_without += out_without[i];
        total_with += out_with[i];
    }
    for (out, total) in [(out_without, total_without), (out_with, total_with)] {
        let scale = if total > 0.0 { 1e4 / total } else { 0.0 };
        out.iter_mut().for_each(|o| *o = (*o * scale).ln_1p());
    }
}

/// The Poisson(`lambda`) quantile at `u`: the smallest k whose CDF reaches u. Summed from 0, or,
/// for large means (where exp(-lambda) underflows), from 12 standard deviations below the mean,
/// whose lower tail (below 1e-30) is left out.
fn poisson_quantile(lambda: f64, u: f64) -> f64 {
    if lambda <= 0.0 {
        return 0.0;
    }
    let start = if lambda < 500.0 { 0.0 } else { (lambda - 12.0 * lambda.sqrt()).floor() };
    let mut k = start;
    let mut pmf = (k * lambda.ln() - lambda - libm::lgamma(k + 1.0)).exp();
    let mut cdf = pmf;
    while cdf < u && pmf.is_finite() {
        k += 1.0;
        pmf *= lambda / k;
        cdf += pmf;
        if k > lambda + 50.0 * lambda.sqrt() + 50.0 {
            break;
        }
    }
    k
}

/// Poisson sample: inversion for small means (the common case), rand_distr otherwise.
fn poisson(lambda: f32, rng: &mut impl Rng) -> f32 {
    if lambda <= 0.0 {
        return 0.0;
    }
    if lambda < 30.0 {
        let l = (-lambda).exp();
        let (mut k, mut p) = (0.0f32, 1.0f32);
        loop {
            p *= rng.gen::<f32>();
            if p <= l {
                return k;
            }
            k += 1.0;
        }
    }
    Poisson::new(lambda as f64).map(|d| d.sample(rng) as f32).unwrap_or(lambda)
}

/// GenePT-like unit vectors: shared direction + pathway centroids + noise; the control is zero.
fn embeddings(model: &Model) -> Vec<f32> {
    let cfg = &model.cfg;
    let d = cfg.embed_dim;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x9E37_79B9);
    let unit = |rng: &mut ChaCha8Rng| -> Vec<f32> {
        let v: Vec<f32> = (0..d).map(|_| normal(rng, 1.0)).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    };
    let shared = unit(&mut rng);
    let centroids: Vec<Vec<f32>> = (0..cfg.pathways).map(|_| unit(&mut rng)).collect();
    let mut out = vec![0.0f32; (cfg.perturbations + 1) * d];
    for p in 1..=cfg.perturbations {
        let noise = unit(&mut rng);
        let pws = &model.pert_pathways[p];
        let row = &mut out[p * d..(p + 1) * d];
        for i in 0..d {
            row[i] = 0.6 * shared[i] + 0.8 * noise[i];
            for &pw in pws {
                row[i] += 1.0 * centroids[pw][i] / (pws.len() as f32).sqrt();
            }
        }
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= n);
    }
    out
}

/// One unit of generation work: some cells of one condition, with its own RNG stream.
struct Work {
    perturbation: usize,
    cell_type: usize,
    cells: usize,
    stream: u64,
}

#[derive(Debug)]
pub struct SynthReport {
    pub dir: PathBuf,
    pub cells: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// Generates the data set and writes it as a store at `dir`, streaming in bounded chunks.
/// With `truth`, the planted means (`truth_means`) are written beside the store.
pub fn generate(cfg: &SynthConfig, dir: &Path, truth: bool, progress: bool) -> Result<SynthReport> {
    let start = std::time::Instant::now();
    let model = Model::new(cfg);
    let mut writer = StoreWriter::create(dir, cfg.genes, ExprDtype::F16)?;
    write_cells(cfg, &model, &plan_work(cfg), &mut writer, progress)?;
    let (manifest, split, planted) = describe(cfg, &model)?;
    let cells = writer.n_cells();
    let dir = writer.finish(manifest, &embeddings(&model), &split.to_toml(), &[("synth_truth.json", planted)])?;
    if truth {
        write_truth_means(cfg, &dir, progress)?;
    }
    let bytes = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum();
    Ok(SynthReport { dir, cells, bytes, seconds: start.elapsed().as_secs_f64() })
}

/// The work items: every cell type's controls in chunks of 256, then every condition with a
/// cell count drawn around `cells_per_condition`; each with its own RNG stream.
fn plan_work(cfg: &SynthConfig) -> Vec<Work> {
    let n_ct = CELL_TYPES.len();
    let mut plan_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xC0FFEE);
    let mut work = Vec::new();
    for ct in 0..n_ct {
        let mut left = cfg.controls_per_cell_type;
        while left > 0 {
            let n = left.min(256);
            work.push(Work { perturbation: 0, cell_type: ct, cells: n, stream: work.len() as u64 });
            left -= n;
        }
    }
    for p in 1..=cfg.perturbations {
        for ct in 0..n_ct {
            let n = ((cfg.cells_per_condition as f64) * plan_rng.gen_range(0.5..1.5)).round().max(2.0) as usize;
            work.push(Work { perturbation: p, cell_type: ct, cells: n, stream: work.len() as u64 });
        }
    }
    work
}

/// Generates a window of work items in parallel and writes them in order: memory stays bounded and
/// the output does not depend on the number of threads.
fn write_cells(cfg: &SynthConfig, model: &Model, work: &[Work], writer: &mut StoreWriter, progress: bool) -> Result<()> {
    let total_cells: usize = work.iter().map(|w| w.cells).sum();
    let bar = crate::progress::bar(total_cells as u64, "cells", progress);
    for window in work.chunks(64) {
        let generated: Vec<(Vec<f32>, Vec<u32>, &Work)> = window
            .par_iter()
            .map(|w| {
                let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
                rng.set_stream(w.stream + 1);
                let effect = (w.perturbation != 0).then(|| model.effect(w.perturbation, w.cell_type));
                let mut expr = vec![0.0f32; w.cells * cfg.genes];
                let mut batches = Vec::with_capacity(w.cells);
                for row in expr.chunks_mut(cfg.genes) {
                    let batch = w.cell_type * cfg.batches_per_cell_type + rng.gen_range(0..cfg.batches_per_cell_type);
                    let responds = effect.is_some() && rng.gen::<f32>() < model.penetrance[w.perturbation];
                    model.cell(w.cell_type, batch, if responds { effect.as_deref() } else { None }, &mut rng, row);
                    batches.push(batch as u32);
                }
                (expr, batches, w)
            })
            .collect();
        for (expr, batches, w) in generated {
            for (row, &b) in expr.chunks(cfg.genes).zip(&batches) {
                writer.push_cell(row, w.perturbation as u32, w.cell_type as u32, b)?;
            }
            bar.inc(w.cells as u64);
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// The store's manifest, its seeded split, and the planted truth (`synth_truth.json`).
fn describe(cfg: &SynthConfig, model: &Model) -> Result<(Manifest, SplitFile, String)> {
    let mut perturbations = vec![CONTROL.to_string()];
    let genes: Vec<String> = (0..cfg.genes).map(|i| format!("GENE{i:04}")).collect();
    for p in 1..=cfg.perturbations {
        perturbations.push(match model.target_gene[p] {
            Some(t) => genes[t].clone(),
            None => format!("PERT{p:04}"),
        });
    }
    let cell_types: Vec<String> = CELL_TYPES.iter().map(|s| s.to_string()).collect();
    let split =
        SplitFile::generate("synth", &perturbations[1..], &cell_types, |_, _| true, DEFAULT_VAL_FRACTION, DEFAULT_TEST_FRACTION, cfg.seed)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        source: cfg.source(),
        n_cells: 0,
        expression_dtype: ExprDtype::F16,
        genes,
        perturbations,
        control: CONTROL.into(),
        cell_types,
        n_batches: cfg.n_batches(),
        embed_dim: cfg.embed_dim,
        fingerprint: None,
    };
    let acting = (0..CELL_TYPES.len())
        .map(|ct| {
            (0..=cfg.perturbations).map(|p| model.acting(p, ct).into_iter().filter(|&pw| model.activity[ct][pw] > 0.0).collect()).collect()
        })
        .collect();
    let truth = TruthFile { pathways_of: model.pert_pathways.clone(), activity: model.activity.clone(), acting: Some(acting) };
    Ok((manifest, split, serde_json::to_string(&truth).expect("truth serialises")))
}

/// Whether a preset's store gets its planted means without being asked (`replogle`'s would take
/// some 40 minutes on 2 cores: `synth --truth` asks).
pub fn truth_by_default(preset: &str) -> bool {
    preset != "replogle"
}

/// Computes the planted means of `cfg` and writes them into the store at `dir`.
pub fn write_truth_means(cfg: &SynthConfig, dir: &Path, progress: bool) -> Result<()> {
    if progress {
        eprintln!("computing the planted means of `{}` ...", cfg.preset);
    }
    truth_means(cfg, truth_samples(&cfg.preset)).write(dir)
}

/// Opens the cached store for `cfg` at `dir`, generating it first when absent or made differently;
/// a cached store of a preset with planted means by default gets them added when it lacks them.
pub fn ensure(cfg: &SynthConfig, dir: &Path, progress: bool) -> Result<super::store::Store> {
    let truth = truth_by_default(&cfg.preset);
    if let Ok(store) = super::store::Store::open(dir) {
        if store.manifest.source == cfg.source() {
            if truth && !dir.join(super::truth::MEANS_META).exists() {
                write_truth_means(cfg, dir, progress)?;
            }
            return Ok(store);
        }
    }
    if progress {
        eprintln!("generating the built-in `{}` data set into {} ...", cfg.preset, dir.display());
    }
    generate(cfg, dir, truth, progress)?;
    super::store::Store::open(dir)
}
