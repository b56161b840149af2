// Optimiser kernels: PyTorch's Adam update, and the gradient norm and clipping coefficient, so that
// a training step on the GPU waits for no download before its update.
// Twins: src/cpu/optim.rs (reference), src/cuda/optim.rs (launchers).
// clip_squares_f32: x: [n] -> partial[first + b] for each block b (one double per block),
// accumulated in double like the reference; `first` lets the launches for several tensors share one
// partial buffer.
// clip_norm_f64: partial: [count] -> clip = {norm, scale, apply}: the partials summed in order by one
// thread (as the reference sums them), the norm, PyTorch's clip_grad_norm_ coefficient, and whether
// the step applies (norm and loss finite; otherwise the update leaves every tensor untouched).
// adam_update_f32: param, grad, m, v: [n]; 1-D grid-stride; updates param, m, v in place, reading
// the gradient times clip's scale, and nothing at all when clip says not to apply.
#include "common.cuh"

extern "C" __global__ void adam_update_f32(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m, float* __restrict__ v,
                                           long long n, const double* __restrict__ clip, AdamParams s) {
    if (clip[2] == 0.0) return;
    const float grad_scale = (float)clip[1];
    const float step_size = s.lr / s.bias1;
    FOR_EACH_INDEX(i, n) {
        float g = grad[i] * grad_scale;
        if (s.weight_decay != 0.0f) g += s.weight_decay * param[i];
        const float mi = s.beta1 * m[i] + (1.0f - s.beta1) * g;
        const float vi = s.beta2 * v[i] + (1.0f - s.beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        param[i] -= step_size * mi / (sqrtf(vi) / s.bias2_sqrt + s.eps);
    }
}

// Dynamic shared memory: blockDim.x / 32 doubles.
extern "C" __global__ void clip_squares_f32(const float* __restrict__ x, long long n, double* __restrict__ partial, int first) {
    DYNAMIC_SHARED(double, scratch);
    double s = 0.0;
    FOR_EACH_INDEX(i, n) s += (double)x[i] * (double)x[i];
    for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_xor_sync(FULL_MASK, s, offset);
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int w = 0; w < blockDim.x / 32; ++w) total += scratch[w];
        partial[first + blockIdx.x] = total;
    }
}

// One block; thread 0 does the (short, sequential) work.
extern "C" __global__ void clip_norm_f64(const double* __restrict__ partial, int count, const float* __restrict__ loss, double clip_norm,
                                    double* __restrict__ clip) {
    if (threadIdx.x != 0) return;
    double total = 0.0;
    for (int b = 0; b < count; ++b) total += partial[b];
    const double norm = sqrt(total);
    const double coef = clip_norm / (norm + 1e-6);
    clip[0] = norm;
    clip[1] = clip_norm > 0.0 && coef < 1.0 ? (double)(float)coef : 1.0;
    clip[2] = isfinite(norm) && isfinite(*loss) ? 1.0 : 0.0;
}
