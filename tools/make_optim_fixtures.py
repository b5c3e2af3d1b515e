#!/usr/bin/env python3
"""Fixtures for tests/unit/test_optim.c: torch.optim.AdamW steps and the mmcv LR schedule.

Usage (by hand, not part of the build):

    python tools/make_optim_fixtures.py --out tests/fixtures

Writes tests/fixtures/optim.h5 with two groups.

``adamw``
  Six small float32 tensors, named like cluda parameters, are torch Parameters in four
  torch param groups that reproduce cluda's per-entry settings: (encoder, decayed),
  (encoder, no_decay), (head, decayed), (head, no_decay); encoder lr = LR[s], head lr =
  10 * LR[s], weight_decay 0.01 or 0. ``torch.optim.AdamW(foreach=False)`` (the per-tensor
  float32 path) runs STEPS steps on the CPU; before step s (1-based) every group's lr is set
  to the step's value, as a scheduler would. Per tensor (subgroup ``adamw/<i>``, attributes
  name, group (0 encoder, 1 head), no_decay) it stores, flattened to 1-D float32:
  ``p0`` initial values, ``grads`` [STEPS, n], ``p_steps`` [STEPS, n] values after each
  step, and ``m``, ``v`` (exp_avg, exp_avg_sq) after the last step. The per-step lrs are
  attributes ``lr_enc_<s>`` / ``lr_head_<s>`` (s = 1..STEPS, doubles) of ``adamw``; betas,
  eps and weight decay are attributes too. Gradient scales differ per tensor (1e-4 .. 10),
  some gradients are exactly 0 at some steps so eps matters.

``schedule``
  mmcv's PolyLrUpdaterHook with linear warm-up, reimplemented below from mmcv's
  LrUpdaterHook / PolyLrUpdaterHook source (mmcv is not imported): for each point k,
  attributes ``t_<k>`` (0-based iteration), ``enc_<k>``, ``head_<k>`` (doubles: the lr the
  hook sets before iteration t for base lrs 6e-5 and 6e-5 * 10). The schedule settings
  are attributes of the group.

File attributes: torch_version, numpy_version, h5py_version, python_version, generator.
"""

import argparse
import os
import platform
import sys

import h5py
import numpy as np
import torch

STEPS = 5
SEED = 20240531

# name, cluda shape (OHWI for convs), group (0 encoder, 1 head), no_decay, gradient scale
PARAMS = [
    ("backbone.patch_embed1.proj.weight", (4, 3, 3, 3), 0, 0, 1.0),
    ("backbone.block1.0.norm1.weight", (19,), 0, 1, 1e-2),
    ("backbone.block1.0.norm1.bias", (19,), 0, 1, 1e-4),
    ("decode_head.fuse_layer.bottleneck.conv.weight", (5, 1, 1, 13), 1, 0, 10.0),
    ("decode_head.fuse_layer.bottleneck.bn.weight", (5,), 1, 0, 1.0),
    ("decode_head.test.nodecay", (3,), 1, 1, 0.1),
]
BASE_LR = 1e-2
HEAD_MULT = 10.0
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.01


def step_lr(s):
    """Encoder lr of 1-based step s (decreasing, like a schedule)."""
    return BASE_LR * (1.0 - 0.15 * (s - 1))


def text(obj, key, value):
    """Fixed-length ASCII string attribute (simple to read from C)."""
    obj.attrs[key] = np.bytes_(str(value).encode("ascii"))


