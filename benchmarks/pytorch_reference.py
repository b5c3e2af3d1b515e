#!/usr/bin/env python3
"""The CLUDA training step in plain PyTorch, for timing against cluda and checking its losses.

Timing (default): MiT (Hugging Face transformers SegformerModel, MiT-B5 by default) + the
DAFormer head (shared/spec/model.md section 2), trained with the losses of one CLUDA step in the
order of cluda's trainer (src/train/trainer.c, paper Figure 1, algorithm.md 6.6):

  ema      EMA teacher (alpha_t = min(1 - 1/(t+1), 0.999); a copy at t = 0)
  src_fwd  student forward on the source crop + CE (logits upsampled bilinearly, mean over
           all pixels, ignored ones included: decisions.md 18)
  fd       frozen ImageNet encoder forward + thing-class feature distance (lambda 0.005,
           cells with a thing class at >= 0.75; a mean over no cell is 0: decisions.md 19)
  cl_src   pixel-contrastive loss on the fused features (resized to --cl-size bilinearly with
           align_corners=True, L2-normalised, labels by legacy nearest; paper Eq. 2 with
           SEPARATE stuff/thing negatives, tau 1, mean over all anchors: decisions.md 3-12),
           forward and backward to the fused features
  src_bwd  backward of CE + FD + the fused-feature gradient
  teacher  teacher forward on the target crop (dropout / drop path off, BN batch statistics),
           pseudo-labels, Gamma = fraction of max-probabilities >= 0.968, margins
  mix_aug  ClassMix (half the classes of the batch's source labels per image), colour jitter
           (80 %) and Gaussian blur (50 %) as kornia 0.5 / DACS
  mix_fwd  student forward on the mixed image + CE weighted by 1 / Gamma / 0
  cl_mix   mixed contrastive loss, target anchors x Gamma (decision 11)
  mix_bwd  backward of the mixed terms
  optim    zero_grad and the lr of the iteration (at the start), AdamW (lr 6e-5, head x10,
           weight decay 0.01 except encoder norms; warm-up 1500 + poly schedule)

The contrastive loss is the straightforward materialised version (M x M similarity and masks).
Its backward to the fused features is taken on its own (a detached copy of the fused map) so
that its cost lands in cl_src / cl_mix as in cluda's stage timing; the gradients are those of
one backward of the sum. Batches are random tensors made on the device before timing (no data
loading is timed). Output: a table and RESULT lines

  RESULT name=pytorch_step encoder=E device=D precision=P batch=B crop=C cl=S stage=STAGE ms=T pct=X
  RESULT name=pytorch_step ... stage=total ms=T images_per_s=R peak_mib=M steps=N params=P
  RESULT name=pytorch_flops ... gflop_per_step=G tflops=F        (with --count-flops)

images/s counts source + target images (2 x --batch per step). Peak memory:
torch.cuda.max_memory_allocated over the timed steps on CUDA, ru_maxrss of the process on the CPU.

Check (--check FILE): FILE is written by build/bin/bench_step_check (one cluda_trainer_step of
the tiny network with the procedural "cluda-hash-v1" weights of tools/make_model_fixtures.py,
dropout, drop path and augmentation off, the ClassMix masks and the pseudo-label threshold
stored). The same weights are generated here, the same step runs in float64 (and float32 for
comparison), and the five loss terms, Gamma, the pseudo-labels, the gradient norm and every
parameter gradient are compared. Exit status 1 when a loss term or the gradient norm differs
from cluda's by more than 1e-4 (relative), Gamma or a pseudo-label differs, or a parameter
gradient differs by more than 1e-3 (relative L2).

Needs torch, transformers (and for --check h5py and numpy).
"""
import argparse
import copy
import math
import os
import random
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import SegformerConfig, SegformerModel

# MiT presets (model.md 1.1, 10): embed dims, depths, heads; SR ratios 8, 4, 2, 1 for all.
MIT = {
    "tiny": ([16, 32, 64, 128], [2, 2, 2, 2], [1, 1, 2, 4]),
    "b0": ([32, 64, 160, 256], [2, 2, 2, 2], [1, 2, 5, 8]),
    "b1": ([64, 128, 320, 512], [2, 2, 2, 2], [1, 2, 5, 8]),
    "b2": ([64, 128, 320, 512], [3, 4, 6, 3], [1, 2, 5, 8]),
    "b3": ([64, 128, 320, 512], [3, 4, 18, 3], [1, 2, 5, 8]),
    "b4": ([64, 128, 320, 512], [3, 8, 27, 3], [1, 2, 5, 8]),
    "b5": ([64, 128, 320, 512], [3, 6, 40, 3], [1, 2, 5, 8]),
}
SR_RATIOS = [8, 4, 2, 1]
HEAD_DIMS = {"tiny": (64, 64)}  # (E, Cf); the others: CLUDA's E = 512, Cf = 256
NUM_CLASSES = 19
IGNORE = 255
THING_CLASSES = [6, 7, 11, 12, 13, 14, 15, 16, 17, 18]  # decisions.md 7; also the FD classes
IMAGE_MEAN = (123.675, 116.28, 103.53)
IMAGE_STD = (58.395, 57.12, 57.375)
STAGES = ["ema", "src_fwd", "fd", "cl_src", "src_bwd", "teacher", "mix_aug", "mix_fwd",
          "cl_mix", "mix_bwd", "optim"]
TOLERANCE_LOSS = 1e-4
TOLERANCE_GRAD = 1e-3


# ---------------------------------------------------------------------------------------
# network: MiT (Hugging Face) + DAFormer head (model.md 2, mmseg module names)


