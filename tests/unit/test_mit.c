/* MiT encoder: presets and parameter counts (b0..b5, tiny) with mmseg names and OHWI shapes;
 * initialisation statistics and reproducibility; plan shapes for odd input sizes, the
 * minimum input size and MACs against model.md 8.1; forward against a naive double
 * reference of the whole encoder written here; backward (dx and sampled elements of every
 * parameter tensor, accumulated onto prior values) against central finite differences of
 * that reference; drop path (masks reproducible from the key, forward and backward against
 * the reference with the same masks); same bits for 1 and 2 threads; a MiT-B5 forward +
 * backward at 128x128; and argument validation. */
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluda/mit.h"
#include "testing.h"

static const char *const kPrefix = "backbone.";

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* PyTorch conv output size, written out independently of the library. */
static int conv_out(int in, int k, int s, int p) { return (in + 2 * p - k) / s + 1; }

/* ==== naive double-precision reference of the whole encoder (NHWC, OHWI weights) ==== */

typedef struct ref_net {
  const cluda_mit_config *cfg;
  const cluda_param_table *table;
  int b, h, w;
  int sh[4], sw[4]; /* stage sizes */
  /* drop path: scale[(k * 2 + branch) * b + n] multiplies sample n's branch output of global
   * block k; NULL for none */
  const double *scale;
} ref_net;

static void ref_init(ref_net *n, const cluda_mit_config *cfg, const cluda_param_table *table, int b,
                     int h, int w, const double *scale) {
  n->cfg = cfg;
  n->table = table;
  n->b = b;
  n->h = h;
  n->w = w;
  n->scale = scale;
  for (int i = 0; i < 4; i++) {
    const int k = i == 0 ? 7 : 3, s = i == 0 ? 4 : 2;
    n->sh[i] = conv_out(i == 0 ? h : n->sh[i - 1], k, s, k / 2);
    n->sw[i] = conv_out(i == 0 ? w : n->sw[i - 1], k, s, k / 2);
  }
}

