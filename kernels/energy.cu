// Energy distance between predicted and observed cell sets (the training loss) and its gradient.
// Twins: src/cpu/energy.rs (reference, which defines the loss), src/cuda/energy.rs (launchers).
// Shapes: pred: [sets, n, genes], obs: [sets, m, genes], energy: [sets], dpred: [sets, n, genes].
// Per set, with d(a, b) = sqrt(max(|a - b|^2, 1e-8)) and means over all ordered pairs:
//   energy = mean d(x_i, y_j) - 0.5 mean d(x_i, x_j) - 0.5 mean d(y_i, y_j).
// Distances are taken from the differences directly (not from Gram matrices), so a row's distance to
// itself is exactly 0 and clamped, and nothing S x S is written to global memory.
//
// energy_forward_rows_f32: grid (n + m, sets), blockDim.x threads (multiple of 32); row r of the joined set
//   [x; y] is held in shared memory and compared with every row; writes its weighted sum to
//   partial[set, r]. energy_forward_reduce_f32 then sums each set's partials in order (deterministic).
//   Shared memory: genes + blockDim.x / 32 floats.
// energy_backward_f32: grid (n, sets); dpred[i] += d_energy * sum_j w_ij (x_i - z_j), with
//   w_ij = 1 / (n m d_ij) for observed z_j, -1 / (n^2 d_ij) for predicted z_j, 0 where clamped.
//   Shared memory: genes + n + m floats.
#include "common.cuh"

#define ENERGY_CLAMP 1e-8f

// Row r of the joined set [x; y] of set s.
__device__ __forceinline__ const float* joined_row(const float* pred, const float* obs, int s, int r, int n, int m, int genes) {
    return r < n ? pred + ((long long)s * n + r) * genes : obs + ((long long)s * m + (r - n)) * genes;
}

// Squared distance between the shared row `a` and the global row `b`, summed over the warp.
__device__ __forceinline__ float warp_squared_distance(const float* a, const float* b, int genes) {
    float sq = 0.0f;
    for (int g = threadIdx.x % 32; g < genes; g += 32) {
        const float diff = a[g] - b[g];
        sq += diff * diff;
    }
    return warp_sum(sq);
}

extern "C" __global__ void energy_forward_rows_f32(const float* __restrict__ pred, const float* __restrict__ obs, int n, int m, int genes,
                                           float* __restrict__ partial) {
    DYNAMIC_SHARED(float, shared);
    float* row = shared;
    float* scratch = shared + genes;
    const int r = blockIdx.x, s = blockIdx.y;
    const float* a = joined_row(pred, obs, s, r, n, m, genes);
    for (int g = threadIdx.x; g < genes; g += blockDim.x) row[g] = a[g];
    __syncthreads();
    // Which pairs this row owns: predicted rows own the cross pairs and the predicted-predicted
    // pairs; observed rows own the observed-observed pairs.
    const float cross = 1.0f / ((float)n * m), self_pred = -0.5f / ((float)n * n), self_obs = -0.5f / ((float)m * m);
    const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
    float sum = 0.0f;
    for (int j = warp; j < n + m; j += warps) {
        float weight;
        if (r < n) weight = j < n ? self_pred : cross;
        else weight = j < n ? 0.0f : self_obs;
        if (weight == 0.0f) continue;
        const float sq = warp_squared_distance(row, joined_row(pred, obs, s, j, n, m, genes), genes);
        sum += weight * sqrtf(fmaxf(sq, ENERGY_CLAMP));
    }
    // Every lane holds the same warp total; count it once per warp.
    const float total = block_sum(threadIdx.x % 32 == 0 ? sum : 0.0f, scratch);
    if (threadIdx.x == 0) partial[(long long)s * (n + m) + r] = total;
}

// energy[s] = sum of partial[s, :] in row order. One thread per set.
extern "C" __global__ void energy_forward_reduce_f32(const float* __restrict__ partial, int sets, int rows, float* __restrict__ energy) {
    const int s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= sets) return;
    float total = 0.0f;
    for (int r = 0; r < rows; ++r) total += partial[(long long)s * rows + r];
    energy[s] = total;
}

extern "C" __global__ void energy_backward_f32(const float* __restrict__ pred, const float* __restrict__ obs, const float* __restrict__ d_energy,
                                               int n, int m, int genes, float* __restrict__ dpred) {
    DYNAMIC_SHARED(float, shared);
    float* row = shared;
    float* weights = shared + genes;
    const int i = blockIdx.x, s = blockIdx.y;
    const float* x = pred + ((long long)s * n + i) * genes;
    for (int g = threadIdx.x; g < genes; g += blockDim.x) row[g] = x[g];
    __syncthreads();
    const float upstream = d_energy[s];
    const float cross = upstream / ((float)n * m), self_pred = -upstream / ((float)n * n);
    const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
    for (int j = warp; j < n + m; j += warps) {
        const float sq = warp_squared_distance(row, joined_row(pred, obs, s, j, n, m, genes), genes);
        if (threadIdx.x % 32 == 0) weights[j] = sq > ENERGY_CLAMP ? (j < n ? self_pred : cross) / sqrtf(sq) : 0.0f;
    }
    __syncthreads();
    float weight_sum = 0.0f;
    for (int j = 0; j < n + m; ++j) weight_sum += weights[j];
    float* dx = dpred + ((long long)s * n + i) * genes;
    for (int g = threadIdx.x; g < genes; g += blockDim.x) {
        float pull = 0.0f;
        for (int j = 0; j < n + m; ++j) pull += weights[j] * joined_row(pred, obs, s, j, n, m, genes)[g];
        dx[g] += weight_sum * row[g] - pull;
    }
}
