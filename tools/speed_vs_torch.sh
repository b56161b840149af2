#!/usr/bin/env bash
# ptrag-engine's training step against plain PyTorch, side by side on this machine, one after the
# other with the same shapes and threads: `ptrag-engine bench`, this project's PyTorch reference
# (tools/torch_step.py) and, when present, the team's anchor (ANCHOR, default
# ../shared/anchors/torch_ptrag.py; not part of the project). Prints cells/s and the ratios.
#   tools/speed_vs_torch.sh [pt-rag|state|state-genept|vanilla-rag]
#     env: SETS CELLS STEPS THREADS PY ANCHOR, DEVICE (cpu or cuda: both sides run there),
#     ENGINE (a built ptrag-engine binary: no cargo build, as on the GPU machine),
#     AVX2=1 (both sides as on a CPU without AVX-512: PTRAG_CPU=avx2 and ATEN_CPU_CAPABILITY=avx2)
# Needs a Python with torch: python3 -m venv .venv && .venv/bin/pip install torch
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-pt-rag}
SETS=${SETS:-64} CELLS=${CELLS:-64} STEPS=${STEPS:-5} THREADS=${THREADS:-2}
PY=${PY:-.venv/bin/python}
ANCHOR=${ANCHOR:-../shared/anchors/torch_ptrag.py}
DEVICE=${DEVICE:-cpu}
if [ "${AVX2:-0}" = 1 ]; then export PTRAG_CPU=avx2 ATEN_CPU_CAPABILITY=avx2; fi
if [ -z "${ENGINE:-}" ]; then cargo build --release --quiet; ENGINE=target/release/ptrag-engine; fi
ours=$(RAYON_NUM_THREADS=$THREADS "$ENGINE" bench --device "$DEVICE" --model "$MODEL" --sets "$SETS" --cells "$CELLS" --steps "$STEPS" --json)
torch=$($PY tools/torch_step.py --device "$DEVICE" --model "$MODEL" --sets "$SETS" --cells "$CELLS" --steps "$STEPS" --threads "$THREADS")
anchor=null
if [ -f "$ANCHOR" ] && [ "$DEVICE" = cpu ]; then
  case "$MODEL" in pt-rag) a=ptrag ;; vanilla-rag) a=vanilla ;; *) a=$MODEL ;; esac
  anchor=$($PY "$ANCHOR" --model "$a" --sets "$SETS" --cells "$CELLS" --steps "$STEPS" --threads "$THREADS")
fi
$PY - "$ours" "$torch" "$anchor" <<'PY'
import json, sys, platform, datetime
ours, torch, anchor = (json.loads(a) for a in sys.argv[1:4])
print(f"{datetime.date.today()} {platform.node()}: {ours['model']} on {ours['device']} ({ours.get('cpu_path', '')}), {ours['sets']} x {ours['cells']} cells, {ours['threads']} threads")
print(f"  ptrag-engine bench            {ours['cells_per_second']:8.1f} cells/s  ({ours['median_step_seconds']:.3f} s/step)")
print(f"  tools/torch_step.py (PyTorch) {torch['cells_per_second']:8.1f} cells/s  ratio {ours['cells_per_second'] / torch['cells_per_second']:.2f}x")
if anchor:
    print(f"  anchor torch_ptrag.py         {anchor['cells_per_s']:8.1f} cells/s  ratio {ours['cells_per_second'] / anchor['cells_per_s']:.2f}x")
PY
