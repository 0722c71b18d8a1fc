#!/usr/bin/env python3
"""lstmtrain --device cuda end to end, for tests/gpu/run.sh on a machine with a GPU.

On the small synthetic set of tests/py/test_lstmtrain.py (40 series, embeddings 16 wide,
hidden 8, 3 epochs, seeded), against the same program on the CPU:
- fp32: every epoch's validation predictions and val_loss within 1e-4 of the CPU run's
  (the same arithmetic in another order of sums);
- --resume on the GPU: stopped after epoch 1 and resumed to 3, the validation and test
  predictions equal the uninterrupted GPU run's within 1e-6;
- bf16: the run completes, its predictions differ from the fp32 GPU run's (the rounding is
  there) by less than 0.05.
Usage: lstmtrain_gpu.py LSTMTRAIN [WORK]. Exit 0 when every check passed, 1 otherwise.
GPU_DEVICE (default cuda) names the device under test; GPU_DEVICE=cpu runs the script's own
logic on a machine without a GPU.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "py"))
from test_lstmtrain import make_dataset, read_pred  # noqa: E402

failures = []
DEVICE = os.environ.get("GPU_DEVICE", "cuda")


def check(ok, what):
    print("%s %s" % ("ok  " if ok else "FAIL", what), flush=True)
    if not ok:
        failures.append(what)


def run(prog, data, out, *extra):
    args = [prog, "--hidden", "8", "--epochs", "3", "--bag", "2", "--lr", "3e-3", "--seed",
            "4", "-j", "1", "-o", out] + list(extra) + [data["sequences"], data["folds"],
                                                        data["emb"]]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-2000:])
        sys.exit("FAIL lstmtrain %s: exit %d" % (" ".join(extra), proc.returncode))
    return proc


def predictions(out, name):
    _, prob, attrs = read_pred(os.path.join(out, name))
    return prob, attrs


def main():
    prog = sys.argv[1]
    work = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="lstmtrain-gpu.")
    data = make_dataset(os.path.join(work, "data"))
    cpu, gpu = os.path.join(work, "cpu"), os.path.join(work, "gpu")
    run(prog, data, cpu, "--device", "cpu")
    run(prog, data, gpu, "--device", DEVICE)
    for epoch in (1, 2, 3):
        name = "val_epoch%d.h5" % epoch
        p_cpu, a_cpu = predictions(cpu, name)
        p_gpu, a_gpu = predictions(gpu, name)
        diff = float(np.abs(p_cpu - p_gpu).max())
        loss_diff = abs(float(a_cpu["val_loss"]) - float(a_gpu["val_loss"]))
        check(p_cpu.shape == p_gpu.shape and diff <= 1e-4 and loss_diff <= 1e-4,
              "epoch %d on the GPU against the CPU: predictions max diff %.2e, val_loss %.6f "
              "against %.6f (limit 1e-4)" % (epoch, diff, float(a_gpu["val_loss"]),
                                             float(a_cpu["val_loss"])))

    part = os.path.join(work, "gpu_resumed")
    run(prog, data, part, "--device", DEVICE, "--epochs", "1")
    run(prog, data, part, "--device", DEVICE, "--resume")
    for name in ("val.h5", "test.h5"):
        diff = float(np.abs(predictions(gpu, name)[0] - predictions(part, name)[0]).max())
        check(diff <= 1e-6, "GPU run resumed after epoch 1: %s max diff %.2e from the "
              "uninterrupted GPU run (limit 1e-6)" % (name, diff))

    mixed = os.path.join(work, "gpu_bf16")
    run(prog, data, mixed, "--device", DEVICE, "--precision", "bf16")
    p16, attrs = predictions(mixed, "val.h5")
    diff = float(np.abs(p16 - predictions(gpu, "val.h5")[0]).max())
    check(0 < diff < 0.05, "bf16 on the GPU (precision=%s): predictions %.2e from fp32's "
          "(above 0, limit 0.05)" % (attrs.get("precision", "?"), diff))
    print("lstmtrain on the GPU: %s" % ("failed: %s" % "; ".join(failures) if failures
                                        else "every check passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
