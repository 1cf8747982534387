// Winograd F(m x m, 3 x 3) transforms on the CPU for the 3x3, stride 1, padding 1 convolution of
// maskrcnn_benchmark/layers/winograd.py (which holds the transform matrices, the weight transform,
// the batched GEMM in the transformed domain and the autograd formula).
//
// Layouts (a = m + 2 is the tile size, T = N * ceil(H / m) * ceil(W / m) the number of tiles,
// tiles ordered (n, tile row, tile column)):
//   input [N, C, H, W]              --winograd_input_transform-->   V [a * a, T, C]
//   M [a * a, T, K]                  --winograd_output_transform-->  Y [N, K, H, W] (+ bias)
//   grad_Y [N, K, H, W]              --winograd_output_transform_backward--> grad_M [a * a, T, K]
// The image tensors are read in (a copy to, where they are not already in it) and Y is written in
// the channels-last memory format, NHWC in memory.
// Tile (ty, tx) of the input covers rows ty * m - 1 .. ty * m + m and columns tx * m - 1 ..
// tx * m + m (zero outside the image: the convolution's padding of 1); its output tile covers rows
// ty * m .. ty * m + m - 1 (cropped to H) and columns likewise.
//
// Every value of V is a dot product of a row of BT with 6 (a) input values along each image axis,
// V_tile = BT d BT^T; Y_tile = AT M_tile AT^T; the backward of the latter is grad_M_tile =
// AT^T grad_Y_tile AT. The channel axis is innermost everywhere, so the loops over channels are
// contiguous and vectorise (built for AVX-512, AVX2 and baseline x86-64, chosen at run time).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MRB_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MRB_SIMD_CLONES
#endif

constexpr int kMaxTile = 8;  // a = m + 2 <= 8 (m <= 6)

// out[c] (+)= coef * in[c] for c < n; the building block of every transform.
MRB_SIMD_CLONES void axpy(int64_t n, float coef, const float* __restrict in, float* __restrict out,
                          bool accumulate) {
  if (accumulate) {
    for (int64_t c = 0; c < n; ++c) out[c] += coef * in[c];
  } else {
    for (int64_t c = 0; c < n; ++c) out[c] = coef * in[c];
  }
}

// rows[i][x][:] = sum_j mat[i][j] * src(j, x)[:] for i < rows_out, x < cols, where src(j, x) is
// a pointer to C values or null (zero). Zero coefficients are skipped.
void left_multiply(const float* mat, int rows_out, int inner, int cols, int64_t C,
                   const std::vector<const float*>& src, float* rows) {
  for (int i = 0; i < rows_out; ++i) {
    for (int x = 0; x < cols; ++x) {
      float* out = rows + (static_cast<int64_t>(i) * cols + x) * C;
      bool written = false;
      for (int j = 0; j < inner; ++j) {
        const float coef = mat[i * inner + j];
        const float* in = src[j * cols + x];
        if (coef == 0.f || in == nullptr) continue;
        axpy(C, coef, in, out, written);
        written = true;
      }
      if (!written) std::fill(out, out + C, 0.f);
    }
  }
}

// out_base[(i * cols + l) * out_stride + :C] = sum_x rows[i][x][:] * coef(l, x) for i < rows_n,
// l < cols, x < inner, with rows [rows_n][inner][C] and coef(l, x) = mat[l * l_stride + x * x_stride]
// (the right factor of a tile transform, written to one [C] row of the transformed tensor per
// (i, l)). Zero coefficients are skipped.
void right_multiply(const float* rows, int64_t rows_n, int64_t inner, const float* mat, int64_t cols,
                    int64_t l_stride, int64_t x_stride, int64_t C, float* out_base, int64_t out_stride) {
  for (int64_t i = 0; i < rows_n; ++i) {
    for (int64_t l = 0; l < cols; ++l) {
      float* out = out_base + (i * cols + l) * out_stride;
      bool written = false;
      for (int64_t x = 0; x < inner; ++x) {
        const float coef = mat[l * l_stride + x * x_stride];
        if (coef == 0.f) continue;
        axpy(C, coef, rows + (i * inner + x) * C, out, written);
        written = true;
      }
      if (!written) std::fill(out, out + C, 0.f);
    }
  }
}

