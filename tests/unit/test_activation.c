/* GELU, ReLU and sigmoid: forward against a double reference, backward against central
 * finite differences of that reference, and bad-shape handling. */
#include <math.h>
#include <stdlib.h>

#include "testing.h"

typedef double (*scalar_map)(double);

static double gelu_ref(double x) { return 0.5 * x * (1.0 + erf(x / sqrt(2.0))); }
static double relu_ref(double x) { return x > 0.0 ? x : 0.0; }
static double sigmoid_ref(double x) { return 1.0 / (1.0 + exp(-x)); }

/* The gradient of L(x) = sum_i r_i f(x_i) is the backward with dy = r. The op is
 * elementwise, so the central difference of L in x_i only involves term i. */
static void elementwise_finite_difference(scalar_map f, const double *x, const double *r, int64_t n,
                                          double h, double *grad) {
  for (int64_t i = 0; i < n; i++)
    grad[i] = r[i] * (f(x[i] + h) - f(x[i] - h)) / (2.0 * h);
}

typedef struct activation_case {
  const char *name;
  scalar_map ref;
  cluda_gelu_forward_fn *forward;
  cluda_gelu_backward_fn *backward; /* (x or y, dy, dx) */
  int backward_takes_output;        /* ReLU and sigmoid differentiate through y */
} activation_case;

static void check_activation(const activation_case *c, int n, int h, int w, int ch) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  int64_t count = (int64_t)n * h * w * ch;
  float *x = test_alloc_f32(count), *y = test_alloc_f32(count), *dy = test_alloc_f32(count),
        *dx = test_alloc_f32(count);
  double *xd = test_alloc_f64(count), *want = test_alloc_f64(count), *rd = test_alloc_f64(count),
         *grad = test_alloc_f64(count);
  test_fill_uniform(x, count, -4.0f, 4.0f, 11, 0);
  test_fill_uniform(dy, count, -1.0f, 1.0f, 11, 1);
  /* keep ReLU inputs away from the kink, where finite differences are meaningless */
  for (int64_t i = 0; i < count; i++)
    if (fabsf(x[i]) < 1e-2f) x[i] = 0.5f;
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, x, n, h, w, ch);
  cluda_tensor ty = cluda_tensor_4d(CLUDA_F32, y, n, h, w, ch);
  cluda_tensor tdy = cluda_tensor_4d(CLUDA_F32, dy, n, h, w, ch);
  cluda_tensor tdx = cluda_tensor_4d(CLUDA_F32, dx, n, h, w, ch);

  TEST_OK(c->forward(&ctx, &tx, &ty));
  test_to_double(x, xd, count);
  for (int64_t i = 0; i < count; i++)
    want[i] = c->ref(xd[i]);
  char what[96];
  snprintf(what, sizeof what, "%s forward [%d,%d,%d,%d]", c->name, n, h, w, ch);
  test_compare(what, y, want, count, 1e-6, 1e-7);

  TEST_OK(c->backward(&ctx, c->backward_takes_output ? &ty : &tx, &tdy, &tdx));
  test_to_double(dy, rd, count);
  elementwise_finite_difference(c->ref, xd, rd, count, 1e-6, grad);
  snprintf(what, sizeof what, "%s backward vs finite differences", c->name);
  test_compare(what, dx, grad, count, 1e-4, 1e-6);

  /* bad shapes are rejected with the op and argument named */
  cluda_tensor wrong = cluda_tensor_4d(CLUDA_F32, y, n, h, w + 1, ch);
  snprintf(what, sizeof what, "%s_forward", c->name);
  TEST_FAILS(c->forward(&ctx, &tx, &wrong), CLUDA_ERR_SHAPE, what);
  TEST_FAILS(c->forward(&ctx, &tx, NULL), CLUDA_ERR_ARG, "y is NULL");
  snprintf(what, sizeof what, "%s_backward", c->name);
  TEST_FAILS(c->backward(&ctx, &tx, &tdy, &wrong), CLUDA_ERR_SHAPE, what);
  cluda_tensor labels = cluda_tensor_4d(CLUDA_U8, y, n, h, w, ch);
  TEST_FAILS(c->forward(&ctx, &labels, &ty), CLUDA_ERR_DTYPE, "x");

  free(x);
  free(y);
  free(dy);
  free(dx);
  free(xd);
  free(want);
  free(rd);
  free(grad);
}

int main(int argc, char **argv) {
  (void)argc;
  const activation_case cases[] = {
      {"gelu", gelu_ref, cluda_gelu_forward, cluda_gelu_backward, 0},
      {"relu", relu_ref, cluda_relu_forward, cluda_relu_backward, 1},
      {"sigmoid", sigmoid_ref, cluda_sigmoid_forward, cluda_sigmoid_backward, 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    check_activation(&cases[i], 2, 3, 5, 7);
    check_activation(&cases[i], 1, 1, 1, 1);
    check_activation(&cases[i], 3, 17, 9, 33); /* large enough to run threaded */
  }
  return test_finish(argv[0]);
}