class ConvModule(nn.Module):
    """mmcv ConvModule: conv (no bias) -> BN -> ReLU."""

    def __init__(self, cin, cout, k, padding=0, dilation=1, groups=1, bn_eps=1e-5):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=padding, dilation=dilation, groups=groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=bn_eps)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class DepthwiseSeparableConvModule(nn.Module):
    def __init__(self, cin, cout, dilation, bn_eps):
        super().__init__()
        self.depthwise_conv = ConvModule(cin, cin, 3, padding=dilation, dilation=dilation,
                                         groups=cin, bn_eps=bn_eps)
        self.pointwise_conv = ConvModule(cin, cout, 1, bn_eps=bn_eps)

    def forward(self, x):
        return self.pointwise_conv(self.depthwise_conv(x))


class ASPPWrapper(nn.Module):
    """DAFormer's sep-ASPP fusion: no pooling branch, no context layer."""

    def __init__(self, cin, cf, dilations, bn_eps):
        super().__init__()
        mods = [ConvModule(cin, cf, 1, bn_eps=bn_eps)]
        mods += [DepthwiseSeparableConvModule(cin, cf, d, bn_eps) for d in dilations[1:]]
        self.aspp_modules = nn.ModuleList(mods)
        self.bottleneck = ConvModule(len(dilations) * cf, cf, 3, padding=1, bn_eps=bn_eps)

    def forward(self, x):
        return self.bottleneck(torch.cat([m(x) for m in self.aspp_modules], dim=1))


class MLPEmbed(nn.Module):
    def __init__(self, cin, e):
        super().__init__()
        self.proj = nn.Linear(cin, e)

    def forward(self, x):
        n, _, h, w = x.shape
        y = self.proj(x.flatten(2).transpose(1, 2))
        return y.transpose(1, 2).reshape(n, -1, h, w)


class DAFormerHead(nn.Module):
    def __init__(self, in_channels, e, cf, num_classes, dilations, dropout, bn_eps):
        super().__init__()
        self.embed_layers = nn.ModuleList([MLPEmbed(c, e) for c in in_channels])
        self.fuse_layer = ASPPWrapper(4 * e, cf, dilations, bn_eps)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(cf, num_classes, 1)

    def forward(self, feats):
        size = feats[0].shape[2:]
        es = [self.embed_layers[0](feats[0])]
        for f, layer in zip(feats[1:], self.embed_layers[1:]):
            es.append(F.interpolate(layer(f), size=size, mode="bilinear", align_corners=False))
        fused = self.fuse_layer(torch.cat(es, dim=1))
        return fused, self.conv_seg(self.dropout(fused))


class Segmentor(nn.Module):
    """Returns the four encoder stages, the fused features (what CLUDA contrasts) and the
    logits at stride 4."""

    def __init__(self, dims, depths, heads, e, cf, dilations=(1, 6, 12, 18), dropout=0.1,
                 drop_path=0.1, block_eps=1e-6, patch_eps=1e-5, bn_eps=1e-5):
        super().__init__()
        cfg = SegformerConfig(hidden_sizes=[int(d) for d in dims], depths=[int(d) for d in depths],
                              num_attention_heads=[int(h) for h in heads], sr_ratios=SR_RATIOS,
                              mlp_ratios=[4] * 4, hidden_dropout_prob=0.0,
                              attention_probs_dropout_prob=0.0, drop_path_rate=drop_path,
                              num_labels=NUM_CLASSES)
        self.backbone = SegformerModel(cfg)
        # mmseg's MiT: eps 1e-6 in the block and stage norms, 1e-5 in the patch-embedding and
        # SR norms (model.md 1.3); Hugging Face builds every one with 1e-5.
        for name, mod in self.backbone.named_modules():
            if isinstance(mod, nn.LayerNorm):
                patch = any(k in name for k in ("patch_embeddings", "sequence_reduction",
                                                "attention.self.layer_norm"))
                mod.eps = patch_eps if patch else block_eps
        self.decode_head = DAFormerHead(dims, e, cf, NUM_CLASSES, dilations, dropout, bn_eps)

    def forward(self, x):
        enc = list(self.backbone(x, output_hidden_states=True).hidden_states)
        fused, logits = self.decode_head(enc)
        return enc, fused, logits


def stochastic_off(model):
    """Dropout and drop path to eval mode; BatchNorm stays in training mode (the teacher while
    pseudo-labelling, decisions.md 17)."""
    for m in model.modules():
        if isinstance(m, (nn.Dropout, nn.Dropout2d)) or type(m).__name__.endswith("DropPath"):
            m.eval()


# ---------------------------------------------------------------------------------------
# loss terms


