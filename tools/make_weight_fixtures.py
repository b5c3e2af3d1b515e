#!/usr/bin/env python3
"""Writes the small weight-loading fixtures of tests/unit/test_safetensors.c and
test_weights.c into tests/fixtures/weights/ (committed; rerun only when a case changes):

  dtypes.safetensors        written by the reference `safetensors` library: F32/F16/BF16/F64
                            tensors with edge values (subnormals, inf, nan, -0) and, for each,
                            "<name>.expected" = torch's own float32 conversion; a 0-d scalar,
                            an empty tensor and __metadata__.
  hf_tiny_segformer.safetensors
                            a real Hugging Face SegformerForSemanticSegmentation with a tiny
                            config, written by save_pretrained, i.e. in the original hub naming
                            ("segformer.encoder.block.0.0.attention.self.key.weight", ...), so
                            the C loader is checked against HF's actual key names.
  hf_tiny_segformer_v5.safetensors
                            the same model's in-memory state dict: transformers >= 5 renames
                            the modules ("segformer.stages.0.blocks.0.attention.k_proj.weight",
                            "decode_head.linear_projections.0.proj.weight", ...).
  hf_tiny_imagenet.safetensors
                            SegformerForImageClassification (encoder + classifier.*), hub naming.

Tiny config (the C test builds the matching cluda segmentor): hidden sizes 8/16/24/32,
depths 2/1/1/1, heads 1/1/2/2, sr ratios 8/4/2/1, mlp ratio 4, decoder hidden size 16,
5 labels, 1000-way ImageNet classifier replaced by 7 labels.

Needs torch, safetensors and transformers (the /tmp/torchvenv environment); deterministic.
"""
import argparse
import os
import shutil
import tempfile

import torch
from safetensors.torch import save_file

TINY = dict(
    num_channels=3,
    num_encoder_blocks=4,
    depths=[2, 1, 1, 1],
    sr_ratios=[8, 4, 2, 1],
    hidden_sizes=[8, 16, 24, 32],
    patch_sizes=[7, 3, 3, 3],
    strides=[4, 2, 2, 2],
    num_attention_heads=[1, 1, 2, 2],
    mlp_ratios=[4, 4, 4, 4],
    decoder_hidden_size=16,
)


def dtype_fixture(path):
    f16_bits = [0x0001, 0x03FF, 0x0400, 0x7BFF, 0x7C00, 0xFC00, 0x7E00, 0x8000, 0x3C00, 0xC000,
                0x3555, 0x8001]
    bf16_bits = [0x3F80, 0xC049, 0x7F80, 0xFF80, 0x7FC0, 0x0001, 0x8000, 0x4F00, 0x0080]
    f16 = torch.tensor(f16_bits, dtype=torch.int32).to(torch.int16).view(torch.float16)
    bf16 = torch.tensor(bf16_bits, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    f64 = torch.tensor([1.0 / 3.0, 1e-40, 1e300, -1e-310, -2.5, 0.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(1234)
    f32 = torch.randn(2, 3, 4, generator=g, dtype=torch.float32)
    f16_matrix = torch.randn(3, 5, generator=g).to(torch.float16)
    tensors = {
        "f16_edge": f16.reshape(3, 4),
        "bf16_edge": bf16,
        "f64_values": f64.reshape(2, 3),
        "f32_random": f32,
        "f16_random": f16_matrix,
        "scalar": torch.tensor(2.75, dtype=torch.float32),
        "empty": torch.zeros(0, 4, dtype=torch.float32),
        "name with \"quotes\" \\ and \u00e9": torch.tensor([7.0], dtype=torch.float32),
    }
    for name in ["f16_edge", "bf16_edge", "f64_values", "f32_random", "f16_random"]:
        tensors[name + ".expected"] = tensors[name].to(torch.float32).clone()
    save_file(tensors, path, metadata={"format": "pt"})  # one key: metadata order is not stable


def hf_fixtures(seg_path, v5_path, cls_path):
    from transformers import (SegformerConfig, SegformerForImageClassification,
                              SegformerForSemanticSegmentation)

    torch.manual_seed(0)
    config = SegformerConfig(**TINY, num_labels=5)
    model = SegformerForSemanticSegmentation(config).eval()
    # Non-trivial BN statistics so that the state mapping is visible in the values.
    with torch.no_grad():
        bn = model.decode_head.batch_norm
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape))
        bn.running_var.copy_(torch.rand(bn.running_var.shape) + 0.5)
    save_hub_naming(model, seg_path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, v5_path, metadata={"format": "pt"})

    torch.manual_seed(1)
    config = SegformerConfig(**TINY, num_labels=7)
    model = SegformerForImageClassification(config).eval()
    save_hub_naming(model, cls_path)


def save_hub_naming(model, path):
    """save_pretrained writes the original (hub) key names, whatever transformers calls the
    modules in memory."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        shutil.copyfile(os.path.join(tmp, "model.safetensors"), path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join("tests", "fixtures", "weights"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    dtype_fixture(os.path.join(args.out, "dtypes.safetensors"))
    hf_fixtures(os.path.join(args.out, "hf_tiny_segformer.safetensors"),
                os.path.join(args.out, "hf_tiny_segformer_v5.safetensors"),
                os.path.join(args.out, "hf_tiny_imagenet.safetensors"))
    for name in sorted(os.listdir(args.out)):
        print(f"{name}: {os.path.getsize(os.path.join(args.out, name))} bytes")


if __name__ == "__main__":
    main()
