#!/usr/bin/python3
"""Bad inputs are refused where they are read, before work is spent, with exit 3, a message
naming the file and the problem, and no output left. On a small seeded phantom (lossy JPEGs,
as the pipeline makes them):
  - a JPEG cut at 60% among the validation images: cnntrain stops in its image check, before
    the first step, and writes no checkpoint, not even a per-step one (it used to train on
    the image's grey bottom half, exit 0, or, decoding it strictly, die at validation after
    a whole epoch); one cut at 99% among the test images: embdump --split test stops before
    writing (it used to embed the grey rows, exit 0);
  - folds.h5 with a label 7, a fold -7 or a repeated slice ID (edited with h5py): cnntrain
    and lstmtrain both refuse it, naming the dataset and the slice;
  - sequences.h5 with a series starting where another does, or a slice ID on two rows:
    lstmtrain refuses it (it used to train, exit 0, some test slices missing); a 1-D
    /embedding is described as "not 2-D: N" (it used to say "Nx0");
  - a prediction file whose subtypes attribute is a fixed-length string (h5py writes numpy
    bytes that way) is read whole: bagavg accepts it (it used to read "...,subdural,an");
  - dcm2jpg --list with a missing list file: exit 3, the file named, no source location.
Needs no shared data.
"""
import glob
import os
import shutil
import time

import h5py
import numpy as np

import testlib
from testlib import WORK, check, run, run_ok

os.environ["OMP_NUM_THREADS"] = "1"


def cut(path, fraction):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * fraction)])


def refused(proc, what, *words):
    """exit 3 and every word in stderr."""
    text = proc.stderr.strip().splitlines()
    last = text[-1] if text else ""
    print("%s: exit %d, %r" % (what, proc.returncode, last))
    check(proc.returncode == 3 and all(w in proc.stderr for w in words),
          "%s: exit 3 naming %s" % (what, ", ".join(words)))


def leftovers(folder):
    """Files in folder (absent: none), hidden temporaries included."""
    if not os.path.isdir(folder):
        return []
    return sorted(os.listdir(folder))


