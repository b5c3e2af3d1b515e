#!/usr/bin/env python3
"""PyTorch CPU counterpart of bench_model.c: the same network, passes, timing and output format.

The network: MiT (B0..B5) written as in mmseg / DAFormer mix_transformer.py (overlapping patch
embeddings, efficient self-attention with one kv Linear and the SR conv + LayerNorm, Mix-FFN with
the 3x3 depthwise conv and exact GELU, LayerNorm eps 1e-5 / 1e-6 as model.md 1.3, timm-style drop
path), and the DAFormer head written per model.md section 2 (per-level Linear embeddings,
bilinear resize align_corners=False, concat, separable ASPP d = 1, 6, 12, 18 with BN + ReLU after
the depthwise and the pointwise convs, bottleneck 3x3 + BN + ReLU, Dropout2d, conv_seg).
fp32, NCHW, torch.backends.mkldnn at its default, torch.set_num_threads from --threads /
OMP_NUM_THREADS (default 2).

Training mode (model.train(): BN batch statistics and running-stat updates); Dropout2d and
drop path are off (Identity) unless --stochastic (then p = 0.1 and drop_path_rate = 0.1).

Passes, each timed as bench_model.c (warm-up, then the median of repeated runs):
  model fwd    model(x) under autograd (the graph is recorded, as in training)
  model bwd    torch.autograd.backward(logits, dlogits) on a graph built once (retain_graph)
  model step   forward + backward
  encoder fwd / bwd, head fwd / bwd: the same for the parts; the head's inputs are leaf tensors
  that require grad (the head backward computes dfeats), the encoder's backward gets those
  dfeats. Parameter gradients are set to None (untimed) before every backward.

Output: a table and lines such as
  RESULT name=model pass=fwd ms=123.4 gflops=56.7 gflop=7.0 runs=10 count=1 op=segmentor
"""
import argparse
import os
import statistics
import sys
import time

MIT = {  # model.md 1.1: embed dims, depths
    "b0": ([32, 64, 160, 256], [2, 2, 2, 2]),
    "b1": ([64, 128, 320, 512], [2, 2, 2, 2]),
    "b2": ([64, 128, 320, 512], [3, 4, 6, 3]),
    "b3": ([64, 128, 320, 512], [3, 4, 18, 3]),
    "b4": ([64, 128, 320, 512], [3, 8, 27, 3]),
    "b5": ([64, 128, 320, 512], [3, 6, 40, 3]),
}
HEADS = [1, 2, 5, 8]
SR = [8, 4, 2, 1]
MLP_RATIO = 4
CF = 256
K = 19
DILATIONS = [1, 6, 12, 18]


