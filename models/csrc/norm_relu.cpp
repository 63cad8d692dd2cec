// Fused training-mode BatchNorm2d + ReLU, optionally with a residual addition before the
// ReLU: y = relu(batch_norm(x) + skip), forward and backward, for float32 channels_last
// CPU tensors (models/fused.py builds, loads and calls it; it falls back to PyTorch's ops
// wherever this does not apply).
//
// Why: on a CPU, PyTorch runs batch norm, the addition and ReLU as separate passes over
// memory (batch norm's statistics, its normalization, the add, the ReLU, and as many
// again backward); fused, the forward reads x once for the statistics and once to write
// y, and the backward makes one reduction pass and one elementwise pass.
//
// Same arithmetic as PyTorch's batch norm in training mode: batch mean and biased
// variance per channel normalize; the running mean and the unbiased variance enter the
// running statistics with weight `momentum`. Reductions run over fixed chunks of rows
// whose size depends on C alone, combined in chunk order, so results do not depend on
// the number of threads (the same bits with 1 or 16). ReLU propagates NaN as PyTorch's
// does, and its gradient passes where y > 0.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <algorithm>
#include <cmath>
#include <vector>

namespace {

void check_input(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 4 &&
                  t.is_contiguous(at::MemoryFormat::ChannelsLast),
              name, ": a float32 CPU tensor (N, C, H, W) in channels_last layout expected");
}

// Rows per chunk: ~32 KiB of one tensor, fixed by C alone, so the reduction order (and
// so the result) does not depend on the number of threads.
inline int64_t chunk_rows(int64_t C) { return std::max<int64_t>(16, 8192 / C); }
inline int64_t num_chunks(int64_t M, int64_t C) { return (M + chunk_rows(C) - 1) / chunk_rows(C); }

// f(k, r0, r1, scratch) for every chunk k of rows [r0, r1) of an (M, C) tensor, the chunks
// shared among the threads, each thread with its own `scratch` floats.
template <typename F>
void for_each_chunk(int64_t M, int64_t C, int64_t scratch, const F& f) {
  const int64_t R = chunk_rows(C);
  at::parallel_for(0, num_chunks(M, C), 1, [&](int64_t k0, int64_t k1) {
    std::vector<float> acc(scratch);
    for (int64_t k = k0; k < k1; ++k) f(k, k * R, std::min(M, (k + 1) * R), acc.data());
  });
}

// The loops below run over the C channels of a row (contiguous in channels_last), with
// C a compile-time constant for the usual widths (RESABLATE_DISPATCH_C) and `omp simd`
// on every channel loop: without it GCC unrolls a 16-channel loop into scalar code.

// y = max(x * a + b (+ s), 0) over n rows of C channels (max(v, 0): NaN stays NaN)
template <int64_t CT>
void apply_rows_t(const float* __restrict__ x, const float* __restrict__ s,
                  float* __restrict__ y, const float* __restrict__ a,
                  const float* __restrict__ b, int64_t n, int64_t Cdyn) {
  const int64_t C = CT ? CT : Cdyn;
  for (int64_t r = 0; r < n; ++r, x += C, y += C) {
    if (s) {
      #pragma omp simd
      for (int64_t c = 0; c < C; ++c) y[c] = std::max(x[c] * a[c] + b[c] + s[c], 0.f);
      s += C;
    } else {
      #pragma omp simd
      for (int64_t c = 0; c < C; ++c) y[c] = std::max(x[c] * a[c] + b[c], 0.f);
    }
  }
}

