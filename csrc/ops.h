// Shared helpers for the maskrcnn_benchmark operator library (schema in ops.cpp).
#pragma once

#include <ATen/ATen.h>

namespace maskrcnn_benchmark {

// Checks that `t` is a float32/float64 [N, 4] box tensor; `op` and `name` appear in the message.
inline void check_boxes(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.size(1) == 4, op, ": ", name, " must have shape [N, 4], got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64, got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op,
                              const char* name_a, const char* name_b) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", name_a, " and ", name_b,
              " must be on the same device, got ", a.device(), " and ", b.device());
}

}  // namespace maskrcnn_benchmark
