// CPU kernel for box_iou: parallel over rows of boxes1, vectorisable loop over boxes2.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../ops.h"

namespace maskrcnn_benchmark {
namespace {

template <typename T>
void box_iou_kernel(const T* b1, const T* b2, int64_t n, int64_t m, T* out) {
  // boxes2 as structure-of-arrays so the inner loop reads contiguous memory.
  std::vector<T> soa(5 * m);
  T *x1 = soa.data(), *y1 = x1 + m, *x2 = y1 + m, *y2 = x2 + m, *area = y2 + m;
  for (int64_t j = 0; j < m; ++j) {
    x1[j] = b2[4 * j];
    y1[j] = b2[4 * j + 1];
    x2[j] = b2[4 * j + 2];
    y2[j] = b2[4 * j + 3];
    area[j] = (x2[j] - x1[j]) * (y2[j] - y1[j]);
  }
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(m, 1));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T ix1 = b1[4 * i], iy1 = b1[4 * i + 1], ix2 = b1[4 * i + 2], iy2 = b1[4 * i + 3];
      const T iarea = (ix2 - ix1) * (iy2 - iy1);
      T* row = out + i * m;
      for (int64_t j = 0; j < m; ++j) {
        const T w = std::max(T(0), std::min(ix2, x2[j]) - std::max(ix1, x1[j]));
        const T h = std::max(T(0), std::min(iy2, y2[j]) - std::max(iy1, y1[j]));
        const T inter = w * h;
        const T uni = iarea + area[j] - inter;
        row[j] = uni > T(0) ? inter / uni : T(0);
      }
    }
  });
}

at::Tensor box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_boxes(boxes1, "box_iou", "boxes1");
  check_boxes(boxes2, "box_iou", "boxes2");
  TORCH_CHECK(boxes1.scalar_type() == boxes2.scalar_type(),
              "box_iou: boxes1 and boxes2 must have the same dtype, got ", boxes1.scalar_type(),
              " and ", boxes2.scalar_type());
  check_same_device(boxes1, boxes2, "box_iou", "boxes1", "boxes2");
  TORCH_CHECK(boxes1.device().is_cpu(), "box_iou: expected CPU tensors, got ", boxes1.device());
  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  at::Tensor out = at::empty({n, m}, boxes1.options());
  if (n == 0 || m == 0) return out;
  const at::Tensor b1 = boxes1.contiguous(), b2 = boxes2.contiguous();
  AT_DISPATCH_FLOATING_TYPES(boxes1.scalar_type(), "box_iou_cpu", [&] {
    box_iou_kernel(b1.data_ptr<scalar_t>(), b2.data_ptr<scalar_t>(), n, m,
                   out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(maskrcnn_benchmark, CPU, m) { m.impl("box_iou", TORCH_FN(box_iou_cpu)); }

}  // namespace maskrcnn_benchmark
