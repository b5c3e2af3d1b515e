#!/usr/bin/env python3
"""cuda_emu source transform: a .cu file -> host C++ for the emulator (emu_kernel.h).

  kernel<T><<<grid, block, shmem, stream>>>(a, b, c)
    -> emu::launch("kernel<T>", "file:line", emu::Cfg(grid, block, shmem, stream), kernel<T>, {a, b, c})
  __shared__ double sh[8][33];
    -> auto sh = emu::shared_decl<double[8][33]>(__COUNTER__, "sh");

Line numbers are preserved (newlines inside a rewritten launch are re-emitted after it, and the
output starts with #line), so compiler messages and emulator reports name the .cu lines.
Usage: transform.py in.cu out.cpp
"""
import re
import sys


def skip_ws_back(s, i):
    while i >= 0 and s[i].isspace():
        i -= 1
    return i


def match_back(s, i, open_c, close_c):
    """s[i] == close_c; returns the index of the matching open_c."""
    depth = 0
    while i >= 0:
        if s[i] == close_c:
            depth += 1
        elif s[i] == open_c:
            depth -= 1
            if depth == 0:
                return i
        i -= 1
    raise SystemExit("transform: unbalanced %s" % open_c)


def match_fwd(s, i, open_c, close_c):
    """s[i] == open_c; returns the index of the matching close_c (skips strings/chars)."""
    depth = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c in "\"'":
            q = c
            i += 1
            while s[i] != q:
                i += 2 if s[i] == "\\" else 1
        elif c == open_c:
            depth += 1
        elif c == close_c:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise SystemExit("transform: unbalanced %s" % open_c)


def rewrite_launches(src, path):
    out = []
    pos = 0
    count = 0
    while True:
        j = src.find("<<<", pos)
        if j < 0:
            break
        # callee: identifier (with ::) optionally followed by <template args>
        e = skip_ws_back(src, j - 1)
        if src[e] == ">":
            b = match_back(src, e, "<", ">")
            targs = src[b:e + 1]
            e = skip_ws_back(src, b - 1)
        else:
            targs = ""
        s0 = e
        while s0 >= 0 and (src[s0].isalnum() or src[s0] in "_:"):
            s0 -= 1
        name = src[s0 + 1:e + 1]
        callee = name + re.sub(r"\s+", " ", targs)
        k = src.find(">>>", j)
        cfg = src[j + 3:k]
        a = k + 3
        while src[a].isspace():
            a += 1
        assert src[a] == "(", "launch without argument list at %s" % path
        a_end = match_fwd(src, a, "(", ")")
        args = src[a + 1:a_end]
        line = src.count("\n", 0, j) + 1
        whole = src[s0 + 1:a_end + 1]
        nl = whole.count("\n")
        args1 = args.replace("\n", " ").strip()
        repl = 'emu::launch("%s", "%s:%d", emu::Cfg(%s), [](auto &&...emu_a) { %s(emu_a...); }%s)' % (
            callee, path.split("/")[-1], line, cfg.replace("\n", " "), callee,
            (", " + args1) if args1 else "")
        out.append(src[pos:s0 + 1])
        out.append(repl + "\n" * nl if nl == 0 else repl)
        # keep line numbers: put the swallowed newlines after the statement's end
        if nl:
            semi = src.find(";", a_end)
            out.append(src[a_end + 1:semi + 1] + "\n" * nl)
            pos = semi + 1
        else:
            pos = a_end + 1
        count += 1
    out.append(src[pos:])
    return "".join(out), count


SHARED = re.compile(
    r"__shared__\s+((?:[A-Za-z_][\w:]*\s+)*?[A-Za-z_][\w:<>, ]*?)\s+([A-Za-z_]\w*)\s*((?:\[[^\]]*\]\s*)*);")


def rewrite_shared(src):
    def repl(m):
        typ, name, dims = m.group(1).strip(), m.group(2), re.sub(r"\s+", "", m.group(3))
        if "extern" in typ:
            raise SystemExit("transform: extern __shared__ (dynamic shared memory) not supported yet")
        return 'auto %s = emu::shared_decl<%s%s>(__COUNTER__, "%s");' % (name, typ, dims, name)
    return SHARED.subn(repl, src)


def main():
    inp, outp = sys.argv[1], sys.argv[2]
    src = open(inp).read()
    src, n_launch = rewrite_launches(src, inp)
    src, n_shared = rewrite_shared(src)
    if "__shared__" in re.sub(r"//.*|/\*.*?\*/", "", src, flags=re.S):
        raise SystemExit("transform: a __shared__ declaration was not understood in %s" % inp)
    open(outp, "w").write('#line 1 "%s"\n' % inp + src)
    print("%s: %d launches, %d shared arrays" % (inp.split("/")[-1], n_launch, n_shared), file=sys.stderr)


main()
