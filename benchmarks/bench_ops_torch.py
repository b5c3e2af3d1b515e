#!/usr/bin/env python3
"""PyTorch CPU counterpart of bench_ops.c: the same ops, shapes, timing and output format.

Times forward and backward (separately) of conv2d, linear and attention at the MiT-B0 encoder
shapes of a 256x256 input. PyTorch layouts are used (NCHW activations, OIHW conv weights),
fp32, torch.backends.mkldnn left at its default. The attention core is written as in
DAFormer's mix_transformer.py: split heads, (q @ k^T) * scale, softmax, @ v, merge heads.

Forward: the op's call under torch.no_grad() (the kernels, without autograd's recording).
Backward: torch.autograd.grad of the forward's output with a fixed
upstream gradient, over the op's inputs and parameters (the first patch embedding's input,
the image, gets no gradient), on a graph built once and kept (retain_graph).

Output: a table and lines such as
  RESULT name=s1.fc1 pass=fwd ms=1.234 gflops=56.7 gflop=0.070 runs=20 count=2 op=linear
"""
import argparse
import math
import os
import statistics
import sys
import time

IMG = 256
EMBED = [32, 64, 160, 256]
HEADS = [1, 2, 5, 8]
SR = [8, 4, 2, 1]
DEPTH = [2, 2, 2, 2]
MLP_RATIO = 4


