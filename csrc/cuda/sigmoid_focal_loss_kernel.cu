// CUDA kernels for the element-wise sigmoid focal loss and its gradient: one thread per element
// (grid-stride), the formulas of csrc/cpu/sigmoid_focal_loss_kernel.cpp computed from logits with
// log-sigmoid forms (no log(0), no overflow), in float32 for float16/bfloat16 inputs (float64
// for float64); the result has the dtype of the logits.
//
// With e = exp(-|x|), l = log1p(e), p = sigmoid(x), q = 1 - p:
//   log p = min(x, 0) - l,  log q = -max(x, 0) - l
//   loss:  positive column  -a q^g log p;   other columns  -(1 - a) p^g log q;   ignored rows 0
//   grad:  positive column  a q^g (g p log p - q);   others  (1 - a) p^g (p - g q log q)
// The backward reads a grad_output broadcast from one value (strides 0, 0: the gradient of .sum(),
// is_broadcast_scalar in ../ops.h) as that value, as the CPU kernel does, instead of materialising
// an [N, C] copy.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../ops.h"
#include "cuda_helpers.cuh"

namespace maskrcnn_benchmark {
namespace {

template <typename T>
__device__ __forceinline__ T pow_gamma(T base, T gamma, bool gamma_is_2) {
  return gamma_is_2 ? base * base : ::pow(base, gamma);
}

template <typename scalar_t, typename index_t>
__global__ void focal_forward_kernel(const scalar_t* __restrict__ logits,
                                     const int64_t* __restrict__ targets, index_t total, index_t c,
                                     double gamma, double alpha, scalar_t* __restrict__ out) {
  using acc_t = at::acc_type<scalar_t, true>;
  const acc_t g = static_cast<acc_t>(gamma), a = static_cast<acc_t>(alpha);
  const bool g2 = gamma == 2.0;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < total;
       k += index_t(gridDim.x) * blockDim.x) {
    const index_t row = k / c, col = k - row * c;
    const int64_t t = targets[row];
    if (t < 0) {
      out[k] = scalar_t(0);
      continue;
    }
    const acc_t x = static_cast<acc_t>(logits[k]);
    const acc_t e = ::exp(-::fabs(x));
    const acc_t l = ::log1p(e);
    acc_t loss;
    if (t - 1 == static_cast<int64_t>(col)) {
      const acc_t inv = acc_t(1) / (acc_t(1) + e);
      const acc_t q = x >= acc_t(0) ? e * inv : inv;
      const acc_t log_p = (x < acc_t(0) ? x : acc_t(0)) - l;
      loss = -a * pow_gamma(q, g, g2) * log_p;
    } else {
      const acc_t p = (x >= acc_t(0) ? acc_t(1) : e) / (acc_t(1) + e);
      const acc_t log_q = -(x > acc_t(0) ? x : acc_t(0)) - l;
      loss = -(acc_t(1) - a) * pow_gamma(p, g, g2) * log_q;
    }
    out[k] = static_cast<scalar_t>(loss);
  }
}

template <typename scalar_t, typename index_t>
__global__ void focal_backward_kernel(const scalar_t* __restrict__ grad_output,
                                      const scalar_t* __restrict__ logits,
                                      const int64_t* __restrict__ targets, index_t total,
                                      index_t c, double gamma, double alpha, bool scalar_grad,
                                      scalar_t* __restrict__ grad) {
  using acc_t = at::acc_type<scalar_t, true>;
  const acc_t g = static_cast<acc_t>(gamma), a = static_cast<acc_t>(alpha);
  const bool g2 = gamma == 2.0;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < total;
       k += index_t(gridDim.x) * blockDim.x) {
    const index_t row = k / c, col = k - row * c;
    const int64_t t = targets[row];
    if (t < 0) {
      grad[k] = scalar_t(0);
      continue;
    }
    const acc_t x = static_cast<acc_t>(logits[k]);
    const acc_t e = ::exp(-::fabs(x));
    const acc_t l = ::log1p(e);
    const acc_t inv = acc_t(1) / (acc_t(1) + e);
    const acc_t e_inv = e * inv;
    const acc_t p = x >= acc_t(0) ? inv : e_inv;
    const acc_t q = x >= acc_t(0) ? e_inv : inv;
    acc_t d;
    if (t - 1 == static_cast<int64_t>(col)) {
      const acc_t log_p = (x < acc_t(0) ? x : acc_t(0)) - l;
      d = a * pow_gamma(q, g, g2) * (g * p * log_p - q);
    } else {
      const acc_t log_q = -(x > acc_t(0) ? x : acc_t(0)) - l;
      d = (acc_t(1) - a) * pow_gamma(p, g, g2) * (p - g * q * log_q);
    }
    const acc_t go = static_cast<acc_t>(grad_output[scalar_grad ? index_t(0) : k]);
    grad[k] = static_cast<scalar_t>(d * go);
  }
}

