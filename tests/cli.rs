//! The binary: errors are one line on stderr with a non-zero exit code; `synth` and `train` run.

use std::process::Command;

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ptrag-engine"))
}

#[test]
fn missing_store_is_a_one_line_error() {
    let out = cli().args(["train", "--data", "/nonexistent/store", "--quiet"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/store/manifest.json"), "{err}");
}

#[test]
fn unknown_preset_and_cell_type_are_rejected() {
    let out = cli().args(["synth", "--preset", "huge", "--quiet"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tiny, small or replogle"));

    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("s");
    assert!(cli().args(["synth", "--preset", "tiny", "--quiet", "--out"]).arg(&store).status().unwrap().success());
    let out = cli().args(["train", "--quiet", "--target-cell-type", "Neuron", "--data"]).arg(&store).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Neuron"));
}

#[test]
fn train_on_tiny_data_writes_a_run_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("s");
    assert!(cli().args(["synth", "--preset", "tiny", "--quiet", "--out"]).arg(&store).status().unwrap().success());
    let run = tmp.path().join("run");
    let out = cli()
        .args(["train", "--quiet", "--steps", "4", "--val-every", "2", "--sets-per-batch", "2", "--cells-per-set", "8"])
        .args(["--hidden", "16", "--layers", "1", "--heads", "2", "--head-dim", "4", "--mlp", "16", "--data"])
        .arg(&store)
        .arg("--run-dir")
        .arg(&run)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("energy distance") && stdout.contains("control mean"), "{stdout}");
    for f in ["config.json", "log.jsonl", "metrics.json", "checkpoint-best.safetensors", "checkpoint-last.safetensors"] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("\"loss\"")).count(), 4);
    assert_eq!(log.lines().filter(|l| l.contains("val_energy")).count(), 2);
}
