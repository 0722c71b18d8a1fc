#!/usr/bin/python3
"""PyTorch checkpoint fixtures for bin/pth2h5 (tests/py/test_pth2h5*.py), written by torch.

Usage: pth_make.py OUTDIR [--full]

Writes, each in both serializations (NAME.pth: zip archive, NAME_legacy.pth: the older
stream, torch.save(..., _use_new_zipfile_serialization=False)):
  sd       the tiny ResNeXt's state_dict (seeded random weights, running statistics and
           num_batches_tracked set to non-default values)
  module   the same model pickled whole (torch.save(model))
  mixed    a dict of special tensors: float16, bfloat16, float64, int64, int32, int16, int8,
           uint8, bool, a transposed (non-contiguous) view, two names sharing one storage at
           different offsets, a scalar, an empty tensor, a strided slice
  dp       the state_dict with DataParallel's 'module.' prefix
  sd_bf16  the state_dict with every float tensor in bfloat16
  nested   {'epoch', 'state_dict', 'optimizer'} (Adam state after one step)
  p4       the state_dict pickled with protocol 4 (zip only: FRAME, MEMOIZE, STACK_GLOBAL)
With --full, only torchvision's ResNeXt-101 32x8d (random weights, running statistics
randomised too), as users have the pretrained weights: r101_sd_legacy.pth, its state_dict in
the older serialization (as the hub's ig_resnext101_32x8 file), and r101_module.pth, the whole
model in the zip archive (as torch.save(model) writes it).
"""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import resnext_ref  # noqa: E402


def tiny_model():
    torch.manual_seed(1234)
    model = resnext_ref.build("tiny", 6)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn_like(buf) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand_like(buf) + 0.5)
            elif name.endswith("num_batches_tracked"):
                buf.fill_(17 + len(name))
    return model.eval()


def mixed():
    g = torch.Generator().manual_seed(7)
    base = torch.randn(6, 10, generator=g)
    shared = torch.arange(40, dtype=torch.float32)
    return {
        "half": torch.randn(3, 5, generator=g).half(),
        "bf16": torch.randn(4, 3, generator=g).bfloat16(),
        "double": torch.randn(2, 3, generator=g).double(),
        "long": torch.arange(-5, 7, dtype=torch.int64).reshape(3, 4),
        "int": torch.tensor([1, -2, 3 << 20], dtype=torch.int32),
        "short": torch.tensor([-7, 300], dtype=torch.int16),
        "char": torch.tensor([-128, 5, 127], dtype=torch.int8),
        "byte": torch.tensor([0, 200, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "transposed": base.t(),
        "slice": base[1:5:2, 3:9:3],
        "shared_a": shared[:16].view(4, 4),
        "shared_b": shared[20:32].view(3, 4),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "half_t": torch.randn(4, 6, generator=g).half().t(),
    }


def save_both(obj, out, name, **kw):
    torch.save(obj, os.path.join(out, name + ".pth"), **kw)
    torch.save(obj, os.path.join(out, name + "_legacy.pth"), _use_new_zipfile_serialization=False)


def full(out):
    torch.manual_seed(101)
    big = resnext_ref.build("resnext101_32x8d", 1000).eval()
    with torch.no_grad():
        for name, buf in big.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn_like(buf) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand_like(buf) + 0.5)
    torch.save(big.state_dict(), os.path.join(out, "r101_sd_legacy.pth"),
               _use_new_zipfile_serialization=False)
    torch.save(big, os.path.join(out, "r101_module.pth"))


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    if "--full" in sys.argv:
        full(out)
        return
    model = tiny_model()
    sd = model.state_dict()
    save_both(sd, out, "sd")
    save_both(model, out, "module")
    save_both(mixed(), out, "mixed")
    save_both({"module." + k: v for k, v in sd.items()}, out, "dp")
    save_both({k: v.bfloat16() if v.is_floating_point() else v for k, v in sd.items()}, out,
              "sd_bf16")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    model.eval()
    save_both({"epoch": 3, "state_dict": model.state_dict(), "optimizer": opt.state_dict(),
               "note": "fine-tuned"}, out, "nested")
    torch.save(sd, os.path.join(out, "p4.pth"), pickle_protocol=4)


if __name__ == "__main__":
    main()
