/* Synthetic two-domain street scenes (see include/cluda/synthetic.h and
 * docs/synthetic-data.md).
 *
 * World coordinates are metres: X right, Y up, Z forward; the camera sits at (0, cam_h, 0)
 * looking along +Z, so a ray through pixel (x, y) is (dx, dy, 1) and its parameter t is the
 * depth Z. The scene is a list of axis-aligned boxes and ellipsoids over a ground plane;
 * each pixel takes the nearest hit (no painter's order, no scratch buffers). */
#include "cluda/synthetic.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

#include "cluda/rng.h"

/* ---- classes, materials, textures ---- */

enum {
  C_ROAD,
  C_SIDEWALK,
  C_BUILDING,
  C_WALL,
  C_FENCE,
  C_POLE,
  C_LIGHT,
  C_SIGN,
  C_VEGETATION,
  C_TERRAIN,
  C_SKY,
  C_PERSON,
  C_RIDER,
  C_CAR,
  C_TRUCK,
  C_BUS,
  C_TRAIN,
  C_MOTORCYCLE,
  C_BICYCLE
};

enum {
  M_ROAD,
  M_LANE,
  M_SIDEWALK,
  M_CURB,
  M_BUILDING,
  M_WINDOW,
  M_WALL,
  M_FENCE,
  M_POLE,
  M_HOUSING,
  M_LAMP,
  M_SIGN,
  M_LEAVES,
  M_TRUNK,
  M_TERRAIN,
  M_SKY_TOP,
  M_SKY_HORIZON,
  M_CLOTHES,
  M_PANTS,
  M_SKIN,
  M_RIDER,
  M_HELMET,
  M_CAR,
  M_GLASS,
  M_TIRE,
  M_TRUCK,
  M_BUS,
  M_TRAIN,
  M_MOTO,
  M_BIKE,
  M_COUNT
};

enum {
  T_PLAIN,
  T_BUILDING,
  T_WALL,
  T_FENCE,
  T_LEAVES,
  T_LIGHT,
  T_SIGN,
  T_CAR_BODY,
  T_CABIN,
  T_WINDOW_BAND,
  T_HEAD,
  T_WHEEL,
  T_CARGO
};

enum { S_BOX, S_ELLIPSOID };
enum { MAX_PRIMS = 400, MAX_FOOT = 64, NVAR = 4 };
enum { SLOT_LAYOUT = 0, SLOT_STYLE = 1, SLOT_NOISE = 2 };

static const float NEAR_Z = 0.3f;

/* Source palette: saturated, "game-like" colours (sRGB, 0..1), four variants each. */
static const float source_palette[M_COUNT][NVAR][3] = {
    [M_ROAD] = {{.30f, .30f, .34f}, {.34f, .33f, .37f}, {.27f, .28f, .31f}, {.32f, .31f, .35f}},
    [M_LANE] = {{.96f, .96f, .93f}, {.96f, .96f, .93f}, {.98f, .86f, .20f}, {.93f, .93f, .93f}},
    [M_SIDEWALK] = {{.76f, .62f, .67f}, {.72f, .66f, .64f}, {.80f, .70f, .72f}, {.68f, .58f, .64f}},
    [M_CURB] = {{.88f, .88f, .88f}, {.82f, .82f, .84f}, {.90f, .86f, .86f}, {.84f, .84f, .84f}},
    [M_BUILDING] = {{.82f, .55f, .38f}, {.90f, .83f, .66f}, {.58f, .58f, .66f}, {.74f, .34f, .28f}},
    [M_WINDOW] = {{.22f, .42f, .80f}, {.30f, .52f, .84f}, {.16f, .32f, .60f}, {.36f, .58f, .88f}},
    [M_WALL] = {{.88f, .84f, .70f}, {.78f, .72f, .60f}, {.92f, .90f, .80f}, {.72f, .66f, .56f}},
    [M_FENCE] = {{.60f, .40f, .18f}, {.52f, .35f, .15f}, {.62f, .46f, .24f}, {.56f, .38f, .20f}},
    [M_POLE] = {{.54f, .56f, .62f}, {.48f, .50f, .55f}, {.62f, .62f, .66f}, {.44f, .46f, .50f}},
    [M_HOUSING] = {{.12f, .12f, .10f}, {.16f, .15f, .10f}, {.10f, .10f, .12f}, {.18f, .16f, .08f}},
    [M_LAMP] = {{1.0f, .15f, .10f}, {1.0f, .80f, .10f}, {.10f, 1.0f, .40f}, {.10f, 1.0f, .40f}},
    [M_SIGN] = {{.98f, .82f, .08f}, {.90f, .10f, .10f}, {.10f, .32f, .90f}, {.96f, .96f, .96f}},
    [M_LEAVES] = {{.20f, .62f, .16f}, {.28f, .70f, .20f}, {.16f, .52f, .14f}, {.34f, .66f, .18f}},
    [M_TRUNK] = {{.42f, .28f, .14f}, {.38f, .26f, .12f}, {.46f, .32f, .16f}, {.40f, .30f, .18f}},
    [M_TERRAIN] = {{.58f, .76f, .26f}, {.64f, .72f, .30f}, {.52f, .70f, .24f}, {.68f, .78f, .34f}},
    [M_SKY_TOP] = {{.20f, .46f, .96f}, {.24f, .50f, .96f}, {.18f, .42f, .92f}, {.26f, .54f, .98f}},
    [M_SKY_HORIZON] = {{.62f, .80f, 1.0f},
                       {.66f, .84f, 1.0f},
                       {.58f, .76f, .98f},
                       {.70f, .86f, 1.0f}},
    [M_CLOTHES] = {{.86f, .15f, .15f}, {.15f, .36f, .86f}, {.95f, .85f, .20f}, {.20f, .70f, .30f}},
    [M_PANTS] = {{.15f, .20f, .46f}, {.12f, .12f, .14f}, {.46f, .36f, .25f}, {.25f, .28f, .36f}},
    [M_SKIN] = {{.96f, .76f, .62f}, {.78f, .56f, .42f}, {.55f, .38f, .28f}, {.90f, .70f, .55f}},
    [M_RIDER] = {{.96f, .46f, .05f}, {.70f, .10f, .62f}, {.05f, .66f, .72f}, {.96f, .30f, .30f}},
    [M_HELMET] = {{.96f, .96f, .96f}, {.10f, .10f, .10f}, {.90f, .20f, .10f}, {.20f, .30f, .80f}},
    [M_CAR] = {{.88f, .10f, .10f}, {.10f, .26f, .84f}, {.93f, .93f, .93f}, {.14f, .14f, .16f}},
    [M_GLASS] = {{.18f, .26f, .38f}, {.16f, .24f, .34f}, {.20f, .30f, .42f}, {.14f, .20f, .30f}},
    [M_TIRE] = {{.07f, .07f, .08f}, {.08f, .08f, .08f}, {.06f, .06f, .07f}, {.09f, .09f, .10f}},
    [M_TRUCK] = {{.93f, .93f, .95f}, {.86f, .56f, .14f}, {.30f, .46f, .30f}, {.60f, .62f, .68f}},
    [M_BUS] = {{.98f, .72f, .08f}, {.90f, .25f, .15f}, {.15f, .56f, .36f}, {.95f, .95f, .95f}},
    [M_TRAIN] = {{.86f, .15f, .20f}, {.92f, .92f, .88f}, {.25f, .40f, .76f}, {.95f, .80f, .15f}},
    [M_MOTO] = {{.15f, .15f, .18f}, {.82f, .10f, .10f}, {.10f, .10f, .52f}, {.60f, .60f, .64f}},
    [M_BIKE] = {{.10f, .46f, .80f}, {.86f, .15f, .15f}, {.10f, .10f, .10f}, {.90f, .90f, .20f}},
};

/* Target palette = source through a per-material HSV change (hue shift in degrees,
 * saturation and value factors), scaled by the gap. Chosen so brightness order and
 * neighbour contrasts survive (sky stays brightest, road darker than sidewalk, leaves
 * darker than terrain): a source model is confused, but context still carries over. */
