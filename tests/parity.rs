//! Parity with an independent PyTorch implementation of the same models (`tools/torch_parity.py`).
//!
//! Each case is a checkpoint of ours plus a fixed batch with the Gumbel noise and dropout mask
//! supplied (`tests/fixtures/parity/<case>.{checkpoint,batch}.safetensors`, written by the ignored
//! test `write_parity_inputs`), and what PyTorch computed from them in float64
//! (`<case>.expected.safetensors`): the candidates, the selection, the predictions, the loss and
//! every parameter's gradient. Regenerate with
//!   cargo test --test parity -- --ignored write_parity_inputs
//!   .venv/bin/python tools/torch_parity.py tests/fixtures/parity
//!
//! Tolerances (`tol::PARITY_F64`, `tol::PARITY_F32`: tests/common/tolerance.rs says why), the
//! relative part relative to the largest value of each tensor. The retrieved candidates and the
//! hard selection must be identical.

mod common;
use common::tolerance as tol;
use ptrag_engine::cpu::elementwise::DropoutMask;
use ptrag_engine::cuda::{Gpu, ThreadOrder};
use ptrag_engine::data::responses::ObservedResponses;
use ptrag_engine::model::knowledge::Knowledge;
use ptrag_engine::model::{
    energy_loss, CandidateContext, LogitNorm, Model, ModelConfig, ModelInput, ModelKind, Noise, OutputAnchor, Selection, SelfExclusion,
};
use ptrag_engine::scalar::Scalar;
use ptrag_engine::tape::{Params, Tape};
use ptrag_engine::train::optim::{Adam, AdamConfig};
use ptrag_engine::train::{checkpoint, EvalSelection, RetrievalDatabase, TrainConfig};
use rand::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `pt-rag-responses`: the options beyond the paper, all at once (observed responses for the
/// candidates and the query, the response readout, unscaled logits); `pt-rag-similarity`: those
/// and the candidates' similarity features; `pt-rag-shift`: the responses case with the shifted
/// output; `pt-rag-linear`: the responses case with the stacked model's output (`--output-anchor
/// linear`: an anchor row per set, the centred control cells, no ReLU).
const CASES: [&str; 9] = [
    "state",
    "state-genept",
    "vanilla-rag",
    "pt-rag",
    "pt-rag-reference",
    "pt-rag-responses",
    "pt-rag-similarity",
    "pt-rag-shift",
    "pt-rag-linear",
];
/// Cell types of the cases with observed responses (the others have one).
const CELL_TYPES: usize = 2;
const SETS: usize = 3;
const CELLS: usize = 4;
const GENES: usize = 24;
const PERTS: usize = 20;
const EMBED: usize = 12;
const BATCHES: usize = 3;

/// The fixtures; `PTRAG_PARITY_FIXTURES` overrides the path compiled in, for a test binary run on
/// another machine (`tools/gpu_check.sh`).
fn dir() -> PathBuf {
    match std::env::var_os("PTRAG_PARITY_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity"),
    }
}

fn case_config(case: &str) -> TrainConfig {
    let kind = match case {
        "state" => ModelKind::State,
        "state-genept" => ModelKind::StateGenept,
        "vanilla-rag" => ModelKind::VanillaRag,
        _ => ModelKind::PtRag,
    };
    let mut model = ModelConfig::paper(kind, GENES, PERTS, BATCHES, EMBED);
    (model.hidden, model.layers, model.heads, model.head_dim, model.mlp, model.top_k) = (8, 2, 2, 4, 16, 4);
    if case == "pt-rag-reference" {
        (model.causal, model.rope_theta, model.self_exclusion) = (true, Some(10000.0), SelfExclusion::FirstSetInTraining);
    }
    if ["pt-rag-responses", "pt-rag-similarity", "pt-rag-shift", "pt-rag-linear"].contains(&case) {
        (model.candidate_context, model.response_readout, model.logit_norm) = (CandidateContext::Both, true, LogitNorm::None);
    }
    if case == "pt-rag-shift" {
        model.output_anchor = OutputAnchor::Shift;
    }
    if case == "pt-rag-linear" {
        model.output_anchor = OutputAnchor::Linear;
    }
    model.similarity_features = case == "pt-rag-similarity";
    TrainConfig {
        target_cell_type: "parity".into(),
        steps: 1,
        sets_per_batch: SETS,
        cells_per_set: CELLS,
        seed: 0,
        val_every: 0,
        head_bias_from_data: false,
        sparsity: 0.1,
        eval_selection: EvalSelection::Hard,
        eval_draws: 1,
        retrieval_database: RetrievalDatabase::All,
        adam: AdamConfig::default(),
        model,
    }
}

