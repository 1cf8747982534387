// CPU kernels for the element-wise sigmoid focal loss and its gradient, computed from logits with
// log-sigmoid forms (no log(0), no overflow).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "../ops.h"

namespace maskrcnn_benchmark {
namespace {

// The transcendental part, e = exp(-|x|) and l = log1p(e), runs as vectorised ATen ops on a block
// of rows at a time into two per-thread buffers small enough to stay in cache (kBlockElems values
// each), so every element of the logits is read from memory once and nothing of size [N, C] but
// the output is allocated. From e and l, p = sigmoid(x), q = 1 - p, log p = min(x, 0) - l and
// log q = -max(x, 0) - l are exact rearrangements (no log(0), no overflow). The per-element loops
// below have no calls when gamma == 2, so the compiler vectorises them; blocks of rows are split
// over threads with at::parallel_for (ATen ops inside a parallel region run on the calling thread).
constexpr int64_t kBlockElems = 16384;

int64_t block_rows(int64_t c) { return std::max<int64_t>(1, kBlockElems / std::max<int64_t>(c, 1)); }

// Calls fn(row_begin, row_end, e, l) for consecutive blocks of rows of the contiguous [n, c] x,
// in parallel; e and l point to the block's exp(-|x|) and log1p(exp(-|x|)), row-major.
template <typename scalar_t, typename Fn>
void for_each_row_block(const at::Tensor& x, int64_t n, int64_t c, const Fn& fn) {
  const int64_t rows = block_rows(c);
  // detached: the ATen calls below record no autograd history (logits may require grad here)
  const at::Tensor flat = x.detach().view({-1});
  at::parallel_for(0, n, rows, [&](int64_t begin, int64_t end) {
    at::Tensor e = at::empty({std::min(rows, end - begin) * c}, x.options());
    at::Tensor l = at::empty_like(e);
    for (int64_t r0 = begin; r0 < end; r0 += rows) {
      const int64_t r1 = std::min(end, r0 + rows);
      const int64_t m = (r1 - r0) * c;
      at::Tensor eb = e.narrow(0, 0, m), lb = l.narrow(0, 0, m);
      at::abs_out(eb, flat.narrow(0, r0 * c, m));
      eb.neg_().exp_();
      at::log1p_out(lb, eb);
      fn(r0, r1, eb.const_data_ptr<scalar_t>(), lb.const_data_ptr<scalar_t>());
    }
  });
}

template <typename T, bool kGammaIs2>
inline T pow_gamma(T base, T gamma) {
  if constexpr (kGammaIs2) {
    return base * base;
  } else {
    return std::pow(base, gamma);
  }
}

// Loss of one row: every column as a negative, then the positive column (if any) fixed up.
template <typename T, bool kGammaIs2>
inline void focal_row(const T* __restrict x, const T* __restrict e, const T* __restrict l,
                      int64_t target, int64_t c, T g, T a, T* __restrict out) {
  if (target < 0) {
    for (int64_t j = 0; j < c; ++j) out[j] = T(0);
    return;
  }
  for (int64_t j = 0; j < c; ++j) {
    const T p = (x[j] >= T(0) ? T(1) : e[j]) / (T(1) + e[j]);  // select, then divide: vectorises
    const T log_q = -std::max(x[j], T(0)) - l[j];
    out[j] = -(T(1) - a) * pow_gamma<T, kGammaIs2>(p, g) * log_q;
  }
  if (target >= 1 && target <= c) {
    const int64_t j = target - 1;
    const T inv = T(1) / (T(1) + e[j]);
    const T q = x[j] >= T(0) ? e[j] * inv : inv;
    const T log_p = std::min(x[j], T(0)) - l[j];
    out[j] = -a * pow_gamma<T, kGammaIs2>(q, g) * log_p;
  }
}

// Gradient of one row: d/dx[-(1-a) p^g log q] = (1-a) p^g (p - g q log q) for negatives,
// d/dx[-a q^g log p] = a q^g (g p log p - q) for the positive column; times grad_output, which
// is go[j] or, with kScalarGrad (the gradient of a sum: one value broadcast), go[0] everywhere.
template <typename T, bool kGammaIs2, bool kScalarGrad>
inline void focal_grad_row(const T* __restrict x, const T* __restrict e, const T* __restrict l,
                           const T* __restrict go, int64_t target, int64_t c, T g, T a,
                           T* __restrict out) {
  if (target < 0) {
    for (int64_t j = 0; j < c; ++j) out[j] = T(0);
    return;
  }
  const T go0 = go[0];
  for (int64_t j = 0; j < c; ++j) {
    const T inv = T(1) / (T(1) + e[j]);
    const T e_inv = e[j] * inv;
    const T p = x[j] >= T(0) ? inv : e_inv;
    const T q = x[j] >= T(0) ? e_inv : inv;
    const T log_q = -std::max(x[j], T(0)) - l[j];
    out[j] = (T(1) - a) * pow_gamma<T, kGammaIs2>(p, g) * (p - g * q * log_q) *
             (kScalarGrad ? go0 : go[j]);
  }
  if (target >= 1 && target <= c) {
    const int64_t j = target - 1;
    const T inv = T(1) / (T(1) + e[j]);
    const T p = x[j] >= T(0) ? inv : e[j] * inv;
    const T q = x[j] >= T(0) ? e[j] * inv : inv;
    const T log_p = std::min(x[j], T(0)) - l[j];
    out[j] = a * pow_gamma<T, kGammaIs2>(q, g) * (g * p * log_p - q) * (kScalarGrad ? go0 : go[j]);
  }
}

void check_cpu(const at::Tensor& logits, const char* op) {
  TORCH_CHECK(logits.device().is_cpu(), op, ": expected CPU tensors, got ", logits.device());
}

at::Tensor sigmoid_focal_loss_cpu(const at::Tensor& logits, const at::Tensor& targets,
                                  double gamma, double alpha) {
  check_focal_inputs(logits, targets, gamma, "sigmoid_focal_loss");
  check_cpu(logits, "sigmoid_focal_loss");
  const int64_t n = logits.size(0), c = logits.size(1);
  at::Tensor out = at::empty({n, c}, logits.options());
  if (out.numel() == 0) return out;
  const at::Tensor x = logits.contiguous();
  const at::Tensor t = targets.to(at::kLong).contiguous();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "sigmoid_focal_loss_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const int64_t* tp = t.const_data_ptr<int64_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const scalar_t g = static_cast<scalar_t>(gamma), a = static_cast<scalar_t>(alpha);
    for_each_row_block<scalar_t>(x, n, c, [&](int64_t r0, int64_t r1, const scalar_t* e,
                                              const scalar_t* l) {
      for (int64_t i = r0; i < r1; ++i) {
        const int64_t k = i * c, kb = (i - r0) * c;
        if (gamma == 2.0)
          focal_row<scalar_t, true>(xp + k, e + kb, l + kb, tp[i], c, g, a, op + k);
        else
          focal_row<scalar_t, false>(xp + k, e + kb, l + kb, tp[i], c, g, a, op + k);
      }
    });
  });
  return out;
}