def widen(t):
    """bf16 (autocast) -> float32; float32 / float64 unchanged (the check runs in float64)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def seg_ce(logits, labels, weight=None):
    """mmseg CE: logits upsampled to the labels, per-pixel loss x weight, mean over all pixels."""
    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(widen(up), labels, ignore_index=IGNORE, reduction="none")
    if weight is not None:
        loss = loss * weight
    return loss.mean()


def downscale_label_ratio(labels, scale, min_ratio):
    """DAFormer's FD cell labels: majority class per scale x scale cell (255 as an extra class),
    255 when that is the ignore class or covers less than min_ratio of the cell."""
    lbl = labels.clone()
    lbl[lbl == IGNORE] = NUM_CLASSES
    onehot = F.one_hot(lbl, NUM_CLASSES + 1).permute(0, 3, 1, 2).float()
    ratio, cells = F.avg_pool2d(onehot, scale).max(dim=1)
    cells[(cells == NUM_CLASSES) | (ratio < min_ratio)] = IGNORE
    return cells


def feature_distance(f_student, f_imnet, labels, things, min_ratio=0.75, lam=0.005):
    """lambda x mean over thing cells of ||f_student - f_imnet||_2 (not squared); 0 without a
    thing cell (decisions.md 19, and no host sync). Returns (loss, number of cells)."""
    cells = downscale_label_ratio(labels, labels.shape[-1] // f_student.shape[-1], min_ratio)
    mask = torch.isin(cells, things)
    dist = torch.linalg.vector_norm(widen(f_student) - widen(f_imnet), dim=1)
    count = mask.sum()
    return lam * (dist * mask).sum() / count.clamp(min=1), count


def pixel_contrastive(fused, labels, cl_size, thing_table, weights=None, tau=1.0,
                      loss_weight=1.0):
    """Paper Eq. 2 with SEPARATE pairs (decisions.md 3-12), materialised: every pixel of the
    cl_size map is an anchor; positives share its label (not itself); negatives have another
    label of the same group (stuff / thing); ignored pixels are neither. Per anchor: mean over
    positives p of -log(e^s_ip / (e^s_ip + sum_n e^s_in)), times the anchor weight; the loss is
    loss_weight x sum over anchors / all anchors (ignored rows included)."""
    c = fused.shape[1]
    f = F.interpolate(fused, size=cl_size, mode="bilinear", align_corners=True)
    f = F.normalize(f.permute(0, 2, 3, 1).reshape(-1, c), dim=1, eps=1e-12)
    y = F.interpolate(labels[:, None].float(), size=cl_size, mode="nearest").long().reshape(-1)
    s = f @ f.t() / tau
    valid = y != IGNORE
    group = thing_table[y]
    same = y[:, None] == y[None, :]
    pair_valid = valid[:, None] & valid[None, :]
    pos = same & pair_valid
    pos.fill_diagonal_(False)
    neg = ~same & pair_valid & (group[:, None] == group[None, :])
    rel = s - s.detach().max(dim=1, keepdim=True).values  # the row max cancels; stability only
    e = torch.exp(rel)
    neg_sum = (e * neg).sum(dim=1, keepdim=True)
    l_pair = torch.log(e + neg_sum) - rel
    per_anchor = (l_pair * pos).sum(dim=1) / pos.sum(dim=1).clamp(min=1)
    if weights is not None:
        w = F.interpolate(weights[:, None], size=cl_size, mode="bilinear", align_corners=True)
        per_anchor = per_anchor * w.reshape(-1)
    return loss_weight * per_anchor.sum() / y.numel()


# ---------------------------------------------------------------------------------------
# self-training pieces


@torch.no_grad()
def ema_update(teacher, student, it, alpha):
    """theta_T = a theta_T + (1 - a) theta_S, a = min(1 - 1/(t+1), alpha): a copy at t = 0.
    Parameters only; BN buffers are not averaged (algorithm.md 1.3)."""
    a = min(1.0 - 1.0 / (it + 1), alpha)
    tp, sp = list(teacher.parameters()), list(student.parameters())
    torch._foreach_mul_(tp, a)
    torch._foreach_add_(tp, sp, alpha=1.0 - a)


@torch.no_grad()
def pseudo_labels(teacher, tgt_img, threshold, ignore_top, ignore_bottom):
    """Teacher argmax labels and the pixel weights Gamma (0 in the margins), Gamma = fraction of
    max-probabilities >= threshold over the batch (paper Eq. 4)."""
    _, _, logits = teacher(tgt_img)
    up = F.interpolate(widen(logits), size=tgt_img.shape[-2:], mode="bilinear",
                       align_corners=False)
    prob, label = torch.softmax(up, dim=1).max(dim=1)
    gamma = (prob >= threshold).float().mean()
    weight = gamma * torch.ones_like(prob)
    if ignore_top > 0:
        weight[:, :ignore_top] = 0
    if ignore_bottom > 0:
        weight[:, -ignore_bottom:] = 0
    return label, prob, gamma, weight


def classmix_masks(src_lbl):
    """DACS ClassMix: per image, (n + n % 2) / 2 of the n classes present in the whole batch of
    source labels (255 included), uniformly without replacement; 1 where the source label is
    a chosen class."""
    classes = torch.unique(src_lbl)
    n = classes.numel()
    masks = []
    for lbl in src_lbl:
        chosen = classes[torch.randperm(n, device=classes.device)[: (n + n % 2) // 2]]
        masks.append(torch.isin(lbl, chosen))
    return torch.stack(masks)


def classmix(mask, src, tgt):
    """mask x src + (1 - mask) x tgt; mask [B, H, W], images get a channel axis."""
    m = mask if src.dim() == mask.dim() else mask[:, None]
    return torch.where(m, src, tgt)


def rgb_to_hsv(rgb, eps=1e-6):
    """kornia 0.5: H in radians from the first channel holding the maximum, S = delta / (V +
    eps), V = max. rgb [3, H, W] in [0, 1]."""
    maxc, _ = rgb.max(dim=0)
    minc, _ = rgb.min(dim=0)
    is_max = rgb == maxc
    first = ((is_max.cumsum(dim=0) == 1) & is_max).to(torch.uint8).argmax(dim=0, keepdim=True)
    delta = maxc - minc
    sat = delta / (maxc + eps)
    delta = torch.where(delta == 0, torch.ones_like(delta), delta)
    r, g, b = maxc - rgb
    hue = torch.stack([b - g, 2.0 * delta + r - b, 4.0 * delta + g - r])
    hue = torch.gather(hue, 0, first)[0] / delta
    hue = 2 * math.pi * ((hue / 6.0) % 1.0)
    return torch.stack([hue, sat, maxc])


def hsv_to_rgb(hsv):
    """kornia 0.5's inverse of rgb_to_hsv."""
    h, s, v = hsv[0] / (2 * math.pi), hsv[1], hsv[2]
    hi = torch.floor(h * 6) % 6
    f = (h * 6) % 6 - hi
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    hi = hi.long()
    table = torch.stack([v, q, p, p, t, v, t, v, v, q, p, p, p, p, t, v, v, q])
    return torch.gather(table, 0, torch.stack([hi, hi + 6, hi + 12]))


