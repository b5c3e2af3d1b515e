#include "cluda/backend.h"

static const cluda_backend cpu_backend = {
    .name = "cpu",
    .gelu_forward = cluda_cpu_gelu_forward,
    .gelu_backward = cluda_cpu_gelu_backward,
    .relu_forward = cluda_cpu_relu_forward,
    .relu_backward = cluda_cpu_relu_backward,
    .sigmoid_forward = cluda_cpu_sigmoid_forward,
    .sigmoid_backward = cluda_cpu_sigmoid_backward,
    .axpy = cluda_cpu_axpy,
    .softmax_forward = cluda_cpu_softmax_forward,
    .softmax_backward = cluda_cpu_softmax_backward,
    .linear_forward = cluda_cpu_linear_forward,
    .linear_backward = cluda_cpu_linear_backward,
    .conv2d_forward = cluda_cpu_conv2d_forward,
    .conv2d_backward = cluda_cpu_conv2d_backward,
    .layernorm_forward = cluda_cpu_layernorm_forward,
    .layernorm_backward = cluda_cpu_layernorm_backward,
    .batchnorm_forward = cluda_cpu_batchnorm_forward,
    .batchnorm_backward = cluda_cpu_batchnorm_backward,
    .attention_forward = cluda_cpu_attention_forward,
    .attention_backward = cluda_cpu_attention_backward,
    .resize_bilinear_forward = cluda_cpu_resize_bilinear_forward,
    .resize_bilinear_backward = cluda_cpu_resize_bilinear_backward,
    .resize_nearest_forward = cluda_cpu_resize_nearest_forward,
    .resize_nearest_backward = cluda_cpu_resize_nearest_backward,
    .avgpool_forward = cluda_cpu_avgpool_forward,
    .avgpool_backward = cluda_cpu_avgpool_backward,
    .concat_forward = cluda_cpu_concat_forward,
    .concat_backward = cluda_cpu_concat_backward,
    .slice_forward = cluda_cpu_slice_forward,
    .slice_backward = cluda_cpu_slice_backward,
    .dropout_forward = cluda_cpu_dropout_forward,
    .dropout_backward = cluda_cpu_dropout_backward,
    .cross_entropy_forward = cluda_cpu_cross_entropy_forward,
    .cross_entropy_backward = cluda_cpu_cross_entropy_backward,
    .l2norm_forward = cluda_cpu_l2norm_forward,
    .l2norm_backward = cluda_cpu_l2norm_backward,
    .feature_distance_forward = cluda_cpu_feature_distance_forward,
    .feature_distance_backward = cluda_cpu_feature_distance_backward,
};

const cluda_backend *cluda_backend_cpu(void) { return &cpu_backend; }

cluda_ctx cluda_cpu_context(cluda_arena *scratch) {
  cluda_ctx ctx = {.backend = &cpu_backend, .scratch = scratch, .device = NULL};
  return ctx;
}
