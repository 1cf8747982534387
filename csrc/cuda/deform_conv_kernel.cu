// Modulated deformable convolution (DCNv2), CUDA forward and backward, with the semantics and
// argument order of csrc/cpu/deform_conv_kernel.cpp (formula, layouts and checks in
// csrc/deform_conv_geometry.h; schemas in csrc/ops.cpp).
//
// Per image: a deformable im2col kernel fills columns [C * K, L] (K = kh * kw taps, L = Ho * Wo
// output pixels) with mask * bilinear sample (zeros outside the image, support (-1, H) x (-1, W)
// as on the CPU), then one batched GEMM per image (at::bmm over the groups, cuBLAS). Backward:
// grad_columns = W^T grad_out (GEMM); a col2im kernel scatters the bilinear weights into the input
// gradient with atomicAdd on a float32 (float64) buffer; a col2coord kernel reduces over each
// deformable group's channels for the offset and mask gradients; grad_weight += grad_out columns^T
// (GEMM on float32 columns for float16/bfloat16, so neither the columns nor each image's product
// is rounded to half). Sampling positions, weights and sums are computed in float32 for
// float16/bfloat16 inputs (at::acc_type).
// Determinism: the atomicAdd order of col2im varies from run to run, so the backward calls
// alertNotDeterministic: under torch.use_deterministic_algorithms(True) it raises (warns with
// warn_only=True). The CPU kernel is deterministic; the portable fallback's scatter_add_ follows
// torch's own deterministic-mode rules.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../deform_conv_geometry.h"
#include "../ops.h"
#include "cuda_helpers.cuh"

namespace maskrcnn_benchmark {
namespace {

// Kernel-side copy of the geometry (plain ints for the device).
struct Dims {
  int64_t channels, height, width, kh, kw, out_h, out_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, channels_per_dg;
};

Dims make_dims(const Geometry& g) {
  return {g.channels, g.height, g.width, g.kh, g.kw, g.out_h, g.out_w, g.stride_h, g.stride_w,
          g.pad_h, g.pad_w, g.dil_h, g.dil_w, g.channels_per_dg()};
}

// Sampling position of tap k at output pixel l for deformable group d (offset/mask of one image).
template <typename scalar_t, typename acc_t>
struct Sample {
  bool valid = false;
  int64_t y0 = 0, x0 = 0;  // top-left corner (may be -1)
  acc_t ly = 0, lx = 0, m = 0;

