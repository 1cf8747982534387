// CPU kernel for box_iou: parallel over rows of boxes1, vectorisable loop over boxes2.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../ops.h"

namespace maskrcnn_benchmark {
namespace {

// IoU of one box against m boxes given as structure-of-arrays; branch-free so it vectorises.
template <typename T>
void iou_row(T ix1, T iy1, T ix2, T iy2, const T* __restrict x1, const T* __restrict y1,
             const T* __restrict x2, const T* __restrict y2, const T* __restrict area, int64_t m,
             T* __restrict row) {
  const T iarea = (ix2 - ix1) * (iy2 - iy1);
  for (int64_t j = 0; j < m; ++j) {
    // min/max on values (not std:: references) keep the loop free of branches
    const T bx1 = x1[j], by1 = y1[j], bx2 = x2[j], by2 = y2[j];
    const T w = (ix2 < bx2 ? ix2 : bx2) - (ix1 > bx1 ? ix1 : bx1);
    const T h = (iy2 < by2 ? iy2 : by2) - (iy1 > by1 ? iy1 : by1);
    const T inter = (w > T(0) ? w : T(0)) * (h > T(0) ? h : T(0));
    const T uni = iarea + area[j] - inter;
    // union <= 0 implies inter == 0 (an overlap needs positive extents): 0 / 1 = 0, never NaN.
    row[j] = inter / (uni > T(0) ? uni : T(1));
  }
}

template <typename T>
void box_iou_kernel(const T* b1, const T* b2, int64_t n, int64_t m, T* out) {
  // boxes2 as structure-of-arrays so the inner loop reads contiguous memory.
  std::vector<T> soa(5 * m);
  T* const x1 = soa.data();
  T *const y1 = x1 + m, *const x2 = y1 + m, *const y2 = x2 + m, *const area = y2 + m;
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
      const T* b = b1 + 4 * i;
      iou_row(b[0], b[1], b[2], b[3], x1, y1, x2, y2, area, m, out + i * m);
    }
  });
}

at::Tensor box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_box_iou_inputs(boxes1, boxes2);
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
