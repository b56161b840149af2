//! Every CUDA kernel of `kernels/*.cu`, declared once: its symbol and its parameters in order.
//! Written by `tools/kernel_decls.py` from the C signatures (do not edit by hand);
//! `tests/kernel_decls.rs` checks it is current, and `Gpu::launch` checks each call against it.

use super::{Kernel, Param::*};

// kernels/attention.cu
pub const ATTENTION_FORWARD_F32: Kernel = Kernel { symbol: "attention_forward_f32", params: &[In, In, In, Struct("AttentionParams"), Out, Out] };
pub const ATTENTION_BACKWARD_DQ_F32: Kernel = Kernel { symbol: "attention_backward_dq_f32", params: &[In, In, In, In, In, In, Struct("AttentionParams"), Out, Out] };
pub const ATTENTION_BACKWARD_DKDV_F32: Kernel = Kernel { symbol: "attention_backward_dkdv_f32", params: &[In, In, In, In, In, In, Struct("AttentionParams"), Out, Out] };
pub const ROPE_FORWARD_F32: Kernel = Kernel { symbol: "rope_forward_f32", params: &[In, In, Int, Int, Int, Out, I64] };
pub const ROPE_BACKWARD_F32: Kernel = Kernel { symbol: "rope_backward_f32", params: &[In, In, Int, Int, Int, Out, I64] };
// kernels/elementwise.cu
pub const SILU_FORWARD_F32: Kernel = Kernel { symbol: "silu_forward_f32", params: &[In, Out, I64] };
pub const SILU_BACKWARD_F32: Kernel = Kernel { symbol: "silu_backward_f32", params: &[In, In, Out, I64] };
pub const GELU_FORWARD_F32: Kernel = Kernel { symbol: "gelu_forward_f32", params: &[In, Out, I64] };
pub const GELU_BACKWARD_F32: Kernel = Kernel { symbol: "gelu_backward_f32", params: &[In, In, Out, I64] };
pub const RELU_FORWARD_F32: Kernel = Kernel { symbol: "relu_forward_f32", params: &[In, Out, I64] };
pub const RELU_BACKWARD_F32: Kernel = Kernel { symbol: "relu_backward_f32", params: &[In, In, Out, I64] };
pub const SWIGLU_FORWARD_F32: Kernel = Kernel { symbol: "swiglu_forward_f32", params: &[In, In, Out, I64] };
pub const SWIGLU_BACKWARD_F32: Kernel = Kernel { symbol: "swiglu_backward_f32", params: &[In, In, In, Out, Out, I64] };
pub const DROPOUT_F32: Kernel = Kernel { symbol: "dropout_f32", params: &[In, Out, I64, U64, U32, F32] };
pub const SOFTMAX_FORWARD_F32: Kernel = Kernel { symbol: "softmax_forward_f32", params: &[In, Int, Out, I64] };
pub const SOFTMAX_BACKWARD_F32: Kernel = Kernel { symbol: "softmax_backward_f32", params: &[In, In, Int, Out, I64] };
// kernels/energy.cu
pub const ENERGY_FORWARD_ROWS_F32: Kernel = Kernel { symbol: "energy_forward_rows_f32", params: &[In, In, Int, Int, Int, Out] };
pub const ENERGY_FORWARD_REDUCE_F32: Kernel = Kernel { symbol: "energy_forward_reduce_f32", params: &[In, Int, Int, Out] };
pub const ENERGY_BACKWARD_F32: Kernel = Kernel { symbol: "energy_backward_f32", params: &[In, In, In, Int, Int, Int, Out] };
// kernels/norm.cu
pub const RMSNORM_FORWARD_F32: Kernel = Kernel { symbol: "rmsnorm_forward_f32", params: &[In, In, F32, Int, Out, Out] };
pub const RMSNORM_BACKWARD_F32: Kernel = Kernel { symbol: "rmsnorm_backward_f32", params: &[In, In, In, In, Int, Out] };
pub const RMSNORM_BACKWARD_WEIGHT_F32: Kernel = Kernel { symbol: "rmsnorm_backward_weight_f32", params: &[In, In, In, Int, Int, Out] };
pub const LAYERNORM_FORWARD_F32: Kernel = Kernel { symbol: "layernorm_forward_f32", params: &[In, In, In, F32, Int, Out, Out, Out] };
pub const LAYERNORM_BACKWARD_F32: Kernel = Kernel { symbol: "layernorm_backward_f32", params: &[In, In, In, In, In, Int, Out] };
pub const LAYERNORM_BACKWARD_WEIGHT_F32: Kernel = Kernel { symbol: "layernorm_backward_weight_f32", params: &[In, In, In, In, Int, Int, Out, Out] };
// kernels/optim.cu
pub const ADAM_UPDATE_F32: Kernel = Kernel { symbol: "adam_update_f32", params: &[Out, In, Out, Out, I64, In, Struct("AdamParams")] };
pub const CLIP_SQUARES_F32: Kernel = Kernel { symbol: "clip_squares_f32", params: &[In, I64, Out, Int] };
pub const CLIP_NORM_F64: Kernel = Kernel { symbol: "clip_norm_f64", params: &[In, Int, In, F64, Out] };
// kernels/retrieval.cu
pub const NORMALISE_ROWS_F32: Kernel = Kernel { symbol: "normalise_rows_f32", params: &[Out, Int] };
pub const COSINE_TOPK_F32: Kernel = Kernel { symbol: "cosine_topk_f32", params: &[In, In, In, In, Int, Int, Int, Out, Out] };
// kernels/selection.cu
pub const GUMBEL_ST_FORWARD_F32: Kernel = Kernel { symbol: "gumbel_st_forward_f32", params: &[In, In, F32, Int, Int, Out, Out] };
pub const GUMBEL_ST_BACKWARD_F32: Kernel = Kernel { symbol: "gumbel_st_backward_f32", params: &[In, In, F32, Int, Int, Out] };
pub const TRIPLET_STATS_FORWARD_F32: Kernel = Kernel { symbol: "triplet_stats_forward_f32", params: &[In, In, In, In, In, In, Struct("TripletLayoutParams"), Int, F32, Out] };
pub const TRIPLET_STATS_BACKWARD_F32: Kernel = Kernel { symbol: "triplet_stats_backward_f32", params: &[In, In, Struct("TripletLayoutParams"), Int, Out, Out, Out, Out, Out, Out] };
pub const TRIPLET_ASSEMBLE_FORWARD_F32: Kernel = Kernel { symbol: "triplet_assemble_forward_f32", params: &[In, In, In, In, In, In, Struct("TripletLayoutParams"), Int, Out] };
pub const TRIPLET_ASSEMBLE_BACKWARD_STATS_F32: Kernel = Kernel { symbol: "triplet_assemble_backward_stats_f32", params: &[In, In, In, In, In, In, Struct("TripletLayoutParams"), Int, Out] };
pub const TRIPLET_ASSEMBLE_BACKWARD_PARTS_F32: Kernel = Kernel { symbol: "triplet_assemble_backward_parts_f32", params: &[In, In, Struct("TripletLayoutParams"), Int, Out, Out, Out, Out, Out] };
pub const TRIPLET_ASSEMBLE_BACKWARD_VECTORS_F32: Kernel = Kernel { symbol: "triplet_assemble_backward_vectors_f32", params: &[In, In, Int, Int, Out, Out] };
pub const GUMBEL_NOISE_F32: Kernel = Kernel { symbol: "gumbel_noise_f32", params: &[Out, I64, U64] };
// kernels/tensor.cu
pub const ADD_F32: Kernel = Kernel { symbol: "add_f32", params: &[In, In, Out, I64] };
pub const MUL_F32: Kernel = Kernel { symbol: "mul_f32", params: &[In, In, Out, I64] };
pub const SCALE_F32: Kernel = Kernel { symbol: "scale_f32", params: &[In, F32, Out, I64] };
pub const ACCUMULATE_F32: Kernel = Kernel { symbol: "accumulate_f32", params: &[In, Out, I64] };
pub const ADD_BIAS_F32: Kernel = Kernel { symbol: "add_bias_f32", params: &[In, In, Int, Out, I64] };
pub const SCALE_ROWS_F32: Kernel = Kernel { symbol: "scale_rows_f32", params: &[In, In, Int, Out, I64] };
pub const SCALE_COLS_F32: Kernel = Kernel { symbol: "scale_cols_f32", params: &[In, In, Int, Out, I64] };
pub const COLUMN_DOTS_F32: Kernel = Kernel { symbol: "column_dots_f32", params: &[In, In, Int, Int, Out] };
pub const ROW_DOTS_F32: Kernel = Kernel { symbol: "row_dots_f32", params: &[In, In, Int, Int, Out] };
pub const GATHER_ROWS_F32: Kernel = Kernel { symbol: "gather_rows_f32", params: &[In, In, Int, Out, I64] };
pub const GATHER_ROWS_F16: Kernel = Kernel { symbol: "gather_rows_f16", params: &[In, In, Int, Out, I64] };
pub const SCATTER_ADD_ROWS_F32: Kernel = Kernel { symbol: "scatter_add_rows_f32", params: &[In, In, Int, Out, I64] };
pub const COPY_COLS_F32: Kernel = Kernel { symbol: "copy_cols_f32", params: &[In, Int, Int, Out, Int, Int, Int, Int, I64] };
pub const SUM_GROUPS_FORWARD_F32: Kernel = Kernel { symbol: "sum_groups_forward_f32", params: &[In, Int, Int, Out, I64] };
pub const SUM_GROUPS_BACKWARD_F32: Kernel = Kernel { symbol: "sum_groups_backward_f32", params: &[In, Int, Int, Out, I64] };
pub const SUM_F32: Kernel = Kernel { symbol: "sum_f32", params: &[In, I64, Out] };
pub const SUM_BACKWARD_F32: Kernel = Kernel { symbol: "sum_backward_f32", params: &[In, Out, I64] };
pub const STD_SCALE_FORWARD_F32: Kernel = Kernel { symbol: "std_scale_forward_f32", params: &[In, I64, F32, Out, Out] };
pub const STD_SCALE_BACKWARD_F32: Kernel = Kernel { symbol: "std_scale_backward_f32", params: &[In, In, In, I64, Out] };

