#include "raw_png.h"

#include <stdio.h>

int write_raw_png(const char *path, const raw_png *spec) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    fclose(f);
    return -1;
  }
  png_init_io(png, f);
  png_set_IHDR(png, info, (png_uint_32)spec->width, (png_uint_32)spec->height, spec->bit_depth,
               spec->color_type, spec->interlace, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (spec->palette) png_set_PLTE(png, info, spec->palette, spec->palette_size);
  if (spec->trans) png_set_tRNS(png, info, spec->trans, spec->trans_size, NULL);
  png_write_info(png, info);
  size_t row_bytes = png_get_rowbytes(png, info);
  int passes = png_set_interlace_handling(png);
  for (int p = 0; p < passes; p++)
    for (int y = 0; y < spec->height; y++)
      png_write_row(png, (png_const_bytep)(spec->data + (size_t)y * row_bytes));
  png_write_end(png, NULL);
  png_destroy_write_struct(&png, &info);
  return fclose(f);
}
