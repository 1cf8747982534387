// CUDA kernel for box_iou: one thread per (i, j), 32 x 8 blocks with j along x (coalesced
// writes); boxes2's tile is staged in shared memory. Computed in float32 (float64 for float64
// boxes) with the CPU kernel's formula and roundings; the output has the dtype of the input.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../ops.h"
#include "cuda_helpers.cuh"

namespace maskrcnn_benchmark {
namespace {

constexpr int kTileX = 32, kTileY = 8;

template <typename scalar_t>
__global__ void box_iou_kernel(const scalar_t* __restrict__ b1, const scalar_t* __restrict__ b2,
                               int64_t n, int64_t m, scalar_t* __restrict__ out) {
  using acc_t = at::acc_type<scalar_t, true>;
  __shared__ acc_t tile[kTileX * 4];
  for (int64_t j0 = int64_t(blockIdx.x) * kTileX; j0 < m; j0 += int64_t(gridDim.x) * kTileX) {
    const int64_t j = j0 + threadIdx.x;
    __syncthreads();
    if (threadIdx.y == 0 && j < m) {
#pragma unroll
      for (int d = 0; d < 4; ++d) tile[threadIdx.x * 4 + d] = static_cast<acc_t>(b2[j * 4 + d]);
    }
    __syncthreads();
    if (j >= m) continue;
    const acc_t* c = tile + threadIdx.x * 4;
    for (int64_t i = int64_t(blockIdx.y) * kTileY + threadIdx.y; i < n;
         i += int64_t(gridDim.y) * kTileY) {
      const scalar_t* a = b1 + i * 4;
      out[i * m + j] = static_cast<scalar_t>(
          cuda::iou(static_cast<acc_t>(a[0]), static_cast<acc_t>(a[1]), static_cast<acc_t>(a[2]),
                    static_cast<acc_t>(a[3]), c[0], c[1], c[2], c[3]));
    }
  }
}

at::Tensor box_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_box_iou_inputs(boxes1, boxes2, /*reduced=*/true);
  TORCH_CHECK(boxes1.is_cuda(), "box_iou: expected CUDA tensors, got ", boxes1.device());
  const c10::cuda::CUDAGuard device_guard(boxes1.device());
  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  at::Tensor out = at::empty({n, m}, boxes1.options());
  if (n == 0 || m == 0) return out;
  const at::Tensor b1 = boxes1.contiguous(), b2 = boxes2.contiguous();
  const dim3 block(kTileX, kTileY);
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>((m + kTileX - 1) / kTileX, 65535)),
                  static_cast<unsigned>(std::min<int64_t>((n + kTileY - 1) / kTileY, 65535)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou_cuda", [&] {
    box_iou_kernel<scalar_t><<<grid, block, 0, at::cuda::getCurrentCUDAStream()>>>(
        b1.data_ptr<scalar_t>(), b2.data_ptr<scalar_t>(), n, m, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(maskrcnn_benchmark, CUDA, m) { m.impl("box_iou", TORCH_FN(box_iou_cuda)); }

}  // namespace maskrcnn_benchmark