/* The parameter named prefix + printf(fmt, ...) inside the double copy of the flat buffer. */
static const double *ref_param(const ref_net *n, const double *prm, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static const double *ref_param(const ref_net *n, const double *prm, const char *fmt, ...) {
  char local[CLUDA_PARAM_NAME_MAX], name[2 * CLUDA_PARAM_NAME_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(local, sizeof local, fmt, ap);
  va_end(ap);
  snprintf(name, sizeof name, "%s%s", kPrefix, local);
  const int idx = cluda_param_table_find(n->table, name);
  if (idx < 0) {
    fprintf(stderr, "reference: no parameter named %s\n", name);
    abort();
  }
  return prm + n->table->items[idx].offset;
}

/* y [B, OH, OW, Cout] = conv(x [B, H, W, Cin]) with OHWI weights, zero padding, groups. */
static void conv_ref(const double *x, int b, int h, int w, int cin, const double *wt,
                     const double *bias, int cout, int k, int stride, int pad, int groups,
                     double *y, int oh, int ow) {
  const int cig = cin / groups, cog = cout / groups;
  for (int n = 0; n < b; n++)
    for (int i = 0; i < oh; i++)
      for (int j = 0; j < ow; j++)
        for (int co = 0; co < cout; co++) {
          const int g = co / cog;
          double acc = bias[co];
          for (int u = 0; u < k; u++)
            for (int v = 0; v < k; v++) {
              const int yy = i * stride - pad + u, xx = j * stride - pad + v;
              if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
              const double *xp = x + (((int64_t)n * h + yy) * w + xx) * cin + g * cig;
              const double *wp = wt + (((int64_t)co * k + u) * k + v) * cig;
              for (int ci = 0; ci < cig; ci++)
                acc += xp[ci] * wp[ci];
            }
          y[(((int64_t)n * oh + i) * ow + j) * cout + co] = acc;
        }
}

static void layernorm_ref(const double *x, int64_t rows, int c, const double *g, const double *bb,
                          double eps, double *y) {
  for (int64_t r = 0; r < rows; r++) {
    const double *xr = x + r * c;
    double mean = 0.0, var = 0.0;
    for (int e = 0; e < c; e++)
      mean += xr[e];
    mean /= c;
    for (int e = 0; e < c; e++)
      var += (xr[e] - mean) * (xr[e] - mean);
    var /= c;
    const double rstd = 1.0 / sqrt(var + eps);
    for (int e = 0; e < c; e++)
      y[r * c + e] = (xr[e] - mean) * rstd * g[e] + bb[e];
  }
}

static void linear_ref(const double *x, int64_t rows, int in, const double *w, const double *b,
                       int out, double *y) {
  for (int64_t r = 0; r < rows; r++)
    for (int o = 0; o < out; o++) {
      double acc = b[o];
      for (int k = 0; k < in; k++)
        acc += x[r * in + k] * w[(int64_t)o * in + k];
      y[r * out + o] = acc;
    }
}

/* o [B, N, C] = softmax(q k^T / sqrt(d)) v per head; k and v are the halves of kv [B, Nk, 2C]. */
static void attention_ref(const double *q, const double *kv, int b, int n, int nk, int c, int heads,
                          double *o) {
  const int d = c / heads;
  double *row = test_alloc_f64(nk);
  for (int s = 0; s < b; s++)
    for (int hh = 0; hh < heads; hh++)
      for (int i = 0; i < n; i++) {
        const double *qi = q + ((int64_t)s * n + i) * c + hh * d;
        double mx = -INFINITY, sum = 0.0;
        for (int j = 0; j < nk; j++) {
          const double *kj = kv + ((int64_t)s * nk + j) * 2 * c + hh * d;
          double dot = 0.0;
          for (int e = 0; e < d; e++)
            dot += qi[e] * kj[e];
          row[j] = dot / sqrt((double)d);
          mx = fmax(mx, row[j]);
        }
        for (int j = 0; j < nk; j++)
          sum += (row[j] = exp(row[j] - mx));
        for (int e = 0; e < d; e++) {
          double acc = 0.0;
          for (int j = 0; j < nk; j++)
            acc += row[j] * kv[((int64_t)s * nk + j) * 2 * c + c + hh * d + e];
          o[((int64_t)s * n + i) * c + hh * d + e] = acc / sum;
        }
      }
  free(row);
}

/* x += scale[n] * y per sample (drop path, or plain residual when scale is NULL). */
static void residual_ref(double *x, const double *y, int b, int64_t per, const double *scale) {
  for (int n = 0; n < b; n++)
    for (int64_t t = 0; t < per; t++)
      x[n * per + t] += (scale ? scale[n] : 1.0) * y[n * per + t];
}

/* One block in place on the stream x [B, H, W, C]; k is the global block index. */
static void block_ref(const ref_net *net, const double *prm, int stage, int j, int k, double *x) {
  const cluda_mit_config *cfg = net->cfg;
  const int b = net->b, h = net->sh[stage], w = net->sw[stage], c = cfg->embed_dims[stage];
  const int hid = cfg->mlp_ratio * c, r = cfg->sr_ratios[stage], n = h * w;
  const int64_t rows = (int64_t)b * n;
  const int i1 = stage + 1;
  const double eps = cfg->block_norm_eps;
  double *ln = test_alloc_f64(rows * c), *q = test_alloc_f64(rows * c);
  double *o = test_alloc_f64(rows * c), *y = test_alloc_f64(rows * c);
  double *h1 = test_alloc_f64(rows * hid), *h2 = test_alloc_f64(rows * hid);

  layernorm_ref(x, rows, c, ref_param(net, prm, "block%d.%d.norm1.weight", i1, j),
                ref_param(net, prm, "block%d.%d.norm1.bias", i1, j), eps, ln);
  linear_ref(ln, rows, c, ref_param(net, prm, "block%d.%d.attn.q.weight", i1, j),
             ref_param(net, prm, "block%d.%d.attn.q.bias", i1, j), c, q);
  const int hs = r > 1 ? conv_out(h, r, r, 0) : h, ws = r > 1 ? conv_out(w, r, r, 0) : w;
  const int nk = hs * ws;
  double *kv = test_alloc_f64((int64_t)b * nk * 2 * c), *xs = NULL;
  const double *kv_in = ln;
  if (r > 1) {
    xs = test_alloc_f64((int64_t)b * nk * c);
    double *xs_raw = test_alloc_f64((int64_t)b * nk * c);
    conv_ref(ln, b, h, w, c, ref_param(net, prm, "block%d.%d.attn.sr.weight", i1, j),
             ref_param(net, prm, "block%d.%d.attn.sr.bias", i1, j), c, r, r, 0, 1, xs_raw, hs, ws);
    layernorm_ref(xs_raw, (int64_t)b * nk, c,
                  ref_param(net, prm, "block%d.%d.attn.norm.weight", i1, j),
                  ref_param(net, prm, "block%d.%d.attn.norm.bias", i1, j), cfg->patch_norm_eps, xs);
    free(xs_raw);
    kv_in = xs;
  }
  linear_ref(kv_in, (int64_t)b * nk, c, ref_param(net, prm, "block%d.%d.attn.kv.weight", i1, j),
             ref_param(net, prm, "block%d.%d.attn.kv.bias", i1, j), 2 * c, kv);
  attention_ref(q, kv, b, n, nk, c, cfg->heads[stage], o);
  linear_ref(o, rows, c, ref_param(net, prm, "block%d.%d.attn.proj.weight", i1, j),
             ref_param(net, prm, "block%d.%d.attn.proj.bias", i1, j), c, y);
  residual_ref(x, y, b, (int64_t)n * c, net->scale ? net->scale + (k * 2 + 0) * b : NULL);

  layernorm_ref(x, rows, c, ref_param(net, prm, "block%d.%d.norm2.weight", i1, j),
                ref_param(net, prm, "block%d.%d.norm2.bias", i1, j), eps, ln);
  linear_ref(ln, rows, c, ref_param(net, prm, "block%d.%d.mlp.fc1.weight", i1, j),
             ref_param(net, prm, "block%d.%d.mlp.fc1.bias", i1, j), hid, h1);
  conv_ref(h1, b, h, w, hid, ref_param(net, prm, "block%d.%d.mlp.dwconv.dwconv.weight", i1, j),
           ref_param(net, prm, "block%d.%d.mlp.dwconv.dwconv.bias", i1, j), hid, 3, 1, 1, hid, h2,
           h, w);
  for (int64_t t = 0; t < rows * hid; t++)
    h2[t] = 0.5 * h2[t] * (1.0 + erf(h2[t] / sqrt(2.0)));
  linear_ref(h2, rows, hid, ref_param(net, prm, "block%d.%d.mlp.fc2.weight", i1, j),
             ref_param(net, prm, "block%d.%d.mlp.fc2.bias", i1, j), c, y);
  residual_ref(x, y, b, (int64_t)n * c, net->scale ? net->scale + (k * 2 + 1) * b : NULL);
  free(ln);
  free(q);
  free(o);
  free(y);
  free(h1);
  free(h2);
  free(kv);
  free(xs);
}

/* out[i] [B, sh[i], sw[i], C_i] for the image x [B, H, W, in_channels]. */
static void encoder_ref(const ref_net *net, const double *prm, const double *x, double *out[4]) {
  const cluda_mit_config *cfg = net->cfg;
  const double *in = x;
  int ih = net->h, iw = net->w, ic = cfg->in_channels, k = 0;
  for (int i = 0; i < 4; i++) {
    const int c = cfg->embed_dims[i], ks = i == 0 ? 7 : 3, s = i == 0 ? 4 : 2;
    const int64_t rows = (int64_t)net->b * net->sh[i] * net->sw[i];
    double *e = test_alloc_f64(rows * c), *stream = test_alloc_f64(rows * c);
    conv_ref(in, net->b, ih, iw, ic, ref_param(net, prm, "patch_embed%d.proj.weight", i + 1),
             ref_param(net, prm, "patch_embed%d.proj.bias", i + 1), c, ks, s, ks / 2, 1, e,
             net->sh[i], net->sw[i]);
    layernorm_ref(e, rows, c, ref_param(net, prm, "patch_embed%d.norm.weight", i + 1),
                  ref_param(net, prm, "patch_embed%d.norm.bias", i + 1), cfg->patch_norm_eps,
                  stream);
    for (int j = 0; j < cfg->depths[i]; j++, k++)
      block_ref(net, prm, i, j, k, stream);
    layernorm_ref(stream, rows, c, ref_param(net, prm, "norm%d.weight", i + 1),
                  ref_param(net, prm, "norm%d.bias", i + 1), cfg->block_norm_eps, out[i]);
    free(e);
    free(stream);
    in = out[i];
    ih = net->sh[i];
    iw = net->sw[i];
    ic = c;
  }
}

/* Scalar loss sum_i <r_i, out_i> for finite differences. */
typedef struct fd_problem {
  const ref_net *net;
  double *prm, *x;
  double *r[4], *out[4];
  int64_t count[4];
} fd_problem;

static double fd_loss(fd_problem *p) {
  encoder_ref(p->net, p->prm, p->x, p->out);
  double l = 0.0;
  for (int i = 0; i < 4; i++)
    for (int64_t t = 0; t < p->count[i]; t++)
      l += p->r[i][t] * p->out[i][t];
  return l;
}

/* Central difference of the loss with respect to *v (an element of prm or x). */
static double fd_at(fd_problem *p, double *v, double h) {
  const double saved = *v;
  *v = saved + h;
  const double lp = fd_loss(p);
  *v = saved - h;
  const double lm = fd_loss(p);
  *v = saved;
  return (lp - lm) / (2.0 * h);
}

/* ==== the network under test ==== */

/* The small encoder of the reference checks: every stage kind (sr 4/2/2/1, 1..4 heads) at a
 * non-square input that is no multiple of 32; the SR convs drop remainder rows and every
 * attention has Nk > 1 keys. */
static cluda_mit_config small_config(void) {
  cluda_mit_config cfg;
  TEST_OK(cluda_mit_preset("tiny", &cfg));
  const int dims[4] = {8, 16, 24, 32}, heads[4] = {1, 2, 3, 4}, depths[4] = {1, 2, 1, 1};
  const int sr[4] = {4, 2, 2, 1};
  for (int i = 0; i < 4; i++) {
    cfg.embed_dims[i] = dims[i];
    cfg.heads[i] = heads[i];
    cfg.depths[i] = depths[i];
    cfg.sr_ratios[i] = sr[i];
  }
  /* large, distinct epsilons so that using one in the other's place shows in the outputs */
  cfg.patch_norm_eps = 0.03f;
  cfg.block_norm_eps = 0.3f;
  return cfg;
}

/* Generic values for every parameter: weights with unit-variance fan-in scaling (so the
 * attention is far from uniform), LayerNorm weights around 1, nonzero biases. */
static void fill_generic(const cluda_param_table *t, float *prm, uint64_t seed) {
  for (int k = 0; k < t->count; k++) {
    const cluda_param_info *p = &t->items[k];
    float *v = prm + p->offset;
    const int64_t n = (int64_t)p->count;
    if (p->ndim >= 2) {
      const int fan_in = p->ndim == 2 ? p->shape[1] : p->shape[1] * p->shape[2] * p->shape[3];
      const float a = (float)sqrt(3.0 / fan_in);
      test_fill_uniform(v, n, -a, a, seed, (uint32_t)k);
    } else if (strstr(p->name, "norm") && strstr(p->name, ".weight")) {
      test_fill_uniform(v, n, 0.7f, 1.3f, seed, (uint32_t)k);
    } else {
      test_fill_uniform(v, n, -0.2f, 0.2f, seed, (uint32_t)k);
    }
  }
}

/* Everything one forward/backward run of an encoder needs. */
typedef struct harness {
  cluda_mit mit;
  cluda_param_table table;
  cluda_mit_plan plan;
  cluda_ctx ctx;
  float *prm, *grad, *x, *dx, *dout[4];
  void *acts;
  cluda_tensor tx, tdx, tdout[4], out[4];
  int64_t nx, nout[4];
} harness;

static void harness_make(harness *H, const cluda_mit_config *cfg, int b, int h, int w,
                         uint64_t seed) {
  memset(H, 0, sizeof *H);
  cluda_param_table_init(&H->table);
  TEST_OK(cluda_mit_declare(&H->mit, cfg, kPrefix, &H->table));
  TEST_OK(cluda_mit_plan_for(&H->mit, b, h, w, &H->plan));
  H->ctx = test_cpu_context(H->plan.scratch_bytes); /* exactly what the plan asks for */
  H->acts = test_alloc(H->plan.activation_bytes);   /* exactly: ASan catches overruns */
  H->prm = test_alloc_f32((int64_t)H->table.total);
  H->grad = test_alloc_f32((int64_t)H->table.total);
  memset(H->prm, 0, H->table.total * sizeof(float));
  memset(H->grad, 0, H->table.total * sizeof(float));
  fill_generic(&H->table, H->prm, seed);
  H->nx = (int64_t)b * h * w * cfg->in_channels;
  H->x = test_alloc_f32(H->nx);
  H->dx = test_alloc_f32(H->nx);
  test_fill_uniform(H->x, H->nx, -1.0f, 1.0f, seed, 1000);
  H->tx = cluda_tensor_4d(CLUDA_F32, H->x, b, h, w, cfg->in_channels);
  H->tdx = cluda_tensor_4d(CLUDA_F32, H->dx, b, h, w, cfg->in_channels);
  for (int i = 0; i < 4; i++) {
    H->nout[i] = (int64_t)b * H->plan.out_h[i] * H->plan.out_w[i] * cfg->embed_dims[i];
    H->dout[i] = test_alloc_f32(H->nout[i]);
    test_fill_uniform(H->dout[i], H->nout[i], -1.0f, 1.0f, seed, 1001 + (uint32_t)i);
    H->tdout[i] = cluda_tensor_4d(CLUDA_F32, H->dout[i], b, H->plan.out_h[i], H->plan.out_w[i],
                                  cfg->embed_dims[i]);
  }
}

static void harness_free(harness *H) {
  free(H->prm);
  free(H->grad);
  free(H->x);
  free(H->dx);
  for (int i = 0; i < 4; i++)
    free(H->dout[i]);
  free(H->acts);
  test_context_free(&H->ctx);
  cluda_param_table_free(&H->table);
}

static cluda_status harness_forward(harness *H, const cluda_run_mode *mode) {
  return cluda_mit_forward(&H->ctx, &H->mit, &H->plan, &H->table, H->prm, mode, &H->tx, H->acts,
                           H->out);
}

static cluda_status harness_backward(harness *H, const cluda_run_mode *mode) {
  const cluda_tensor *dout[4] = {&H->tdout[0], &H->tdout[1], &H->tdout[2], &H->tdout[3]};
  return cluda_mit_backward(&H->ctx, &H->mit, &H->plan, &H->table, H->prm, H->grad, mode, &H->tx,
                            H->acts, dout, &H->tdx);
}

/* Drop-path multipliers the encoder must use for `mode` (the key schedule of mit.c, derived
 * here independently): slot base + 2k + branch of the drop-path purpose, keep iff u >= p. */
static double *drop_path_scales(const cluda_mit_config *cfg, const cluda_run_mode *mode, int b,
                                int *dropped, int *kept) {
  const int total = cfg->depths[0] + cfg->depths[1] + cfg->depths[2] + cfg->depths[3];
  double *scale = test_alloc_f64((int64_t)total * 2 * b);
  *dropped = *kept = 0;
  for (int k = 0; k < total; k++)
    for (int br = 0; br < 2; br++) {
      const float p = (float)((double)cfg->drop_path_rate * k / (total - 1));
      cluda_rng_key key = mode->key;
      key.stream = (key.stream & ~((uint64_t)0xffff << 32)) | ((uint64_t)CLUDA_RNG_DROPPATH << 32);
      key.slot = mode->key.slot + 2u * (uint32_t)k + (uint32_t)br;
      for (int n = 0; n < b; n++) {
        const int keep = !mode->stochastic || p == 0.0f || cluda_rng_uniform(key, (uint64_t)n) >= p;
        scale[(k * 2 + br) * b + n] = keep ? (double)(float)(1.0 / (1.0 - (double)p)) : 0.0;
        if (p > 0.0f && mode->stochastic) {
          *dropped += !keep;
          *kept += keep;
        }
      }
    }
  return scale;
}

/* Forward against the reference; then backward (onto prior gradients) against central
 * differences at `per_tensor` sampled elements of every parameter tensor and of x. */
static void check_against_reference(harness *H, const cluda_mit_config *cfg,
                                    const cluda_run_mode *mode, const double *scale, int per_tensor,
                                    const char *label) {
  const int b = H->plan.batch;
  ref_net net;
  ref_init(&net, cfg, &H->table, b, H->plan.height, H->plan.width, scale);
  for (int i = 0; i < 4; i++)
    TEST_CHECK(net.sh[i] == H->plan.out_h[i] && net.sw[i] == H->plan.out_w[i],
               "%s: stage %d plan %dx%d, conv arithmetic %dx%d", label, i + 1, H->plan.out_h[i],
               H->plan.out_w[i], net.sh[i], net.sw[i]);

  fd_problem fp;
  memset(&fp, 0, sizeof fp);
  fp.net = &net;
  fp.prm = test_alloc_f64((int64_t)H->table.total);
  fp.x = test_alloc_f64(H->nx);
  test_to_double(H->prm, fp.prm, (int64_t)H->table.total);
  test_to_double(H->x, fp.x, H->nx);
  for (int i = 0; i < 4; i++) {
    fp.count[i] = H->nout[i];
    fp.r[i] = test_alloc_f64(H->nout[i]);
    fp.out[i] = test_alloc_f64(H->nout[i]);
    test_to_double(H->dout[i], fp.r[i], H->nout[i]);
  }

  char what[160];
  double t0 = now_seconds();
  TEST_OK(harness_forward(H, mode));
  const double t_fwd = now_seconds() - t0;
  encoder_ref(&net, fp.prm, fp.x, fp.out);
  for (int i = 0; i < 4; i++) {
    const cluda_tensor *o = &H->out[i];
    TEST_CHECK(o->ndim == 4 && o->shape[0] == b && o->shape[1] == H->plan.out_h[i] &&
                   o->shape[2] == H->plan.out_w[i] && o->shape[3] == cfg->embed_dims[i] &&
                   (char *)o->data >= (char *)H->acts &&
                   (char *)o->data + cluda_tensor_bytes(o) <=
                       (char *)H->acts + H->plan.activation_bytes,
               "%s: out[%d] has the stage shape and lies inside acts", label, i);
    snprintf(what, sizeof what, "%s: stage %d output vs double reference", label, i + 1);
    test_compare(what, cluda_f32(o), fp.out[i], H->nout[i], 1e-4, 2e-5);
  }

  /* backward onto prior gradients; dx must be overwritten */
  float *prior = test_alloc_f32((int64_t)H->table.total);
  test_fill_uniform(prior, (int64_t)H->table.total, -1.0f, 1.0f, 77, 0);
  memcpy(H->grad, prior, H->table.total * sizeof(float));
  for (int64_t t = 0; t < H->nx; t++)
    H->dx[t] = NAN;
  H->ctx.scratch->peak = 0;
  t0 = now_seconds();
  TEST_OK(harness_backward(H, mode));
  const double t_bwd = now_seconds() - t0;
  TEST_CHECK(H->ctx.scratch->used == 0 && H->ctx.scratch->peak <= H->plan.scratch_bytes,
             "%s: backward stays within the planned scratch (peak %zu of %zu) and releases it",
             label, H->ctx.scratch->peak, H->plan.scratch_bytes);

  /* sampled elements, compared per tensor; the tolerance scales with the gradient size */
  const int max_samples = per_tensor > 64 ? per_tensor : 64;
  float *got = test_alloc_f32(max_samples);
  double *want = test_alloc_f64(max_samples);
  const double h = 1e-5;
  int tensors = 0, samples = 0;
  double worst = 0.0; /* largest error relative to its tensor's largest gradient */
  t0 = now_seconds();
  for (int k = -1; k < H->table.count; k++) { /* k = -1: the input x */
    const int64_t count = k < 0 ? H->nx : (int64_t)H->table.items[k].count;
    const int m = k < 0 ? 48 : (count < per_tensor ? (int)count : per_tensor);
    double scale_max = 0.0;
    for (int s = 0; s < m; s++) {
      const int64_t e = (int64_t)(cluda_rng_uniform(cluda_rng_make_key(5, 0, 0, CLUDA_RNG_TEST,
                                                                       (uint32_t)(k + 1)),
                                                    (uint64_t)s) *
                                  (float)count) %
                        count;
      if (k < 0) {
        want[s] = fd_at(&fp, fp.x + e, h);
        got[s] = H->dx[e];
      } else {
        const size_t off = H->table.items[k].offset + (size_t)e;
        want[s] = fd_at(&fp, fp.prm + off, h);
        got[s] = H->grad[off] - prior[off]; /* what the backward added */
      }
      scale_max = fmax(scale_max, fabs(want[s]));
    }
    snprintf(what, sizeof what, "%s: d %s vs FD (%d samples)", label,
             k < 0 ? "x" : H->table.items[k].name, m);
    test_compare(what, got, want, m, 5e-4, 1e-4 * scale_max + 1e-6);
    for (int s = 0; s < m; s++)
      worst = fmax(worst, fabs(got[s] - want[s]) / (scale_max + 1e-5));
    tensors++;
    samples += m;
  }
  printf("%s: forward %.1f ms, backward %.1f ms; FD of %d samples in %d tensors %.2f s, "
         "worst error / tensor's max |gradient| %.2e\n",
         label, 1e3 * t_fwd, 1e3 * t_bwd, samples, tensors, now_seconds() - t0, worst);
  free(prior);
  free(got);
  free(want);
  free(fp.prm);
  free(fp.x);
  for (int i = 0; i < 4; i++) {
    free(fp.r[i]);
    free(fp.out[i]);
  }
}

static void test_reference(void) {
  cluda_mit_config cfg = small_config();
  harness H;
  harness_make(&H, &cfg, 2, 52, 44, 11);
  cluda_run_mode mode;
  memset(&mode, 0, sizeof mode);
  mode.key = cluda_rng_make_key(123, 0, 7, CLUDA_RNG_DROPOUT, 3);
  /* deterministic mode: drop path is the identity even though the rates are nonzero */
  check_against_reference(&H, &cfg, &mode, NULL, 5, "small 2x52x44");
  float *plain[4];
  for (int i = 0; i < 4; i++) {
    plain[i] = test_alloc_f32(H.nout[i]);
    memcpy(plain[i], H.out[i].data, (size_t)H.nout[i] * sizeof(float));
  }

  /* drop path with large rates (0, .15, .3, .45, .6 over the five blocks) */
  H.mit.cfg.drop_path_rate = 0.6f;
  cfg.drop_path_rate = 0.6f;
  TEST_OK(harness_forward(&H, &mode));
  int same = 1;
  for (int i = 0; i < 4; i++)
    same &= memcmp(plain[i], H.out[i].data, (size_t)H.nout[i] * sizeof(float)) == 0;
  TEST_CHECK(same, "drop path: stochastic = 0 ignores the rate (same bits)");

  mode.stochastic = 1;
  int dropped = 0, kept = 0;
  double *scale = drop_path_scales(&cfg, &mode, 2, &dropped, &kept);
  TEST_CHECK(dropped > 0 && kept > 0, "drop path: the key drops %d and keeps %d branch samples",
             dropped, kept);
  check_against_reference(&H, &cfg, &mode, scale, 2, "small drop path");
  float *first[4];
  for (int i = 0; i < 4; i++) {
    first[i] = test_alloc_f32(H.nout[i]);
    memcpy(first[i], H.out[i].data, (size_t)H.nout[i] * sizeof(float));
  }
  TEST_OK(harness_forward(&H, &mode));
  same = 1;
  int differs = 0;
  for (int i = 0; i < 4; i++) {
    same &= memcmp(first[i], H.out[i].data, (size_t)H.nout[i] * sizeof(float)) == 0;
    differs |= memcmp(plain[i], H.out[i].data, (size_t)H.nout[i] * sizeof(float)) != 0;
  }
  TEST_CHECK(same, "drop path: the same key gives the same masks (same bits)");
  TEST_CHECK(differs, "drop path: stochastic output differs from the deterministic one");
  cluda_run_mode other = mode;
  other.key.stream += 1; /* the next iteration */
  TEST_OK(harness_forward(&H, &other));
  differs = 0;
  for (int i = 0; i < 4; i++)
    differs |= memcmp(first[i], H.out[i].data, (size_t)H.nout[i] * sizeof(float)) != 0;
  int d2 = 0, k2 = 0;
  double *scale2 = drop_path_scales(&cfg, &other, 2, &d2, &k2);
  TEST_CHECK(differs == (memcmp(scale, scale2, sizeof(double) * 5 * 2 * 2) != 0),
             "drop path: another key changes the output exactly when it changes the masks");
  free(scale);
  free(scale2);
  for (int i = 0; i < 4; i++) {
    free(plain[i]);
    free(first[i]);
  }
  harness_free(&H);
}

/* ==== same bits for 1 and 2 threads (tiny preset, drop path on) ==== */

static void test_threads(void) {
  cluda_mit_config cfg;
  TEST_OK(cluda_mit_preset("tiny", &cfg));
  harness H;
  harness_make(&H, &cfg, 2, 64, 96, 21);
  cluda_run_mode mode = {1, 0, cluda_rng_make_key(9, 0, 3, CLUDA_RNG_DROPOUT, 0), 0};
  const int64_t np = (int64_t)H.table.total;
  float *ref_out[4], *ref_grad = test_alloc_f32(np), *ref_dx = test_alloc_f32(H.nx);
  const int saved = omp_get_max_threads();
  for (int run = 0; run < 2; run++) {
    omp_set_num_threads(run == 0 ? 1 : 2);
    memset(H.grad, 0, (size_t)np * sizeof(float));
    const double t0 = now_seconds();
    TEST_OK(harness_forward(&H, &mode));
    TEST_OK(harness_backward(&H, &mode));
    printf("tiny 2x64x96 forward + backward with %d thread(s): %.1f ms\n", run + 1,
           1e3 * (now_seconds() - t0));
    if (run == 0) {
      for (int i = 0; i < 4; i++) {
        ref_out[i] = test_alloc_f32(H.nout[i]);
        memcpy(ref_out[i], H.out[i].data, (size_t)H.nout[i] * sizeof(float));
      }
      memcpy(ref_grad, H.grad, (size_t)np * sizeof(float));
      memcpy(ref_dx, H.dx, (size_t)H.nx * sizeof(float));
    } else {
      int same = 1;
      for (int i = 0; i < 4; i++)
        same &= memcmp(ref_out[i], H.out[i].data, (size_t)H.nout[i] * sizeof(float)) == 0;
      TEST_CHECK(same, "tiny: stage outputs have the same bits with 1 and 2 threads");
      TEST_CHECK(memcmp(ref_grad, H.grad, (size_t)np * sizeof(float)) == 0,
                 "tiny: parameter gradients have the same bits with 1 and 2 threads");
      TEST_CHECK(memcmp(ref_dx, H.dx, (size_t)H.nx * sizeof(float)) == 0,
                 "tiny: dx has the same bits with 1 and 2 threads");
    }
  }
  omp_set_num_threads(saved);
  for (int i = 0; i < 4; i++)
    free(ref_out[i]);
  free(ref_grad);
  free(ref_dx);
  harness_free(&H);
}

/* ==== presets, parameter counts, names and shapes (no buffers allocated) ==== */

static void expect_entry(const cluda_param_table *t, const char *name, int ndim, int d0, int d1,
                         int d2, int d3, int no_decay) {
  const int k = cluda_param_table_find(t, name);
  if (!TEST_CHECK(k >= 0, "parameter %s exists", name)) return;
  const cluda_param_info *p = &t->items[k];
  const int want[4] = {d0, d1, d2, d3};
  int ok = p->ndim == ndim && p->no_decay == no_decay && p->group == CLUDA_GROUP_ENCODER;
  for (int i = 0; i < ndim; i++)
    ok &= p->shape[i] == want[i];
  TEST_CHECK(ok, "%s: ndim %d [%d,%d,%d,%d] no_decay %d group %d", name, p->ndim, p->shape[0],
             p->shape[1], p->shape[2], p->shape[3], p->no_decay, (int)p->group);
}

static void test_param_counts(void) {
  static const struct {
    const char *name;
    size_t params;
  } kCounts[] = {{"b0", 3319392},  {"b1", 13151424}, {"b2", 24196288}, {"b3", 44072128},
                 {"b4", 60842688}, {"b5", 81443008}, {"tiny", 746976}};
  for (size_t v = 0; v < sizeof kCounts / sizeof kCounts[0]; v++) {
    cluda_mit_config cfg;
    TEST_OK(cluda_mit_preset(kCounts[v].name, &cfg));
    cluda_param_table t;
    cluda_param_table_init(&t);
    cluda_mit mit;
    TEST_OK(cluda_mit_declare(&mit, &cfg, kPrefix, &t));
    const size_t n = cluda_param_table_elements(&t);
    TEST_CHECK(n == kCounts[v].params, "%s: %zu parameters (model.md 1.6: %zu)", kCounts[v].name, n,
               kCounts[v].params);
    TEST_CHECK(mit.first_param == 0 && mit.param_count == t.count, "%s: %d entries from 0",
               kCounts[v].name, mit.param_count);
    cluda_param_table_free(&t);
  }

  cluda_mit_config cfg;
  TEST_OK(cluda_mit_preset("b5", &cfg));
  TEST_CHECK(cfg.in_channels == 3 && cfg.mlp_ratio == 4 && cfg.drop_path_rate == 0.1f &&
                 cfg.patch_norm_eps == 1e-5f && cfg.block_norm_eps == 1e-6f &&
                 cfg.sr_ratios[0] == 8 && cfg.sr_ratios[3] == 1 && cfg.depths[2] == 40 &&
                 cfg.heads[2] == 5 && cfg.embed_dims[2] == 320,
             "b5 preset settings");
  cluda_param_table t;
  cluda_param_table_init(&t);
  const int one[1] = {7};
  TEST_OK(cluda_param_table_add(&t, "other.thing", 1, one, CLUDA_GROUP_HEAD, 0, NULL));
  cluda_mit mit;
  TEST_OK(cluda_mit_declare(&mit, &cfg, kPrefix, &t));
  TEST_CHECK(mit.first_param == 1 && mit.param_count == t.count - 1,
             "b5 declared after another entry starts at 1 (%d entries)", mit.param_count);
  /* 4 patch embeds x 4 + 52 blocks (20 entries with sr, 16 without) + 4 norms x 2 */
  TEST_CHECK(mit.param_count == 16 + (3 + 6 + 40) * 20 + 3 * 16 + 8, "b5 entry count %d",
             mit.param_count);
  /* mmseg order: patch embeds first, then each stage's blocks and its norm */
  TEST_CHECK(strcmp(t.items[1].name, "backbone.patch_embed1.proj.weight") == 0 &&
                 strcmp(t.items[16].name, "backbone.patch_embed4.norm.bias") == 0 &&
                 strcmp(t.items[17].name, "backbone.block1.0.norm1.weight") == 0 &&
                 strcmp(t.items[t.count - 1].name, "backbone.norm4.bias") == 0,
             "b5 entry order (%s, %s, %s, %s)", t.items[1].name, t.items[16].name, t.items[17].name,
             t.items[t.count - 1].name);
  const char *const block1[] = {"norm1.weight",
                                "norm1.bias",
                                "attn.q.weight",
                                "attn.q.bias",
                                "attn.kv.weight",
                                "attn.kv.bias",
                                "attn.proj.weight",
                                "attn.proj.bias",
                                "attn.sr.weight",
                                "attn.sr.bias",
                                "attn.norm.weight",
                                "attn.norm.bias",
                                "norm2.weight",
                                "norm2.bias",
                                "mlp.fc1.weight",
                                "mlp.fc1.bias",
                                "mlp.dwconv.dwconv.weight",
                                "mlp.dwconv.dwconv.bias",
                                "mlp.fc2.weight",
                                "mlp.fc2.bias"};
  int order_ok = 1;
  for (int k = 0; k < 20; k++) {
    char name[CLUDA_PARAM_NAME_MAX];
    snprintf(name, sizeof name, "backbone.block1.0.%s", block1[k]);
    order_ok &= strcmp(t.items[17 + k].name, name) == 0;
  }
  TEST_CHECK(order_ok, "block1.0 entries in mmseg state_dict order");
  expect_entry(&t, "backbone.patch_embed1.proj.weight", 4, 64, 7, 7, 3, 0);
  expect_entry(&t, "backbone.patch_embed1.proj.bias", 1, 64, 0, 0, 0, 0);
  expect_entry(&t, "backbone.patch_embed2.proj.weight", 4, 128, 3, 3, 64, 0);
  expect_entry(&t, "backbone.patch_embed3.norm.weight", 1, 320, 0, 0, 0, 1);
  expect_entry(&t, "backbone.patch_embed4.norm.bias", 1, 512, 0, 0, 0, 1);
  expect_entry(&t, "backbone.block1.2.attn.sr.weight", 4, 64, 8, 8, 64, 0);
  expect_entry(&t, "backbone.block3.39.attn.sr.weight", 4, 320, 2, 2, 320, 0);
  expect_entry(&t, "backbone.block3.39.attn.norm.bias", 1, 320, 0, 0, 0, 1);
  expect_entry(&t, "backbone.block2.5.attn.kv.weight", 2, 256, 128, 0, 0, 0);
  expect_entry(&t, "backbone.block2.5.attn.kv.bias", 1, 256, 0, 0, 0, 0);
  expect_entry(&t, "backbone.block4.2.attn.q.weight", 2, 512, 512, 0, 0, 0);
  expect_entry(&t, "backbone.block4.2.attn.proj.bias", 1, 512, 0, 0, 0, 0);
  expect_entry(&t, "backbone.block4.0.norm1.weight", 1, 512, 0, 0, 0, 1);
  expect_entry(&t, "backbone.block4.0.norm2.bias", 1, 512, 0, 0, 0, 1);
  expect_entry(&t, "backbone.block1.0.mlp.fc1.weight", 2, 256, 64, 0, 0, 0);
  expect_entry(&t, "backbone.block1.0.mlp.dwconv.dwconv.weight", 4, 256, 3, 3, 1, 0);
  expect_entry(&t, "backbone.block1.0.mlp.dwconv.dwconv.bias", 1, 256, 0, 0, 0, 0);
  expect_entry(&t, "backbone.block3.17.mlp.fc2.weight", 2, 320, 1280, 0, 0, 0);
  expect_entry(&t, "backbone.norm3.weight", 1, 320, 0, 0, 0, 1);
  TEST_CHECK(cluda_param_table_find(&t, "backbone.block4.0.attn.sr.weight") < 0 &&
                 cluda_param_table_find(&t, "backbone.block4.0.attn.norm.weight") < 0 &&
                 cluda_param_table_find(&t, "backbone.block3.40.norm1.weight") < 0,
             "stage 4 has no SR conv or SR norm; b5 stage 3 has 40 blocks");
  cluda_param_table_free(&t);

  /* an empty prefix gives the bare NVlabs names */
  cluda_param_table_init(&t);
  TEST_OK(cluda_mit_preset("tiny", &cfg));
  TEST_OK(cluda_mit_declare(&mit, &cfg, "", &t));
  TEST_CHECK(cluda_param_table_find(&t, "block2.1.attn.sr.weight") >= 0,
             "empty prefix: bare names");
  cluda_param_table_free(&t);
}

/* ==== initialisation (model.md 1.7) ==== */

static double sample_std(const float *v, int64_t n) {
  double s = 0.0, s2 = 0.0;
  for (int64_t i = 0; i < n; i++) {
    s += v[i];
    s2 += (double)v[i] * v[i];
  }
  return sqrt(s2 / n - (s / n) * (s / n));
}

static void test_init(void) {
  cluda_mit_config cfg;
  TEST_OK(cluda_mit_preset("b0", &cfg));
  cluda_param_table t;
  cluda_param_table_init(&t);
  cluda_mit mit;
  TEST_OK(cluda_mit_declare(&mit, &cfg, kPrefix, &t));
  float *a = test_alloc_f32((int64_t)t.total), *b = test_alloc_f32((int64_t)t.total);
  memset(a, 0, t.total * sizeof(float));
  memset(b, 0, t.total * sizeof(float));
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  TEST_OK(cluda_mit_init(&mit, &t, a, 42));
  omp_set_num_threads(2);
  TEST_OK(cluda_mit_init(&mit, &t, b, 42));
  omp_set_num_threads(saved);
  TEST_CHECK(memcmp(a, b, t.total * sizeof(float)) == 0, "init: same bits for 1 and 2 threads");
  TEST_OK(cluda_mit_init(&mit, &t, b, 43));
  TEST_CHECK(memcmp(a, b, t.total * sizeof(float)) != 0, "init: another seed gives other values");

  static const struct {
    const char *name;
    double std; /* 0: constant `value` */
    float value;
  } kExpect[] = {
      {"backbone.block4.1.attn.q.weight", 0.02, 0}, /* 65,536 trunc-normal draws */
      {"backbone.block3.0.mlp.fc1.weight", 0.02, 0},
      {"backbone.patch_embed1.proj.weight", 0.035714, 0},        /* sqrt(2 / (7*7*32)) */
      {"backbone.block1.0.attn.sr.weight", 0.03125, 0},          /* sqrt(2 / (8*8*32)) */
      {"backbone.block2.0.mlp.dwconv.dwconv.weight", 0.4714, 0}, /* sqrt(2 / 9) */
      {"backbone.block2.1.norm1.weight", 0, 1.0f},
      {"backbone.block2.1.attn.norm.weight", 0, 1.0f},
      {"backbone.norm4.weight", 0, 1.0f},
      {"backbone.norm4.bias", 0, 0.0f},
      {"backbone.block1.1.attn.kv.bias", 0, 0.0f},
      {"backbone.patch_embed2.proj.bias", 0, 0.0f},
      {"backbone.block4.0.mlp.dwconv.dwconv.bias", 0, 0.0f},
  };
  for (size_t e = 0; e < sizeof kExpect / sizeof kExpect[0]; e++) {
    const int k = cluda_param_table_find(&t, kExpect[e].name);
    if (!TEST_CHECK(k >= 0, "init: %s exists", kExpect[e].name)) continue;
    const float *v = a + t.items[k].offset;
    const int64_t n = (int64_t)t.items[k].count;
    if (kExpect[e].std > 0) {
      const double s = sample_std(v, n);
      TEST_CHECK(fabs(s / kExpect[e].std - 1.0) < 0.05, "init: %s std %.5f (want %.5f)",
                 kExpect[e].name, s, kExpect[e].std);
    } else {
      int ok = 1;
      for (int64_t i = 0; i < n; i++)
        ok &= v[i] == kExpect[e].value;
      TEST_CHECK(ok, "init: %s is all %g", kExpect[e].name, (double)kExpect[e].value);
    }
  }
  free(a);
  free(b);
  cluda_param_table_free(&t);
}

/* ==== plans: shapes, minimum size, MACs ==== */

static void expect_plan(const char *variant, int h, int w, const int want_h[4],
                        const int want_w[4]) {
  cluda_mit_config cfg;
  TEST_OK(cluda_mit_preset(variant, &cfg));
  cluda_param_table t;
  cluda_param_table_init(&t);
  cluda_mit mit;
  TEST_OK(cluda_mit_declare(&mit, &cfg, kPrefix, &t));
  cluda_mit_plan plan;
  if (TEST_OK(cluda_mit_plan_for(&mit, 2, h, w, &plan))) {
    int ok = plan.batch == 2 && plan.height == h && plan.width == w;
    for (int i = 0; i < 4; i++)
      ok &= plan.out_h[i] == want_h[i] && plan.out_w[i] == want_w[i];
    TEST_CHECK(ok, "%s %dx%d: stages %dx%d %dx%d %dx%d %dx%d", variant, h, w, plan.out_h[0],
               plan.out_w[0], plan.out_h[1], plan.out_w[1], plan.out_h[2], plan.out_w[2],
               plan.out_h[3], plan.out_w[3]);
  }
  cluda_param_table_free(&t);
}

static double plan_macs(const char *variant, int h, int w, cluda_mit_plan *plan) {
  cluda_mit_config cfg;
  TEST_OK(cluda_mit_preset(variant, &cfg));
  cluda_param_table t;
  cluda_param_table_init(&t);
  cluda_mit mit;
  TEST_OK(cluda_mit_declare(&mit, &cfg, kPrefix, &t));
  TEST_OK(cluda_mit_plan_for(&mit, 1, h, w, plan));
  cluda_param_table_free(&t);
  return plan->macs;
}

static void test_plans(void) {
  expect_plan("tiny", 64, 96, (const int[]){16, 8, 4, 2}, (const int[]){24, 12, 6, 3});
  expect_plan("tiny", 50, 70, (const int[]){13, 7, 4, 2}, (const int[]){18, 9, 5, 3});
  expect_plan("b5", 512, 1024, (const int[]){128, 64, 32, 16}, (const int[]){256, 128, 64, 32});
  expect_plan("b0", 29, 31, (const int[]){8, 4, 2, 1}, (const int[]){8, 4, 2, 1});

  /* the smallest input: stage 1 (H/4 rounded up) must be >= its sr_ratio 8, so 29 */
  cluda_mit_config cfg;
  TEST_OK(cluda_mit_preset("tiny", &cfg));
  cluda_param_table t;
  cluda_param_table_init(&t);
  cluda_mit mit;
  TEST_OK(cluda_mit_declare(&mit, &cfg, kPrefix, &t));
  cluda_mit_plan plan;
  TEST_FAILS(cluda_mit_plan_for(&mit, 1, 28, 64, &plan), CLUDA_ERR_SHAPE, "too small");
  TEST_FAILS(cluda_mit_plan_for(&mit, 1, 64, 20, &plan), CLUDA_ERR_SHAPE, "too small");
  TEST_OK(cluda_mit_plan_for(&mit, 1, 29, 29, &plan));
  TEST_FAILS(cluda_mit_plan_for(&mit, 0, 64, 64, &plan), CLUDA_ERR_SHAPE, "batch");
  TEST_FAILS(cluda_mit_plan_for(&mit, 1, 64, 64, NULL), CLUDA_ERR_ARG, "plan");
  TEST_FAILS(cluda_mit_plan_for(NULL, 1, 64, 64, &plan), CLUDA_ERR_ARG, "mit");
  TEST_FAILS(cluda_mit_plan_for(&mit, 4096, 8192, 8192, &plan), CLUDA_ERR_SHAPE, "too large");
  cluda_param_table_free(&t);

  /* MACs: model.md 8.1 (rounded to 0.01 G) and section 10 (34 M) */
  static const struct {
    const char *variant;
    int size;
    double want, tol;
  } kMacs[] = {{"b5", 512, 69.41e9, 0.006e9}, {"b0", 512, 3.20e9, 0.006e9},
               {"b5", 128, 3.74e9, 0.006e9},  {"b0", 128, 0.14e9, 0.006e9},
               {"b2", 512, 20.24e9, 0.006e9}, {"tiny", 128, 34e6, 0.6e6}};
  for (size_t k = 0; k < sizeof kMacs / sizeof kMacs[0]; k++) {
    const double m = plan_macs(kMacs[k].variant, kMacs[k].size, kMacs[k].size, &plan);
    TEST_CHECK(fabs(m - kMacs[k].want) <= kMacs[k].tol, "%s at %d^2: %.4f G MACs (model.md %.2f G)",
               kMacs[k].variant, kMacs[k].size, m * 1e-9, kMacs[k].want * 1e-9);
  }
  plan_macs("b5", 512, 512, &plan);
  printf("b5 at 1x512x512: activations %.1f MB, scratch %.1f MB\n", plan.activation_bytes / 1e6,
         plan.scratch_bytes / 1e6);
}

/* ==== MiT-B5 at 1x128x128: declare, allocate, init, forward + backward ==== */

static int all_finite(const float *v, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    if (!isfinite(v[i])) return 0;
  return 1;
}

static void test_b5(void) {
  cluda_mit_config cfg;
  TEST_OK(cluda_mit_preset("b5", &cfg));
  cluda_param_table t;
  cluda_param_table_init(&t);
  cluda_mit mit;
  TEST_OK(cluda_mit_declare(&mit, &cfg, kPrefix, &t));
  cluda_mit_plan plan;
  TEST_OK(cluda_mit_plan_for(&mit, 1, 128, 128, &plan));
  const int64_t np = (int64_t)t.total, nx = 128 * 128 * 3;
  float *prm = test_alloc_f32(np), *grad = test_alloc_f32(np);
  memset(prm, 0, (size_t)np * sizeof(float));
  memset(grad, 0, (size_t)np * sizeof(float));
  double t0 = now_seconds();
  TEST_OK(cluda_mit_init(&mit, &t, prm, 5));
  const double t_init = now_seconds() - t0;
  void *acts = test_alloc(plan.activation_bytes);
  cluda_ctx ctx = test_cpu_context(plan.scratch_bytes);
  float *x = test_alloc_f32(nx), *dx = test_alloc_f32(nx), *dout[4];
  test_fill_uniform(x, nx, -2.0f, 2.0f, 5, 0);
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, x, 1, 128, 128, 3);
  cluda_tensor tdx = cluda_tensor_4d(CLUDA_F32, dx, 1, 128, 128, 3);
  cluda_tensor tdout[4], out[4];
  const cluda_tensor *pdout[4];
  for (int i = 0; i < 4; i++) {
    const int64_t n = (int64_t)plan.out_h[i] * plan.out_w[i] * cfg.embed_dims[i];
    dout[i] = test_alloc_f32(n);
    test_fill_uniform(dout[i], n, -1.0f, 1.0f, 5, 1 + (uint32_t)i);
    tdout[i] =
        cluda_tensor_4d(CLUDA_F32, dout[i], 1, plan.out_h[i], plan.out_w[i], cfg.embed_dims[i]);
    pdout[i] = &tdout[i];
  }
  cluda_run_mode mode = {1, 0, cluda_rng_make_key(5, 0, 0, CLUDA_RNG_DROPOUT, 0), 0};
  t0 = now_seconds();
  TEST_OK(cluda_mit_forward(&ctx, &mit, &plan, &t, prm, &mode, &tx, acts, out));
  const double t_fwd = now_seconds() - t0;
  t0 = now_seconds();
  TEST_OK(cluda_mit_backward(&ctx, &mit, &plan, &t, prm, grad, &mode, &tx, acts, pdout, &tdx));
  const double t_bwd = now_seconds() - t0;
  static const int kSizes[4] = {32, 16, 8, 4};
  for (int i = 0; i < 4; i++) {
    TEST_CHECK(out[i].ndim == 4 && out[i].shape[0] == 1 && out[i].shape[1] == kSizes[i] &&
                   out[i].shape[2] == kSizes[i] && out[i].shape[3] == cfg.embed_dims[i] &&
                   all_finite(cluda_f32(&out[i]), cluda_tensor_numel(&out[i])),
               "b5: stage %d output [1,%d,%d,%d] and finite", i + 1, kSizes[i], kSizes[i],
               cfg.embed_dims[i]);
  }
  int64_t nonzero = 0;
  for (int64_t i = 0; i < np; i++)
    nonzero += grad[i] != 0.0f;
  TEST_CHECK(all_finite(grad, np) && all_finite(dx, nx), "b5: gradients and dx are finite");
  TEST_CHECK(nonzero > (int64_t)(0.9 * (double)cluda_param_table_elements(&t)),
             "b5: %lld of %zu parameter gradients are nonzero", (long long)nonzero,
             cluda_param_table_elements(&t));
  printf("b5 1x128x128 (%.2f G MACs): init %.2f s, forward %.2f s, backward %.2f s, "
         "activations %.1f MB, scratch %.1f MB\n",
         plan.macs * 1e-9, t_init, t_fwd, t_bwd, plan.activation_bytes / 1e6,
         plan.scratch_bytes / 1e6);
  for (int i = 0; i < 4; i++)
    free(dout[i]);
  free(prm);
  free(grad);
  free(acts);
  free(x);
  free(dx);
  test_context_free(&ctx);
  cluda_param_table_free(&t);
}

/* ==== argument validation ==== */

static void test_validation(void) {
  cluda_mit_config cfg;
  cluda_mit mit;
  cluda_param_table t;
  cluda_param_table_init(&t);
  TEST_FAILS(cluda_mit_preset("b6", &cfg), CLUDA_ERR_ARG, "b6");
  TEST_FAILS(cluda_mit_preset(NULL, &cfg), CLUDA_ERR_ARG, "NULL");
  TEST_OK(cluda_mit_preset("tiny", &cfg));
  cluda_mit_config bad = cfg;
  bad.heads[2] = 3;
  TEST_FAILS(cluda_mit_declare(&mit, &bad, kPrefix, &t), CLUDA_ERR_ARG, "cfg->heads[2]");
  bad = cfg;
  bad.sr_ratios[1] = 0;
  TEST_FAILS(cluda_mit_declare(&mit, &bad, kPrefix, &t), CLUDA_ERR_ARG, "cfg->sr_ratios[1]");
  bad = cfg;
  bad.depths[3] = 0;
  TEST_FAILS(cluda_mit_declare(&mit, &bad, kPrefix, &t), CLUDA_ERR_ARG, "cfg->depths[3]");
  bad = cfg;
  bad.drop_path_rate = 1.0f;
  TEST_FAILS(cluda_mit_declare(&mit, &bad, kPrefix, &t), CLUDA_ERR_ARG, "drop_path_rate");
  bad = cfg;
  bad.block_norm_eps = 0.0f;
  TEST_FAILS(cluda_mit_declare(&mit, &bad, kPrefix, &t), CLUDA_ERR_ARG, "block_norm_eps");
  TEST_FAILS(cluda_mit_declare(&mit, &cfg, kPrefix, NULL), CLUDA_ERR_ARG, "params");
  char long_prefix[CLUDA_PARAM_NAME_MAX];
  memset(long_prefix, 'p', sizeof long_prefix - 1);
  long_prefix[sizeof long_prefix - 1] = '\0';
  TEST_FAILS(cluda_mit_declare(&mit, &cfg, long_prefix, &t), CLUDA_ERR_ARG, "longer");
  cluda_param_table_free(&t);

  harness H;
  harness_make(&H, &cfg, 1, 64, 72, 3); /* SR keys and values have Nk > 1 */
  cluda_run_mode mode = {0, 0, cluda_rng_make_key(1, 0, 0, CLUDA_RNG_DROPOUT, 0), 0};
  TEST_OK(harness_forward(&H, &mode));
  cluda_tensor out[4];
  cluda_tensor x_c = cluda_tensor_4d(CLUDA_F32, H.x, 1, 64, 54, 4);
  TEST_FAILS(cluda_mit_forward(&H.ctx, &H.mit, &H.plan, &H.table, H.prm, &mode, &x_c, H.acts, out),
             CLUDA_ERR_SHAPE, "x");
  cluda_tensor x_h = cluda_tensor_4d(CLUDA_F32, H.x, 1, 72, 64, 3);
  TEST_FAILS(cluda_mit_forward(&H.ctx, &H.mit, &H.plan, &H.table, H.prm, &mode, &x_h, H.acts, out),
             CLUDA_ERR_SHAPE, "planned");
  cluda_tensor x3 = cluda_tensor_3d(CLUDA_F32, H.x, 1, 64 * 72, 3);
  TEST_FAILS(cluda_mit_forward(&H.ctx, &H.mit, &H.plan, &H.table, H.prm, &mode, &x3, H.acts, out),
             CLUDA_ERR_SHAPE, "x");
  cluda_tensor x_null = H.tx;
  x_null.data = NULL;
  TEST_FAILS(
      cluda_mit_forward(&H.ctx, &H.mit, &H.plan, &H.table, H.prm, &mode, &x_null, H.acts, out),
      CLUDA_ERR_ARG, "x");
  TEST_FAILS(cluda_mit_forward(&H.ctx, &H.mit, &H.plan, &H.table, H.prm, &mode, NULL, H.acts, out),
             CLUDA_ERR_ARG, "x");
  TEST_FAILS(cluda_mit_forward(&H.ctx, &H.mit, &H.plan, &H.table, H.prm, &mode, &H.tx, NULL, out),
             CLUDA_ERR_ARG, "acts");
  TEST_FAILS(cluda_mit_forward(&H.ctx, &H.mit, &H.plan, &H.table, NULL, &mode, &H.tx, H.acts, out),
             CLUDA_ERR_ARG, "params");
  TEST_FAILS(cluda_mit_forward(&H.ctx, &H.mit, &H.plan, &H.table, H.prm, NULL, &H.tx, H.acts, out),
             CLUDA_ERR_ARG, "mode");
  TEST_FAILS(
      cluda_mit_forward(&H.ctx, &H.mit, &H.plan, &H.table, H.prm, &mode, &H.tx, H.acts, NULL),
      CLUDA_ERR_ARG, "out");
  TEST_FAILS(cluda_mit_forward(&H.ctx, &H.mit, &H.plan, NULL, H.prm, &mode, &H.tx, H.acts, out),
             CLUDA_ERR_ARG, "table");
  TEST_FAILS(cluda_mit_forward(NULL, &H.mit, &H.plan, &H.table, H.prm, &mode, &H.tx, H.acts, out),
             CLUDA_ERR_ARG, "ctx");
  cluda_mit_plan other = H.plan;
  other.activation_bytes -= 64;
  TEST_FAILS(cluda_mit_forward(&H.ctx, &H.mit, &other, &H.table, H.prm, &mode, &H.tx, H.acts, out),
             CLUDA_ERR_ARG, "plan");
  cluda_param_table empty;
  cluda_param_table_init(&empty);
  TEST_FAILS(cluda_mit_forward(&H.ctx, &H.mit, &H.plan, &empty, H.prm, &mode, &H.tx, H.acts, out),
             CLUDA_ERR_ARG, "table");
  /* a scratch arena 64 bytes short of the plan fails cleanly */
  cluda_ctx small = test_cpu_context(H.plan.scratch_bytes - 64);
  mode.stochastic = 1;
  const cluda_tensor *dout[4] = {&H.tdout[0], &H.tdout[1], &H.tdout[2], &H.tdout[3]};
  TEST_OK(harness_forward(&H, &mode));
  cluda_status st = cluda_mit_backward(&small, &H.mit, &H.plan, &H.table, H.prm, H.grad, &mode,
                                       &H.tx, H.acts, dout, &H.tdx);
  TEST_CHECK(st.code == CLUDA_ERR_ALLOC,
             "backward with too little scratch fails with ERR_ALLOC: %s", st.message);
  TEST_CHECK(small.scratch->used == 0, "and releases what it took");
  test_context_free(&small);

  /* backward */
  const cluda_tensor *none[4] = {NULL, NULL, NULL, NULL};
  TEST_FAILS(cluda_mit_backward(&H.ctx, &H.mit, &H.plan, &H.table, H.prm, H.grad, &mode, &H.tx,
                                H.acts, none, &H.tdx),
             CLUDA_ERR_ARG, "all NULL");
  memset(H.grad, 0, H.table.total * sizeof(float));
  TEST_OK(cluda_mit_backward(&H.ctx, &H.mit, &H.plan, &H.table, H.prm, H.grad, &mode, &H.tx, H.acts,
                             none, NULL));
  int untouched = 1;
  for (size_t e = 0; e < H.table.total; e++)
    untouched &= H.grad[e] == 0.0f;
  TEST_CHECK(untouched, "no dout and no dx: nothing to do, gradients untouched");
  cluda_tensor views[4];
  TEST_OK(cluda_mit_stage_views(&H.mit, &H.plan, H.acts, views));
  int same_views = 1;
  for (int i = 0; i < 4; i++)
    same_views &= views[i].data == H.out[i].data && cluda_tensor_same_shape(&views[i], &H.out[i]);
  TEST_CHECK(same_views, "stage views are the forward's out tensors");
  TEST_FAILS(cluda_mit_stage_views(&H.mit, &other, H.acts, views), CLUDA_ERR_ARG, "plan");
  TEST_FAILS(cluda_mit_stage_views(&H.mit, &H.plan, NULL, views), CLUDA_ERR_ARG, "acts");
  cluda_tensor wrong = H.tdout[1];
  wrong.shape[3] += 1;
  const cluda_tensor *bad_dout[4] = {NULL, &wrong, NULL, NULL};
  TEST_FAILS(cluda_mit_backward(&H.ctx, &H.mit, &H.plan, &H.table, H.prm, H.grad, &mode, &H.tx,
                                H.acts, bad_dout, &H.tdx),
             CLUDA_ERR_SHAPE, "dout[1]");
  cluda_tensor dx_bad = cluda_tensor_4d(CLUDA_F32, H.dx, 1, 64, 72, 1);
  TEST_FAILS(cluda_mit_backward(&H.ctx, &H.mit, &H.plan, &H.table, H.prm, H.grad, &mode, &H.tx,
                                H.acts, dout, &dx_bad),
             CLUDA_ERR_SHAPE, "dx");
  TEST_FAILS(cluda_mit_backward(&H.ctx, &H.mit, &H.plan, &H.table, H.prm, NULL, &mode, &H.tx,
                                H.acts, dout, &H.tdx),
             CLUDA_ERR_ARG, "grads");
  TEST_FAILS(cluda_mit_backward(&H.ctx, &H.mit, &H.plan, &H.table, H.prm, H.grad, &mode, &H.tx,
                                NULL, dout, &H.tdx),
             CLUDA_ERR_ARG, "acts");
  TEST_FAILS(cluda_mit_backward(&H.ctx, &H.mit, &H.plan, &H.table, H.prm, H.grad, &mode, &H.tx,
                                H.acts, NULL, &H.tdx),
             CLUDA_ERR_ARG, "dout");

  /* dx optional; a gradient at one stage only reaches the stages below it: with dout[1]
   * only, stage 3 and 4 parameters get nothing and everything below does */
  mode.stochastic = 0; /* no dropped branch may zero a gradient */
  TEST_OK(harness_forward(&H, &mode));
  memset(H.grad, 0, H.table.total * sizeof(float));
  const cluda_tensor *only1[4] = {NULL, &H.tdout[1], NULL, NULL};
  TEST_OK(cluda_mit_backward(&H.ctx, &H.mit, &H.plan, &H.table, H.prm, H.grad, &mode, &H.tx, H.acts,
                             only1, NULL));
  int upper_zero = 1, lower_nonzero = 1;
  for (int k = 0; k < H.table.count; k++) {
    const cluda_param_info *p = &H.table.items[k];
    const int stage = strstr(p->name, "block3.") || strstr(p->name, "block4.") ||
                              strstr(p->name, "patch_embed3") || strstr(p->name, "patch_embed4") ||
                              strstr(p->name, "norm3.") == p->name + 9 ||
                              strstr(p->name, "norm4.") == p->name + 9
                          ? 34
                          : 12;
    double sum = 0.0;
    for (size_t e = 0; e < p->count; e++)
      sum += fabs(H.grad[p->offset + e]);
    if (stage == 34 ? sum != 0.0 : sum == 0.0)
      printf("  unexpected gradient sum %g: %s\n", sum, p->name);
    if (stage == 34)
      upper_zero &= sum == 0.0;
    else
      lower_nonzero &= sum > 0.0;
  }
  TEST_CHECK(upper_zero && lower_nonzero,
             "dout[1] only: stage 3-4 gradients stay zero, stage 1-2 gradients are nonzero");
  harness_free(&H);
}

int main(void) {
  double t0 = now_seconds();
  test_param_counts();
  test_init();
  test_plans();
  test_validation();
  printf("counts, init, plans, validation: %.2f s\n", now_seconds() - t0);
  t0 = now_seconds();
  test_reference();
  printf("reference checks: %.2f s\n", now_seconds() - t0);
  t0 = now_seconds();
  test_threads();
  printf("thread checks: %.2f s\n", now_seconds() - t0);
  t0 = now_seconds();
  test_b5();
  printf("b5 check: %.2f s\n", now_seconds() - t0);
  return test_finish("test_mit");
}
