#!/usr/bin/python3
"""cnntrain run again into a folder that holds checkpoints (tiny model, 32 px PPM phantoms,
seeded, one engine thread):
  - without --resume: exit 2, a message naming --resume and --force, every file as it was
    (bytes); --resume with --force: exit 2;
  - --force with --epochs 1 over a 2-epoch run that saved every step: no step<S>.h5 and no
    epoch2.h5 left, and epoch1.h5 equals a run's in an empty folder (every dataset, bit for
    bit);
  - the checkpoints record train_jpeg_dir, train_folds_file and a folds fingerprint; --resume
    with a folds file of other content (a training label flipped): exit 2, no new
    checkpoint; a copy of the whole folder (output, images, folds, as `cp -a` of a demo)
    resumes, saying the other JPEG folder; with the same inputs it goes on to epoch 3;
  - --force keeps files merely named like checkpoints (epoch_notes.h5 ...); a folder holding
    another model's checkpoint: exit 2 with or without --force or --resume, unchanged;
  - --fold 3 of a 3-fold file: exit 2, nothing written.
Needs no shared data; a few seconds.
"""
import os
import shutil

import h5py

import testlib as T
from testlib import BIN, WORK, run_ok
from test_lstmtrain_rerun import expect_refused, rerun_and_force

os.environ["OMP_NUM_THREADS"] = "1"

ph = T.phantom(os.path.join(WORK, "ph"), "--series", "12", "--slices", "6-8", "--size", "64",
               "--seed", "5", "--prevalence", "0.9", "-j", "2")
img = os.path.join(WORK, "img")
run_ok("dcm2jpg", "-j", "2", "--format", "ppm", "-o", img, ph)
folds = os.path.join(WORK, "folds.h5")
run_ok("mkfolds", "-k", "3", "-o", folds, os.path.join(ph, "labels.csv"),
       os.path.join(img, "meta.h5"))
TRAIN = ["--arch", "tiny", "--size", "32", "--batch", "8", "--micro-batch", "4", "--lr", "1e-3",
         "--seed", "4", "-j", "1", "--fold", "1"]


def cnntrain(out, *extra, images=img, folds_file=folds):
    return T.run("cnntrain", *(TRAIN + list(extra) + ["-o", out, images, folds_file]))


def main():
    assert os.path.exists(os.path.join(BIN, "cnntrain"))
    run = os.path.join(WORK, "run")
    proc = cnntrain(run, "--epochs", "2", "--save-every", "1")
    assert proc.returncode == 0, proc.stderr
    steps = [n for n in os.listdir(run) if n.startswith("step")]
    assert steps and os.path.exists(os.path.join(run, "epoch2.h5")), os.listdir(run)
    rerun_and_force(cnntrain, run, "epoch2.h5")

    # ---- --resume with other inputs ----
    with h5py.File(os.path.join(run, "epoch2.h5"), "r") as f:
        recorded = {k: f.attrs[k] for k in ("train_jpeg_dir", "train_folds_file")}
    recorded = {k: v.decode() if isinstance(v, bytes) else v for k, v in recorded.items()}
    assert recorded == {"train_jpeg_dir": img, "train_folds_file": folds}, recorded
    with h5py.File(os.path.join(run, "epoch2.h5"), "r") as f:
        assert len(f.attrs["train_folds_fingerprint"]) == 16
    other_folds = os.path.join(WORK, "folds-other.h5")
    shutil.copy(folds, other_folds)
    with h5py.File(other_folds, "r+") as f:
        labels, fold = f["label"][()], f["fold"][()]
        row = int(next(i for i in range(len(fold)) if fold[i] == 0 and labels[i, 0] >= 0))
        labels[row, 0] = 1 - labels[row, 0]  # a training slice's label flipped
        f["label"][...] = labels
    expect_refused(cnntrain(run, "--epochs", "3", "--resume", folds_file=other_folds),
                   ["FOLDS.h5", other_folds, "fingerprint"], "other folds content")
    assert not os.path.exists(os.path.join(run, "epoch3.h5"))

    # A copied output folder, JPEG folder and folds file (cp -a of a demo) resumes.
    copied = os.path.join(WORK, "copied")
    shutil.copytree(WORK, copied, ignore=shutil.ignore_patterns("copied", "mixed", "foreign",
                                                                 "fold3", "run-*"))
    img_copy, folds_copy = os.path.join(copied, "img"), os.path.join(copied, "folds.h5")
    proc = T.run_plain("cnntrain", *(TRAIN + ["--epochs", "3", "--resume", "-o",
                                              os.path.join(copied, "run"), img_copy,
                                              folds_copy]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert os.path.exists(os.path.join(copied, "run", "epoch3.h5")), os.listdir(copied)
    assert "not compared" in proc.stderr and img in proc.stderr, proc.stderr[-2000:]
    proc = cnntrain(run, "--epochs", "3", "--resume")
    assert proc.returncode == 0 and os.path.exists(os.path.join(run, "epoch3.h5")), proc.stderr
    T.passed("checkpoints record %s and a folds fingerprint; --resume with a folds file of "
             "another content: exit 2, no epoch3.h5; a copied folder (output, images, folds) "
             "resumed to epoch 3, the other JPEG folder said; the same inputs: epoch 3"
             % recorded)

    # ---- files merely named like checkpoints, and another model's checkpoint ----
    mixed = os.path.join(WORK, "mixed")
    os.mkdir(mixed)
    others = ("epoch_notes.h5", "steps_table.h5", "epoch-summary.h5", "epoch2.h5.txt")
    for name in others:
        with open(os.path.join(mixed, name), "w") as f:
            f.write("not a checkpoint\n")
    proc = cnntrain(mixed, "--epochs", "1", "--force")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(os.listdir(mixed)) == sorted(others + ("epoch1.h5",)), os.listdir(mixed)
    foreign = os.path.join(WORK, "foreign")
    os.mkdir(foreign)
    shutil.copy(os.path.join(mixed, "epoch1.h5"), os.path.join(foreign, "epoch3.h5"))
    with h5py.File(os.path.join(foreign, "epoch3.h5"), "r+") as f:
        f.attrs["model"] = "seqmodel"
    with open(os.path.join(foreign, "epoch3.h5"), "rb") as f:
        before = f.read()
    for options in ((), ("--force",), ("--resume",)):
        expect_refused(cnntrain(foreign, "--epochs", "1", *options),
                       ["seqmodel", "another -o"], "foreign " + str(options))
        assert os.listdir(foreign) == ["epoch3.h5"], os.listdir(foreign)
        with open(os.path.join(foreign, "epoch3.h5"), "rb") as f:
            assert f.read() == before, "the refused run changed the sequence model's file"
    T.passed("--force kept %s (named like checkpoints, not ones); a folder holding a sequence "
             "model's epoch3.h5: exit 2 with and without --force and --resume, the file as it "
             "was" % " ".join(others))

    # ---- a fold the folds file lacks ----
    out = os.path.join(WORK, "fold3")
    expect_refused(cnntrain(out, "--fold", "3"), ["--fold 3", "folds 0 to 2"], "--fold 3")
    assert not os.path.exists(out)
    T.passed("--fold 3 of a 3-fold file: exit 2, nothing written")
    T.finish("cnntrain rerun")


if __name__ == "__main__":
    main()