// sg += sum of g masked by y > 0; sgx += sum of masked g * (x - mean)
template <int64_t CT>
void grad_sums_t(const float* __restrict__ g, const float* __restrict__ x,
                 const float* __restrict__ y, const float* __restrict__ mean,
                 float* __restrict__ sg, float* __restrict__ sgx, float* __restrict__ acc,
                 int64_t n, int64_t Cdyn) {
  const int64_t C = CT ? CT : Cdyn;
  #pragma omp simd
  for (int64_t c = 0; c < 8 * C; ++c) acc[c] = 0.f;
  int64_t r = 0;
  for (; r + 4 <= n; r += 4) {
    for (int64_t j = 0; j < 4; ++j) {
      const float *gj = g + (r + j) * C, *xj = x + (r + j) * C, *yj = y + (r + j) * C;
      float *s = acc + j * C, *t = acc + (4 + j) * C;
      #pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const float gv = gj[c], gm = yj[c] > 0.f ? gv : 0.f;
        s[c] += gm;
        t[c] += gm * (xj[c] - mean[c]);
      }
    }
  }
  for (; r < n; ++r) {
    const float *gj = g + r * C, *xj = x + r * C, *yj = y + r * C;
    #pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const float gv = gj[c], gm = yj[c] > 0.f ? gv : 0.f;
      acc[c] += gm;
      acc[4 * C + c] += gm * (xj[c] - mean[c]);
    }
  }
  #pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    sg[c] = (acc[c] + acc[C + c]) + (acc[2 * C + c] + acc[3 * C + c]);
    sgx[c] = (acc[4 * C + c] + acc[5 * C + c]) + (acc[6 * C + c] + acc[7 * C + c]);
  }
}

// dx = gm * A + x * D + B, ds = gm, with gm = g masked by y > 0
template <int64_t CT>
void grad_rows_t(const float* __restrict__ g, const float* __restrict__ x,
               const float* __restrict__ y, float* __restrict__ dx, float* __restrict__ ds,
               const float* __restrict__ A, const float* __restrict__ D,
               const float* __restrict__ B, int64_t n, int64_t Cdyn) {
  const int64_t C = CT ? CT : Cdyn;
  for (int64_t r = 0; r < n; ++r, g += C, x += C, y += C, dx += C) {
    if (ds) {
      #pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const float gv = g[c], gm = y[c] > 0.f ? gv : 0.f;
        ds[c] = gm;
        dx[c] = gm * A[c] + x[c] * D[c] + B[c];
      }
      ds += C;
    } else {
      #pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const float gv = g[c], gm = y[c] > 0.f ? gv : 0.f;
        dx[c] = gm * A[c] + x[c] * D[c] + B[c];
      }
    }
  }
}

// Four rows at a time into four partial sums: one running sum per channel would be a
// chain of dependent additions (latency-bound); four chains keep the FPU busy.
template <int64_t CT>
void chunk_stats_t(const float* __restrict__ x, float* __restrict__ mu, float* __restrict__ q,
                   float* __restrict__ acc, float inv, int64_t n, int64_t Cdyn) {
  const int64_t C = CT ? CT : Cdyn;
  float *a0 = acc, *a1 = acc + C, *a2 = acc + 2 * C, *a3 = acc + 3 * C;
  #pragma omp simd
  for (int64_t c = 0; c < 4 * C; ++c) acc[c] = 0.f;
  int64_t r = 0;
  for (; r + 4 <= n; r += 4) {
    const float* p = x + r * C;
    #pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      a0[c] += p[c]; a1[c] += p[C + c]; a2[c] += p[2 * C + c]; a3[c] += p[3 * C + c];
    }
  }
  for (; r < n; ++r)
    #pragma omp simd
    for (int64_t c = 0; c < C; ++c) a0[c] += x[r * C + c];
  #pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    mu[c] = ((a0[c] + a1[c]) + (a2[c] + a3[c])) * inv;
    a0[c] = a1[c] = a2[c] = a3[c] = 0.f;
  }
  for (r = 0; r + 4 <= n; r += 4) {
    const float* p = x + r * C;
    #pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const float d0 = p[c] - mu[c], d1 = p[C + c] - mu[c], d2 = p[2 * C + c] - mu[c],
                  d3 = p[3 * C + c] - mu[c];
      a0[c] += d0 * d0; a1[c] += d1 * d1; a2[c] += d2 * d2; a3[c] += d3 * d3;
    }
  }
  for (; r < n; ++r)
    #pragma omp simd
    for (int64_t c = 0; c < C; ++c) { const float d = x[r * C + c] - mu[c]; a0[c] += d * d; }
  #pragma omp simd
  for (int64_t c = 0; c < C; ++c) q[c] = (a0[c] + a1[c]) + (a2[c] + a3[c]);
}

// Channel counts of the project's networks get fully unrolled loops; others the generic one.
#define RESABLATE_DISPATCH_C(C, F, ...)        \
  switch (C) {                                 \
    case 8: return F<8>(__VA_ARGS__);          \
    case 16: return F<16>(__VA_ARGS__);        \
    case 32: return F<32>(__VA_ARGS__);        \
    case 64: return F<64>(__VA_ARGS__);        \
    case 128: return F<128>(__VA_ARGS__);      \
    case 256: return F<256>(__VA_ARGS__);      \
    case 512: return F<512>(__VA_ARGS__);      \
    default: return F<0>(__VA_ARGS__);         \
  }

