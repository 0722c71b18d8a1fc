#!/usr/bin/python3
"""lstmtrain end to end on small synthetic inputs (embeddings 16 wide, hidden 8), seeded:

- outputs: epoch<E>.h5 checkpoints with the module's state_dict names and torch shapes,
  val_epoch<E>.h5 / test_epoch<E>.h5 holding exactly the slices of their split, probabilities
  in [0, 1]; each epoch's val_loss attribute equals the challenge metric recomputed here in
  numpy (1e-9 relative); val.h5 / test.h5 equal the mean of the last --bag epochs' files
  (float32 rounding, 1e-6);
- resume: a run stopped after epoch 1 and resumed (--resume) to epoch 3 ends with the
  checkpoint, Adam moments and predictions of the uninterrupted 3-epoch run, bit for bit;
  --resume with another --seed or --hidden is refused (2);
- inputs: several EMB files are unioned by ID and a slice present in two gets the mean of its
  embeddings (the run equals one on the averaged single file, 1e-6); a float16 file is read;
  predictions in batches of 16 series equal those made one series at a time, after epoch 1
  and after epoch 2 (1e-5);
- PyTorch (the module of tests/ref/lstm_ref.py with a run's initial weights, lr 0): the
  validation predictions, all validation series in one batch (the recurrence path for 8
  series or more, which test_nn_lstm's batch of 3 does not reach), equal the plain module's on
  the padded batch with --pad-like-original and packed sequences' by default (1e-5);
  slices without embeddings are dropped and counted; with unknown (-1) training labels the
  first step's loss equals PyTorch's (the module of tests/ref/lstm_ref.py with the run's
  initial weights, BCE means over the known labels; 1e-5 relative);
  an empty validation fold still gives val.h5 with no rows;
- --precision bf16 (on a CPU with AVX512-BF16; else the notice and fp32 attributes): the
  lr-0 validation predictions, all series in one batch, equal lstm_ref.py's emulation of the
  engine's mixed precision (1e-5) and differ from the fp32 run's (the rounding is there); a
  3-epoch run's checkpoints hold float32 weights, its files the attribute precision=bf16, and
  its validation loss is within 1% of the fp32 run's;
- refused, exit code and message checked, nothing written: a missing EMB file (3), EMB files of
  different widths (3), --hidden above the width (2), a series mixing splits (3),
  an unknown --device (2).
Needs no shared data; 5-20 s (one thread; more on a loaded machine).
"""
import os
import shutil
import sys

import h5py
import numpy as np

import testlib as T

SUBTYPES = T.SUBTYPES
WEIGHTS = np.array([1, 1, 1, 1, 1, 2], dtype=np.float64)


def weighted_log_loss(prob, label):
    """The challenge metric in numpy: clip 1e-5, weight 2 for 'any', rows with label -1 out."""
    p = np.clip(prob.astype(np.float64), 1e-5, 1 - 1e-5)
    known = label >= 0
    y = np.where(known, label, 0)
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    w = np.broadcast_to(WEIGHTS, loss.shape) * known
    return float((loss * w).sum() / w.sum())


