// CPU kernels for nms and batched_nms: sort once, then greedy suppression with a mask.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../ops.h"

namespace maskrcnn_benchmark {
namespace {

// Greedy NMS over n boxes stored structure-of-arrays in decreasing score order (buf holds
// x1, y1, x2, y2, area, each of length n; it is overwritten). Sets keep[k] = 1 for kept boxes.
// After each kept box the surviving candidates are compacted (branch-free) to the front, so each
// step only visits boxes that are still alive.
template <typename T>
void greedy_nms(T* buf, int64_t n, T threshold, int64_t* pos, uint8_t* keep) {
  T *x1 = buf, *y1 = buf + n, *x2 = buf + 2 * n, *y2 = buf + 3 * n, *area = buf + 4 * n;
  for (int64_t k = 0; k < n; ++k) pos[k] = k;
  int64_t live = n;
  for (int64_t i = 0; i < live; ++i) {
    keep[pos[i]] = 1;
    const T ix1 = x1[i], iy1 = y1[i], ix2 = x2[i], iy2 = y2[i], iarea = area[i];
    int64_t w = i + 1;
    for (int64_t j = i + 1; j < live; ++j) {
      const T bx1 = x1[j], by1 = y1[j], bx2 = x2[j], by2 = y2[j], barea = area[j];
      const T iw = std::max(T(0), std::min(ix2, bx2) - std::max(ix1, bx1));
      const T ih = std::max(T(0), std::min(iy2, by2) - std::max(iy1, by1));
      const T inter = iw * ih;
      const T uni = iarea + barea - inter;
      const T iou = inter / (uni > T(0) ? uni : T(1));  // union <= 0 implies inter == 0
      x1[w] = bx1;
      y1[w] = by1;
      x2[w] = bx2;
      y2[w] = by2;
      area[w] = barea;
      pos[w] = pos[j];
      w += static_cast<int64_t>(!(iou > threshold));
    }
    live = w;
  }
}

// Gathers boxes[perm] into structure-of-arrays buffers (x1, y1, x2, y2, area).
template <typename T>
void gather_soa(const T* boxes, const int64_t* perm, int64_t n, std::vector<T>& buf) {
  buf.resize(5 * n);
  T* x1 = buf.data();
  T* y1 = x1 + n;
  T* x2 = y1 + n;
  T* y2 = x2 + n;
  T* area = y2 + n;
  for (int64_t k = 0; k < n; ++k) {
    const T* b = boxes + 4 * perm[k];
    x1[k] = b[0];
    y1[k] = b[1];
    x2[k] = b[2];
    y2[k] = b[3];
    area[k] = (b[2] - b[0]) * (b[3] - b[1]);
  }
}

void check_cpu(const at::Tensor& boxes, const char* op) {
  TORCH_CHECK(boxes.device().is_cpu(), op, ": expected CPU tensors, got ", boxes.device());
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_inputs(boxes, scores, "nms");
  check_cpu(boxes, "nms");
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const at::Tensor order =
      std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
  const at::Tensor boxes_c = boxes.contiguous();
  std::vector<uint8_t> keep(n, 0);
  std::vector<int64_t> pos(n);
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms_cpu", [&] {
    std::vector<scalar_t> buf;
    gather_soa(boxes_c.data_ptr<scalar_t>(), order.data_ptr<int64_t>(), n, buf);
    greedy_nms(buf.data(), n, static_cast<scalar_t>(iou_threshold), pos.data(), keep.data());
  });
  const int64_t* ord = order.data_ptr<int64_t>();
  std::vector<int64_t> kept;
  for (int64_t k = 0; k < n; ++k)
    if (keep[k]) kept.push_back(ord[k]);
  return at::tensor(kept, boxes.options().dtype(at::kLong));
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                           const at::Tensor& idxs, double iou_threshold) {
  check_nms_inputs(boxes, scores, "batched_nms");
  check_nms_idxs(boxes, idxs);
  check_cpu(boxes, "batched_nms");
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));

  // Score order, then a stable sort by class: each class is a contiguous run in score order.
  const at::Tensor order =
      std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
  const at::Tensor cls_sorted = idxs.index_select(0, order);
  const at::Tensor by_cls =
      std::get<1>(cls_sorted.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false)).contiguous();
  const at::Tensor perm = order.index_select(0, by_cls).contiguous();  // box index per slot
  const at::Tensor cls_perm = cls_sorted.index_select(0, by_cls).contiguous();
  const int64_t* cls = cls_perm.data_ptr<int64_t>();
  const int64_t* rank = by_cls.data_ptr<int64_t>();  // slot -> position in score order

  std::vector<int64_t> starts;  // run boundaries; starts.back() == n
  for (int64_t k = 0; k < n; ++k)
    if (k == 0 || cls[k] != cls[k - 1]) starts.push_back(k);
  starts.push_back(n);
  const int64_t num_runs = static_cast<int64_t>(starts.size()) - 1;

  const at::Tensor boxes_c = boxes.contiguous();
  std::vector<uint8_t> keep(n, 0);
  std::vector<int64_t> pos(n);
  const int64_t* perm_p = perm.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "batched_nms_cpu", [&] {
    const scalar_t* bp = boxes_c.data_ptr<scalar_t>();
    const scalar_t thr = static_cast<scalar_t>(iou_threshold);
    // Each class run gets its own SoA buffer (runs are independent, so threads never share one).
    at::parallel_for(0, num_runs, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> buf;
      for (int64_t r = begin; r < end; ++r) {
        const int64_t s = starts[r], len = starts[r + 1] - starts[r];
        gather_soa(bp, perm_p + s, len, buf);
        greedy_nms(buf.data(), len, thr, pos.data() + s, keep.data() + s);
      }
    });
  });
  // Back to global score order.
  std::vector<uint8_t> keep_by_rank(n, 0);
  for (int64_t k = 0; k < n; ++k) keep_by_rank[rank[k]] = keep[k];
  const int64_t* ord = order.data_ptr<int64_t>();
  std::vector<int64_t> kept;
  for (int64_t k = 0; k < n; ++k)
    if (keep_by_rank[k]) kept.push_back(ord[k]);
  return at::tensor(kept, boxes.options().dtype(at::kLong));
}

}  // namespace

TORCH_LIBRARY_IMPL(maskrcnn_benchmark, CPU, m) {
  m.impl("nms", TORCH_FN(nms_cpu));
  m.impl("batched_nms", TORCH_FN(batched_nms_cpu));
}

}  // namespace maskrcnn_benchmark
