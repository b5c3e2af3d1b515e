/* Synthetic two-domain street scenes: the embedded default data set (docs/synthetic-data.md).
 *
 * A scene is a small 3-D street (ground plane, building / vegetation / wall / fence boxes
 * along both sides, poles with traffic lights and signs, vehicles, people, riders and bikes)
 * ray-cast through a pinhole camera, so objects shrink with distance and every resolution
 * shows the same scene. Labels are the 19 Cityscapes train ids (every pixel is labelled;
 * 255 is never produced). The RGB image is shaded from the same hits through a domain
 * style: "source" is saturated, flat and sunlit (game-like); "target" has another palette
 * (hue shifts, desaturation), overcast light from the other side, haze, grain textures,
 * white balance and exposure changes, blur, vignetting and sensor noise.
 *
 * Every image is a pure function of (seed, domain, split, index, size, gap, shared_layout):
 * no state, no allocation, safe to call from many threads at once. Random draws come from
 * the Philox RNG (rng.h) under purpose CLUDA_SYNTH_RNG_PURPOSE. Results are bit-identical
 * for a given build; different compilers may round floats differently. */
#ifndef CLUDA_SYNTHETIC_H
#define CLUDA_SYNTHETIC_H

#include <stdint.h>

#include "cluda/status.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  CLUDA_SYNTH_CLASSES = 19,         /* Cityscapes train ids 0..18 */
  CLUDA_SYNTH_RNG_PURPOSE = 0x5e70, /* rng.h purpose of every draw made here */
  CLUDA_SYNTH_MAX_SIDE = 16384
};

typedef enum cluda_synth_domain {
  CLUDA_SYNTH_SOURCE = 0,
  CLUDA_SYNTH_TARGET = 1
} cluda_synth_domain;
typedef enum cluda_synth_split { CLUDA_SYNTH_TRAIN = 0, CLUDA_SYNTH_VAL = 1 } cluda_synth_split;

typedef struct cluda_synth_config {
  int height, width; /* any size from 1x1 to CLUDA_SYNTH_MAX_SIDE */
  cluda_synth_domain domain;
  uint64_t seed;
  /* Strength of the target style in [0, 1]: 0 renders the target like the source, 1 is the
   * full gap. Scales the palette shift, lighting change, haze, grain, blur and noise. Ignored
   * for the source domain. */
  float gap;
  /* 0: the layout depends on the domain too (source image i and target image i are
   * different scenes). 1: both domains share layouts, so image i is the same scene in two
   * styles (for figures and gap measurements). */
  int shared_layout;
} cluda_synth_config;

/* 128x128, source, seed 0, gap 1, independent layouts. */
void cluda_synth_config_init(cluda_synth_config *cfg);

/* Checks sizes, domain and gap. */
cluda_status cluda_synth_check(const cluda_synth_config *cfg);

/* Renders image `index` (< 2^32) of a split. rgb: height*width*3 bytes (HWC, RGB) or NULL;
 * labels: height*width train ids or NULL. Skipping rgb skips all shading. */
cluda_status cluda_synth_render(const cluda_synth_config *cfg, cluda_synth_split split,
                                uint64_t index, uint8_t *rgb, uint8_t *labels);

/* counts[c] = the number of pixels of class c in image `index` (the RCS statistics of
 * algorithm.md 2.1, without a buffer). */
cluda_status cluda_synth_class_counts(const cluda_synth_config *cfg, cluda_synth_split split,
                                      uint64_t index, int64_t counts[CLUDA_SYNTH_CLASSES]);

/* "source" / "target", "train" / "val"; the parsers return 0 on success, -1 otherwise. */
const char *cluda_synth_domain_name(cluda_synth_domain domain);
const char *cluda_synth_split_name(cluda_synth_split split);
int cluda_synth_parse_domain(const char *text, cluda_synth_domain *domain);
int cluda_synth_parse_split(const char *text, cluda_synth_split *split);

#ifdef __cplusplus
}
#endif
#endif
