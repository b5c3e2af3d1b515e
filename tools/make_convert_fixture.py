#!/usr/bin/env python3
"""Writes tests/fixtures/convert/: tiny GTA, SYNTHIA and Cityscapes roots with raw labels, and
what DAFormer's tools/convert_datasets/{gta,synthia,cityscapes}.py make of them (the
*_labelTrainIds.png and the three Rare Class Sampling JSON files, algorithm.md 2.1 and 8).
tests/unit/test_dataset.c runs `cluda_dataset_convert` on copies of the roots and compares the
JSON files byte for byte and the train-id PNGs pixel for pixel. Committed; rerun only when a
case changes:

    python3 -m venv /tmp/dsvenv && /tmp/dsvenv/bin/pip install numpy pillow pypng
    /tmp/dsvenv/bin/python tools/make_convert_fixture.py

The reference logic below is a paraphrase of the DAFormer scripts (no mmcv, cv2 or
cityscapesscripts needed):
  - per label file, in sorted path order: label_copy = 255 everywhere; for (raw id, train id)
    in the id table's order: mask = label == id, label_copy[mask] = train id, and the count
    goes into the stats when > 0; then stats['file'] = the *_labelTrainIds.png path, and
    label_copy is saved as an 8-bit 'L' PNG;
  - GTA labels are palette PNGs read with PIL (the index is the Cityscapes id); SYNTHIA labels
    are 16-bit RGB PNGs whose R channel holds the class id (the reference reads them with
    cv2.IMREAD_UNCHANGED and takes the last channel of BGR; here pypng reads R);
  - Cityscapes: the reference rasterises *_gtFine_polygons.json with cityscapesscripts; these
    roots hold *_gtFine_labelIds.png instead (the same table as GTA), and one train image holds
    only an already converted *_gtFine_labelTrainIds.png. Statistics come from the train-id
    file for train/ images only (cityscapes.py: `if 'train/' in json_file`, classes 0..18);
  - save_class_stats: json.dump(list, indent=2), then {file: stats without 'file'}, then
    {class: [[file, n], ...]} with classes in first-seen order.
The roots are converted under the names the DAFormer README uses ("data/gta",
"data/synthia/" with its trailing slash, "data/cityscapes"), so the "file" entries read
e.g. "data/gta/labels/00000_labelTrainIds.png"; the C test converts its copies under the same
relative names.

expected/escapes/ holds save_class_stats for ESCAPE_NAMES below (quotes, backslashes, control
characters, non-ASCII, a byte that is not UTF-8): the C test writes the same table and
compares. Keep ESCAPE_NAMES and ESCAPE_COUNTS identical to test_dataset.c.
"""
import json
import os
import shutil
import tempfile

import numpy as np
import png  # pypng: PIL cannot write or read 16-bit RGB
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, '..', 'tests', 'fixtures', 'convert')

CITYSCAPES_ID_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                            23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17,
                            33: 18}
SYNTHIA_ID_TO_TRAINID = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10,
                         10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}
# Raw ids of each table that are not classes (they become 255).
CITYSCAPES_IGNORED = [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 255]
SYNTHIA_IGNORED = [0, 13, 14, 22]

ESCAPE_NAMES = ['data/x/plain_labelTrainIds.png', 'data/q"uote\\back/slash.png',
                'data/ctl\t\n\r\b\f\x01\x1f\x7f.png', 'data/caf\u00e9/\u65e5\u672c.png',
                'data/emoji/\U0001F600.png', 'data/raw/bad\udcffbyte.png']