  __device__ Sample(const Dims& s, const scalar_t* offset, const scalar_t* mask, int64_t d,
                    int64_t k, int64_t l) {
    const int64_t taps = s.kh * s.kw, cols = s.out_h * s.out_w;
    const int64_t ho = l / s.out_w, wo = l - ho * s.out_w, i = k / s.kw, j = k - i * s.kw;
    const int64_t row = d * taps + k;
    const acc_t dy = static_cast<acc_t>(offset[(2 * row) * cols + l]);
    const acc_t dx = static_cast<acc_t>(offset[(2 * row + 1) * cols + l]);
    m = static_cast<acc_t>(mask[row * cols + l]);
    const acc_t y = static_cast<acc_t>(ho * s.stride_h - s.pad_h + i * s.dil_h) + dy;
    const acc_t x = static_cast<acc_t>(wo * s.stride_w - s.pad_w + j * s.dil_w) + dx;
    // Written so that NaN coordinates count as outside.
    valid = y > acc_t(-1) && y < acc_t(s.height) && x > acc_t(-1) && x < acc_t(s.width);
    if (!valid) return;
    const acc_t fy = ::floor(y), fx = ::floor(x);
    y0 = static_cast<int64_t>(fy);
    x0 = static_cast<int64_t>(fx);
    ly = y - fy;
    lx = x - fx;
  }
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t pixel(const scalar_t* plane, const Dims& s, int64_t y, int64_t x) {
  return (y >= 0 && y < s.height && x >= 0 && x < s.width)
             ? static_cast<acc_t>(plane[y * s.width + x])
             : acc_t(0);
}

// columns[c * K + k, l] = mask * x_c(sampling position), one image; written as out_t (scalar_t
// for the forward, acc_t for the weight gradient).
template <typename scalar_t, typename out_t = scalar_t>
__global__ void deformable_im2col_kernel(const scalar_t* __restrict__ im,
                                         const scalar_t* __restrict__ offset,
                                         const scalar_t* __restrict__ mask, Dims s,
                                         out_t* __restrict__ columns) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t taps = s.kh * s.kw, cols = s.out_h * s.out_w, total = s.channels * taps * cols;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t l = e % cols, ck = e / cols, k = ck % taps, c = ck / taps;
    const Sample<scalar_t, acc_t> p(s, offset, mask, c / s.channels_per_dg, k, l);
    acc_t v = 0;
    if (p.valid) {
      const scalar_t* plane = im + c * s.height * s.width;
      const acc_t a = p.ly, b = p.lx;
      // the CPU kernel's order: weights (mask * bilinear) first, then the weighted sum
      const acc_t w00 = p.m * (1 - a) * (1 - b), w01 = p.m * (1 - a) * b;
      const acc_t w10 = p.m * a * (1 - b), w11 = p.m * a * b;
      v = w00 * pixel<scalar_t, acc_t>(plane, s, p.y0, p.x0) +
          w01 * pixel<scalar_t, acc_t>(plane, s, p.y0, p.x0 + 1) +
          w10 * pixel<scalar_t, acc_t>(plane, s, p.y0 + 1, p.x0) +
          w11 * pixel<scalar_t, acc_t>(plane, s, p.y0 + 1, p.x0 + 1);
    }
    columns[e] = static_cast<out_t>(v);
  }
}

template <typename acc_t>
__device__ __forceinline__ void scatter(acc_t* plane, const Dims& s, int64_t y, int64_t x, acc_t v) {
  if (y >= 0 && y < s.height && x >= 0 && x < s.width) atomicAdd(plane + y * s.width + x, v);
}

// grad_im[c] += bilinear scatter of mask * grad_columns[c * K + k], one image (float32/64 buffer).
template <typename scalar_t, typename acc_t>
__global__ void deformable_col2im_kernel(const scalar_t* __restrict__ grad_columns,
                                         const scalar_t* __restrict__ offset,
                                         const scalar_t* __restrict__ mask, Dims s,
                                         acc_t* __restrict__ grad_im) {
  const int64_t taps = s.kh * s.kw, cols = s.out_h * s.out_w, total = s.channels * taps * cols;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t l = e % cols, ck = e / cols, k = ck % taps, c = ck / taps;
    const Sample<scalar_t, acc_t> p(s, offset, mask, c / s.channels_per_dg, k, l);
    if (!p.valid) continue;
    const acc_t gv = static_cast<acc_t>(grad_columns[e]);
    const acc_t a = p.ly, b = p.lx;
    acc_t* plane = grad_im + c * s.height * s.width;
    scatter(plane, s, p.y0, p.x0, p.m * (1 - a) * (1 - b) * gv);
    scatter(plane, s, p.y0, p.x0 + 1, p.m * (1 - a) * b * gv);
    scatter(plane, s, p.y0 + 1, p.x0, p.m * a * (1 - b) * gv);
    scatter(plane, s, p.y0 + 1, p.x0 + 1, p.m * a * b * gv);
  }
}