static const float target_shift[M_COUNT][3] = {
    [M_ROAD] = {25, .60f, 1.30f},       [M_LANE] = {10, .50f, .80f},
    [M_SIDEWALK] = {-40, .25f, .84f},   [M_CURB] = {0, .50f, .85f},
    [M_BUILDING] = {18, .45f, .78f},    [M_WINDOW] = {45, .25f, .55f},
    [M_WALL] = {-12, .45f, .70f},       [M_FENCE] = {70, .35f, .80f},
    [M_POLE] = {35, .40f, .55f},        [M_HOUSING] = {60, 1.0f, 1.70f},
    [M_LAMP] = {0, .70f, .80f},         [M_SIGN] = {8, .70f, .80f},
    [M_LEAVES] = {-30, .55f, .68f},     [M_TRUNK] = {0, .60f, .80f},
    [M_TERRAIN] = {-26, .55f, .84f},    [M_SKY_TOP] = {10, .22f, .95f},
    [M_SKY_HORIZON] = {10, .20f, .92f}, [M_CLOTHES] = {30, .50f, .70f},
    [M_PANTS] = {0, .60f, .90f},        [M_SKIN] = {0, .80f, .90f},
    [M_RIDER] = {30, .50f, .75f},       [M_HELMET] = {0, .60f, .90f},
    [M_CAR] = {25, .50f, .80f},         [M_GLASS] = {0, .50f, .80f},
    [M_TIRE] = {0, 1.0f, 1.20f},        [M_TRUCK] = {20, .50f, .80f},
    [M_BUS] = {30, .50f, .80f},         [M_TRAIN] = {30, .50f, .80f},
    [M_MOTO] = {30, .50f, .80f},        [M_BIKE] = {30, .50f, .80f},
};

/* ---- scene ---- */

typedef struct prim {
  float lo[3], hi[3];
  uint8_t shape, cls, mat, var, tex, aux;
  uint32_t rnd;       /* per-object texture parameters */
  int x0, y0, x1, y1; /* screen bounding box, inclusive */
} prim;

typedef struct scene {
  int width, height;
  float f, xvp, yh, cam_h;
  /* Ground zones per side (0 left, 1 right), as distances from X = 0: road edge, grass
   * verge, sidewalk outer edge, facade line. */
  float road[2], verge[2], walk[2], facade[2];
  float mark_x;
  int mark_kind, road_var, walk_var, terrain_var;
  uint32_t rnd;
  int count;
  prim p[MAX_PRIMS];
  int nfoot;
  float foot[MAX_FOOT][4]; /* occupied X0, X1, Z0, Z1 of vehicles and people */
} scene;

/* A sequential view of one Philox stream: four words per counter value. */
typedef struct draws {
  cluda_rng_key key;
  uint64_t next;
  uint32_t buf[4];
  int have;
} draws;

static uint32_t draw_u32(draws *d) {
  if (d->have == 0) {
    cluda_rng_bits(d->key, d->next++, d->buf);
    d->have = 4;
  }
  return d->buf[--d->have];
}
static float draw_unit(draws *d) { return (float)(draw_u32(d) >> 8) * (1.0f / 16777216.0f); }
static float U(draws *d, float a, float b) { return a + (b - a) * draw_unit(d); }
static int draw_int(draws *d, int lo, int hi) {
  return lo + (int)(draw_u32(d) % (uint32_t)(hi - lo + 1));
}
static int bern(draws *d, float p) { return draw_unit(d) < p; }

/* rank carries split and domain so every (domain, split) has its own streams; 2 marks a
 * layout shared by both domains. */
static draws make_draws(const cluda_synth_config *cfg, cluda_synth_split split, uint64_t index,
                        int slot, int with_domain) {
  draws d;
  memset(&d, 0, sizeof d);
  uint32_t dom = with_domain ? (uint32_t)cfg->domain : 2u;
  d.key = cluda_rng_make_key(cfg->seed, (uint32_t)split * 4u + dom, (uint32_t)index,
                             CLUDA_SYNTH_RNG_PURPOSE, (uint32_t)slot);
  return d;
}

/* ---- hashing and value noise for textures (cheap, pure) ---- */

static uint32_t hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}
static uint32_t hash3(int32_t x, int32_t y, int32_t z, uint32_t s) {
  return hash32((uint32_t)x * 0x8da6b343u ^
                hash32((uint32_t)y * 0xd8163841u ^ hash32((uint32_t)z * 0xcb1ab31fu ^ s)));
}
static float hashf(uint32_t h) { return (float)(h >> 8) * (1.0f / 16777216.0f); }

static float smooth(float t) { return t * t * (3.0f - 2.0f * t); }

/* Trilinear value noise in [0, 1). */
static float vnoise(float x, float y, float z, uint32_t s) {
  float fx = floorf(x), fy = floorf(y), fz = floorf(z);
  int32_t ix = (int32_t)fx, iy = (int32_t)fy, iz = (int32_t)fz;
  float tx = smooth(x - fx), ty = smooth(y - fy), tz = smooth(z - fz);
  float c[2][2][2];
  for (int a = 0; a < 2; a++)
    for (int b = 0; b < 2; b++)
      for (int e = 0; e < 2; e++)
        c[a][b][e] = hashf(hash3(ix + a, iy + b, iz + e, s));
  float x00 = c[0][0][0] + tx * (c[1][0][0] - c[0][0][0]);
  float x10 = c[0][1][0] + tx * (c[1][1][0] - c[0][1][0]);
  float x01 = c[0][0][1] + tx * (c[1][0][1] - c[0][0][1]);
  float x11 = c[0][1][1] + tx * (c[1][1][1] - c[0][1][1]);
  float y0 = x00 + ty * (x10 - x00), y1 = x01 + ty * (x11 - x01);
  return y0 + tz * (y1 - y0);
}

/* ---- building the scene ---- */

static void project(const scene *s, float X, float Y, float Z, float *x, float *y) {
  *x = s->xvp + s->f * X / Z;
  *y = s->yh - s->f * (Y - s->cam_h) / Z;
}

static prim *add(scene *s, int shape, int cls, int mat, int var, int tex, float x0, float y0,
                 float z0, float x1, float y1, float z1, uint32_t rnd) {
  if (s->count >= MAX_PRIMS || z1 <= NEAR_Z) return NULL;
  prim *p = &s->p[s->count];
  p->lo[0] = fminf(x0, x1), p->hi[0] = fmaxf(x0, x1);
  p->lo[1] = fminf(y0, y1), p->hi[1] = fmaxf(y0, y1);
  p->lo[2] = fminf(z0, z1), p->hi[2] = fmaxf(z0, z1);
  p->shape = (uint8_t)shape, p->cls = (uint8_t)cls, p->mat = (uint8_t)mat;
  p->var = (uint8_t)(var & (NVAR - 1)), p->tex = (uint8_t)tex, p->aux = 0, p->rnd = rnd;
  /* Screen box of the 8 corners (conservative for ellipsoids); a box reaching behind the
   * near plane may cover anything. */
  if (p->lo[2] < NEAR_Z) {
    p->x0 = 0, p->y0 = 0, p->x1 = s->width - 1, p->y1 = s->height - 1;
  } else {
    float bx0 = 1e30f, by0 = 1e30f, bx1 = -1e30f, by1 = -1e30f;
    for (int c = 0; c < 8; c++) {
      float px, py;
      project(s, c & 1 ? p->hi[0] : p->lo[0], c & 2 ? p->hi[1] : p->lo[1],
              c & 4 ? p->hi[2] : p->lo[2], &px, &py);
      bx0 = fminf(bx0, px), bx1 = fmaxf(bx1, px), by0 = fminf(by0, py), by1 = fmaxf(by1, py);
    }
    if (bx1 < -1 || by1 < -1 || bx0 > s->width + 1 || by0 > s->height + 1) return NULL;
    p->x0 = (int)fmaxf(0.0f, floorf(bx0) - 1), p->x1 = (int)fminf(s->width - 1, ceilf(bx1) + 1);
    p->y0 = (int)fmaxf(0.0f, floorf(by0) - 1), p->y1 = (int)fminf(s->height - 1, ceilf(by1) + 1);
  }
  s->count++;
  return p;
}

static prim *box(scene *s, int cls, int mat, int var, int tex, float x0, float y0, float z0,
                 float x1, float y1, float z1, uint32_t rnd) {
  return add(s, S_BOX, cls, mat, var, tex, x0, y0, z0, x1, y1, z1, rnd);
}
/* Ellipsoid given by centre and radii. */
static prim *blob(scene *s, int cls, int mat, int var, int tex, float cx, float cy, float cz,
                  float rx, float ry, float rz, uint32_t rnd) {
  return add(s, S_ELLIPSOID, cls, mat, var, tex, cx - rx, cy - ry, cz - rz, cx + rx, cy + ry,
             cz + rz, rnd);
}

