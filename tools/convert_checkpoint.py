#!/usr/bin/env python3
"""Converts a PyTorch checkpoint (.pth, pytorch_model.bin) into a safetensors file that
cluda_load_safetensors reads (no Python at training time).

  python tools/convert_checkpoint.py pretrained/mit_b5.pth mit_b5.safetensors
  python tools/convert_checkpoint.py work_dirs/run/iter_40000.pth run.safetensors --dtype bf16

- Loads with torch.load(weights_only=True); a pickle that needs more (old mmcv checkpoints
  store a "meta" dict with arbitrary objects) is retried with weights_only=False only when
  --trust-pickle is given, because unpickling can run code.
- Unwraps state dicts nested under "state_dict" or "model" (mmcv / DAFormer / timm style).
- Keeps the key names exactly (the C loader maps them: mmseg "backbone."/"decode_head." with
  UDA "model."/"ema_model."/"imnet_model." prefixes, NVlabs "patch_embed1." ..., Hugging
  Face "segformer.encoder." ...), so one file serves every consumer.
- Floating tensors are stored as --dtype (f32 default; f16/bf16 halve the file); integer
  tensors (BatchNorm num_batches_tracked) keep their dtype, and the C loader ignores them.
- Prints the key prefixes and the naming the C loader will detect.
"""
import argparse
import collections
import sys

import torch
from safetensors.torch import save_file

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def load_checkpoint(path, trust_pickle):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - the message is shown to the user
        if not trust_pickle:
            sys.exit(f"{path}: torch.load(weights_only=True) failed: {err}\n"
                     "If you trust this file, rerun with --trust-pickle.")
        print(f"warning: weights_only load failed ({err}); unpickling fully", file=sys.stderr)
        return torch.load(path, map_location="cpu", weights_only=False)


def unwrap_state_dict(obj):
    """The tensor dict inside a checkpoint: obj itself or obj["state_dict"] / obj["model"]."""
    for _ in range(3):
        if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
            return obj
        if isinstance(obj, dict):
            for key in ("state_dict", "model"):
                if key in obj and isinstance(obj[key], dict):
                    obj = obj[key]
                    break
            else:
                break
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if torch.is_tensor(v)}
        if tensors:
            skipped = sorted(k for k in obj if k not in tensors)
            if skipped:
                print(f"warning: skipping {len(skipped)} non-tensor entries, e.g. {skipped[:3]}",
                      file=sys.stderr)
            return tensors
    sys.exit("no state dict found (looked at the top level, 'state_dict' and 'model')")


def detect_naming(keys):
    """Mirrors detect_naming() in src/io/weights.c."""
    if any(k.startswith("segformer.") for k in keys):
        return "hf"
    if any(k.startswith(("backbone.", "model.backbone.", "model.decode_head.",
                         "ema_model.backbone.", "decode_head.")) for k in keys):
        return "mmseg"
    if any(k.startswith("patch_embed1.") for k in keys):
        return "nvlabs"
    return "unknown (cluda_load_safetensors will refuse it)"


def prefix_summary(keys, depth=2):
    counts = collections.Counter(".".join(k.split(".")[:depth]) for k in keys)
    return sorted(counts.items())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("input", help=".pth / pytorch_model.bin checkpoint")
    parser.add_argument("output", help="safetensors file to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="f32",
                        help="storage dtype of floating tensors (default f32)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow a full (code-executing) unpickle if weights_only fails")
    args = parser.parse_args()

    state = unwrap_state_dict(load_checkpoint(args.input, args.trust_pickle))
    target = DTYPES[args.dtype]
    out = {}
    for key, value in state.items():
        value = value.detach()
        if value.is_floating_point():
            value = value.to(target)
        out[key] = value.contiguous().clone()  # clone: shared storages cannot be saved
    save_file(out, args.output, metadata={"format": "pt", "source": args.input})

    keys = list(out)
    print(f"{args.output}: {len(keys)} tensors, "
          f"{sum(v.numel() for v in out.values()):,} elements, floats stored as {args.dtype}")
    for prefix, count in prefix_summary(keys):
        print(f"  {prefix:40s} {count}")
    print(f"detected naming: {detect_naming(keys)}")


if __name__ == "__main__":
    main()