def color_jitter(img, strength, mean, std):
    """kornia 0.5 ColorJitter(s, s, s, s) per image of normalised img [B, 3, H, W]: brightness
    (additive), contrast, saturation, hue in a random order, on [0, 1]; renormalised."""
    out = []
    for x in img:
        x = (x * std + mean) / 255.0
        b, c, s = (random.uniform(max(0.0, 1 - strength), 1 + strength) for _ in range(3))
        h = random.uniform(-strength, strength)
        for op in torch.randperm(4).tolist():
            if op == 0:
                x = (x + (b - 1)).clamp(0, 1)
            elif op == 1:
                x = (x * c).clamp(0, 1)
            else:
                hsv = rgb_to_hsv(x)
                if op == 2:
                    hsv = torch.stack([hsv[0], (hsv[1] * s).clamp(0, 1), hsv[2]])
                else:
                    hsv = torch.stack([torch.fmod(hsv[0] + 2 * math.pi * h, 2 * math.pi),
                                       hsv[1], hsv[2]])
                x = hsv_to_rgb(hsv)
        out.append((x * 255.0 - mean) / std)
    return torch.stack(out)


def blur_kernel_size(length):
    c = math.ceil(0.1 * length)
    return c - 1 if c % 2 == 0 else c


def gaussian_blur(img, sigma_range=(0.15, 1.15)):
    """kornia GaussianBlur2d per image, sigma ~ U(sigma_range), kernel sizes from the image size
    (51 for 512), reflect border, separable."""
    _, ch, hgt, wid = img.shape
    kh, kw = blur_kernel_size(hgt), blur_kernel_size(wid)
    out = []
    for x in img:
        sigma = random.uniform(*sigma_range)
        ks = []
        for k in (kh, kw):
            pos = torch.arange(k, dtype=torch.float64) - k // 2 + (0.5 if k % 2 == 0 else 0.0)
            w = torch.exp(-pos ** 2 / (2 * sigma ** 2))
            ks.append((w / w.sum()).to(img))
        y = F.pad(x[None], (kw // 2, kw // 2, kh // 2, kh // 2), mode="reflect")
        y = F.conv2d(y, ks[1].view(1, 1, 1, kw).expand(ch, 1, 1, kw), groups=ch)
        y = F.conv2d(y, ks[0].view(1, 1, kh, 1).expand(ch, 1, kh, 1), groups=ch)
        out.append(y[0])
    return torch.stack(out)


def strong_augment(img):
    """DACS strong_transform of the mixed image: colour jitter when a per-iteration coin is
    > 0.2, then blur when another is > 0.5."""
    mean = torch.tensor(IMAGE_MEAN, device=img.device).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=img.device).view(3, 1, 1)
    if random.random() > 0.2:
        img = color_jitter(img, 0.2, mean, std)
    if random.random() > 0.5:
        img = gaussian_blur(img)
    return img


# ---------------------------------------------------------------------------------------
# the step


class StageTimer:
    """Per-stage times of one step: CUDA events on the GPU (no synchronisation inside the
    step), perf_counter on the CPU. No-op when disabled."""

    def __init__(self, device, enabled):
        self.cuda = device.type == "cuda"
        self.enabled = enabled
        self.marks = []

    def _now(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def start(self):
        if self.enabled:
            self.marks = [("", self._now())]

    def lap(self, stage):
        if self.enabled:
            self.marks.append((stage, self._now()))

    def seconds(self):
        """{stage: seconds} of the step (synchronises)."""
        if self.cuda:
            torch.cuda.synchronize()
        out = dict.fromkeys(STAGES, 0.0)
        for (_, a), (stage, b) in zip(self.marks, self.marks[1:]):
            out[stage] += a.elapsed_time(b) / 1e3 if self.cuda else b - a
        return out


class Run:
    """Student, EMA teacher, frozen ImageNet encoder (FD), optimizer and step settings."""

    def __init__(self, student, imnet, args, device):
        self.student = student
        self.teacher = copy.deepcopy(student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        stochastic_off(self.teacher)
        self.imnet = imnet.eval()
        for p in self.imnet.parameters():
            p.requires_grad_(False)
        self.device = device
        self.autocast = args.precision == "bf16"
        self.cl_size = tuple(args.cl_size)
        self.threshold = args.pseudo_threshold
        self.fd_lambda = args.fd_lambda
        self.ignore_top, self.ignore_bottom = args.ignore_top, args.ignore_bottom
        self.augment = args.augment
        self.ema_alpha = 0.999
        self.things = torch.tensor(THING_CLASSES, device=device)
        self.thing_table = torch.zeros(256, dtype=torch.bool, device=device)
        self.thing_table[self.things] = True
        # mmcv custom_keys: "head" lr x 10; "norm" (the encoder's LayerNorms) no decay
        enc_decay, enc_norm, head = [], [], []
        for name, p in student.named_parameters():
            (head if name.startswith("decode_head.") else
             enc_norm if "norm" in name else enc_decay).append(p)
        self.base_lrs = [6e-5, 6e-5, 6e-4]
        self.opt = torch.optim.AdamW(
            [{"params": enc_decay, "weight_decay": 0.01}, {"params": enc_norm, "weight_decay": 0.0},
             {"params": head, "weight_decay": 0.01}],
            lr=6e-5, betas=(0.9, 0.999), eps=1e-8)

    def set_lr(self, it, max_iters=40000, warmup=1500, warmup_ratio=1e-6):
        """mmcv poly (power 1) with linear warm-up (algorithm.md 4.2)."""
        for g, base in zip(self.opt.param_groups, self.base_lrs):
            lr = base * (1 - it / max_iters)
            if it < warmup:
                lr *= 1 - (1 - it / warmup) * (1 - warmup_ratio)
            g["lr"] = lr

    def amp(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast)

    def step(self, it, batch, timer, mix_mask=None):
        """One CLUDA iteration. Returns the loss terms and Gamma as 0-d tensors (no sync), and
        (for the check) the FD cell count, the pseudo-labels and their max-probabilities.
        mix_mask: fixed ClassMix masks (the check) instead of drawn ones."""
        src_img, src_lbl, tgt_img = batch
        s = self.student
        timer.start()
        ema_update(self.teacher, s, it, self.ema_alpha)
        timer.lap("ema")
        self.opt.zero_grad(set_to_none=True)
        self.set_lr(it)
        timer.lap("optim")
        # source: CE, FD, CL; one backward
        with self.amp():
            enc, fused, logits = s(src_img)
            loss_src = seg_ce(logits, src_lbl)
        timer.lap("src_fwd")
        with torch.no_grad(), self.amp():
            f_imnet = self.imnet(src_img).last_hidden_state
        loss_fd, fd_cells = feature_distance(enc[3], f_imnet, src_lbl, self.things,
                                             lam=self.fd_lambda)
        timer.lap("fd")
        fused_d = fused.detach().requires_grad_(True)
        with self.amp():
            loss_cl_src = pixel_contrastive(fused_d, src_lbl, self.cl_size, self.thing_table)
        loss_cl_src.backward()
        timer.lap("cl_src")
        torch.autograd.backward([loss_src + loss_fd, fused], [None, fused_d.grad])
        timer.lap("src_bwd")
        # teacher pseudo-labels, ClassMix, augmentation
        with self.amp():
            pl, p_hat, gamma, pl_weight = pseudo_labels(self.teacher, tgt_img, self.threshold,
                                                        self.ignore_top, self.ignore_bottom)
        timer.lap("teacher")
        if mix_mask is None:
            mix_mask = classmix_masks(src_lbl)
        mix_img = classmix(mix_mask, src_img, tgt_img)
        mix_lbl = classmix(mix_mask, src_lbl, pl)
        mix_w = classmix(mix_mask, torch.ones_like(pl_weight), pl_weight)
        if self.augment:
            mix_img = strong_augment(mix_img)
        timer.lap("mix_aug")
        # mixed: weighted CE, CL with target anchors x Gamma; one backward
        with self.amp():
            _, fused, logits = s(mix_img)
            loss_mix = seg_ce(logits, mix_lbl, mix_w)
        timer.lap("mix_fwd")
        fused_d = fused.detach().requires_grad_(True)
        with self.amp():
            loss_cl_mix = pixel_contrastive(fused_d, mix_lbl, self.cl_size, self.thing_table,
                                            weights=mix_w)
        loss_cl_mix.backward()
        timer.lap("cl_mix")
        torch.autograd.backward([loss_mix, fused], [None, fused_d.grad])
        timer.lap("mix_bwd")
        self.opt.step()
        timer.lap("optim")
        losses = dict(loss_src=loss_src, loss_fd=loss_fd, loss_cl_src=loss_cl_src,
                      loss_mix=loss_mix, loss_cl_mix=loss_cl_mix, gamma=gamma)
        return losses, dict(fd_cells=fd_cells, pseudo_labels=pl, p_hat=p_hat)


# ---------------------------------------------------------------------------------------
# timing mode


def random_batches(n, batch, crop, device, gen):
    """n (source image, source labels, target image) triples: normalised-scale noise images and
    labels drawn per 32 x 32 cell (whole FD cells, a few ignored), so every term has work."""
    out = []
    for _ in range(n):
        cells = torch.randint(0, NUM_CLASSES, (batch, crop // 32, crop // 32), generator=gen)
        cells[torch.rand(cells.shape, generator=gen) < 0.1] = IGNORE
        lbl = cells.repeat_interleave(32, 1).repeat_interleave(32, 2)
        src = torch.randn(batch, 3, crop, crop, generator=gen)
        tgt = torch.randn(batch, 3, crop, crop, generator=gen)
        out.append((src.to(device), lbl.to(device), tgt.to(device)))
    return out


def build(args, device):
    dims, depths, heads = MIT[args.encoder]
    e, cf = HEAD_DIMS.get(args.encoder, (512, 256))
    student = Segmentor(dims, depths, heads, args.embed_dims or e, args.channels or cf).to(device)
    return student, copy.deepcopy(student.backbone)


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                        transposed, _output_padding, _groups, output_mask, out_shape=None,
                        **_kwargs):
    """FLOPs of aten.convolution_backward for FlopCounterMode: each requested gradient (input,
    weight) costs what the forward costs, 2 x batch x prod(w_shape) x output pixels (input
    pixels when transposed); w_shape is [C_out, C_in / groups, kh, kw]. torch's own formula
    counts a grouped convolution's weight gradient as if it were dense (pytorch/pytorch#183405),
    groups times too much: 2048 x for the DAFormer head's depthwise convolutions at E = 512."""
    pixels = math.prod((x_shape if transposed else grad_out_shape)[2:])
    forward = 2 * x_shape[0] * math.prod(w_shape) * pixels
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def peak_mib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def timing(args):
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    else:
        torch.backends.cudnn.benchmark = True  # mmseg's default_runtime: cudnn_benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    student, imnet = build(args, device)
    run = Run(student, imnet, args, device)
    gen = torch.Generator().manual_seed(args.seed)
    batches = random_batches(4, args.batch, args.crop, device, gen)
    params = sum(p.numel() for p in student.parameters())
    tag = (f"encoder={args.encoder} device={device.type} precision={args.precision} "
           f"batch={args.batch} crop={args.crop} cl={args.cl_size[0]}")
    print(f"pytorch_reference: torch {torch.__version__}, {args.encoder} + DAFormer head "
          f"({params / 1e6:.2f} M parameters), {args.precision}, batch {args.batch}+{args.batch}, "
          f"{args.crop}x{args.crop}, CL {args.cl_size[0]}x{args.cl_size[1]}, {device}"
          + (f" ({torch.cuda.get_device_name(device)}; TF32 matmul "
             f"{torch.backends.cuda.matmul.allow_tf32}, cuDNN {torch.backends.cudnn.allow_tf32})"
             if device.type == "cuda" else f", {torch.get_num_threads()} threads"))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    timer = StageTimer(device, enabled=True)
    for it in range(args.warmup):
        run.step(it, batches[it % len(batches)], timer)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    totals, per_stage = [], {k: [] for k in STAGES}
    for k in range(args.steps):
        it = args.warmup + k
        t0 = time.perf_counter()
        losses, _ = run.step(it, batches[it % len(batches)], timer)
        sync()
        totals.append(time.perf_counter() - t0)
        for stage, sec in timer.seconds().items():
            per_stage[stage].append(sec)
    last = {k: float(v.detach()) for k, v in losses.items()}
    if not all(math.isfinite(v) for v in last.values()):
        print(f"pytorch_reference: non-finite loss in the last step: {last}", file=sys.stderr)
        return 1
    med = statistics.median(totals)
    mem = peak_mib(device)
    print(f"  {'stage':<10} {'ms':>10} {'%':>7}")
    for stage in STAGES:
        ms = 1e3 * statistics.median(per_stage[stage])
        print(f"  {stage:<10} {ms:10.2f} {100 * ms / (1e3 * med):7.1f}")
    print(f"  {'total':<10} {1e3 * med:10.2f} {100.0:7.1f}   (median of {args.steps}; min "
          f"{1e3 * min(totals):.2f}, max {1e3 * max(totals):.2f})")
    print(f"  images/s {2 * args.batch / med:.3f}, peak memory {mem:.0f} MiB, last losses "
          + " ".join(f"{k} {v:.4f}" for k, v in last.items()))
    for stage in STAGES:
        ms = 1e3 * statistics.median(per_stage[stage])
        print(f"RESULT name=pytorch_step {tag} stage={stage} ms={ms:.3f} "
              f"pct={100 * ms / (1e3 * med):.2f}")
    print(f"RESULT name=pytorch_step {tag} stage=total ms={1e3 * med:.3f} "
          f"images_per_s={2 * args.batch / med:.4f} peak_mib={mem:.0f} steps={args.steps} "
          f"params={params}")
    if args.count_flops:
        from torch.utils.flop_counter import FlopCounterMode
        counter = FlopCounterMode(
            display=False,
            custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops})
        with counter:
            run.step(args.warmup + args.steps, batches[0], StageTimer(device, enabled=False))
        sync()
        gflop = counter.get_total_flops() / 1e9
        print(f"  FLOPs of one step (FlopCounterMode: matmuls, convolutions, attention): "
              f"{gflop:.1f} GFLOP, {gflop / med / 1e3:.2f} TFLOP/s at the median step time")
        print(f"RESULT name=pytorch_flops {tag} gflop_per_step={gflop:.3f} "
              f"tflops={gflop / med / 1e3:.4f}")
    return 0


# ---------------------------------------------------------------------------------------
# check mode: bench_step_check's file


def load_check_file(path):
    import h5py
    import numpy as np
    with h5py.File(path, "r") as f:
        a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        if a.get("format") != "cluda-step-check":
            raise SystemExit(f"{path}: not a bench_step_check file (format {a.get('format')})")
        data = {k: f[k][...] for k in ("src_img", "tgt_img", "src_lbl", "mix_mask", "teacher_pl",
                                       "teacher_prob", "gen_scale_offset")}
        grads = {k: f["grad"][k][...] for k in f["grad"]}
    a["cl_thing_classes"] = np.atleast_1d(a["cl_thing_classes"]).tolist()
    a["fd_classes"] = np.atleast_1d(a["fd_classes"]).tolist()
    return a, data, grads


def procedural(net_module, seed, table, tools):
    """Every parameter and BN statistic of the module from generator cluda-hash-v1 with `seed`
    (cluda names and layouts, converted to the module's); table {cluda name: (scale, offset)}
    is bench_step_check's, checked against the script's own rules first."""
    import numpy as np
    net = tools.Net("daformer", net_module)
    shapes = {cn: a.shape for cn, a in tools.to_cluda_layout(net, tools.float_tensors(net)).items()}
    if set(shapes) != set(table):
        raise SystemExit("the network's tensors differ from bench_step_check's: only here "
                         f"{sorted(set(shapes) - set(table))[:5]}, only there "
                         f"{sorted(set(table) - set(shapes))[:5]}")
    for cn, shp in shapes.items():
        if tuple(tools.gen_kind(cn, shp)) != tuple(table[cn]):
            raise SystemExit(f"{cn}: generator scale/offset {table[cn]} in the file, "
                             f"{tools.gen_kind(cn, shp)} by tools/make_model_fixtures.py")
    arrays = {cn: tools.gen_values(cn, shp, seed, *table[cn]) for cn, shp in shapes.items()}
    with torch.no_grad():
        tensors = tools.float_tensors(net)
        for name, t in tools.from_cluda_layout(net, arrays).items():
            tensors[name].copy_(t)
    back = tools.to_cluda_layout(net, tools.float_tensors(net))
    assert all(np.array_equal(back[k], arrays[k]) for k in arrays)


def check_step(a, data, dtype, tools):
    """The step of the file in dtype: losses, pseudo-labels and the module's gradients."""
    import numpy as np
    dims, depths, heads = (a[k].tolist() for k in ("embed_dims", "depths", "heads"))
    if a["sr_ratios"].tolist() != SR_RATIOS:
        raise SystemExit(f"sr_ratios {list(a['sr_ratios'])} in the file; this script builds "
                         f"{SR_RATIOS}")

    def net():
        return Segmentor(dims, depths, heads, int(a["head_embed_dims"]), int(a["head_channels"]),
                         dilations=a["dilations"].tolist(), dropout=0.0, drop_path=0.0,
                         block_eps=float(a["block_norm_eps"]), patch_eps=float(a["patch_norm_eps"]),
                         bn_eps=float(a["bn_eps"]))

    names = a["gen_names"].split(",")
    table = {n: tuple(float(v) for v in so) for n, so in zip(names, data["gen_scale_offset"])}
    torch.manual_seed(0)  # module construction draws; every value is then replaced
    student, imnet = net(), net()
    procedural(student, int(a["gen_seed"]), table, tools)
    procedural(imnet, int(a["imnet_seed"]), table, tools)
    student.to(dtype).train()
    imnet.to(dtype)
    if tools.norm_eps_of(tools.Net("daformer", student)) != (a["block_norm_eps"],
                                                              a["patch_norm_eps"]):
        raise SystemExit("LayerNorm epsilons differ from the file's")
    if sorted(THING_CLASSES) != sorted(a["fd_classes"]) or \
            sorted(THING_CLASSES) != sorted(a["cl_thing_classes"]):
        raise SystemExit("thing classes differ from the file's")
    settings = argparse.Namespace(precision="fp32", cl_size=a["cl_size"].tolist(),
                                  pseudo_threshold=float(a["pseudo_threshold"]),
                                  fd_lambda=float(a["fd_lambda"]),
                                  ignore_top=int(a["ignore_top"]),
                                  ignore_bottom=int(a["ignore_bottom"]), augment=False)
    run = Run(student, imnet.backbone, settings, torch.device("cpu"))

    def nchw(x):
        return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))).to(dtype)

    src_lbl = torch.from_numpy(data["src_lbl"].astype(np.int64))
    batch = (nchw(data["src_img"]), src_lbl, nchw(data["tgt_img"]))
    mix_mask = torch.from_numpy(data["mix_mask"] != 0)
    losses, extra = run.step(0, batch, StageTimer(torch.device("cpu"), False), mix_mask=mix_mask)
    grads = tools.to_cluda_layout(tools.Net("daformer", student),
                                  {k: p.grad for k, p in student.named_parameters()})
    return ({k: float(v.detach()) for k, v in losses.items()}, extra["pseudo_labels"].numpy(),
            extra["p_hat"].numpy(), int(extra["fd_cells"]), grads)