def make_dataset(root, n_series=40, width=16, seed=0, length_range=(1, 9), folds=3,
                 test_series=8, amplitude=1.5, noise=1.0):
    """Synthetic seqbuild / mkfolds / embdump files in root. Each slice has a hidden state z
    (5 subtypes, each present with p = 0.3); its label is the majority of z over the slice and
    its two neighbours (the series' end slices repeat themselves), 'any' the maximum; its
    embedding is amplitude * z A + noise * N(0, 1), A fixed random directions. So a slice's own
    embedding shows only part of what decides its label; its neighbours show the rest.
    Returns a dict of paths and arrays."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    directions = rng.normal(size=(5, width)) / np.sqrt(width) * 3
    ids, series_of, label_rows, emb_rows, starts, lengths = [], [], [], [], [], []
    used = set()
    for s in range(n_series):
        # Series 0 (validation) and 1 (training) have a single slice.
        n = int(rng.integers(length_range[0], length_range[1] + 1)) if s > 1 else 1
        z = (rng.random((n, 5)) < 0.3).astype(np.float64)
        padded = np.concatenate([z[:1], z, z[-1:]])
        majority = (padded[:-2] + padded[1:-1] + padded[2:] >= 2).astype(np.int8)
        labels = np.concatenate([majority, majority.max(axis=1, keepdims=True)], axis=1)
        emb = amplitude * z @ directions + noise * rng.normal(size=(n, width))
        starts.append(len(ids))
        lengths.append(n)
        for t in range(n):
            while True:
                sid = "ID_%09x" % int(rng.integers(16 ** 9))
                if sid not in used:
                    break
            used.add(sid)
            ids.append(sid)
            series_of.append(s)
            label_rows.append(labels[t])
            emb_rows.append(emb[t])
    labels = np.array(label_rows, dtype=np.int8)
    emb = np.array(emb_rows, dtype=np.float32)
    series_of = np.array(series_of)
    fold_of_series = np.array([s % folds for s in range(n_series)], dtype=np.int32)
    fold_of_series[n_series - test_series:] = -1
    fold = fold_of_series[series_of]
    labels[fold < 0] = -1

    seq = os.path.join(root, "sequences.h5")
    with h5py.File(seq, "w") as f:
        f["series/start"] = np.array(starts, dtype=np.int64)
        f["series/length"] = np.array(lengths, dtype=np.int64)
        f["slices/id"] = np.array([i.encode() for i in ids])
        f["slices/series"] = series_of.astype(np.int32)
    order = np.argsort(np.array(ids))
    folds_path = os.path.join(root, "folds.h5")
    write_folds(folds_path, [ids[i] for i in order], labels[order], fold[order])
    emb_path = os.path.join(root, "emb.h5")
    write_emb(emb_path, ids, emb)
    return {"root": root, "sequences": seq, "folds": folds_path, "emb": emb_path, "ids": ids,
            "labels": labels, "fold": fold, "embedding": emb, "series_of": series_of,
            "starts": starts, "lengths": lengths}


def write_folds(path, ids, labels, fold):
    with h5py.File(path, "w") as f:
        f["id"] = np.array([i.encode() for i in ids])
        f["label"] = labels.astype(np.int8)
        f["fold"] = fold.astype(np.int32)


def write_emb(path, ids, emb, dtype=np.float32):
    with h5py.File(path, "w") as f:
        f["id"] = np.array([i.encode() for i in ids])
        f["embedding"] = emb.astype(dtype)


def read_pred(path):
    with h5py.File(path, "r") as f:
        ids = [s.decode() for s in f["id"][()]]
        return ids, f["prob"][()], dict(f.attrs)


def train(data, out, *args, emb=None):
    """lstmtrain on data (hidden 8, 3 epochs, bag 2, lr 3e-3, seeded; 1 thread: a tiny model
    only loses time to thread synchronisation, badly so on a loaded machine)."""
    emb = emb or [data["emb"]]
    base = ["--hidden", "8", "--epochs", "3", "--bag", "2", "--lr", "3e-3", "--seed", "4",
            "-j", "1", "-o", out]
    return T.run("lstmtrain", *(base + list(args) + [data["sequences"], data["folds"]] + emb))


def train_ok(data, out, *args, emb=None):
    proc = train(data, out, *args, emb=emb)
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        sys.exit("lstmtrain %s failed (exit %d)" % (out, proc.returncode))
    return proc


def check_outputs(data, out):
    ids = np.array(data["ids"])
    label_of = dict(zip(data["ids"], data["labels"]))
    for split, want in (("val", data["fold"] == 0), ("test", data["fold"] < 0)):
        losses = []
        for e in (1, 2, 3):
            got, prob, attrs = read_pred(os.path.join(out, "%s_epoch%d.h5" % (split, e)))
            assert sorted(got) == sorted(ids[want]), "%s epoch %d: other slices" % (split, e)
            assert prob.shape == (len(got), 6) and prob.dtype == np.float32
            assert np.all((prob >= 0) & (prob <= 1)), "probabilities outside [0, 1]"
            if split == "val":
                mine = weighted_log_loss(prob, np.array([label_of[i] for i in got]))
                assert abs(mine - attrs["val_loss"]) <= 1e-9 * mine, (mine, attrs["val_loss"])
                losses.append(mine)
        bag_ids, bag, attrs = read_pred(os.path.join(out, split + ".h5"))
        mean = {}
        for e in (2, 3):
            got, prob, _ = read_pred(os.path.join(out, "%s_epoch%d.h5" % (split, e)))
            for i, row in zip(got, prob):
                mean[i] = mean.get(i, 0) + row.astype(np.float64) / 2
        diff = max(np.abs(bag[k] - mean[i]).max() for k, i in enumerate(bag_ids))
        assert diff <= 1e-6, "%s.h5 differs from the mean of epochs 2, 3 by %g" % (split, diff)
        assert attrs["lstm_epochs"] == "2,3", attrs["lstm_epochs"]
        T.passed("%s: %d slices in every epoch file; bag = mean of epochs 2, 3 (max diff %.1e)%s"
                 % (split, len(bag_ids), diff, "; epoch val losses %s match numpy"
                    % ", ".join("%.5f" % v for v in losses) if losses else ""))

    with h5py.File(os.path.join(out, "epoch3.h5"), "r") as f:
        sd = f["state_dict"]
        shapes = {k: sd[k].shape for k in sd}
        assert f.attrs["epoch"] == 3 and "adam" in f
    want = {"lstm1.weight_ih_l0": (32, 48), "lstm1.weight_hh_l0_reverse": (32, 8),
            "lstm1.bias_ih_l0": (32,), "lstm2.weight_ih_l0": (32, 16),
            "linear1.weight": (16, 16), "linear2.bias": (16,), "linear.weight": (6, 16),
            "linear.bias": (6,)}
    for k, v in want.items():
        assert shapes.get(k) == v, "%s: shape %s, want %s" % (k, shapes.get(k), v)
    assert len(shapes) == 22, sorted(shapes)
    T.passed("epoch3.h5: 22 tensors under the module's state_dict names and torch shapes")


def reference():
    """tests/ref/lstm_ref.py (imported here: it needs torch, which most checks do not)."""
    sys.path.insert(0, T.REF_DIR)
    import lstm_ref
    return lstm_ref


def torch_model(torch, out):
    """The module of tests/ref/lstm_ref.py with the weights of out/epoch1.h5."""
    model = reference().SeqModel(16, 8)
    with h5py.File(os.path.join(out, "epoch1.h5"), "r") as f:
        model.load_state_dict({k: torch.from_numpy(f["state_dict"][k][()])
                               for k in f["state_dict"]})
    return model


def padded_batch(torch, data, series, labels):
    """Embeddings and labels of the given series, front-padded to the longest; lengths."""
    steps = max(data["lengths"][s] for s in series)
    emb = torch.zeros(len(series), steps, 16)
    lab = torch.full((len(series), steps, 6), -1.0)
    lengths = []
    for b, s in enumerate(series):
        a, n = data["starts"][s], data["lengths"][s]
        emb[b, steps - n:] = torch.from_numpy(data["embedding"][a:a + n])
        lab[b, steps - n:] = torch.from_numpy(labels[a:a + n].astype(np.float32))
        lengths.append(n)
    return emb, lab, lengths


def lr0_run(data, out, *args):
    """One epoch at lr 0 (epoch1.h5 keeps the initial weights); the -v log."""
    proc = T.run_plain("lstmtrain", "-v", "--hidden", "8", "--epochs", "1", "--bag", "1",
                       "--lr", "0", "-j", "1", "-o", out, *args, data["sequences"],
                       data["folds"], data["emb"])
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def masked_loss_against_torch(data, labels, out):
    """The first step's loss of a run whose one batch holds every training series, some
    labels unknown, against PyTorch on packed sequences, BCE means over the known labels."""
    torch = T.import_or_skip("torch")
    log = lr0_run(data, out, "--batch", "4096")
    ours = float(log.split("step 1: loss ")[1].split()[0])
    model = torch_model(torch, out)
    make_input = reference().model_input
    train = [s for s in range(len(data["starts"])) if data["fold"][data["starts"][s]] > 0]
    emb, lab, lengths = padded_batch(torch, data, train, labels)
    with torch.no_grad():
        logits = model(make_input(emb, lengths), emb, lengths).double()
    y = lab.double()
    known = y >= 0
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y.clamp(min=0),
                                                               reduction="none")
    every = (bce * known).sum() / known.sum()
    anyh = (bce[..., 5] * known[..., 5]).sum() / known[..., 5].sum()
    theirs = float((6 * every + anyh) / 7)
    rel = abs(ours - theirs) / theirs
    assert rel <= 1e-5, "masked loss %.8f, PyTorch %.8f (rel %.1e)" % (ours, theirs, rel)
    unknown = int((labels[np.isin(data["series_of"], train)] < 0).sum())
    T.passed("loss with %d unknown training labels = PyTorch's masked loss (%.6f, rel diff "
             "%.1e <= 1e-5)" % (unknown, ours, rel))


def predictions_against_torch(data, out, original, bf16=False):
    """Validation predictions (all validation series in one batch, over 8 of them: the
    recurrence on the transposed weights) against PyTorch: the plain module on the padded
    batch (--pad-like-original) or packed sequences (default), or with bf16 the emulation of
    the engine's mixed precision. Returns the predictions by slice ID."""
    torch = T.import_or_skip("torch")
    lr0_run(data, out, *(["--pad-like-original"] if original else []),
            *(["--precision", "bf16"] if bf16 else []))
    model = torch_model(torch, out)
    make_input = reference().model_input
    val = [s for s in range(len(data["starts"])) if data["fold"][data["starts"][s]] == 0]
    assert len(val) >= 8, "only %d validation series" % len(val)
    emb, _, lengths = padded_batch(torch, data, val, data["labels"])
    with torch.no_grad():
        logits = model(make_input(emb, lengths), emb, None if original else lengths, bf16)
    steps = emb.shape[1]
    want = {}
    for b, s in enumerate(val):
        a, n = data["starts"][s], data["lengths"][s]
        prob = torch.sigmoid(logits[b, steps - n:]).numpy()
        want.update(zip(data["ids"][a:a + n], prob))
    ids, prob, _ = read_pred(os.path.join(out, "val_epoch1.h5"))
    diff = max(float(np.abs(p - want[i]).max()) for i, p in zip(ids, prob))
    assert len(ids) == len(want) and diff <= 1e-5, "%d slices, max diff %g" % (len(ids), diff)
    T.passed("%s mode: %d validation series in one batch = PyTorch's %s (max diff %.1e <= "
             "1e-5)" % ("bf16" if bf16 else "original" if original else "default", len(val),
                        "bf16 emulation" if bf16 else
                        "plain module" if original else "packed sequences", diff))
    return dict(zip(ids, prob))


