/* PNG files written with libpng directly, not through the code under test (image.c), so the
 * readers are tested against files the project did not make itself. */
#ifndef CLUDA_TEST_RAW_PNG_H
#define CLUDA_TEST_RAW_PNG_H

#include <png.h>
#include <stdint.h>

typedef struct raw_png {
  int width, height, bit_depth, color_type, interlace;
  const uint8_t *data; /* packed rows as libpng expects them (16-bit: big endian) */
  const png_color *palette;
  int palette_size;
  const uint8_t *trans; /* palette alpha, or NULL */
  int trans_size;
} raw_png;

/* Writes a PNG of any kind described by spec; returns 0 on success. */
int write_raw_png(const char *path, const raw_png *spec);

#endif