/// The data of one case; `in_database` leaves out the control (row 0) and one more perturbation.
struct Case {
    cfg: TrainConfig,
    genept: Vec<f32>,
    in_database: Vec<bool>,
    control: Vec<f32>,
    target: Vec<f32>,
    perturbation: Vec<u32>,
    batch: Vec<u32>,
    noise: Noise,
    /// `[sets]`
    cell_type: Vec<u32>,
    /// `pt-rag-responses` and `pt-rag-similarity`: per cell type the control mean `[CELL_TYPES, GENES]`, and the observed
    /// mean changes `[CELL_TYPES * PERTS, GENES]` (zero where `observed` is 0).
    responses: Option<(Vec<f32>, Vec<f32>, Vec<bool>)>,
    /// `pt-rag-linear`: the anchor row of each set `[SETS, GENES]` (control mean plus `linear`'s change).
    anchor: Option<Vec<f32>>,
}

fn knowledge(c: &Case) -> Option<Knowledge> {
    let k = c.cfg.model.kind.uses_genept().then(|| Knowledge::new(c.genept.clone(), EMBED, c.in_database.clone()).unwrap())?;
    let Some((control_mean, change, observed)) = &c.responses else { return Some(k) };
    let control_mean = control_mean.chunks(GENES).map(|r| r.iter().map(|&x| x as f64).collect()).collect();
    let mut table = std::collections::BTreeMap::new();
    for (i, row) in change.chunks(GENES).enumerate().filter(|(i, _)| observed[*i]) {
        table.insert(((i % PERTS) as u32, (i / PERTS) as u32), row.iter().map(|&x| x as f64).collect());
    }
    Some(k.with_responses(ObservedResponses::from_parts(GENES, control_mean, table)))
}

/// The case's model over `params` (initialised from `rng`), with its output anchor (for the
/// shifted output, each cell type's mean observed change).
fn model_of<T: Scalar>(c: &Case, params: &mut Params<T>, rng: &mut rand_chacha::ChaCha8Rng) -> Model {
    let mut model = Model::new(&c.cfg.model, knowledge(c), params, rng).unwrap();
    if let (Some((_, change, observed)), OutputAnchor::Shift) = (&c.responses, c.cfg.model.output_anchor) {
        let anchor: Vec<Vec<f64>> = (0..CELL_TYPES)
            .map(|ct| {
                let rows: Vec<&[f32]> =
                    (0..PERTS).filter(|p| observed[ct * PERTS + p]).map(|p| &change[(ct * PERTS + p) * GENES..][..GENES]).collect();
                (0..GENES).map(|g| rows.iter().map(|r| r[g] as f64).sum::<f64>() / rows.len().max(1) as f64).collect()
            })
            .collect();
        model.set_output_anchor(&anchor, Default::default());
    }
    if let Some(anchor) = &c.anchor {
        // Each set's row, by its (perturbation, cell type); the per-cell-type fallback is not used.
        let per_condition =
            (0..SETS).map(|s| ((c.perturbation[s], c.cell_type[s]), anchor[s * GENES..][..GENES].iter().map(|&x| x as f64).collect()));
        model.set_output_anchor(&vec![vec![0.0; GENES]; CELL_TYPES], per_condition.collect());
    }
    model
}

