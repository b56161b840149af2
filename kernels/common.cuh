// Helpers shared by every kernel family. Conventions (see kernels/README.md):
// - shared memory is dynamic, declared once per kernel with DYNAMIC_SHARED and carved by hand, so
//   the CPU emulator can poison it per block;
// - block sizes are multiples of 32 (the launchers choose them), so warp reductions see full warps;
// - forward kernels overwrite their outputs, backward kernels accumulate (+=) into gradients.
#pragma once

#include "params.h"

#ifndef CUDA_EMULATION
#define DYNAMIC_SHARED(type, name)                        \
    extern __shared__ __align__(16) unsigned char name##_bytes[]; \
    type* name = reinterpret_cast<type*>(name##_bytes)
#endif

#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;
}

// Sum over the whole block, returned to every thread. `scratch` holds blockDim.x / 32 floats; the
// leading barrier lets a caller reuse the same scratch for consecutive reductions.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    v = warp_sum(v);
    const int warps = blockDim.x / 32;
    __syncthreads();
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < warps; ++w) total += scratch[w];
    return total;
}

// Counter-based random draws, twin of cpu::counter_draw: draw i of stream `key` is SplitMix64's
// finaliser of key + i * golden (integer arithmetic: the same bits on every engine).
__device__ __forceinline__ unsigned long long counter_draw(unsigned long long key, unsigned long long i) {
    unsigned long long z = key + i * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Grid-stride loop over `n` elements.
#define FOR_EACH_INDEX(i, n) for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (long long)(n); i += (long long)gridDim.x * blockDim.x)

// An IEEE half (binary16) bit pattern as a float, exactly: written out because the emulator has no
// cuda_fp16.h. Subnormal halves are mant * 2^-24; exponent 31 is infinity or NaN.
__device__ __forceinline__ float half_bits_to_float(unsigned short h) {
    const unsigned int sign = (unsigned int)(h & 0x8000u) << 16;
    const unsigned int exponent = (h >> 10) & 0x1fu;
    const unsigned int mantissa = h & 0x3ffu;
    if (exponent == 0) {
        const float magnitude = (float)mantissa * 5.9604644775390625e-8f;
        return sign ? -magnitude : magnitude;
    }
    const unsigned int bits = exponent == 31 ? (0x7f800000u | (mantissa << 13)) : (((exponent + 112u) << 23) | (mantissa << 13));
    return __int_as_float((int)(sign | bits));
}