void check_cuda(const at::Tensor& logits, const char* op) {
  TORCH_CHECK(logits.is_cuda(), op, ": expected CUDA tensors, got ", logits.device());
}

at::Tensor sigmoid_focal_loss_cuda(const at::Tensor& logits, const at::Tensor& targets,
                                   double gamma, double alpha) {
  check_focal_inputs(logits, targets, gamma, "sigmoid_focal_loss", /*reduced=*/true);
  check_cuda(logits, "sigmoid_focal_loss");
  const c10::cuda::CUDAGuard device_guard(logits.device());
  at::Tensor out = at::empty(logits.sizes(), logits.options());
  const int64_t total = logits.numel();
  if (total == 0) return out;
  const at::Tensor x = logits.contiguous();
  const at::Tensor t = targets.to(at::kLong).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(),
                                  "sigmoid_focal_loss_cuda", [&] {
    const auto launch = [&](auto index) {
      using index_t = decltype(index);
      focal_forward_kernel<scalar_t, index_t>
          <<<cuda::blocks_for(total), cuda::kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              x.data_ptr<scalar_t>(), t.data_ptr<int64_t>(), static_cast<index_t>(total),
              static_cast<index_t>(logits.size(1)), gamma, alpha, out.data_ptr<scalar_t>());
    };
    // 32-bit index arithmetic (row = k / C) where it fits: 64-bit division is slow on GPUs.
    if (total < (int64_t(1) << 31) - cuda::kThreads * 65536LL) launch(uint32_t{}); else launch(int64_t{});
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor sigmoid_focal_loss_backward_cuda(const at::Tensor& grad_output,
                                            const at::Tensor& logits, const at::Tensor& targets,
                                            double gamma, double alpha) {
  const char* name = "sigmoid_focal_loss_backward";
  check_focal_inputs(logits, targets, gamma, name, /*reduced=*/true);
  check_focal_grad_output(grad_output, logits);
  check_cuda(logits, name);
  const c10::cuda::CUDAGuard device_guard(logits.device());
  at::Tensor grad = at::empty(logits.sizes(), logits.options());
  const int64_t total = logits.numel();
  if (total == 0) return grad;
  const at::Tensor x = logits.contiguous();
  const bool scalar_grad = is_broadcast_scalar(grad_output);
  const at::Tensor go = scalar_grad ? grad_output : grad_output.contiguous();
  const at::Tensor t = targets.to(at::kLong).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(),
                                  "sigmoid_focal_loss_backward_cuda", [&] {
    const auto launch = [&](auto index) {
      using index_t = decltype(index);
      focal_backward_kernel<scalar_t, index_t>
          <<<cuda::blocks_for(total), cuda::kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              go.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), t.data_ptr<int64_t>(),
              static_cast<index_t>(total), static_cast<index_t>(logits.size(1)), gamma, alpha,
              scalar_grad, grad.data_ptr<scalar_t>());
    };
    if (total < (int64_t(1) << 31) - cuda::kThreads * 65536LL) launch(uint32_t{}); else launch(int64_t{});
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(maskrcnn_benchmark, CUDA, m) {
  m.impl("sigmoid_focal_loss", TORCH_FN(sigmoid_focal_loss_cuda));
  m.impl("sigmoid_focal_loss_backward", TORCH_FN(sigmoid_focal_loss_backward_cuda));
}

}  // namespace maskrcnn_benchmark
