#!/usr/bin/python3
"""cnntrain killed and resumed, and stopped by a non-finite loss (tiny model, 64 px PPM
phantoms, seeded, one engine thread so that every run's sums are the same):
  - kill -9 mid-epoch: a run saving a checkpoint every step is killed once step3.h5 exists
    (wherever it then is, possibly inside a checkpoint write); --resume continues from the
    newest complete checkpoint, and its final checkpoint equals the uninterrupted run's in
    every dataset (weights, buffers, Adam moments, RNG state) bit for bit, and in step, epoch
    and val_loss;
  - a non-finite loss: resuming from an epoch-1 checkpoint whose last batch norm scale is 3e38
    (the logits overflow) stops with exit 1 (cnntrain --help) and a message saying so; the
    checkpoint there stays byte for byte as it was and no new or temporary file appears.
Needs no shared data.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

import testlib
from testlib import BIN, WORK, check, run_ok

# One engine thread: on a loaded machine two spinning threads made these runs 20 times slower.
os.environ["OMP_NUM_THREADS"] = "1"

ph = testlib.phantom(os.path.join(WORK, "ph"), "--series", "30", "--slices", "8-10", "--size",
                     "64", "--seed", "11", "--prevalence", "0.9", "-j", "2")
img = os.path.join(WORK, "img")
run_ok("dcm2jpg", "-j", "2", "--format", "ppm", "-o", img, ph)
folds = os.path.join(WORK, "folds.h5")
run_ok("mkfolds", "-o", folds, os.path.join(ph, "labels.csv"), os.path.join(img, "meta.h5"))
TRAIN = ["--arch", "tiny", "--size", "64", "--batch", "16", "--micro-batch", "8", "--lr", "1e-3",
         "--seed", "4", "-j", "2", "--fold", "1", "--epochs", "2"]


def train_cmd(out, *extra):
    return [os.path.join(BIN, "cnntrain"), "-q"] + TRAIN + list(extra) + ["-o", out, img,
                                                                          folds]


def attrs(path):
    with h5py.File(path, "r") as f:
        return {k: f.attrs[k] for k in ("step", "epoch", "val_loss")}


straight = os.path.join(WORK, "straight")
run_ok("cnntrain", *TRAIN, "-o", straight, img, folds)

# ---- kill -9 mid-run, resume ----
killed = os.path.join(WORK, "killed")
proc = subprocess.Popen(train_cmd(killed, "--save-every", "1"), stderr=subprocess.PIPE)
deadline = time.time() + 60
while not os.path.exists(os.path.join(killed, "step3.h5")):
    if proc.poll() is not None or time.time() > deadline:
        proc.kill()
        sys.exit("the run ended or stalled before step3.h5 (exit %s): %s"
                 % (proc.returncode, proc.stderr.read()[-2000:]))
    time.sleep(0.05)
os.kill(proc.pid, signal.SIGKILL)
proc.wait()
left = sorted(os.listdir(killed))
steps = sorted(int(n[4:-3]) for n in left if n.startswith("step") and n.endswith(".h5"))
check("epoch2.h5" not in left and proc.returncode == -signal.SIGKILL,
      "killed by SIGKILL after step %d of 24 (epoch 1 of 2: 12 steps); left: %s"
      % (steps[-1], " ".join(left)))
resumed = subprocess.run(train_cmd(killed, "--resume"), stderr=subprocess.PIPE, text=True)
check(resumed.returncode == 0, "--resume after the kill: exit %d %s"
      % (resumed.returncode, resumed.stderr[-500:]))
ref, got = os.path.join(straight, "epoch2.h5"), os.path.join(killed, "epoch2.h5")
datasets = testlib.h5_datasets(ref)
moments = sum(name.startswith("adam/") for name in datasets)
same = os.path.exists(got) and testlib.same_datasets(ref, got) and attrs(ref) == attrs(got)
check(same and moments > 0,
      "killed and resumed: the %d datasets (%d Adam moments) and step, epoch, val_loss %s "
      "equal the uninterrupted run's bit for bit" % (len(datasets), moments, attrs(ref)))
temporaries = [n for n in os.listdir(killed) if ".tmp-" in n]
check(not temporaries, "no temporary file left after the resume: %s" % (temporaries or "none"))

# ---- a non-finite loss ----
nan_dir = os.path.join(WORK, "nan")
os.makedirs(nan_dir)
poisoned = os.path.join(nan_dir, "epoch1.h5")
shutil.copy(os.path.join(straight, "epoch1.h5"), poisoned)
with h5py.File(poisoned, "r+") as f:
    f["state_dict/layer4.1.bn3.weight"][...] = np.float32(3e38)
before = testlib.file_bytes(poisoned)
proc = subprocess.run(train_cmd(nan_dir, "--resume"), stderr=subprocess.PIPE, text=True)
message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
check(proc.returncode == 1 and "loss is" in message and "stopped" in message,
      "non-finite loss: exit %d (expected 1), '%s'" % (proc.returncode, message))
check(testlib.file_bytes(poisoned) == before and os.listdir(nan_dir) == ["epoch1.h5"],
      "non-finite loss: epoch1.h5 byte for byte as it was, nothing else written (%s)"
      % " ".join(os.listdir(nan_dir)))
help_text = subprocess.run([os.path.join(BIN, "cnntrain"), "--help"], stdout=subprocess.PIPE,
                           text=True).stdout
check("non-finite loss stops the run (exit 1)" in " ".join(help_text.split()),
      "cnntrain --help documents the non-finite loss's exit 1")

testlib.finish("cnntrain resume")
