// The native CPU kernels of kernels/interaction.py (see its docstring for the contract and the why).
//
// GCC vector extensions: a 64-byte vector per scalar type, which GCC lowers to AVX-512, AVX2, SSE or
// NEON for -march=native. The ops registered here (recsys_kernels::*) take CPU float32/float64 tensors
// in the layouts named below; the public ops (recsys::*, defined in Python) check shapes, pick this
// kernel or the torch path, and own autograd.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>
#include <vector>

namespace {

typedef float vec_float __attribute__((vector_size(64)));
typedef float uvec_float __attribute__((vector_size(64), aligned(sizeof(float))));
typedef int mask_float __attribute__((vector_size(64)));
typedef double vec_double __attribute__((vector_size(64)));
typedef double uvec_double __attribute__((vector_size(64), aligned(sizeof(double))));
typedef long long mask_double __attribute__((vector_size(64)));

template <typename T> struct Vec;
template <> struct Vec<float> {
  typedef vec_float type;
  typedef uvec_float unaligned;
  static constexpr int lanes = 16;
};
template <> struct Vec<double> {
  typedef vec_double type;
  typedef uvec_double unaligned;
  static constexpr int lanes = 8;
};

template <typename T> inline typename Vec<T>::type load(const T *p) {
  return *(const typename Vec<T>::unaligned *)p;
}
template <typename T> inline void store(T *p, typename Vec<T>::type v) {
  *(typename Vec<T>::unaligned *)p = v;
}

// The lane sums of four vectors into out[0..3]: halves, then quarters, then within a quarter.
inline void reduce4(vec_float a, vec_float b, vec_float c, vec_float d, float *out) {
  const mask_float lo1 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
  const mask_float hi1 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
  const mask_float lo2 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
  const mask_float hi2 = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
  const mask_float swap2 = {2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13};
  const mask_float swap1 = {1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14};
  vec_float ab = __builtin_shuffle(a, b, lo1) + __builtin_shuffle(a, b, hi1);  // a | b, halves
  vec_float cd = __builtin_shuffle(c, d, lo1) + __builtin_shuffle(c, d, hi1);
  vec_float q = __builtin_shuffle(ab, cd, lo2) + __builtin_shuffle(ab, cd, hi2);  // a | b | c | d
  q += __builtin_shuffle(q, swap2);
  q += __builtin_shuffle(q, swap1);
  out[0] = q[0]; out[1] = q[4]; out[2] = q[8]; out[3] = q[12];
}

inline void reduce4(vec_double a, vec_double b, vec_double c, vec_double d, double *out) {
  const mask_double lo1 = {0, 1, 2, 3, 8, 9, 10, 11};
  const mask_double hi1 = {4, 5, 6, 7, 12, 13, 14, 15};
  const mask_double lo2 = {0, 1, 4, 5, 8, 9, 12, 13};
  const mask_double hi2 = {2, 3, 6, 7, 10, 11, 14, 15};
  const mask_double swap1 = {1, 0, 3, 2, 5, 4, 7, 6};
  vec_double ab = __builtin_shuffle(a, b, lo1) + __builtin_shuffle(a, b, hi1);
  vec_double cd = __builtin_shuffle(c, d, lo1) + __builtin_shuffle(c, d, hi1);
  vec_double q = __builtin_shuffle(ab, cd, lo2) + __builtin_shuffle(ab, cd, hi2);
  q += __builtin_shuffle(q, swap1);
  out[0] = q[0]; out[1] = q[2]; out[2] = q[4]; out[3] = q[6];
}

template <typename T> inline T dot1(const T *a, const T *b, int D) {
  constexpr int L = Vec<T>::lanes;
  typename Vec<T>::type s = {0};
  int d = 0;
  for (; d + L <= D; d += L) s += load(a + d) * load(b + d);
  typename Vec<T>::type z = {0};
  T r[4];
  reduce4(s, z, z, z, r);
  for (; d < D; ++d) r[0] += a[d] * b[d];
  return r[0];
}

// A sample's F vectors: vector 0 of sample b at first + b * first_stride, vectors 1..F-1 at
// rest + b * rest_stride + (i - 1) * D. One layout serves a (B, F, D) tensor (first = x,
// rest = x + D, both strides F * D) and DLRM's dense vector beside its (B, F - 1, D) pooled
// embeddings, with no copy into one tensor.

// out[b * out_stride + p] = <v_i, v_j> over pairs i < j row-major, rows b0 <= b < b1.
// Four pairs (i, j..j+3) share each load of v_i; a row's last group of four overlaps the one
// before it rather than falling back to single pairs.
template <typename T>
void forward_rows(const T *first, int64_t first_stride, const T *rest, int64_t rest_stride, T *out,
                  int64_t out_stride, int64_t b0, int64_t b1, int F, int D) {
  constexpr int L = Vec<T>::lanes;
  typedef typename Vec<T>::type V;
  for (int64_t b = b0; b < b1; ++b) {
    const T *fb = first + b * first_stride;
    const T *rb = rest + b * rest_stride - D;  // rb + j * D is vector j >= 1
    T *ob = out + b * out_stride;
    for (int i = 0; i < F; ++i) {
      const T *xi = i == 0 ? fb : rb + (int64_t)i * D;
      const int n = F - 1 - i;
      if (n < 4) {
        for (int j = i + 1; j < F; ++j) *ob++ = dot1(xi, rb + (int64_t)j * D, D);
        continue;
      }
      for (int k = 0; k < n; k += 4) {
        if (k + 4 > n) k = n - 4;
        const T *xj = rb + (int64_t)(i + 1 + k) * D;
        V s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
        int d = 0;
        for (; d + L <= D; d += L) {
          V a = load(xi + d);
          s0 += a * load(xj + d);
          s1 += a * load(xj + D + d);
          s2 += a * load(xj + 2 * D + d);
          s3 += a * load(xj + 3 * D + d);
        }
        T r[4];
        reduce4(s0, s1, s2, s3, r);
        for (; d < D; ++d) {
          r[0] += xi[d] * xj[d];
          r[1] += xi[d] * xj[D + d];
          r[2] += xi[d] * xj[2 * D + d];
          r[3] += xi[d] * xj[3 * D + d];
        }
        std::memcpy(ob + k, r, sizeof r);
      }
      ob += n;
    }
  }
}

// dv[b] = (S + S^T) v[b] with S holding grad[b * grad_stride + p] at the pairs, rows b0 <= b < b1,
// written in the vectors' layout (dfirst, drest as first, rest): four rows of dv times four
// vectors of D in registers, one pass over v[b] per four rows. S is F x F scratch with its rows
// padded to a multiple of 4 by zeros.
template <typename T>
void backward_rows(const T *grad, int64_t grad_stride, const T *first, int64_t first_stride, const T *rest,
                   int64_t rest_stride, T *dfirst, int64_t dfirst_stride, T *drest, int64_t drest_stride,
                   int64_t b0, int64_t b1, int F, int D, T *S) {
  constexpr int L = Vec<T>::lanes;
  typedef typename Vec<T>::type V;
  for (int64_t b = b0; b < b1; ++b) {
    const T *gb = grad + b * grad_stride;
    const T *fb = first + b * first_stride, *rb = rest + b * rest_stride - D;
    T *dfb = dfirst + b * dfirst_stride, *drb = drest + b * drest_stride - D;
    int64_t p = 0;
    for (int i = 0; i < F; ++i)
      for (int j = i + 1; j < F; ++j) S[i * F + j] = S[j * F + i] = gb[p++];
    int d0 = 0;
    for (; d0 + 4 * L <= D; d0 += 4 * L) {
      for (int i = 0; i < F; i += 4) {
        V acc[4][4] = {{{0}}};
        for (int j = 0; j < F; ++j) {
          const T *xj = (j == 0 ? fb : rb + (int64_t)j * D) + d0;
          const V v0 = load(xj), v1 = load(xj + L), v2 = load(xj + 2 * L), v3 = load(xj + 3 * L);
          for (int r = 0; r < 4; ++r) {
            const T s = S[(i + r) * F + j];
            acc[r][0] += s * v0; acc[r][1] += s * v1; acc[r][2] += s * v2; acc[r][3] += s * v3;
          }
        }
        for (int r = 0; r < 4 && i + r < F; ++r) {
          T *o = (i + r == 0 ? dfb : drb + (int64_t)(i + r) * D) + d0;
          store(o, acc[r][0]); store(o + L, acc[r][1]); store(o + 2 * L, acc[r][2]); store(o + 3 * L, acc[r][3]);
        }
      }
    }
    for (int i = 0; d0 < D && i < F; ++i) {
      T *di = i == 0 ? dfb : drb + (int64_t)i * D;
      for (int d = d0; d < D; ++d) di[d] = 0;
      for (int j = 0; j < F; ++j) {
        const T s = S[i * F + j];
        const T *xj = j == 0 ? fb : rb + (int64_t)j * D;
        for (int d = d0; d < D; ++d) di[d] += s * xj[d];
      }
    }
  }
}

constexpr int64_t kRowsPerThread = 64;  // below this, waking a thread costs more than it saves

// Where a sample's vectors lie: see forward_rows.
template <typename T> struct Vectors {
  const T *first;
  int64_t first_stride;
  const T *rest;
  int64_t rest_stride;
};

template <typename T>
void forward(Vectors<T> v, T *out, int64_t out_stride, int64_t B, int F, int D) {
  at::parallel_for(0, B, kRowsPerThread, [&](int64_t b0, int64_t b1) {
    forward_rows(v.first, v.first_stride, v.rest, v.rest_stride, out, out_stride, b0, b1, F, D);
  });
}

template <typename T>
void backward(const T *grad, int64_t grad_stride, Vectors<T> v, T *dfirst, int64_t dfirst_stride, T *drest,
              int64_t drest_stride, int64_t B, int F, int D) {
  at::parallel_for(0, B, kRowsPerThread, [&](int64_t b0, int64_t b1) {
    std::vector<T> S((size_t)((F + 3) / 4 * 4) * F, T(0));
    backward_rows(grad, grad_stride, v.first, v.first_stride, v.rest, v.rest_stride, dfirst, dfirst_stride, drest,
                  drest_stride, b0, b1, F, D, S.data());
  });
}

// Each sample (all dims but the first) contiguous, as the kernels read it; samples may lie apart.
bool rows_contiguous(const at::Tensor &t) {
  int64_t expected = 1;
  for (int64_t d = t.dim() - 1; d >= 1; --d) {
    if (t.size(d) != 1 && t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  return true;
}

void check_cpu(const at::Tensor &t, const char *name) {
  TORCH_CHECK(t.device().is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble),
              "recsys_kernels: ", name, " must be a float32 or float64 CPU tensor");
}

// x (B, F, D), contiguous → (B, F*(F-1)/2)
at::Tensor dot_forward(const at::Tensor &x) {
  check_cpu(x, "x");
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous(), "recsys_kernels::dot_forward: contiguous (B, F, D) x expected");
  const int64_t B = x.size(0), F = x.size(1), D = x.size(2), row = F * D;
  at::Tensor out = at::empty({B, F * (F - 1) / 2}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dot_forward", [&] {
    const scalar_t *p = x.const_data_ptr<scalar_t>();
    forward<scalar_t>({p, row, p + D, row}, out.mutable_data_ptr<scalar_t>(), out.size(1), B, F, D);
  });
  return out;
}