/* Claims a ground footprint for a movable object; 0 when it would overlap another. */
static int reserve(scene *s, float x0, float x1, float z0, float z1) {
  if (s->nfoot >= MAX_FOOT) return 0;
  for (int i = 0; i < s->nfoot; i++) {
    const float *f = s->foot[i];
    if (x0 < f[1] + 0.3f && x1 > f[0] - 0.3f && z0 < f[3] + 0.5f && z1 > f[2] - 0.5f) return 0;
  }
  float *f = s->foot[s->nfoot++];
  f[0] = x0, f[1] = x1, f[2] = z0, f[3] = z1;
  return 1;
}

/* Box spanning [a, b] away from the street on side sgn (-1 left, +1 right). */
static void side_span(float sgn, float a, float b, float *x0, float *x1) {
  *x0 = sgn * a;
  *x1 = sgn * b;
}

static void add_building(scene *s, draws *d, float sgn, float at, float z0, float z1) {
  float x0, x1;
  side_span(sgn, at, at + U(d, 8, 16), &x0, &x1);
  float h = bern(d, 0.3f) ? U(d, 16, 34) : U(d, 6, 18);
  box(s, C_BUILDING, M_BUILDING, draw_int(d, 0, 3), T_BUILDING, x0, 0, z0, x1, h, z1, draw_u32(d));
}

static void add_canopy(scene *s, draws *d, float x, float y, float z, float r) {
  blob(s, C_VEGETATION, M_LEAVES, draw_int(d, 0, 3), T_LEAVES, x, y, z, r * U(d, 0.85f, 1.15f),
       r * U(d, 0.8f, 1.1f), r * U(d, 0.85f, 1.15f), draw_u32(d));
}

static void add_park(scene *s, draws *d, float sgn, float at, float z0, float z1) {
  float x0, x1;
  side_span(sgn, at, at + 3, &x0, &x1);
  if (bern(d, 0.7f))
    box(s, C_VEGETATION, M_LEAVES, draw_int(d, 0, 3), T_LEAVES, x0, 0, z0, x1, U(d, 0.8f, 2.0f), z1,
        draw_u32(d));
  for (float z = z0 + U(d, 0, 3); z < z1; z += U(d, 3, 7)) {
    float r = U(d, 2.0f, 4.5f);
    add_canopy(s, d, sgn * (at + r * U(d, 0.6f, 1.6f)), U(d, 2.5f, 6.5f), z, r);
  }
}

static void add_facades(scene *s, draws *d, float z_end) {
  for (int side = 0; side < 2; side++) {
    float sgn = side ? 1.0f : -1.0f, at = s->facade[side];
    for (float z = -15.0f; z < z_end;) {
      float len = U(d, 6, 30), z1 = fminf(z + len, z_end + 10);
      float r = draw_unit(d);
      if (r < 0.60f) {
        add_building(s, d, sgn, at, z, z1);
      } else if (r < 0.76f) {
        add_park(s, d, sgn, at, z, z1);
      } else if (r < 0.94f) {
        /* A wall or a fence on the facade line, with a building or trees behind it. */
        int wall = r < 0.86f;
        float x0, x1;
        side_span(sgn, at, at + (wall ? 0.35f : 0.08f), &x0, &x1);
        float h = wall ? U(d, 0.8f, 3.0f) : U(d, 1.0f, 2.2f);
        box(s, wall ? C_WALL : C_FENCE, wall ? M_WALL : M_FENCE, draw_int(d, 0, 3),
            wall ? T_WALL : T_FENCE, x0, 0, z, x1, h, z1, draw_u32(d));
        if (bern(d, 0.5f))
          add_building(s, d, sgn, at + U(d, 3, 10), z, z1);
        else
          add_park(s, d, sgn, at + 0.5f, z, z1);
      } /* else: an open gap (sky and terrain) */
      z = z1;
    }
  }
  /* The street's far end: a row of buildings or trees across it. */
  if (bern(d, 0.75f)) {
    int trees = bern(d, 0.35f);
    for (float x = -200; x < 200;) {
      float w = U(d, 8, 25);
      if (trees)
        add_canopy(s, d, x + w / 2, U(d, 3, 7), z_end + 5, w / 2);
      else
        box(s, C_BUILDING, M_BUILDING, draw_int(d, 0, 3), T_BUILDING, x, 0, z_end, x + w,
            U(d, 6, 30), z_end + 15, draw_u32(d));
      x += w;
    }
  }
}

static void add_street_furniture(scene *s, draws *d, float z_end) {
  for (int side = 0; side < 2; side++) {
    float sgn = side ? 1.0f : -1.0f;
    float curb = s->road[side], outer = s->facade[side];
    /* Street trees: trunk (vegetation, as in Cityscapes) and a canopy. */
    if (bern(d, 0.65f))
      for (float z = U(d, 2, 12); z < z_end * 0.8f; z += U(d, 7, 18)) {
        float x = sgn * U(d, curb + 0.6f, fmaxf(curb + 0.7f, outer - 0.5f));
        float h = U(d, 2.0f, 3.5f), r = U(d, 1.3f, 2.8f);
        box(s, C_VEGETATION, M_TRUNK, draw_int(d, 0, 3), T_PLAIN, x - 0.15f, 0, z - 0.15f,
            x + 0.15f, h + r * 0.5f, z + 0.15f, draw_u32(d));
        add_canopy(s, d, x, h + r * 0.7f, z, r);
      }
    /* Poles at the curb: plain, with a traffic light, a sign or a lamp arm. */
    for (float z = U(d, 2, 15); z < z_end * 0.9f; z += U(d, 9, 28)) {
      float x = sgn * (curb + U(d, 0.3f, 0.6f)), w = U(d, 0.07f, 0.11f);
      float h = U(d, 3.2f, 8.0f);
      box(s, C_POLE, M_POLE, draw_int(d, 0, 3), T_PLAIN, x - w, 0, z - w, x + w, h, z + w,
          draw_u32(d));
      float r = draw_unit(d);
      if (r < 0.35f) {
        /* Traffic light, on the pole or hanging from an arm over the road. */
        float lx = x, ly = U(d, 2.4f, 3.2f);
        if (bern(d, 0.5f) && h > 4.5f) {
          float reach = U(d, 2, 5);
          box(s, C_POLE, M_POLE, 0, T_PLAIN, x, h - 0.14f, z - 0.06f, x - sgn * reach, h, z + 0.06f,
              0);
          lx = x - sgn * reach, ly = h - 1.1f;
        } else {
          lx = x - sgn * 0.3f;
        }
        prim *p = box(s, C_LIGHT, M_HOUSING, draw_int(d, 0, 3), T_LIGHT, lx - 0.17f, ly, z - 0.35f,
                      lx + 0.17f, ly + 0.95f, z - 0.05f, draw_u32(d));
        if (p) p->aux = (uint8_t)draw_int(d, 0, 2);
        if (bern(d, 0.3f)) /* a second head lower on the pole */
          box(s, C_LIGHT, M_HOUSING, draw_int(d, 0, 3), T_LIGHT, x + sgn * 0.1f - 0.15f, 1.9f,
              z - 0.3f, x + sgn * 0.1f + 0.15f, 2.7f, z - 0.05f, draw_u32(d));
      } else if (r < 0.75f) {
        /* Traffic sign plates facing the camera: square, disc or a wide name plate. */
        int n = bern(d, 0.3f) ? 2 : 1;
        for (int k = 0; k < n; k++) {
          float sy = U(d, 2.0f, 2.6f) + 0.75f * (float)k, sx = x - sgn * 0.1f;
          int kind = draw_int(d, 0, 2), var = draw_int(d, 0, 3);
          if (kind == 0)
            box(s, C_SIGN, M_SIGN, var, T_SIGN, sx - 0.33f, sy, z - 0.12f, sx + 0.33f, sy + 0.66f,
                z - 0.08f, draw_u32(d));
          else if (kind == 1)
            blob(s, C_SIGN, M_SIGN, var, T_SIGN, sx, sy + 0.35f, z - 0.1f, 0.36f, 0.36f, 0.03f,
                 draw_u32(d));
          else
            box(s, C_SIGN, M_SIGN, 2, T_SIGN, sx - 0.6f, sy, z - 0.12f, sx + 0.6f, sy + 0.4f,
                z - 0.08f, draw_u32(d));
        }
      } else if (r < 0.9f && h > 5.0f) {
        float reach = U(d, 1.0f, 2.5f);
        box(s, C_POLE, M_POLE, 0, T_PLAIN, x, h - 0.1f, z - 0.05f, x - sgn * reach, h, z + 0.05f,
            0);
        box(s, C_POLE, M_POLE, 1, T_PLAIN, x - sgn * reach - 0.3f, h - 0.25f, z - 0.2f,
            x - sgn * reach + 0.3f, h, z + 0.2f, 0);
      }
    }
  }
}