// Offset and mask gradients, one image; one thread per (deformable group, tap, pixel), summing
// over the group's channels. With v00..v11 the corners:
//   grad_mask = sum_c g * value,  grad_dy = m sum_c g (bottom - top),
//   grad_dx = m sum_c g ((1 - ly)(v01 - v00) + ly (v11 - v10)).
template <typename scalar_t>
__global__ void deformable_col2coord_kernel(const scalar_t* __restrict__ grad_columns,
                                            const scalar_t* __restrict__ im,
                                            const scalar_t* __restrict__ offset,
                                            const scalar_t* __restrict__ mask, Dims s,
                                            int64_t deformable_groups,
                                            scalar_t* __restrict__ grad_offset,
                                            scalar_t* __restrict__ grad_mask) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t taps = s.kh * s.kw, cols = s.out_h * s.out_w;
  const int64_t total = deformable_groups * taps * cols;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t l = e % cols, row = e / cols, k = row % taps, d = row / taps;
    const Sample<scalar_t, acc_t> p(s, offset, mask, d, k, l);
    acc_t g_m = 0, g_y = 0, g_x = 0;
    if (p.valid) {
      const acc_t a = p.ly, b = p.lx;
      for (int64_t c = d * s.channels_per_dg; c < (d + 1) * s.channels_per_dg; ++c) {
        const scalar_t* plane = im + c * s.height * s.width;
        const acc_t v00 = pixel<scalar_t, acc_t>(plane, s, p.y0, p.x0);
        const acc_t v01 = pixel<scalar_t, acc_t>(plane, s, p.y0, p.x0 + 1);
        const acc_t v10 = pixel<scalar_t, acc_t>(plane, s, p.y0 + 1, p.x0);
        const acc_t v11 = pixel<scalar_t, acc_t>(plane, s, p.y0 + 1, p.x0 + 1);
        const acc_t gv = static_cast<acc_t>(grad_columns[(c * taps + k) * cols + l]);
        const acc_t top = v00 + b * (v01 - v00), bottom = v10 + b * (v11 - v10);
        g_m += gv * (top + a * (bottom - top));
        g_y += gv * (bottom - top);
        g_x += gv * ((1 - a) * (v01 - v00) + a * (v11 - v10));
      }
    }
    grad_mask[row * cols + l] = static_cast<scalar_t>(g_m);
    grad_offset[(2 * row) * cols + l] = static_cast<scalar_t>(g_y * p.m);
    grad_offset[(2 * row + 1) * cols + l] = static_cast<scalar_t>(g_x * p.m);
  }
}

void check_cuda_inputs(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
                       const at::Tensor& mask, const at::Tensor* other, const char* other_name,
                       const char* op) {
  check_float_dtype(input, op, "input", /*reduced=*/true);
  TORCH_CHECK(input.is_cuda(), op, ": expected CUDA tensors, got input on ", input.device());
  const std::pair<const char*, const at::Tensor*> rest[] = {
      {"weight", &weight}, {"offset", &offset}, {"mask", &mask}, {other_name, other}};
  for (const auto& [name, t] : rest) {
    if (t != nullptr && t->defined()) {
      TORCH_CHECK(t->device() == input.device(), op, ": ", name, " must be on the device of input (",
                  input.device(), "), got ", t->device());
    }
  }
}