def edited_copy(src, dst, edit):
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def main():
    ph = testlib.phantom(os.path.join(WORK, "ph"), "--series", "6", "--slices", "5-7",
                         "--size", "48", "--test-fraction", "0.3", "--seed", "11")
    jpeg = os.path.join(WORK, "jpeg")
    run_ok("dcm2jpg", "-o", jpeg, "--only-inputs", ph)
    folds = os.path.join(WORK, "folds.h5")
    run_ok("mkfolds", "-k", "2", "--method", "stratified", "-o", folds,
           os.path.join(ph, "labels.csv"), os.path.join(jpeg, "meta.h5"))
    seq = os.path.join(WORK, "sequences.h5")
    run_ok("seqbuild", "-o", seq, os.path.join(jpeg, "meta.h5"))
    with h5py.File(folds, "r") as f:
        ids = f["id"].asstr()[:]
        fold = f["fold"][:]
    val_id = ids[fold == 0][0]
    test_id = ids[fold == -1][0]
    train = ["--arch", "tiny", "--size", "32", "--batch", "8", "--micro-batch", "4",
             "--epochs", "1", "--fold", "0", "-j", "2"]

    # A test image cut at 99%: cnntrain does not read it; embdump --split test must refuse.
    test_jpg = os.path.join(jpeg, test_id + ".jpg")
    cut(test_jpg, 0.99)
    cnn = os.path.join(WORK, "cnn")
    run_ok("cnntrain", *train, "-o", cnn, jpeg, folds)
    ckpt = os.path.join(cnn, "epoch1.h5")
    emb = os.path.join(WORK, "emb")
    proc = run("embdump", "--split", "test", "-j", "2", "-o", os.path.join(emb, "test.h5"),
               ckpt, jpeg, folds)
    refused(proc, "embdump, test image cut at 99%", test_jpg, "damaged JPEG")
    check(leftovers(emb) == [], "embdump left nothing in %s: %s" % (emb, leftovers(emb)))

    # A validation image cut at 60%: refused before training starts.
    val_jpg = os.path.join(jpeg, val_id + ".jpg")
    cut(val_jpg, 0.6)
    cnn_cut = os.path.join(WORK, "cnn_cut")
    start = time.time()
    # A checkpoint every step: one written means training began before the check.
    proc = run("cnntrain", *train, "--save-every", "1", "-o", cnn_cut, jpeg, folds)
    seconds = time.time() - start
    refused(proc, "cnntrain, validation image cut at 60%", val_jpg, "damaged JPEG")
    print("cnntrain refused it after %.2f s" % seconds)
    check(leftovers(cnn_cut) == [], "no checkpoint in %s: %s" % (cnn_cut, leftovers(cnn_cut)))

    # Impossible folds.h5 values: both readers refuse them (the damaged images are made whole
    # again for the embeddings lstmtrain needs).
    run_ok("dcm2jpg", "-o", jpeg, "--only-inputs", "--force", ph)
    emb_paths = []
    for split in ("train", "val"):
        path = os.path.join(emb, split + ".h5")
        run_ok("embdump", "--split", split, "-j", "2", "-o", path, ckpt, jpeg, folds)
        emb_paths.append(path)

    def set_label(f):
        f["label"][1, 2] = 7

    def set_fold(f):
        f["fold"][2] = -7

    def repeat_id(f):
        column = f["id"][:]
        column[3] = column[2]
        f["id"][:] = column

    bad = [("label 7", set_label, ["/label", "is 7", "intraventricular"]),
           ("fold -7", set_fold, ["/fold", "is -7"]),
           ("repeated ID", repeat_id, ["/id", "not sorted and unique"])]
    for what, edit, words in bad:
        path = edited_copy(folds, os.path.join(WORK, "folds_%s.h5" % what.replace(" ", "_")),
                            edit)
        out = os.path.join(WORK, "cnn_" + what.replace(" ", "_"))
        refused(run("cnntrain", *train, "-o", out, jpeg, path), "cnntrain, " + what, path,
                *words)
        check(leftovers(out) == [], "cnntrain (%s) wrote nothing" % what)
        out = os.path.join(WORK, "lstm_" + what.replace(" ", "_"))
        proc = run("lstmtrain", "--hidden", "8", "--epochs", "1", "--bag", "1", "-o", out,
                   seq, path, *emb_paths)
        refused(proc, "lstmtrain, " + what, path, *words)
        check(leftovers(out) == [], "lstmtrain (%s) wrote nothing" % what)

    # sequences.h5 with a series over another's rows, or a slice on two rows: lstmtrain
    # would predict some slices twice and leave others out of test.h5.
    def same_start(f):
        starts = f["series/start"][:]
        starts[1] = starts[0]
        f["series/start"][:] = starts

    def repeat_slice(f):
        column = f["slices/id"][:]
        column[1] = column[0]
        f["slices/id"][:] = column

    for what, edit, words in [("series 1 starting at series 0", same_start, ["overlap"]),
                              ("repeated slice", repeat_slice, ["two rows of /slices/id"])]:
        path = edited_copy(seq, os.path.join(WORK, "seq_%s.h5" % what.replace(" ", "_")),
                            edit)
        out = os.path.join(WORK, "lstm_seq_" + what.replace(" ", "_"))
        proc = run("lstmtrain", "--hidden", "8", "--epochs", "1", "--bag", "1", "-o", out,
                   path, folds, *emb_paths)
        refused(proc, "lstmtrain, " + what, path, *words)
        check(leftovers(out) == [], "lstmtrain (%s) wrote nothing" % what)

    # A 1-D /embedding: its shape said as it is.
    flat = os.path.join(WORK, "flat_embedding.h5")
    shutil.copyfile(emb_paths[0], flat)
    with h5py.File(flat, "r+") as f:
        column = f["embedding"][:, 0]
        del f["embedding"]
        f["embedding"] = column
    out = os.path.join(WORK, "lstm_flat")
    proc = run("lstmtrain", "--hidden", "8", "--epochs", "1", "--bag", "1", "-o", out, seq,
               folds, flat, emb_paths[1])
    refused(proc, "lstmtrain, 1-D /embedding", flat, "not 2-D: %d" % len(column))
    check("%dx0" % len(column) not in proc.stderr, "no made-up second dimension")

    # A fixed-length subtypes attribute, every character of it read.
    pred = os.path.join(WORK, "fixed_subtypes.h5")
    shutil.copyfile(emb_paths[1], pred)
    with h5py.File(pred, "r+") as f:
        subtypes = f.attrs["subtypes"]
        subtypes = subtypes.decode() if isinstance(subtypes, bytes) else str(subtypes)
        del f.attrs["subtypes"]
        f.attrs["subtypes"] = np.bytes_(subtypes.encode())
    with h5py.File(pred, "r") as f:
        stored = f.attrs.get_id("subtypes").get_type()
        fixed = not stored.is_variable_str()
    check(fixed, "the edited attribute is a fixed-length string")
    submission = os.path.join(WORK, "fixed.csv")
    proc = run("bagavg", "-o", submission, pred)
    print("bagavg on a fixed-length subtypes attribute: exit %d %s"
          % (proc.returncode, proc.stderr.strip()[-200:]))
    check(proc.returncode == 0 and os.path.isfile(submission),
          "bagavg reads a fixed-length subtypes attribute whole")

    # A missing --list file.
    missing = os.path.join(WORK, "no_such_list.txt")
    out = os.path.join(WORK, "jpeg_list")
    proc = run("dcm2jpg", "-o", out, "--list", missing)
    refused(proc, "dcm2jpg --list missing", missing, "cannot read the list file")
    check(".c:" not in proc.stderr, "no source location in %r" % proc.stderr.strip())
    check(leftovers(out) == [], "dcm2jpg wrote nothing")

    testlib.finish("input validation")


if __name__ == "__main__":
    main()
