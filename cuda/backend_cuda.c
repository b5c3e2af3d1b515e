/* The CUDA backend table. Ops without a CUDA version stay NULL: their public entry points
 * answer CLUDA_ERR_UNSUPPORTED on a CUDA context (no silent fallback to the CPU, whose
 * kernels cannot read device memory). */
#include "cluda/backend.h"
#include "cluda/cuda.h"

static const cluda_backend cuda_backend = {
    .name = "cuda",
    .gelu_forward = cluda_cuda_gelu_forward,
    .gelu_backward = cluda_cuda_gelu_backward,
    .relu_forward = cluda_cuda_relu_forward,
    .relu_backward = cluda_cuda_relu_backward,
    .sigmoid_forward = cluda_cuda_sigmoid_forward,
    .sigmoid_backward = cluda_cuda_sigmoid_backward,
    .softmax_forward = cluda_cuda_softmax_forward,
    .softmax_backward = cluda_cuda_softmax_backward,
    .layernorm_forward = cluda_cuda_layernorm_forward,
    .layernorm_backward = cluda_cuda_layernorm_backward,
    .cross_entropy_forward = cluda_cuda_cross_entropy_forward,
    .cross_entropy_backward = cluda_cuda_cross_entropy_backward,
    .conv2d_forward = cluda_cuda_conv2d_forward,
    .conv2d_backward = cluda_cuda_conv2d_backward,
    .batchnorm_forward = cluda_cuda_batchnorm_forward,
    .batchnorm_backward = cluda_cuda_batchnorm_backward,
    .resize_bilinear_forward = cluda_cuda_resize_bilinear_forward,
    .resize_bilinear_backward = cluda_cuda_resize_bilinear_backward,
    .resize_nearest_forward = cluda_cuda_resize_nearest_forward,
    .resize_nearest_backward = cluda_cuda_resize_nearest_backward,
    .linear_forward = cluda_cuda_linear_forward,
    .linear_backward = cluda_cuda_linear_backward,
    .axpy = cluda_cuda_axpy,
    .l2norm_forward = cluda_cuda_l2norm_forward,
    .l2norm_backward = cluda_cuda_l2norm_backward,
    .feature_distance_forward = cluda_cuda_feature_distance_forward,
    .feature_distance_backward = cluda_cuda_feature_distance_backward,
    .avgpool_forward = cluda_cuda_avgpool_forward,
    .avgpool_backward = cluda_cuda_avgpool_backward,
    .concat_forward = cluda_cuda_concat_forward,
    .concat_backward = cluda_cuda_concat_backward,
    .slice_forward = cluda_cuda_slice_forward,
    .slice_backward = cluda_cuda_slice_backward,
    .dropout_forward = cluda_cuda_dropout_forward,
    .dropout_backward = cluda_cuda_dropout_backward,
    .attention_forward = cluda_cuda_attention_forward,
    .attention_backward = cluda_cuda_attention_backward,
    .contrastive_forward = cluda_cuda_contrastive_forward,
    .contrastive_backward = cluda_cuda_contrastive_backward,
};

const cluda_backend *cluda_backend_cuda(void) { return &cuda_backend; }
