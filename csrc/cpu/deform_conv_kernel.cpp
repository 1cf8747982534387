// Modulated deformable convolution (DCNv2), CPU forward and backward.
//
//   y[b, o, p] = bias[o] + sum_{c in group(o)} sum_k w[o, c, k]
//                * x_c(p0 + p_k + dp_k) * m_k(p)
//
// x_c(.) is bilinear interpolation of input channel c with zeros outside the
// image, p0 = (ho * stride_h - pad_h, wo * stride_w - pad_w), p_k the dilated
// kernel tap, dp_k = (offset[b, 2k], offset[b, 2k + 1]) = (dy, dx) of the
// channel's deformable group (interleaved as in the original DCN and in
// torchvision) and m_k = mask[b, k] (already in [0, 1]).
//
// Implementation: a per-image sampling plan (corner index, mask-weighted
// bilinear weights per deformable group, tap and output pixel, computed once
// and shared by the group's channels), deformable im2col (sampled columns) +
// one batched GEMM per image; backward is GEMMs for weight/columns, a col2im
// bilinear scatter for the input (parallel over channels, so no races), and
// per-tap reductions over channels for offset and mask.
//
// Layouts:
//   input  [B, C, H, W]                 weight [O, C / groups, kh, kw]
//   offset [B, 2 * dg * kh * kw, Ho, Wo] mask  [B, dg * kh * kw, Ho, Wo]
//   bias   [O] or None                  output [B, O, Ho, Wo]
//
// Schemas in csrc/ops.cpp; geometry and checks in csrc/deform_conv_geometry.h
// (shared with the CUDA kernel, csrc/cuda/deform_conv_kernel.cu).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "../deform_conv_geometry.h"

namespace maskrcnn_benchmark {
namespace {

// Rows per parallel chunk so that a chunk holds roughly 16k sampled values
// (small problems run on one thread: no OpenMP overhead).
inline int64_t grain_for(int64_t row_length) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_length));
}

// Bilinear sampling plan of one image, shared by all channels of a deformable
// group. The input is zero-padded by one pixel on each side (planes of
// (H + 2) x (W + 2)), so every corner of a sample in the support
// (-1, H) x (-1, W) is a valid index and no per-corner bounds checks are needed.
// Entry (d, k, l), for deformable group d, tap k and output pixel l:
//   corner: index of the top-left corner in the padded plane,
//   weight: the four bilinear weights times the mask (zero outside the support),
//   ly, lx: fractional parts, valid: 1 inside the support, 0 outside.
template <typename T>
struct SamplingPlan {
  int64_t padded_w = 0;
  std::vector<int64_t> corner;
  std::vector<T> weight;  // 4 per entry: (y0, x0), (y0, x1), (y1, x0), (y1, x1)
  std::vector<T> ly, lx, valid;

  SamplingPlan(const Geometry& g, const T* offset, const T* mask) {
    const int64_t taps = g.taps(), cols = g.columns(), n = g.deformable_groups * taps * cols;
    padded_w = g.width + 2;
    corner.assign(n, 0);
    weight.assign(4 * n, T(0));
    ly.assign(n, T(0));
    lx.assign(n, T(0));
    valid.assign(n, T(0));
    at::parallel_for(0, g.deformable_groups * taps, grain_for(cols), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t k = row % taps, i = k / g.kw, j = k % g.kw;
        const T* off_y = offset + row * 2 * cols;
        const T* off_x = off_y + cols;
        const T* m = mask + row * cols;
        for (int64_t ho = 0; ho < g.out_h; ++ho) {
          for (int64_t wo = 0; wo < g.out_w; ++wo) {
            const int64_t l = ho * g.out_w + wo, e = row * cols + l;
            const T y = static_cast<T>(ho * g.stride_h - g.pad_h + i * g.dil_h) + off_y[l];
            const T x = static_cast<T>(wo * g.stride_w - g.pad_w + j * g.dil_w) + off_x[l];
            // Written so that NaN coordinates count as outside.
            if (!(y > T(-1) && y < T(g.height) && x > T(-1) && x < T(g.width))) continue;
            const T fy = std::floor(y), fx = std::floor(x);
            const T a = y - fy, b = x - fx;
            corner[e] = (static_cast<int64_t>(fy) + 1) * padded_w + static_cast<int64_t>(fx) + 1;
            ly[e] = a;
            lx[e] = b;
            valid[e] = T(1);
            T* w = weight.data() + 4 * e;
            w[0] = m[l] * (1 - a) * (1 - b);
            w[1] = m[l] * (1 - a) * b;
            w[2] = m[l] * a * (1 - b);
            w[3] = m[l] * a * b;
          }
        }
      }
    });
  }
};

