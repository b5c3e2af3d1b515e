/* Internal helpers shared by the dataset reader (dataset.c) and the converter
 * (dataset_convert.c). Not part of the public API. */
#ifndef CLUDA_IO_DATASET_INTERNAL_H
#define CLUDA_IO_DATASET_INTERNAL_H

#include "cluda/dataset.h"

/* dir + "/" + name as Python's os.path.join writes it (no second slash when dir ends in
 * one), so the statistics name files exactly as the reference tools do. malloc'ed; NULL when
 * out of memory. */
char *cluda_dataset_path_join(const char *dir, const char *name);

/* 1 when path is an existing regular file. */
int cluda_dataset_file_exists(const char *path);

/* The error for item i having no label file (Cityscapes: with the polygons hint). */
cluda_status cluda_dataset_missing_label(const cluda_dataset *ds, int i);

/* Fails naming path, the value and a pixel when labels holds anything but 0..18 and 255. */
cluda_status cluda_dataset_check_train_ids(const cluda_image *labels, const char *path);

/* Item i's raw label file mapped through the id table to train ids (a value outside the
 * table is an error naming the file, the value and a pixel). */
cluda_status cluda_dataset_read_raw_labels(const cluda_dataset *ds, int i, cluda_image *train_ids);

#endif
