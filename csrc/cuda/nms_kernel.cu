// CUDA kernels for nms and batched_nms (bitmask NMS, greedy scan on the device).
//
// 1. Sort by score (stable, descending) and gather the boxes (and class ids) in that order.
// 2. nms_mask_kernel: for every box i and every block of 64 boxes j > i, a 64-bit word whose bit
//    b says "IoU(i, j) > threshold" (and, for batched_nms, "same class": boxes of different classes
//    never suppress each other, so all classes are done in one pass, with no loop over classes
//    and no coordinate-offset trick). Only the upper triangle of blocks is computed.
// 3. nms_scan_kernel: one block walks the boxes in score order, keeps a box that no kept box has
//    suppressed and ORs its mask row into the `removed` bits (shared memory). The mask never
//    leaves the device: the only device-to-host transfer is the number of kept boxes, read by
//    masked_select.
// Limit: the mask holds N x ceil(N / 64) 64-bit words, about N^2 / 8 bytes (~1 GiB at 92k boxes,
// 8 GiB at kMaxBoxes = 2^18 = 262,144). Above kMaxBoxes the op fails with the numbers rather than
// trying to allocate it: run NMS per image, or keep the top-k boxes by score first (the
// detectors' post-processing keeps at most MODEL.<HEAD>.PRE_NMS_TOP_N per level and image).
// kMaxBoxes keeps the scan's `removed` bits (ceil(N / 64) words, 32 KiB) in shared memory and the
// mask grid's ceil(N / 64) blocks per axis inside CUDA's 65,535 limit for gridDim.y.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../ops.h"
#include "cuda_helpers.cuh"

namespace maskrcnn_benchmark {
namespace {

constexpr int kBits = 64;  // boxes per mask word (and threads per mask block)
constexpr int64_t kMaxBoxes = int64_t(1) << 18;  // see the limit above

template <typename scalar_t, bool kBatched>
__global__ void nms_mask_kernel(const scalar_t* __restrict__ boxes, const int64_t* __restrict__ cls,
                                int64_t n, int64_t words, double threshold,
                                unsigned long long* __restrict__ mask) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (col_block < row_block) return;  // lower triangle: j < i is never needed
  const int row_size = static_cast<int>(n - row_block * kBits < kBits ? n - row_block * kBits : kBits);
  const int col_size = static_cast<int>(n - col_block * kBits < kBits ? n - col_block * kBits : kBits);

  __shared__ acc_t col_boxes[kBits * 4];
  __shared__ int64_t col_cls[kBits];
  if (threadIdx.x < col_size) {
    const int64_t j = col_block * kBits + threadIdx.x;
#pragma unroll
    for (int d = 0; d < 4; ++d) col_boxes[threadIdx.x * 4 + d] = static_cast<acc_t>(boxes[j * 4 + d]);
    if (kBatched) col_cls[threadIdx.x] = cls[j];
  }
  __syncthreads();
  if (threadIdx.x >= row_size) return;

