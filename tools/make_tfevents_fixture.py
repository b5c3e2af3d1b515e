#!/usr/bin/env python3
"""Writes tests/fixtures/tfevents/torch_scalars.tfevents, the reference file that
tests/unit/test_tfevents.c compares the C writer against byte for byte (committed; rerun only
when a case changes).

The file is written by the real thing: torch.utils.tensorboard.SummaryWriter.add_scalar
(old-style `simple_value` summaries) on top of TensorBoard's EventFileWriter and RecordWriter.
Everything is fixed so the bytes are deterministic:
  - the file-version event takes its wall time from time.time(), which is patched to
    VERSION_WALL_TIME while the writer is created (its source_metadata.writer is
    "tensorboard.summary.writer.event_file_writer");
  - each scalar passes walltime= and global_step= explicitly;
  - values are numpy float32, so no double -> float rounding happens on the Python side.
The file name TensorBoard chooses (time, host, pid, uid) is replaced by a fixed one.

SCALARS below must stay identical to the table in tests/unit/test_tfevents.c: tricky tags
(unicode, quotes, a 200-byte tag whose length needs a 2-byte varint), steps 0 (omitted from
the proto), large and negative (10-byte varint), and values negative, tiny, subnormal, huge,
+-0, +-inf and NaN.

Needs torch and tensorboard (the /tmp/torchvenv environment: pip install tensorboard).
"""
import argparse
import glob
import os
import shutil
import tempfile
from unittest import mock

import numpy as np
from torch.utils.tensorboard import SummaryWriter

VERSION_WALL_TIME = 1700000000.125

# (tag, step, value, wall_time)
SCALARS = [
    ("loss/src", 1, 0.412, 1700000001.5),
    ("loss/src", 2, -2.5, 1700000002.75),
    ("train/\u0393_weight", 0, 1.0 / 3.0, 1700000003.0),
    ("\u00fcn\u00efc\u00f6d\u00e9/\u65e5\u672c\u8a9e tag", 1200, 1e-30, 1700000004.0625),
    ("quote\"back\\slash", 40000, 1e-40, 1700000005.0),
    ("huge", 2**40 + 3, 3.0e38, 1700000006.5),
    ("zero", 7, 0.0, 1700000007.0),
    ("negzero", 8, -0.0, 1700000008.0),
    ("inf", 9, float("inf"), 1700000009.0),
    ("neginf", 10, float("-inf"), 1700000010.0),
    ("nan", 11, float("nan"), 1700000011.0),
    ("negative_step", -7, 6.0e-05, 1700000012.0),
    ("x" * 200, 123456789, 1.5, 1700000013.25),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "tfevents"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with mock.patch("time.time", return_value=VERSION_WALL_TIME):
            writer = SummaryWriter(log_dir=tmp)
        for tag, step, value, wall_time in SCALARS:
            writer.add_scalar(tag, np.float32(value), global_step=step, walltime=wall_time)
        writer.close()
        (path,) = glob.glob(os.path.join(tmp, "events.out.tfevents.*"))
        dest = os.path.join(args.out, "torch_scalars.tfevents")
        shutil.copyfile(path, dest)
    print("wrote", dest, os.path.getsize(dest), "bytes")


if __name__ == "__main__":
    main()
