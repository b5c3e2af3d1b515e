#!/usr/bin/env python3
"""Golden fixture for the training pipeline's resize (tests/unit/test_loader.c): small images
and label maps resized with OpenCV exactly as mmcv.imrescale does in the mmseg / DAFormer
training pipeline (algorithm.md 4.3).

Usage (by hand, not part of the build; needs opencv-python-headless, numpy, h5py):

    python3 -m venv /tmp/cvvenv
    /tmp/cvvenv/bin/pip install opencv-python-headless numpy h5py
    /tmp/cvvenv/bin/python tools/make_loader_fixture.py --out tests/fixtures

Writes tests/fixtures/loader_resize.h5 with one group per case:
  * image_in [H, W, 3] uint8 (RGB; cv2 treats channels alike), labels_in [H, W] uint8 (train
    ids 0..18 and 255);
  * attributes scale_long, scale_short (the imrescale target) and out_w, out_h, the size
    mmcv.rescale_size gives: factor = min(long / max(h, w), short / min(h, w)),
    int(side * factor + 0.5);
  * image_out = cv2.resize(image_in, (out_w, out_h), interpolation=cv2.INTER_LINEAR),
    labels_out = cv2.resize(labels_in, (out_w, out_h), interpolation=cv2.INTER_NEAREST).
Cases cover a GTA-like and a Cityscapes-like (exactly 2x, where cv2 switches to INTER_AREA)
downscale, upscales (HRDA's source scale) and a portrait image; the image content mixes a
smooth gradient with uniform noise, so every rounding path of cv2's fixed-point arithmetic is
hit. Deterministic: one numpy seed per case. Root attributes record the package versions.
"""

import argparse
import os
import platform
import zlib

import cv2
import h5py
import numpy as np

# name, input height, input width, (scale_long, scale_short)
CASES = [
    ("gta_like", 53, 96, (64, 36)),
    ("cityscapes_half", 32, 64, (32, 16)),
    ("upscale", 19, 23, (48, 40)),
    ("portrait", 53, 37, (36, 25)),
    ("hrda_up", 26, 48, (64, 36)),
]


def rescale_size(w, h, scale):
    """mmcv.rescale_size for a (long, short) target."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)


def make_case(name, h, w, scale):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([255 * xx / max(w - 1, 1), 255 * yy / max(h - 1, 1),
                       127.5 + 127.5 * np.sin(0.3 * xx + 0.2 * yy)], axis=-1)
    noise = rng.integers(0, 256, (h, w, 3)).astype(np.float64)
    mixed = np.where((xx // 8 + yy // 8)[..., None] % 2 == 0, smooth, noise)
    image = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    labels = rng.integers(0, 20, (h, w)).astype(np.uint8)
    labels[labels == 19] = 255
    out_w, out_h = rescale_size(w, h, scale)
    image_out = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    labels_out = cv2.resize(labels, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
    return image, labels, image_out, labels_out, out_w, out_h


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="tests/fixtures")
    args = parser.parse_args()
    path = os.path.join(args.out, "loader_resize.h5")
    with h5py.File(path, "w", libver="earliest") as f:
        f.attrs["opencv_version"] = cv2.__version__
        f.attrs["numpy_version"] = np.__version__
        f.attrs["h5py_version"] = h5py.__version__
        f.attrs["python_version"] = platform.python_version()
        for name, h, w, scale in CASES:
            image, labels, image_out, labels_out, out_w, out_h = make_case(name, h, w, scale)
            g = f.create_group(name)
            g.create_dataset("image_in", data=image)
            g.create_dataset("labels_in", data=labels)
            g.create_dataset("image_out", data=image_out)
            g.create_dataset("labels_out", data=labels_out)
            g.attrs["scale_long"] = np.int32(scale[0])
            g.attrs["scale_short"] = np.int32(scale[1])
            g.attrs["out_w"] = np.int32(out_w)
            g.attrs["out_h"] = np.int32(out_h)
            print(f"{name}: {w}x{h} -> {out_w}x{out_h}")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