/* Four dark wheel blocks under a vehicle body (labelled with the vehicle). */
static void add_wheels(scene *s, int cls, float xc, float w, float z0, float l, float r) {
  for (int k = 0; k < 4; k++) {
    float x = k & 1 ? xc + w / 2 - 0.28f : xc - w / 2 + 0.02f;
    float z = k & 2 ? z0 + l - 0.4f - 2 * r : z0 + 0.4f;
    box(s, cls, M_TIRE, 0, T_PLAIN, x, 0, z, x + 0.26f, 2 * r, z + 2 * r, 0);
  }
}

static void add_car(scene *s, draws *d, float xc, float z0) {
  float w = U(d, 1.65f, 1.9f), l = U(d, 3.9f, 4.8f), hb = U(d, 0.55f, 0.8f);
  int var = draw_int(d, 0, 3);
  uint32_t rnd = draw_u32(d);
  box(s, C_CAR, M_CAR, var, T_CAR_BODY, xc - w / 2, 0.22f, z0, xc + w / 2, 0.22f + hb, z0 + l, rnd);
  float ch = U(d, 0.42f, 0.6f);
  box(s, C_CAR, M_CAR, var, T_CABIN, xc - w / 2 + 0.12f, 0.22f + hb, z0 + l * U(d, 0.15f, 0.3f),
      xc + w / 2 - 0.12f, 0.22f + hb + ch, z0 + l * 0.75f, rnd);
  add_wheels(s, C_CAR, xc, w, z0, l, 0.3f);
}

static void add_truck(scene *s, draws *d, float xc, float z0) {
  float w = U(d, 2.3f, 2.5f), l = U(d, 6, 9), h = U(d, 3.0f, 3.8f);
  uint32_t rnd = draw_u32(d);
  box(s, C_TRUCK, M_TRUCK, draw_int(d, 0, 3), T_CARGO, xc - w / 2, 0.6f, z0, xc + w / 2, h,
      z0 + l - 2.2f, rnd);
  box(s, C_TRUCK, M_TRUCK, draw_int(d, 0, 3), T_CABIN, xc - w / 2 + 0.05f, 0.5f, z0 + l - 2.2f,
      xc + w / 2 - 0.05f, 2.9f, z0 + l, rnd);
  add_wheels(s, C_TRUCK, xc, w, z0, l, 0.5f);
}

static void add_long_vehicle(scene *s, draws *d, int cls, float xc, float z0, float l) {
  float w = cls == C_TRAIN ? 2.65f : 2.55f, h = cls == C_TRAIN ? 3.5f : 3.1f;
  int mat = cls == C_TRAIN ? M_TRAIN : M_BUS;
  box(s, cls, mat, draw_int(d, 0, 3), T_WINDOW_BAND, xc - w / 2, 0.35f, z0, xc + w / 2, h, z0 + l,
      draw_u32(d));
  if (cls == C_TRAIN) /* pantograph */
    box(s, cls, M_TIRE, 0, T_PLAIN, xc - 0.5f, h, z0 + 3, xc + 0.5f, h + 0.6f, z0 + 3.1f, 0);
  else
    add_wheels(s, cls, xc, w, z0, l, 0.5f);
}

/* A standing person (or a rider's body when cls is C_RIDER, sitting at height y0). */
static void add_body(scene *s, draws *d, int cls, float xc, float zc, float y0, float scale) {
  uint32_t rnd = draw_u32(d);
  float legs = cls == C_RIDER ? 0.5f : 0.85f * scale;
  box(s, cls, M_PANTS, draw_int(d, 0, 3), T_PLAIN, xc - 0.17f * scale, y0, zc - 0.12f,
      xc + 0.17f * scale, y0 + legs, zc + 0.12f, rnd);
  float t0 = y0 + legs, t1 = t0 + 0.65f * scale;
  box(s, cls, cls == C_RIDER ? M_RIDER : M_CLOTHES, draw_int(d, 0, 3), T_PLAIN, xc - 0.25f * scale,
      t0, zc - 0.14f, xc + 0.25f * scale, t1, zc + 0.14f, rnd);
  blob(s, cls, cls == C_RIDER ? M_HELMET : M_SKIN, draw_int(d, 0, 3), T_HEAD, xc,
       t1 + 0.13f * scale, zc, 0.11f * scale, 0.14f * scale, 0.11f * scale, rnd);
}

/* A two-wheeler along the street (seen from behind), optionally ridden. */
static void add_two_wheeler(scene *s, draws *d, int moto, float xc, float zc, int ridden) {
  int cls = moto ? C_MOTORCYCLE : C_BICYCLE, mat = moto ? M_MOTO : M_BIKE;
  int var = draw_int(d, 0, 3);
  float r = moto ? 0.32f : 0.34f, half = moto ? 0.75f : 0.55f, tw = moto ? 0.08f : 0.05f;
  for (int k = -1; k <= 1; k += 2)
    blob(s, cls, M_TIRE, 0, T_WHEEL, xc, r, zc + (float)k * half, tw, r, r, 0);
  float bw = moto ? 0.3f : 0.06f;
  box(s, cls, mat, var, T_PLAIN, xc - bw, moto ? 0.3f : 0.35f, zc - half * 0.8f, xc + bw,
      moto ? 0.95f : 0.9f, zc + half * 0.8f, 0);
  float hw = moto ? 0.42f : 0.3f;
  box(s, cls, mat, var, T_PLAIN, xc - hw, 0.98f, zc + half * 0.7f, xc + hw, 1.06f,
      zc + half * 0.85f, 0);
  if (ridden) add_body(s, d, C_RIDER, xc, zc - 0.1f, moto ? 0.6f : 0.5f, U(d, 0.9f, 1.05f));
}

/* A bicycle parked across the sidewalk: the wheels face the camera as discs. */
static void add_parked_bicycle(scene *s, draws *d, float xc, float zc) {
  int var = draw_int(d, 0, 3);
  for (int k = -1; k <= 1; k += 2)
    blob(s, C_BICYCLE, M_TIRE, 0, T_WHEEL, xc + (float)k * 0.55f, 0.34f, zc, 0.34f, 0.34f, 0.04f,
         0);
  box(s, C_BICYCLE, M_BIKE, var, T_PLAIN, xc - 0.5f, 0.55f, zc - 0.03f, xc + 0.5f, 0.62f,
      zc + 0.03f, 0);
  box(s, C_BICYCLE, M_BIKE, var, T_PLAIN, xc - 0.1f, 0.35f, zc - 0.03f, xc - 0.04f, 0.95f,
      zc + 0.03f, 0);
  box(s, C_BICYCLE, M_BIKE, var, T_PLAIN, xc + 0.35f, 0.55f, zc - 0.03f, xc + 0.41f, 1.05f,
      zc + 0.03f, 0);
}