at::Tensor sigmoid_focal_loss_backward_cpu(const at::Tensor& grad_output, const at::Tensor& logits,
                                           const at::Tensor& targets, double gamma,
                                           double alpha) {
  const char* name = "sigmoid_focal_loss_backward";
  check_focal_inputs(logits, targets, gamma, name);
  check_focal_grad_output(grad_output, logits);
  check_cpu(logits, name);
  const int64_t n = logits.size(0), c = logits.size(1);
  at::Tensor grad = at::empty({n, c}, logits.options());
  if (grad.numel() == 0) return grad;
  const at::Tensor x = logits.contiguous();
  const bool scalar_grad = is_broadcast_scalar(grad_output);
  const at::Tensor go = scalar_grad ? grad_output : grad_output.contiguous();
  const at::Tensor t = targets.to(at::kLong).contiguous();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "sigmoid_focal_loss_backward_cpu", [&] {
    const scalar_t *xp = x.const_data_ptr<scalar_t>(), *gp = go.const_data_ptr<scalar_t>();
    const int64_t* tp = t.const_data_ptr<int64_t>();
    scalar_t* dp = grad.data_ptr<scalar_t>();
    const scalar_t g = static_cast<scalar_t>(gamma), a = static_cast<scalar_t>(alpha);
    for_each_row_block<scalar_t>(x, n, c, [&](int64_t r0, int64_t r1, const scalar_t* e,
                                              const scalar_t* l) {
      for (int64_t i = r0; i < r1; ++i) {
        const int64_t k = i * c, kb = (i - r0) * c;
        const scalar_t* gi = scalar_grad ? gp : gp + k;
        if (gamma == 2.0 && scalar_grad)
          focal_grad_row<scalar_t, true, true>(xp + k, e + kb, l + kb, gi, tp[i], c, g, a, dp + k);
        else if (gamma == 2.0)
          focal_grad_row<scalar_t, true, false>(xp + k, e + kb, l + kb, gi, tp[i], c, g, a, dp + k);
        else if (scalar_grad)
          focal_grad_row<scalar_t, false, true>(xp + k, e + kb, l + kb, gi, tp[i], c, g, a, dp + k);
        else
          focal_grad_row<scalar_t, false, false>(xp + k, e + kb, l + kb, gi, tp[i], c, g, a, dp + k);
      }
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(maskrcnn_benchmark, CPU, m) {
  m.impl("sigmoid_focal_loss", TORCH_FN(sigmoid_focal_loss_cpu));
  m.impl("sigmoid_focal_loss_backward", TORCH_FN(sigmoid_focal_loss_backward_cpu));
}

}  // namespace maskrcnn_benchmark
