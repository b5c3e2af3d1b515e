/* The training input pipeline's CPU cost (decode + augment, algorithm.md 4.3) at the paper's
 * resolutions: GTA 1914x1052 -> imrescale (1280, 720), crop 512, cat_max_ratio 0.75, and
 * Cityscapes 2048x1024 -> (1024, 512), crop 512. Writes a few synthetic frames with natural-ish
 * content (smooth multi-scale shading, edges, texture and sensor noise, so PNG decoding costs
 * what real frames cost) into a temporary GTA and Cityscapes tree, then measures:
 *   1. per stage in one thread, as the thread's CPU time (so other work on the machine does
 *      not inflate it): image decode, label decode, augment (cluda_pipeline_apply); images per
 *      second per core = 1 / their sum;
 *   2. the loader's wall-clock throughput with 1 and 2 worker threads, batch 2;
 *   3. the loader threads a 200 ms GPU step at batch 2 source + 2 target needs, from (1)
 *      (CPU per iteration / step), and a simulated run: a source and a target loader with 1
 *      or 2 workers each feed a consumer that sleeps 200 ms per iteration; reported is how
 *      long get() blocks per iteration.
 * Options: --images N (frames per dataset, default 4), --seconds S (per throughput run,
 * default 6), --step-ms M (default 200), --iters N (simulated iterations, default 15),
 * --quick, --keep (leave the temporary tree). Exit status 0, 1 on an error, 2 on a bad
 * option. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench_common.h"
#include "cluda/loader.h"

typedef struct dataset_spec {
  const char *name;
  int width, height;
  int scale_long, scale_short;
  float cat_max_ratio;
} dataset_spec;

static const dataset_spec GTA = {"gta", 1914, 1052, 1280, 720, 0.75f};
static const dataset_spec CITYSCAPES = {"cityscapes", 2048, 1024, 1024, 512, 1.0f};

enum { CROP = 512, BATCH = 2 };

/* ---------------------------------------------------------------- synthetic frames */

/* Bilinear value noise: a grid of random values every `cell` pixels. */
static float value_noise(cluda_rng_key key, int x, int y, int cell) {
  const int gx = x / cell, gy = y / cell;
  const float fx = (float)(x % cell) / cell, fy = (float)(y % cell) / cell;
  float v[4];
  for (int k = 0; k < 4; k++)
    v[k] = cluda_rng_uniform(key, (uint64_t)(gy + k / 2) * 65536 + (uint64_t)(gx + k % 2));
  return (v[0] * (1 - fx) + v[1] * fx) * (1 - fy) + (v[2] * (1 - fx) + v[3] * fx) * fy;
}

/* A street-like frame: sky, a horizon of "buildings" (blocks with textured faces), road and
 * sidewalk, shading from four octaves of value noise and +-3 grey levels of pixel noise; the
 * labels are the matching regions. */
static cluda_status make_frame(int width, int height, uint32_t seed, cluda_image *rgb,
                               cluda_image *labels) {
  CLUDA_TRY(cluda_image_create(rgb, width, height, 3));
  cluda_status s = cluda_image_create(labels, width, height, 1);
  if (s.code != CLUDA_OK) {
    cluda_image_free(rgb);
    return s;
  }
  const cluda_rng_key key = cluda_rng_make_key(seed, 0, 0, CLUDA_RNG_TEST, 0);
  const cluda_rng_key octave[4] = {cluda_rng_make_key(seed, 1, 0, CLUDA_RNG_TEST, 0),
                                   cluda_rng_make_key(seed, 2, 0, CLUDA_RNG_TEST, 0),
                                   cluda_rng_make_key(seed, 3, 0, CLUDA_RNG_TEST, 0),
                                   cluda_rng_make_key(seed, 4, 0, CLUDA_RNG_TEST, 0)};
  const int horizon = height * 2 / 5, road = height * 3 / 5;
  for (int y = 0; y < height; y++)
    for (int x = 0; x < width; x++) {
      /* building blocks 60..250 px wide with heights from the block's own draw */
      const int block = x / 97;
      const int top = horizon - (int)(cluda_rng_uniform(key, (uint64_t)block) * height / 3);
      int cls;
      if (y < top)
        cls = 10; /* sky */
      else if (y < road)
        cls = (block % 3 == 2) ? 8 : 2; /* vegetation or building */
      else
        cls = x < width / 6 || x > width * 5 / 6 ? 1 : 0; /* sidewalk or road */
      if (cls != 10 && y > road - 40 && y < road + 60 && (x / 211) % 4 == 1) cls = 13; /* car */
      const uint8_t *base = cluda_cityscapes_palette[cls];
      const float shade = 0.55f + 0.25f * value_noise(octave[0], x, y, 256) +
                          0.12f * value_noise(octave[1], x, y, 64) +
                          0.06f * value_noise(octave[2], x, y, 16) +
                          (cls == 2 || cls == 8 ? 0.10f : 0.03f) * value_noise(octave[3], x, y, 4);
      uint32_t w[4];
      cluda_rng_bits(key, (uint64_t)1 << 32 | ((uint64_t)y * (uint64_t)width + (uint64_t)x), w);
      for (int c = 0; c < 3; c++) {
        const float noise = (float)(w[c] % 7) - 3.0f;
        const float v = base[c] * shade * 1.3f + noise;
        rgb->pixels[((size_t)y * width + x) * 3 + c] = (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
      }
      labels->pixels[(size_t)y * width + x] = (uint8_t)cls;
    }
  return cluda_ok();
}

static int make_dirs(const char *path) {
  char buf[512];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1; *p; p++)
    if (*p == '/') {
      *p = '\0';
      mkdir(buf, 0755);
      *p = '/';
    }
  return mkdir(buf, 0755) == 0;
}

