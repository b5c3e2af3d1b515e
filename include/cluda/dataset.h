/* The real datasets on disk (shared/spec/algorithm.md 8): GTA5, SYNTHIA RAND-CITYSCAPES and
 * Cityscapes in the layouts the DAFormer/HRDA configs expect, their label-id -> train-id
 * tables, the converter that writes *_labelTrainIds.png and the Rare Class Sampling
 * statistics (algorithm.md 2.1) in the reference tools' file formats, so a root prepared for
 * DAFormer/HRDA works unchanged and vice versa.
 *
 * Layouts (relative to the root):
 *   gta:        images/NNNNN.png, labels/NNNNN.png (palette PNG holding Cityscapes ids);
 *               converted: labels/NNNNN_labelTrainIds.png
 *   synthia:    RGB/NNNNNNN.png, GT/LABELS/NNNNNNN.png (16-bit multi-channel PNG, class id
 *               in the first (R) channel); converted: GT/LABELS/NNNNNNN_labelTrainIds.png
 *   cityscapes: leftImg8bit/<split>/<city>/<x>_leftImg8bit.png,
 *               gtFine/<split>/<city>/<x>_gtFine_labelIds.png (or an already converted
 *               <x>_gtFine_labelTrainIds.png); converted: <x>_gtFine_labelTrainIds.png
 * Train ids are 0..18, 255 = ignore. GTA has no split (everything is train); SYNTHIA likewise.
 *
 * Every error names the file and the problem (missing label for an image, unreadable or
 * truncated PNG, image/label size mismatch, label value outside the id table). */
#ifndef CLUDA_DATASET_H
#define CLUDA_DATASET_H

#include <stdint.h>

#include "cluda/image.h"
#include "cluda/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum cluda_dataset_kind {
  CLUDA_DATASET_GTA = 0,
  CLUDA_DATASET_SYNTHIA = 1,
  CLUDA_DATASET_CITYSCAPES = 2,
  CLUDA_DATASET_KINDS
} cluda_dataset_kind;

/* "gta", "synthia", "cityscapes"; parse returns CLUDA_ERR_ARG naming the value otherwise. */
const char *cluda_dataset_kind_name(cluda_dataset_kind kind);
cluda_status cluda_dataset_kind_parse(const char *name, cluda_dataset_kind *kind);

/* The raw id -> train id table of a dataset (algorithm.md 8.2 for Cityscapes and GTA, 8.3 for
 * SYNTHIA): table[id] for id 0..255, 255 where the id is not one of the 19 classes. Raw ids
 * that do not exist in the dataset's label definition (Cityscapes/GTA: > 33; SYNTHIA: > 22)
 * are marked in `known` with 0 (the reader reports them as bad input); known may be NULL. */
void cluda_dataset_id_table(cluda_dataset_kind kind, uint8_t table[256], uint8_t known[256]);

/* One image/label pair; paths are absolute or relative to the working directory. */
typedef struct cluda_dataset_item {
  char *image;       /* the RGB image */
  char *label_raw;   /* the dataset's own label file (ids); NULL when absent */
  char *label_train; /* the *_labelTrainIds.png path (may not exist yet) */
  char *stats_name;  /* the file name the statistics JSONs use for this item */
} cluda_dataset_item;

typedef struct cluda_dataset {
  cluda_dataset_kind kind;
  char *root;
  char *split; /* "train" / "val" for Cityscapes, "all" otherwise */
  int count;
  cluda_dataset_item *items; /* sorted by image path (stable order on every machine) */
} cluda_dataset;

/* Scans root for the pairs of one split (split: "train" or "val" for Cityscapes; NULL or
 * "all" for GTA and SYNTHIA). An image without any label file is an error naming it (for a
 * Cityscapes root holding only *_gtFine_polygons.json, an error saying to create the label
 * PNGs with cityscapesscripts). Label files without an image are not items. */
cluda_status cluda_dataset_open(cluda_dataset *ds, cluda_dataset_kind kind, const char *root,
                                const char *split);
