#!/usr/bin/env python3
"""Writes tests/fixtures/cityscapes_eval/, the reference that tests/unit/test_eval_cityscapes.c
checks `cluda_eval --predictions/--ground-truth` and the test resize against (committed; rerun
only when a case changes).

1. A tiny Cityscapes ground-truth tree, gtFine/val/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
   (2 cities x 2 frames, 64x32 and one 48x40 image), with random label ids including ignored
   ones, and the same labels as *_gtFine_labelTrainIds.png (cityscapesscripts' own labels.py
   table, 255 = ignore).
2. Predictions in label ids (pred_ids/<city>/<key>_leftImg8bit.png, as a submission) that copy
   the ground truth half of the time and are otherwise random, including ids that are not
   evaluated; and the same predictions in train ids (pred_trainids/<key>_pred.png, 255 where
   the id is not evaluated). Built-in corner cases: train is in neither (IoU NaN), truck is only
   predicted on ignored pixels (NaN), bus is only predicted (IoU 0), motorcycle is never
   predicted (IoU 0).
3. official.json: the per-class IoUs and the mIoU of cityscapesscripts'
   evaluation.evalPixelLevelSemanticLabeling, run programmatically on the label-id predictions
   (getPrediction finds them; evaluateImgLists scores them). The instance-level score is turned
   off (it needs *_instanceIds.png); nothing else is patched: the script accepts any image size
   as long as prediction and ground truth agree.
4. resize/: cv2.resize(INTER_LINEAR) of one 30x18 RGB image to several sizes (the test resize
   of mmcv imrescale), for the byte-exact check of cluda_eval_resize_image.

Needs: python3 -m venv /tmp/csvenv && /tmp/csvenv/bin/pip install cityscapesscripts numpy pillow
opencv-python-headless. Deterministic: the same numpy seed gives the same files.
"""
import argparse
import glob
import json
import math
import os
import shutil
from importlib import metadata

import cv2
import numpy as np
from PIL import Image

from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
from cityscapesscripts.helpers.labels import id2label, labels

SEED = 20240531
# (city, sequence, frame, height, width)
FRAMES = [
    ("aachen", "000000", "000019", 32, 64),
    ("aachen", "000001", "000019", 32, 64),
    ("bochum", "000000", "000313", 40, 48),
    ("bochum", "000000", "001097", 32, 64),
]
EVALUATED = [l.id for l in labels if not l.ignoreInEval and l.id >= 0]  # 19 ids, train-id order
IGNORED = [l.id for l in labels if l.ignoreInEval and l.id >= 0]
TRAIN, TRUCK, BUS, MOTORCYCLE = 31, 27, 28, 32
# cv2 target sizes (width, height) of the 30x18 resize input: exact half (cv2's area path),
# irregular up- and down-scales, identity, and a single pixel.
RESIZE_INPUT = (30, 18)
RESIZE_SIZES = [(15, 9), (64, 38), (11, 7), (30, 18), (1, 1), (45, 13)]


def train_ids(ids):
    table = np.full(256, 255, np.uint8)
    for label in labels:
        if 0 <= label.id < 256 and label.trainId not in (-1, 255):
            table[label.id] = label.trainId
    return table[ids]


def make_frame(rng, height, width):
    gt_choices = [i for i in EVALUATED if i not in (TRAIN, TRUCK, BUS)] + IGNORED
    gt = rng.choice(gt_choices, size=(height, width)).astype(np.uint8)
    pred_choices = [i for i in EVALUATED if i not in (TRAIN, TRUCK, MOTORCYCLE)] + [0, 4, 9, 18, 29]
    pred = rng.choice(pred_choices, size=(height, width)).astype(np.uint8)
    copy = (rng.random((height, width)) < 0.5) & np.isin(gt, EVALUATED) & (gt != MOTORCYCLE)
    pred[copy] = gt[copy]
    on_ignored = np.isin(gt, IGNORED) & (rng.random((height, width)) < 0.3)
    pred[on_ignored] = TRUCK
    return gt, pred


def run_official(root, pred_dir):
    args = official.args
    args.evalInstLevelScore = False
    args.JSONOutput = False
    args.quiet = True
    args.predictionPath = pred_dir
    args.predictionWalk = None
    search = os.path.join(root, "gtFine", "val", "*", "*_gtFine_labelIds.png")
    gt_list = sorted(glob.glob(search))
    pred_list = [official.getPrediction(args, gt) for gt in gt_list]
    return official.evaluateImgLists(pred_list, gt_list, args)


def number(value):
    return None if math.isnan(value) else value


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="tests/fixtures/cityscapes_eval")
    out = parser.parse_args().out
    if os.path.isdir(out):
        shutil.rmtree(out)
    rng = np.random.default_rng(SEED)
    for city, seq, frame, height, width in FRAMES:
        key = f"{city}_{seq}_{frame}"
        gt, pred = make_frame(rng, height, width)
        gt_dir = os.path.join(out, "gtFine", "val", city)
        os.makedirs(gt_dir, exist_ok=True)
        Image.fromarray(gt).save(os.path.join(gt_dir, f"{key}_gtFine_labelIds.png"))
        Image.fromarray(train_ids(gt)).save(os.path.join(gt_dir, f"{key}_gtFine_labelTrainIds.png"))
        ids_dir = os.path.join(out, "pred_ids", city)
        os.makedirs(ids_dir, exist_ok=True)
        Image.fromarray(pred).save(os.path.join(ids_dir, f"{key}_leftImg8bit.png"))
        train_dir = os.path.join(out, "pred_trainids")
        os.makedirs(train_dir, exist_ok=True)
        Image.fromarray(train_ids(pred)).save(os.path.join(train_dir, f"{key}_pred.png"))

    result = run_official(out, os.path.join(out, "pred_ids"))
    scores = result["classScores"]
    classes = []
    for label_id in EVALUATED:
        label = id2label[label_id]
        classes.append({"train_id": label.trainId, "label_id": label_id, "name": label.name,
                        "iou": number(scores[label.name])})
    assert math.isnan(scores["train"]) and math.isnan(scores["truck"])
    assert scores["bus"] == 0 and scores["motorcycle"] == 0
    reference = {
        "tool": "cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling",
        "cityscapesscripts_version": metadata.version("cityscapesscripts"),
        "numpy_version": np.__version__,
        "opencv_version": cv2.__version__,
        "images": len(FRAMES),
        "miou": number(result["averageScoreClasses"]),
        "classes": classes,
    }
    with open(os.path.join(out, "official.json"), "w") as f:
        json.dump(reference, f, indent=1)
        f.write("\n")

    resize_dir = os.path.join(out, "resize")
    os.makedirs(resize_dir)
    width, height = RESIZE_INPUT
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(image).save(os.path.join(resize_dir, "input.png"))
    for w, h in RESIZE_SIZES:
        resized = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        Image.fromarray(resized).save(os.path.join(resize_dir, f"cv2_{w}x{h}.png"))

    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    print(f"official mIoU {reference['miou']:.6f}; {out}: {total} bytes")
    for c in classes:
        print(f"  {c['name']:<14} {c['iou']}")


if __name__ == "__main__":
    main()