static long file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* Writes `count` frames of spec in its dataset layout under root; *bytes = image PNG bytes. */
static cluda_status write_dataset(const dataset_spec *spec, const char *root, int count,
                                  long *bytes) {
  char image_dir[512], label_dir[512], image[640], label[640];
  const int cityscapes = spec == &CITYSCAPES;
  snprintf(image_dir, sizeof image_dir, "%s/%s", root,
           cityscapes ? "leftImg8bit/train/bench" : "images");
  snprintf(label_dir, sizeof label_dir, "%s/%s", root,
           cityscapes ? "gtFine/train/bench" : "labels");
  CLUDA_REQUIRE(make_dirs(image_dir) && make_dirs(label_dir), CLUDA_ERR_IO,
                "bench_data: cannot create %s and %s", image_dir, label_dir);
  *bytes = 0;
  for (int i = 0; i < count; i++) {
    if (cityscapes) {
      snprintf(image, sizeof image, "%s/bench_000000_%06d_leftImg8bit.png", image_dir, i);
      snprintf(label, sizeof label, "%s/bench_000000_%06d_gtFine_labelTrainIds.png", label_dir, i);
    } else {
      snprintf(image, sizeof image, "%s/%05d.png", image_dir, i);
      snprintf(label, sizeof label, "%s/%05d_labelTrainIds.png", label_dir, i);
    }
    cluda_image rgb, labels;
    CLUDA_TRY(make_frame(spec->width, spec->height, 1000u * (cityscapes ? 2 : 1) + (uint32_t)i,
                         &rgb, &labels));
    cluda_status s = cluda_png_write(image, &rgb);
    if (s.code == CLUDA_OK) s = cluda_png_write(label, &labels);
    cluda_image_free(&rgb);
    cluda_image_free(&labels);
    CLUDA_TRY(s);
    *bytes += file_size(image);
  }
  return cluda_ok();
}

/* ---------------------------------------------------------------- measurements */

static cluda_loader_config loader_config(const cluda_dataset *ds, const dataset_spec *spec,
                                         int workers) {
  cluda_loader_config c;
  memset(&c, 0, sizeof c);
  c.dataset = ds;
  c.pipeline.scale_long = spec->scale_long;
  c.pipeline.scale_short = spec->scale_short;
  c.pipeline.crop_h = CROP;
  c.pipeline.crop_w = CROP;
  c.pipeline.cat_max_ratio = spec->cat_max_ratio;
  c.pipeline.flip = 1;
  for (int i = 0; i < 3; i++) {
    c.pipeline.mean[i] = cluda_image_mean[i];
    c.pipeline.std[i] = cluda_image_std[i];
  }
  c.seed = 1;
  c.domain = spec == &CITYSCAPES;
  c.slots = BATCH;
  c.workers = workers;
  c.prefetch = 2;
  return c;
}