# [image][class] pixel counts; 0 = class absent.
ESCAPE_COUNTS = [[0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
                 [3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                 [0] * 19,
                 [0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4],
                 [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1234567890123],
                 [9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]


# ---- the reference logic (DAFormer tools/convert_datasets, paraphrased) ----

def convert_with_table(file, label, id_to_trainid):
    label_copy = 255 * np.ones(label.shape, dtype=np.uint8)
    sample_class_stats = {}
    for k, v in id_to_trainid.items():
        k_mask = label == k
        label_copy[k_mask] = v
        n = int(np.sum(k_mask))
        if n > 0:
            sample_class_stats[v] = n
    new_file = file.replace('.png', '_labelTrainIds.png')
    assert file != new_file
    sample_class_stats['file'] = new_file
    Image.fromarray(label_copy, mode='L').save(new_file)
    return sample_class_stats


def gta_convert(file):
    return convert_with_table(file, np.asarray(Image.open(file)), CITYSCAPES_ID_TO_TRAINID)


def synthia_convert(file):
    width, height, rows, info = png.Reader(filename=file).asDirect()
    assert info['bitdepth'] == 16 and info['planes'] == 3
    rgb = np.array([list(r) for r in rows], dtype=np.int64).reshape(height, width, 3)
    return convert_with_table(file, rgb[:, :, 0], SYNTHIA_ID_TO_TRAINID)


def cityscapes_convert(label_ids_or_train_file):
    """labelIds -> labelTrainIds (same table as GTA), then cityscapes.py's statistics."""
    if label_ids_or_train_file.endswith('_gtFine_labelIds.png'):
        label_file = label_ids_or_train_file.replace('_gtFine_labelIds.png',
                                                     '_gtFine_labelTrainIds.png')
        label = np.asarray(Image.open(label_ids_or_train_file))
        label_copy = 255 * np.ones(label.shape, dtype=np.uint8)
        for k, v in CITYSCAPES_ID_TO_TRAINID.items():
            label_copy[label == k] = v
        Image.fromarray(label_copy, mode='L').save(label_file)
    else:
        label_file = label_ids_or_train_file
    if 'train/' in label_file:
        label = np.asarray(Image.open(label_file))
        sample_class_stats = {}
        for c in range(19):
            n = int(np.sum(label == c))
            if n > 0:
                sample_class_stats[int(c)] = n
        sample_class_stats['file'] = label_file
        return sample_class_stats
    return None


def save_class_stats(out_dir, sample_class_stats):
    sample_class_stats = [e for e in sample_class_stats if e is not None]
    with open(os.path.join(out_dir, 'sample_class_stats.json'), 'w') as of:
        json.dump(sample_class_stats, of, indent=2)

    sample_class_stats_dict = {}
    for stats in sample_class_stats:
        f = stats.pop('file')
        sample_class_stats_dict[f] = stats
    with open(os.path.join(out_dir, 'sample_class_stats_dict.json'), 'w') as of:
        json.dump(sample_class_stats_dict, of, indent=2)

    samples_with_class = {}
    for file, stats in sample_class_stats_dict.items():
        for c, n in stats.items():
            if c not in samples_with_class:
                samples_with_class[c] = [(file, n)]
            else:
                samples_with_class[c].append((file, n))
    with open(os.path.join(out_dir, 'samples_with_class.json'), 'w') as of:
        json.dump(samples_with_class, of, indent=2)


def scan(directory, suffixes):
    """mmcv.scandir(directory, suffixes, recursive=True) joined to directory."""
    found = []
    for dirpath, _, names in os.walk(directory):
        for name in names:
            if name.endswith(suffixes):
                found.append(os.path.join(directory,
                                          os.path.relpath(os.path.join(dirpath, name), directory)))
    return found


# ---- the raw roots ----

def random_labels(rng, shape, class_ids, ignored_ids, ignored_share=0.25):
    """Raw labels from class_ids, about ignored_share of the pixels from ignored_ids."""
    labels = rng.choice(np.array(class_ids), size=shape)
    if ignored_ids:
        ignore = rng.random(shape) < ignored_share
        labels[ignore] = rng.choice(np.array(ignored_ids), size=int(ignore.sum()))
    return labels


def write_rgb(path, rng, height, width):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), 'RGB').save(path)


def write_gta_label(path, ids):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint8), mode='P')
    image.putpalette([(i * 37) % 256 for i in range(768)])
    image.save(path)


def write_synthia_label(path, class_ids, rng):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    height, width = class_ids.shape
    rgb = np.zeros((height, width, 3), dtype=np.uint16)
    rgb[:, :, 0] = class_ids
    rgb[:, :, 1] = rng.integers(1, 65536, (height, width))  # instance ids, above 255 too
    rgb[:, :, 2] = rng.integers(0, 65536, (height, width))
    with open(path, 'wb') as f:
        png.Writer(width, height, greyscale=False, bitdepth=16).write(
            f, rgb.reshape(height, width * 3).tolist())


def write_gray(path, ids):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(ids.astype(np.uint8), mode='L').save(path)


def make_gta(root, rng):
    classes = list(CITYSCAPES_ID_TO_TRAINID)
    # 00000: a few classes, so samples_with_class's first-seen order is not numeric order;
    # 00002: an odd-sized frame (2 rows fewer), as GTA has; 00003: nothing but ignored ids.
    frames = [(8, 12, [26, 7, 24], CITYSCAPES_IGNORED), (8, 12, classes, CITYSCAPES_IGNORED),
              (6, 12, classes, []), (8, 12, CITYSCAPES_IGNORED, [])]
    for index, (height, width, ids, ignored) in enumerate(frames):
        write_rgb(f'{root}/images/{index:05d}.png', rng, height, width)
        write_gta_label(f'{root}/labels/{index:05d}.png',
                        random_labels(rng, (height, width), ids, ignored))


