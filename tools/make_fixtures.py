#!/usr/bin/env python3
"""Golden fixtures for tests/unit/test_golden.c, computed with PyTorch.

Usage (by hand, not part of the build):

    python tools/make_fixtures.py --out tests/fixtures

Writes one small HDF5 file per op family (conv2d, layernorm, attention, sr_attention,
resize_bilinear, resize_nearest, cross_entropy). Each file holds one HDF5 group per case;
each group holds the inputs, the parameters, a random cotangent ``r`` and the expected
outputs and gradients, with the op's settings as attributes of the group.

Method
  * Inputs and parameters are drawn as float32 from numpy with fixed seeds (one seed per
    case, derived from the case name, so adding a case does not change the others).
  * The reference runs in float64 PyTorch on exactly those float32 values (upcast), so the
    stored outputs are the exact results rounded once to float32.
  * Gradients are those of the scalar L = sum(y * r) for a stored random r of y's shape;
    the C test therefore runs the backward with dy = r. For the cross-entropy the loss is a
    scalar and L = loss * dloss with a stored scalar dloss.
  * Everything is stored as float32 (uint8 for labels).
  * Every case is also run in float32 PyTorch; a case is only written when that result is
    within half of test_golden.c's tolerance of the float64 one (attribute torch_f32_margin),
    so the tolerance is achievable by a correct float32 implementation.

Layout (cluda's, not PyTorch's; the transposes happen here, not in C)
  * activations NCHW -> NHWC: t.permute(0, 2, 3, 1)
  * conv weights OIHW -> OHWI [C_out, KH, KW, C_in/groups]: w.permute(0, 2, 3, 1)
  * linear weights stay [out, in]; token tensors stay [B, N, C]
  * the SR-attention input/output [B, N, C] with N = H*W in row-major spatial order is
    stored as [B, H, W, C] (a pure reshape)
  * attention probabilities [B, heads, N, Nk] are stored as [B*heads, N, Nk]
  * labels are uint8 [N, H, W, 1] for the nearest resize (an NHWC map with one channel)
    and [N, H, W] for the cross-entropy

File attributes: torch_version, numpy_version, h5py_version, python_version, generator.
The versions used for the committed files are listed in tools/README.md.
"""

import argparse
import hashlib
import os
import platform
import sys

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

F64 = torch.float64