static void add_traffic(scene *s, draws *d) {
  float left = -s->road[0], right = s->road[1];
  float ego = 0.5f * (s->mark_x + right), oncoming = 0.5f * (s->mark_x + left);
  /* Large vehicles first, so the cars fill the space they leave. */
  int trucks = bern(d, 0.14f) + bern(d, 0.03f);
  for (int i = 0; i < trucks; i++) {
    float xc = bern(d, 0.5f) ? ego : oncoming, z0 = U(d, 10, 60);
    if (reserve(s, xc - 1.3f, xc + 1.3f, z0, z0 + 9)) add_truck(s, d, xc, z0);
  }
  if (bern(d, 0.14f)) {
    float xc = bern(d, 0.6f) ? ego : oncoming, z0 = U(d, 10, 60);
    if (reserve(s, xc - 1.3f, xc + 1.3f, z0, z0 + 12)) add_long_vehicle(s, d, C_BUS, xc, z0, 12);
  }
  if (bern(d, 0.07f)) { /* a tram on tracks in the middle of the road */
    float l = U(d, 25, 45), xc = s->mark_x + U(d, -1.5f, 0.5f), z0 = U(d, 10, 45);
    if (reserve(s, xc - 1.4f, xc + 1.4f, z0, z0 + l)) add_long_vehicle(s, d, C_TRAIN, xc, z0, l);
  }
  /* Cars: parked along both curbs or driving in the two lanes. */
  int cars = draw_int(d, 0, 4) + draw_int(d, 0, 4);
  for (int i = 0, tries = 0; i < cars && tries < 3 * cars; tries++) {
    float r = draw_unit(d), xc, z0;
    if (r < 0.22f)
      xc = left + 1.1f, z0 = U(d, 1, 60);
    else if (r < 0.44f)
      xc = right - 1.1f, z0 = U(d, 1, 60);
    else if (r < 0.72f)
      xc = ego + U(d, -0.3f, 0.3f), z0 = U(d, 6, 70);
    else
      xc = oncoming + U(d, -0.3f, 0.3f), z0 = U(d, 3, 70);
    if (!reserve(s, xc - 1, xc + 1, z0, z0 + 4.8f)) continue;
    add_car(s, d, xc, z0);
    i++;
  }
  /* Riders on bicycles and motorcycles, near the curb or in a lane. */
  int riders = bern(d, 0.3f) + bern(d, 0.1f) + bern(d, 0.16f) * 2;
  for (int i = 0; i < riders; i++) {
    int moto = i >= 2 || bern(d, 0.25f);
    float xc = bern(d, 0.5f) ? right - U(d, 0.6f, 1.5f) : U(d, left + 0.6f, right - 0.6f);
    float zc = U(d, 4, 40);
    if (reserve(s, xc - 0.5f, xc + 0.5f, zc - 1, zc + 1)) add_two_wheeler(s, d, moto, xc, zc, 1);
  }
  /* People on the sidewalks, now and then crossing the road; sometimes a crowd. */
  int people = draw_int(d, 0, 3) + draw_int(d, 0, 3) + (bern(d, 0.2f) ? draw_int(d, 2, 6) : 0);
  for (int i = 0, tries = 0; i < people && tries < 3 * people; tries++) {
    int side = draw_int(d, 0, 1);
    float sgn = side ? 1.0f : -1.0f, a = s->road[side] + s->verge[side] + 0.3f;
    float b = fmaxf(a + 0.2f, s->walk[side] - 0.3f), xc = sgn * U(d, a, b), zc = U(d, 2, 45);
    if (bern(d, 0.1f)) xc = U(d, left, right), zc = U(d, 6, 30);
    if (!reserve(s, xc - 0.3f, xc + 0.3f, zc - 0.3f, zc + 0.3f)) continue;
    add_body(s, d, C_PERSON, xc, zc, 0, U(d, 0.85f, 1.1f));
    i++;
  }
  /* Parked two-wheelers on the sidewalk. */
  if (bern(d, 0.3f))
    for (int i = draw_int(d, 1, 3); i > 0; i--) {
      int side = draw_int(d, 0, 1);
      float sgn = side ? 1.0f : -1.0f, xc = sgn * (s->road[side] + s->verge[side] + 0.9f);
      float zc = U(d, 2, 30);
      if (!reserve(s, xc - 0.9f, xc + 0.9f, zc - 0.3f, zc + 0.3f)) continue;
      if (bern(d, 0.6f))
        add_parked_bicycle(s, d, xc, zc);
      else
        add_two_wheeler(s, d, 0, xc, zc, 0);
    }
  if (bern(d, 0.1f)) {
    int side = draw_int(d, 0, 1);
    float xc = (side ? 1.0f : -1.0f) * (s->road[side] - 0.8f), zc = U(d, 3, 30);
    if (reserve(s, xc - 0.5f, xc + 0.5f, zc - 1, zc + 1)) add_two_wheeler(s, d, 1, xc, zc, 0);
  }
}

static void build_scene(scene *s, const cluda_synth_config *cfg, cluda_synth_split split,
                        uint64_t index) {
  draws d = make_draws(cfg, split, index, SLOT_LAYOUT, !cfg->shared_layout);
  s->width = cfg->width, s->height = cfg->height;
  s->count = 0, s->nfoot = 0;
  /* Camera: focal length from the width (about 45-60 degrees across), horizon row and
   * vanishing point jittered, camera height of a car. */
  s->f = (float)cfg->width * U(&d, 0.85f, 1.15f);
  s->yh = (float)cfg->height * U(&d, 0.36f, 0.50f);
  s->xvp = (float)cfg->width * U(&d, 0.42f, 0.58f);
  s->cam_h = U(&d, 1.3f, 1.8f);
  /* Right-hand traffic: the camera drives in the right lane, so more road on the left. */
  s->road[0] = U(&d, 4.5f, 9.0f), s->road[1] = U(&d, 2.0f, 4.5f);
  for (int side = 0; side < 2; side++) {
    float verge = bern(&d, 0.25f) ? U(&d, 0.6f, 2.0f) : 0.0f;
    float walk = bern(&d, 0.92f) ? U(&d, 1.5f, 4.5f) : 0.0f;
    float strip = bern(&d, 0.4f) ? U(&d, 1.0f, 6.0f) : 0.0f;
    s->verge[side] = verge;
    s->walk[side] = s->road[side] + verge + walk;
    s->facade[side] = s->walk[side] + strip;
  }
  s->mark_x = 0.5f * (s->road[1] - s->road[0]);
  float r = draw_unit(&d);
  s->mark_kind = r < 0.7f ? 1 : r < 0.85f ? 2 : 0;
  s->road_var = draw_int(&d, 0, 3), s->walk_var = draw_int(&d, 0, 3);
  s->terrain_var = draw_int(&d, 0, 3), s->rnd = draw_u32(&d);
  float z_end = U(&d, 45, 140);
  add_facades(s, &d, z_end);
  add_street_furniture(s, &d, z_end);
  add_traffic(s, &d);
}

/* ---- ray casting ---- */

typedef struct hit {
  int prim; /* index, or -1 ground, -2 sky */
  int cls;
  float t, p[3], n[3];
} hit;

static int ray_box(const float o[3], const float dir[3], const prim *p, float *t, float n[3]) {
  float tmin = -1e30f, tmax = 1e30f;
  int face = -1;
  for (int a = 0; a < 3; a++) {
    if (fabsf(dir[a]) < 1e-12f) {
      if (o[a] < p->lo[a] || o[a] > p->hi[a]) return 0;
      continue;
    }
    float inv = 1.0f / dir[a];
    float t1 = (p->lo[a] - o[a]) * inv, t2 = (p->hi[a] - o[a]) * inv;
    int f1 = 2 * a, f2 = 2 * a + 1;
    if (t1 > t2) {
      float tt = t1;
      t1 = t2, t2 = tt;
      int ff = f1;
      f1 = f2, f2 = ff;
    }
    if (t1 > tmin) tmin = t1, face = f1;
    if (t2 < tmax) tmax = t2;
  }
  if (tmin > tmax || tmin < NEAR_Z || face < 0) return 0;
  *t = tmin;
  n[0] = n[1] = n[2] = 0.0f;
  n[face / 2] = face & 1 ? 1.0f : -1.0f;
  return 1;
}

static int ray_ellipsoid(const float o[3], const float dir[3], const prim *p, float *t,
                         float n[3]) {
  float c[3], r[3], oo[3], dd[3];
  for (int a = 0; a < 3; a++) {
    c[a] = 0.5f * (p->lo[a] + p->hi[a]);
    r[a] = 0.5f * (p->hi[a] - p->lo[a]);
    oo[a] = (o[a] - c[a]) / r[a];
    dd[a] = dir[a] / r[a];
  }
  float A = dd[0] * dd[0] + dd[1] * dd[1] + dd[2] * dd[2];
  float B = 2 * (oo[0] * dd[0] + oo[1] * dd[1] + oo[2] * dd[2]);
  float C = oo[0] * oo[0] + oo[1] * oo[1] + oo[2] * oo[2] - 1;
  float disc = B * B - 4 * A * C;
  if (disc < 0) return 0;
  float tt = (-B - sqrtf(disc)) / (2 * A);
  if (tt < NEAR_Z) return 0;
  *t = tt;
  float len = 0;
  for (int a = 0; a < 3; a++) {
    n[a] = (oo[a] + tt * dd[a]) / r[a];
    len += n[a] * n[a];
  }
  len = 1.0f / sqrtf(len);
  for (int a = 0; a < 3; a++)
    n[a] *= len;
  return 1;
}

/* Distance from the street centre line to the zones of the ground. */
static int ground_class(const scene *s, float X) {
  int side = X >= 0;
  float ax = fabsf(X);
  if (ax < s->road[side]) return C_ROAD;
  if (ax < s->road[side] + s->verge[side]) return C_TERRAIN;
  if (ax < s->walk[side]) return C_SIDEWALK;
  return C_TERRAIN;
}