def rel(got, want):
    return abs(got - want) / max(abs(want), 1e-30)


def check(args):
    import numpy as np
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
    import make_model_fixtures as tools  # the generator and the cluda <-> module name mapping

    torch.set_num_threads(args.threads)
    a, data, cluda_grads = load_check_file(args.check)
    print(f"pytorch_reference --check {args.check}: torch {torch.__version__}, "
          f"{a['encoder']} MiT + DAFormer head (E {a['head_embed_dims']}, Cf "
          f"{a['head_channels']}), batch {a['batch']}+{a['batch']}, {a['crop']}x{a['crop']}, "
          f"CL {a['cl_size'][0]}x{a['cl_size'][1]}, pseudo_threshold {a['pseudo_threshold']:.6f}")
    ref = {dt: check_step(a, data, dt, tools) for dt in (torch.float64, torch.float32)}
    losses64, pl64, prob64, cells64, grads64 = ref[torch.float64]
    losses32, _, _, _, grads32 = ref[torch.float32]

    def gnorm(g):
        return math.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in g.values()))

    failed = []
    print(f"  {'term':<12} {'cluda (f32)':>16} {'torch f64':>16} {'rel diff':>10} "
          f"{'torch f32 rel':>14}")
    rows = [(k, float(a[k]), losses64[k], losses32[k]) for k in
            ("loss_src", "loss_fd", "loss_cl_src", "loss_mix", "loss_cl_mix", "gamma")]
    rows.append(("grad_norm", float(a["grad_norm"]), gnorm(grads64), gnorm(grads32)))
    for name, got, want, w32 in rows:
        d = rel(got, want)
        bad = d > (0.0 if name == "gamma" else TOLERANCE_LOSS)
        failed += [name] if bad else []
        print(f"  {name:<12} {got:16.9g} {want:16.9g} {d:10.2e} {rel(w32, want):14.2e}"
              + ("   FAIL" if bad else ""))
        print(f"RESULT name=step_check term={name} cluda={got:.9g} torch={want:.9g} rel={d:.3e} "
              f"torch_f32_rel={rel(w32, want):.3e}")
    pl_diff = int((pl64 != data["teacher_pl"]).sum())
    prob_diff = float(np.abs(prob64 - data["teacher_prob"]).max())
    margin = float(np.abs(prob64 - a["pseudo_threshold"]).min())
    print(f"  pseudo-labels: {pl_diff} of {pl64.size} differ; max |p_hat diff| {prob_diff:.2e}; "
          f"nearest p_hat to the threshold {margin:.2e} away")
    print(f"  FD cells: cluda {a['fd_cells']}, torch {cells64}")
    print(f"RESULT name=step_check term=pseudo_labels differ={pl_diff} p_hat_max_abs={prob_diff:.3e}"
          f" threshold_margin={margin:.3e}")
    failed += ["pseudo_labels"] if pl_diff else []
    failed += ["fd_cells"] if cells64 != int(a["fd_cells"]) else []
    if set(cluda_grads) != set(grads64):
        raise SystemExit(f"gradients: only in the file {sorted(set(cluda_grads) - set(grads64))[:5]}"
                         f", only here {sorted(set(grads64) - set(cluda_grads))[:5]}")
    worst, worst_name, worst32 = 0.0, "", 0.0
    for name, want in grads64.items():
        want = want.astype(np.float64)
        scale = max(float(np.linalg.norm(want)), 1e-30)
        d = float(np.linalg.norm(cluda_grads[name].astype(np.float64) - want)) / scale
        d32 = float(np.linalg.norm(grads32[name].astype(np.float64) - want)) / scale
        worst32 = max(worst32, d32)
        if d > worst:
            worst, worst_name = d, name
    print(f"  parameter gradients ({len(grads64)}): worst relative L2 difference {worst:.2e} "
          f"({worst_name}); torch f32 vs f64 worst {worst32:.2e}")
    print(f"RESULT name=step_check term=param_grads worst_rel={worst:.3e} worst={worst_name} "
          f"torch_f32_worst_rel={worst32:.3e}")
    failed += ["param_grads"] if worst > TOLERANCE_GRAD else []
    if failed:
        print(f"  FAILED: {', '.join(failed)} (losses and gradient norm within {TOLERANCE_LOSS:g}"
              f", Gamma and pseudo-labels exact, parameter gradients within {TOLERANCE_GRAD:g})")
        return 1
    print(f"  OK: every loss term and the gradient norm within {TOLERANCE_LOSS:g}, Gamma and "
          f"pseudo-labels exact, parameter gradients within {TOLERANCE_GRAD:g}")
    return 0


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Examples: %(prog)s --encoder tiny --crop 64 --batch 1 --cl-size 16 --device cpu"
               " --steps 20 --warmup 3;  %(prog)s --device cuda --precision bf16 --count-flops;"
               "  build/bin/bench_step_check --out /tmp/sc.h5 && %(prog)s --check /tmp/sc.h5")
    ap.add_argument("--encoder", choices=sorted(MIT), default="b5",
                    help="MiT variant (tiny = cluda's CPU-test encoder, model.md 10)")
    ap.add_argument("--embed-dims", type=int, default=0,
                    help="DAFormer head embedding width E (default: 512, tiny 64)")
    ap.add_argument("--channels", type=int, default=0,
                    help="fused feature width Cf (default: 256, tiny 64)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda", help="(default cuda)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: torch.autocast(bfloat16) around forwards and losses")
    ap.add_argument("--batch", type=int, default=2, help="images per domain (source = target)")
    ap.add_argument("--crop", type=int, default=512, help="square crop, a multiple of 32")
    ap.add_argument("--cl-size", type=int, nargs=2, default=[65, 65], metavar=("H", "W"),
                    help="contrast map size (cl.size)")
    ap.add_argument("--tf32", action="store_true",
                    help="CUDA: allow TF32 in float32 matmuls too (PyTorch's default: convolutions "
                         "only)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps (the median is reported)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")),
                    help="CPU threads (default $OMP_NUM_THREADS, else 2)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the random batches, ClassMix and augmentation draws")
    ap.add_argument("--pseudo-threshold", type=float, default=0.968,
                    help="confidence threshold of Gamma")
    ap.add_argument("--fd-lambda", type=float, default=0.005, help="feature distance weight")
    ap.add_argument("--ignore-top", type=int, default=0, help="pseudo-label margin rows")
    ap.add_argument("--ignore-bottom", type=int, default=0, help="pseudo-label margin rows")
    ap.add_argument("--no-augment", dest="augment", action="store_false",
                    help="no colour jitter / blur of the mixed image")
    ap.add_argument("--count-flops", action="store_true",
                    help="also count one step's FLOPs with torch.utils.flop_counter")
    ap.add_argument("--check", metavar="FILE",
                    help="compare with a bench_step_check file instead of timing")
    args = ap.parse_args()
    if args.check:
        return check(args)
    if args.crop % 32:
        ap.error("--crop must be a multiple of 32 (FD cells)")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device visible to torch")
    if args.steps < 1 or args.warmup < 0 or args.batch < 1:
        ap.error("--steps >= 1, --warmup >= 0, --batch >= 1")
    return timing(args)


if __name__ == "__main__":
    sys.exit(main())
