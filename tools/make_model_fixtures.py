#!/usr/bin/env python3
"""Whole-network parity fixtures for tests/unit/test_model_parity.c.

Usage (by hand, not part of the build):

    python tools/make_model_fixtures.py --out tests/fixtures/model [--only NET ...]

Writes, into --out, one HDF5 file per network (hf_b0.h5, hf_b1.h5, daformer_b0.h5; --only
restricts to the named ones): the generator table at the root, one group per run mode
("train", "eval") with PyTorch's outputs and gradients, all in cluda's layout and under
cluda's parameter names. No network has a weight file: every weight and BN running statistic
is PROCEDURAL (weight files broke the 4 MiB-per-file rule and do not compress), as are every
file's input and cotangents. The safetensors loader is tested by tests/unit/test_weights.c on
real tiny Hugging Face files (tests/fixtures/weights/, tools/make_weight_fixtures.py).

Procedural values (generator "cluda-hash-v1", gen_values below, gen_fill in the C test):
element i (row-major flat index in cluda layout) of array `name` (cluda name; "x", "r_*") is
    h = splitmix64(fnv1a64(name) ^ splitmix64(seed ^ i)),  m = (h >> 40) - 2^23,
    value = float32(offset + scale * m * 2^-23)
with uint64 wrap-around arithmetic, the file's seed (attribute gen_seed) and per-array
scale and offset (dataset gen_scale_offset [n, 2], names in attribute gen_names), powers of two
or 0, so the float64 expression is exact and its one rounding to float32 is the same in C and
numpy. Kinds: gen_kind(); x U[-2, 2), cotangents U[-1, 1).
What the script changes afterwards (clear_relu_kinks moves BN biases) is stored in full as
gen_override/<name> (names in gen_override_names).

Method (the policy of tools/make_fixtures.py, scaled to a whole network)
  * Weights and BN running statistics are procedural float32 (gen_kind), so the C test and
    the reference hold identical values.
  * The reference runs in float64 PyTorch (model.double()) on those weights and the float32
    input; results are rounded once to float32. HF's eager attention computes its softmax in
    float32 whatever the model dtype, so this script swaps in a dtype-preserving attention
    (cross-checked against torch SDPA in float64).
  * Gradients are those of L = sum(logits*r_logits) + sum(fused*r_fused)
    + sum_i sum(enc_i*r_enc_i) for stored random cotangents, so the C test runs the backward
    with dlogits = r_logits, dfused = r_fused, denc[i] = r_enc_i. Stored: dL/dx, the gradient
    of a selection of parameters (all of it up to 4096 elements, else every row_stride-th
    row), and for EVERY parameter its gradient's L2 norm and L1 norm (dataset grad_stats,
    names in the attribute grad_stats_names).
  * Achievability: every case also runs in float32 PyTorch; a case is only written when the
    float32 result stays within half of the C test's tolerance of the float64 one
    (attributes torch_f32_margin_fwd / _bwd).
  * LayerNorm eps sensitivity: the weights are scaled so that every LayerNorm sees inputs of
    variance ~1e-3..1e-2, where eps 1e-5 vs 1e-6 is visible. The script re-runs each case
    with the block/stage eps swapped (1e-5 <-> 1e-6) and with the patch/SR eps at 1e-6, and
    requires both to move the outputs by many tolerances (attributes eps_sensitivity_*), so
    the C test really pins the epsilons.
  * ReLU kinks: every BN bias feeding a ReLU is moved (by at most a few hundredths) so that
    no pre-ReLU value lies within 1e-4 of its layer's max from zero; otherwise float32
    rounding may flip a ReLU mask and change a gradient entry by its full size.

Cases (file/group)
  hf_b0/train   HF B0, LayerNorm eps as HF builds them (1e-5 everywhere): the C test sets
                block_norm_eps = 1e-5. Train mode: BN batch statistics (stochastic 0,
                bn_batch_stats 1); the updated BN running statistics are stored too.
  hf_b0/eval    same weights, eval mode (procedural BN running statistics).
  hf_b1/train   HF B1 with the block and stage norms set to eps 1e-6 after construction
                (mmseg semantics, cluda's default config), procedural weights. Train mode.
  daformer_b0/train, daformer_b0/eval
                HF B0 encoder (block/stage eps 1e-6, i.e. mmseg's MiT) + the DAFormer head of
                shared/spec/model.md section 2 written out below (E 64, Cf 32, K 19, dilations
                1/6/12/18), mmseg names. Train and eval mode.
  Input: batch 2, 64x96 (H x W), procedural U[-2, 2) ("normalised image").

Layout: activations NCHW -> NHWC, conv weights OIHW -> OHWI, linear weights [out, in], the
HF K and V fused into kv (K rows first), the SegFormer linear_fuse input blocks permuted from
HF's [c4, c3, c2, c1] to cluda's [c1, c2, c3, c4].
"""

import argparse
import copy
import os
import platform
import re
import sys

import h5py
import numpy as np
import safetensors
import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerModel
from transformers.models.segformer import modeling_segformer

F64 = torch.float64

# Tolerances of tests/unit/test_model_parity.c: |got - want| <= RTOL |want| + ATOL_REL max|want|
FWD_RTOL, FWD_ATOL_REL = 1e-4, 1e-5
BWD_RTOL, BWD_ATOL_REL = 1e-3, 1e-4

BATCH, HEIGHT, WIDTH = 2, 64, 96
# No pre-ReLU value of a reference may lie within KINK_REL * max|pre-ReLU| of zero.
KINK_REL = 1e-4
NUM_CLASSES = 19


def nchw_to_nhwc(a):
    return np.ascontiguousarray(np.transpose(a, (0, 2, 3, 1)))


def nhwc_to_nchw(a):
    return np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2)))


def f32(t):
    return t.detach().to(torch.float32).numpy()