/// Every declaration above, in file order.
pub const ALL: &[&Kernel] = &[
    &ATTENTION_FORWARD_F32,
    &ATTENTION_BACKWARD_DQ_F32,
    &ATTENTION_BACKWARD_DKDV_F32,
    &ROPE_FORWARD_F32,
    &ROPE_BACKWARD_F32,
    &SILU_FORWARD_F32,
    &SILU_BACKWARD_F32,
    &GELU_FORWARD_F32,
    &GELU_BACKWARD_F32,
    &RELU_FORWARD_F32,
    &RELU_BACKWARD_F32,
    &SWIGLU_FORWARD_F32,
    &SWIGLU_BACKWARD_F32,
    &DROPOUT_F32,
    &SOFTMAX_FORWARD_F32,
    &SOFTMAX_BACKWARD_F32,
    &ENERGY_FORWARD_ROWS_F32,
    &ENERGY_FORWARD_REDUCE_F32,
    &ENERGY_BACKWARD_F32,
    &RMSNORM_FORWARD_F32,
    &RMSNORM_BACKWARD_F32,
    &RMSNORM_BACKWARD_WEIGHT_F32,
    &LAYERNORM_FORWARD_F32,
    &LAYERNORM_BACKWARD_F32,
    &LAYERNORM_BACKWARD_WEIGHT_F32,
    &ADAM_UPDATE_F32,
    &CLIP_SQUARES_F32,
    &CLIP_NORM_F64,
    &NORMALISE_ROWS_F32,
    &COSINE_TOPK_F32,
    &GUMBEL_ST_FORWARD_F32,
    &GUMBEL_ST_BACKWARD_F32,
    &TRIPLET_STATS_FORWARD_F32,
    &TRIPLET_STATS_BACKWARD_F32,
    &TRIPLET_ASSEMBLE_FORWARD_F32,
    &TRIPLET_ASSEMBLE_BACKWARD_STATS_F32,
    &TRIPLET_ASSEMBLE_BACKWARD_PARTS_F32,
    &TRIPLET_ASSEMBLE_BACKWARD_VECTORS_F32,
    &GUMBEL_NOISE_F32,
    &ADD_F32,
    &MUL_F32,
    &SCALE_F32,
    &ACCUMULATE_F32,
    &ADD_BIAS_F32,
    &SCALE_ROWS_F32,
    &SCALE_COLS_F32,
    &COLUMN_DOTS_F32,
    &ROW_DOTS_F32,
    &GATHER_ROWS_F32,
    &GATHER_ROWS_F16,
    &SCATTER_ADD_ROWS_F32,
    &COPY_COLS_F32,
    &SUM_GROUPS_FORWARD_F32,
    &SUM_GROUPS_BACKWARD_F32,
    &SUM_F32,
    &SUM_BACKWARD_F32,
    &STD_SCALE_FORWARD_F32,
    &STD_SCALE_BACKWARD_F32,
];
