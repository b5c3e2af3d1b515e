/* The backend table: one function pointer per op direction. The CPU table (the reference)
 * is complete; the CUDA table leaves NULL what it does not implement yet, and the public
 * entry points answer CLUDA_ERR_UNSUPPORTED for those. */
#ifndef CLUDA_BACKEND_H
#define CLUDA_BACKEND_H

#include "cluda/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The contrastive loss (include/cluda/contrastive.h; the parameter struct is declared there):
 * the signatures of cluda_contrastive_forward / cluda_contrastive_backward. */
struct cluda_contrastive_params;
typedef cluda_status cluda_contrastive_forward_fn(
    cluda_ctx *ctx, const struct cluda_contrastive_params *p, const cluda_tensor *anchors,
    const cluda_tensor *anchor_labels, const cluda_tensor *anchor_weights,
    const cluda_tensor *contrast, const cluda_tensor *contrast_labels,
    const cluda_tensor *contrast_weights, cluda_tensor *loss, cluda_tensor *stats);
typedef cluda_status cluda_contrastive_backward_fn(
    cluda_ctx *ctx, const struct cluda_contrastive_params *p, const cluda_tensor *anchors,
    const cluda_tensor *anchor_labels, const cluda_tensor *anchor_weights,
    const cluda_tensor *contrast, const cluda_tensor *contrast_labels,
    const cluda_tensor *contrast_weights, const cluda_tensor *stats, const cluda_tensor *dloss,
    cluda_tensor *d_anchors, cluda_tensor *d_contrast, cluda_tensor *d_anchor_weights,
    cluda_tensor *d_contrast_weights);

typedef struct cluda_backend {
  const char *name; /* "cpu" or "cuda" */
  cluda_gelu_forward_fn *gelu_forward;
  cluda_gelu_backward_fn *gelu_backward;
  cluda_relu_forward_fn *relu_forward;
  cluda_relu_backward_fn *relu_backward;
  cluda_sigmoid_forward_fn *sigmoid_forward;
  cluda_sigmoid_backward_fn *sigmoid_backward;
  cluda_axpy_fn *axpy;
  cluda_softmax_forward_fn *softmax_forward;
  cluda_softmax_backward_fn *softmax_backward;
  cluda_linear_forward_fn *linear_forward;
  cluda_linear_backward_fn *linear_backward;
  cluda_conv2d_forward_fn *conv2d_forward;
  cluda_conv2d_backward_fn *conv2d_backward;
  cluda_layernorm_forward_fn *layernorm_forward;
  cluda_layernorm_backward_fn *layernorm_backward;
  cluda_batchnorm_forward_fn *batchnorm_forward;
  cluda_batchnorm_backward_fn *batchnorm_backward;
  cluda_attention_forward_fn *attention_forward;
  cluda_attention_backward_fn *attention_backward;
  cluda_resize_bilinear_forward_fn *resize_bilinear_forward;
  cluda_resize_bilinear_backward_fn *resize_bilinear_backward;
  cluda_resize_nearest_forward_fn *resize_nearest_forward;
  cluda_resize_nearest_backward_fn *resize_nearest_backward;
  cluda_avgpool_forward_fn *avgpool_forward;
  cluda_avgpool_backward_fn *avgpool_backward;
  cluda_concat_forward_fn *concat_forward;
  cluda_concat_backward_fn *concat_backward;
  cluda_slice_forward_fn *slice_forward;
  cluda_slice_backward_fn *slice_backward;
  cluda_dropout_forward_fn *dropout_forward;
  cluda_dropout_backward_fn *dropout_backward;
  cluda_cross_entropy_forward_fn *cross_entropy_forward;
  cluda_cross_entropy_backward_fn *cross_entropy_backward;
  cluda_l2norm_forward_fn *l2norm_forward;
  cluda_l2norm_backward_fn *l2norm_backward;
  cluda_feature_distance_forward_fn *feature_distance_forward;
  cluda_feature_distance_backward_fn *feature_distance_backward;
  /* The CPU computes the contrastive loss inside the public functions (src/nn/contrastive.c),
   * so the CPU table leaves these NULL; on any other backend the public functions validate
   * the arguments and call these. */
  cluda_contrastive_forward_fn *contrastive_forward;
  cluda_contrastive_backward_fn *contrastive_backward;
} cluda_backend;

/* The CPU reference backend (always available). */
const cluda_backend *cluda_backend_cpu(void);

/* A context for the CPU backend with the given scratch arena (may be NULL for ops that
 * need no scratch). */
cluda_ctx cluda_cpu_context(cluda_arena *scratch);

/* CPU implementations (src/ops/<op>.c); they assume validated arguments. */
cluda_gelu_forward_fn cluda_cpu_gelu_forward;
cluda_gelu_backward_fn cluda_cpu_gelu_backward;
cluda_relu_forward_fn cluda_cpu_relu_forward;
cluda_relu_backward_fn cluda_cpu_relu_backward;
cluda_sigmoid_forward_fn cluda_cpu_sigmoid_forward;
cluda_sigmoid_backward_fn cluda_cpu_sigmoid_backward;
cluda_axpy_fn cluda_cpu_axpy;
cluda_softmax_forward_fn cluda_cpu_softmax_forward;
cluda_softmax_backward_fn cluda_cpu_softmax_backward;
cluda_linear_forward_fn cluda_cpu_linear_forward;
cluda_linear_backward_fn cluda_cpu_linear_backward;
cluda_conv2d_forward_fn cluda_cpu_conv2d_forward;
cluda_conv2d_backward_fn cluda_cpu_conv2d_backward;
cluda_layernorm_forward_fn cluda_cpu_layernorm_forward;
cluda_layernorm_backward_fn cluda_cpu_layernorm_backward;
cluda_batchnorm_forward_fn cluda_cpu_batchnorm_forward;
cluda_batchnorm_backward_fn cluda_cpu_batchnorm_backward;
cluda_attention_forward_fn cluda_cpu_attention_forward;
cluda_attention_backward_fn cluda_cpu_attention_backward;
cluda_resize_bilinear_forward_fn cluda_cpu_resize_bilinear_forward;
cluda_resize_bilinear_backward_fn cluda_cpu_resize_bilinear_backward;
cluda_resize_nearest_forward_fn cluda_cpu_resize_nearest_forward;
cluda_resize_nearest_backward_fn cluda_cpu_resize_nearest_backward;
cluda_avgpool_forward_fn cluda_cpu_avgpool_forward;
cluda_avgpool_backward_fn cluda_cpu_avgpool_backward;
cluda_concat_forward_fn cluda_cpu_concat_forward;
cluda_concat_backward_fn cluda_cpu_concat_backward;
cluda_slice_forward_fn cluda_cpu_slice_forward;
cluda_slice_backward_fn cluda_cpu_slice_backward;
cluda_dropout_forward_fn cluda_cpu_dropout_forward;
cluda_dropout_backward_fn cluda_cpu_dropout_backward;
cluda_cross_entropy_forward_fn cluda_cpu_cross_entropy_forward;
cluda_cross_entropy_backward_fn cluda_cpu_cross_entropy_backward;
cluda_l2norm_forward_fn cluda_cpu_l2norm_forward;
cluda_l2norm_backward_fn cluda_cpu_l2norm_backward;
cluda_feature_distance_forward_fn cluda_cpu_feature_distance_forward;
cluda_feature_distance_backward_fn cluda_cpu_feature_distance_backward;

#ifdef __cplusplus
}
#endif
#endif
