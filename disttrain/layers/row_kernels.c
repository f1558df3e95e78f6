/* Row updates of fp32 embedding tables, applied straight from the row gradients (disttrain/layers/row_kernels.py).
 *
 * A step's rows are scattered over tables of millions of rows: each row is a cache miss, and torch's index_add_
 * waits for each one in turn. Here the row AHEAD places further on is prefetched while this one is updated.
 * The arithmetic is torch's, operation for operation, in fp32 and in the same order (built with
 * -ffp-contract=off: no fused multiply-adds), so the results are bitwise those of the torch path. */
#include <math.h>
#include <stdint.h>

#define AHEAD 8
#define LINE 16 /* fp32 values per 64-byte cache line */

static inline void prefetch_row(const float *row, int64_t dim) {
  for (int64_t j = 0; j < dim; j += LINE) __builtin_prefetch(row + j, 1, 0);
}

/* SGD: w[rows[i]] += g[i] * neg_lr, rows in order (duplicates add up in that order, as index_add_ does). */
void disttrain_sgd_rows(float *w, int64_t dim, const int64_t *rows, int64_t n, const float *g, float neg_lr) {
  for (int64_t i = 0; i < n; i++) {
    if (i + AHEAD < n) prefetch_row(w + rows[i + AHEAD] * dim, dim);
    float *wr = w + rows[i] * dim;
    const float *gi = g + i * dim;
    for (int64_t j = 0; j < dim; j++) {
      const float step = gi[j] * neg_lr;
      wr[j] = wr[j] + step;
    }
  }
}

/* Adagrad on distinct rows: s += g * g; w += g / (sqrt(s) + eps) * neg_lr. */
void disttrain_adagrad_rows(float *w, float *s, int64_t dim, const int64_t *rows, int64_t n, const float *g,
                            float neg_lr, float eps) {
  for (int64_t i = 0; i < n; i++) {
    if (i + AHEAD < n) {
      prefetch_row(w + rows[i + AHEAD] * dim, dim);
      prefetch_row(s + rows[i + AHEAD] * dim, dim);
    }
    float *wr = w + rows[i] * dim;
    float *sr = s + rows[i] * dim;
    const float *gi = g + i * dim;
    for (int64_t j = 0; j < dim; j++) {
      const float square = gi[j] * gi[j];
      const float sum = sr[j] + square;
      sr[j] = sum;
      const float std = sqrtf(sum) + eps;
      const float step = (gi[j] / std) * neg_lr;
      wr[j] = wr[j] + step;
    }
  }
}
