/* DLRM's dot interaction in fp32, forward and backward (disttrain/layers/interaction.py), built into the same
 * library as the row kernels (disttrain/layers/row_kernels.py).
 *
 * The vectors are read where they lie (the bottom MLP's output and each table's pooled vector: one pointer and
 * one sample stride per vector), so neither the [B, V, D] stack nor the top MLP's input [dense | pairs] is ever
 * built by a cat; the output is written straight into the top MLP's input.
 *
 * fp32 and bf16 vectors (bf16: read as fp32, summed in fp32, each result rounded to bf16 once, to nearest even).
 * The fp32 summation order is the batched GEMM's (torch.bmm on CPU: each dot product a chain of fused multiply-adds
 * over d from 0, in d order), so the forward is bitwise the torch path's; the backward's two products
 * (G @ T and G^T @ T, each a chain of fused multiply-adds over k in k order, the zero entries of G skipped: adding
 * 0 * t to a finite sum changes nothing) are added last, as baddbmm adds them. Built with -ffp-contract=off:
 * only the explicit fmaf() calls fuse. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define LANES 16
typedef uint16_t bf16_t;

static inline float bf16_to_f32(bf16_t x) {
  uint32_t bits = (uint32_t)x << 16;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

static inline bf16_t f32_to_bf16(float f) { /* round to nearest even; a NaN stays a (quiet) NaN */
  uint32_t bits;
  memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((bits >> 16) | 0x40u);
  return (bf16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

#ifdef __AVX512F__
typedef __m512 lanes_t;
#define ZERO() _mm512_setzero_ps()
#define FMA(x, y, acc) _mm512_fmadd_ps(_mm512_set1_ps(x), y, acc)
#define ADD(x, y) _mm512_add_ps(x, y)
static inline lanes_t load_f32(const float *p) { return _mm512_loadu_ps(p); }
static inline lanes_t load_bf16(const bf16_t *p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
static inline void store_f32(float *p, lanes_t v, int64_t n) {
  _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1u), v);
}
#else /* the same chains, one lane at a time */
typedef struct { float v[LANES]; } lanes_t;
static inline lanes_t ZERO(void) { lanes_t r; for (int l = 0; l < LANES; l++) r.v[l] = 0.0f; return r; }
static inline lanes_t FMA(float x, lanes_t y, lanes_t acc) {
  for (int l = 0; l < LANES; l++) acc.v[l] = fmaf(x, y.v[l], acc.v[l]);
  return acc;
}
static inline lanes_t ADD(lanes_t x, lanes_t y) { for (int l = 0; l < LANES; l++) x.v[l] += y.v[l]; return x; }
static inline lanes_t load_f32(const float *p) { lanes_t r; memcpy(r.v, p, sizeof r.v); return r; }
static inline lanes_t load_bf16(const bf16_t *p) {
  lanes_t r;
  for (int l = 0; l < LANES; l++) r.v[l] = bf16_to_f32(p[l]);
  return r;
}
static inline void store_f32(float *p, lanes_t v, int64_t n) { memcpy(p, v.v, (size_t)n * sizeof(float)); }
#endif

static inline void store_bf16(bf16_t *p, lanes_t v, int64_t n) {
#if defined(__AVX512BF16__) && defined(__AVX512VL__)
  _mm256_mask_storeu_epi16(p, (__mmask16)((1u << n) - 1u), (__m256i)_mm512_cvtneps_pbh(v));
#else
  float f[LANES];
  store_f32(f, v, LANES);
  for (int64_t l = 0; l < n; l++) p[l] = f32_to_bf16(f[l]);
#endif
}

static inline float get_f32(const float *p) { return *p; }
static inline float get_bf16(const bf16_t *p) { return bf16_to_f32(*p); }
static inline void put_f32(float *p, float x) { *p = x; }
static inline void put_bf16(bf16_t *p, float x) { *p = f32_to_bf16(x); }

/* FORWARD: out [B, D + P]: row b = [vector 0 of b | its V(V-1)/2 pair products, pairs (i, j) with j < i in row
 * order]. vec[k] + b * stride[k] is vector k of sample b (D elements). Returns 0, or -1 without memory.
 * BACKWARD: grad [V, B, D] (vector-major: each vector's gradient is one contiguous block, as the exchange sends
 * it) from gz [B, D + P] (rows gz_stride apart), the forward output's gradient: grad[i][b] = (sum_{k<i} g(i,k) v_k) + (sum_{k>i} g(k,i)
 * v_k), each sum a chain over k rising, the two added last; grad[0][b] then gets gz's first D columns added.
 * D must be a multiple of LANES (else -1: use torch's ops). */
