// Shared helpers for the maskrcnn_benchmark operator library (schemas in ops.cpp). The input
// checks live here so that the CPU and CUDA kernels of an op reject bad input with the same
// message; each backend adds its own device check.
#pragma once

#include <ATen/ATen.h>

namespace maskrcnn_benchmark {

// Checks that `t` has a floating dtype the kernel supports: float32/float64 everywhere, plus
// float16/bfloat16 where `reduced` is true (the CUDA kernels, which accumulate in float32).
inline void check_float_dtype(const at::Tensor& t, const char* op, const char* name, bool reduced) {
  const auto s = t.scalar_type();
  const bool ok = s == at::kFloat || s == at::kDouble ||
                  (reduced && (s == at::kHalf || s == at::kBFloat16));
  TORCH_CHECK(ok, op, ": ", name,
              reduced ? " must be float32, float64, float16 or bfloat16, got "
                      : " must be float32 or float64, got ",
              s);
}

// Checks that `t` is a [N, 4] box tensor of a supported floating dtype; `op` and `name` appear
// in the message.
inline void check_boxes(const at::Tensor& t, const char* op, const char* name,
                        bool reduced = false) {
  TORCH_CHECK(t.dim() == 2 && t.size(1) == 4, op, ": ", name, " must have shape [N, 4], got ",
              t.sizes());
  check_float_dtype(t, op, name, reduced);
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op,
                              const char* name_a, const char* name_b) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", name_a, " and ", name_b,
              " must be on the same device, got ", a.device(), " and ", b.device());
}

// nms / batched_nms: boxes [N, 4], scores [N] floating, on one device.
inline void check_nms_inputs(const at::Tensor& boxes, const at::Tensor& scores, const char* op,
                             bool reduced = false) {
  check_boxes(boxes, op, "boxes", reduced);
  TORCH_CHECK(scores.dim() == 1, op, ": scores must have shape [N], got ", scores.sizes());
  TORCH_CHECK(scores.size(0) == boxes.size(0), op, ": scores must have shape [N] with N = ",
              boxes.size(0), " (boxes.size(0)), got ", scores.sizes());
  TORCH_CHECK(scores.is_floating_point(), op, ": scores must be a floating point tensor, got ",
              scores.scalar_type());
  check_same_device(boxes, scores, op, "boxes", "scores");
}

// batched_nms: idxs [N] int64 on the device of boxes.
inline void check_nms_idxs(const at::Tensor& boxes, const at::Tensor& idxs) {
  TORCH_CHECK(idxs.dim() == 1 && idxs.size(0) == boxes.size(0),
              "batched_nms: idxs must have shape [N] with N = ", boxes.size(0),
              " (boxes.size(0)), got ", idxs.sizes());
  TORCH_CHECK(idxs.scalar_type() == at::kLong, "batched_nms: idxs must be int64, got ",
              idxs.scalar_type());
  check_same_device(boxes, idxs, "batched_nms", "boxes", "idxs");
}

// box_iou: boxes1 [N, 4], boxes2 [M, 4] of one dtype and device.
inline void check_box_iou_inputs(const at::Tensor& boxes1, const at::Tensor& boxes2,
                                 bool reduced = false) {
  check_boxes(boxes1, "box_iou", "boxes1", reduced);
  check_boxes(boxes2, "box_iou", "boxes2", reduced);
  TORCH_CHECK(boxes1.scalar_type() == boxes2.scalar_type(),
              "box_iou: boxes1 and boxes2 must have the same dtype, got ", boxes1.scalar_type(),
              " and ", boxes2.scalar_type());
  check_same_device(boxes1, boxes2, "box_iou", "boxes1", "boxes2");
}

// sigmoid_focal_loss (+ backward): logits [N, C], targets [N] int64/int32, gamma >= 0.
inline void check_focal_inputs(const at::Tensor& logits, const at::Tensor& targets, double gamma,
                               const char* op, bool reduced = false) {
  TORCH_CHECK(logits.dim() == 2, op, ": logits must have shape [N, C], got ", logits.sizes());
  check_float_dtype(logits, op, "logits", reduced);
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0), op,
              ": targets must have shape [N] with N = ", logits.size(0),
              " (logits.size(0)), got ", targets.sizes());
  TORCH_CHECK(targets.scalar_type() == at::kLong || targets.scalar_type() == at::kInt, op,
              ": targets must be int64 or int32, got ", targets.scalar_type());
  check_same_device(logits, targets, op, "logits", "targets");
  TORCH_CHECK(gamma >= 0, op, ": gamma must be >= 0, got ", gamma);
}

// sigmoid_focal_loss_backward: grad_output with the shape, dtype and device of logits.
inline void check_focal_grad_output(const at::Tensor& grad_output, const at::Tensor& logits) {
  const char* name = "sigmoid_focal_loss_backward";
  TORCH_CHECK(grad_output.sizes() == logits.sizes(), name,
              ": grad_output must have the shape of logits ", logits.sizes(), ", got ",
              grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == logits.scalar_type(), name,
              ": grad_output must have the dtype of logits (", logits.scalar_type(), "), got ",
              grad_output.scalar_type());
  check_same_device(logits, grad_output, name, "logits", "grad_output");
}

// A grad_output that is one value broadcast to [N, C] (strides 0, 0: the gradient of .sum() or of
// .sum() / norm) is read as that value by the CPU and CUDA backward kernels instead of being
// materialised with .contiguous().
inline bool is_broadcast_scalar(const at::Tensor& t) {
  return t.dim() == 2 && t.stride(0) == 0 && t.stride(1) == 0;
}

}  // namespace maskrcnn_benchmark