static void ray_dir(const scene *s, int x, int y, float dir[3]) {
  dir[0] = ((float)x + 0.5f - s->xvp) / s->f;
  dir[1] = -((float)y + 0.5f - s->yh) / s->f;
  dir[2] = 1.0f;
}

static void trace(const scene *s, int x, int y, hit *h) {
  float o[3] = {0.0f, s->cam_h, 0.0f}, dir[3];
  ray_dir(s, x, y, dir);
  h->prim = -2, h->cls = C_SKY, h->t = 1e30f;
  if (dir[1] < -1e-6f) {
    h->prim = -1;
    h->t = s->cam_h / -dir[1];
    h->n[0] = 0, h->n[1] = 1, h->n[2] = 0;
  }
  for (int i = 0; i < s->count; i++) {
    const prim *p = &s->p[i];
    if (x < p->x0 || x > p->x1 || y < p->y0 || y > p->y1) continue;
    float t, n[3];
    int ok = p->shape == S_BOX ? ray_box(o, dir, p, &t, n) : ray_ellipsoid(o, dir, p, &t, n);
    if (ok && t < h->t) {
      h->prim = i, h->t = t, h->cls = p->cls;
      h->n[0] = n[0], h->n[1] = n[1], h->n[2] = n[2];
    }
  }
  if (h->prim != -2)
    for (int a = 0; a < 3; a++)
      h->p[a] = o[a] + h->t * dir[a];
  if (h->prim == -1) h->cls = ground_class(s, h->p[0]);
}

/* ---- styles and shading ---- */

typedef struct style {
  int target;
  float pal[M_COUNT][NVAR][3];
  float light[3], ambient, diffuse;
  float fog[3], fog_dist;
  float grain;    /* amplitude of fine texture noise */
  float cel;      /* source: quantised (cartoon) foliage */
  float gain[3];  /* white balance times exposure */
  float contrast; /* around mid grey */
  float blur;     /* blend towards a [1 2 1]^2 blur */
  float vignette; /* darkening at the corners */
  float noise;    /* sensor noise sigma, 0..1 scale */
  float clouds;
  float lamp; /* brightness of lit lamps */
} style;

static float clampf(float v, float lo, float hi) { return v < lo ? lo : v > hi ? hi : v; }
static float lerpf(float a, float b, float t) { return a + (b - a) * t; }

static void rgb_to_hsv(const float c[3], float *h, float *s, float *v) {
  float mx = fmaxf(c[0], fmaxf(c[1], c[2])), mn = fminf(c[0], fminf(c[1], c[2]));
  float dlt = mx - mn;
  *v = mx;
  *s = mx > 0 ? dlt / mx : 0;
  if (dlt <= 0) {
    *h = 0;
  } else if (mx == c[0]) {
    *h = 60.0f * fmodf((c[1] - c[2]) / dlt + 6.0f, 6.0f);
  } else if (mx == c[1]) {
    *h = 60.0f * ((c[2] - c[0]) / dlt + 2.0f);
  } else {
    *h = 60.0f * ((c[0] - c[1]) / dlt + 4.0f);
  }
}

static void hsv_to_rgb(float h, float s, float v, float c[3]) {
  h = fmodf(h, 360.0f);
  if (h < 0) h += 360.0f;
  float cc = v * s, x = cc * (1 - fabsf(fmodf(h / 60.0f, 2.0f) - 1)), m = v - cc;
  float r = 0, g = 0, b = 0;
  int k = (int)(h / 60.0f);
  switch (k) {
  case 0: r = cc, g = x; break;
  case 1: r = x, g = cc; break;
  case 2: g = cc, b = x; break;
  case 3: g = x, b = cc; break;
  case 4: r = x, b = cc; break;
  default: r = cc, b = x; break;
  }
  c[0] = r + m, c[1] = g + m, c[2] = b + m;
}

