/* The prefetching loader: worker threads fill a ring of `prefetch` iteration buffers with
 * samples (one task = one slot of one iteration), the caller copies finished iterations out.
 * Every sample is a pure function of its key (loader.h), so which thread made it, and when,
 * never shows in the result.
 *
 * Ring protocol (all under `mutex`): the window is [window_start, window_start + depth);
 * iteration it lives in ring[it % depth]. A worker claims the next unclaimed slot of the
 * first unfinished iteration of the window, resetting an entry that still holds an older
 * iteration once no worker writes into it (busy == 0). get(it) moves the window to it (a
 * resume jump when it is not the expected iteration), waits until all slots of it are done,
 * copies them out and moves the window to it + 1. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluda/loader.h"

/* Draw index of the image of attempt a: above every crop and flip draw (loader.h). */
static const uint64_t IMAGE_DRAW = (uint64_t)1 << 20;

typedef struct ring_entry {
  int64_t iteration; /* -1: empty */
  int claimed;       /* slots handed to workers */
  int finished;      /* slots done (successfully or not) */
  int busy;          /* workers writing into this entry now */
  int error_slot;    /* lowest failed slot, or slots when none failed */
  cluda_status error;
  int64_t skipped;
  float *images;
  uint8_t *labels;
} ring_entry;

struct cluda_loader {
  cluda_loader_config cfg;
  size_t image_values, label_values; /* per sample */
  int64_t skipped;
  /* background loading; unused with cfg.workers == 0 */
  pthread_mutex_t mutex;
  pthread_cond_t work_changed; /* workers wait: new window, an entry became free, stop */
  pthread_cond_t sample_done;  /* get waits */
  int depth;
  ring_entry *ring;
  int64_t window_start;
  int stopping;
  pthread_t *threads;
  int threads_started;
};

/* ---------------------------------------------------------------- one sample */

static int uniform_int(uint32_t word, int m) { return (int)(((uint64_t)word * (uint64_t)m) >> 32); }

/* A sample that skip_bad may replace: a missing, corrupt, unsupported or inconsistent file,
 * not a bug or an allocation failure. */
static int is_bad_sample(cluda_status s) {
  return s.code == CLUDA_ERR_IO || s.code == CLUDA_ERR_SHAPE || s.code == CLUDA_ERR_UNSUPPORTED;
}

/* Decodes dataset item `index` and runs the pipeline into the outputs. */
static cluda_status process_item(const cluda_loader *l, int index, cluda_rng_key key,
                                 int rare_class, float *image_out, uint8_t *labels_out) {
  const cluda_loader_config *cfg = &l->cfg;
  const cluda_dataset_item *item = &cfg->dataset->items[index];
  cluda_image rgb = {0}, labels = {0};
  cluda_status s = cluda_dataset_read_image(cfg->dataset, index, &rgb);
  if (s.code == CLUDA_OK) s = cluda_dataset_read_labels(cfg->dataset, index, &labels);
  if (s.code == CLUDA_OK && (rgb.width != labels.width || rgb.height != labels.height))
    s = CLUDA_FAIL(CLUDA_ERR_SHAPE, "loader: image %s is %dx%d but its labels %s are %dx%d",
                   item->image, rgb.width, rgb.height, item->label_train, labels.width,
                   labels.height);
  if (s.code == CLUDA_OK) {
    const double threshold =
        cfg->rcs ? (double)cfg->rcs->min_pixels * cfg->rcs_min_crop_ratio : 0.0;
    s = cluda_pipeline_apply(&cfg->pipeline, &rgb, &labels, key, rare_class, threshold, image_out,
                             labels_out, NULL);
  }
  cluda_image_free(&rgb);
  cluda_image_free(&labels);
  return s;
}

/* Sample `slot` of `iteration`; bad samples (skip_bad) are replaced by the image of the next
 * attempt and counted in *skipped. */