def conv_out(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def build_ops(batch):
    """The op list of bench_ops.c, in the same order and with the same names."""
    ops = []
    res = []
    prev_c, prev_h = 3, IMG
    for i in range(4):
        k, s = (7, 4) if i == 0 else (3, 2)
        p = k // 2
        res.append(conv_out(prev_h, k, s, p))
        ops.append(dict(name=f"s{i+1}.patch_embed", kind="conv2d", count=1, batch=batch,
                        h=prev_h, cin=prev_c, cout=EMBED[i], k=k, stride=s, pad=p, groups=1,
                        need_dx=i > 0,
                        desc=f"{k}x{k} s{s} {prev_c}->{EMBED[i]} {prev_h}x{prev_h}->{res[i]}x{res[i]}"))
        prev_c, prev_h = EMBED[i], res[i]
    for i in range(4):
        c, hw = EMBED[i], res[i]
        tokens, hidden = hw * hw, MLP_RATIO * EMBED[i]
        nk = tokens
        if SR[i] > 1:
            r = SR[i]
            out = conv_out(hw, r, r, 0)
            nk = out * out
            ops.append(dict(name=f"s{i+1}.sr", kind="conv2d", count=DEPTH[i], batch=batch, h=hw,
                            cin=c, cout=c, k=r, stride=r, pad=0, groups=1, need_dx=True,
                            desc=f"{r}x{r} s{r} {c}->{c} {hw}x{hw}->{out}x{out}"))
        ops.append(dict(name=f"s{i+1}.dwconv", kind="conv2d", count=DEPTH[i], batch=batch, h=hw,
                        cin=hidden, cout=hidden, k=3, stride=1, pad=1, groups=hidden,
                        need_dx=True, desc=f"3x3 dw {hidden} ch {hw}x{hw}"))
        for lname, t, fi, fo in (("q", tokens, c, c), ("kv", nk, c, 2 * c),
                                 ("proj", tokens, c, c), ("fc1", tokens, c, hidden),
                                 ("fc2", tokens, hidden, c)):
            ops.append(dict(name=f"s{i+1}.{lname}", kind="linear", count=DEPTH[i], batch=batch,
                            tokens=t, in_f=fi, out_f=fo, desc=f"{t} tok {fi}->{fo}"))
        ops.append(dict(name=f"s{i+1}.attn", kind="attention", count=DEPTH[i], batch=batch,
                        heads=HEADS[i], nq=tokens, nk=nk, c=c,
                        desc=f"h{HEADS[i]} d{c // HEADS[i]} N{tokens} Nk{nk}"))
    return ops


def op_macs(o):
    if o["kind"] == "conv2d":
        oh = conv_out(o["h"], o["k"], o["stride"], o["pad"])
        return o["batch"] * oh * oh * o["cout"] * o["k"] * o["k"] * (o["cin"] // o["groups"])
    if o["kind"] == "linear":
        return o["batch"] * o["tokens"] * o["in_f"] * o["out_f"]
    return 2 * o["batch"] * o["nq"] * o["nk"] * o["c"]


def op_flops(o, backward):
    f = 2.0 * op_macs(o)
    if not backward:
        return f
    return f if (o["kind"] == "conv2d" and not o["need_dx"]) else 2.0 * f


def make_op(torch, o):
    """Returns (forward callable, list of tensors needing grad, output shape)."""
    F = torch.nn.functional
    g = torch.Generator().manual_seed(1234)

    def rand(*shape, scale=1.0, grad=True):
        t = (torch.rand(*shape, generator=g) * 2 - 1) * scale
        return t.requires_grad_(grad)

    b = o["batch"]
    if o["kind"] == "conv2d":
        cpg = o["cin"] // o["groups"]
        x = rand(b, o["cin"], o["h"], o["h"], grad=o["need_dx"])
        w = rand(o["cout"], cpg, o["k"], o["k"], scale=1.0 / math.sqrt(o["k"] * o["k"] * cpg))
        bias = rand(o["cout"], scale=0.1)
        stride, pad, groups = o["stride"], o["pad"], o["groups"]

        def fwd():
            return F.conv2d(x, w, bias, stride=stride, padding=pad, groups=groups)

        inputs = ([x] if o["need_dx"] else []) + [w, bias]
        return fwd, inputs
    if o["kind"] == "linear":
        x = rand(b, o["tokens"], o["in_f"])
        w = rand(o["out_f"], o["in_f"], scale=1.0 / math.sqrt(o["in_f"]))
        bias = rand(o["out_f"], scale=0.1)

        def fwd():
            return F.linear(x, w, bias)

        return fwd, [x, w, bias]
    heads, nq, nk, c = o["heads"], o["nq"], o["nk"], o["c"]
    d = c // heads
    scale = d ** -0.5
    q = rand(b, nq, c)
    k = rand(b, nk, c)
    v = rand(b, nk, c)

    def fwd():  # DAFormer mix_transformer.Attention, after the linears
        qh = q.reshape(b, nq, heads, d).permute(0, 2, 1, 3)
        kh = k.reshape(b, nk, heads, d).permute(0, 2, 1, 3)
        vh = v.reshape(b, nk, heads, d).permute(0, 2, 1, 3)
        attn = (qh @ kh.transpose(-2, -1)) * scale
        attn = attn.softmax(dim=-1)
        return (attn @ vh).transpose(1, 2).reshape(b, nq, c)

    return fwd, [q, k, v]


def time_pass(fn, args):
    fn()
    for _ in range(args.warmup - 1):
        fn()
    times = []
    total = 0.0
    while len(times) < args.repeats:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        total += dt
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
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=50, help="at most N timed runs (default 50)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    ap.add_argument("--max-seconds", type=float, default=0.5,
                    help="stop repeating once the timed runs add up to S (default 0.5)")
    ap.add_argument("--min-runs", type=int, default=3, help="but time at least N runs (default 3)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (default: OMP_NUM_THREADS, else 2)")
    ap.add_argument("--filter", default=None, help="only ops whose name or kind contains TEXT")
    ap.add_argument("--quick", action="store_true",
                    help="--repeats 5 --warmup 1 --max-seconds 0.15 --min-runs 1")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.warmup, args.max_seconds, args.min_runs = 5, 1, 0.15, 1
    if args.batch < 1 or args.repeats < 1 or args.warmup < 1 or args.min_runs < 1:
        ap.error("--batch, --repeats, --warmup and --min-runs must be >= 1")
    args.min_runs = min(args.min_runs, args.repeats)
    threads = args.threads or env_threads("OMP_NUM_THREADS") or 2

    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    ops = build_ops(args.batch)
    print(f"torch bench_ops: torch {torch.__version__} CPU, MiT-B0 shapes, {IMG}x{IMG} input, "
          f"batch {args.batch}")
    cap = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "?"
    print(f"threads: torch {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}); "
          f"mkldnn enabled={torch.backends.mkldnn.enabled} available="
          f"{torch.backends.mkldnn.is_available()}; mkl={torch.backends.mkl.is_available()}; "
          f"cpu capability {cap}")
    print(f"timing: median of up to {args.repeats} runs after {args.warmup} warm-up "
          f"(stop after {args.max_seconds:.2f} s, at least {args.min_runs})")
    print("FLOP = 2 x MAC; backward = 2 x forward MACs (1 x when dx is skipped: s1.patch_embed)")
    print("x = times the op runs in one encoder pass (depth 2 per stage)\n")
    print(f"{'name':16s} {'op':9s} {'shape':28s} {'x':>2s} {'pass':>4s} {'GFLOP':>9s} "
          f"{'runs':>5s} {'median ms':>10s} {'min ms':>10s} {'GFLOP/s':>9s}")
    lines = []
    tot = [0.0, 0.0]
    enc = [0.0, 0.0]
    errors = 0
    for o in ops:
        if args.filter and args.filter not in o["name"] and args.filter not in o["kind"]:
            continue
        try:
            fwd, inputs = make_op(torch, o)
            y = fwd()
            dy = torch.rand(y.shape, generator=torch.Generator().manual_seed(7)) * 2 - 1

            def bwd():
                return torch.autograd.grad(y, inputs, dy, retain_graph=True)

            def fwd_nograd():
                with torch.no_grad():
                    return fwd()

            # The forward is timed without autograd recording: the kernels alone, like cluda's.
            for p, fn in enumerate((fwd_nograd, bwd)):
                pname = "bwd" if p else "fwd"
                flop = op_flops(o, p)
                med, mn, runs = time_pass(fn, args)
                rate = flop / (med * 1e-3) * 1e-9
                print(f"{o['name']:16s} {o['kind']:9s} {o['desc']:28s} {o['count']:2d} {pname:>4s} "
                      f"{flop * 1e-9:9.4f} {runs:5d} {med:10.3f} {mn:10.3f} {rate:9.2f}")
                lines.append(f"RESULT name={o['name']} pass={pname} ms={med:.4f} gflops={rate:.3f} "
                             f"gflop={flop * 1e-9:.5f} runs={runs} count={o['count']} op={o['kind']}")
                tot[p] += med
                enc[p] += o["count"] * med
        except Exception as e:  # a real error: report, go on, exit non-zero
            errors += 1
            print(f"{o['name']:16s} error: {e}", file=sys.stderr)
            for pname in ("fwd", "bwd"):
                lines.append(f"RESULT name={o['name']} pass={pname} status=error "
                             f"count={o['count']} op={o['kind']}")
    print()
    for p in range(2):
        print(f"sum of medians, {'bwd' if p else 'fwd'}: {tot[p]:.3f} ms (each op once); "
              f"{enc[p]:.3f} ms weighted by x (one MiT-B0 encoder "
              f"{'backward' if p else 'forward'})")
    macs = sum(o["count"] * op_macs(o) for o in ops) / args.batch
    print(f"encoder MACs counted (convs, linears, attention): {macs * 1e-9:.3f} G per image "
          f"(spec 8.1: 0.61 G at 256x256)")
    print(f"{errors} errors\n")
    print("\n".join(lines))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