// grad (B, P) with contiguous rows, x (B, F, D) contiguous → dx (B, F, D)
at::Tensor dot_backward(const at::Tensor &grad, const at::Tensor &x) {
  check_cpu(x, "x");
  TORCH_CHECK(grad.scalar_type() == x.scalar_type() && grad.dim() == 2 && rows_contiguous(grad) && x.is_contiguous(),
              "recsys_kernels::dot_backward: grad (B, P) with contiguous rows and contiguous x expected");
  const int64_t B = x.size(0), F = x.size(1), D = x.size(2), row = F * D;
  at::Tensor dx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dot_backward", [&] {
    const scalar_t *p = x.const_data_ptr<scalar_t>();
    scalar_t *dp = dx.mutable_data_ptr<scalar_t>();
    backward<scalar_t>(grad.const_data_ptr<scalar_t>(), grad.stride(0), {p, row, p + D, row}, dp, row, dp + D, row,
                       B, F, D);
  });
  return dx;
}

// dense (B, D) and sparse (B, S, D) with contiguous rows → (B, D + P): [dense | pairs]
at::Tensor dlrm_forward(const at::Tensor &dense, const at::Tensor &sparse) {
  check_cpu(dense, "dense");
  TORCH_CHECK(dense.dim() == 2 && sparse.dim() == 3 && sparse.scalar_type() == dense.scalar_type() &&
                  rows_contiguous(dense) && rows_contiguous(sparse),
              "recsys_kernels::dlrm_forward: dense rows and sparse rows must each be contiguous, one dtype");
  const int64_t B = sparse.size(0), D = sparse.size(2), F = sparse.size(1) + 1;
  at::Tensor out = at::empty({B, D + F * (F - 1) / 2}, dense.options());
  out.narrow(1, 0, D).copy_(dense);
  AT_DISPATCH_FLOATING_TYPES(dense.scalar_type(), "dlrm_forward", [&] {
    forward<scalar_t>({dense.const_data_ptr<scalar_t>(), dense.stride(0), sparse.const_data_ptr<scalar_t>(),
                       sparse.stride(0)},
                      out.mutable_data_ptr<scalar_t>() + D, out.size(1), B, F, D);
  });
  return out;
}