// columns[c * K + k, l] = mask * x_c(sampling position of tap k at l), one image.
// padded_im [C, H + 2, W + 2], columns [C * K, L].
template <typename T>
void deformable_im2col(const Geometry& g, const SamplingPlan<T>& plan, const T* padded_im, T* columns) {
  const int64_t taps = g.taps(), cols = g.columns(), cpd = g.channels_per_dg();
  const int64_t pw = plan.padded_w, plane_size = (g.height + 2) * pw;
  at::parallel_for(0, g.channels * taps, grain_for(cols), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t c = row / taps, k = row % taps, e0 = ((c / cpd) * taps + k) * cols;
      const T* plane = padded_im + c * plane_size;
      const int64_t* corner = plan.corner.data() + e0;
      const T* w = plan.weight.data() + 4 * e0;
      T* out = columns + row * cols;
      for (int64_t l = 0; l < cols; ++l) {
        const T* p = plane + corner[l];
        out[l] = w[4 * l] * p[0] + w[4 * l + 1] * p[1] + w[4 * l + 2] * p[pw] + w[4 * l + 3] * p[pw + 1];
      }
    }
  });
}

// grad_padded_im[c] += bilinear scatter of mask * grad_columns[c * K + k], one
// image. Parallel over channels: each thread owns whole planes, so no races.
template <typename T>
void deformable_col2im(const Geometry& g, const SamplingPlan<T>& plan, const T* grad_columns, T* grad_padded_im) {
  const int64_t taps = g.taps(), cols = g.columns(), cpd = g.channels_per_dg();
  const int64_t pw = plan.padded_w, plane_size = (g.height + 2) * pw;
  at::parallel_for(0, g.channels, grain_for(taps * cols), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      T* plane = grad_padded_im + c * plane_size;
      for (int64_t k = 0; k < taps; ++k) {
        const int64_t e0 = ((c / cpd) * taps + k) * cols;
        const int64_t* corner = plan.corner.data() + e0;
        const T* w = plan.weight.data() + 4 * e0;
        const T* gcol = grad_columns + (c * taps + k) * cols;
        for (int64_t l = 0; l < cols; ++l) {
          T* p = plane + corner[l];
          const T gv = gcol[l];
          p[0] += w[4 * l] * gv;
          p[1] += w[4 * l + 1] * gv;
          p[pw] += w[4 * l + 2] * gv;
          p[pw + 1] += w[4 * l + 3] * gv;
        }
      }
    }
  });
}