# ---------------------------------------------------------------------------------------
# procedural values: generator "cluda-hash-v1", implemented identically in
# tests/unit/test_model_parity.c (gen_fill). Element i of the array `name` (cluda name, cluda
# layout, row-major flat index) of a file with seed s is
#   h = splitmix64(fnv1a64(name) ^ splitmix64(s ^ i))            (uint64, wrap-around)
#   m = (h >> 40) - 2^23                                         (integer in [-2^23, 2^23))
#   value = float32(offset + scale * m * 2^-23)
# with scale and offset powers of two (or 0), so offset + scale * m * 2^-23 is exact in
# float64 and the one rounding to float32 (round to nearest even) is the same in C and numpy.

GEN_NAME = "cluda-hash-v1"
_MASK64 = (1 << 64) - 1


def fnv1a64(s):
    h = 0xCBF29CE484222325
    for b in s.encode("ascii"):
        h = ((h ^ b) * 0x100000001B3) & _MASK64
    return h


def splitmix64(z):
    """splitmix64's output function on a uint64 array (wrap-around arithmetic)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def gen_values(name, shape, seed, scale, offset):
    """float32 array of `shape`: the generator's values of array `name`."""
    n = int(np.prod(shape))
    idx = np.arange(n, dtype=np.uint64)
    h = splitmix64(np.uint64(fnv1a64(name)) ^ splitmix64(np.uint64(seed) ^ idx))
    m = (h >> np.uint64(40)).astype(np.int64) - (1 << 23)
    v = offset + scale * (m.astype(np.float64) * 2.0 ** -23)  # exact in float64
    return v.astype(np.float32).reshape(tuple(shape))


def _check_generator():
    # reference values, also asserted by test_model_parity.c
    assert fnv1a64("x") == 0xAF63F54C86021707, hex(fnv1a64("x"))
    assert int(splitmix64(np.uint64(0))) == 0xE220A8397B1DCDAF
    # m of (name, index, seed): value = m * 2^-23 at scale 1, offset 0
    for name, i, seed, m in (("x", 0, 7, -5507529), ("x", 12345, 7, 6992264),
                             ("backbone.block1.0.attn.kv.weight", 4095, 2, 6273400)):
        v = gen_values(name, (i + 1,), seed, 1.0, 0.0)[i]
        assert v == np.float32(m * 2.0 ** -23), (name, i, seed, v)
    for s, o in ((2.0 ** -3, 1.0), (2.0 ** -6, 2.0 ** -4), (1.0, 0.0)):
        w = gen_values("backbone.norm1.weight", (1000,), 5, s, o)
        assert np.all(np.abs(w.astype(np.float64) - o) <= s)


_check_generator()
X_SCALE = 2.0  # input: U[-2, 2) (std 1.15, a "normalised image")
COT_SCALE = 1.0  # cotangents: U[-1, 1)


def _pow2_ceil_sqrt_exp(fan):
    """Smallest e >= 0 with 4^e >= fan, i.e. 2^e >= sqrt(fan)."""
    e = 0
    while 4 ** e < fan:
        e += 1
    return e


def gen_kind(cn, shape):
    """(scale, offset) of parameter or BN statistic `cn` (cluda name, cluda shape), all powers
    of two (every LayerNorm sees inputs of variance ~1e-3..1e-2). fan_in = prod(shape[1:]); 2^-e ~ 1/sqrt(fan_in)."""
    e = _pow2_ceil_sqrt_exp(int(np.prod(shape[1:])) if len(shape) > 1 else 1)
    if cn.endswith(".running_mean"):
        return 2.0 ** -2, 0.0
    if cn.endswith(".running_var"):
        return 2.0 ** -1, 1.0
    if re.search(r"patch_embed\d\.norm\.weight$", cn):
        return 2.0 ** -6, 2.0 ** -4
    if re.search(r"patch_embed\d\.norm\.bias$", cn):
        return 2.0 ** -6, 0.0
    if re.search(r"(norm\d?|\.bn)\.weight$", cn):  # norm1/2, attn.norm, stage norms, BN
        return 2.0 ** -3, 1.0
    if re.search(r"(norm\d?|\.bn)\.bias$", cn):
        return 2.0 ** -3, 0.0
    if re.search(r"(patch_embed\d\.proj|attn\.sr|attn\.proj|mlp\.fc2)\.weight$", cn):
        return 2.0 ** (-3 - e), 0.0  # std 0.036..0.072 / sqrt(fan_in)
    if re.search(r"(patch_embed\d\.proj|attn\.sr|attn\.proj|mlp\.fc2)\.bias$", cn):
        return 2.0 ** -6, 0.0
    if cn.endswith(".weight"):
        return 2.0 ** (1 - e), 0.0  # std 0.58..1.15 / sqrt(fan_in)
    if cn.endswith(".bias"):
        return 2.0 ** -3, 0.0
    raise KeyError(cn)


# ---------------------------------------------------------------------------------------
# float64-clean attention for HF (its eager path does the softmax in float32)


def attention_f64_clean(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                        **kwargs):
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    w = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        w = w + attention_mask
    w = torch.softmax(w, dim=-1)
    assert dropout == 0.0
    out = torch.matmul(w, value).transpose(1, 2).contiguous()
    return out, w


def _check_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g, dtype=F64) for _ in range(3))
    out, _ = attention_f64_clean(None, q, k, v, None)
    ref = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    assert torch.allclose(out, ref, rtol=1e-12, atol=1e-12)


_check_attention()
modeling_segformer.eager_attention_forward = attention_f64_clean


def set_eager(model):
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:  # older transformers
        model.config._attn_implementation = "eager"


# ---------------------------------------------------------------------------------------
# names: transformers' in-memory names -> hub ("legacy") names -> cluda / mmseg names