void apply_rows(const float* x, const float* s, float* y, const float* a, const float* b,
                int64_t n, int64_t C) {
  RESABLATE_DISPATCH_C(C, apply_rows_t, x, s, y, a, b, n, C)
}
void grad_sums(const float* g, const float* x, const float* y, const float* mean, float* sg,
               float* sgx, float* acc, int64_t n, int64_t C) {
  RESABLATE_DISPATCH_C(C, grad_sums_t, g, x, y, mean, sg, sgx, acc, n, C)
}
void grad_rows(const float* g, const float* x, const float* y, float* dx, float* ds,
               const float* A, const float* D, const float* B, int64_t n, int64_t C) {
  RESABLATE_DISPATCH_C(C, grad_rows_t, g, x, y, dx, ds, A, D, B, n, C)
}
void chunk_stats(const float* x, float* mu, float* q, float* acc, float inv, int64_t n,
                 int64_t C) {
  RESABLATE_DISPATCH_C(C, chunk_stats_t, x, mu, q, acc, inv, n, C)
}

// x: (M, C) rows. Per chunk: its mean and sum of squared deviations from that mean
// (two passes over a cache-resident chunk), then Chan et al.'s pairwise combination in
// double, in chunk order.
void channel_stats(const float* x, int64_t M, int64_t C, std::vector<double>& mean,
                   std::vector<double>& m2) {
  const int64_t R = chunk_rows(C), K = num_chunks(M, C);
  std::vector<float> cmean(K * C), cm2(K * C);
  for_each_chunk(M, C, 4 * C, [&](int64_t k, int64_t r0, int64_t r1, float* acc) {
    chunk_stats(x + r0 * C, &cmean[k * C], &cm2[k * C], acc, 1.0f / float(r1 - r0),
                r1 - r0, C);
  });
  mean.assign(C, 0.0);
  m2.assign(C, 0.0);
  double n = 0;
  for (int64_t k = 0; k < K; ++k) {
    const double nk = double(std::min(M, (k + 1) * R) - k * R), tot = n + nk;
    #pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const double d = double(cmean[k * C + c]) - mean[c];
      mean[c] += d * nk / tot;
      m2[c] += double(cm2[k * C + c]) + d * d * n * nk / tot;
    }
    n = tot;
  }
}

// returns (y, mean, invstd); updates running stats in place like native_batch_norm.
std::vector<at::Tensor> forward(const at::Tensor& x, const c10::optional<at::Tensor>& skip,
                                const at::Tensor& weight, const at::Tensor& bias,
                                at::Tensor running_mean, at::Tensor running_var,
                                double momentum, double eps) {
  check_input(x, "x");
  if (skip.has_value()) {
    check_input(*skip, "skip");
    TORCH_CHECK(skip->sizes() == x.sizes(), "skip and x differ in shape");
  }
  const int64_t C = x.size(1), M = x.numel() / C;
  TORCH_CHECK(M > 1, "Expected more than 1 value per channel when training, got input size ",
              x.sizes());
  for (const at::Tensor* t :
       std::initializer_list<const at::Tensor*>{&weight, &bias, &running_mean, &running_var})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == C,
                "weight, bias and running statistics: ", C, " contiguous floats each");
  std::vector<double> mean, m2;
  const float* xp = x.data_ptr<float>();
  channel_stats(xp, M, C, mean, m2);
  auto opts = x.options();
  at::Tensor mean_t = at::empty({C}, opts), invstd_t = at::empty({C}, opts);
  std::vector<float> a(C), b(C);
  {
    float* mp = mean_t.data_ptr<float>();
    float* ip = invstd_t.data_ptr<float>();
    const float* w = weight.data_ptr<float>();
    const float* bb = bias.data_ptr<float>();
    float* rm = running_mean.data_ptr<float>();
    float* rv = running_var.data_ptr<float>();
    #pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const double var = m2[c] / double(M);
      const double invstd = 1.0 / std::sqrt(var + eps);
      mp[c] = float(mean[c]);
      ip[c] = float(invstd);
      a[c] = float(double(w[c]) * invstd);
      b[c] = float(double(bb[c]) - mean[c] * double(w[c]) * invstd);
      rm[c] = float((1 - momentum) * rm[c] + momentum * mean[c]);
      rv[c] = float((1 - momentum) * rv[c] + momentum * m2[c] / double(M - 1));
    }
  }
  at::Tensor y = at::empty_like(x);  // same (channels_last) layout
  float* yp = y.data_ptr<float>();
  const float* sp = skip.has_value() ? skip->data_ptr<float>() : nullptr;
  at::parallel_for(0, M, 256, [&](int64_t r0, int64_t r1) {
    apply_rows(xp + r0 * C, sp ? sp + r0 * C : nullptr, yp + r0 * C, a.data(), b.data(),
               r1 - r0, C);
  });
  return {y, mean_t, invstd_t};
}