/* CPU seconds of the calling thread: what a sample costs a core, whatever else runs. */
static double thread_cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct stage_times {
  double decode_image, decode_labels, augment; /* CPU seconds per image, medians */
  double wall;                                 /* wall seconds per image, median */
} stage_times;

/* Per stage in the calling thread over `rounds` passes through the dataset. */
static cluda_status time_stages(const cluda_dataset *ds, const dataset_spec *spec, int rounds,
                                stage_times *out) {
  const cluda_loader_config c = loader_config(ds, spec, 0);
  const int n = rounds * ds->count;
  double *t = calloc((size_t)n * 4, sizeof *t);
  float *image = malloc((size_t)CROP * CROP * 3 * sizeof *image);
  uint8_t *labels = malloc((size_t)CROP * CROP);
  cluda_status s = cluda_ok();
  if (!t || !image || !labels) s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "bench_data: out of memory");
  for (int k = 0; k < n && s.code == CLUDA_OK; k++) {
    cluda_image rgb = {0}, lab = {0};
    const double wall = now_s(), t0 = thread_cpu_s();
    s = cluda_dataset_read_image(ds, k % ds->count, &rgb);
    const double t1 = thread_cpu_s();
    if (s.code == CLUDA_OK) s = cluda_dataset_read_labels(ds, k % ds->count, &lab);
    const double t2 = thread_cpu_s();
    if (s.code == CLUDA_OK)
      s = cluda_pipeline_apply(&c.pipeline, &rgb, &lab,
                               cluda_rng_make_key(1, (uint32_t)k, 0, CLUDA_RNG_DATA, 0), -1, 0,
                               image, labels, NULL);
    const double t3 = thread_cpu_s();
    t[k] = t1 - t0;
    t[n + k] = t2 - t1;
    t[2 * n + k] = t3 - t2;
    t[3 * n + k] = now_s() - wall;
    cluda_image_free(&rgb);
    cluda_image_free(&lab);
  }
  if (s.code == CLUDA_OK) {
    for (int j = 0; j < 4; j++)
      qsort(t + (size_t)j * n, (size_t)n, sizeof *t, cmp_double);
    out->decode_image = t[n / 2];
    out->decode_labels = t[n + n / 2];
    out->augment = t[2 * n + n / 2];
    out->wall = t[3 * n + n / 2];
  }
  free(t);
  free(image);
  free(labels);
  return s;
}

/* Images per second of a loader with `workers` threads and a consumer that only copies. */
static cluda_status time_loader(const cluda_dataset *ds, const dataset_spec *spec, int workers,
                                double seconds, double *images_per_s) {
  const cluda_loader_config c = loader_config(ds, spec, workers);
  float *images = malloc((size_t)BATCH * CROP * CROP * 3 * sizeof *images);
  uint8_t *labels = malloc((size_t)BATCH * CROP * CROP);
  cluda_loader *l = NULL;
  cluda_status s = images && labels ? cluda_loader_create(&l, &c)
                                    : CLUDA_FAIL(CLUDA_ERR_ALLOC, "bench_data: out of memory");
  /* Iteration 0 warms up (first page faults, the workers' first samples). */
  if (s.code == CLUDA_OK) s = cluda_loader_get(l, 0, images, labels);
  const double start = now_s();
  int64_t it = 1;
  for (; s.code == CLUDA_OK && now_s() - start < seconds; it++)
    s = cluda_loader_get(l, it, images, labels);
  if (s.code == CLUDA_OK) *images_per_s = (double)(it - 1) * BATCH / (now_s() - start);
  cluda_loader_destroy(l);
  free(images);
  free(labels);
  return s;
}

/* Source and target loaders with `workers` threads each feed a consumer that sleeps step_s per
 * iteration (the GPU step); returns the mean time get() blocked per iteration. */