# transformers >= 5 renames the modules in memory and maps back on save; older versions use
# the hub names in memory (then these rules do nothing).
_TO_HUB = [
    (r"^segformer\.stages\.(\d+)\.patch_embeddings\.", r"segformer.encoder.patch_embeddings.\1."),
    (r"^segformer\.stages\.(\d+)\.blocks\.", r"segformer.encoder.block.\1."),
    (r"^segformer\.stages\.(\d+)\.layer_norm\.", r"segformer.encoder.layer_norm.\1."),
    (r"\.attention\.q_proj\.", ".attention.self.query."),
    (r"\.attention\.k_proj\.", ".attention.self.key."),
    (r"\.attention\.v_proj\.", ".attention.self.value."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attention.self.sr."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attention.self.layer_norm."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".mlp.dense1."),
    (r"\.mlp\.fc2\.", ".mlp.dense2."),
    (r"\.layernorm_before\.", ".layer_norm_1."),
    (r"\.layernorm_after\.", ".layer_norm_2."),
    (r"^decode_head\.linear_projections\.", "decode_head.linear_c."),
]


def hub_name(name):
    for pat, rep in _TO_HUB:
        name = re.sub(pat, rep, name)
    return name


def _stage(m, k=1):
    return str(int(m.group(k)) + 1)


def cluda_name(hub):
    """Hub name -> (cluda name, part): part is 'k' / 'v' for the halves of attn.kv, else None."""
    m = re.match(r"^segformer\.encoder\.patch_embeddings\.(\d+)\.(proj|layer_norm)\.(\w+)$", hub)
    if m:
        sub = "proj" if m.group(2) == "proj" else "norm"
        return f"backbone.patch_embed{_stage(m)}.{sub}.{m.group(3)}", None
    m = re.match(r"^segformer\.encoder\.layer_norm\.(\d+)\.(\w+)$", hub)
    if m:
        return f"backbone.norm{_stage(m)}.{m.group(2)}", None
    m = re.match(r"^segformer\.encoder\.block\.(\d+)\.(\d+)\.(.+)\.(\w+)$", hub)
    if m:
        rest = {
            "layer_norm_1": "norm1", "attention.self.query": "attn.q",
            "attention.self.key": "attn.kv", "attention.self.value": "attn.kv",
            "attention.self.sr": "attn.sr", "attention.self.layer_norm": "attn.norm",
            "attention.output.dense": "attn.proj", "layer_norm_2": "norm2",
            "mlp.dense1": "mlp.fc1", "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
            "mlp.dense2": "mlp.fc2",
        }[m.group(3)]
        part = {"attention.self.key": "k", "attention.self.value": "v"}.get(m.group(3))
        return f"backbone.block{_stage(m)}.{m.group(2)}.{rest}.{m.group(4)}", part
    m = re.match(r"^decode_head\.linear_c\.(\d+)\.proj\.(\w+)$", hub)
    if m:
        return f"decode_head.linear_c.{m.group(1)}.proj.{m.group(2)}", None
    if hub == "decode_head.linear_fuse.weight":
        return "decode_head.linear_fuse.conv.weight", None
    m = re.match(r"^decode_head\.batch_norm\.(\w+)$", hub)
    if m:
        return f"decode_head.linear_fuse.bn.{m.group(1)}", None
    m = re.match(r"^decode_head\.classifier\.(\w+)$", hub)
    if m:
        return f"decode_head.linear_pred.{m.group(1)}", None
    raise KeyError(hub)


# ---------------------------------------------------------------------------------------
# DAFormer head (shared/spec/model.md section 2), mmseg module names


class ConvModule(nn.Module):
    """mmcv ConvModule: conv (no bias) -> BN -> ReLU."""

    def __init__(self, cin, cout, k, padding=0, dilation=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=padding, dilation=dilation, groups=groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class DepthwiseSeparableConvModule(nn.Module):
    def __init__(self, cin, cout, dilation):
        super().__init__()
        self.depthwise_conv = ConvModule(cin, cin, 3, padding=dilation, dilation=dilation,
                                         groups=cin)
        self.pointwise_conv = ConvModule(cin, cout, 1)

    def forward(self, x):
        return self.pointwise_conv(self.depthwise_conv(x))


class ASPPWrapper(nn.Module):
    """sep = True, pool = False, no context layer."""

    def __init__(self, cin, cf, dilations):
        super().__init__()
        mods = [ConvModule(cin, cf, 1)]
        mods += [DepthwiseSeparableConvModule(cin, cf, d) for d in dilations[1:]]
        self.aspp_modules = nn.ModuleList(mods)
        self.bottleneck = ConvModule(len(dilations) * cf, cf, 3, padding=1)

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
    def __init__(self, in_channels, e, cf, num_classes, dilations=(1, 6, 12, 18)):
        super().__init__()
        self.embed_layers = nn.ModuleList([MLPEmbed(c, e) for c in in_channels])
        self.fuse_layer = ASPPWrapper(4 * e, cf, dilations)
        self.dropout = nn.Dropout2d(0.0)  # cluda runs with stochastic = 0
        self.conv_seg = nn.Conv2d(cf, num_classes, 1)

    def forward(self, feats):
        size = feats[0].shape[2:]
        es = []
        for i, (f, layer) in enumerate(zip(feats, self.embed_layers)):
            e = layer(f)
            if i > 0:
                e = F.interpolate(e, size=size, mode="bilinear", align_corners=False)
            es.append(e)
        fused = self.fuse_layer(torch.cat(es, dim=1))
        return fused, self.conv_seg(self.dropout(fused))


class DAFormerSegmentor(nn.Module):
    """HF SegformerModel as the MiT encoder (identical to mmseg's mix_transformer once its
    block/stage norms use eps 1e-6) + the DAFormer head."""

    def __init__(self, config, e, cf):
        super().__init__()
        self.backbone = SegformerModel(config)
        set_eager(self.backbone)
        self.decode_head = DAFormerHead(config.hidden_sizes, e, cf, config.num_labels)

    def forward(self, x):
        enc = list(self.backbone(x, output_hidden_states=True).hidden_states)
        fused, logits = self.decode_head(enc)
        return enc, fused, logits


# ---------------------------------------------------------------------------------------
# networks


def hf_config(dims, decoder=256):
    return SegformerConfig(
        hidden_sizes=list(dims), depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 5, 8],
        sr_ratios=[8, 4, 2, 1], decoder_hidden_size=decoder, num_labels=NUM_CLASSES,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0,
        drop_path_rate=0.0)