/* The same, but an image without a label file stays an item (label_raw NULL, label_train
 * absent) whose labels fail to read, naming it: data.on_error = skip can then skip it.
 * *unlabelled (may be NULL) = the number of such items. */
cluda_status cluda_dataset_open_lenient(cluda_dataset *ds, cluda_dataset_kind kind,
                                        const char *root, const char *split, int *unlabelled);
void cluda_dataset_free(cluda_dataset *ds);

/* Decodes item i's image as 8-bit RGB. */
cluda_status cluda_dataset_read_image(const cluda_dataset *ds, int i, cluda_image *rgb);

/* Item i's labels as train ids (1 channel): the converted *_labelTrainIds.png when it exists,
 * else the raw labels mapped through the id table (a value outside the table is an error
 * naming the file, the value and a pixel). */
cluda_status cluda_dataset_read_labels(const cluda_dataset *ds, int i, cluda_image *train_ids);

/* Both of item i (as the two functions above); an image/label size mismatch is a
 * CLUDA_ERR_SHAPE naming both files and sizes. */
cluda_status cluda_dataset_read_pair(const cluda_dataset *ds, int i, cluda_image *rgb,
                                     cluda_image *train_ids);

/* The statistics files the converter writes into the root (algorithm.md 2.1). */
#define CLUDA_DATASET_STATS_LIST "sample_class_stats.json"
#define CLUDA_DATASET_STATS_DICT "sample_class_stats_dict.json"
#define CLUDA_DATASET_STATS_BY_CLASS "samples_with_class.json"

/* Per-image class pixel counts from <root>/sample_class_stats.json (the converter's or the
 * reference tool's), matched to the items by file basename: *stats = [count][num_classes]
 * int64 (malloc'ed, 0 where a class is not listed). Missing file: CLUDA_ERR_IO naming it and
 * suggesting `cluda_data convert`. An item absent from the file is an error naming it. */
cluda_status cluda_dataset_load_class_stats(const cluda_dataset *ds, int num_classes,
                                            int64_t **stats);

/* ---- conversion (cluda_data convert) ---- */

typedef struct cluda_convert_options {
  int threads;  /* worker threads (>= 1) */
  int force;    /* rewrite existing *_labelTrainIds.png (default: keep = idempotent) */
  int progress; /* draw a progress bar on stderr */
  int skip_bad; /* data.on_error = skip: warn, skip the item, count it */
} cluda_convert_options;

typedef struct cluda_convert_report {
  int converted, kept, skipped;
} cluda_convert_report;

/* Writes every item's *_labelTrainIds.png (atomically) and, for the training split (all of
 * GTA and SYNTHIA, Cityscapes train), the three RCS statistics files into the root:
 * sample_class_stats.json, sample_class_stats_dict.json, samples_with_class.json, in the
 * reference tools' formats (algorithm.md 2.1). Output is identical for any thread count.
 *
 * An existing *_labelTrainIds.png is kept unless opt->force (then rebuilt from the raw
 * labels when they exist); the statistics are always recomputed from the labels, so a
 * second run writes the same bytes. Every item's pair is checked: the label must be
 * readable, hold only ids of the table (train ids 0..18 / 255 for a kept file) and have the
 * image's size. A bad item stops the conversion with an error naming its file (the first bad
 * item in item order), or with opt->skip_bad is left out of the statistics and reported as
 * a warning on stderr (in item order, after the work is done) and in report->skipped. */
cluda_status cluda_dataset_convert(const cluda_dataset *ds, const cluda_convert_options *opt,
                                   cluda_convert_report *report);

/* Writes the three statistics files into dir exactly as the reference tools' json.dump(...,
 * indent=2) does (no trailing newline, non-ASCII escaped): entry e is the label file
 * files[e] with counts[e * num_classes + c] pixels of class c (0: not listed). Used by the
 * converter and by `cluda_data synth`. Each file is replaced atomically. */
cluda_status cluda_dataset_write_class_stats(const char *dir, int count, const char *const *files,
                                             const int64_t *counts, int num_classes);

#ifdef __cplusplus
}
#endif
#endif
