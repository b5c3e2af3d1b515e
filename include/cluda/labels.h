/* Label conventions shared by the data, loss and evaluation code. */
#ifndef CLUDA_LABELS_H
#define CLUDA_LABELS_H

/* The label value that marks pixels without a class (mmseg's ignore_index). */
enum { CLUDA_IGNORE_LABEL = 255 };

#endif