class Net:
    """A network with its parameters named by cluda name, and how to run it."""

    def __init__(self, kind, module):
        self.kind = kind  # "hf" or "daformer"
        self.module = module

    def named_cluda(self):
        """(in-memory name, cluda name, part) for every parameter and buffer."""
        out = []
        for name, _ in list(self.module.named_parameters()) + list(self.module.named_buffers()):
            if self.kind == "hf":
                cn, part = cluda_name(hub_name(name))
            else:
                if name.startswith("backbone."):
                    cn, part = cluda_name(hub_name("segformer." + name[len("backbone."):]))
                else:
                    cn, part = name, None
            out.append((name, cn, part))
        return out

    def forward(self, x):
        if self.kind == "hf":
            fused = {}
            hook = self.module.decode_head.activation.register_forward_hook(
                lambda m, i, o: fused.__setitem__("y", o))
            out = self.module(x, output_hidden_states=True)
            hook.remove()
            return list(out.hidden_states), fused["y"], out.logits
        return self.module(x)


def set_norm_eps(net, block_eps, patch_eps):
    """Block norms (norm1, norm2) and stage norms get block_eps; patch-embedding and SR
    norms patch_eps."""
    for name, mod in net.module.named_modules():
        if not isinstance(mod, nn.LayerNorm):
            continue
        cn = dict((a, b) for a, b, _ in net.named_cluda())[name + ".weight"]
        stem = cn[: -len(".weight")]
        if re.search(r"\.(norm1|norm2)$", stem) or re.match(r"^backbone\.norm\d$", stem):
            mod.eps = block_eps
        else:
            assert re.search(r"(patch_embed\d\.norm|attn\.norm)$", stem), stem
            mod.eps = patch_eps


def norm_eps_of(net):
    blocks, patches = set(), set()
    for name, mod in net.module.named_modules():
        if isinstance(mod, nn.LayerNorm):
            cn = dict((a, b) for a, b, _ in net.named_cluda())[name + ".weight"]
            stem = cn[: -len(".weight")]
            if re.search(r"\.(norm1|norm2)$", stem) or re.match(r"^backbone\.norm\d$", stem):
                blocks.add(mod.eps)
            else:
                patches.add(mod.eps)
    assert len(blocks) == 1 and len(patches) == 1, (blocks, patches)
    return blocks.pop(), patches.pop()


def relu_bns(net):
    """(name, BN module) of every BatchNorm followed by a ReLU, in forward order."""
    return [(n, mod) for n, mod in net.module.named_modules()
            if isinstance(mod, nn.BatchNorm2d)]  # every BN of both heads feeds a ReLU


def pre_relu_values(net, x, bn_name, train):
    """float64 output of BN `bn_name` minus its bias, [C, rows], in one run mode."""
    m = copy.deepcopy(net.module).double().train(train)
    got = {}
    bn = dict(m.named_modules())[bn_name]
    h = bn.register_forward_hook(lambda mod, i, o: got.__setitem__("y", o.detach()))
    with torch.no_grad():
        Net(net.kind, m).forward(torch.from_numpy(x).double())
    h.remove()
    y = got["y"] - bn.bias.detach()[None, :, None, None]
    return y.permute(1, 0, 2, 3).reshape(y.shape[1], -1).numpy()


def clear_relu_kinks(net, x, dtype):
    """Moves each BN bias (by at most 0.1, to a value of the weight dtype) so that no
    pre-ReLU value of the reference lies within KINK_REL * max|y| of zero, in either run
    mode. Otherwise float32 rounding can put a value on the other side of the ReLU than the
    float64 reference and change one gradient entry by its full size (this happened: two
    values of 1e-6 in daformer_b0/eval). Layers are treated in forward order, each with the
    earlier ones already moved."""
    for name, bn in relu_bns(net):
        vals = np.concatenate([pre_relu_values(net, x, name, t) for t in (True, False)], axis=1)
        beta = bn.bias.detach().double().numpy()
        target = KINK_REL * np.abs(vals + beta[:, None]).max()
        steps = np.arange(-1000, 1001) * 1e-4
        new = beta.copy()
        worst = np.inf
        for c in range(len(beta)):
            cand = torch.from_numpy(beta[c] + steps).to(dtype).double().unique().numpy()
            v = np.sort(vals[c])
            # min_i |v_i + cand|: the nearest of -cand among the sorted v
            pos = np.clip(np.searchsorted(v, -cand), 1, len(v) - 1)
            dist = np.minimum(np.abs(v[pos] + cand), np.abs(v[pos - 1] + cand))
            okc = dist >= target
            if okc.any():
                pick = np.argmin(np.where(okc, np.abs(cand - beta[c]), np.inf))
            else:
                pick = np.argmax(dist)
            new[c] = cand[pick]
            worst = min(worst, dist[pick] / target)
        if worst < 1.0:
            raise SystemExit(f"{name}: cannot clear the ReLU kink ({worst:.2f} of the margin)")
        with torch.no_grad():
            bn.bias.copy_(torch.from_numpy(new).float())
        moved = np.abs(new - beta)
        print(f"  {name}: bias moved on {(moved > 0).sum()} of {len(beta)} channels "
              f"(max {moved.max():.4f}) to keep pre-ReLU values >= {target:.2e} from 0")