fn to_bytes<T: bytemuck::Pod>(v: &[T]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

#[test]
#[ignore = "writes the fixture inputs; run by hand, then tools/torch_parity.py"]
fn write_parity_inputs() {
    // PTRAG_PARITY_CASE=<case>: write that case only.
    let only = std::env::var("PTRAG_PARITY_CASE").ok();
    for (i, case) in CASES.iter().enumerate().filter(|(_, c)| only.as_deref().is_none_or(|o| o == **c)) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(100 + i as u64);
        let cfg = case_config(case);
        let n = SETS * CELLS;
        let mut genept: Vec<f32> = (0..PERTS * EMBED).map(|_| rng.gen_range(-1.0..1.0)).collect();
        genept[..EMBED].iter_mut().for_each(|v| *v = 0.0);
        let in_database: Vec<bool> = (0..PERTS).map(|p| p != 0 && p != 5).collect();
        let expr = |rng: &mut rand_chacha::ChaCha8Rng| (0..n * GENES).map(|_| rng.gen_range(0.0f32..3.0)).collect::<Vec<f32>>();
        let (control, target) = (expr(&mut rng), expr(&mut rng));
        let perturbation = vec![3, 9, 14];
        let batch: Vec<u32> = (0..n).map(|_| rng.gen_range(0..BATCHES as u32)).collect();
        let (cell_type, responses) = match cfg.model.candidate_context {
            CandidateContext::Genept => (vec![0; SETS], None),
            _ => {
                let control_mean: Vec<f32> = (0..CELL_TYPES * GENES).map(|_| rng.gen_range(0.5f32..1.5)).collect();
                // Most (perturbation, cell type) pairs observed; the control never.
                let observed: Vec<bool> = (0..CELL_TYPES * PERTS).map(|i| i % PERTS != 0 && rng.gen_bool(0.6)).collect();
                let change: Vec<f32> =
                    (0..CELL_TYPES * PERTS * GENES).map(|i| if observed[i / GENES] { rng.gen_range(-0.5f32..0.5) } else { 0.0 }).collect();
                (vec![0, 1, 0], Some((control_mean, change, observed)))
            }
        };
        let mut params = Params::<f32>::new();
        let stub = Case {
            cfg: cfg.clone(),
            genept: genept.clone(),
            in_database: in_database.clone(),
            control: vec![],
            target: vec![],
            perturbation: vec![],
            batch: vec![],
            noise: Noise { gumbel_key: 0, dropout: None },
            cell_type: cell_type.clone(),
            responses: responses.clone(),
            anchor: None,
        };
        let model = model_of(&stub, &mut params, &mut rng);
        // Move every parameter away from its initialisation (unit norm scales, zero shifts and
        // biases would hide mistakes), as after some training.
        for p in params.entries.iter_mut() {
            std::sync::Arc::make_mut(&mut p.value).iter_mut().for_each(|v| *v += rng.gen_range(-0.2..0.2));
        }
        let noise = model.sample_noise(true, &mut rng).unwrap_or(Noise { gumbel_key: 0, dropout: None });
        let config = serde_json::to_string(&cfg).unwrap();
        let adam = Adam::new(cfg.adam.clone(), &params);
        checkpoint::save(&dir().join(format!("{case}.checkpoint.safetensors")), &params, &adam, 0, &config, "{}").unwrap();

        let i64s = |v: &[u32]| v.iter().map(|&x| x as i64).collect::<Vec<i64>>();
        let mut tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
            ("genept", Dtype::F32, vec![PERTS, EMBED], to_bytes(&genept)),
            ("in_database", Dtype::I64, vec![PERTS], to_bytes(&in_database.iter().map(|&b| b as i64).collect::<Vec<_>>())),
            ("control", Dtype::F32, vec![n, GENES], to_bytes(&control)),
            ("target", Dtype::F32, vec![n, GENES], to_bytes(&target)),
            ("perturbation", Dtype::I64, vec![SETS], to_bytes(&i64s(&perturbation))),
            ("batch", Dtype::I64, vec![n], to_bytes(&i64s(&batch))),
            ("cell_type", Dtype::I64, vec![SETS], to_bytes(&i64s(&cell_type))),
        ];
        if let Some((control_mean, change, observed)) = &responses {
            tensors.push(("control_mean", Dtype::F32, vec![CELL_TYPES, GENES], to_bytes(control_mean)));
            tensors.push(("response_change", Dtype::F32, vec![CELL_TYPES * PERTS, GENES], to_bytes(change)));
            let observed: Vec<i64> = observed.iter().map(|&b| b as i64).collect();
            tensors.push(("response_observed", Dtype::I64, vec![CELL_TYPES * PERTS], to_bytes(&observed)));
        }
        if cfg.model.output_anchor == OutputAnchor::Linear {
            let anchor: Vec<f32> = (0..SETS * GENES).map(|_| rng.gen_range(0.0f32..2.0)).collect();
            tensors.push(("anchor", Dtype::F32, vec![SETS, GENES], to_bytes(&anchor)));
        }
        if cfg.model.kind == ModelKind::PtRag {
            let rows = n * cfg.model.top_k;
            tensors.push(("gumbel", Dtype::F32, vec![rows, 2], to_bytes(&gumbel(noise.gumbel_key, rows * 2))));
            let keep = materialised(noise.dropout.as_ref().unwrap(), rows * cfg.model.hidden);
            tensors.push(("dropout_keep", Dtype::F32, vec![rows, cfg.model.hidden], to_bytes(&keep)));
        }
        let views: Vec<(String, TensorView)> =
            tensors.iter().map(|(name, dt, shape, b)| (name.to_string(), TensorView::new(*dt, shape.clone(), b).unwrap())).collect();
        let mut meta: HashMap<String, String> = [("sets".to_string(), SETS.to_string()), ("cells".to_string(), CELLS.to_string())].into();
        if let Some(mask) = &noise.dropout {
            meta.insert("dropout_key".into(), mask.key.to_string());
            meta.insert("gumbel_key".into(), noise.gumbel_key.to_string());
        }
        let bytes = safetensors::tensor::serialize(views, &Some(meta)).unwrap();
        std::fs::write(dir().join(format!("{case}.batch.safetensors")), bytes).unwrap();
    }
}