static cluda_status load_sample(const cluda_loader *l, int64_t iteration, int slot,
                                float *image_out, uint8_t *labels_out, int64_t *skipped) {
  const cluda_loader_config *cfg = &l->cfg;
  const cluda_rng_key key = cluda_rng_make_key(cfg->seed, (uint32_t)(cfg->first_slot + slot),
                                               (uint32_t)iteration, CLUDA_RNG_DATA, cfg->domain);
  cluda_status s = cluda_ok();
  for (int attempt = 0; attempt < CLUDA_LOADER_MAX_ATTEMPTS; attempt++) {
    int index, rare_class = -1;
    if (cfg->rcs) {
      CLUDA_TRY(
          cluda_rcs_sample(cfg->rcs, key, IMAGE_DRAW + (uint64_t)attempt, &rare_class, &index));
    } else {
      uint32_t words[4];
      cluda_rng_bits(key, IMAGE_DRAW + (uint64_t)attempt, words);
      index = uniform_int(words[0], cfg->dataset->count);
    }
    s = process_item(l, index, key, rare_class, image_out, labels_out);
    if (s.code == CLUDA_OK || !cfg->skip_bad || !is_bad_sample(s)) return s;
    fprintf(stderr, "cluda loader: warning: skipping a bad sample (iteration %lld, slot %d): %s\n",
            (long long)iteration, cfg->first_slot + slot, s.message);
    (*skipped)++;
  }
  return CLUDA_FAIL(s.code, "loader: %d bad samples in a row (iteration %lld); last: %.140s",
                    CLUDA_LOADER_MAX_ATTEMPTS, (long long)iteration, s.message);
}

/* ---------------------------------------------------------------- workers */

static void reset_entry(ring_entry *e, int64_t iteration, int slots) {
  e->iteration = iteration;
  e->claimed = 0;
  e->finished = 0;
  e->error_slot = slots;
  e->error = cluda_ok();
  e->skipped = 0;
}

/* Under the mutex: the next task of the window, or NULL when there is none now. */
static ring_entry *claim_task(cluda_loader *l, int64_t *iteration, int *slot) {
  for (int d = 0; d < l->depth; d++) {
    const int64_t want = l->window_start + d;
    ring_entry *e = &l->ring[want % l->depth];
    if (e->iteration != want) {
      if (e->busy > 0) continue;
      reset_entry(e, want, l->cfg.slots);
    }
    if (e->claimed < l->cfg.slots) {
      *iteration = want;
      *slot = e->claimed++;
      e->busy++;
      return e;
    }
  }
  return NULL;
}

static void *worker_main(void *arg) {
  cluda_loader *l = arg;
  pthread_mutex_lock(&l->mutex);
  while (!l->stopping) {
    int64_t iteration;
    int slot;
    ring_entry *e = claim_task(l, &iteration, &slot);
    if (!e) {
      pthread_cond_wait(&l->work_changed, &l->mutex);
      continue;
    }
    pthread_mutex_unlock(&l->mutex);
    /* The entry cannot be reset while busy, so writing into it unlocked is safe. */
    int64_t skipped = 0;
    cluda_status s = load_sample(l, iteration, slot, e->images + (size_t)slot * l->image_values,
                                 e->labels + (size_t)slot * l->label_values, &skipped);
    pthread_mutex_lock(&l->mutex);
    e->busy--;
    e->finished++;
    e->skipped += skipped;
    if (s.code != CLUDA_OK && slot < e->error_slot) {
      e->error_slot = slot;
      e->error = s;
    }
    pthread_cond_broadcast(&l->sample_done);
    /* A stale entry whose last writer left can now be reset by a waiting worker. */
    if (e->busy == 0) pthread_cond_broadcast(&l->work_changed);
  }
  pthread_mutex_unlock(&l->mutex);
  return NULL;
}

/* ---------------------------------------------------------------- public */