# ---------------------------------------------------------------------------------------
# running a case


def to_cluda_layout(net, tensors):
    """{in-memory name: torch tensor} -> {cluda name: float32 numpy in cluda layout}."""
    out, halves = {}, {}
    for name, cn, part in net.named_cluda():
        if name not in tensors:
            continue
        a = f32(tensors[name])
        if part is not None:
            halves.setdefault(cn, {})[part] = a
            continue
        if cn == "decode_head.linear_fuse.conv.weight" and net.kind == "hf":
            e = a.shape[0]
            blocks = [a[:, k * e:(k + 1) * e] for k in range(4)]  # HF: [c4, c3, c2, c1]
            a = np.concatenate(blocks[::-1], axis=1)
        if a.ndim == 4:
            a = np.transpose(a, (0, 2, 3, 1))
        out[cn] = np.ascontiguousarray(a)
    for cn, h in halves.items():
        out[cn] = np.ascontiguousarray(np.concatenate([h["k"], h["v"]], axis=0))
    return out


def from_cluda_layout(net, arrays):
    """{cluda name: numpy array in cluda layout} -> {in-memory name: torch tensor in the
    module's layout}: the inverse of to_cluda_layout (kv split into K and V, OHWI -> OIHW,
    SegFormer linear_fuse input blocks [c1..c4] -> HF's [c4..c1])."""
    out = {}
    for name, cn, part in net.named_cluda():
        if cn not in arrays:
            continue
        a = arrays[cn]
        if part is not None:
            c = a.shape[0] // 2
            a = a[:c] if part == "k" else a[c:]
        if cn == "decode_head.linear_fuse.conv.weight" and net.kind == "hf":
            e = a.shape[0]
            blocks = [a[..., k * e:(k + 1) * e] for k in range(4)]  # cluda: [c1, c2, c3, c4]
            a = np.concatenate(blocks[::-1], axis=-1)
        if a.ndim == 4:
            a = np.transpose(a, (0, 3, 1, 2))
        out[name] = torch.from_numpy(np.ascontiguousarray(a))
    return out


def float_tensors(net):
    m = net.module
    return {k: v for k, v in list(m.named_parameters()) + list(m.named_buffers())
            if v.is_floating_point()}


def init_procedural(net, seed):
    """Every parameter and BN running statistic from the generator, in cluda names and
    layout, then converted to the module's. Returns the table {cluda name: (shape, scale,
    offset)} and the generated arrays."""
    shapes = {cn: a.shape for cn, a in to_cluda_layout(net, float_tensors(net)).items()}
    table = {cn: (shp,) + gen_kind(cn, shp) for cn, shp in sorted(shapes.items())}
    arrays = {cn: gen_values(cn, shp, seed, sc, off) for cn, (shp, sc, off) in table.items()}
    with torch.no_grad():
        tensors = float_tensors(net)
        for name, t in from_cluda_layout(net, arrays).items():
            assert tensors[name].shape == t.shape, (name, tensors[name].shape, t.shape)
            tensors[name].copy_(t)
        for mod in net.module.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.num_batches_tracked.fill_(1000)
                mod.momentum = 0.1
    back = to_cluda_layout(net, float_tensors(net))
    assert set(back) == set(arrays) and all(np.array_equal(back[k], arrays[k]) for k in arrays)
    return table, arrays


def run(net, state, dt, train, x, cot):
    """One forward + backward in dtype dt from the state dict `state`; returns the arrays."""
    m = copy.deepcopy(net.module).to(dt)
    m.load_state_dict({k: v.to(dt) if v.is_floating_point() else v for k, v in state.items()})
    m.train(train)
    n = Net(net.kind, m)
    # sum over rows of |dY| of every layer with a bias: the scale of that bias's gradient (a
    # sum of dY over rows), for biases whose gradient is zero in exact arithmetic
    bias_scale, hooks = {}, []

    def capture(name, channel_dim):
        def fwd_hook(mod, inp, out):
            def grad_hook(g):
                dims = [d for d in range(g.ndim) if d != channel_dim % g.ndim]
                bias_scale[name] = g.detach().abs().sum(dim=dims)
            out.register_hook(grad_hook)
        return fwd_hook

    for name, mod in m.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)) and mod.bias is not None:
            hooks.append(mod.register_forward_hook(
                capture(name + ".bias", -1 if isinstance(mod, nn.Linear) else 1)))
    xt = torch.from_numpy(x).to(dt).requires_grad_(True)
    enc, fused, logits = n.forward(xt)
    loss = (logits * torch.from_numpy(cot["r_logits"]).to(dt)).sum()
    loss = loss + (fused * torch.from_numpy(cot["r_fused"]).to(dt)).sum()
    for i in range(4):
        loss = loss + (enc[i] * torch.from_numpy(cot[f"r_enc{i + 1}"]).to(dt)).sum()
    loss.backward()
    for h in hooks:
        h.remove()
    scales = {cn: float(f32(bias_scale[name]).max())
              for cn, name in ((c, nm) for nm, c, _ in n.named_cluda()) if name in bias_scale}
    fwd = {f"enc{i + 1}": nchw_to_nhwc(f32(enc[i])) for i in range(4)}
    fwd["fused"] = nchw_to_nhwc(f32(fused))
    fwd["logits"] = nchw_to_nhwc(f32(logits))
    grads = to_cluda_layout(n, {k: p.grad for k, p in m.named_parameters()})
    bwd = {"dx": nchw_to_nhwc(f32(xt.grad))}
    state_after = {}
    if train:
        bufs = {k: b for k, b in m.named_buffers() if not k.endswith("num_batches_tracked")}
        state_after = to_cluda_layout(n, bufs)
    return fwd, bwd, grads, state_after, scales


