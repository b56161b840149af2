//! Build script. The CUDA kernels (`kernels/*.cu`) arrive with the CUDA-engine issue, which makes
//! this script find nvcc and compile them to sm_90 cubins; until then the crate is the CPU engine
//! only and this script just tells cargo to rebuild when `kernels/` changes.

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build.rs");
}