static cluda_status check_config(const cluda_loader_config *cfg) {
  const char *op = "loader_create";
  CLUDA_REQUIRE(cfg != NULL && cfg->dataset != NULL, CLUDA_ERR_ARG, "%s: NULL config or dataset",
                op);
  CLUDA_REQUIRE(cfg->dataset->count >= 1 && cfg->dataset->items != NULL, CLUDA_ERR_ARG,
                "%s: dataset %s has no items", op,
                cfg->dataset->root ? cfg->dataset->root : "(unnamed)");
  CLUDA_REQUIRE(cfg->slots >= 1 && cfg->first_slot >= 0 && cfg->first_slot + cfg->slots <= 65536,
                CLUDA_ERR_ARG, "%s: slots %d..%d must lie in 0..65535 (16-bit key field)", op,
                cfg->first_slot, cfg->first_slot + cfg->slots - 1);
  CLUDA_REQUIRE(cfg->domain <= 0xffffu, CLUDA_ERR_ARG, "%s: domain %u does not fit 16 bits", op,
                cfg->domain);
  CLUDA_REQUIRE(cfg->workers >= 0 && cfg->workers <= 256, CLUDA_ERR_ARG,
                "%s: workers %d must be in 0..256", op, cfg->workers);
  CLUDA_REQUIRE(cfg->workers == 0 || (cfg->prefetch >= 1 && cfg->prefetch <= 64), CLUDA_ERR_ARG,
                "%s: prefetch %d must be in 1..64 with workers", op, cfg->prefetch);
  CLUDA_REQUIRE(cfg->first_iteration >= 0 && cfg->first_iteration <= UINT32_MAX, CLUDA_ERR_ARG,
                "%s: first_iteration %lld outside 0..2^32-1", op, (long long)cfg->first_iteration);
  const cluda_pipeline_config *p = &cfg->pipeline;
  CLUDA_REQUIRE(p->crop_h >= 1 && p->crop_w >= 1 && p->crop_h <= CLUDA_IMAGE_MAX_SIDE &&
                    p->crop_w <= CLUDA_IMAGE_MAX_SIDE,
                CLUDA_ERR_ARG, "%s: crop %dx%d outside 1..%d", op, p->crop_w, p->crop_h,
                CLUDA_IMAGE_MAX_SIDE);
  if (cfg->rcs) {
    const cluda_rcs *r = cfg->rcs;
    CLUDA_REQUIRE(r->num_classes >= 1 && r->candidate_start && r->candidates, CLUDA_ERR_ARG,
                  "%s: rcs is not initialised", op);
    for (int i = 0; i < r->candidate_start[r->num_classes]; i++)
      CLUDA_REQUIRE(r->candidates[i] >= 0 && r->candidates[i] < cfg->dataset->count, CLUDA_ERR_ARG,
                    "%s: rcs candidate image %d outside the dataset %s (%d images): statistics "
                    "of another dataset?",
                    op, r->candidates[i], cfg->dataset->root ? cfg->dataset->root : "",
                    cfg->dataset->count);
    CLUDA_REQUIRE(cfg->rcs_min_crop_ratio >= 0.0, CLUDA_ERR_ARG,
                  "%s: rcs_min_crop_ratio %g must not be negative", op, cfg->rcs_min_crop_ratio);
  }
  return cluda_ok();
}

static void stop_workers(cluda_loader *l) {
  pthread_mutex_lock(&l->mutex);
  l->stopping = 1;
  pthread_cond_broadcast(&l->work_changed);
  pthread_mutex_unlock(&l->mutex);
  for (int t = 0; t < l->threads_started; t++)
    pthread_join(l->threads[t], NULL);
  l->threads_started = 0;
}

void cluda_loader_destroy(cluda_loader *l) {
  if (!l) return;
  if (l->cfg.workers > 0) {
    stop_workers(l);
    pthread_cond_destroy(&l->sample_done);
    pthread_cond_destroy(&l->work_changed);
    pthread_mutex_destroy(&l->mutex);
  }
  for (int d = 0; l->ring && d < l->depth; d++) {
    free(l->ring[d].images);
    free(l->ring[d].labels);
  }
  free(l->ring);
  free(l->threads);
  free(l);
}