  const int64_t i = row_block * kBits + threadIdx.x;
  const acc_t x1 = static_cast<acc_t>(boxes[i * 4]), y1 = static_cast<acc_t>(boxes[i * 4 + 1]);
  const acc_t x2 = static_cast<acc_t>(boxes[i * 4 + 2]), y2 = static_cast<acc_t>(boxes[i * 4 + 3]);
  const int64_t ci = kBatched ? cls[i] : 0;
  const acc_t thr = static_cast<acc_t>(threshold);
  unsigned long long bits = 0;
  const int start = row_block == col_block ? threadIdx.x + 1 : 0;
  for (int b = start; b < col_size; ++b) {
    if (kBatched && col_cls[b] != ci) continue;
    const acc_t* c = col_boxes + b * 4;
    if (cuda::iou(x1, y1, x2, y2, c[0], c[1], c[2], c[3]) > thr) bits |= 1ULL << b;
  }
  mask[i * words + col_block] = bits;
}

// One block: greedy pass in score order. `removed` holds `words` words in shared memory.
__global__ void nms_scan_kernel(const unsigned long long* __restrict__ mask, int64_t n,
                                int64_t words, bool* __restrict__ keep) {
  extern __shared__ unsigned long long removed[];
  for (int64_t w = threadIdx.x; w < words; w += blockDim.x) removed[w] = 0;
  __syncthreads();
  for (int64_t word = 0; word < words; ++word) {
    unsigned long long live = ~removed[word];
    __syncthreads();  // every thread has read removed[word] before anyone updates it
    const int size = static_cast<int>(n - word * kBits < kBits ? n - word * kBits : kBits);
    for (int b = 0; b < size; ++b) {
      if (!((live >> b) & 1ULL)) continue;  // same decision in every thread
      const int64_t i = word * kBits + b;
      if (threadIdx.x == 0) keep[i] = true;
      const unsigned long long* row = mask + i * words;
      for (int64_t w = word + threadIdx.x; w < words; w += blockDim.x) removed[w] |= row[w];
      __syncthreads();
      live = ~removed[word];
      __syncthreads();
    }
  }
}

at::Tensor nms_impl(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                    double iou_threshold, const char* op) {
  TORCH_CHECK(boxes.is_cuda(), op, ": expected CUDA tensors, got ", boxes.device());
  const c10::cuda::CUDAGuard device_guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const int64_t words = (n + kBits - 1) / kBits;
  constexpr int64_t kMaxMaskMiB = (kMaxBoxes * (kMaxBoxes / kBits) * 8) >> 20;
  TORCH_CHECK(n <= kMaxBoxes, op, ": ", n, " boxes would need a ", n, " x ", words,
              " x 8-byte suppression mask (", (n * words * 8) >> 20,
              " MiB); the CUDA kernel takes at most ", kMaxBoxes, " boxes (", kMaxMaskMiB,
              " MiB): run it per image or keep the top-scoring boxes first");

  const at::Tensor order =
      std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor sorted = boxes.index_select(0, order).contiguous();
  const at::Tensor cls = idxs != nullptr ? idxs->index_select(0, order).contiguous() : at::Tensor();
  at::Tensor mask = at::empty({n, words}, boxes.options().dtype(at::kLong));
  at::Tensor keep = at::zeros({n}, boxes.options().dtype(at::kBool));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const dim3 grid(static_cast<unsigned>(words), static_cast<unsigned>(words));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms_cuda", [&] {
    auto* mask_p = reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>());
    if (idxs != nullptr) {
      nms_mask_kernel<scalar_t, true><<<grid, kBits, 0, stream>>>(
          sorted.data_ptr<scalar_t>(), cls.data_ptr<int64_t>(), n, words, iou_threshold, mask_p);
    } else {
      nms_mask_kernel<scalar_t, false><<<grid, kBits, 0, stream>>>(
          sorted.data_ptr<scalar_t>(), nullptr, n, words, iou_threshold, mask_p);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });

  const int64_t shared_bytes = words * static_cast<int64_t>(sizeof(unsigned long long));
  static_assert(kMaxBoxes / kBits * sizeof(unsigned long long) <= 48 * 1024,
                "the scan's removed bits must fit the default 48 KiB of shared memory");
  const int threads = static_cast<int>(std::min<int64_t>(1024, ((words + 31) / 32) * 32));
  nms_scan_kernel<<<1, threads, shared_bytes, stream>>>(
      reinterpret_cast<const unsigned long long*>(mask.data_ptr<int64_t>()), n, words,
      keep.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return order.masked_select(keep);  // kept boxes in score order; syncs once for the count
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_inputs(boxes, scores, "nms", /*reduced=*/true);
  return nms_impl(boxes, scores, nullptr, iou_threshold, "nms");
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                            const at::Tensor& idxs, double iou_threshold) {
  check_nms_inputs(boxes, scores, "batched_nms", /*reduced=*/true);
  check_nms_idxs(boxes, idxs);
  return nms_impl(boxes, scores, &idxs, iou_threshold, "batched_nms");
}

}  // namespace

TORCH_LIBRARY_IMPL(maskrcnn_benchmark, CUDA, m) {
  m.impl("nms", TORCH_FN(nms_cuda));
  m.impl("batched_nms", TORCH_FN(batched_nms_cuda));
}

}  // namespace maskrcnn_benchmark