def margin(got, want, rtol, atol_rel):
    want = want.astype(np.float64)
    got = got.astype(np.float64)
    tol = rtol * np.abs(want) + atol_rel * np.abs(want).max()
    return float((np.abs(got - want) / np.maximum(tol, 1e-300)).max())


def grad_stats(grads):
    names = sorted(grads)
    st = np.array([[np.sqrt((grads[n].astype(np.float64) ** 2).sum()),
                    np.abs(grads[n].astype(np.float64)).sum()] for n in names])
    return names, st


def eps_sensitivity(net, state, train, x, cot, ref_fwd, block_eps, patch_eps):
    """Forward-tolerance units by which swapping the LN epsilons moves the outputs."""
    res = {}
    for label, be, pe in (("block", 1e-5 if block_eps == 1e-6 else 1e-6, patch_eps),
                          ("patch", block_eps, 1e-6)):
        alt = Net(net.kind, copy.deepcopy(net.module))
        set_norm_eps(alt, be, pe)
        fwd, _, _, _, _ = run(alt, state, F64, train, x, cot)
        res[label] = max(margin(fwd[k], ref_fwd[k], FWD_RTOL, FWD_ATOL_REL) for k in fwd)
    return res


# ---------------------------------------------------------------------------------------
# writing


def text_attr(obj, key, value):
    obj.attrs[key] = np.bytes_(str(value).encode("ascii"))


def set_attrs(obj, attrs):
    for k, v in attrs.items():
        if isinstance(v, str):
            text_attr(obj, k, v)
        elif isinstance(v, float):
            obj.attrs[k] = np.float64(v)
        else:
            obj.attrs[k] = np.int32(v)


