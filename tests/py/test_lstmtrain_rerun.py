#!/usr/bin/python3
"""lstmtrain run again into a folder that holds a run (synthetic inputs of test_lstmtrain,
hidden 8, seeded, one thread):
  - without --resume: exit 2, a message naming --resume and --force, every file as it was
    (bytes); --resume with --force: exit 2;
  - --force with --epochs 1: the earlier run's epoch 2 and 3 files (checkpoints, predictions)
    are gone, and every file left equals that of a run in an empty folder;
  - --resume with other inputs than the checkpoint's run read: another list of embeddings
    files; the embeddings, the folds (one training label flipped) or the sequences (two
    slices of a series swapped) rewritten in place under the same path: exit 2 naming the
    input, no new epoch; a copy of the folds file under another name (same content) resumes;
  - a checkpoint without fingerprints (made before them) resumes with a warning;
  - a folder holding another model's epoch1.h5: exit 2 with or without --force or --resume,
    nothing changed (files merely named like checkpoints included);
  - --fold 3 of a folds file with 3 folds: exit 2, nothing written;
  - --bag 5 with --epochs 2: a warning that every epoch is bagged, epochs_bagged = 2 and
    val.h5 the mean of epochs 1 and 2 (float32 rounding, 1e-6).
Needs no shared data; a few seconds.
"""
import os
import shutil

import h5py
import numpy as np

import testlib as T
from test_lstmtrain import make_dataset, read_pred, train, write_emb, write_folds

os.environ["OMP_NUM_THREADS"] = "1"


def snapshot(folder):
    """Every file of folder: its bytes, by name (test_cnntrain_rerun uses it too)."""
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = f.read()
    return out


def epochs_in(folder):
    return sorted(int(n[5:-3]) for n in os.listdir(folder)
                  if n.startswith("epoch") and n.endswith(".h5"))


def expect_refused(proc, patterns, what):
    """Exit 2 with every pattern in the message."""
    assert proc.returncode == 2, (what, proc.returncode, proc.stderr[-2000:])
    for pattern in patterns:
        assert pattern in proc.stderr, (what, pattern, proc.stderr[-2000:])


def rerun_and_force(start, run, newest):
    """What cnntrain and lstmtrain share, start(out, *options) running one of them: a rerun
    into run (a finished run, newest its newest checkpoint) without --resume and one with
    --resume --force are refused and change nothing; --force --epochs 1 on a copy of run
    leaves the files of a run in an empty folder, equal dataset by dataset."""
    before = snapshot(run)
    expect_refused(start(run), ["--resume", "--force", newest], "rerun")
    assert snapshot(run) == before, "the refused rerun changed the folder"
    expect_refused(start(run, "--resume", "--force"), ["--resume", "--force"],
                   "--resume --force")
    T.passed("a rerun into a folder holding %d files: exit 2 naming --resume, --force and "
             "%s, every file byte for byte as it was; --resume with --force: exit 2"
             % (len(before), newest))

    forced, fresh = run + "-forced", run + "-fresh"
    shutil.copytree(run, forced)
    assert start(fresh, "--epochs", "1").returncode == 0
    proc = start(forced, "--epochs", "1", "--force")
    assert proc.returncode == 0, proc.stderr
    left = sorted(os.listdir(forced))
    assert left == sorted(os.listdir(fresh)), (left, os.listdir(fresh))
    for name in left:
        assert T.same_datasets(os.path.join(fresh, name), os.path.join(forced, name)), name
    T.passed("--force --epochs 1 over %d files: left %s, each equal to a run's in an empty "
             "folder" % (len(before), " ".join(left)))