static void normalize3(float v[3]) {
  float l = 1.0f / sqrtf(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
  v[0] *= l, v[1] *= l, v[2] *= l;
}

static void make_style(style *st, const cluda_synth_config *cfg, cluda_synth_split split,
                       uint64_t index) {
  /* Keyed like the layout, so a shared-layout target at gap 0 equals the source. */
  draws d = make_draws(cfg, split, index, SLOT_STYLE, !cfg->shared_layout);
  int target = cfg->domain == CLUDA_SYNTH_TARGET;
  float g = target ? cfg->gap : 0.0f;
  st->target = target;
  for (int m = 0; m < M_COUNT; m++)
    for (int v = 0; v < NVAR; v++) {
      float h, sa, va;
      rgb_to_hsv(source_palette[m][v], &h, &sa, &va);
      h += g * target_shift[m][0];
      sa *= lerpf(1.0f, target_shift[m][1], g);
      va *= lerpf(1.0f, target_shift[m][2], g);
      hsv_to_rgb(h, clampf(sa, 0, 1), clampf(va, 0, 1), st->pal[m][v]);
    }
  /* Source: hard sun from the upper left. Target: overcast light from the right. */
  float src_light[3] = {-0.55f + U(&d, -0.1f, 0.1f), 0.75f, -0.4f};
  float tgt_light[3] = {0.6f + U(&d, -0.1f, 0.1f), 0.7f, -0.35f};
  for (int a = 0; a < 3; a++)
    st->light[a] = lerpf(src_light[a], tgt_light[a], g);
  normalize3(st->light);
  st->ambient = lerpf(0.5f, 0.78f, g);
  st->diffuse = lerpf(0.62f, 0.3f, g);
  const float *hor = st->pal[M_SKY_HORIZON][0];
  for (int a = 0; a < 3; a++)
    st->fog[a] = hor[a];
  st->fog_dist = lerpf(700.0f, 170.0f, g) * U(&d, 0.8f, 1.25f);
  st->grain = lerpf(0.04f, 0.10f, g);
  st->cel = 1.0f - g;
  float wb = U(&d, -1, 1) * 0.08f * g, exposure = 1.0f + U(&d, -0.12f, 0.12f) * g;
  st->gain[0] = (1 + wb) * exposure, st->gain[1] = exposure, st->gain[2] = (1 - wb) * exposure;
  st->contrast = lerpf(1.0f, 0.86f, g);
  st->blur = g;
  st->vignette = 0.35f * g;
  st->noise = 0.02f * g;
  st->clouds = draw_unit(&d);
  st->lamp = lerpf(1.0f, 0.8f, g);
}

static void set3(float c[3], const float v[3]) { c[0] = v[0], c[1] = v[1], c[2] = v[2]; }
static void scale3(float c[3], float k) { c[0] *= k, c[1] *= k, c[2] *= k; }
static void mix3(float c[3], const float v[3], float t) {
  for (int a = 0; a < 3; a++)
    c[a] += (v[a] - c[a]) * t;
}
static float fracf(float v) { return v - floorf(v); }

/* Surface coordinates (u along the face, v up) for the face a box hit lies on. */
static void face_uv(const hit *h, float *u, float *v) {
  *u = fabsf(h->n[0]) > 0.5f ? h->p[2] : h->p[0];
  *v = fabsf(h->n[1]) > 0.5f ? h->p[2] : h->p[1];
}

static void shade_ground(const scene *s, const style *st, const hit *h, float c[3]) {
  float X = h->p[0], Z = h->p[2], ax = fabsf(X);
  int side = X >= 0;
  switch (h->cls) {
  case C_ROAD: {
    set3(c, st->pal[M_ROAD][s->road_var]);
    float w = 0.12f, dm = fabsf(X - s->mark_x), de = s->road[side] - ax;
    int mark = s->mark_kind && dm < w && (s->mark_kind == 2 || fracf(Z / 6.0f) < 0.45f);
    if (mark || (de > 0.2f && de < 0.2f + w)) set3(c, st->pal[M_LANE][s->mark_kind == 2 ? 2 : 0]);
    /* Repairs and wear: large soft patches. */
    scale3(c, 1.0f + 0.12f * (vnoise(X * 0.4f, Z * 0.2f, 0, s->rnd) - 0.5f));
    break;
  }
  case C_SIDEWALK: {
    set3(c, st->pal[M_SIDEWALK][s->walk_var]);
    float from_curb = ax - s->road[side] - s->verge[side];
    if (from_curb < 0.25f) {
      set3(c, st->pal[M_CURB][s->walk_var]);
    } else if (fracf(X / 0.6f) < 0.08f || fracf(Z / 0.6f) < 0.08f) {
      scale3(c, lerpf(0.82f, 0.93f, st->blur)); /* paving joints, fainter in the target */
    }
    break;
  }
  default: {
    set3(c, st->pal[M_TERRAIN][s->terrain_var]);
    float n = vnoise(X * 0.5f, Z * 0.5f, 1, s->rnd);
    scale3(c, 1.0f + 0.3f * (n - 0.5f));
    break;
  }
  }
}

static void shade_sky(const scene *s, const style *st, int x, int y, float c[3]) {
  float dir[3];
  ray_dir(s, x, y, dir);
  float up = dir[1] / sqrtf(dir[0] * dir[0] + dir[1] * dir[1] + 1.0f);
  float t = powf(clampf(up * 2.5f, 0, 1), 0.7f);
  set3(c, st->pal[M_SKY_HORIZON][0]);
  mix3(c, st->pal[M_SKY_TOP][0], t);
  /* Clouds on a plane far above: flat white blobs in the source, soft grey in the target. */
  if (up > 0.01f) {
    float k = 1.0f / fmaxf(dir[1], 0.02f);
    float n = vnoise(dir[0] * k * 0.8f, dir[2] * k * 0.8f, 2, s->rnd) * 0.6f +
              vnoise(dir[0] * k * 2.4f, dir[2] * k * 2.4f, 3, s->rnd) * 0.4f;
    float thresh = 0.75f - 0.3f * st->clouds;
    float a =
        st->cel > 0.5f ? (n > thresh ? 0.85f : 0.0f) : clampf((n - thresh + 0.15f) * 3, 0, 0.6f);
    const float white[3] = {0.97f, 0.97f, 0.98f}, grey[3] = {0.70f, 0.71f, 0.74f};
    mix3(c, st->cel > 0.5f ? white : grey, a);
  }
}

static void shade_prim(const scene *s, const style *st, const hit *h, float c[3]) {
  const prim *p = &s->p[h->prim];
  set3(c, st->pal[p->mat][p->var]);
  /* Per-object brightness jitter so instances differ. */
  scale3(c, 0.9f + 0.2f * hashf(hash32(p->rnd ^ 0x9e37u)));
  float u, v;
  face_uv(h, &u, &v);
  switch (p->tex) {
  case T_BUILDING: {
    uint32_t r = p->rnd;
    float floor_h = 2.8f + 0.8f * hashf(hash32(r + 1)), pitch = 1.8f + 1.8f * hashf(hash32(r + 2));
    float wf = 0.35f + 0.3f * hashf(hash32(r + 3)), hf = 0.4f + 0.2f * hashf(hash32(r + 4));
    if (fabsf(h->n[1]) < 0.5f && v > floor_h * 1.1f && fracf(u / pitch) < wf &&
        fracf(v / floor_h) < hf) {
      int wv = (int)(hash3((int32_t)floorf(u / pitch), (int32_t)floorf(v / floor_h), 0, r) & 3);
      set3(c, st->pal[M_WINDOW][wv]);
    } else if (v < floor_h && hashf(hash32(r + 5)) < 0.5f && fracf(u / (pitch * 2)) < 0.6f &&
               v > 0.4f && v < floor_h * 0.8f) {
      set3(c, st->pal[M_WINDOW][2]); /* shop windows */
    }
    break;
  }
  case T_WALL:
    if (fracf(v / 0.3f) < 0.1f || fracf(u / 0.6f + 0.5f * floorf(v / 0.3f)) < 0.05f)
      scale3(c, 0.85f);
    break;
  case T_FENCE:
    if (fracf(u / 0.22f) < 0.45f && v < p->hi[1] - 0.12f && v > 0.1f) scale3(c, 0.55f);
    break;
  case T_LEAVES: {
    float n = vnoise(h->p[0] * 2.5f, h->p[1] * 2.5f, h->p[2] * 2.5f, p->rnd) * 0.6f +
              vnoise(h->p[0] * 6.0f, h->p[1] * 6.0f, h->p[2] * 6.0f, p->rnd + 1) * 0.4f;
    if (st->cel > 0.5f) n = floorf(n * 3.0f) / 3.0f + 0.17f; /* flat cartoon blotches */
    scale3(c, 0.7f + 0.6f * n);
    break;
  }
  case T_LIGHT:
    if (h->n[2] < -0.5f) { /* three lamps on the front */
      float cx = 0.5f * (p->lo[0] + p->hi[0]), hh = p->hi[1] - p->lo[1];
      for (int k = 0; k < 3; k++) {
        float cy = p->hi[1] - hh * (0.18f + 0.32f * (float)k), dx = u - cx, dy = v - cy;
        if (dx * dx + dy * dy < 0.11f * 0.11f) {
          if (k == (int)p->aux) {
            set3(c, st->pal[M_LAMP][k]);
            scale3(c, st->lamp / fmaxf(st->ambient + st->diffuse * 0.3f, 0.1f));
          } else {
            scale3(c, 0.5f);
          }
        }
      }
    }
    break;
  case T_SIGN: {
    /* A light or dark border ring around the face. */
    float cx = 0.5f * (p->lo[0] + p->hi[0]), cy = 0.5f * (p->lo[1] + p->hi[1]);
    float rx = 0.5f * (p->hi[0] - p->lo[0]), ry = 0.5f * (p->hi[1] - p->lo[1]);
    float e = p->shape == S_ELLIPSOID
                  ? sqrtf(((u - cx) / rx) * ((u - cx) / rx) + ((v - cy) / ry) * ((v - cy) / ry))
                  : fmaxf(fabsf(u - cx) / rx, fabsf(v - cy) / ry);
    if (e > 0.8f) {
      const float border[3] = {0.95f, 0.95f, 0.95f};
      set3(c, border);
      if (p->var == 3) c[1] = c[2] = 0.2f;
    }
    break;
  }
  case T_CAR_BODY:
    if (h->n[2] < -0.5f) { /* rear: tail lights and number plate */
      float cx = 0.5f * (p->lo[0] + p->hi[0]), w = p->hi[0] - p->lo[0];
      float vt = (v - p->lo[1]) / (p->hi[1] - p->lo[1]);
      if (vt > 0.55f && vt < 0.85f && fabsf(fabsf(u - cx) - 0.4f * w) < 0.08f * w) {
        const float red[3] = {0.9f, 0.1f, 0.08f};
        set3(c, red);
      } else if (vt > 0.2f && vt < 0.45f && fabsf(u - cx) < 0.25f) {
        const float plate[3] = {0.92f, 0.92f, 0.9f};
        set3(c, plate);
      }
    }
    break;
  case T_CABIN:
    if (fabsf(h->n[1]) < 0.5f && v < p->hi[1] - 0.08f) set3(c, st->pal[M_GLASS][p->var]);
    break;
  case T_WINDOW_BAND: {
    float band0 = p->lo[1] + 0.45f * (p->hi[1] - p->lo[1]), band1 = p->hi[1] - 0.35f;
    if (fabsf(h->n[1]) < 0.5f && v > band0 && v < band1 && fracf(u / 1.6f) > 0.1f)
      set3(c, st->pal[M_GLASS][0]);
    else if (p->cls == C_TRAIN && v > band0 - 0.35f && v < band0 - 0.15f)
      scale3(c, 0.5f); /* livery stripe */
    break;
  }
  case T_CARGO:
    if (fracf(u / 0.5f) < 0.08f) scale3(c, 0.85f);
    break;
  case T_HEAD:
    if (p->mat == M_SKIN && h->p[1] > 0.5f * (p->lo[1] + p->hi[1]) + 0.02f) {
      const float hair[3] = {0.2f, 0.14f, 0.08f};
      set3(c, hair);
    }
    break;
  case T_WHEEL: {
    /* Tyre ring, lighter hub and spokes inside. */
    float cy = 0.5f * (p->lo[1] + p->hi[1]), ry = 0.5f * (p->hi[1] - p->lo[1]);
    float cu = fabsf(h->n[0]) > 0.5f ? 0.5f * (p->lo[2] + p->hi[2]) : 0.5f * (p->lo[0] + p->hi[0]);
    float rr = sqrtf((u - cu) * (u - cu) + (v - cy) * (v - cy)) / ry;
    if (fabsf(h->n[2]) > 0.5f && rr < 0.78f) {
      const float hub[3] = {0.55f, 0.55f, 0.58f};
      set3(c, hub);
    }
    break;
  }
  default: break;
  }
}

static void shade(const scene *s, const style *st, const hit *h, int x, int y, float out[3]) {
  if (h->prim == -2) {
    shade_sky(s, st, x, y, out);
  } else {
    if (h->prim == -1)
      shade_ground(s, st, h, out);
    else
      shade_prim(s, st, h, out);
    /* Fine grain in world space (so it shrinks with distance). */
    float g = vnoise(h->p[0] * 4.0f, h->p[1] * 4.0f, h->p[2] * 4.0f, s->rnd ^ 0x51u);
    scale3(out, 1.0f + st->grain * 2.0f * (g - 0.5f));
    float nl = h->n[0] * st->light[0] + h->n[1] * st->light[1] + h->n[2] * st->light[2];
    scale3(out, st->ambient + st->diffuse * fmaxf(nl, 0.0f));
    mix3(out, st->fog, 1.0f - expf(-h->t / st->fog_dist));
  }
  for (int a = 0; a < 3; a++)
    out[a] = 0.5f + (out[a] * st->gain[a] - 0.5f) * st->contrast;
}

static uint8_t to_byte(float v) { return (uint8_t)(clampf(v, 0.0f, 1.0f) * 255.0f + 0.5f); }

/* In-place [1 2 1]/4 filter along a line of n pixels `step` bytes apart, blended by t. */
static void blur_line(uint8_t *p, int n, size_t step, float t) {
  for (int c = 0; c < 3; c++) {
    float prev = p[c];
    for (int i = 0; i < n; i++) {
      uint8_t *q = p + (size_t)i * step + c;
      float cur = *q, next = i + 1 < n ? q[step] : cur;
      float b = 0.25f * (prev + 2.0f * cur + next);
      *q = to_byte((cur + t * (b - cur)) / 255.0f);
      prev = cur;
    }
  }
}

/* Blur, vignetting and sensor noise over the whole image. */
static void post_process(const cluda_synth_config *cfg, cluda_synth_split split, uint64_t index,
                         const style *st, uint8_t *rgb) {
  int w = cfg->width, h = cfg->height;
  if (st->blur > 0) {
    for (int y = 0; y < h; y++)
      blur_line(rgb + (size_t)y * w * 3, w, 3, st->blur);
    for (int x = 0; x < w; x++)
      blur_line(rgb + (size_t)x * 3, h, (size_t)w * 3, st->blur);
  }
  if (st->vignette <= 0 && st->noise <= 0) return;
  draws d = make_draws(cfg, split, index, SLOT_NOISE, 1);
  float cx = 0.5f * (float)w, cy = 0.5f * (float)h;
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++) {
      uint8_t *q = rgb + ((size_t)y * w + x) * 3;
      float ux = ((float)x + 0.5f - cx) / cx, uy = ((float)y + 0.5f - cy) / cy;
      float k = 1.0f - st->vignette * 0.5f * (ux * ux + uy * uy);
      uint32_t r[4];
      cluda_rng_bits(d.key, (uint64_t)y * (uint64_t)w + (uint64_t)x, r);
      /* Box-Muller: a luminance and a chroma normal from each word pair. */
      float u1 = ((float)(r[0] >> 8) + 1.0f) * (1.0f / 16777216.0f);
      float u2 = (float)(r[1] >> 8) * (1.0f / 16777216.0f);
      float u3 = ((float)(r[2] >> 8) + 1.0f) * (1.0f / 16777216.0f);
      float u4 = (float)(r[3] >> 8) * (1.0f / 16777216.0f);
      float m1 = sqrtf(-2.0f * logf(u1)), m2 = sqrtf(-2.0f * logf(u3));
      float nz[3] = {m1 * cosf(6.2831853f * u2), m1 * sinf(6.2831853f * u2),
                     m2 * cosf(6.2831853f * u4)};
      /* Luminance noise plus weaker chroma noise (green opposite red and blue). */
      float chroma[3] = {nz[1], -0.5f * (nz[1] + nz[2]), nz[2]};
      for (int c = 0; c < 3; c++)
        q[c] = to_byte((float)q[c] / 255.0f * k + st->noise * (nz[0] + 0.4f * chroma[c]));
    }
}

