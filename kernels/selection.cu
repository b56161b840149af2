// PT-RAG's differentiable candidate selection: straight-through Gumbel-Softmax.
// Twins: src/cpu/selection.rs (reference), src/cuda/selection.rs (launchers).
// Shapes: logits, noise, soft, hard, dy, dlogits: [rows, classes]. One thread per row, 1-D grid.
// Forward: soft = softmax((logits + noise) / tau), hard = one_hot(argmax) (first index on ties),
// both overwritten. Backward (the soft path's gradient): dlogits += (1/tau) soft (dy - <dy, soft>).
#include "common.cuh"

extern "C" __global__ void gumbel_st_forward_f32(const float* __restrict__ logits, const float* __restrict__ noise, float tau, int rows,
                                                 int classes, float* __restrict__ soft, float* __restrict__ hard) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const long long base = (long long)r * classes;
    const float inv_tau = 1.0f / tau;
    float max = -INFINITY;
    int arg = 0;
    for (int c = 0; c < classes; ++c) {
        const float z = (logits[base + c] + noise[base + c]) * inv_tau;
        if (z > max) {
            max = z;
            arg = c;
        }
    }
    float sum = 0.0f;
    for (int c = 0; c < classes; ++c) {
        const float e = expf((logits[base + c] + noise[base + c]) * inv_tau - max);
        soft[base + c] = e;
        sum += e;
    }
    for (int c = 0; c < classes; ++c) {
        soft[base + c] /= sum;
        hard[base + c] = c == arg ? 1.0f : 0.0f;
    }
}

extern "C" __global__ void gumbel_st_backward_f32(const float* __restrict__ soft, const float* __restrict__ dy, float tau, int rows, int classes,
                                                  float* __restrict__ dlogits) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const long long base = (long long)r * classes;
    float dot = 0.0f;
    for (int c = 0; c < classes; ++c) dot += soft[base + c] * dy[base + c];
    for (int c = 0; c < classes; ++c) dlogits[base + c] += soft[base + c] * (dy[base + c] - dot) / tau;
}
