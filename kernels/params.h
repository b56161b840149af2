// Parameter structs and launch constants shared by the kernels (kernels/*.cu) and their launchers:
// `src/cuda/params.rs` is written from this file by tools/param_structs.sh (bindgen), and
// tests/param_structs.rs checks, with gcc, that the Rust and C layouts agree. Plain C (no CUDA), so
// that bindgen and gcc read it as it is; the structs are passed to kernels by value.
#ifndef PTRAG_KERNEL_PARAMS_H
#define PTRAG_KERNEL_PARAMS_H

// attention.cu: warps (rows) per block; rows of the other side streamed through shared memory per
// tile; the slices of a row each lane holds in registers (head_dim <= 32 * ATTENTION_SLOTS).
#define ATTENTION_ROWS_PER_BLOCK 4
#define ATTENTION_TILE 32
#define ATTENTION_SLOTS 4

// attention.cu: one launch's shape (src/cpu/attention.rs's AttentionShape, less the set count,
// which is the grid's z). causal: 0 or 1.
typedef struct AttentionParams {
    int cells;
    int keys;
    int heads;
    int head_dim;
    int causal;
} AttentionParams;

// selection.cu: PT-RAG's triplets (src/cpu/selection.rs's TripletLayout): `cells` query cells in
// `rows` perturbation rows (cells / rows each), every row with `k` candidates; triplet t is
// (cell t / k, that cell's row, the row's candidate t % k).
typedef struct TripletLayoutParams {
    int cells;
    int rows;
    int k;
} TripletLayoutParams;

// optim.cu: one Adam step's scalars (src/cpu/optim.rs's AdamStep and its bias corrections).
typedef struct AdamParams {
    float lr;
    float beta1;
    float beta2;
    float eps;
    float weight_decay;
    float bias1;
    float bias2_sqrt;
} AdamParams;

#endif