def make_synthia(root, rng):
    classes = list(SYNTHIA_ID_TO_TRAINID)
    frames = [(8, 12, [11, 8, 2], SYNTHIA_IGNORED), (8, 12, classes, SYNTHIA_IGNORED),
              (8, 12, classes, [])]
    for index, (height, width, ids, ignored) in enumerate(frames):
        write_rgb(f'{root}/RGB/{index:07d}.png', rng, height, width)
        write_synthia_label(f'{root}/GT/LABELS/{index:07d}.png',
                            random_labels(rng, (height, width), ids, ignored), rng)


def make_cityscapes(root, rng):
    classes = list(CITYSCAPES_ID_TO_TRAINID)
    frames = [('train', 'aachen', 19, 'ids', [21, 23, 7]), ('train', 'aachen', 20, 'ids', classes),
              ('train', 'bochum', 3, 'train_ids', None), ('val', 'frankfurt', 5, 'ids', classes)]
    for split, city, frame, kind, ids in frames:
        stem = f'{city}_000000_{frame:06d}'
        write_rgb(f'{root}/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png', rng, 8, 16)
        label_dir = f'{root}/gtFine/{split}/{city}'
        if kind == 'ids':
            write_gray(f'{label_dir}/{stem}_gtFine_labelIds.png',
                       random_labels(rng, (8, 16), ids, CITYSCAPES_IGNORED))
        else:
            train_ids = rng.integers(0, 19, (8, 16))
            train_ids[rng.random((8, 16)) < 0.25] = 255
            write_gray(f'{label_dir}/{stem}_gtFine_labelTrainIds.png', train_ids)


# ---- running the reference on copies, under the README's root names ----

def reference_gta(root):
    files = sorted(scan(os.path.join(root, 'labels'), tuple(f'{i}.png' for i in range(10))))
    save_class_stats(root, [gta_convert(f) for f in files])


def reference_synthia(root):
    files = sorted(scan(os.path.join(root, 'GT/LABELS'), tuple(f'{i}.png' for i in range(10))))
    save_class_stats(root, [synthia_convert(f) for f in files])


def reference_cityscapes(root):
    gt_dir = os.path.join(root, 'gtFine')
    label_ids = scan(gt_dir, '_gtFine_labelIds.png')
    converted = {f.replace('_gtFine_labelIds.png', '_gtFine_labelTrainIds.png') for f in label_ids}
    train_only = [f for f in scan(gt_dir, '_gtFine_labelTrainIds.png') if f not in converted]
    files = sorted(label_ids + train_only)
    save_class_stats(root, [cityscapes_convert(f) for f in files])


def copy_outputs(work, name, expected):
    """The JSON files and every *labelTrainIds.png of the converted root."""
    for dirpath, _, names in os.walk(os.path.join(work, name)):
        for file in names:
            if file.endswith('.json') or file.endswith('labelTrainIds.png'):
                src = os.path.join(dirpath, file)
                dst = os.path.join(expected, name, os.path.relpath(src, os.path.join(work, name)))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copyfile(src, dst)


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    rng = np.random.default_rng(20240810)
    make_gta(os.path.join(OUT, 'gta'), rng)
    make_synthia(os.path.join(OUT, 'synthia'), rng)
    make_cityscapes(os.path.join(OUT, 'cityscapes'), rng)

    expected = os.path.join(OUT, 'expected')
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as work:
        for name in ('gta', 'synthia', 'cityscapes'):
            shutil.copytree(os.path.join(OUT, name), os.path.join(work, 'data', name))
        os.chdir(work)
        try:
            reference_gta('data/gta')
            reference_synthia('data/synthia/')
            reference_cityscapes('data/cityscapes')
        finally:
            os.chdir(cwd)
        for name in ('gta', 'synthia', 'cityscapes'):
            copy_outputs(os.path.join(work, 'data'), name, expected)

    escapes = os.path.join(expected, 'escapes')
    os.makedirs(escapes)
    save_class_stats(escapes, [
        dict([(c, n) for c, n in enumerate(counts) if n > 0] + [('file', name)])
        for name, counts in zip(ESCAPE_NAMES, ESCAPE_COUNTS)])


if __name__ == '__main__':
    main()
