#!/usr/bin/python3
"""bin/pth2h5 on the full torchvision ResNeXt-101 32x8d (random weights), in the long tests.

Runs only with ICH_LONG_TESTS=1 (make test-long); otherwise it skips. tests/ref/pth_make.py
--full writes the model's state_dict in the older serialization (as the hub's WSL weights)
and the whole model in the zip archive (as torch.save(model)); each is imported with
--arch resnext101_32x8d, and every one of its 626 tensors must equal torch.load's bit for
bit, in torch's order, with the architecture group of the model; the state_dict written back
with --to-pth loads in torch (weights_only=True) equal to the original. Prints the times.
"""
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "ref"))

if os.environ.get("ICH_LONG_TESTS") != "1":
    print("skip: long test (ICH_LONG_TESTS=1, or make test-long, runs it)")
    sys.exit(77)

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import testlib  # noqa: E402
from testlib import check  # noqa: E402

torch = testlib.import_or_skip("torch")

WORK = testlib.WORK
PY = os.environ.get("PY", "/usr/bin/python3")


def main():
    fix = os.path.join(WORK, "r101")
    subprocess.run([PY, os.path.join(HERE, "..", "ref", "pth_make.py"), fix, "--full"],
                   check=True)
    for name in ("r101_sd_legacy", "r101_module"):
        src = os.path.join(fix, name + ".pth")
        dst = os.path.join(WORK, name + ".h5")
        start = time.time()
        proc = testlib.run("pth2h5", "--arch", "resnext101_32x8d", "-o", dst, src)
        secs = time.time() - start
        check(proc.returncode == 0, f"{name}: exit {proc.returncode} in {secs:.1f} s "
              f"({os.path.getsize(src) / 2**20:.0f} MiB) {proc.stderr.strip()[-300:]}")
        if proc.returncode != 0:
            continue
        obj = torch.load(src, map_location="cpu")
        ref = obj.state_dict() if isinstance(obj, torch.nn.Module) else obj
        with h5py.File(dst, "r") as f:
            g = f["state_dict"]
            check(list(g) == list(ref), f"{name}: {len(g)} names in torch's order")
            bad = [k for k, v in ref.items()
                   if k not in g or g[k].shape != tuple(v.shape) or g[k].dtype != v.numpy().dtype
                   or not np.array_equal(g[k][()], v.numpy())]
            check(not bad, f"{name}: every tensor bit-identical ({len(ref)}; differing: "
                  f"{bad[:3]})")
            arch = f["architecture"].attrs
            check(list(arch["layers"]) == [3, 4, 23, 3] and arch["width_per_group"] == 8 and
                  arch["num_outputs"] == 1000 and f.attrs["model"] in ("resnext101_32x8d",
                                                                        b"resnext101_32x8d"),
                  f"{name}: architecture layers {list(arch['layers'])}, model attribute")
        if name == "r101_sd_legacy":
            back = os.path.join(WORK, "r101_back.pth")
            start = time.time()
            proc = testlib.run("pth2h5", "--to-pth", "-o", back, dst)
            secs = time.time() - start
            check(proc.returncode == 0, f"--to-pth: exit {proc.returncode} in {secs:.1f} s")
            if proc.returncode == 0:
                again = torch.load(back, map_location="cpu", weights_only=True)
                same = list(again) == list(ref) and all(
                    again[k].dtype == v.dtype and torch.equal(again[k], v)
                    for k, v in ref.items())
                check(same, "--to-pth: torch.load(weights_only=True) gives torch's state_dict")
                os.remove(back)
        del obj, ref
        os.remove(dst)
    testlib.finish("pth2h5 ResNeXt-101")


if __name__ == "__main__":
    main()