def cpu_has_bf16():
    with open("/proc/cpuinfo") as f:
        return " avx512_bf16" in f.read()


def mixed_precision(data, work, fp32_out, plain):
    """--precision bf16 against PyTorch's emulation and against the fp32 runs (fp32_out: the
    3-epoch run; plain: the lr-0 default-mode predictions)."""
    if not cpu_has_bf16():
        out = os.path.join(work, "bf16_absent")
        proc = train_ok(data, out, "--epochs", "1", "--bag", "1", "--precision", "bf16")
        _, _, attrs = read_pred(os.path.join(out, "val.h5"))
        assert "AVX512-BF16" in proc.stderr and attrs["precision"] == "fp32", proc.stderr
        T.passed("--precision bf16 without AVX512-BF16: the notice, precision=fp32")
        return
    emulated = predictions_against_torch(data, os.path.join(work, "torch_bf16"), False, True)
    moved = max(float(np.abs(p - plain[i]).max()) for i, p in emulated.items())
    assert moved > 0, "bf16 predictions equal the fp32 ones: no rounding happened"
    out = os.path.join(work, "bf16")
    train_ok(data, out, "--precision", "bf16")
    with h5py.File(os.path.join(out, "epoch3.h5"), "r") as f:
        assert f.attrs["precision"] in ("bf16", b"bf16"), f.attrs["precision"]
        dtypes = {f["state_dict"][k].dtype for k in f["state_dict"]}
        assert dtypes == {np.dtype(np.float32)}, dtypes
    losses = []
    for run in (fp32_out, out):
        _, _, attrs = read_pred(os.path.join(run, "val_epoch3.h5"))
        losses.append(attrs["val_loss"])
    _, _, attrs = read_pred(os.path.join(out, "val.h5"))
    assert attrs["precision"] in ("bf16", b"bf16"), attrs
    rel = abs(losses[1] - losses[0]) / losses[0]
    assert rel <= 0.01, "bf16 val loss %.5f, fp32 %.5f" % (losses[1], losses[0])
    T.passed("bf16: lr-0 predictions %.1e from fp32's; 3 epochs: float32 checkpoint, "
             "precision=bf16, val loss %.5f vs fp32 %.5f (rel %.1e <= 1e-2)"
             % (moved, losses[1], losses[0], rel))

    # Resumed in fp32 for a 4th epoch: the bag of epochs 3 and 4 says it mixes precisions.
    train_ok(data, out, "--epochs", "4", "--resume")
    _, _, attrs = read_pred(os.path.join(out, "val.h5"))
    got = (attrs["precision"], attrs.get("epoch_precisions"))
    got = tuple(v.decode() if isinstance(v, bytes) else v for v in got)
    assert got == ("mixed", "bf16,fp32"), got
    T.passed("bf16 run resumed in fp32: the bag of epochs 3-4 has precision=mixed, "
             "epoch_precisions=bf16,fp32")


