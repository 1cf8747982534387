// Small helpers shared by the CUDA kernels of csrc/cuda/.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <cstdint>

namespace maskrcnn_benchmark {
namespace cuda {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n elements (capped; the loop covers the rest).
inline int64_t blocks_for(int64_t n, int threads = kThreads) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, sms * 32));
}

// Products rounded once, never contracted into an FMA with a following add: the IoU of the CUDA
// kernels is then computed with the same roundings as the CPU kernels (which GCC does not
// contract on x86-64), so NMS decisions at the threshold agree.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// IoU of two boxes (x1, y1, x2, y2) with the CPU kernels' formula: 0 where the union is <= 0.
template <typename T>
__device__ __forceinline__ T iou(T ax1, T ay1, T ax2, T ay2, T bx1, T by1, T bx2, T by2) {
  const T area_a = mul_rn(ax2 - ax1, ay2 - ay1);
  const T area_b = mul_rn(bx2 - bx1, by2 - by1);
  const T w = (ax2 < bx2 ? ax2 : bx2) - (ax1 > bx1 ? ax1 : bx1);
  const T h = (ay2 < by2 ? ay2 : by2) - (ay1 > by1 ? ay1 : by1);
  const T inter = mul_rn(w > T(0) ? w : T(0), h > T(0) ? h : T(0));
  const T uni = area_a + area_b - inter;
  return inter / (uni > T(0) ? uni : T(1));
}

}  // namespace cuda
}  // namespace maskrcnn_benchmark