#define DOT_KERNELS(SUFFIX, T)                                                                                  \
  int disttrain_dot_forward##SUFFIX(const T *const *vec, const int64_t *stride, int64_t V, int64_t B,           \
                                    int64_t D, T *out) {                                                       \
    const int64_t P = V * (V - 1) / 2;                                                                         \
    const int64_t VP = (V + LANES - 1) / LANES * LANES;                                                        \
    float *tt = calloc((size_t)(D * VP), sizeof(float)); /* [D][VP]: vector k in lane k, lanes past V 0 */    \
    if (tt == NULL) return -1;                                                                                 \
    for (int64_t b = 0; b < B; b++) {                                                                          \
      T *row = out + b * (D + P);                                                                              \
      memcpy(row, vec[0] + b * stride[0], (size_t)D * sizeof(T));                                              \
      for (int64_t k = 0; k < V; k++) {                                                                        \
        const T *v = vec[k] + b * stride[k];                                                                   \
        for (int64_t d = 0; d < D; d++) tt[d * VP + k] = get##SUFFIX(v + d);                                   \
      }                                                                                                        \
      T *pairs = row + D;                                                                                      \
      /* Two rows of the triangle at a time (independent chains hide the multiply-add latency); each product  \
       * is one chain over d from 0. Past the last row the second row repeats the first and is not stored. */  \
      for (int64_t i = 1; i < V; i += 2) {                                                                     \
        const int64_t i2 = i + 1 < V ? i + 1 : i;                                                              \
        const T *v1 = vec[i] + b * stride[i], *v2 = vec[i2] + b * stride[i2];                                  \
        for (int64_t j0 = 0; j0 < i2; j0 += LANES) {                                                           \
          lanes_t a1 = ZERO(), a2 = ZERO();                                                                    \
          for (int64_t d = 0; d < D; d++) {                                                                    \
            const lanes_t col = load_f32(tt + d * VP + j0);                                                    \
            a1 = FMA(get##SUFFIX(v1 + d), col, a1);                                                            \
            a2 = FMA(get##SUFFIX(v2 + d), col, a2);                                                            \
          }                                                                                                    \
          if (j0 < i) store##SUFFIX(pairs + j0, a1, i - j0 < LANES ? i - j0 : LANES);                          \
          if (i2 != i) store##SUFFIX(pairs + i + j0, a2, i2 - j0 < LANES ? i2 - j0 : LANES);                   \
        }                                                                                                      \
        pairs += i2 != i ? i + i2 : i;                                                                         \
      }                                                                                                        \
    }                                                                                                          \
    free(tt);                                                                                                  \
    return 0;                                                                                                  \
  }                                                                                                            \
                                                                                                               \
  int disttrain_dot_backward##SUFFIX(const T *const *vec, const int64_t *stride, int64_t V, int64_t B,          \
                                     int64_t D, const T *gz, int64_t gz_stride, T *grad) {                     \
    if (D % LANES != 0) return -1;                                                                             \
    const int64_t P = V * (V - 1) / 2, step = B * D;                                                           \
    for (int64_t b = 0; b < B; b++) {                                                                          \
      const T *g = gz + b * gz_stride + D; /* g(i, k), k < i, at i(i-1)/2 + k */                               \
      T *gb = grad + b * D;              /* vector i of sample b at gb + i * step */                           \
      for (int64_t i = 0; i < V; i += 2) { /* vectors i and i2 = i + 1 together: four independent chains */    \
        const int64_t i2 = i + 1 < V ? i + 1 : i;                                                              \
        const T *g1 = g + i * (i - 1) / 2, *g2 = g + i2 * (i2 - 1) / 2;                                        \
        for (int64_t d0 = 0; d0 < D; d0 += LANES) {                                                            \
          lanes_t a1 = ZERO(), c1 = ZERO(), a2 = ZERO(), c2 = ZERO();                                          \
          for (int64_t k = 0; k < i; k++) {                                                                    \
            const lanes_t vk = load##SUFFIX(vec[k] + b * stride[k] + d0);                                      \
            a1 = FMA(get##SUFFIX(g1 + k), vk, a1);                                                             \
            a2 = FMA(get##SUFFIX(g2 + k), vk, a2);                                                             \
          }                                                                                                    \
          if (i2 != i) { /* k = i ends row i2's first sum; k = i2 opens row i's second sum */                  \
            a2 = FMA(get##SUFFIX(g2 + i), load##SUFFIX(vec[i] + b * stride[i] + d0), a2);                      \
            c1 = FMA(get##SUFFIX(g + i2 * (i2 - 1) / 2 + i), load##SUFFIX(vec[i2] + b * stride[i2] + d0), c1); \
          }                                                                                                    \
          for (int64_t k = i2 + 1; k < V; k++) {                                                               \
            const T *gk = g + k * (k - 1) / 2;                                                                 \
            const lanes_t vk = load##SUFFIX(vec[k] + b * stride[k] + d0);                                      \
            c1 = FMA(get##SUFFIX(gk + i), vk, c1);                                                             \
            c2 = FMA(get##SUFFIX(gk + i2), vk, c2);                                                            \
          }                                                                                                    \
          store##SUFFIX(gb + i * step + d0, ADD(a1, c1), LANES);                                               \
          if (i2 != i) store##SUFFIX(gb + i2 * step + d0, ADD(a2, c2), LANES);                                 \
        }                                                                                                      \
      }                                                                                                        \
      const T *gd = gz + b * gz_stride;                                                                        \
      for (int64_t d = 0; d < D; d++) put##SUFFIX(gb + d, get##SUFFIX(gd + d) + get##SUFFIX(gb + d));           \
    }                                                                                                          \
    return 0;                                                                                                  \
  }

DOT_KERNELS(_f32, float)
DOT_KERNELS(_bf16, bf16_t)