// Gradients of offset and mask, one image. With v00..v11 the corners and
// hy = 1 - ly, hx = 1 - lx:
//   value = hy hx v00 + hy lx v01 + ly hx v10 + ly lx v11
//   d value / dy = hx (v10 - v00) + lx (v11 - v01)
//   d value / dx = hy (v01 - v00) + ly (v11 - v10)
//   grad_mask[d, k, l]         = sum_{c in d} grad_columns[c, k, l] * value
//   grad_offset[d, 2k (+1), l] = sum_{c in d} grad_columns[c, k, l] * mask * d value / dy (dx)
// Parallel over (deformable group, tap): each owns distinct output rows.
template <typename T>
void deformable_col2coord(const Geometry& g, const SamplingPlan<T>& plan, const T* grad_columns,
                          const T* padded_im, const T* mask, T* grad_offset, T* grad_mask) {
  const int64_t taps = g.taps(), cols = g.columns(), cpd = g.channels_per_dg();
  const int64_t pw = plan.padded_w, plane_size = (g.height + 2) * pw;
  at::parallel_for(0, g.deformable_groups * taps, grain_for(cpd * cols), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t d = row / taps, k = row % taps, e0 = row * cols;
      const int64_t* corner = plan.corner.data() + e0;
      const T* ly = plan.ly.data() + e0;
      const T* lx = plan.lx.data() + e0;
      const T* valid = plan.valid.data() + e0;
      const T* m = mask + row * cols;
      T* g_off_y = grad_offset + row * 2 * cols;
      T* g_off_x = g_off_y + cols;
      T* g_m = grad_mask + row * cols;
      for (int64_t c = d * cpd; c < (d + 1) * cpd; ++c) {
        const T* plane = padded_im + c * plane_size;
        const T* gcol = grad_columns + (c * taps + k) * cols;
        for (int64_t l = 0; l < cols; ++l) {
          const T* p = plane + corner[l];
          const T v00 = p[0], v01 = p[1], v10 = p[pw], v11 = p[pw + 1];
          const T a = ly[l], b = lx[l], gv = gcol[l] * valid[l];
          const T top = v00 + b * (v01 - v00), bottom = v10 + b * (v11 - v10);
          g_m[l] += gv * (top + a * (bottom - top));
          g_off_y[l] += gv * (bottom - top);
          g_off_x[l] += gv * ((1 - a) * (v01 - v00) + a * (v11 - v10));
        }
      }
      for (int64_t l = 0; l < cols; ++l) {
        g_off_y[l] *= m[l];
        g_off_x[l] *= m[l];
      }
    }
  });
}

