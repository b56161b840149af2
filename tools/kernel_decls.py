"""Writes src/cuda/kernels.rs: one declaration (symbol and parameter kinds, in order) per
`extern "C" __global__` kernel of kernels/*.cu, from the C signatures. The launchers call kernels
only through these declarations, and `Gpu::launch` checks each call's arguments against them;
`tests/kernel_decls.rs` checks that the committed file is what this script writes.

Usage:  python3 tools/kernel_decls.py [--check]
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def param_structs():
    """The struct types of kernels/params.h (passed to kernels by value)."""
    return set(re.findall(r"typedef\s+struct\s+\w+\s*\{[^}]*\}\s*(\w+)\s*;", (ROOT / "kernels/params.h").read_text()))


def kind(param):
    p = " ".join(param.replace("__restrict__", "").split())
    if "*" in p:
        return "In" if p.startswith("const ") else "Out"
    t = p.rsplit(" ", 1)[0].replace("const ", "")
    kinds = {"int": "Int", "long long": "I64", "int64_t": "I64", "unsigned int": "U32", "uint32_t": "U32",
             "unsigned long long": "U64", "uint64_t": "U64", "float": "F32", "double": "F64"}
    if t in param_structs():
        return f'Struct("{t}")'
    if t not in kinds:
        raise SystemExit(f"{param!r}: a parameter type this script does not know")
    return kinds[t]


def kernels():
    found = []
    for cu in sorted((ROOT / "kernels").glob("*.cu")):
        text = cu.read_text()
        for m in re.finditer(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', text):
            params = [p.strip() for p in m.group(2).split(",") if p.strip()]
            found.append((cu.name, m.group(1), [kind(p) for p in params]))
    return found


def render():
    out = ["//! Every CUDA kernel of `kernels/*.cu`, declared once: its symbol and its parameters in order.",
           "//! Written by `tools/kernel_decls.py` from the C signatures (do not edit by hand);",
           "//! `tests/kernel_decls.rs` checks it is current, and `Gpu::launch` checks each call against it.",
           "",
           "use super::{Kernel, Param::*};",
           ""]
    last = None
    for file, name, params in kernels():
        if file != last:
            out.append(f"// kernels/{file}")
            last = file
        out.append(f'pub const {name.upper()}: Kernel = Kernel {{ symbol: "{name}", params: &[{", ".join(params)}] }};')
    out += ["", "/// Every declaration above, in file order.", "pub const ALL: &[&Kernel] = &["]
    out += [f"    &{name.upper()}," for _, name, _ in kernels()]
    out.append("];")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    target = ROOT / "src/cuda/kernels.rs"
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if target.exists() and target.read_text() == text else "src/cuda/kernels.rs is not current: run tools/kernel_decls.py")
    target.write_text(text)
    print(f"wrote {target.relative_to(ROOT)} ({len(kernels())} kernels)")