/* ---- public API ---- */

void cluda_synth_config_init(cluda_synth_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->height = 128, cfg->width = 128;
  cfg->domain = CLUDA_SYNTH_SOURCE;
  cfg->gap = 1.0f;
}

cluda_status cluda_synth_check(const cluda_synth_config *cfg) {
  CLUDA_REQUIRE(cfg, CLUDA_ERR_ARG, "synth: config is NULL");
  CLUDA_REQUIRE(cfg->height >= 1 && cfg->width >= 1 && cfg->height <= CLUDA_SYNTH_MAX_SIDE &&
                    cfg->width <= CLUDA_SYNTH_MAX_SIDE,
                CLUDA_ERR_ARG, "synth: size %dx%d is outside 1..%d", cfg->height, cfg->width,
                CLUDA_SYNTH_MAX_SIDE);
  CLUDA_REQUIRE(cfg->domain == CLUDA_SYNTH_SOURCE || cfg->domain == CLUDA_SYNTH_TARGET,
                CLUDA_ERR_ARG, "synth: domain %d is neither source (0) nor target (1)",
                (int)cfg->domain);
  CLUDA_REQUIRE(cfg->gap >= 0.0f && cfg->gap <= 1.0f, CLUDA_ERR_ARG,
                "synth: gap %g is outside [0, 1]", (double)cfg->gap);
  return cluda_ok();
}

static cluda_status check_call(const cluda_synth_config *cfg, cluda_synth_split split,
                               uint64_t index) {
  CLUDA_TRY(cluda_synth_check(cfg));
  CLUDA_REQUIRE(split == CLUDA_SYNTH_TRAIN || split == CLUDA_SYNTH_VAL, CLUDA_ERR_ARG,
                "synth: split %d is neither train (0) nor val (1)", (int)split);
  CLUDA_REQUIRE(index <= 0xffffffffu, CLUDA_ERR_ARG, "synth: index %llu is not below 2^32",
                (unsigned long long)index);
  return cluda_ok();
}

cluda_status cluda_synth_render(const cluda_synth_config *cfg, cluda_synth_split split,
                                uint64_t index, uint8_t *rgb, uint8_t *labels) {
  CLUDA_TRY(check_call(cfg, split, index));
  if (!rgb && !labels) return cluda_ok();
  scene s;
  build_scene(&s, cfg, split, index);
  style st;
  if (rgb) make_style(&st, cfg, split, index);
  for (int y = 0; y < cfg->height; y++)
    for (int x = 0; x < cfg->width; x++) {
      hit h;
      trace(&s, x, y, &h);
      size_t i = (size_t)y * cfg->width + x;
      if (labels) labels[i] = (uint8_t)h.cls;
      if (rgb) {
        float c[3];
        shade(&s, &st, &h, x, y, c);
        for (int a = 0; a < 3; a++)
          rgb[3 * i + a] = to_byte(c[a]);
      }
    }
  if (rgb) post_process(cfg, split, index, &st, rgb);
  return cluda_ok();
}

cluda_status cluda_synth_class_counts(const cluda_synth_config *cfg, cluda_synth_split split,
                                      uint64_t index, int64_t counts[CLUDA_SYNTH_CLASSES]) {
  CLUDA_TRY(check_call(cfg, split, index));
  CLUDA_REQUIRE(counts, CLUDA_ERR_ARG, "synth: counts is NULL");
  for (int c = 0; c < CLUDA_SYNTH_CLASSES; c++)
    counts[c] = 0;
  scene s;
  build_scene(&s, cfg, split, index);
  for (int y = 0; y < cfg->height; y++)
    for (int x = 0; x < cfg->width; x++) {
      hit h;
      trace(&s, x, y, &h);
      counts[h.cls]++;
    }
  return cluda_ok();
}

const char *cluda_synth_domain_name(cluda_synth_domain domain) {
  return domain == CLUDA_SYNTH_SOURCE ? "source" : domain == CLUDA_SYNTH_TARGET ? "target" : "?";
}

const char *cluda_synth_split_name(cluda_synth_split split) {
  return split == CLUDA_SYNTH_TRAIN ? "train" : split == CLUDA_SYNTH_VAL ? "val" : "?";
}

int cluda_synth_parse_domain(const char *text, cluda_synth_domain *domain) {
  if (text && !strcmp(text, "source")) return *domain = CLUDA_SYNTH_SOURCE, 0;
  if (text && !strcmp(text, "target")) return *domain = CLUDA_SYNTH_TARGET, 0;
  return -1;
}

int cluda_synth_parse_split(const char *text, cluda_synth_split *split) {
  if (text && !strcmp(text, "train")) return *split = CLUDA_SYNTH_TRAIN, 0;
  if (text && !strcmp(text, "val")) return *split = CLUDA_SYNTH_VAL, 0;
  return -1;
}
