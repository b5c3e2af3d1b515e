/* GELU, ReLU and sigmoid: CUDA against the CPU backend on the same random inputs, forward
 * and backward, at sizes that exercise the 16-byte path, its scalar tail and a misaligned
 * (scalar only) view; plus in-place use and the public entry's shape checks. */
#include <stdlib.h>

#include "gpu_testing.h"

typedef struct act_case {
  const char *name;
  cluda_gelu_forward_fn *forward;
  cluda_gelu_backward_fn *backward; /* (x or y, dy, dx) */
  int backward_takes_output;
} act_case;

static const double kRtol = 1e-5, kAtol = 1e-6;

/* offset: elements to skip at the start of each device buffer (1 breaks 16-byte alignment) */
static void check_case(cluda_ctx *gpu, const act_case *c, int n, int h, int w, int ch, int offset) {
  cluda_ctx cpu = cluda_cpu_context(NULL);
  const int64_t count = (int64_t)n * h * w * ch;
  float *x = test_alloc_f32(count), *y = test_alloc_f32(count), *dy = test_alloc_f32(count),
        *dx = test_alloc_f32(count), *got = test_alloc_f32(count);
  test_fill_uniform(x, count, -6.0f, 6.0f, 101 + (uint64_t)count, 0);
  test_fill_uniform(dy, count, -1.0f, 1.0f, 101 + (uint64_t)count, 1);
  cluda_tensor hx = cluda_tensor_4d(CLUDA_F32, x, n, h, w, ch);
  cluda_tensor hy = cluda_tensor_4d(CLUDA_F32, y, n, h, w, ch);
  cluda_tensor hdy = cluda_tensor_4d(CLUDA_F32, dy, n, h, w, ch);
  cluda_tensor hdx = cluda_tensor_4d(CLUDA_F32, dx, n, h, w, ch);
  TEST_OK(c->forward(&cpu, &hx, &hy));
  TEST_OK(c->backward(&cpu, c->backward_takes_output ? &hy : &hx, &hdy, &hdx));

  /* device buffers with room for the offset */
  cluda_tensor big = cluda_tensor_1d(CLUDA_F32, x, (int)(count + offset));
  cluda_tensor bx = gpu_tensor_like(&big), by = gpu_tensor_like(&big), bdy = gpu_tensor_like(&big),
               bdx = gpu_tensor_like(&big);
  cluda_tensor dx_ = hx, dy_ = hx, ddy = hx, ddx = hx;
  dx_.data = cluda_f32(&bx) + offset;
  dy_.data = cluda_f32(&by) + offset;
  ddy.data = cluda_f32(&bdy) + offset;
  ddx.data = cluda_f32(&bdx) + offset;
  gpu_upload(gpu, &dx_, &hx);
  gpu_upload(gpu, &ddy, &hdy);

  char what[128];
  gpu_poison(gpu, &dy_);
  TEST_OK(c->forward(gpu, &dx_, &dy_));
  snprintf(what, sizeof what, "%s forward [%d,%d,%d,%d]+%d", c->name, n, h, w, ch, offset);
  gpu_compare(gpu, what, &dy_, y, got, kRtol, kAtol);

  /* the backward reads the CPU's y, so both sides see the same input */
  if (c->backward_takes_output) gpu_upload(gpu, &dy_, &hy);
  gpu_poison(gpu, &ddx);
  TEST_OK(c->backward(gpu, c->backward_takes_output ? &dy_ : &dx_, &ddy, &ddx));
  snprintf(what, sizeof what, "%s backward [%d,%d,%d,%d]+%d", c->name, n, h, w, ch, offset);
  gpu_compare(gpu, what, &ddx, dx, got, kRtol, kAtol);

  /* in place: y = f(y) with y holding x */
  gpu_upload(gpu, &dy_, &hx);
  TEST_OK(c->forward(gpu, &dy_, &dy_));
  snprintf(what, sizeof what, "%s forward in place", c->name);
  gpu_compare(gpu, what, &dy_, y, got, kRtol, kAtol);

  /* bad shapes never reach the GPU */
  cluda_tensor wrong = dy_;
  wrong.shape[3] = ch + 1;
  snprintf(what, sizeof what, "%s_forward", c->name);
  TEST_FAILS(c->forward(gpu, &dx_, &wrong), CLUDA_ERR_SHAPE, what);
  snprintf(what, sizeof what, "%s_backward", c->name);
  TEST_FAILS(c->backward(gpu, &dx_, &ddy, &wrong), CLUDA_ERR_SHAPE, what);
  TEST_OK(cluda_cuda_synchronize(gpu));

  gpu_tensors_free(&bx, &by, &bdy, &bdx, NULL);
  free(x);
  free(y);
  free(dy);
  free(dx);
  free(got);
}

int main(int argc, char **argv) {
  (void)argc;
  cluda_ctx gpu;
  gpu_test_init(argv[0], 1 << 20, &gpu);
  const act_case cases[] = {
      {"gelu", cluda_gelu_forward, cluda_gelu_backward, 0},
      {"relu", cluda_relu_forward, cluda_relu_backward, 1},
      {"sigmoid", cluda_sigmoid_forward, cluda_sigmoid_backward, 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    check_case(&gpu, &cases[i], 1, 1, 1, 1, 0);       /* one element: tail only */
    check_case(&gpu, &cases[i], 2, 7, 9, 33, 0);      /* 4158: float4 body + 2-element tail */
    check_case(&gpu, &cases[i], 2, 7, 9, 33, 1);      /* misaligned: scalar path */
    check_case(&gpu, &cases[i], 2, 128, 128, 129, 0); /* 4.2 M: grid-stride rounds */
  }
  return gpu_test_finish(argv[0], &gpu);
}