def ds(obj, name, a):
    """float32 dataset; from 64 KiB on one chunk with byte shuffle + deflate (about 0.78 of
    the raw size; ReLU outputs 0.6), smaller ones contiguous (a chunk index costs ~2 KB)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.nbytes < 65536:
        obj.create_dataset(name, data=a, dtype=np.float32)
    else:
        obj.create_dataset(name, data=a, dtype=np.float32, chunks=a.shape, shuffle=True,
                           compression="gzip", compression_opts=9)


# A selected gradient of more than GRAD_MAX_ELEMENTS elements is stored as every row_stride-th
# row (row = first index, the output channel in cluda layout; both halves of kv, all four
# input blocks of linear_fuse), row_stride = ceil(rows / max(1, GRAD_MAX_ELEMENTS // row size));
# the dataset's attribute row_stride (1: all rows) says so. The L2 / L1 norms cover every element.
GRAD_MAX_ELEMENTS = 4096


def write_fixture(out, name, meta, gen, cases):
    """One HDF5 file per network: the generator table (input, cotangents and, for procedural
    weights, every parameter and BN statistic) at the root, one group per case (run mode)
    with its outputs and gradients."""
    path = os.path.join(out, f"{name}.h5")
    with h5py.File(path, "w", libver="earliest") as f:
        set_attrs(f, meta)
        text_attr(f, "torch_version", torch.__version__)
        text_attr(f, "transformers_version", transformers.__version__)
        text_attr(f, "safetensors_version", safetensors.__version__)
        text_attr(f, "numpy_version", np.__version__)
        text_attr(f, "h5py_version", h5py.__version__)
        text_attr(f, "python_version", platform.python_version())
        text_attr(f, "generator", "tools/make_model_fixtures.py")
        text_attr(f, "layout", "NHWC activations, OHWI conv weights, [out,in] linear weights")
        set_attrs(f, dict(fwd_rtol=FWD_RTOL, fwd_atol_rel=FWD_ATOL_REL, bwd_rtol=BWD_RTOL,
                          bwd_atol_rel=BWD_ATOL_REL))
        text_attr(f, "cases", ",".join(c["name"] for c in cases))
        text_attr(f, "gen", GEN_NAME)
        f.attrs["gen_seed"] = np.int32(gen["seed"])
        names = list(gen["table"])
        text_attr(f, "gen_names", ",".join(names))
        ds(f, "gen_scale_offset", np.array([gen["table"][k][1:] for k in names]))
        text_attr(f, "gen_override_names", ",".join(gen["override"]))
        for k, v in gen["override"].items():
            ds(f, f"gen_override/{k}", v)
        f.attrs["grad_max_elements"] = np.int32(GRAD_MAX_ELEMENTS)
        for c in cases:
            g = f.create_group(c["name"])
            set_attrs(g, c["attrs"])
            zero, grads = c["zero"], c["grads"]
            names, stats = grad_stats({k: v for k, v in grads.items() if k not in zero})
            text_attr(g, "grad_selected", ",".join(c["selected"]))
            text_attr(g, "grad_stats_names", ",".join(names))
            text_attr(g, "grad_zero_names", ",".join(zero))
            text_attr(g, "state_names", ",".join(sorted(c["state_after"])))
            for k, v in c["fwd"].items():
                ds(g, k, v)
            ds(g, "dx", c["bwd"]["dx"])
            for n in c["selected"]:
                a = grads[n]
                stride = 1
                if a.size > GRAD_MAX_ELEMENTS:
                    stride = -(-a.shape[0] // max(1, GRAD_MAX_ELEMENTS // a[0].size))
                ds(g, f"grad/{n}", a[::stride])
                g[f"grad/{n}"].attrs["row_stride"] = np.int32(stride)
            ds(g, "grad_stats", stats)
            if zero:
                ds(g, "grad_zero_scale", np.array([c["scales"][k] for k in zero]))
            for n, v in c["state_after"].items():
                ds(g, f"state/{n}", v)
    print(f"  {path}: {os.path.getsize(path)} bytes")


SELECTED_ENCODER = [
    "backbone.patch_embed1.proj.weight",
    "backbone.patch_embed1.norm.weight",
    "backbone.block1.0.attn.q.weight",
    "backbone.block1.0.attn.sr.weight",
    "backbone.block1.0.attn.norm.weight",
    "backbone.block1.1.attn.kv.weight",
    "backbone.block1.1.attn.kv.bias",
    "backbone.block2.0.attn.proj.weight",
    "backbone.block2.1.mlp.fc1.bias",
    "backbone.block2.1.mlp.dwconv.dwconv.weight",
    "backbone.block2.1.mlp.fc2.weight",
    "backbone.block3.0.norm1.weight",
    "backbone.block3.1.attn.sr.bias",
    "backbone.block4.0.attn.kv.bias",
    "backbone.block4.1.norm2.bias",
    "backbone.norm4.weight",
    "backbone.norm4.bias",
]
SELECTED_SEGFORMER = [
    "decode_head.linear_c.0.proj.weight",
    "decode_head.linear_c.3.proj.bias",
    "decode_head.linear_fuse.bn.weight",
    "decode_head.linear_fuse.bn.bias",
    "decode_head.linear_pred.weight",
    "decode_head.linear_pred.bias",
]
SELECTED_DAFORMER = [
    "decode_head.embed_layers.0.proj.weight",
    "decode_head.embed_layers.3.proj.bias",
    "decode_head.fuse_layer.aspp_modules.0.conv.weight",
    "decode_head.fuse_layer.aspp_modules.0.bn.weight",
    "decode_head.fuse_layer.aspp_modules.2.depthwise_conv.conv.weight",
    "decode_head.fuse_layer.aspp_modules.2.depthwise_conv.bn.bias",
    "decode_head.fuse_layer.aspp_modules.3.pointwise_conv.conv.weight",
    "decode_head.fuse_layer.bottleneck.conv.weight",
    "decode_head.fuse_layer.bottleneck.bn.weight",
    "decode_head.conv_seg.weight",
    "decode_head.conv_seg.bias",
]


def make_weights(kind, dims, block_eps, seed, e=256, cf=256):
    """Procedural weights: every value from the generator with `seed`, except what
    clear_relu_kinks moves, returned as overrides."""
    torch.manual_seed(0)  # module construction draws from torch's RNG; all values are replaced
    cfg = hf_config(dims, decoder=e)
    if kind == "hf":
        module = SegformerForSemanticSegmentation(cfg)
        set_eager(module)
    else:
        module = DAFormerSegmentor(cfg, e, cf)
    net = Net(kind, module)
    set_norm_eps(net, block_eps, 1e-5)
    x = nhwc_to_nchw(gen_values("x", (BATCH, HEIGHT, WIDTH, 3), seed, X_SCALE, 0.0))
    table, arrays = init_procedural(net, seed)
    clear_relu_kinks(net, x, torch.float32)
    now = to_cluda_layout(net, float_tensors(net))
    override = {k: now[k] for k in sorted(arrays) if not np.array_equal(now[k], arrays[k])}
    return net, x, dict(table=table, override=override)


COT_NAMES = ("r_logits", "r_fused", "r_enc1", "r_enc2", "r_enc3", "r_enc4")


def cotangents(net, x, seed):
    """Procedural cotangents of the outputs' shapes (generated in NHWC); returns them (NCHW)
    and the generator table entries of x and the cotangents."""
    with torch.no_grad():
        m = copy.deepcopy(net.module).eval()
        enc, fused, logits = Net(net.kind, m).forward(torch.from_numpy(x))
    outs = {"r_logits": logits, "r_fused": fused}
    for i in range(4):
        outs[f"r_enc{i + 1}"] = enc[i]
    cot, table = {}, {"x": ((BATCH, HEIGHT, WIDTH, 3), X_SCALE, 0.0)}
    for k in COT_NAMES:
        n, c, h, w = outs[k].shape
        cot[k] = nhwc_to_nchw(gen_values(k, (n, h, w, c), seed, COT_SCALE, 0.0))
        table[k] = ((n, h, w, c), COT_SCALE, 0.0)
    return cot, table


def make_case(case, net, x, cot, train, selected):
    print(f"{case}:")
    state = {k: v.clone() for k, v in net.module.state_dict().items()}
    f32_res = run(net, state, torch.float32, train, x, cot)
    fwd, bwd, grads, state_after, scales = run(net, state, F64, train, x, cot)
    # Gradients that vanish in exact arithmetic (biases feeding a batch-statistics BN through
    # linear, constant-preserving layers: SegFormer's linear_c biases in train mode). Their
    # float32 value is rounding noise of a sum over rows of dY, so they are checked as
    # |got| <= BWD_ATOL_REL * max_c sum_rows |dY_c| instead of relative to themselves.
    zero = sorted(k for k in grads if k in scales and np.abs(grads[k]).max() < 1e-9 * scales[k])
    assert all(k.endswith(".bias") for k in zero), zero
    # achievability
    mf = max(margin(f32_res[0][k], fwd[k], FWD_RTOL, FWD_ATOL_REL) for k in fwd)
    mf = max([mf] + [margin(f32_res[3][k], state_after[k], FWD_RTOL, FWD_ATOL_REL)
                     for k in state_after])
    mb = max([margin(f32_res[1]["dx"], bwd["dx"], BWD_RTOL, BWD_ATOL_REL)] +
             [margin(f32_res[2][k], grads[k], BWD_RTOL, BWD_ATOL_REL)
              for k in grads if k not in zero])
    mz = max([0.0] + [float(np.abs(f32_res[2][k]).max() / (BWD_ATOL_REL * scales[k]))
                      for k in zero])
    nonzero = {k: v for k, v in grads.items() if k not in zero}
    names, st = grad_stats(nonzero)
    _, st32 = grad_stats({k: f32_res[2][k] for k in nonzero})
    mb = max(mb, mz, float((np.abs(st32 - st) / (BWD_RTOL * st)).max()))
    print(f"  torch float32 uses {mf:.3f} (forward) / {mb:.3f} (backward) of the tolerance"
          + (f"; {len(zero)} gradients are zero in exact arithmetic (float32 noise uses "
             f"{mz:.3f} of their bound)" if zero else ""))
    if os.environ.get("MODEL_FIXTURES_DEBUG"):
        for k in fwd:
            print("   fwd", k, margin(f32_res[0][k], fwd[k], FWD_RTOL, FWD_ATOL_REL))
        print("   dx", margin(f32_res[1]["dx"], bwd["dx"], BWD_RTOL, BWD_ATOL_REL))
        for k in nonzero:
            print("   grad", k, margin(f32_res[2][k], grads[k], BWD_RTOL, BWD_ATOL_REL))
    if mf > 0.5 or mb > 0.5:
        raise SystemExit(f"{case}: float32 PyTorch is not within half of the tolerance")
    kink = min(float(np.abs(v).min() / np.abs(v).max()) for v in
               (pre_relu_values(net, x, n, train) + bn.bias.detach().double().numpy()[:, None]
                for n, bn in relu_bns(net)))
    print(f"  pre-ReLU values keep {kink:.2e} of their layer's max|y| from zero")
    if kink < 0.99 * KINK_REL:
        raise SystemExit(f"{case}: a pre-ReLU value is too close to the kink")
    block_eps, patch_eps = norm_eps_of(net)
    sens = eps_sensitivity(net, state, train, x, cot, fwd, block_eps, patch_eps)
    print(f"  eps swap moves the outputs by {sens['block']:.1f} (block/stage norms) and "
          f"{sens['patch']:.1f} (patch/SR norms) forward tolerances")
    if min(sens.values()) < 5:
        raise SystemExit(f"{case}: the outputs do not pin the LayerNorm epsilons")
    assert set(selected) <= set(grads), set(selected) - set(grads)
    selected = [n for n in selected if n not in zero]  # those are checked against their bound
    attrs = dict(block_norm_eps=float(block_eps), patch_norm_eps=float(patch_eps), stochastic=0,
                 bn_batch_stats=int(train), torch_f32_margin_fwd=mf, torch_f32_margin_bwd=mb,
                 eps_sensitivity_block=sens["block"], eps_sensitivity_patch=sens["patch"],
                 relu_kink_margin=kink)
    return dict(name=case, attrs=attrs, fwd=fwd, bwd=bwd, grads=grads, selected=selected,
                state_after=state_after, zero=zero, scales=scales)


def make_fixture(out, name, kind, dims, block_eps, modes, selected, seed, e=256, cf=256):
    """The HDF5 fixture of one network with procedural weights."""
    net, x, gen = make_weights(kind, dims, block_eps, seed, e=e, cf=cf)
    cot, io_table = cotangents(net, x, seed)
    gen["table"] = dict(io_table, **gen["table"])
    gen["seed"] = seed
    cases = [make_case(f"{name}/{mode}", net, x, cot, mode == "train", selected[mode])
             for mode in modes]
    for c in cases:
        c["name"] = c["name"].split("/")[1]
    meta = dict(weights="procedural", weights_dtype="F32", naming="cluda",
                encoder={32: "b0", 64: "b1"}[dims[0]],
                head="segformer" if kind == "hf" else "daformer", embed_dims=e, channels=cf,
                num_classes=NUM_CLASSES, batch=BATCH, height=HEIGHT, width=WIDTH)
    write_fixture(out, name, meta, gen, cases)


# generator seeds (all weights, BN statistics, input, cotangents). Each passes the ReLU-kink,
# achievability and eps checks; if one fails a check after a change, try the next.
SEEDS = {"hf_b0": 1, "hf_b1": 2, "daformer_b0": 6}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/model")
    ap.add_argument("--only", action="append", choices=sorted(SEEDS),
                    help="write only this network's fixture (repeatable; default: all)")
    args = ap.parse_args()
    want = set(args.only or SEEDS)
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, safetensors "
          f"{safetensors.__version__}, numpy {np.__version__}, h5py {h5py.__version__}, "
          f"python {sys.version.split()[0]}")
    b0 = (32, 64, 160, 256)
    b1 = (64, 128, 320, 512)

    enc, seg, daf = SELECTED_ENCODER, SELECTED_SEGFORMER, SELECTED_DAFORMER
    fuse = ["decode_head.linear_fuse.conv.weight"]

    # (a) HF B0, HF's own LayerNorm eps (1e-5 everywhere); procedural weights; train + eval
    if "hf_b0" in want:
        make_fixture(args.out, "hf_b0", "hf", b0, 1e-5, ("train", "eval"),
                     {"train": enc + seg + fuse, "eval": enc + seg}, SEEDS["hf_b0"])
    # (b) HF B1, block/stage norms set to mmseg's 1e-6; procedural weights; train
    if "hf_b1" in want:
        b1_sel = enc + ["backbone.block1.0.attn.sr.bias"] + seg + fuse
        make_fixture(args.out, "hf_b1", "hf", b1, 1e-6, ("train",),
                     {"train": b1_sel}, SEEDS["hf_b1"])
    # (c) B0 + DAFormer head (E 64, Cf 32), mmseg names; procedural weights; train + eval
    if "daformer_b0" in want:
        make_fixture(args.out, "daformer_b0", "daformer", b0, 1e-6, ("train", "eval"),
                     {"train": enc + daf, "eval": enc + daf}, SEEDS["daformer_b0"], e=64,
                     cf=32)

    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"total {total} bytes in {args.out}")


if __name__ == "__main__":
    main()