static cluda_status simulate_training(const cluda_dataset *gta, const cluda_dataset *cs,
                                      int workers, double step_s, int iterations, double *stall_s) {
  const cluda_loader_config cg = loader_config(gta, &GTA, workers);
  const cluda_loader_config cc = loader_config(cs, &CITYSCAPES, workers);
  float *images = malloc((size_t)BATCH * CROP * CROP * 3 * sizeof *images);
  uint8_t *labels = malloc((size_t)BATCH * CROP * CROP);
  cluda_loader *source = NULL, *target = NULL;
  cluda_status s = images && labels ? cluda_loader_create(&source, &cg)
                                    : CLUDA_FAIL(CLUDA_ERR_ALLOC, "bench_data: out of memory");
  if (s.code == CLUDA_OK) s = cluda_loader_create(&target, &cc);
  double stalled = 0;
  for (int it = 0; it < iterations && s.code == CLUDA_OK; it++) {
    const double t0 = now_s();
    s = cluda_loader_get(source, it, images, labels);
    if (s.code == CLUDA_OK) s = cluda_loader_get(target, it, images, labels);
    /* Iteration 0 waits for the first batches in any setup: not counted. */
    if (it > 0) stalled += now_s() - t0;
    const struct timespec step = {(time_t)step_s, (long)((step_s - floor(step_s)) * 1e9)};
    nanosleep(&step, NULL);
  }
  if (s.code == CLUDA_OK) *stall_s = stalled / (iterations - 1);
  cluda_loader_destroy(source);
  cluda_loader_destroy(target);
  free(images);
  free(labels);
  return s;
}

/* ---------------------------------------------------------------- main */

static int usage(const char *program) {
  fprintf(stderr,
          "usage: %s [--images N] [--seconds S] [--step-ms M] [--iters N] [--quick] [--keep]\n",
          program);
  return 2;
}

static void print_machine(void) {
  FILE *f = popen("lscpu 2>/dev/null | grep -m1 'Model name' | sed 's/.*: *//'", "r");
  char model[128] = "?";
  if (f) {
    if (!fgets(model, sizeof model, f)) snprintf(model, sizeof model, "?");
    model[strcspn(model, "\n")] = '\0';
    pclose(f);
  }
  printf("machine: %s, %ld online cores, load average %.2f\n", model, sysconf(_SC_NPROCESSORS_ONLN),
         load_average());
}