/// The 0/1 keep-mask of the first `n` elements, as PyTorch reads it.
fn materialised(mask: &DropoutMask, n: usize) -> Vec<f32> {
    (0..n as u64).map(|i| if mask.keeps(i) { 1.0 } else { 0.0 }).collect()
}

/// The first `n` Gumbel samples of the stream `key`, as PyTorch reads them.
fn gumbel(key: u64, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    ptrag_engine::cpu::selection::gumbel_noise(key, &mut out);
    out
}

fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e} (see this file's header to regenerate)", path.display()))
}

fn tensor_f64(st: &SafeTensors, name: &str) -> Vec<f64> {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("tensor {name} missing"));
    match t.dtype() {
        Dtype::F64 => t.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect(),
        Dtype::F32 => t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
        Dtype::I64 => t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
        d => panic!("{name}: unexpected dtype {d:?}"),
    }
}

fn load_case(case: &str) -> (Case, Params<f32>) {
    let ckpt = dir().join(format!("{case}.checkpoint.safetensors"));
    let meta = checkpoint::read_meta(&ckpt).unwrap();
    // Only the model and the sparsity weight matter here (other run settings may change over time).
    let run: serde_json::Value = serde_json::from_str(&meta.config_json).unwrap();
    let sparsity = run["sparsity"].as_f64().unwrap();
    let mut cfg = case_config(case);
    cfg.model = TrainConfig::from_saved(run, &ckpt, "metadata.config").unwrap().model;
    cfg.sparsity = sparsity;
    let bytes = read_file(&dir().join(format!("{case}.batch.safetensors")));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| tensor_f64(&st, name).iter().map(|&v| v as f32).collect::<Vec<f32>>();
    let u32s = |name: &str| tensor_f64(&st, name).iter().map(|&v| v as u32).collect::<Vec<u32>>();
    let pt_rag = cfg.model.kind == ModelKind::PtRag;
    // Our side draws the Gumbel noise and the dropout mask from their keys; PyTorch's reads them
    // materialised, so both must agree.
    let noise = pt_rag.then(|| {
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let key = |name: &str| -> u64 {
            header
                .metadata()
                .as_ref()
                .and_then(|m| m.get(name))
                .unwrap_or_else(|| panic!("{name} in the batch's metadata"))
                .parse()
                .unwrap()
        };
        let mask = DropoutMask { key: key("dropout_key"), ..DropoutMask::new(0, cfg.model.scorer_dropout) };
        let keep = f32s("dropout_keep");
        assert!(materialised(&mask, keep.len()) == keep, "{case}: the dropout key does not give the stored mask");
        let noise = f32s("gumbel");
        assert!(gumbel(key("gumbel_key"), noise.len()) == noise, "{case}: the Gumbel key does not give the stored noise");
        Noise { gumbel_key: key("gumbel_key"), dropout: Some(mask) }
    });
    let c = Case {
        genept: f32s("genept"),
        in_database: u32s("in_database").iter().map(|&b| b == 1).collect(),
        control: f32s("control"),
        target: f32s("target"),
        perturbation: u32s("perturbation"),
        batch: u32s("batch"),
        noise: noise.unwrap_or(Noise { gumbel_key: 0, dropout: None }),
        // Fixtures written before cell types mattered have none: one cell type.
        cell_type: if st.names().iter().any(|n| *n == "cell_type") { u32s("cell_type") } else { vec![0; SETS] },
        responses: st
            .names()
            .iter()
            .any(|n| *n == "response_change")
            .then(|| (f32s("control_mean"), f32s("response_change"), u32s("response_observed").iter().map(|&b| b == 1).collect())),
        anchor: st.names().iter().any(|n| *n == "anchor").then(|| f32s("anchor")),
        cfg,
    };
    let mut params = Params::<f32>::new();
    model_of(&c, &mut params, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
    let mut adam = Adam::new(c.cfg.adam.clone(), &params);
    checkpoint::load(&ckpt, &mut params, &mut adam).unwrap();
    (c, params)
}

struct Ours {
    loss: f64,
    pred: Vec<f64>,
    selection: Option<Vec<f64>>,
    candidates: Option<Vec<f64>>,
    grads: Vec<(String, Vec<f64>)>,
}

/// One training step's forward and backward on `tape` (a host tape, or one on a GPU or the emulator).
fn run_ours<T: Scalar>(c: &Case, params32: &Params<f32>, mut tape: Tape<T>) -> Ours {
    let mut params = Params::<T>::new();
    let model = model_of(c, &mut params, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
    for (p, q) in params.entries.iter_mut().zip(&params32.entries) {
        p.value = std::sync::Arc::new(T::from_f32_slice(&q.value));
    }
    let n = SETS * CELLS;
    let noise = (c.cfg.model.kind == ModelKind::PtRag).then_some(&c.noise);
    let input = ModelInput {
        sets: SETS,
        cells: CELLS,
        control: ptrag_engine::model::Cells::Values(&c.control),
        perturbation: &c.perturbation,
        cell_type: &c.cell_type,
        batch: &c.batch,
        training: true,
        selection: Selection::from_noise(noise),
        genept: None,
    };
    let out = model.forward(&mut tape, &params, &input);
    let target = tape.constant(&[n, GENES], T::from_f32_slice(&c.target));
    let mut loss = energy_loss(&mut tape, out.pred, target, SETS, CELLS, GENES);
    if let Some(w) = out.selection {
        let m = tape.mean(w);
        let term = tape.scale(m, c.cfg.sparsity);
        loss = tape.add(loss, term);
    }
    let to64 = |v: &[T]| v.iter().map(|x| x.to_f64().unwrap()).collect::<Vec<f64>>();
    let result_loss = tape.fetch(loss).unwrap()[0].to_f64().unwrap();
    let pred = to64(&tape.fetch(out.pred).unwrap());
    let selection = out.selection.map(|w| to64(&tape.fetch(w).unwrap()));
    let candidates = out.retrieval.as_ref().map(|r| r.candidates.iter().map(|&x| x as f64).collect());
    tape.backward(loss).accumulate_into(&tape, &mut params).unwrap();
    let grads = params.entries.iter().map(|p| (p.name.clone(), to64(&p.grad))).collect();
    Ours { loss: result_loss, pred, selection, candidates, grads }
}

/// `|a - e| <= atol + rtol * scale` elementwise, with `scale` the largest |e| of the tensor.
fn close(what: &str, actual: &[f64], expected: &[f64], atol: f64, rtol: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths");
    let scale = expected.iter().fold(0.0f64, |m, &v| m.max(v.abs()));
    // The worst difference, a NaN (which no comparison sees) counting as worse than any number.
    let worse = |e: f64, than: f64| !than.is_nan() && (e.is_nan() || e > than);
    let (i, err) =
        actual
            .iter()
            .zip(expected)
            .map(|(a, e)| (a - e).abs())
            .enumerate()
            .fold((0, 0.0), |m, (i, e)| if worse(e, m.1) { (i, e) } else { m });
    assert!(
        err <= atol + rtol * scale,
        "{what}: worst |diff| {err:.3e} at [{i}] (ours {}, PyTorch {}), allowed {:.3e}",
        actual[i],
        expected[i],
        atol + rtol * scale
    );
}

fn compare(case: &str, ours: &Ours, expected: &SafeTensors, tol: tol::Tol) {
    let (atol, rtol) = (tol.atol, tol.rtol);
    close(&format!("{case}: loss"), &[ours.loss], &tensor_f64(expected, "loss"), atol, rtol);
    close(&format!("{case}: predictions"), &ours.pred, &tensor_f64(expected, "pred"), atol, rtol);
    if let Some(c) = &ours.candidates {
        assert_eq!(c, &tensor_f64(expected, "candidates"), "{case}: retrieved candidates");
    }
    if let Some(w) = &ours.selection {
        assert_eq!(w, &tensor_f64(expected, "selection"), "{case}: hard selection");
    }
    for (name, g) in &ours.grads {
        close(&format!("{case}: gradient of {name}"), g, &tensor_f64(expected, &format!("grad.{name}")), atol, rtol);
    }
}

#[test]
fn matches_pytorch_in_f64_and_f32() {
    for case in CASES {
        let (c, params) = load_case(case);
        let bytes = read_file(&dir().join(format!("{case}.expected.safetensors")));
        let expected = SafeTensors::deserialize(&bytes).unwrap();
        // the fixture really covers what it claims: both outcomes of the selection occur
        if c.cfg.model.kind == ModelKind::PtRag {
            let w = tensor_f64(&expected, "selection");
            assert!(w.contains(&0.0) && w.contains(&1.0), "{case}: fixture selects all or none");
        }
        compare(case, &run_ours::<f64>(&c, &params, Tape::new()), &expected, tol::PARITY_F64);
        compare(case, &run_ours::<f32>(&c, &params, Tape::new()), &expected, tol::PARITY_F32);
    }
}

/// The whole training step (forward, loss, backward, every parameter's gradient) of every model on
/// a GPU tape: its kernels, products and the tape's device path, against PyTorch in f64 with the f32
/// tolerance. Under the emulator the kernels are the same `.cu` sources the GPU runs.
fn step_on_gpu_matches_pytorch(gpu: Gpu) {
    let gpu = std::sync::Arc::new(gpu);
    for case in CASES {
        let (c, params) = load_case(case);
        let bytes = read_file(&dir().join(format!("{case}.expected.safetensors")));
        let expected = SafeTensors::deserialize(&bytes).unwrap();
        compare(&format!("{case} on {}", gpu.name()), &run_ours(&c, &params, Tape::on_gpu(gpu.clone())), &expected, tol::PARITY_F32);
    }
}

#[test]
fn training_step_emulated_matches_pytorch() {
    for order in [ThreadOrder::Forward, ThreadOrder::Reverse] {
        step_on_gpu_matches_pytorch(Gpu::emulated(order).expect("the emulated kernels are built"));
    }
}

/// On a real GPU; skipped with the reason where none is usable, failing instead with `PTRAG_REQUIRE_GPU=1`.
#[test]
fn training_step_cuda_matches_pytorch() {
    if let Some(gpu) = common::cuda_or_skip() {
        step_on_gpu_matches_pytorch(gpu);
    }
}