void check_matrix(const at::Tensor& mat, int64_t rows, int64_t cols, const char* name) {
  TORCH_CHECK(mat.dim() == 2 && mat.size(0) == rows && mat.size(1) == cols,
              "winograd: ", name, " must have shape [", rows, ", ", cols, "], got ", mat.sizes());
  TORCH_CHECK(mat.scalar_type() == at::kFloat && mat.device().is_cpu(), "winograd: ", name,
              " must be a float32 CPU tensor");
}

void check_float_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "winograd: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat, "winograd: ", name, " must be float32, got ", t.scalar_type());
}

// Tiles per image for an H x W output and tile output size m.
inline int64_t tiles_along(int64_t size, int64_t m) { return (size + m - 1) / m; }

// Tiles per parallel_for chunk: about 16384 transformed values (a * a * channels per tile).
inline int64_t tile_grain(int64_t a, int64_t channels) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, a * a * channels));
}

at::Tensor winograd_input_transform_cpu(const at::Tensor& input, const at::Tensor& BT) {
  check_float_cpu(input, "input");
  TORCH_CHECK(input.dim() == 4, "winograd_input_transform: input must be [N, C, H, W], got ", input.sizes());
  const int64_t a = BT.size(0);
  TORCH_CHECK(a >= 3 && a <= kMaxTile, "winograd_input_transform: tile size ", a, " not in [3, ", kMaxTile, "]");
  check_matrix(BT, a, a, "BT");
  const int64_t m = a - 2;
  const auto x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const auto bt = BT.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t th = tiles_along(H, m), tw = tiles_along(W, m), T = N * th * tw;
  auto V = at::empty({a * a, T, C}, x.options());
  if (T == 0 || C == 0) return V;
  const float* xp = x.data_ptr<float>();
  const float* btp = bt.data_ptr<float>();
  float* vp = V.data_ptr<float>();
  const int64_t grain = tile_grain(a, C);
  at::parallel_for(0, T, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> rows(static_cast<size_t>(a * a * C));
    std::vector<const float*> src(static_cast<size_t>(a * a));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / (th * tw), ty = (t / tw) % th, tx = t % tw;
      for (int64_t j = 0; j < a; ++j) {
        const int64_t y = ty * m - 1 + j;
        for (int64_t xx = 0; xx < a; ++xx) {
          const int64_t col = tx * m - 1 + xx;
          src[j * a + xx] = (y >= 0 && y < H && col >= 0 && col < W) ? xp + ((n * H + y) * W + col) * C : nullptr;
        }
      }
      // rows[i][x] = sum_j BT[i][j] d[j][x]
      left_multiply(btp, a, a, a, C, src, rows.data());
      // V[i * a + l] = sum_x rows[i][x] BT[l][x]
      right_multiply(rows.data(), a, a, btp, a, a, 1, C, vp + t * C, T * C);
    }
  });
  return V;
}

at::Tensor winograd_output_transform_cpu(const at::Tensor& M, const at::Tensor& AT,
                                         const c10::optional<at::Tensor>& bias, int64_t N, int64_t H,
                                         int64_t W) {
  check_float_cpu(M, "M");
  TORCH_CHECK(AT.dim() == 2, "winograd_output_transform: AT must be [m, m + 2], got ", AT.sizes());
  const int64_t m = AT.size(0), a = m + 2;
  check_matrix(AT, m, a, "AT");
  TORCH_CHECK(a <= kMaxTile, "winograd_output_transform: tile size ", a, " > ", kMaxTile);
  TORCH_CHECK(N >= 0 && H > 0 && W > 0, "winograd_output_transform: bad output size ", N, " x ", H, " x ", W);
  const int64_t th = tiles_along(H, m), tw = tiles_along(W, m), T = N * th * tw;
  TORCH_CHECK(M.dim() == 3 && M.size(0) == a * a && M.size(1) == T,
              "winograd_output_transform: M must be [", a * a, ", ", T, ", K] for ", N, " x ", H, " x ", W,
              " outputs, got ", M.sizes());
  const int64_t K = M.size(2);
  const float* bp = nullptr;
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    check_float_cpu(*bias, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == K, "winograd_output_transform: bias must be [", K,
                "], got ", bias->sizes());
    b = bias->contiguous();
    bp = b.data_ptr<float>();
  }
  const auto mc = M.contiguous();
  const auto at_ = AT.contiguous();
  auto Y = at::empty({N, K, H, W}, M.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (T == 0 || K == 0) return Y;
  const float* mp = mc.data_ptr<float>();
  const float* ap = at_.data_ptr<float>();
  float* yp = Y.data_ptr<float>();
  const int64_t grain = tile_grain(a, K);
  at::parallel_for(0, T, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> rows(static_cast<size_t>(m * a * K));
    std::vector<const float*> src(static_cast<size_t>(a * a));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / (th * tw), ty = (t / tw) % th, tx = t % tw;
      for (int64_t j = 0; j < a * a; ++j) src[j] = mp + (j * T + t) * K;
      // rows[i][l] = sum_j AT[i][j] M[j][l]
      left_multiply(ap, m, a, a, K, src, rows.data());
      for (int64_t i = 0; i < m; ++i) {
        const int64_t y = ty * m + i;
        if (y >= H) break;
        for (int64_t q = 0; q < m; ++q) {
          const int64_t col = tx * m + q;
          if (col >= W) break;
          float* out = yp + ((n * H + y) * W + col) * K;
          if (bp != nullptr) {
            std::copy(bp, bp + K, out);
          } else {
            std::fill(out, out + K, 0.f);
          }
          for (int64_t l = 0; l < a; ++l) {
            const float coef = ap[q * a + l];
            if (coef == 0.f) continue;
            axpy(K, coef, rows.data() + (i * a + l) * K, out, true);
          }
        }
      }
    }
  });
  return Y;
}