/* Allocates the ring and starts the workers; on failure the caller destroys l. */
static cluda_status start_workers(cluda_loader *l) {
  const size_t slots = (size_t)l->cfg.slots;
  l->depth = l->cfg.prefetch;
  l->ring = calloc((size_t)l->depth, sizeof *l->ring);
  l->threads = calloc((size_t)l->cfg.workers, sizeof *l->threads);
  CLUDA_REQUIRE(l->ring && l->threads, CLUDA_ERR_ALLOC, "loader_create: out of memory");
  for (int d = 0; d < l->depth; d++) {
    ring_entry *e = &l->ring[d];
    e->iteration = -1;
    e->images = malloc(slots * l->image_values * sizeof *e->images);
    e->labels = malloc(slots * l->label_values);
    CLUDA_REQUIRE(e->images && e->labels, CLUDA_ERR_ALLOC,
                  "loader_create: cannot allocate %d prefetch buffers of %zu samples", l->depth,
                  slots);
  }
  l->window_start = l->cfg.first_iteration;
  for (int t = 0; t < l->cfg.workers; t++) {
    const int err = pthread_create(&l->threads[t], NULL, worker_main, l);
    CLUDA_REQUIRE(err == 0, CLUDA_ERR_ALLOC, "loader_create: cannot start worker %d: %s", t,
                  strerror(err));
    l->threads_started++;
  }
  return cluda_ok();
}

cluda_status cluda_loader_create(cluda_loader **out, const cluda_loader_config *cfg) {
  CLUDA_REQUIRE(out != NULL, CLUDA_ERR_ARG, "loader_create: out is NULL");
  *out = NULL;
  CLUDA_TRY(check_config(cfg));
  cluda_loader *l = calloc(1, sizeof *l);
  CLUDA_REQUIRE(l != NULL, CLUDA_ERR_ALLOC, "loader_create: out of memory");
  l->cfg = *cfg;
  l->label_values = (size_t)cfg->pipeline.crop_h * (size_t)cfg->pipeline.crop_w;
  l->image_values = 3 * l->label_values;
  if (cfg->workers > 0) {
    pthread_mutex_init(&l->mutex, NULL);
    pthread_cond_init(&l->work_changed, NULL);
    pthread_cond_init(&l->sample_done, NULL);
    cluda_status s = start_workers(l);
    if (s.code != CLUDA_OK) {
      cluda_loader_destroy(l);
      return s;
    }
  }
  *out = l;
  return cluda_ok();
}

/* workers == 0: every slot in the calling thread, straight into the outputs. */
static cluda_status load_in_caller(cluda_loader *l, int64_t iteration, float *images,
                                   uint8_t *labels) {
  int64_t skipped = 0;
  for (int slot = 0; slot < l->cfg.slots; slot++) {
    cluda_status s = load_sample(l, iteration, slot, images + (size_t)slot * l->image_values,
                                 labels + (size_t)slot * l->label_values, &skipped);
    if (s.code != CLUDA_OK) return s;
  }
  l->skipped += skipped;
  return cluda_ok();
}

cluda_status cluda_loader_get(cluda_loader *l, int64_t iteration, float *images, uint8_t *labels) {
  CLUDA_REQUIRE(l != NULL && images != NULL && labels != NULL, CLUDA_ERR_ARG,
                "loader_get: NULL argument");
  CLUDA_REQUIRE(iteration >= 0 && iteration <= UINT32_MAX, CLUDA_ERR_ARG,
                "loader_get: iteration %lld outside 0..2^32-1", (long long)iteration);
  if (l->cfg.workers == 0) return load_in_caller(l, iteration, images, labels);

  pthread_mutex_lock(&l->mutex);
  if (l->window_start != iteration) {
    l->window_start = iteration;
    pthread_cond_broadcast(&l->work_changed);
  }
  ring_entry *e = &l->ring[iteration % l->depth];
  while (!(e->iteration == iteration && e->finished == l->cfg.slots))
    pthread_cond_wait(&l->sample_done, &l->mutex);
  pthread_mutex_unlock(&l->mutex);

  /* Safe unlocked: the window still starts here, so no worker resets or claims this entry. */
  const size_t slots = (size_t)l->cfg.slots;
  const cluda_status s = e->error;
  if (s.code == CLUDA_OK) {
    memcpy(images, e->images, slots * l->image_values * sizeof *images);
    memcpy(labels, e->labels, slots * l->label_values);
    l->skipped += e->skipped;
  }

  pthread_mutex_lock(&l->mutex);
  l->window_start = iteration + 1;
  pthread_cond_broadcast(&l->work_changed);
  pthread_mutex_unlock(&l->mutex);
  return s;
}

int64_t cluda_loader_skipped(const cluda_loader *l) { return l ? l->skipped : 0; }
