//! The kernel declarations (`src/cuda/kernels.rs`, through which every launcher calls its kernel)
//! agree with the C signatures of `kernels/*.cu`: the same kernels, each with the same parameter
//! kinds in the same order. This reads the `.cu` sources itself, independently of the script that
//! wrote the declarations (`tools/kernel_decls.py`).

use ptrag_engine::cuda::kernels::ALL;
use ptrag_engine::cuda::Param;
use std::collections::BTreeMap;
use std::path::Path;

/// The struct types that `kernels/params.h` defines (`typedef struct X { ... } X;`).
fn param_structs() -> Vec<&'static str> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/params.h")).unwrap();
    let text: &'static str = Box::leak(text.into_boxed_str());
    text.split("typedef struct").skip(1).map(|s| s[s.find('}').unwrap() + 1..].split(';').next().unwrap().trim()).collect()
}

/// The kind of one C parameter (`const float* __restrict__ x`, `int cols`, `AdamParams s`, ...).
fn kind(param: &str) -> Param {
    let p = param.replace("__restrict__", "");
    let p = p.split_whitespace().collect::<Vec<_>>().join(" ");
    if p.contains('*') {
        return if p.starts_with("const ") { Param::In } else { Param::Out };
    }
    let ty = p.rsplit_once(' ').map_or(p.as_str(), |(t, _)| t).trim_start_matches("const ");
    match ty {
        "int" => Param::Int,
        "long long" | "int64_t" => Param::I64,
        "unsigned int" | "uint32_t" => Param::U32,
        "unsigned long long" | "uint64_t" => Param::U64,
        "float" => Param::F32,
        "double" => Param::F64,
        other if param_structs().contains(&other) => Param::Struct(param_structs().into_iter().find(|s| *s == other).unwrap()),
        other => panic!("{param}: a parameter type the declarations do not know ({other})"),
    }
}

/// Every `extern "C" __global__` kernel of `kernels/*.cu`: symbol -> parameter kinds.
fn declared_in_sources() -> BTreeMap<String, Vec<Param>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "cu") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (at, _) in text.match_indices("__global__") {
            let head = &text[..at];
            if !head.trim_end().ends_with("\"C\"") {
                continue;
            }
            let rest = &text[at..];
            let open = rest.find('(').unwrap();
            let name = rest[..open].split_whitespace().last().unwrap().to_string();
            let close = rest.find(')').unwrap();
            let params: Vec<Param> = rest[open + 1..close].split(',').map(str::trim).filter(|p| !p.is_empty()).map(kind).collect();
            assert!(found.insert(name.clone(), params).is_none(), "{name} is defined twice in kernels/");
        }
    }
    found
}

#[test]
fn the_kernel_declarations_match_the_cuda_sources() {
    let sources = declared_in_sources();
    let declared: BTreeMap<String, Vec<Param>> = ALL.iter().map(|k| (k.symbol.to_string(), k.params.to_vec())).collect();
    assert_eq!(declared.len(), ALL.len(), "a kernel declared twice");
    for (name, params) in &sources {
        match declared.get(name) {
            None => panic!("{name} (kernels/) has no declaration: run tools/kernel_decls.py"),
            Some(d) => assert_eq!(d, params, "{name}: declared {d:?}, the source has {params:?}; run tools/kernel_decls.py"),
        }
    }
    for name in declared.keys() {
        assert!(sources.contains_key(name), "{name} is declared but not in kernels/: run tools/kernel_decls.py");
    }
}

/// The names of the top-level `pub fn`s of a Rust source file.
fn public_functions(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().filter_map(|l| l.strip_prefix("pub fn ")).map(|l| l[..l.find(['(', '<']).unwrap()].to_string()).collect()
}

/// The twins are named alike: every kernel of `kernels/X.cu` is `<launcher>[_<stage>]_<type>`, where
/// the launcher is a function of `src/cuda/X.rs`, and every launcher has a CPU twin of the same name
/// in `src/cpu/X.rs` (the reference it is tested against).
#[test]
fn kernels_launchers_and_cpu_twins_are_named_alike() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // A launcher with no CPU twin, and why.
    let cuda_only = [("gather_table_rows", "picks gather_rows or gather_rows_f16 by the table's precision")];
    for entry in std::fs::read_dir(root.join("kernels")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "cu") {
            continue;
        }
        let family = path.file_stem().unwrap().to_str().unwrap().to_string();
        let launchers = public_functions(&root.join(format!("src/cuda/{family}.rs")));
        let twins = public_functions(&root.join(format!("src/cpu/{family}.rs")));
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines().filter_map(|l| l.strip_prefix("extern \"C\" __global__ void ")) {
            let symbol = &line[..line.find('(').unwrap()];
            let launcher = launchers.iter().filter(|f| symbol.starts_with(&format!("{f}_"))).max_by_key(|f| f.len());
            let launcher =
                launcher.unwrap_or_else(|| panic!("{symbol} (kernels/{family}.cu) is not named after a launcher of src/cuda/{family}.rs"));
            let ty = symbol.rsplit('_').next().unwrap();
            assert!(["f16", "f32", "f64"].contains(&ty), "{symbol}: the name ends in its element type");
            assert!(symbol.len() > launcher.len() + 1, "{symbol}");
        }
        for f in &launchers {
            assert!(
                twins.contains(f) || cuda_only.iter().any(|(name, _)| name == f),
                "src/cuda/{family}.rs::{f} has no CPU twin of that name in src/cpu/{family}.rs"
            );
        }
    }
}
