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
};

const cluda_backend *cluda_backend_cuda(void) { return &cuda_backend; }