int main(int argc, char **argv) {
  int images = 4, step_ms = 200, iterations = 15, keep = 0;
  double seconds = 6;
  for (int i = 1; i < argc; i++) {
    int v;
    if (!strcmp(argv[i], "--quick")) {
      images = 2, seconds = 2, iterations = 6;
    } else if (!strcmp(argv[i], "--keep")) {
      keep = 1;
    } else if (i + 1 < argc && !strcmp(argv[i], "--images") && parse_int(argv[i + 1], 1, &v)) {
      images = v, i++;
    } else if (i + 1 < argc && !strcmp(argv[i], "--seconds") && parse_int(argv[i + 1], 1, &v)) {
      seconds = v, i++;
    } else if (i + 1 < argc && !strcmp(argv[i], "--step-ms") && parse_int(argv[i + 1], 1, &v)) {
      step_ms = v, i++;
    } else if (i + 1 < argc && !strcmp(argv[i], "--iters") && parse_int(argv[i + 1], 2, &v)) {
      iterations = v, i++;
    } else {
      return usage(argv[0]);
    }
  }
  print_machine();
  char root[64] = "/tmp/cluda_bench_data_XXXXXX", gta_root[128], cs_root[128];
  if (!mkdtemp(root)) {
    perror("mkdtemp");
    return 1;
  }
  snprintf(gta_root, sizeof gta_root, "%s/gta", root);
  snprintf(cs_root, sizeof cs_root, "%s/cityscapes", root);
  cluda_dataset gta = {0}, cs = {0};
  long gta_bytes = 0, cs_bytes = 0;
  const double t0 = now_s();
  cluda_status s = write_dataset(&GTA, gta_root, images, &gta_bytes);
  if (s.code == CLUDA_OK) s = write_dataset(&CITYSCAPES, cs_root, images, &cs_bytes);
  if (s.code == CLUDA_OK) s = cluda_dataset_open(&gta, CLUDA_DATASET_GTA, gta_root, NULL);
  if (s.code == CLUDA_OK) s = cluda_dataset_open(&cs, CLUDA_DATASET_CITYSCAPES, cs_root, "train");
  if (s.code == CLUDA_OK)
    printf("wrote %d + %d frames in %.1f s under %s: GTA %.2f MB, Cityscapes %.2f MB per image "
           "PNG\n\n",
           images, images, now_s() - t0, root, gta_bytes / 1e6 / images, cs_bytes / 1e6 / images);

  const dataset_spec *specs[2] = {&GTA, &CITYSCAPES};
  const cluda_dataset *sets[2] = {&gta, &cs};
  stage_times st[2];
  double rate[2][3] = {{0}};
  /* Stages of both datasets first, then the loaders: a change in machine load shows in
   * both rows alike. */
  for (int d = 0; d < 2 && s.code == CLUDA_OK; d++)
    s = time_stages(sets[d], specs[d], seconds >= 6 ? 3 : 1, &st[d]);
  for (int d = 0; d < 2 && s.code == CLUDA_OK; d++)
    for (int w = 1; w <= 2 && s.code == CLUDA_OK; w++)
      s = time_loader(sets[d], specs[d], w, seconds, &rate[d][w]);
  if (s.code == CLUDA_OK) {
    printf("one thread, CPU time per image (medians):\n%-11s %10s %10s %10s %10s %10s %10s\n",
           "dataset", "img dec", "lbl dec", "augment", "cpu total", "wall", "img/s/core");
    for (int d = 0; d < 2; d++) {
      const double total = st[d].decode_image + st[d].decode_labels + st[d].augment;
      printf("%-11s %7.1f ms %7.1f ms %7.1f ms %7.1f ms %7.1f ms %10.2f\n", specs[d]->name,
             1e3 * st[d].decode_image, 1e3 * st[d].decode_labels, 1e3 * st[d].augment, 1e3 * total,
             1e3 * st[d].wall, 1.0 / total);
      printf("RESULT name=data dataset=%s decode_image_ms=%.2f decode_labels_ms=%.2f "
             "augment_ms=%.2f cpu_ms=%.2f wall_ms=%.2f images_per_s_core=%.3f\n",
             specs[d]->name, 1e3 * st[d].decode_image, 1e3 * st[d].decode_labels,
             1e3 * st[d].augment, 1e3 * total, 1e3 * st[d].wall, 1.0 / total);
    }
    printf("\nloader, batch %d, prefetch 2, wall-clock images per second:\n%-11s %12s %12s "
           "%14s\n",
           BATCH, "dataset", "1 worker", "2 workers", "2w per worker");
    for (int d = 0; d < 2; d++) {
      printf("%-11s %12.2f %12.2f %14.2f\n", specs[d]->name, rate[d][1], rate[d][2],
             rate[d][2] / 2);
      printf("RESULT name=data_loader dataset=%s workers=1 images_per_s=%.3f\n", specs[d]->name,
             rate[d][1]);
      printf("RESULT name=data_loader dataset=%s workers=2 images_per_s=%.3f load=%.2f\n",
             specs[d]->name, rate[d][2], load_average());
    }
  }
  if (s.code == CLUDA_OK) {
    const double step_s = step_ms / 1e3;
    const double per_iteration = BATCH * (st[0].decode_image + st[0].decode_labels + st[0].augment +
                                          st[1].decode_image + st[1].decode_labels + st[1].augment);
    const int needed = (int)ceil(per_iteration / step_s);
    printf("\none iteration (%d GTA + %d Cityscapes samples) costs %.0f ms of CPU: %d loader "
           "thread(s) keep up with a %d ms step (%.2f cores busy)\n",
           BATCH, BATCH, 1e3 * per_iteration, needed, step_ms, per_iteration / step_s);
    printf("RESULT name=data_threads step_ms=%d iteration_cpu_ms=%.1f threads_needed=%d\n", step_ms,
           1e3 * per_iteration, needed);
    for (int w = 1; w <= 2 && s.code == CLUDA_OK; w++) {
      double stall = 0;
      s = simulate_training(&gta, &cs, w, step_s, iterations, &stall);
      if (s.code != CLUDA_OK) break;
      printf("simulated %d ms steps, %d worker(s) per loader (%d threads): get() stalls %.1f ms "
             "per iteration\n",
             step_ms, w, 2 * w, 1e3 * stall);
      printf("RESULT name=data_simulated step_ms=%d workers_per_loader=%d stall_ms=%.2f "
             "load=%.2f\n",
             step_ms, w, 1e3 * stall, load_average());
    }
  }
  cluda_dataset_free(&gta);
  cluda_dataset_free(&cs);
  if (keep) {
    printf("kept %s\n", root);
  } else {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", root);
  }
  if (s.code != CLUDA_OK) {
    fprintf(stderr, "bench_data: %s\n", s.message);
    return 1;
  }
  return 0;
}
