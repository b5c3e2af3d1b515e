#!/usr/bin/env python3
"""Golden fixtures for the DACS strong augmentation (tests/unit/test_dacs.c), computed with
kornia 0.5.8 exactly as DAFormer's mmseg/models/utils/dacs_transforms.py calls it.

Usage (by hand, not part of the build; needs kornia==0.5.8, which runs on current torch):

    python tools/make_dacs_fixtures.py --out tests/fixtures

Writes tests/fixtures/dacs.h5 with one group per case:
  * jitter_*: x [1,H,W,3] normalised float32 NHWC; params [4] = brightness, contrast,
    saturation, hue factors as drawn by kornia (b, c, s ~ U(0.8, 1.2), h ~ U(-0.2, 0.2));
    order [4] uint8 = the op order (0 brightness, 1 contrast, 2 saturation, 3 hue); y = DACS
    color_jitter: denorm_ ((x std + mean) / 255), ColorJitter.apply_transform with these
    params, renorm_ ((y 255 - mean) / std). All in float32, as in training.
  * blur_*: x [1,H,W,3]; attribute sigma; y = kornia GaussianBlur2d with DACS's kernel size
    rule (floor(ceil(0.1 L) - 0.5 + ceil(0.1 L) % 2) per axis), reflect border.
"""

import argparse
import os

import h5py
import numpy as np
import torch
import kornia
from kornia.augmentation import ColorJitter

MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def image(rng, h, w):
    """A [0,1] RGB image with saturated, gray and clipped pixels, normalised, NCHW."""
    img = rng.random((1, 3, h, w), dtype=np.float32)
    img[:, :, ::7, :] = np.clip(img[:, :, ::7, :] * 3 - 1, 0, 1)
    img[:, 1, 3::11, :] = img[:, 0, 3::11, :]
    img[:, 2, 3::11, :] = img[:, 0, 3::11, :]
    x = torch.from_numpy(img) * 255.0
    return (x - MEAN) / STD


def nhwc(t):
    return t.permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)


def jitter(x, params, order):
    data = x.clone()
    data.mul_(STD).add_(MEAN).div_(255.0)  # denorm_
    cj = ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.2)
    p = {
        'brightness_factor': torch.tensor([params[0]], dtype=torch.float32),
        'contrast_factor': torch.tensor([params[1]], dtype=torch.float32),
        'saturation_factor': torch.tensor([params[2]], dtype=torch.float32),
        'hue_factor': torch.tensor([params[3]], dtype=torch.float32),
        'order': torch.tensor(order, dtype=torch.long),
    }
    data = cj.apply_transform(data, p)
    data.mul_(255.0).sub_(MEAN).div_(STD)  # renorm_
    return data


def blur(x, sigma):
    ks = [int(np.floor(np.ceil(0.1 * n) - 0.5 + np.ceil(0.1 * n) % 2)) for n in x.shape[2:]]
    return kornia.filters.GaussianBlur2d(tuple(ks), (sigma, sigma))(x), ks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default='tests/fixtures')
    args = ap.parse_args()
    rng = np.random.default_rng(20240531)
    path = os.path.join(args.out, 'dacs.h5')
    with h5py.File(path, 'w') as f:
        f.attrs['kornia_version'] = np.bytes_(kornia.__version__.encode())
        f.attrs['torch_version'] = np.bytes_(torch.__version__.encode())
        f.attrs['generator'] = np.bytes_(b'tools/make_dacs_fixtures.py')
        ident = [1.0, 1.0, 1.0, 0.0]
        cases = [
            ('jitter_brightness', [1.17, 1.0, 1.0, 0.0], [0, 1, 2, 3]),
            ('jitter_contrast', [1.0, 0.83, 1.0, 0.0], [1, 0, 2, 3]),
            ('jitter_saturation', [1.0, 1.0, 1.19, 0.0], [2, 0, 1, 3]),
            ('jitter_hue_neg', [1.0, 1.0, 1.0, -0.17], [3, 0, 1, 2]),
            ('jitter_hue_pos', [1.0, 1.0, 1.0, 0.19], [3, 0, 1, 2]),
            ('jitter_all_a', [0.86, 1.12, 0.81, 0.08], [2, 3, 0, 1]),
            ('jitter_all_b', [1.13, 0.91, 1.15, -0.12], [1, 3, 2, 0]),
            ('jitter_identity', ident, [0, 1, 2, 3]),
        ]
        for name, params, order in cases:
            x = image(rng, 9, 13)
            y = jitter(x, params, order)
            g = f.create_group(name)
            g.create_dataset('x', data=nhwc(x))
            g.create_dataset('y', data=nhwc(y))
            g.create_dataset('params', data=np.array(params, dtype=np.float32))
            g.create_dataset('order', data=np.array(order, dtype=np.uint8))
        for name, (h, w), sigma in [('blur_30x47', (30, 47), 1.07), ('blur_64x23', (64, 23), 0.61)]:
            x = image(rng, h, w)
            y, ks = blur(x, sigma)
            g = f.create_group(name)
            g.create_dataset('x', data=nhwc(x))
            g.create_dataset('y', data=nhwc(y))
            g.attrs['sigma'] = np.float64(sigma)
            g.attrs['kernel_h'] = np.int32(ks[0])
            g.attrs['kernel_w'] = np.int32(ks[1])
    print('wrote', path)


if __name__ == '__main__':
    main()