at::Tensor deform_conv2d_forward_cuda(
    const at::Tensor& input_, const at::Tensor& weight_, const at::Tensor& offset_,
    const at::Tensor& mask_, const std::optional<at::Tensor>& bias, int64_t stride_h,
    int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dil_h, int64_t dil_w, int64_t groups,
    int64_t deformable_groups) {
  const Geometry g = check_and_get_geometry(input_, weight_, offset_, mask_, bias, stride_h,
                                            stride_w, pad_h, pad_w, dil_h, dil_w, groups,
                                            deformable_groups);
  check_cuda_inputs(input_, weight_, offset_, mask_, bias.has_value() ? &*bias : nullptr, "bias",
                    "deform_conv2d");
  const c10::cuda::CUDAGuard device_guard(input_.device());
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input_.options());
  if (g.batch == 0) return output;
  const at::Tensor input = input_.contiguous(), weight = weight_.contiguous();
  const at::Tensor offset = offset_.contiguous(), mask = mask_.contiguous();
  const int64_t taps = g.taps(), cols = g.columns();
  const at::Tensor w = weight.view({groups, g.out_channels / groups, -1});
  at::Tensor columns = at::empty({g.channels * taps, cols}, input.options());
  const Dims s = make_dims(g);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "deform_conv2d_forward_cuda", [&] {
    for (int64_t b = 0; b < g.batch; ++b) {  // images; each step is two kernels on the stream
      deformable_im2col_kernel<scalar_t>
          <<<cuda::blocks_for(columns.numel()), cuda::kThreads, 0, stream>>>(
              input[b].data_ptr<scalar_t>(), offset[b].data_ptr<scalar_t>(),
              mask[b].data_ptr<scalar_t>(), s, columns.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      at::Tensor out_b = output[b].view({groups, g.out_channels / groups, cols});  // bmm_out: lvalue
      at::bmm_out(out_b, w,
                  columns.view({groups, -1, cols}));
    }
  });
  if (bias.has_value() && bias->defined()) {
    output.add_(bias->view({1, g.out_channels, 1, 1}));
  }
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cuda(
    const at::Tensor& grad_out_, const at::Tensor& input_, const at::Tensor& weight_,
    const at::Tensor& offset_, const at::Tensor& mask_, int64_t stride_h, int64_t stride_w,
    int64_t pad_h, int64_t pad_w, int64_t dil_h, int64_t dil_w, int64_t groups,
    int64_t deformable_groups) {
  const Geometry g = check_and_get_geometry(input_, weight_, offset_, mask_, std::nullopt, stride_h,
                                            stride_w, pad_h, pad_w, dil_h, dil_w, groups,
                                            deformable_groups);
  check_grad_out(grad_out_, input_, g);
  check_cuda_inputs(input_, weight_, offset_, mask_, &grad_out_, "grad_out",
                    "_deform_conv2d_backward");
  at::globalContext().alertNotDeterministic(
      "maskrcnn_benchmark::_deform_conv2d_backward (CUDA: atomicAdd into the input gradient)");
  const c10::cuda::CUDAGuard device_guard(input_.device());
  const at::Tensor grad_out = grad_out_.contiguous(), input = input_.contiguous();
  const at::Tensor weight = weight_.contiguous(), offset = offset_.contiguous();
  const at::Tensor mask = mask_.contiguous();
  const auto acc_dtype = at::toAccumulateType(input.scalar_type(), /*is_cuda=*/true);

  at::Tensor grad_input = at::empty_like(input);
  at::Tensor grad_offset = at::empty_like(offset);
  at::Tensor grad_mask = at::empty_like(mask);
  at::Tensor grad_bias = grad_out.sum({0, 2, 3});
  if (g.batch == 0) {
    return {grad_input, at::zeros_like(weight), grad_offset, grad_mask, grad_bias};
  }
  const int64_t taps = g.taps(), cols = g.columns();
  const at::Tensor w_t = weight.view({groups, g.out_channels / groups, -1}).transpose(1, 2);
  at::Tensor grad_w = at::zeros({groups, g.out_channels / groups, weight[0].numel()},
                                weight.options().dtype(acc_dtype));
  at::Tensor columns = at::empty({g.channels * taps, cols}, input.options().dtype(acc_dtype));
  at::Tensor grad_im = at::empty({g.channels, g.height, g.width}, input.options().dtype(acc_dtype));
  const Dims s = make_dims(g);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "deform_conv2d_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const int64_t col_blocks = cuda::blocks_for(columns.numel());
    for (int64_t b = 0; b < g.batch; ++b) {
      const scalar_t* im = input[b].data_ptr<scalar_t>();
      const scalar_t* off = offset[b].data_ptr<scalar_t>();
      const scalar_t* msk = mask[b].data_ptr<scalar_t>();
      const at::Tensor gout_b = grad_out[b].view({groups, g.out_channels / groups, cols});
      // d loss / d columns = W^T grad_out, per group.
      const at::Tensor grad_columns = at::bmm(w_t, gout_b).view({g.channels * taps, cols});
      grad_im.zero_();
      deformable_col2im_kernel<scalar_t, acc_t><<<col_blocks, cuda::kThreads, 0, stream>>>(
          grad_columns.data_ptr<scalar_t>(), off, msk, s, grad_im.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      grad_input[b].copy_(grad_im);
      deformable_col2coord_kernel<scalar_t>
          <<<cuda::blocks_for(deformable_groups * taps * cols), cuda::kThreads, 0, stream>>>(
              grad_columns.data_ptr<scalar_t>(), im, off, msk, s, deformable_groups,
              grad_offset[b].data_ptr<scalar_t>(), grad_mask[b].data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      // d loss / d W += grad_out columns^T, per group, in acc_t (float32 for float16/bfloat16:
      // columns sampled in acc_t, grad_out widened, so no per-image product is rounded to half).
      deformable_im2col_kernel<scalar_t, acc_t><<<col_blocks, cuda::kThreads, 0, stream>>>(
          im, off, msk, s, columns.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      grad_w.baddbmm_(gout_b.to(acc_dtype), columns.view({groups, -1, cols}).transpose(1, 2));
    }
  });
  return {grad_input, grad_w.view(weight.sizes()).to(weight.scalar_type()), grad_offset,
          grad_mask, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(maskrcnn_benchmark, CUDA, m) {
  m.impl("deform_conv2d", TORCH_FN(deform_conv2d_forward_cuda));
  m.impl("_deform_conv2d_backward", TORCH_FN(deform_conv2d_backward_cuda));
}

}  // namespace maskrcnn_benchmark
