// Kernels that are wrong on purpose, built only for the emulator: tests/kernels.rs checks that the
// emulator reports each mistake (it is what makes the emulated kernel tests able to fail).
#include "common.cuh"

// A barrier only some threads reach: a GPU hangs or misbehaves; the emulator must report it.
extern "C" __global__ void selftest_divergent_barrier_f32(float* out) {
    if (threadIdx.x < 5) __syncthreads();
    out[threadIdx.x] = 1.0f;
}

// Reads a neighbour's shared-memory slot without the barrier between the write and the read:
// in forward thread order the neighbour has not written yet and the read sees the poison (NaN).
extern "C" __global__ void selftest_missing_barrier_f32(float* out) {
    DYNAMIC_SHARED(float, slots);
    slots[threadIdx.x] = (float)threadIdx.x;
    out[threadIdx.x] = slots[(threadIdx.x + 1) % blockDim.x];
}

// The same with the barrier: correct in every order.
extern "C" __global__ void selftest_with_barrier_f32(float* out) {
    DYNAMIC_SHARED(float, slots);
    slots[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = slots[(threadIdx.x + 1) % blockDim.x];
}

// A shuffle that reads a lane outside its mask (undefined on a GPU).
extern "C" __global__ void selftest_shuffle_outside_mask_f32(float* out) {
    if (threadIdx.x % 32 == 0) out[threadIdx.x] = __shfl_sync(0x1u, 1.0f, 3);
}
