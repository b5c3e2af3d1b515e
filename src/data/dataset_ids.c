/* Dataset names and the raw label id -> train id tables (algorithm.md 8.2, 8.3). */
#include <string.h>

#include "cluda/dataset.h"

const char *cluda_dataset_kind_name(cluda_dataset_kind kind) {
  static const char *const names[CLUDA_DATASET_KINDS] = {"gta", "synthia", "cityscapes"};
  return (unsigned)kind < CLUDA_DATASET_KINDS ? names[kind] : "?";
}

cluda_status cluda_dataset_kind_parse(const char *name, cluda_dataset_kind *kind) {
  for (int k = 0; k < CLUDA_DATASET_KINDS; k++)
    if (name && !strcmp(name, cluda_dataset_kind_name((cluda_dataset_kind)k))) {
      *kind = (cluda_dataset_kind)k;
      return cluda_ok();
    }
  return CLUDA_FAIL(CLUDA_ERR_ARG, "dataset '%s' is not one of gta, synthia, cityscapes",
                    name ? name : "(null)");
}

/* Cityscapes label ids 7..33 that are training classes, in train-id order (labels.py). */
static const uint8_t cityscapes_ids[19] = {7,  8,  11, 12, 13, 17, 19, 20, 21, 22,
                                           23, 24, 25, 26, 27, 28, 31, 32, 33};
/* SYNTHIA RAND-CITYSCAPES class ids of train ids 0..18 (terrain 16, truck 18 and train 20
 * never occur in the data but keep their ids). */
static const uint8_t synthia_ids[19] = {3, 4,  2,  21, 5,  7,  15, 9,  6, 16,
                                        1, 10, 17, 8,  18, 19, 20, 12, 11};

void cluda_dataset_id_table(cluda_dataset_kind kind, uint8_t table[256], uint8_t known[256]) {
  memset(table, 255, 256);
  const uint8_t *ids = kind == CLUDA_DATASET_SYNTHIA ? synthia_ids : cityscapes_ids;
  for (int t = 0; t < 19; t++)
    table[ids[t]] = (uint8_t)t;
  if (known) {
    /* Cityscapes/GTA ids 0..33 exist (-1, the licence plate, is stored as 255 in some
     * tools' outputs and is ignored); SYNTHIA ids 0..22. */
    int max_id = kind == CLUDA_DATASET_SYNTHIA ? 22 : 33;
    for (int v = 0; v < 256; v++)
      known[v] = v <= max_id || (kind != CLUDA_DATASET_SYNTHIA && v == 255);
  }
}