at::Tensor winograd_output_transform_backward_cpu(const at::Tensor& grad, const at::Tensor& AT) {
  check_float_cpu(grad, "grad");
  TORCH_CHECK(grad.dim() == 4, "winograd_output_transform_backward: grad must be [N, K, H, W], got ",
              grad.sizes());
  TORCH_CHECK(AT.dim() == 2, "winograd_output_transform_backward: AT must be [m, m + 2], got ", AT.sizes());
  const int64_t m = AT.size(0), a = m + 2;
  check_matrix(AT, m, a, "AT");
  TORCH_CHECK(a <= kMaxTile, "winograd_output_transform_backward: tile size ", a, " > ", kMaxTile);
  const auto g = grad.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t N = g.size(0), K = g.size(1), H = g.size(2), W = g.size(3);
  const int64_t th = tiles_along(H, m), tw = tiles_along(W, m), T = N * th * tw;
  auto gM = at::empty({a * a, T, K}, g.options());
  if (T == 0 || K == 0) return gM;
  // grad_M_tile = AT^T grad_Y_tile AT: left factor ATt [a, m], ATt[j][i] = AT[i][j]
  std::vector<float> att(static_cast<size_t>(a * m));
  const auto at_ = AT.contiguous();
  const float* ap = at_.data_ptr<float>();
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < a; ++j) att[j * m + i] = ap[i * a + j];
  const float* gp = g.data_ptr<float>();
  float* op = gM.data_ptr<float>();
  const int64_t grain = tile_grain(a, K);
  at::parallel_for(0, T, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> rows(static_cast<size_t>(a * m * K));
    std::vector<const float*> src(static_cast<size_t>(m * m));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / (th * tw), ty = (t / tw) % th, tx = t % tw;
      for (int64_t i = 0; i < m; ++i) {
        const int64_t y = ty * m + i;
        for (int64_t q = 0; q < m; ++q) {
          const int64_t col = tx * m + q;
          src[i * m + q] = (y < H && col < W) ? gp + ((n * H + y) * W + col) * K : nullptr;
        }
      }
      // rows[j][q] = sum_i AT[i][j] g[i][q]
      left_multiply(att.data(), a, m, m, K, src, rows.data());
      // gM[j * a + l] = sum_q rows[j][q] AT[q][l]
      right_multiply(rows.data(), a, m, ap, a, 1, a, K, op + t * K, T * K);
    }
  });
  return gM;
}

}  // namespace

TORCH_LIBRARY_IMPL(maskrcnn_benchmark, CPU, m) {
  m.impl("winograd_input_transform", TORCH_FN(winograd_input_transform_cpu));
  m.impl("winograd_output_transform", TORCH_FN(winograd_output_transform_cpu));
  m.impl("winograd_output_transform_backward", TORCH_FN(winograd_output_transform_backward_cpu));
}