def main():
    work = T.WORK
    data = make_dataset(os.path.join(work, "data"))
    run = os.path.join(work, "run")
    assert train(data, run).returncode == 0
    rerun_and_force(lambda out, *options: train(data, out, *options), run, "epoch3.h5")

    # ---- --resume with other inputs ----
    def resume(*extra, emb=None, sequences=None, folds=None):
        d = dict(data)
        d["sequences"] = sequences or data["sequences"]
        d["folds"] = folds or data["folds"]
        return train(d, run, "--epochs", "4", "--resume", *extra, emb=emb)

    half = os.path.join(work, "half.h5")
    ids, emb = data["ids"], data["embedding"]
    write_emb(half, ids[:len(ids) // 2], emb[:len(ids) // 2] + np.float32(0.5))
    proc = resume(emb=[data["emb"], half])
    expect_refused(proc, ["other embeddings", half], "another embeddings list")

    saved_emb = data["emb"] + ".saved"
    os.replace(data["emb"], saved_emb)
    write_emb(data["emb"], ids, emb + np.float32(0.25))
    proc = resume()
    os.replace(saved_emb, data["emb"])
    expect_refused(proc, ["other embeddings", "fingerprint"], "embeddings rewritten in place")

    with h5py.File(data["folds"], "r") as f:
        folds_ids = [s.decode() for s in f["id"][()]]
        labels, fold = f["label"][()], f["fold"][()]
    flipped = labels.copy()
    row = int(np.flatnonzero(fold == 1)[0])  # a training slice (validation is fold 0)
    flipped[row, 0] = 1 - flipped[row, 0]
    saved_folds = data["folds"] + ".saved"
    shutil.copy(data["folds"], saved_folds)
    write_folds(data["folds"], folds_ids, flipped, fold)
    proc = resume()
    os.replace(saved_folds, data["folds"])
    expect_refused(proc, ["other FOLDS.h5", data["folds"]], "folds rewritten in place")

    saved_seq = data["sequences"] + ".saved"
    shutil.copy(data["sequences"], saved_seq)
    long_series = int(np.argmax(data["lengths"]))
    with h5py.File(data["sequences"], "r+") as f:
        first = data["starts"][long_series]
        pair = f["slices/id"][first:first + 2]
        f["slices/id"][first:first + 2] = pair[::-1]
    proc = resume()
    os.replace(saved_seq, data["sequences"])
    expect_refused(proc, ["other SEQUENCES.h5"], "sequences rewritten in place")
    assert epochs_in(run) == [1, 2, 3], epochs_in(run)

    copied = os.path.join(work, "folds-copy.h5")
    shutil.copy(data["folds"], copied)
    proc = resume(folds=copied)
    assert proc.returncode == 0 and epochs_in(run) == [1, 2, 3, 4], proc.stderr[-2000:]
    T.passed("--resume refused (exit 2, input named, no new epoch) with another embeddings "
             "list and with the embeddings, folds and sequences rewritten in place; a copy of "
             "the folds file under another name resumed to epoch 4")

    # ---- a checkpoint made before input fingerprints: warned, not refused ----
    with h5py.File(os.path.join(run, "epoch4.h5"), "r+") as f:
        for name in [n for n in f.attrs if n.endswith("_fingerprint")]:
            del f.attrs[name]
    emb_copy = os.path.join(work, "emb-copy.h5")
    shutil.copy(data["emb"], emb_copy)
    proc = T.run_plain("lstmtrain", "--hidden", "8", "--epochs", "5", "--bag", "2", "--lr",
                       "3e-3", "--seed", "4", "-j", "1", "--resume", "-o", run,
                       data["sequences"], data["folds"], emb_copy)
    assert proc.returncode == 0 and epochs_in(run) == [1, 2, 3, 4, 5], proc.stderr[-2000:]
    assert "made without input fingerprints" in proc.stderr, proc.stderr[-2000:]
    T.passed("a checkpoint without input fingerprints (older runs) resumed from another "
             "embeddings path with a warning, to epoch 5")

    # ---- another model's checkpoints in the output folder ----
    foreign = os.path.join(work, "foreign")
    os.mkdir(foreign)
    shutil.copy(os.path.join(run, "epoch1.h5"), os.path.join(foreign, "epoch1.h5"))
    with h5py.File(os.path.join(foreign, "epoch1.h5"), "r+") as f:
        f.attrs["model"] = np.bytes_(b"resnext101_32x8d")
    for name in ("epoch_notes.h5", "epochs.h5", "step1.h5"):
        with open(os.path.join(foreign, name), "w") as f:
            f.write("not a checkpoint\n")
    before = snapshot(foreign)
    for options in ((), ("--force",), ("--resume",)):
        proc = train(data, foreign, "--epochs", "1", *options)
        expect_refused(proc, ["resnext101_32x8d", "another -o"], "foreign " + str(options))
        assert snapshot(foreign) == before, "the refused run changed the folder"
    T.passed("an output folder holding a classifier's epoch1.h5: exit 2 with and without "
             "--force and --resume, every file (epoch_notes.h5, epochs.h5 too) as it was")

    # ---- a fold the folds file lacks ----
    three = os.path.join(work, "folds3.h5")
    shutil.copy(data["folds"], three)
    with h5py.File(three, "r+") as f:
        f.attrs["folds"] = np.int64(3)
    out = os.path.join(work, "fold3")
    d = dict(data, folds=three)
    proc = train(d, out, "--fold", "3")
    expect_refused(proc, ["--fold 3", "folds 0 to 2"], "--fold 3")
    assert not os.path.exists(out), os.listdir(out)
    assert train(d, out, "--fold", "2", "--epochs", "1").returncode == 0
    T.passed("--fold 3 of a folds file with 3 folds: exit 2, nothing written (--fold 2 runs)")

    # ---- --bag above --epochs ----
    bagged = os.path.join(work, "bag5")
    proc = T.run_plain("lstmtrain", "--hidden", "8", "--epochs", "2", "--bag", "5", "--lr",
                       "3e-3", "--seed", "4", "-j", "1", "-o", bagged, data["sequences"],
                       data["folds"], data["emb"])
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "--bag 5" in line]
    assert warned and "warning" in warned[0] and "all the epochs (2)" in warned[0], proc.stderr
    ids, prob, attrs = read_pred(os.path.join(bagged, "val.h5"))
    mean = np.zeros(prob.shape)
    for epoch in (1, 2):
        epoch_ids, epoch_prob, _ = read_pred(os.path.join(bagged, "val_epoch%d.h5" % epoch))
        row = {sid: k for k, sid in enumerate(epoch_ids)}
        mean += epoch_prob[[row[sid] for sid in ids]] / 2
    err = float(np.abs(prob - mean).max())
    assert int(attrs["epochs_bagged"]) == 2 and err < 1e-6, (attrs["epochs_bagged"], err)
    T.passed("--bag 5 --epochs 2: warned (%r), epochs_bagged 2, val.h5 the mean of epochs 1-2 "
             "(max error %.2g)" % (warned[0], err))
    T.finish("lstmtrain rerun")


if __name__ == "__main__":
    main()