// returns (dx, dskip or empty, dweight, dbias)
std::vector<at::Tensor> backward(const at::Tensor& dy_in, const at::Tensor& x,
                                 const at::Tensor& y, const at::Tensor& weight,
                                 const at::Tensor& mean_t, const at::Tensor& invstd_t,
                                 bool want_skip) {
  at::Tensor dy = dy_in.to(at::kFloat).contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(dy.sizes() == x.sizes(), "dy and x differ in shape");
  const int64_t C = x.size(1), M = x.numel() / C;
  const float* dyp = dy.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  const float* yp = y.data_ptr<float>();
  const float* mp = mean_t.data_ptr<float>();
  const int64_t K = num_chunks(M, C);
  std::vector<float> csg(K * C), csgx(K * C);
  for_each_chunk(M, C, 8 * C, [&](int64_t k, int64_t r0, int64_t r1, float* acc) {
    grad_sums(dyp + r0 * C, xp + r0 * C, yp + r0 * C, mp, &csg[k * C], &csgx[k * C], acc,
              r1 - r0, C);
  });
  std::vector<double> sg(C, 0.0), sgx(C, 0.0);
  for (int64_t k = 0; k < K; ++k) {  // in chunk order, in double
    #pragma omp simd
    for (int64_t c = 0; c < C; ++c) { sg[c] += csg[k * C + c]; sgx[c] += csgx[k * C + c]; }
  }
  auto opts = x.options();
  at::Tensor dw = at::empty({C}, opts), db = at::empty({C}, opts);
  std::vector<float> A(C), B(C), D(C);
  {
    const float* w = weight.data_ptr<float>();
    const float* ip = invstd_t.data_ptr<float>();
    float* dwp = dw.data_ptr<float>();
    float* dbp = db.data_ptr<float>();
    #pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const double is = ip[c], wi = double(w[c]) * is;
      const double mg = sg[c] / double(M), k = sgx[c] * is * is / double(M);
      dwp[c] = float(sgx[c] * is);
      dbp[c] = float(sg[c]);
      // dx = (g - mg - (x - mean) * k) * wi = g * A + x * D + B
      A[c] = float(wi);
      D[c] = float(-k * wi);
      B[c] = float((-mg + double(mp[c]) * k) * wi);
    }
  }
  at::Tensor dx = at::empty_like(x);
  at::Tensor ds = want_skip ? at::empty_like(x) : at::Tensor();
  float* dxp = dx.data_ptr<float>();
  float* dsp = want_skip ? ds.data_ptr<float>() : nullptr;
  at::parallel_for(0, M, 256, [&](int64_t r0, int64_t r1) {
    const int64_t o = r0 * C;
    grad_rows(dyp + o, xp + o, yp + o, dxp + o, dsp ? dsp + o : nullptr, A.data(), D.data(),
              B.data(), r1 - r0, C);
  });
  return {dx, ds, dw, db};
}

}  // namespace

TORCH_LIBRARY(resablate_fused, m) {
  m.def("forward(Tensor x, Tensor? skip, Tensor weight, Tensor bias, Tensor(a!) running_mean, "
        "Tensor(b!) running_var, float momentum, float eps) -> Tensor[]");
  m.def("backward(Tensor dy, Tensor x, Tensor y, Tensor weight, Tensor mean, Tensor invstd, "
        "bool want_skip) -> Tensor[]");
  m.impl("forward", c10::DispatchKey::CPU, TORCH_FN(forward));
  m.impl("backward", c10::DispatchKey::CPU, TORCH_FN(backward));
}