def conv_out(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def build(torch, encoder, embed_dims, stochastic):
    nn = torch.nn
    F = torch.nn.functional
    dims, depths = MIT[encoder]

    class DropPath(nn.Module):  # timm: one mask of shape [B, 1, 1] per call
        def __init__(self, p):
            super().__init__()
            self.p = p

        def forward(self, x):
            if self.p == 0.0 or not self.training:
                return x
            keep = 1.0 - self.p
            mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
            return x * mask.div_(keep)

    class OverlapPatchEmbed(nn.Module):
        def __init__(self, k, stride, cin, c):
            super().__init__()
            self.proj = nn.Conv2d(cin, c, k, stride, k // 2)
            self.norm = nn.LayerNorm(c)  # eps 1e-5

        def forward(self, x):
            x = self.proj(x)
            _, _, h, w = x.shape
            return self.norm(x.flatten(2).transpose(1, 2)), h, w

    class Attention(nn.Module):
        def __init__(self, c, heads, sr):
            super().__init__()
            self.heads, self.sr_ratio = heads, sr
            self.scale = (c // heads) ** -0.5
            self.q = nn.Linear(c, c)
            self.kv = nn.Linear(c, 2 * c)
            self.proj = nn.Linear(c, c)
            if sr > 1:
                self.sr = nn.Conv2d(c, c, sr, sr)
                self.norm = nn.LayerNorm(c)  # eps 1e-5

        def forward(self, x, h, w):
            b, n, c = x.shape
            q = self.q(x).reshape(b, n, self.heads, c // self.heads).permute(0, 2, 1, 3)
            if self.sr_ratio > 1:
                x_ = x.permute(0, 2, 1).reshape(b, c, h, w)
                x_ = self.sr(x_).reshape(b, c, -1).permute(0, 2, 1)
                x_ = self.norm(x_)
            else:
                x_ = x
            kv = self.kv(x_).reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            k, v = kv[0], kv[1]
            attn = (q @ k.transpose(-2, -1)) * self.scale
            attn = attn.softmax(dim=-1)
            x = (attn @ v).transpose(1, 2).reshape(b, n, c)
            return self.proj(x)

    class Mlp(nn.Module):
        def __init__(self, c, hidden):
            super().__init__()
            self.fc1 = nn.Linear(c, hidden)
            self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
            self.act = nn.GELU()  # exact erf form
            self.fc2 = nn.Linear(hidden, c)

        def forward(self, x, h, w):
            x = self.fc1(x)
            b, n, c = x.shape
            x = self.dwconv(x.transpose(1, 2).view(b, c, h, w)).flatten(2).transpose(1, 2)
            return self.fc2(self.act(x))

    class Block(nn.Module):
        def __init__(self, c, heads, sr, dpr):
            super().__init__()
            self.norm1 = nn.LayerNorm(c, eps=1e-6)
            self.attn = Attention(c, heads, sr)
            self.drop_path = DropPath(dpr) if dpr > 0 else nn.Identity()
            self.norm2 = nn.LayerNorm(c, eps=1e-6)
            self.mlp = Mlp(c, MLP_RATIO * c)

        def forward(self, x, h, w):
            x = x + self.drop_path(self.attn(self.norm1(x), h, w))
            return x + self.drop_path(self.mlp(self.norm2(x), h, w))

    class MiT(nn.Module):
        def __init__(self):
            super().__init__()
            total = sum(depths)
            rate = 0.1 if stochastic else 0.0
            dpr = [rate * k / (total - 1) for k in range(total)]
            self.patch_embed = nn.ModuleList()
            self.blocks = nn.ModuleList()
            self.norms = nn.ModuleList()
            cur, cin = 0, 3
            for i in range(4):
                k, s = (7, 4) if i == 0 else (3, 2)
                self.patch_embed.append(OverlapPatchEmbed(k, s, cin, dims[i]))
                self.blocks.append(nn.ModuleList(
                    [Block(dims[i], HEADS[i], SR[i], dpr[cur + j]) for j in range(depths[i])]))
                self.norms.append(nn.LayerNorm(dims[i], eps=1e-6))
                cur += depths[i]
                cin = dims[i]

        def forward(self, x):
            b = x.shape[0]
            outs = []
            for i in range(4):
                x, h, w = self.patch_embed[i](x)
                for blk in self.blocks[i]:
                    x = blk(x, h, w)
                x = self.norms[i](x)
                x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
                outs.append(x)
            return outs

    class ConvModule(nn.Sequential):  # mmcv: conv (no bias) -> BN -> ReLU(inplace)
        def __init__(self, cin, cout, k, pad=0, dil=1, groups=1):
            super().__init__(nn.Conv2d(cin, cout, k, 1, pad, dil, groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    class MLPEmbed(nn.Module):
        def __init__(self, cin, e):
            super().__init__()
            self.proj = nn.Linear(cin, e)

        def forward(self, x):
            return self.proj(x.flatten(2).transpose(1, 2).contiguous())

    class DAFormerHead(nn.Module):
        def __init__(self):
            super().__init__()
            e = embed_dims
            self.embed_layers = nn.ModuleList([MLPEmbed(c, e) for c in dims])
            wide = 4 * e
            self.aspp = nn.ModuleList([ConvModule(wide, CF, 1)] + [
                nn.Sequential(ConvModule(wide, wide, 3, pad=d, dil=d, groups=wide),
                              ConvModule(wide, CF, 1)) for d in DILATIONS[1:]])
            self.bottleneck = ConvModule(4 * CF, CF, 3, pad=1)
            self.dropout = nn.Dropout2d(0.1) if stochastic else nn.Identity()
            self.conv_seg = nn.Conv2d(CF, K, 1)

        def forward(self, feats):
            n = feats[-1].shape[0]
            size = feats[0].shape[2:]
            cs = []
            for i, x in enumerate(feats):
                c = self.embed_layers[i](x).permute(0, 2, 1).contiguous()
                c = c.reshape(n, -1, x.shape[2], x.shape[3])
                if c.shape[2:] != size:
                    c = F.interpolate(c, size=size, mode="bilinear", align_corners=False)
                cs.append(c)
            x = torch.cat(cs, dim=1)
            x = torch.cat([m(x) for m in self.aspp], dim=1)
            fused = self.bottleneck(x)
            return self.conv_seg(self.dropout(fused))

    return MiT(), DAFormerHead()


def plan_macs(encoder, embed_dims, size):
    """Per-image MACs counted as cluda's plans (mit.c, head.c)."""
    dims, depths = MIT[encoder]
    enc = 0.0
    h, cin = size, 3
    res = []
    for i in range(4):
        k, s = (7, 4) if i == 0 else (3, 2)
        h = conv_out(h, k, s, k // 2)
        res.append(h)
        n, c, hd, r = h * h, dims[i], MLP_RATIO * dims[i], SR[i]
        nk = ((h - r) // r + 1) ** 2 if r > 1 else n
        block = n * c * c * 2 + nk * 2 * c * c + 2 * n * nk * c + 2 * n * c * hd + n * hd * 9
        if r > 1:
            block += nk * c * r * r * c
        enc += n * c * k * k * cin + depths[i] * block
        cin = c
    px = res[0] * res[0]
    wide = 4 * embed_dims
    head = sum(res[i] * res[i] * dims[i] * embed_dims for i in range(4))
    head += px * wide * CF + 3 * px * wide * (9 + CF) + px * 9 * 4 * CF * CF + px * CF * K
    return enc, head


def time_pass(fn, args, before=None, verbose=None):
    for _ in range(args.warmup):
        if before:
            before()
        r = fn()
        del r
    times = []
    total = 0.0
    while len(times) < args.repeats:
        if before:
            before()
        t0 = time.perf_counter()
        r = fn()
        dt = time.perf_counter() - t0
        del r  # freeing the graph is not timed (cluda reuses its buffers)
        times.append(dt)
        total += dt
        if verbose:
            print(f"  {verbose} run {len(times)}: {1e3 * dt:.2f} ms")
        if len(times) >= args.min_runs and total >= args.max_seconds:
            break
    return 1e3 * statistics.median(times), 1e3 * min(times), len(times)


def env_threads(name):
    try:
        n = int(os.environ.get(name, ""))
        return n if n >= 1 else 0
    except ValueError:
        return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoder", default="b0", choices=sorted(MIT))
    ap.add_argument("--embed-dims", type=int, default=256,
                    help="DAFormer head embedding width (default 256; CLUDA: 512)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=256, help="input S x S (default 256)")
    ap.add_argument("--stochastic", action="store_true", help="Dropout2d and drop path on")
    ap.add_argument("--repeats", type=int, default=10, help="at most N timed runs (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    ap.add_argument("--max-seconds", type=float, default=3.0,
                    help="stop repeating once the timed runs add up to S (default 3)")
    ap.add_argument("--min-runs", type=int, default=3, help="but time at least N runs (default 3)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (default: OMP_NUM_THREADS, else 2)")
    ap.add_argument("--verbose", action="store_true", help="print every timed run")
    ap.add_argument("--quick", action="store_true",
                    help="--repeats 3 --warmup 1 --max-seconds 0.5 --min-runs 1")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.warmup, args.max_seconds, args.min_runs = 3, 1, 0.5, 1
    if min(args.batch, args.repeats, args.warmup, args.min_runs, args.embed_dims) < 1:
        ap.error("--batch, --repeats, --warmup, --min-runs and --embed-dims must be >= 1")
    args.min_runs = min(args.min_runs, args.repeats)
    threads = args.threads or env_threads("OMP_NUM_THREADS") or 2

    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    enc, head = build(torch, args.encoder, args.embed_dims, args.stochastic)
    enc.train()
    head.train()
    g = torch.Generator().manual_seed(7)
    b, s = args.batch, args.size
    x = (torch.rand(b, 3, s, s, generator=g) * 2 - 1) * 2
    hs = enc(x)[0].shape[2]
    dlogits = torch.rand(b, K, hs, hs, generator=g) * 2 - 1

    enc_macs, head_macs = plan_macs(args.encoder, args.embed_dims, s)
    n_enc = sum(p.numel() for p in enc.parameters())
    n_head = sum(p.numel() for p in head.parameters())
    params = list(enc.parameters()) + list(head.parameters())
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}

    # bytes autograd saves for the backward (unique storages, parameters excluded)
    saved = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in param_ptrs:
            saved[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        feats = enc(x)
        enc_saved = sum(saved.values())
        out = head(feats)
        del out, feats
    act_bytes = sum(saved.values())

    cap = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "?"
    print(f"torch bench_model: torch {torch.__version__} CPU, MiT-{args.encoder} + DAFormer head "
          f"(E={args.embed_dims}, Cf={CF}, K={K}), {s}x{s} input, batch {b}")
    print(f"mode: training (BN batch statistics), stochastic {'on' if args.stochastic else 'off'} "
          "(Dropout2d, drop path); backward from a random dlogits, no image gradient")
    print(f"threads: torch {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}); "
          f"mkldnn enabled={torch.backends.mkldnn.enabled}; mkl={torch.backends.mkl.is_available()};"
          f" cpu capability {cap}")
    print(f"timing: median of up to {args.repeats} runs after {args.warmup} warm-up "
          f"(stop after {args.max_seconds:.2f} s, at least {args.min_runs})")
    print(f"params: {n_enc + n_head} (encoder {n_enc}, head {n_head})")
    print(f"MACs per image (cluda's count): {(enc_macs + head_macs) * 1e-9:.4f} G (encoder "
          f"{enc_macs * 1e-9:.4f} G, head {head_macs * 1e-9:.4f} G)")
    mib = 1.0 / (1024 * 1024)
    print(f"activation bytes (saved for backward, batch {b}): {act_bytes * mib:.1f} MiB (encoder "
          f"{enc_saved * mib:.1f} MiB, head {(act_bytes - enc_saved) * mib:.1f} MiB)")
    print("FLOP = 2 x MAC (forward); bwd = 2 x fwd, step (fwd+bwd) = 3 x fwd (approximate)\n")

    def zero_grads(extra=()):
        def fn():
            for p in params:
                p.grad = None
            for t in extra:
                t.grad = None
        return fn

    def model_fwd():
        return head(enc(x))

    logits = model_fwd()

    def model_bwd():
        torch.autograd.backward(logits, dlogits, retain_graph=True)

    def model_step():
        torch.autograd.backward(head(enc(x)), dlogits)

    feats = enc(x)
    leaves = [f.detach().requires_grad_() for f in feats]
    head_out = head(leaves)

    def head_bwd():
        torch.autograd.backward(head_out, dlogits, retain_graph=True)

    head_bwd()
    dfeats = [t.grad.clone() for t in leaves]

    def enc_bwd():
        torch.autograd.backward(feats, dfeats, retain_graph=True)

    v = args.verbose
    passes = [  # (part, pass, op, fn, before, forward MACs, factor)
        ("model", "fwd", "segmentor", model_fwd, None, enc_macs + head_macs, 1),
        ("model", "bwd", "segmentor", model_bwd, zero_grads(), enc_macs + head_macs, 2),
        ("model", "step", "segmentor", model_step, zero_grads(), enc_macs + head_macs, 3),
        ("encoder", "fwd", "mit", lambda: enc(x), None, enc_macs, 1),
        ("head", "fwd", "head", lambda: head(leaves), None, head_macs, 1),
        ("head", "bwd", "head", head_bwd, zero_grads(leaves), head_macs, 2),
        ("encoder", "bwd", "mit", enc_bwd, zero_grads(), enc_macs, 2),
    ]
    res = {}
    errors = 0
    for part, pname, op, fn, before, macs, factor in passes:
        flop = 2.0 * macs * b * factor
        try:
            med, mn, runs = time_pass(fn, args, before, f"{part} {pname}" if v else None)
            res[(part, pname)] = (med, mn, runs, flop, op)
        except Exception as e:  # report, go on, exit non-zero
            errors += 1
            print(f"{part} {pname}: error: {e}", file=sys.stderr)
            res[(part, pname)] = (None, None, 0, flop, op)
    order = [("model", "fwd"), ("model", "bwd"), ("model", "step"), ("encoder", "fwd"),
             ("encoder", "bwd"), ("head", "fwd"), ("head", "bwd")]
    print(f"{'part':8s} {'pass':5s} {'GFLOP':>10s} {'runs':>5s} {'median ms':>10s} "
          f"{'min ms':>10s} {'GFLOP/s':>9s}")
    lines = []
    for key in order:
        med, mn, runs, flop, op = res[key]
        if med is None:
            print(f"{key[0]:8s} {key[1]:5s} {flop * 1e-9:10.3f} {'-':>5s} {'error':>10s}")
            lines.append(f"RESULT name={key[0]} pass={key[1]} status=error count=1 op={op} "
                         f"embed_dims={args.embed_dims}")
            continue
        rate = flop / (med * 1e-3) * 1e-9
        print(f"{key[0]:8s} {key[1]:5s} {flop * 1e-9:10.3f} {runs:5d} {med:10.2f} {mn:10.2f} "
              f"{rate:9.1f}")
        lines.append(f"RESULT name={key[0]} pass={key[1]} ms={med:.3f} gflops={rate:.2f} "
                     f"gflop={flop * 1e-9:.4f} runs={runs} count=1 op={op} "
                     f"embed_dims={args.embed_dims}")
    ok = all(res[k][0] is not None for k in order)
    if ok:
        ef, hf = res[("encoder", "fwd")][0], res[("head", "fwd")][0]
        eb, hb = res[("encoder", "bwd")][0], res[("head", "bwd")][0]
        print(f"\nparts: fwd {ef + hf:.2f} ms (encoder {100 * ef / (ef + hf):.0f} %), bwd "
              f"{eb + hb:.2f} ms (encoder {100 * eb / (eb + hb):.0f} %); model - parts: fwd "
              f"{res[('model', 'fwd')][0] - ef - hf:+.2f} ms, bwd "
              f"{res[('model', 'bwd')][0] - eb - hb:+.2f} ms")
    la = os.getloadavg()[0] if hasattr(os, "getloadavg") else -1
    print(f"{errors} errors; load average (1 min) at end: {la:.2f}\n")
    print("\n".join(lines))
    print(f"RESULT name=info params={n_enc + n_head} params_encoder={n_enc} params_head={n_head} "
          f"activation_bytes={act_bytes} macs_per_image={enc_macs + head_macs:.0f}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