def main():
    work = T.WORK
    data = make_dataset(os.path.join(work, "data"))
    out = os.path.join(work, "straight")
    proc = train_ok(data, out)
    check_outputs(data, out)

    # Resume: stop after epoch 1 (as a killed run leaves it), then continue to epoch 3.
    part = os.path.join(work, "resumed")
    train_ok(data, part, "--epochs", "1")
    # A killed run's temporary: its PID is that of a process that has ended (the sweep keeps
    # those of live processes).
    ended = os.spawnlp(os.P_NOWAIT, "true", "true")
    os.waitpid(ended, 0)
    with open(os.path.join(part, ".epoch2.h5.tmp-%d-1" % ended), "wb") as f:
        f.write(b"partial")
    first_epoch = os.stat(os.path.join(part, "epoch1.h5")).st_mtime_ns
    proc = T.run_plain("lstmtrain", "--hidden", "8", "--epochs", "3", "--bag", "2", "--lr",
                       "3e-3", "--seed", "4", "-j", "1", "-o", part, "--resume",
                       data["sequences"], data["folds"], data["emb"])
    assert proc.returncode == 0, proc.stderr
    assert "resuming from" in proc.stderr and "epoch 1," in proc.stderr, proc.stderr
    assert os.stat(os.path.join(part, "epoch1.h5")).st_mtime_ns == first_epoch, \
        "the resumed run rewrote epoch 1"
    for name in ("epoch3.h5", "val.h5", "test.h5", "val_epoch2.h5", "test_epoch3.h5"):
        assert T.same_datasets(os.path.join(out, name), os.path.join(part, name)), \
            "resumed %s differs from the uninterrupted run's" % name
    assert not [n for n in os.listdir(part) if n.startswith(".")], os.listdir(part)
    T.passed("resume after epoch 1: epoch3.h5 (weights, Adam), val/test files equal the "
             "uninterrupted run's bit for bit; leftover temporary file swept")
    for what, extra, pattern in (("--seed", ["--seed", "5"], "lstm_seed 5"),
                                 ("--hidden", ["--hidden", "4"], "another model")):
        proc = train(data, part, "--resume", *extra)
        assert proc.returncode == 2 and pattern in proc.stderr, (what, proc.stderr)
    T.passed("--resume with another --seed or --hidden than the checkpoint's: exit 2")

    # Two files overlapping on 30 slices (values +-0.5 around the truth), one of them float16:
    # the same run as on the single file of the means.
    ids, emb = data["ids"], data["embedding"]
    half = len(ids) // 2
    shift = np.float32(0.5)
    a = os.path.join(work, "emb_a.h5")
    b = os.path.join(work, "emb_b.h5")
    write_emb(a, ids[:half + 30], np.concatenate([emb[:half], emb[half:half + 30] + shift]))
    write_emb(b, ids[half:], np.concatenate([emb[half:half + 30] - shift, emb[half + 30:]]))
    single = os.path.join(work, "single")
    union = os.path.join(work, "union")
    train_ok(data, single, "--epochs", "1", "--bag", "1")
    proc = train_ok(data, union, "--epochs", "1", "--bag", "1", emb=[a, b])
    _, p1, _ = read_pred(os.path.join(single, "val.h5"))
    _, p2, _ = read_pred(os.path.join(union, "val.h5"))
    diff = float(np.abs(p1 - p2).max())
    assert diff <= 1e-6, "union of two files differs from the averaged file by %g" % diff
    # Default mode: a slice's prediction does not depend on its batch. Batches of 16 series
    # (the recurrence on a transposed copy of W_hh, kept between batches) against batches of
    # one (the plain path), after epoch 1 and after epoch 2 (the copy must follow the weights).
    batch_diff = 0.0
    for size in ("16", "1"):
        train_ok(data, os.path.join(work, "batch" + size), "--epochs", "2", "--predict-batch",
                 size)
    for name in ("val_epoch1.h5", "test_epoch1.h5", "val_epoch2.h5", "test_epoch2.h5"):
        _, p16, _ = read_pred(os.path.join(work, "batch16", name))
        _, p1, _ = read_pred(os.path.join(work, "batch1", name))
        diff = float(np.abs(p16 - p1).max())
        assert diff <= 1e-5, "%s: batch 16 vs 1 differ by %g" % (name, diff)
        batch_diff = max(batch_diff, diff)
    T.passed("predictions in batches of 16 equal those one series at a time, epochs 1 and 2 "
             "(max diff %.1e)" % batch_diff)
    half16 = os.path.join(work, "emb16.h5")
    write_emb(half16, ids, emb, np.float16)
    train_ok(data, os.path.join(work, "f16"), "--epochs", "1", "--bag", "1", emb=[half16])
    T.passed("two EMB files overlapping on 30 slices = their mean (max diff %.1e); float16 "
             "EMB read" % diff)

    # Slices without embeddings: dropped and counted; unknown training labels; empty val fold.
    drop = os.path.join(work, "emb_drop.h5")
    write_emb(drop, ids[5:], emb[5:])
    labels = data["labels"].copy()
    train_rows = np.nonzero(data["fold"] > 0)[0][:10]
    labels[train_rows, 2] = -1
    order = np.argsort(np.array(ids))
    write_folds(data["folds"], [ids[i] for i in order], labels[order], data["fold"][order])
    proc = T.run_plain("lstmtrain", "--hidden", "8", "--epochs", "1", "--fold", "7", "-o",
                       os.path.join(work, "drop"), data["sequences"], data["folds"], drop)
    assert proc.returncode == 0, proc.stderr
    assert "5 slices of" in proc.stderr and "no embedding" in proc.stderr, proc.stderr
    got, prob, _ = read_pred(os.path.join(work, "drop", "val.h5"))
    assert len(got) == 0 and prob.shape == (0, 6), prob.shape
    T.passed("5 slices without embedding reported; -1 training labels train; an empty fold "
             "gives val.h5 with 0 rows")
    masked_loss_against_torch(data, labels, os.path.join(work, "masked"))
    predictions_against_torch(data, os.path.join(work, "torch_original"), True)
    plain = predictions_against_torch(data, os.path.join(work, "torch_default"), False)
    mixed_precision(data, work, out, plain)
    write_folds(data["folds"], [ids[i] for i in order], data["labels"][order],
                data["fold"][order])

    # Refused inputs: exit code, message, nothing written.
    narrow = os.path.join(work, "emb_narrow.h5")
    write_emb(narrow, ids[:3], emb[:3, :12])
    mixed_folds = os.path.join(work, "folds_mixed.h5")
    fold = data["fold"].copy()
    # The first slice of a training series of 2 or more slices moves to the validation fold.
    victim = next(s for s in range(len(data["starts"]))
                  if data["lengths"][s] >= 2 and fold[data["starts"][s]] > 0)
    fold[data["starts"][victim]] = 0
    write_folds(mixed_folds, [ids[i] for i in order], data["labels"][order], fold[order])
    cases = [
        ("a missing EMB file", [data["emb"], os.path.join(work, "absent.h5")], [], 3,
         "absent.h5"),
        ("EMB files of different widths", [data["emb"], narrow], [], 3, "wide"),
        ("--hidden above the width", [data["emb"]], ["--hidden", "17"], 2, "exceeds"),
        ("an unknown --device", [data["emb"]], ["--device", "tpu9"], 2, "tpu9"),
    ]
    # Without a GPU (or a build without the CUDA backend) the reason, before any work.
    if not os.path.exists("/dev/nvidiactl"):
        cases.append(("--device cuda without a GPU", [data["emb"]], ["--device", "cuda"], 2,
                      "--device cuda: "))
    for what, embs, extra, code, pattern in cases + [("a series mixing splits", None, [], 3,
                                                      "mixes splits")]:
        bad = os.path.join(work, "bad")
        folds_file = mixed_folds if embs is None else data["folds"]
        args = ["--hidden", "8", "--epochs", "1"] + extra + ["-o", bad, data["sequences"],
                                                             folds_file] + (embs or [data["emb"]])
        proc = T.run_plain("lstmtrain", *args)
        first = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        assert proc.returncode == code, "%s: exit %d, want %d: %s" % (what, proc.returncode,
                                                                     code, proc.stderr)
        assert pattern in proc.stderr, "%s: message %r" % (what, proc.stderr)
        assert not os.path.exists(bad), "%s: %s was created" % (what, bad)
        T.passed("%s: exit %d, '%s', nothing written" % (what, code, first[:110]))
    # -o naming the folder an input lies in: its val.h5 / test.h5 could overwrite an input.
    emb_dir = os.path.dirname(os.path.abspath(data["emb"]))
    before = sorted(os.listdir(emb_dir))
    proc = T.run_plain("lstmtrain", "--hidden", "8", "--epochs", "1", "-o", emb_dir,
                       data["sequences"], data["folds"], data["emb"])
    assert proc.returncode == 2 and "output folder" in proc.stderr, proc.stderr
    assert sorted(os.listdir(emb_dir)) == before, "files written into the input's folder"
    T.passed("-o the folder of an input: exit 2, nothing written")
    shutil.rmtree(os.path.join(work, "data"))
    T.finish("lstmtrain")


if __name__ == "__main__":
    main()
