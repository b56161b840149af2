//! Build script: compiles every `kernels/*.cu` twice.
//!
//! 1. With nvcc into an sm_90 cubin plus compute_75 PTX, embedded in the binary (`src/cuda` loads
//!    them: the cubin on Hopper, the PTX, compiled by the driver, on any other GPU from Turing on, A100
//!    included; 7.5 is the oldest target nvcc 13 has). nvcc is found through `NVCC`, then `CUDA_HOME/bin/nvcc`, then `PATH` (`tools/install_cuda.sh`
//!    installs the pinned 13.0 from PyPI). Without nvcc the crate builds the CPU engine and warns;
//!    with `PTRAG_REQUIRE_CUDA=1` (CI, the GPU check) a missing nvcc, an nvcc error or warning, or a
//!    register spill fails the build instead (without it, an nvcc failure also falls back to the CPU).
//! 2. With the C++ compiler and `kernels/emulation/cuda_emulation.h` force-included, into a static
//!    library that runs the same kernels on the CPU (`src/cuda/emulator.rs`), for the tests.
//!
//! A kernel is any line `extern "C" __global__ void NAME(` in a `.cu`; the generated
//! `$OUT_DIR/kernels.rs` lists them per family with the embedded images and emulated entry points.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone)]
struct Family {
    name: String,
    source: PathBuf,
    kernels: Vec<String>,
}

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build.rs");
    for var in ["NVCC", "CUDA_HOME", "PTRAG_REQUIRE_CUDA", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let require = env::var("PTRAG_REQUIRE_CUDA").is_ok_and(|v| v == "1");
    let families = read_families(Path::new("kernels"));

    let built_cuda = match find_nvcc() {
        Some(nvcc) => match families.iter().try_for_each(|f| compile_cuda(&nvcc, f, &out, require)) {
            Ok(()) => true,
            Err(e) if require => panic!("{e}"),
            Err(e) => {
                println!("cargo:warning=building the CPU engine only: {}", e.lines().next().unwrap_or_default());
                false
            }
        },
        None if require => panic!("PTRAG_REQUIRE_CUDA=1 but no nvcc: set NVCC or CUDA_HOME, or run tools/install_cuda.sh"),
        None => {
            println!(
                "cargo:warning=no nvcc found (NVCC, CUDA_HOME, PATH): building the CPU engine only; tools/install_cuda.sh installs one"
            );
            false
        }
    };

    // The emulator's self-test kernels (wrong on purpose) are emulated only, never built for a GPU.
    let emulated_families: Vec<Family> = families.iter().cloned().chain(read_families(Path::new("kernels/emulation"))).collect();
    let emulated = compile_emulation(&emulated_families, &out, require);
    fs::write(out.join("kernels.rs"), generated_rust(&families, &emulated_families, built_cuda, emulated)).expect("write kernels.rs");
}

fn read_families(dir: &Path) -> Vec<Family> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .expect("kernels/ exists")
        .map(|e| e.expect("read kernels/").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|source| {
            let text = fs::read_to_string(&source).expect("read .cu");
            let kernels = text
                .lines()
                .filter_map(|l| l.trim_start().strip_prefix("extern \"C\" __global__ void "))
                .map(|rest| rest.split('(').next().unwrap_or_default().trim().to_string())
                .collect();
            let name = source.file_stem().expect("file name").to_string_lossy().into_owned();
            Family { name, source: fs::canonicalize(&source).expect("canonical path"), kernels }
        })
        .collect()
}