at::Tensor deform_conv2d_forward_cpu(
    const at::Tensor& input_, const at::Tensor& weight_, const at::Tensor& offset_, const at::Tensor& mask_,
    const std::optional<at::Tensor>& bias,
    int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dil_h, int64_t dil_w,
    int64_t groups, int64_t deformable_groups) {
  const Geometry g = check_and_get_geometry(input_, weight_, offset_, mask_, bias, stride_h, stride_w, pad_h, pad_w,
                                            dil_h, dil_w, groups, deformable_groups);
  at::Tensor output = at::zeros({g.batch, g.out_channels, g.out_h, g.out_w}, input_.options());
  if (g.batch == 0) return output;
  const at::Tensor padded = at::constant_pad_nd(input_, {1, 1, 1, 1}, 0).contiguous();
  const at::Tensor weight = weight_.contiguous(), offset = offset_.contiguous(), mask = mask_.contiguous();
  const int64_t taps = g.taps(), cols = g.columns();
  // weight as [groups, O / groups, C / groups * K]; columns as [groups, C / groups * K, L].
  const at::Tensor w = weight.view({groups, g.out_channels / groups, -1});
  at::Tensor columns = at::empty({g.channels * taps, cols}, input_.options());

  AT_DISPATCH_FLOATING_TYPES(input_.scalar_type(), "deform_conv2d_forward_cpu", [&] {
    for (int64_t b = 0; b < g.batch; ++b) {
      const SamplingPlan<scalar_t> plan(g, offset[b].data_ptr<scalar_t>(), mask[b].data_ptr<scalar_t>());
      deformable_im2col<scalar_t>(g, plan, padded[b].data_ptr<scalar_t>(), columns.data_ptr<scalar_t>());
      // (bmm + copy: bmm_out into a view takes a slow path for small float64 inputs.)
      output[b].view({groups, g.out_channels / groups, cols}).copy_(at::bmm(w, columns.view({groups, -1, cols})));
    }
  });
  if (bias.has_value() && bias->defined()) {
    output.add_(bias->view({1, g.out_channels, 1, 1}));
  }
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cpu(
    const at::Tensor& grad_out_, const at::Tensor& input_, const at::Tensor& weight_, const at::Tensor& offset_,
    const at::Tensor& mask_,
    int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dil_h, int64_t dil_w,
    int64_t groups, int64_t deformable_groups) {
  const Geometry g = check_and_get_geometry(input_, weight_, offset_, mask_, std::nullopt, stride_h, stride_w, pad_h,
                                            pad_w, dil_h, dil_w, groups, deformable_groups);
  check_grad_out(grad_out_, input_, g);
  const at::Tensor grad_out = grad_out_.contiguous(), weight = weight_.contiguous();
  const at::Tensor offset = offset_.contiguous(), mask = mask_.contiguous();

  at::Tensor grad_input = at::zeros_like(input_, at::MemoryFormat::Contiguous);
  at::Tensor grad_weight = at::zeros_like(weight);
  at::Tensor grad_offset = at::zeros_like(offset);
  at::Tensor grad_mask = at::zeros_like(mask);
  at::Tensor grad_bias = grad_out.sum({0, 2, 3});
  if (g.batch == 0) return {grad_input, grad_weight, grad_offset, grad_mask, grad_bias};

  const at::Tensor padded = at::constant_pad_nd(input_, {1, 1, 1, 1}, 0).contiguous();
  const int64_t taps = g.taps(), cols = g.columns();
  const at::Tensor w_t = weight.view({groups, g.out_channels / groups, -1}).transpose(1, 2);
  at::Tensor grad_w = grad_weight.view({groups, g.out_channels / groups, -1});
  at::Tensor columns = at::empty({g.channels * taps, cols}, input_.options());
  at::Tensor grad_padded = at::empty({g.channels, g.height + 2, g.width + 2}, input_.options());

  AT_DISPATCH_FLOATING_TYPES(input_.scalar_type(), "deform_conv2d_backward_cpu", [&] {
    for (int64_t b = 0; b < g.batch; ++b) {
      const scalar_t* im = padded[b].data_ptr<scalar_t>();
      const SamplingPlan<scalar_t> plan(g, offset[b].data_ptr<scalar_t>(), mask[b].data_ptr<scalar_t>());
      const at::Tensor gout_b = grad_out[b].view({groups, g.out_channels / groups, cols});
      // d loss / d columns = W^T grad_out, per group.
      const at::Tensor grad_columns = at::bmm(w_t, gout_b).view({g.channels * taps, cols});
      grad_padded.zero_();
      deformable_col2im<scalar_t>(g, plan, grad_columns.data_ptr<scalar_t>(), grad_padded.data_ptr<scalar_t>());
      grad_input[b].copy_(grad_padded.slice(1, 1, g.height + 1).slice(2, 1, g.width + 1));
      deformable_col2coord<scalar_t>(g, plan, grad_columns.data_ptr<scalar_t>(), im, mask[b].data_ptr<scalar_t>(),
                                     grad_offset[b].data_ptr<scalar_t>(), grad_mask[b].data_ptr<scalar_t>());
      // d loss / d W += grad_out columns^T, per group.
      deformable_im2col<scalar_t>(g, plan, im, columns.data_ptr<scalar_t>());
      grad_w.add_(at::bmm(gout_b, columns.view({groups, -1, cols}).transpose(1, 2)));
    }
  });
  return {grad_input, grad_weight, grad_offset, grad_mask, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(maskrcnn_benchmark, CPU, m) {
  m.impl("deform_conv2d", &deform_conv2d_forward_cpu);
  m.impl("_deform_conv2d_backward", &deform_conv2d_backward_cpu);
}

}  // namespace maskrcnn_benchmark