// grad (B, D + P) with contiguous rows → (d_dense (B, D), d_sparse (B, S, D)), both contiguous
std::tuple<at::Tensor, at::Tensor> dlrm_backward(const at::Tensor &grad, const at::Tensor &dense,
                                                 const at::Tensor &sparse) {
  check_cpu(dense, "dense");
  TORCH_CHECK(grad.scalar_type() == dense.scalar_type() && sparse.scalar_type() == dense.scalar_type() &&
                  rows_contiguous(grad) && rows_contiguous(dense) && rows_contiguous(sparse),
              "recsys_kernels::dlrm_backward: grad, dense and sparse rows must each be contiguous, one dtype");
  const int64_t B = sparse.size(0), S = sparse.size(1), D = sparse.size(2), F = S + 1;
  at::Tensor d_dense = at::empty({B, D}, dense.options());
  at::Tensor d_sparse = at::empty({B, S, D}, sparse.options());
  AT_DISPATCH_FLOATING_TYPES(dense.scalar_type(), "dlrm_backward", [&] {
    backward<scalar_t>(grad.const_data_ptr<scalar_t>() + D, grad.stride(0),
                       {dense.const_data_ptr<scalar_t>(), dense.stride(0), sparse.const_data_ptr<scalar_t>(),
                        sparse.stride(0)},
                       d_dense.mutable_data_ptr<scalar_t>(), D, d_sparse.mutable_data_ptr<scalar_t>(), S * D, B, F, D);
  });
  d_dense += grad.narrow(1, 0, D);  // the dense vector also reaches the output directly
  return {d_dense, d_sparse};
}

}  // namespace

TORCH_LIBRARY(recsys_kernels, m) {
  m.def("dot_forward(Tensor x) -> Tensor");
  m.def("dot_backward(Tensor grad, Tensor x) -> Tensor");
  m.def("dlrm_forward(Tensor dense, Tensor sparse) -> Tensor");
  m.def("dlrm_backward(Tensor grad, Tensor dense, Tensor sparse) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(recsys_kernels, CPU, m) {
  m.impl("dot_forward", &dot_forward);
  m.impl("dot_backward", &dot_backward);
  m.impl("dlrm_forward", &dlrm_forward);
  m.impl("dlrm_backward", &dlrm_backward);
}