fn find_nvcc() -> Option<PathBuf> {
    let candidates = [
        env::var_os("NVCC").map(PathBuf::from),
        env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("bin").join("nvcc")),
        env::var_os("PATH").and_then(|p| env::split_paths(&p).map(|d| d.join("nvcc")).find(|p| p.is_file())),
    ];
    candidates.into_iter().flatten().find(|p| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// Builds one family's cubin and PTX; an error message on failure. Under `require`, warnings
/// (register spills included) are errors.
fn compile_cuda(nvcc: &Path, family: &Family, out: &Path, require: bool) -> Result<(), String> {
    let run = |args: &[&str], what: &str| -> Result<String, String> {
        let mut command = Command::new(nvcc);
        command.args(["-std=c++17", "-O3", "-I", "kernels", "-Xptxas", "-warn-spills,-warn-lmem-usage"]);
        if require {
            command.args(["-Werror", "all-warnings"]);
        }
        let output = command.args(args).arg(&family.source).output().map_err(|e| format!("running {}: {e}", nvcc.display()))?;
        let log = String::from_utf8_lossy(&output.stderr).into_owned();
        if !output.status.success() {
            return Err(format!("nvcc failed building {what} of {}:\n{log}", family.source.display()));
        }
        Ok(log)
    };
    let cubin = out.join(format!("{}.cubin", family.name));
    let ptx = out.join(format!("{}.ptx", family.name));
    let log = run(&["-arch=sm_90", "-cubin", "-o", cubin.to_str().expect("utf-8 path")], "the sm_90 cubin")?;
    run(&["-arch=compute_75", "-ptx", "-o", ptx.to_str().expect("utf-8 path")], "the PTX")?;
    for line in log.lines().filter(|l| l.contains("spill") || l.contains("lmem")) {
        println!("cargo:warning={}: {line}", family.name);
    }
    Ok(())
}

/// Compiles the emulated kernels; false (with a warning) where no C++20 compiler is available.
fn compile_emulation(families: &[Family], out: &Path, require: bool) -> bool {
    let shim = fs::canonicalize("kernels/emulation/cuda_emulation.h").expect("kernels/emulation/cuda_emulation.h");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        .opt_level(2)
        .warnings(false)
        .flag("-U_FORTIFY_SOURCE")
        .include("kernels")
        .file("kernels/emulation/runtime.cpp");
    for family in families {
        let unit = out.join(format!("emulated_{}.cpp", family.name));
        let mut text = format!("#include \"{}\"\n#include \"{}\"\n", shim.display(), family.source.display());
        for kernel in &family.kernels {
            writeln!(text, "EMULATE_KERNEL({kernel})").expect("write to string");
        }
        fs::write(&unit, text).expect("write emulation unit");
        build.file(unit);
    }
    match build.try_compile("ptrag_emulation") {
        Ok(()) => true,
        Err(e) if require => panic!("compiling the emulated kernels: {e}"),
        Err(e) => {
            println!("cargo:warning=emulated kernels not built (needs g++ with C++20): {e}");
            false
        }
    }
}

fn generated_rust(families: &[Family], emulated_families: &[Family], built_cuda: bool, emulated: bool) -> String {
    let mut text = String::from("// Generated by build.rs from kernels/*.cu.\n\n");
    writeln!(text, "pub const CUDA_BUILT: bool = {built_cuda};").unwrap();
    writeln!(text, "pub static FAMILIES: &[KernelFamily] = &[").unwrap();
    for f in families {
        let (cubin, ptx) = if built_cuda {
            (
                format!("include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{}.cubin\"))", f.name),
                format!("include_str!(concat!(env!(\"OUT_DIR\"), \"/{}.ptx\"))", f.name),
            )
        } else {
            ("&[]".to_string(), "\"\"".to_string())
        };
        writeln!(text, "    KernelFamily {{ name: {:?}, kernels: &{:?}, cubin: {cubin}, ptx: {ptx} }},", f.name, f.kernels).unwrap();
    }
    writeln!(text, "];\n").unwrap();
    if emulated {
        writeln!(text, "unsafe extern \"C\" {{").unwrap();
        for k in emulated_families.iter().flat_map(|f| &f.kernels) {
            writeln!(text, "    fn emu_{k}(config: *const EmuLaunch, params: *mut *mut core::ffi::c_void, error: *mut core::ffi::c_char, error_len: usize) -> i32;").unwrap();
        }
        writeln!(text, "}}\n").unwrap();
    }
    writeln!(text, "pub static EMULATED: &[(&str, EmulatedEntry)] = &[").unwrap();
    if emulated {
        for k in emulated_families.iter().flat_map(|f| &f.kernels) {
            writeln!(text, "    ({k:?}, emu_{k}),").unwrap();
        }
    }
    writeln!(text, "];").unwrap();
    text
}