def make_adamw(f):
    rng = np.random.default_rng(SEED)
    tensors = []
    for name, shape, group, no_decay, scale in PARAMS:
        n = int(np.prod(shape))
        p0 = rng.standard_normal(n).astype(np.float32)
        grads = (scale * rng.standard_normal((STEPS, n))).astype(np.float32)
        grads[1, : max(1, n // 4)] = 0.0  # exact zeros: the update is m / (sqrt(v) + eps)
        tensors.append((name, group, no_decay, p0, grads))

    params = [torch.nn.Parameter(torch.from_numpy(t[3].copy())) for t in tensors]
    groups = []
    for group in (0, 1):
        for no_decay in (0, 1):
            members = [params[i] for i, t in enumerate(tensors) if t[1] == group and t[2] == no_decay]
            groups.append(
                {
                    "params": members,
                    "cluda_group": group,
                    "weight_decay": 0.0 if no_decay else WEIGHT_DECAY,
                }
            )
    opt = torch.optim.AdamW(groups, lr=BASE_LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY,
                            foreach=False)
    g = f.create_group("adamw")
    g.attrs["steps"] = STEPS
    g.attrs["beta1"] = BETAS[0]
    g.attrs["beta2"] = BETAS[1]
    g.attrs["eps"] = EPS
    g.attrs["weight_decay"] = WEIGHT_DECAY
    g.attrs["count"] = len(tensors)
    p_steps = [np.zeros((STEPS, t[3].size), np.float32) for t in tensors]
    for s in range(1, STEPS + 1):
        lr = step_lr(s)
        for pg in opt.param_groups:
            pg["lr"] = lr * HEAD_MULT if pg["cluda_group"] == 1 else lr
        g.attrs[f"lr_enc_{s}"] = lr
        g.attrs[f"lr_head_{s}"] = lr * HEAD_MULT
        for i, p in enumerate(params):
            p.grad = torch.from_numpy(tensors[i][4][s - 1].copy())
        opt.step()
        for i, p in enumerate(params):
            p_steps[i][s - 1] = p.detach().numpy()
    for i, (name, group, no_decay, p0, grads) in enumerate(tensors):
        c = g.create_group(str(i))
        text(c, "name", name)
        c.attrs["group"] = group
        c.attrs["no_decay"] = no_decay
        state = opt.state[params[i]]
        for key, arr in (("p0", p0), ("grads", grads), ("p_steps", p_steps[i]),
                         ("m", state["exp_avg"].numpy()), ("v", state["exp_avg_sq"].numpy())):
            c.create_dataset(key, data=np.asarray(arr, np.float32), dtype=np.float32)
        assert int(state["step"].item()) == STEPS


class PolyLr:
    """mmcv.runner.hooks.lr_updater: LrUpdaterHook + PolyLrUpdaterHook, by_epoch=False.

    before_train_iter: regular_lr = [get_lr(runner, base) for base in base_lr]; if warmup is
    None or cur_iter >= warmup_iters: set regular_lr, else set get_warmup_lr(cur_iter), which
    for 'linear' is k = (1 - cur_iters / warmup_iters) * (1 - warmup_ratio) and
    [_lr * (1 - k) for _lr in regular_lr] (the *regular* lr of this iteration, per group).
    PolyLrUpdaterHook.get_lr: coeff = (1 - progress / max_progress) ** power;
    (base_lr - min_lr) * coeff + min_lr.
    """

    def __init__(self, max_iters, power, min_lr, warmup, warmup_iters, warmup_ratio):
        self.max_iters, self.power, self.min_lr = max_iters, power, min_lr
        self.warmup, self.warmup_iters, self.warmup_ratio = warmup, warmup_iters, warmup_ratio

    def get_lr(self, progress, base_lr):
        coeff = (1 - progress / self.max_iters) ** self.power
        return (base_lr - self.min_lr) * coeff + self.min_lr

    def get_warmup_lr(self, cur_iters, regular_lr):
        if self.warmup == "constant":
            return [_lr * self.warmup_ratio for _lr in regular_lr]
        if self.warmup == "linear":
            k = (1 - cur_iters / self.warmup_iters) * (1 - self.warmup_ratio)
            return [_lr * (1 - k) for _lr in regular_lr]
        if self.warmup == "exp":
            k = self.warmup_ratio ** (1 - cur_iters / self.warmup_iters)
            return [_lr * k for _lr in regular_lr]
        raise ValueError(self.warmup)

    def lrs(self, cur_iter, base_lrs):
        regular = [self.get_lr(cur_iter, b) for b in base_lrs]
        if self.warmup is None or cur_iter >= self.warmup_iters:
            return regular
        return self.get_warmup_lr(cur_iter, regular)


def make_schedule(f):
    sched = PolyLr(max_iters=40000, power=1.0, min_lr=0.0, warmup="linear", warmup_iters=1500,
                   warmup_ratio=1e-6)
    base = 6e-05
    base_lrs = [base, base * 10.0]  # DefaultOptimizerConstructor: base_lr * lr_mult
    g = f.create_group("schedule")
    for k, v in (("max_iters", 40000), ("power", 1.0), ("min_lr", 0.0), ("warmup_iters", 1500),
                 ("warmup_ratio", 1e-6), ("base_lr", base), ("head_lr_mult", 10.0)):
        g.attrs[k] = v
    text(g, "warmup", "linear")
    points = [0, 1, 2, 749, 750, 1000, 1499, 1500, 1501, 20000, 39999, 40000]
    g.attrs["points"] = len(points)
    for k, t in enumerate(points):
        enc, head = sched.lrs(t, base_lrs)
        g.attrs[f"t_{k}"] = t
        g.attrs[f"enc_{k}"] = enc
        g.attrs[f"head_{k}"] = head


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                  "fixtures"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = os.path.join(args.out, "optim.h5")
    with h5py.File(path, "w", libver="earliest") as f:
        text(f, "generator", "tools/make_optim_fixtures.py")
        text(f, "torch_version", str(torch.__version__))
        text(f, "numpy_version", np.__version__)
        text(f, "h5py_version", h5py.__version__)
        text(f, "python_version", platform.python_version())
        make_adamw(f)
        make_schedule(f)
    print(f"wrote {path} (torch {torch.__version__}, python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
