// Geometry and argument checks of the modulated deformable convolution (DCNv2), shared by the
// CPU and CUDA kernels of maskrcnn_benchmark::deform_conv2d and _deform_conv2d_backward (schemas
// in ops.cpp).
//
//   input  [B, C, H, W]                 weight [O, C / groups, kh, kw]
//   offset [B, 2 * dg * kh * kw, Ho, Wo] mask  [B, dg * kh * kw, Ho, Wo]
//   bias   [O] or None                  output [B, O, Ho, Wo]
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace maskrcnn_benchmark {

// Sizes shared by the forward and backward kernels.
struct Geometry {
  int64_t batch, channels, height, width;   // input
  int64_t out_channels, kh, kw;             // weight
  int64_t out_h, out_w;                     // output
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t groups, deformable_groups;

  int64_t taps() const { return kh * kw; }
  int64_t columns() const { return out_h * out_w; }
  int64_t channels_per_dg() const { return channels / deformable_groups; }
};

inline Geometry check_and_get_geometry(
    const at::Tensor& input,
    const at::Tensor& weight,
    const at::Tensor& offset,
    const at::Tensor& mask,
    const std::optional<at::Tensor>& bias,
    int64_t stride_h, int64_t stride_w,
    int64_t pad_h, int64_t pad_w,
    int64_t dil_h, int64_t dil_w,
    int64_t groups, int64_t deformable_groups) {
  TORCH_CHECK(input.dim() == 4, "deform_conv2d: input must be 4-D [B, C, H, W], got ", input.dim(), "-D");
  TORCH_CHECK(weight.dim() == 4, "deform_conv2d: weight must be 4-D [O, C/groups, kh, kw], got ", weight.dim(), "-D");
  TORCH_CHECK(offset.dim() == 4, "deform_conv2d: offset must be 4-D [B, 2*dg*kh*kw, Ho, Wo], got ", offset.dim(), "-D");
  TORCH_CHECK(mask.dim() == 4, "deform_conv2d: mask must be 4-D [B, dg*kh*kw, Ho, Wo], got ", mask.dim(), "-D");
  TORCH_CHECK(weight.scalar_type() == input.scalar_type() && offset.scalar_type() == input.scalar_type() &&
                  mask.scalar_type() == input.scalar_type(),
              "deform_conv2d: input, weight, offset and mask must have the same dtype, got ", input.scalar_type(),
              ", ", weight.scalar_type(), ", ", offset.scalar_type(), ", ", mask.scalar_type());
  TORCH_CHECK(stride_h > 0 && stride_w > 0, "deform_conv2d: stride must be positive, got (", stride_h, ", ", stride_w, ")");
  TORCH_CHECK(pad_h >= 0 && pad_w >= 0, "deform_conv2d: padding must be non-negative, got (", pad_h, ", ", pad_w, ")");
  TORCH_CHECK(dil_h > 0 && dil_w > 0, "deform_conv2d: dilation must be positive, got (", dil_h, ", ", dil_w, ")");
  TORCH_CHECK(groups > 0, "deform_conv2d: groups must be positive, got ", groups);
  TORCH_CHECK(deformable_groups > 0, "deform_conv2d: deformable_groups must be positive, got ", deformable_groups);

  Geometry g;
  g.batch = input.size(0);
  g.channels = input.size(1);
  g.height = input.size(2);
  g.width = input.size(3);
  g.out_channels = weight.size(0);
  g.kh = weight.size(2);
  g.kw = weight.size(3);
  g.stride_h = stride_h; g.stride_w = stride_w;
  g.pad_h = pad_h; g.pad_w = pad_w;
  g.dil_h = dil_h; g.dil_w = dil_w;
  g.groups = groups;
  g.deformable_groups = deformable_groups;
  g.out_h = (g.height + 2 * pad_h - dil_h * (g.kh - 1) - 1) / stride_h + 1;
  g.out_w = (g.width + 2 * pad_w - dil_w * (g.kw - 1) - 1) / stride_w + 1;

  TORCH_CHECK(g.channels % groups == 0, "deform_conv2d: input channels (", g.channels,
              ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(g.out_channels % groups == 0, "deform_conv2d: weight.size(0) (", g.out_channels,
              ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(weight.size(1) * groups == g.channels, "deform_conv2d: weight.size(1) * groups must equal input channels (",
              g.channels, "), got ", weight.size(1), " * ", groups);
  TORCH_CHECK(g.channels % deformable_groups == 0, "deform_conv2d: input channels (", g.channels,
              ") must be divisible by deformable_groups (", deformable_groups, ")");
  TORCH_CHECK(g.out_h > 0 && g.out_w > 0, "deform_conv2d: output size would be (", g.out_h, ", ", g.out_w,
              "), input too small for the kernel");
  const int64_t taps = g.taps();
  TORCH_CHECK(offset.size(0) == g.batch, "deform_conv2d: offset batch size (", offset.size(0),
              ") must match input batch size (", g.batch, ")");
  TORCH_CHECK(offset.size(1) == 2 * deformable_groups * taps, "deform_conv2d: offset must have 2*deformable_groups*kh*kw=",
              2 * deformable_groups * taps, " channels, got ", offset.size(1));
  TORCH_CHECK(offset.size(2) == g.out_h && offset.size(3) == g.out_w, "deform_conv2d: offset spatial size (",
              offset.size(2), ", ", offset.size(3), ") must equal the output size (", g.out_h, ", ", g.out_w, ")");
  TORCH_CHECK(mask.size(0) == g.batch, "deform_conv2d: mask batch size (", mask.size(0),
              ") must match input batch size (", g.batch, ")");
  TORCH_CHECK(mask.size(1) == deformable_groups * taps, "deform_conv2d: mask must have deformable_groups*kh*kw=",
              deformable_groups * taps, " channels, got ", mask.size(1));
  TORCH_CHECK(mask.size(2) == g.out_h && mask.size(3) == g.out_w, "deform_conv2d: mask spatial size (",
              mask.size(2), ", ", mask.size(3), ") must equal the output size (", g.out_h, ", ", g.out_w, ")");
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.out_channels, "deform_conv2d: bias must have shape [",
                g.out_channels, "], got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == input.scalar_type(), "deform_conv2d: bias dtype ", bias->scalar_type(),
                " must match input dtype ", input.scalar_type());
  }
  return g;
}

// _deform_conv2d_backward: grad_out [B, O, Ho, Wo] with the dtype of input.
inline void check_grad_out(const at::Tensor& grad_out_, const at::Tensor& input_, const Geometry& g) {
  TORCH_CHECK(grad_out_.dim() == 4 && grad_out_.size(0) == g.batch && grad_out_.size(1) == g.out_channels &&
                  grad_out_.size(2) == g.out_h && grad_out_.size(3) == g.out_w,
              "_deform_conv2d_backward: grad_out must have shape [", g.batch, ", ", g.out_channels, ", ", g.out_h,
              ", ", g.out_w, "], got ", grad_out_.sizes());
  TORCH_CHECK(grad_out_.scalar_type() == input_.scalar_type(), "_deform_conv2d_backward: grad_out dtype ",
              grad_out_.scalar_type(), " must match input dtype ", input_.scalar_type());
}

}  // namespace maskrcnn_benchmark
