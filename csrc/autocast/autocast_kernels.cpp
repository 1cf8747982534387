// Autocast kernels of every maskrcnn_benchmark operator (CUDA: key Autocast; CPU: AutocastCPU).
//
// Under torch.autocast(float16 / bfloat16) the inputs of these ops may arrive in reduced precision
// (boxes and scores from a half-precision head, logits, a DCN layer's input after a conv). The
// IoUs, NMS and losses must not run in float16/bfloat16 (IoU thresholds and log-probabilities
// lose most of their digits), and the CPU kernels accept float32/float64 only. So each kernel
// here casts its floating inputs to float32 (float64 stays float64: at::autocast::cached_cast
// leaves it alone), runs the op with autocast excluded, and returns:
//   nms, batched_nms            int64 indices (unchanged);
//   box_iou                     float32 IoUs;
//   sigmoid_focal_loss (+bwd)   float32 loss / gradient (a loss, like binary_cross_entropy_with_logits);
//   deform_conv2d               float32 compute (bilinear sampling positions need float32), the
//                               output cast back to the dtype of `input`, as a conv under autocast;
//   _deform_conv2d_backward     float32 gradients.
// Autocast is above Autograd in the dispatch order, so the casts are differentiable and gradients
// reach the original (reduced-precision) tensors in their own dtype.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace maskrcnn_benchmark {
namespace {

template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

template <c10::DeviceType D>
at::Tensor f32(const at::Tensor& t) {
  return at::autocast::cached_cast(at::kFloat, t, D);
}

template <c10::DeviceType D>
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{at::autocast::get_autocast_dispatch_key_from_device_type(D)};
};

template <c10::DeviceType D>
at::Tensor nms_autocast(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  static auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, double)>(
      "maskrcnn_benchmark::nms");
  NoAutocast<D> no_autocast;
  return op.call(f32<D>(boxes), f32<D>(scores), iou_threshold);
}

template <c10::DeviceType D>
at::Tensor batched_nms_autocast(const at::Tensor& boxes, const at::Tensor& scores,
                                const at::Tensor& idxs, double iou_threshold) {
  static auto op =
      find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>(
          "maskrcnn_benchmark::batched_nms");
  NoAutocast<D> no_autocast;
  return op.call(f32<D>(boxes), f32<D>(scores), idxs, iou_threshold);
}

template <c10::DeviceType D>
at::Tensor box_iou_autocast(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  static auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&)>(
      "maskrcnn_benchmark::box_iou");
  NoAutocast<D> no_autocast;
  return op.call(f32<D>(boxes1), f32<D>(boxes2));
}

template <c10::DeviceType D>
at::Tensor sigmoid_focal_loss_autocast(const at::Tensor& logits, const at::Tensor& targets,
                                       double gamma, double alpha) {
  static auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, double, double)>(
      "maskrcnn_benchmark::sigmoid_focal_loss");
  NoAutocast<D> no_autocast;
  return op.call(f32<D>(logits), targets, gamma, alpha);
}

template <c10::DeviceType D>
at::Tensor sigmoid_focal_loss_backward_autocast(const at::Tensor& grad_output,
                                                const at::Tensor& logits,
                                                const at::Tensor& targets, double gamma,
                                                double alpha) {
  static auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      double, double)>(
      "maskrcnn_benchmark::sigmoid_focal_loss_backward");
  NoAutocast<D> no_autocast;
  return op.call(f32<D>(grad_output), f32<D>(logits), targets, gamma, alpha);
}

using DeformSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const std::optional<at::Tensor>&, int64_t,
                             int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t);

template <c10::DeviceType D>
at::Tensor deform_conv2d_autocast(const at::Tensor& input, const at::Tensor& weight,
                                  const at::Tensor& offset, const at::Tensor& mask,
                                  const std::optional<at::Tensor>& bias, int64_t stride_h,
                                  int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dil_h,
                                  int64_t dil_w, int64_t groups, int64_t deformable_groups) {
  static auto op = find_op<DeformSig>("maskrcnn_benchmark::deform_conv2d");
  NoAutocast<D> no_autocast;
  return op
      .call(f32<D>(input), f32<D>(weight), f32<D>(offset), f32<D>(mask),
            at::autocast::cached_cast(at::kFloat, bias, D), stride_h, stride_w, pad_h, pad_w,
            dil_h, dil_w, groups, deformable_groups)
      .to(input.scalar_type());
}

using DeformGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using DeformBackwardSig = DeformGrads(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                                      int64_t, int64_t, int64_t, int64_t, int64_t, int64_t);

template <c10::DeviceType D>
DeformGrads deform_conv2d_backward_autocast(const at::Tensor& grad_out, const at::Tensor& input,
                                            const at::Tensor& weight, const at::Tensor& offset,
                                            const at::Tensor& mask, int64_t stride_h,
                                            int64_t stride_w, int64_t pad_h, int64_t pad_w,
                                            int64_t dil_h, int64_t dil_w, int64_t groups,
                                            int64_t deformable_groups) {
  static auto op = find_op<DeformBackwardSig>("maskrcnn_benchmark::_deform_conv2d_backward");
  NoAutocast<D> no_autocast;
  return op.call(f32<D>(grad_out), f32<D>(input), f32<D>(weight), f32<D>(offset), f32<D>(mask),
                 stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups, deformable_groups);
}

template <c10::DeviceType D>
void register_autocast(torch::Library& m) {
  m.impl("nms", TORCH_FN(nms_autocast<D>));
  m.impl("batched_nms", TORCH_FN(batched_nms_autocast<D>));
  m.impl("box_iou", TORCH_FN(box_iou_autocast<D>));
  m.impl("sigmoid_focal_loss", TORCH_FN(sigmoid_focal_loss_autocast<D>));
  m.impl("sigmoid_focal_loss_backward", TORCH_FN(sigmoid_focal_loss_backward_autocast<D>));
  m.impl("deform_conv2d", TORCH_FN(deform_conv2d_autocast<D>));
  m.impl("_deform_conv2d_backward", TORCH_FN(deform_conv2d_backward_autocast<D>));
}

}  // namespace

TORCH_LIBRARY_IMPL(maskrcnn_benchmark, Autocast, m) { register_autocast<c10::DeviceType::CUDA>(m); }

TORCH_LIBRARY_IMPL(maskrcnn_benchmark, AutocastCPU, m) { register_autocast<c10::DeviceType::CPU>(m); }

}  // namespace maskrcnn_benchmark