def rng_for(family, case):
    digest = hashlib.sha256(f"{family}/{case}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def randn(rng, *shape, scale=1.0, offset=0.0):
    return (offset + scale * rng.standard_normal(shape)).astype(np.float32)


def uniform(rng, lo, hi, *shape):
    return rng.uniform(lo, hi, shape).astype(np.float32)


# The dtype the reference runs in: float64 for the stored results, float32 for the
# achievability check (see run_case).
DT = F64

# The tolerance of tests/unit/test_golden.c: |got - want| <= RTOL |want| + ATOL_REL max|want|.
RTOL = 1e-5
ATOL_REL = 1e-6


def tt(a, grad=False):
    """float32 numpy -> torch leaf in DT (for float64: the float32 values upcast exactly)."""
    t = torch.from_numpy(np.asarray(a, dtype=np.float32)).to(DT)
    return t.requires_grad_(grad)


def f32(t):
    return t.detach().to(torch.float32).numpy()


def nchw_to_nhwc(a):
    return np.ascontiguousarray(np.transpose(a, (0, 2, 3, 1)))


def oihw_to_ohwi(a):
    return np.ascontiguousarray(np.transpose(a, (0, 2, 3, 1)))


def run_case(fn, w, *args):
    """Runs a case twice: in float32 PyTorch (calibration), then in float64 (stored). The
    inputs are identical (per-case seeds). A case is only written when PyTorch's own float32
    result is within half the golden tolerance of the float64 one, so the tolerance of the C
    test is achievable by a correct float32 implementation."""
    global DT
    DT = torch.float32
    fn(w, *args)
    DT = F64
    fn(w, *args)


class Writer:
    def __init__(self, out_dir, family):
        self.path = os.path.join(out_dir, f"{family}.h5")
        self.family = family
        self.f = h5py.File(self.path, "w", libver="earliest")
        self.text("family", family)
        self.text("torch_version", torch.__version__)
        self.text("numpy_version", np.__version__)
        self.text("h5py_version", h5py.__version__)
        self.text("python_version", platform.python_version())
        self.text("generator", "tools/make_fixtures.py")
        self.text("layout", "NHWC activations, OHWI conv weights, [out,in] linear weights")
        self.cases = []

    def text(self, key, value):
        # fixed-length ASCII, simple to read from C
        self.f.attrs[key] = np.bytes_(str(value).encode("ascii"))

    def case(self, name, attrs, arrays):
        if DT != F64:  # calibration run: keep the float32 results for run_case
            self.calibration = arrays
            return
        margin = self.margin(arrays)
        if margin > 0.5:
            raise SystemExit(f"{self.family}/{name}: PyTorch float32 uses {margin:.2f} of the "
                             "golden tolerance; the case is too ill-conditioned for float32")
        print(f"  {self.family}/{name}: torch float32 uses {margin:.3f} of the tolerance")
        attrs = dict(attrs, torch_f32_margin=float(margin))
        g = self.f.create_group(name)
        for k, v in attrs.items():
            if isinstance(v, float):
                g.attrs[k] = np.float64(v)
            else:
                g.attrs[k] = np.int32(v)
        for k, v in arrays.items():
            v = np.ascontiguousarray(v)
            if v.dtype == np.uint8:
                g.create_dataset(k, data=v, dtype=np.uint8)
            else:
                g.create_dataset(k, data=v.astype(np.float32), dtype=np.float32)
        self.cases.append(name)

    def margin(self, arrays):
        """Largest |f32 - f64| / (RTOL |f64| + ATOL_REL max|f64|) over all float arrays."""
        worst = 0.0
        self.per_array = {}
        for k, want in arrays.items():
            if want.dtype == np.uint8:
                assert np.array_equal(self.calibration[k], want), k
                continue
            want = want.astype(np.float64)
            got = self.calibration[k].astype(np.float64)
            tol = RTOL * np.abs(want) + ATOL_REL * np.abs(want).max()
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(tol > 0, np.abs(got - want) / tol, np.abs(got - want) * np.inf)
            self.per_array[k] = float(np.nan_to_num(ratio, nan=0.0).max())
            worst = max(worst, self.per_array[k])
        return worst

    def close(self):
        self.text("cases", ",".join(self.cases))
        self.f.close()
        print(f"{self.path}: {len(self.cases)} cases, {os.path.getsize(self.path)} bytes")


# ---------------------------------------------------------------------------------------
# conv2d


def conv_case(w, name, n, cin, h, wd, cout, k, stride, pad, dil, groups, bias):
    rng = rng_for("conv2d", name)
    x = randn(rng, n, cin, h, wd)
    fan_in = cin // groups * k * k
    wt = randn(rng, cout, cin // groups, k, k, scale=1.0 / np.sqrt(fan_in))
    b = randn(rng, cout, scale=0.5) if bias else None
    xt, wtt = tt(x, True), tt(wt, True)
    bt = tt(b, True) if bias else None
    y = F.conv2d(xt, wtt, bt, stride=stride, padding=pad, dilation=dil, groups=groups)
    r = randn(rng, *y.shape)
    (y * tt(r)).sum().backward()
    arrays = {
        "x": nchw_to_nhwc(x),
        "w": oihw_to_ohwi(wt),
        "r": nchw_to_nhwc(r),
        "y": nchw_to_nhwc(f32(y)),
        "dx": nchw_to_nhwc(f32(xt.grad)),
        "dw": oihw_to_ohwi(f32(wtt.grad)),
    }
    if bias:
        arrays["b"] = b
        arrays["db"] = f32(bt.grad)
    attrs = dict(kernel_h=k, kernel_w=k, stride_h=stride, stride_w=stride, pad_h=pad,
                 pad_w=pad, dilation_h=dil, dilation_w=dil, groups=groups,
                 has_bias=int(bias))
    w.case(name, attrs, arrays)


def make_conv2d(out):
    w = Writer(out, "conv2d")
    #          name            n cin  h  w cout k s  p  d  g  bias
    run_case(conv_case, w, "dilated2", 2, 4, 9, 7, 5, 3, 1, 2, 2, 1, False)
    run_case(conv_case, w, "dilated6_dw", 2, 6, 13, 11, 6, 3, 1, 6, 6, 6, False)  # ASPP-style
    run_case(conv_case, w, "dilated6_bias", 2, 3, 9, 8, 4, 3, 1, 6, 6, 1, True)
    run_case(conv_case, w, "depthwise", 2, 8, 7, 5, 8, 3, 1, 1, 1, 8, True)  # Mix-FFN dwconv
    run_case(conv_case, w, "patch7s4", 2, 3, 13, 11, 8, 7, 4, 3, 1, 1, True)  # stage-1 patch embed
    run_case(conv_case, w, "patch3s2", 2, 4, 9, 8, 6, 3, 2, 1, 1, 1, True)  # stage 2-4 patch embed
    run_case(conv_case, w, "grouped", 2, 4, 5, 7, 6, 3, 1, 1, 1, 2, True)
    run_case(conv_case, w, "sr2", 2, 8, 6, 5, 8, 2, 2, 0, 1, 1, True)  # SR conv, odd width
    run_case(conv_case, w, "pointwise", 2, 5, 3, 4, 7, 1, 1, 0, 1, 1, True)
    w.close()


# ---------------------------------------------------------------------------------------
# layernorm


def ln_case(w, name, shape, eps, scale, offset):
    rng = rng_for("layernorm", name)
    c = shape[-1]
    x = randn(rng, *shape, scale=scale, offset=offset)
    g = randn(rng, c, scale=0.3, offset=1.0)
    b = randn(rng, c, scale=0.3)
    xt, gt, bt = tt(x, True), tt(g, True), tt(b, True)
    y = F.layer_norm(xt, (c,), gt, bt, eps)
    r = randn(rng, *y.shape)
    (y * tt(r)).sum().backward()
    x64 = xt.detach()
    mean = x64.mean(-1)
    var = x64.var(-1, unbiased=False)
    rstd = 1.0 / torch.sqrt(var + eps)
    w.case(name, {"eps": float(eps)}, {
        "x": x, "gamma": g, "beta": b, "r": r, "y": f32(y),
        "mean": f32(mean).reshape(-1), "rstd": f32(rstd).reshape(-1),
        "dx": f32(xt.grad), "dgamma": f32(gt.grad), "dbeta": f32(bt.grad),
    })


def make_layernorm(out):
    w = Writer(out, "layernorm")
    run_case(ln_case, w, "eps1e-6", (2, 7, 12), 1e-6, 1.0, 0.0)
    run_case(ln_case, w, "eps1e-5", (2, 3, 5, 10), 1e-5, 2.0, 3.0)  # 4-d, offset mean
    run_case(ln_case, w, "eps1e-5_small_var", (6, 16), 1e-5, 0.005, 0.01)  # eps matters
    w.close()


# ---------------------------------------------------------------------------------------
# multi-head scaled dot-product attention


def sdpa_ref(q, k, v, heads):
    b, n, c = q.shape
    nk = k.shape[1]
    d = c // heads
    qh = q.reshape(b, n, heads, d).permute(0, 2, 1, 3)
    kh = k.reshape(b, nk, heads, d).permute(0, 2, 1, 3)
    vh = v.reshape(b, nk, heads, d).permute(0, 2, 1, 3)
    p = torch.softmax((qh @ kh.transpose(-2, -1)) * d ** -0.5, dim=-1)
    o = (p @ vh).transpose(1, 2).reshape(b, n, c)
    return o, p


def attn_case(w, name, b, n, nk, c, heads, scale):
    rng = rng_for("attention", name)
    q = randn(rng, b, n, c, scale=scale)
    k = randn(rng, b, nk, c, scale=scale)
    v = randn(rng, b, nk, c)
    qt, kt, vt = tt(q, True), tt(k, True), tt(v, True)
    o, p = sdpa_ref(qt, kt, vt, heads)
    # cross-check against PyTorch's own SDPA
    o2 = F.scaled_dot_product_attention(
        *(t.detach().reshape(b, -1, heads, c // heads).transpose(1, 2) for t in (qt, kt, vt)))
    tol = 1e-12 if DT == F64 else 1e-5
    assert torch.allclose(o.detach(), o2.transpose(1, 2).reshape(b, n, c), rtol=tol, atol=tol)
    r = randn(rng, b, n, c)
    (o * tt(r)).sum().backward()
    w.case(name, {"heads": heads}, {
        "q": q, "k": k, "v": v, "r": r, "out": f32(o),
        "probs": f32(p).reshape(b * heads, n, nk),
        "dq": f32(qt.grad), "dk": f32(kt.grad), "dv": f32(vt.grad),
    })


def make_attention(out):
    w = Writer(out, "attention")
    run_case(attn_case, w, "h3_n7_nk5", 2, 7, 5, 12, 3, 1.0)
    run_case(attn_case, w, "h2_n4_nk9", 1, 4, 9, 8, 2, 2.0)  # peakier softmax
    run_case(attn_case, w, "h4_n6_nk6", 2, 6, 6, 16, 4, 1.0)
    w.close()


# ---------------------------------------------------------------------------------------
# MiT efficient self-attention (SegFormer / DAFormer mix_transformer.py `Attention`)


class Attention(nn.Module):
    """SegFormer's Attention, verbatim apart from the dropouts (p = 0 in MiT)."""

    def __init__(self, dim, num_heads, qkv_bias=True, sr_ratio=1):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x, H, W):
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
        if self.sr_ratio > 1:
            x_ = x.permute(0, 2, 1).reshape(B, C, H, W)
            x_ = self.sr(x_).reshape(B, C, -1).permute(0, 2, 1)
            x_ = self.norm(x_)
            kv = self.kv(x_).reshape(B, -1, 2, self.num_heads,
                                     C // self.num_heads).permute(2, 0, 3, 1, 4)
        else:
            kv = self.kv(x).reshape(B, -1, 2, self.num_heads,
                                    C // self.num_heads).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        x = self.proj(x)
        return x


def sr_case(w, name, b, h, wd, c, heads, sr):
    rng = rng_for("sr_attention", name)
    m = Attention(c, heads, qkv_bias=True, sr_ratio=sr).to(DT)
    params = {}
    with torch.no_grad():
        for pname, p in m.named_parameters():
            if pname == "norm.weight":
                v = randn(rng, *p.shape, scale=0.3, offset=1.0)
            elif pname.endswith("bias"):
                v = randn(rng, *p.shape, scale=0.3)
            else:
                fan_in = int(np.prod(p.shape[1:]))
                v = randn(rng, *p.shape, scale=1.0 / np.sqrt(fan_in))
            p.copy_(torch.from_numpy(v).to(DT))
            params[pname] = v
    x = randn(rng, b, h * wd, c)
    xt = tt(x, True)
    y = m(xt, h, wd)
    r = randn(rng, *y.shape)
    (y * tt(r)).sum().backward()
    grads = {pname: f32(p.grad) for pname, p in m.named_parameters()}

    def conv_layout(pname, a):
        return oihw_to_ohwi(a) if pname == "sr.weight" else a

    arrays = {"x": x.reshape(b, h, wd, c), "r": r.reshape(b, h, wd, c),
              "y": f32(y).reshape(b, h, wd, c), "dx": f32(xt.grad).reshape(b, h, wd, c)}
    names = {"q.weight": "q_w", "q.bias": "q_b", "kv.weight": "kv_w", "kv.bias": "kv_b",
             "sr.weight": "sr_w", "sr.bias": "sr_b", "norm.weight": "norm_w",
             "norm.bias": "norm_b", "proj.weight": "proj_w", "proj.bias": "proj_b"}
    for pname, short in names.items():
        if pname not in params:
            continue
        arrays[short] = conv_layout(pname, params[pname])
        arrays["d" + short] = conv_layout(pname, grads[pname])
    w.case(name, {"channels": c, "heads": heads, "sr_ratio": sr, "sr_norm_eps": 1e-5},
           arrays)


def make_sr_attention(out):
    w = Writer(out, "sr_attention")
    run_case(sr_case, w, "sr2", 2, 6, 5, 16, 2, 2)  # Nk = 3 x 2: odd width drops a column
    run_case(sr_case, w, "sr1", 2, 6, 5, 16, 2, 1)
    run_case(sr_case, w, "sr3", 1, 7, 6, 16, 4, 3)  # Nk = 2 x 2, 4 heads of 4
    w.close()


# ---------------------------------------------------------------------------------------
# bilinear resize


def bilinear_case(w, name, n, c, h, wd, oh, ow, align_corners):
    rng = rng_for("resize_bilinear", name)
    x = randn(rng, n, c, h, wd)
    xt = tt(x, True)
    y = F.interpolate(xt, size=(oh, ow), mode="bilinear", align_corners=bool(align_corners))
    r = randn(rng, *y.shape)
    (y * tt(r)).sum().backward()
    w.case(name, {"align_corners": int(align_corners)}, {
        "x": nchw_to_nhwc(x), "r": nchw_to_nhwc(r), "y": nchw_to_nhwc(f32(y)),
        "dx": nchw_to_nhwc(f32(xt.grad)),
    })


def make_resize_bilinear(out):
    w = Writer(out, "resize_bilinear")
    for ac in (0, 1):
        s = f"_ac{ac}"
        run_case(bilinear_case, w, "up2" + s, 2, 3, 4, 5, 8, 10, ac)
        run_case(bilinear_case, w, "down" + s, 2, 3, 9, 8, 4, 3, ac)
        run_case(bilinear_case, w, "h7to5_w5to13" + s, 1, 4, 7, 5, 5, 13, ac)
        run_case(bilinear_case, w, "up_nonsquare" + s, 2, 2, 3, 6, 11, 7, ac)
        if ac:  # CLUDA's 65x65 resizes use align_corners=True; with False, PyTorch's own
            # float32 source coordinates at ratio 9/65 use half the tolerance
            run_case(bilinear_case, w, "to65" + s, 1, 1, 9, 7, 65, 65, ac)
        else:
            run_case(bilinear_case, w, "up2.5" + s, 1, 2, 6, 4, 15, 10, ac)
        run_case(bilinear_case, w, "same" + s, 1, 3, 5, 4, 5, 4, ac)
        run_case(bilinear_case, w, "one_px" + s, 1, 2, 1, 3, 4, 1, ac)  # size-1 axes
    w.close()


# ---------------------------------------------------------------------------------------
# nearest resize (legacy 'nearest')


def nearest_case(w, name, n, c, h, wd, oh, ow):
    rng = rng_for("resize_nearest", name)
    x = randn(rng, n, c, h, wd)
    xt = tt(x, True)
    y = F.interpolate(xt, size=(oh, ow), mode="nearest")
    r = randn(rng, *y.shape)
    (y * tt(r)).sum().backward()
    w.case(name, {}, {
        "x": nchw_to_nhwc(x), "r": nchw_to_nhwc(r), "y": nchw_to_nhwc(f32(y)),
        "dx": nchw_to_nhwc(f32(xt.grad)),
    })


def nearest_label_case(w, name, n, h, wd, oh, ow):
    rng = rng_for("resize_nearest", name)
    lab = rng.integers(0, 19, size=(n, h, wd)).astype(np.uint8)
    lab[rng.random((n, h, wd)) < 0.2] = 255
    # through float, as mmseg's resize of labels does
    y = F.interpolate(torch.from_numpy(lab).to(torch.float32)[:, None], size=(oh, ow),
                      mode="nearest")[:, 0].to(torch.uint8).numpy()
    w.case(name, {}, {"x": lab[..., None], "y": y[..., None]})


def make_resize_nearest(out):
    w = Writer(out, "resize_nearest")
    run_case(nearest_case, w, "h5to8_w7to3", 2, 3, 5, 7, 8, 3)
    run_case(nearest_case, w, "h6to13_w4to9", 1, 2, 6, 4, 13, 9)
    run_case(nearest_case, w, "down_h9to4_w10to6", 2, 2, 9, 10, 4, 6)
    run_case(nearest_case, w, "up2", 1, 3, 3, 4, 6, 8)
    run_case(nearest_case, w, "h7to21_w3to13", 1, 1, 7, 3, 21, 13)
    run_case(nearest_label_case, w, "labels_h5to8_w7to3", 2, 5, 7, 8, 3)
    run_case(nearest_label_case, w, "labels_h17to7_w13to29", 1, 17, 13, 7, 29)
    run_case(nearest_label_case, w, "labels_h10to65_w9to65", 1, 10, 9, 65, 65)
    w.close()


# ---------------------------------------------------------------------------------------
# cross-entropy (mmseg 0.16: weighted, ignore 255, mean over all pixels)


def ce_case(w, name, n, k, h, wd, weighted, scale, offset, ignore_frac):
    rng = rng_for("cross_entropy", name)
    logits = randn(rng, n, k, h, wd, scale=scale, offset=offset)
    labels = rng.integers(0, k, size=(n, h, wd)).astype(np.uint8)
    labels[rng.random((n, h, wd)) < ignore_frac] = 255
    weights = uniform(rng, 0.0, 1.0, n, h, wd) if weighted else None
    if weighted:
        weights[0, 0, 0] = 0.0  # a zero-weight pixel
    dloss = np.array([0.75], dtype=np.float32)
    lt = tt(logits, True)
    per_pixel = F.cross_entropy(lt, torch.from_numpy(labels).long(), reduction="none",
                                ignore_index=255)
    if weighted:
        per_pixel = per_pixel * tt(weights)
    loss = per_pixel.mean()
    (loss * tt(dloss)[0]).backward()
    arrays = {"logits": nchw_to_nhwc(logits), "labels": labels,
              "loss": f32(loss).reshape(1), "dloss": dloss,
              "dlogits": nchw_to_nhwc(f32(lt.grad))}
    if weighted:
        arrays["weights"] = weights
    w.case(name, {"ignore_index": 255, "has_weights": int(weighted)}, arrays)


def make_cross_entropy(out):
    w = Writer(out, "cross_entropy")
    run_case(ce_case, w, "weighted_k5", 2, 5, 4, 6, True, 2.0, 0.0, 0.25)
    run_case(ce_case, w, "unweighted_k19", 1, 19, 5, 3, False, 3.0, 0.0, 0.2)
    run_case(ce_case, w, "large_logits_k7", 2, 7, 3, 5, True, 10.0, 60.0, 0.1)  # needs max-shift
    w.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, numpy {np.__version__}, h5py {h5py.__version__}, "
          f"python {sys.version.split()[0]}")
    make_conv2d(args.out)
    make_layernorm(args.out)
    make_attention(args.out)
    make_sr_attention(args.out)
    make_resize_bilinear(args.out)
    make_resize_nearest(args.out)
    make_cross_entropy(args.out)


if __name__ == "__main__":
    main()
