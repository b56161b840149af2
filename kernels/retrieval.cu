// Cosine top-K retrieval over perturbation embeddings (PT-RAG's stage one, also Vanilla RAG's).
// Twins: src/cpu/retrieval.rs (reference), src/cuda/retrieval.rs (launchers).
//
// normalise_rows_f32: x: [rows, dim] scaled in place to unit rows (zero rows stay zero).
//   One block per row; shared memory blockDim.x / 32 floats.
// cosine_topk_f32: queries: [Q, dim] and db: [N, dim], both normalised; allowed: [N] (0/1);
//   exclude: [Q] (a row the query may not return, -1 for none); indices, sims: [Q, k], best first,
//   ties to the lower row (as the reference). One block per query: each warp takes database rows
//   and writes their similarities to shared memory, then k rounds of a block-wide arg-max pick the
//   best remaining row. Rows that are not allowed or excluded never enter. If fewer than k rows
//   qualify the remaining slots get index 0xffffffff (the launcher checks the count first).
//   Shared memory: dim + N + 2 * blockDim.x / 32 floats.
#include "common.cuh"

extern "C" __global__ void normalise_rows_f32(float* __restrict__ x, int dim) {
    DYNAMIC_SHARED(float, scratch);
    float* row = x + (long long)blockIdx.x * dim;
    float sq = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) sq += row[c] * row[c];
    const float norm = sqrtf(block_sum(sq, scratch));
    if (norm > 0.0f)
        for (int c = threadIdx.x; c < dim; c += blockDim.x) row[c] /= norm;
}

// (value, index) is better than (other_value, other_index): larger value, then lower index.
__device__ __forceinline__ bool better(float value, unsigned index, float other_value, unsigned other_index) {
    return value > other_value || (value == other_value && index < other_index);
}

extern "C" __global__ void cosine_topk_f32(const float* __restrict__ queries, const float* __restrict__ db, const unsigned char* __restrict__ allowed,
                                              const int* __restrict__ exclude, int rows, int dim, int k, unsigned* __restrict__ indices,
                                              float* __restrict__ sims) {
    DYNAMIC_SHARED(float, shared);
    float* query = shared;
    float* candidate = shared + dim;
    float* best_value = candidate + rows;
    unsigned* best_index = reinterpret_cast<unsigned*>(best_value + blockDim.x / 32);
    const int q = blockIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) query[c] = queries[(long long)q * dim + c];
    __syncthreads();
    const int excluded = exclude[q];
    for (int j = warp; j < rows; j += warps) {
        const float* row = db + (long long)j * dim;
        float dot = 0.0f;
        for (int c = lane; c < dim; c += 32) dot += query[c] * row[c];
        dot = warp_sum(dot);
        if (lane == 0) candidate[j] = (allowed[j] && j != excluded) ? dot : -INFINITY;
    }
    __syncthreads();
    for (int round = 0; round < k; ++round) {
        float value = -INFINITY;
        unsigned index = 0xffffffffu;
        for (int j = threadIdx.x; j < rows; j += blockDim.x)
            if (candidate[j] != -INFINITY && better(candidate[j], j, value, index)) {
                value = candidate[j];
                index = j;
            }
        for (int offset = 16; offset > 0; offset >>= 1) {
            const float other_value = __shfl_xor_sync(FULL_MASK, value, offset);
            const unsigned other_index = __shfl_xor_sync(FULL_MASK, index, offset);
            if (better(other_value, other_index, value, index)) {
                value = other_value;
                index = other_index;
            }
        }
        if (lane == 0) {
            best_value[warp] = value;
            best_index[warp] = index;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < warps; ++w)
                if (better(best_value[w], best_index[w], value, index)) {
                    value = best_value[w];
                    index = best_index[w];
                }
            indices[(long long)q * k + round] = index;
            sims[(long long)q * k + round] = value;
            if (index != 0xffffffffu) candidate[index] = -INFINITY;
        }
        __syncthreads();
    }
}
