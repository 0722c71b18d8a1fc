"""bagavg: averaging, weighting, the submission CSV and the challenge metric.

Prediction files are h5py fixtures (rows in a different order in every file). The written
means are compared with numpy's (tolerance 1e-7), the CSV is read back with csv and gzip
(every slice x 6 subtypes once, sorted, in range), the printed and --scores metric with the
numpy reference in tests/ref/metric_ref.py (tolerance 1e-9) on random and edge cases; on the
challenge label file in $DATA, constant 0.5 predictions must score ln 2. Bad inputs give the
documented exit codes, a message naming the file and slice, and no output file.
"""
import csv
import gzip
import math
import os
import sys

import h5py
import numpy as np

import testlib
from testlib import DATA, SUBTYPES, WORK, check, run, run_plain

sys.path.insert(0, testlib.REF_DIR)
import metric_ref  # noqa: E402

SUBTYPE_ATTR = ",".join(SUBTYPES)
rng = np.random.default_rng(20191113)


def write_pred(path, ids, prob, subtypes=SUBTYPE_ATTR, dtype=np.float32):
    """A predictions.h5 as data-layout.md describes it, written with h5py."""
    with h5py.File(path, "w") as f:
        width = max([1] + [len(s) for s in ids])
        f["id"] = np.array([s.encode() for s in ids], dtype="S%d" % width)
        f["prob"] = np.asarray(prob, dtype=dtype)
        if subtypes is not None:
            f.attrs["subtypes"] = subtypes
        f.attrs["program"] = "test_bagavg"
    return path


def random_ids(n):
    ids = set()
    while len(ids) < n:
        ids.add("ID_%09x" % rng.integers(0, 16 ** 9))
    return sorted(ids)


def shuffled_file(path, ids, prob):
    """The same predictions with the rows in a random order."""
    order = rng.permutation(len(ids))
    return write_pred(path, [ids[i] for i in order], prob[order])


def read_submission(path):
    """The CSV rows as (key, value) pairs, in file order, and the header."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [(r[0], float(r[1])) for r in rows[1:]]


def submission_matrix(path, ids):
    """The written probabilities as an (n x 6) array in ids order; checks the shape first."""
    header, rows = read_submission(path)
    expected_keys = ["%s_%s" % (s, t) for s in sorted(ids) for t in SUBTYPES]
    keys = [k for k, _ in rows]
    check(header == ["ID", "Label"], "%s: header ID,Label (%s)" % (os.path.basename(path),
                                                                   header))
    check(keys == expected_keys, "%s: %d rows, every slice x 6 subtypes exactly once, slices "
          "sorted, subtypes in the official order" % (os.path.basename(path), len(rows)))
    values = {k: v for k, v in rows}
    return np.array([[values.get("%s_%s" % (s, t), np.nan) for t in SUBTYPES] for s in ids])


def write_labels(path, labels, ids):
    """A challenge-format labels CSV; -1 entries get no row."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["ID", "Label"])
        for sid, row in zip(ids, labels):
            for t, y in zip(SUBTYPES, row):
                if y >= 0:
                    w.writerow(["%s_%s" % (sid, t), int(y)])
    return path


def read_scores(path):
    with open(path) as f:
        return dict(line.strip().split("=", 1) for line in f if "=" in line)


def clipped(x, eps=1e-5):
    return np.clip(x, eps, 1 - eps)


# ---- averaging and weighting ----

def test_averaging():
    n = 200
    ids = random_ids(n)
    probs = [rng.random((n, 6)).astype(np.float32) for _ in range(3)]
    files = [shuffled_file(os.path.join(WORK, "avg%d.h5" % k), ids, probs[k]) for k in range(3)]
    as64 = [p.astype(np.float64) for p in probs]

    cases = [
        ("equal weights", [], None),
        ("--weights 2,1,1", ["--weights", "2,1,1"], [2, 1, 1]),
        ("FILE:WEIGHT 0.95/0.05/0", None, [0.95, 0.05, 0.0]),
        # Their sum overflows a double: numpy is given the same ratios.
        ("--weights 1e308,1e308,1e307", ["--weights", "1e308,1e308,1e307"], [10, 10, 1]),
    ]
    for name, extra, weights in cases:
        out = os.path.join(WORK, "avg.csv")
        args = list(files) if extra is not None else [
            "%s:%r" % (f, w) for f, w in zip(files, weights)]
        proc = run("bagavg", "-o", out, *(extra or []), *args)
        check(proc.returncode == 0, "%s: exit 0 (%d) %s" % (name, proc.returncode,
                                                            proc.stderr[-300:]))
        if proc.returncode:
            continue
        want = clipped(np.average(np.stack(as64), axis=0, weights=weights))
        got = submission_matrix(out, ids)
        err = float(np.max(np.abs(got - want)))
        check(err <= 1e-7, "%s: written means equal numpy's (max error %.2e <= 1e-7)"
              % (name, err))

    # --h5-out: the mean as a prediction file (predfile_write), bagged again unchanged.
    out, mean_h5 = os.path.join(WORK, "avg.csv"), os.path.join(WORK, "mean.h5")
    proc = run("bagavg", "-o", out, "--h5-out", mean_h5, *files)
    want = clipped(np.mean(np.stack(as64), axis=0))
    with h5py.File(mean_h5, "r") as f:
        got_ids = f["id"].asstr()[:].tolist()
        got = f["prob"][()]
        attrs = dict(f.attrs)
    err = float(np.max(np.abs(got.astype(np.float64) - want)))
    check(proc.returncode == 0 and got_ids == ids and got.dtype == np.float32
          and err <= 1e-7 and attrs.get("subtypes") == SUBTYPE_ATTR
          and attrs.get("program") == "bagavg" and "bagged_weights" in attrs,
          "--h5-out: sorted IDs, float32 mean (max error %.2e), subtypes and provenance" % err)
    again = os.path.join(WORK, "again.csv")
    proc = run("bagavg", "-o", again, mean_h5)
    err = float(np.max(np.abs(submission_matrix(again, ids) - got.astype(np.float64))))
    check(proc.returncode == 0 and err <= 1e-8,
          "--h5-out file reads back into bagavg (max error %.2e)" % err)

    # The stage-6 blend of two pipelines, and a gzip submission.
    out = os.path.join(WORK, "blend.csv.gz")
    proc = run("bagavg", "-o", out, "--weights", "0.95,0.05", files[0], files[1])
    check(proc.returncode == 0, "blend 0.95/0.05 to .csv.gz: exit 0 (%s)" % proc.stderr[-300:])
    with open(out, "rb") as f:
        check(f.read(2) == b"\x1f\x8b", "blend.csv.gz is gzip (magic bytes)")
    want = clipped(0.95 * as64[0] + 0.05 * as64[1])
    err = float(np.max(np.abs(submission_matrix(out, ids) - want)))
    check(err <= 1e-7, "blend 0.95/0.05, read with Python's gzip: max error %.2e <= 1e-7" % err)


def test_clipping_and_format():
    ids = ["1.2.840.113619.2.55.3.1", "1.2.840.113619.2.55.3.10", "ID_0000aaa11", "ID_ffff00001"]
    prob = np.array([[0, 1, 0.5, 1e-7, 1 - 1e-7, 0.25]] * 4, dtype=np.float32)
    f = write_pred(os.path.join(WORK, "edge.h5"), ids[::-1], prob)
    out = os.path.join(WORK, "edge.csv")
    proc = run("bagavg", "-o", out, f)
    check(proc.returncode == 0, "0/1 probabilities: exit 0 (%s)" % proc.stderr[-200:])
    got = submission_matrix(out, ids)
    lo, hi = float(got.min()), float(got.max())
    check(abs(lo - 1e-5) < 1e-12 and abs(hi - (1 - 1e-5)) < 1e-12,
          "default clip: values in [1e-5, 1 - 1e-5] (min %.9g, max %.9g)" % (lo, hi))
    proc = run("bagavg", "--clip", 0, "-o", out, f)
    got = submission_matrix(out, ids)
    check(proc.returncode == 0 and got.min() == 0 and got.max() == 1,
          "--clip 0: 0 and 1 written unchanged (min %g, max %g)" % (got.min(), got.max()))
    proc = run("bagavg", "--clip", 0.1, "-o", out, f)
    got = submission_matrix(out, ids)
    check(proc.returncode == 0 and abs(got.min() - 0.1) < 1e-12
          and abs(got.max() - 0.9) < 1e-12, "--clip 0.1: values in [0.1, 0.9]")
    wide = write_pred(os.path.join(WORK, "f64.h5"), ids, prob, dtype=np.float64)
    proc = run("bagavg", "-o", out, wide)
    got = submission_matrix(out, ids)
    check(proc.returncode == 0 and abs(got.min() - 1e-5) < 1e-12,
          "float64 /prob accepted (exit %d)" % proc.returncode)
    leftovers = [n for n in os.listdir(WORK) if ".tmp-" in n]
    check(not leftovers, "no temporary files left behind: %s" % leftovers)


# ---- the metric ----

def metric_case(name, ids, prob, labels, extra=()):
    """Run bagavg --labels --scores on one file and compare with the numpy reference."""
    pred = write_pred(os.path.join(WORK, "m.h5"), ids, prob)
    lab = write_labels(os.path.join(WORK, "m_labels.csv"), labels, ids)
    out, scores = os.path.join(WORK, "m.csv"), os.path.join(WORK, "m.scores")
    proc = run("bagavg", "-o", out, "--labels", lab, "--scores", scores, *extra, pred)
    if proc.returncode != 0:
        check(False, "%s: exit 0 (got %d) %s" % (name, proc.returncode, proc.stderr[-300:]))
        return None
    s = read_scores(scores)
    overall, per, rows = metric_ref.score(np.asarray(prob, np.float32).astype(np.float64),
                                          labels)
    got = float(s["score"])
    errs = [abs(got - overall)]
    for t, ref in zip(SUBTYPES, per):
        errs.append(0.0 if math.isnan(ref) and s["loss_" + t] == "nan"
                    else abs(float(s["loss_" + t]) - ref))
    same_rows = [int(s["rows_" + t]) for t in SUBTYPES] == rows
    check(max(errs) <= 1e-9 and same_rows,
          "%s: score %.9f = numpy %.9f (max error over score and subtypes %.1e <= 1e-9), "
          "rows %s" % (name, got, overall, max(errs), rows))
    check("score" in proc.stdout and "%.6f" % overall in proc.stdout,
          "%s: the score is printed on stdout" % name)
    return s


def test_metric():
    n = 300
    ids = random_ids(n)
    prob = rng.random((n, 6)).astype(np.float32)
    labels = (rng.random((n, 6)) < 0.2).astype(int)
    metric_case("random", ids, prob, labels)

    edge = prob.copy()
    edge[:100] = (rng.random((100, 6)) < 0.5).astype(np.float32)  # hard 0/1, clipped
    metric_case("0/1 probabilities", ids, edge, labels)
    s = metric_case("all-negative labels", ids, prob, np.zeros((n, 6), int))
    if s:
        check(s["scored_slices"] == str(n), "all-negative: %s slices scored" % s["scored_slices"])

    partial = labels.copy()
    partial[::7, 2] = -1   # rows absent from the CSV are skipped
    metric_case("partial label rows", ids, prob, partial)

    # Labels for a subset of the predicted slices plus slices never predicted.
    sub_ids = ids[:150] + ["ID_zzzz%05d" % i for i in range(5)]
    sub_labels = np.vstack([labels[:150], np.zeros((5, 6), int)])
    pred = write_pred(os.path.join(WORK, "sub.h5"), ids, prob)
    lab = write_labels(os.path.join(WORK, "sub_labels.csv"), sub_labels, sub_ids)
    scores = os.path.join(WORK, "sub.scores")
    proc = run_plain("bagavg", "-o", os.path.join(WORK, "sub.csv"), "--labels", lab,
                     "--scores", scores, pred)
    s = read_scores(scores) if proc.returncode == 0 else {}
    ref = metric_ref.score(prob[:150].astype(np.float64), labels[:150])[0]
    check(proc.returncode == 0 and abs(float(s.get("score", "nan")) - ref) <= 1e-9
          and s.get("predicted_without_labels") == "150"
          and s.get("labelled_without_prediction") == "5",
          "subset: scored on the 150 labelled slices only (%s vs %.9f), 5 labelled slices "
          "without predictions counted" % (s.get("score"), ref))
    check("warning" in proc.stderr and "ID_zzzz00000" in proc.stderr,
          "subset: warning names the first labelled slice without prediction")
    out = os.path.join(WORK, "strict.csv")
    proc = run("bagavg", "-o", out, "--labels", lab, "--require-labels", pred)
    check(proc.returncode == 3 and "ID_zzzz00000" in proc.stderr and not os.path.exists(out),
          "--require-labels: exit 3 (%d) naming ID_zzzz00000, no output" % proc.returncode)


def write_folds(path, ids, labels, folds):
    """The datasets of folds.h5 that bagavg --baseline reads (data-layout.md)."""
    with h5py.File(path, "w") as f:
        f["id"] = np.array([x.encode() for x in ids], dtype="S%d" % max(len(x) for x in ids))
        f["label"] = np.asarray(labels, dtype=np.int8)
        f["fold"] = np.asarray(folds, dtype=np.int32)
    return path


def test_baseline():
    """--baseline: each label's prevalence over the folds file's labelled slices (outside
    --baseline-holdout), predicted for every scored slice, scored like the predictions."""
    n_folds, n_pred = 400, 120
    fold_ids = random_ids(n_folds)
    fold_labels = (rng.random((n_folds, 6)) < 0.15).astype(int)
    fold_labels[::11, 3] = -1  # missing rows stay out of the prevalence
    folds = rng.integers(-1, 3, n_folds)
    fpath = write_folds(os.path.join(WORK, "base_folds.h5"), fold_ids, fold_labels, folds)
    ids = random_ids(n_pred)
    prob = rng.random((n_pred, 6)).astype(np.float32)
    labels = (rng.random((n_pred, 6)) < 0.2).astype(int)
    pred = write_pred(os.path.join(WORK, "base.h5"), ids, prob)
    lab = write_labels(os.path.join(WORK, "base_labels.csv"), labels, ids)
    for holdout in (-1, 1):
        rows = (folds >= 0) & (folds != holdout)
        prevalence = []
        for t in range(6):
            known = fold_labels[rows, t] >= 0
            prevalence.append(float(np.mean(fold_labels[rows, t][known])))
        want = metric_ref.score(np.tile(prevalence, (n_pred, 1)), labels)[0]
        scores = os.path.join(WORK, "base.scores")
        proc = run("bagavg", "-o", os.path.join(WORK, "base.csv"), "--labels", lab,
                   "--scores", scores, "--baseline", fpath, "--baseline-holdout", str(holdout),
                   pred)
        s = read_scores(scores) if proc.returncode == 0 else {}
        got = float(s.get("baseline", "nan"))
        prev_err = max(abs(float(s.get("prevalence_" + t, "nan")) - p)
                       for t, p in zip(SUBTYPES, prevalence)) if s else float("nan")
        check(proc.returncode == 0 and abs(got - want) <= 1e-9 and prev_err <= 1e-12
              and s.get("baseline_slices") == str(int(rows.sum()))
              and "prevalence baseline" in proc.stdout,
              "--baseline (holdout %d): %.9f = numpy %.9f, prevalences within %.1e, over %s "
              "slices" % (holdout, got, want, prev_err, s.get("baseline_slices")))
    proc = run("bagavg", "-o", os.path.join(WORK, "base2.csv"), "--baseline", fpath, pred)
    check(proc.returncode == 2 and "--labels" in proc.stderr,
          "--baseline without --labels: exit 2 (%d)" % proc.returncode)

    # A fold the folds file lacks (mkfolds records the count) would hold out nothing.
    with h5py.File(fpath, "r+") as f:
        f.attrs["folds"] = np.int64(3)
    out = os.path.join(WORK, "base9.csv")
    proc = run("bagavg", "-o", out, "--labels", lab, "--baseline", fpath,
               "--baseline-holdout", "9", pred)
    check(proc.returncode == 2 and "--baseline-holdout 9" in proc.stderr
          and "folds 0 to 2" in proc.stderr and not os.path.exists(out),
          "--baseline-holdout 9 of a 3-fold file: exit 2 (%d), nothing written: %s"
          % (proc.returncode, proc.stderr.strip()[-200:]))
    proc = run("bagavg", "-o", out, "--labels", lab, "--baseline", fpath,
               "--baseline-holdout", "2", pred)
    check(proc.returncode == 0, "--baseline-holdout 2 of a 3-fold file: exit 0 (%d)"
          % proc.returncode)


def test_empty_and_baseline_output():
    """No slices at all (a dataset without test slices): a header-only submission, exit 0.
    An output naming the --baseline folds file: exit 2, the file kept."""
    empty = write_pred(os.path.join(WORK, "empty.h5"), [], np.zeros((0, 6)))
    out = os.path.join(WORK, "empty.csv")
    proc = run_plain("bagavg", "-o", out, empty, empty)
    header, rows = read_submission(out) if proc.returncode == 0 else (None, None)
    check(proc.returncode == 0 and header == ["ID", "Label"] and rows == []
          and "no slices" in proc.stderr,
          "no slices in any file: exit 0 (%d), header-only CSV, a warning" % proc.returncode)
    ids = random_ids(10)
    pred = write_pred(os.path.join(WORK, "ten.h5"), ids, rng.random((10, 6)))
    lab = write_labels(os.path.join(WORK, "ten.csv"), np.zeros((10, 6), int), ids)
    folds = write_folds(os.path.join(WORK, "ten_folds.h5"), ids, np.zeros((10, 6), int),
                        np.zeros(10))
    before = testlib.file_bytes(folds)
    proc = run("bagavg", "-o", os.path.join(WORK, "ten_out.csv"), "--labels", lab,
               "--baseline", folds, "--h5-out", folds, pred)
    check(proc.returncode == 2 and "--baseline" in proc.stderr
          and testlib.file_bytes(folds) == before,
          "--h5-out naming the --baseline file: exit 2 (%d), the file unchanged"
          % proc.returncode)


def test_real_labels():
    path = os.path.join(DATA or "", "rsna_labels", "stage_2_train_format_labels.csv")
    if not testlib.have_data("constant 0.5 on the challenge labels", "rsna_labels",
                             "stage_2_train_format_labels.csv"):
        return
    ids = sorted(testlib.read_label_csv(path))
    pred = write_pred(os.path.join(WORK, "half.h5"), ids, np.full((len(ids), 6), 0.5))
    scores = os.path.join(WORK, "half.scores")
    proc = run("bagavg", "-o", os.path.join(WORK, "half.csv.gz"), "--labels", path,
               "--scores", scores, pred)
    s = read_scores(scores) if proc.returncode == 0 else {}
    got = float(s.get("score", "nan"))
    check(got == math.log(2) and s.get("scored_slices") == str(len(ids)),
          "challenge labels, constant 0.5: score %.17g == ln 2 %.17g (difference %.1e), %s of "
          "%d slices" % (got, math.log(2), got - math.log(2), s.get("scored_slices"), len(ids)))


# ---- bad inputs ----

def expect_failure(name, code, args, out, words=()):
    proc = run("bagavg", "-o", out, *args)
    missing = [w for w in words if w not in proc.stderr]
    check(proc.returncode == code and not missing and not os.path.exists(out),
          "%s: exit %d (got %d), message names %s, no output (%s)"
          % (name, code, proc.returncode, list(words), proc.stderr.strip()[-200:]))


def test_bad_inputs():
    n = 20
    ids = random_ids(n)
    prob = rng.random((n, 6)).astype(np.float32)
    good = write_pred(os.path.join(WORK, "good.h5"), ids, prob)
    other = write_pred(os.path.join(WORK, "other.h5"), ids[:5] + ids[6:], prob[1:])
    extra = write_pred(os.path.join(WORK, "extra.h5"), ids + ["ID_zzz"],
                       np.vstack([prob, prob[:1]]))
    bad = prob.copy()
    bad[3, 4] = np.nan
    nan = write_pred(os.path.join(WORK, "nan.h5"), ids, bad)
    bad = prob.copy()
    bad[7, 5] = 1.5
    high = write_pred(os.path.join(WORK, "high.h5"), ids, bad)
    narrow = write_pred(os.path.join(WORK, "narrow.h5"), ids, prob[:, :5])
    short = write_pred(os.path.join(WORK, "short.h5"), ids, prob[:10])
    nosub = write_pred(os.path.join(WORK, "nosub.h5"), ids, prob, subtypes=None)
    reorder = write_pred(os.path.join(WORK, "reorder.h5"), ids, prob,
                         subtypes=",".join(SUBTYPES[::-1]))
    dup = write_pred(os.path.join(WORK, "dup.h5"), ids[:-1] + ids[:1], prob)
    ints = write_pred(os.path.join(WORK, "ints.h5"), ids, (prob > 0.5), dtype=np.int32)
    comma = write_pred(os.path.join(WORK, "comma.h5"), ids[:-1] + ["ID_a,b"], prob)
    out = os.path.join(WORK, "bad.csv")
    missing = os.path.join(WORK, "no-such.h5")

    expect_failure("slice missing from the second file", 3, [good, other], out,
                   [ids[5], "other.h5"])
    expect_failure("extra slice in the second file", 3, [good, extra], out,
                   ["ID_zzz", "extra.h5"])
    expect_failure("NaN probability", 3, [good, nan], out, ["nan.h5", ids[3], "subdural"])
    expect_failure("probability 1.5", 3, [high], out, ["high.h5", ids[7], "any"])
    expect_failure("N x 5 probabilities", 3, [narrow], out, ["narrow.h5", "20 x 5"])
    expect_failure("fewer rows than IDs", 3, [short], out, ["short.h5", "10 x 6"])
    expect_failure("no subtypes attribute", 3, [nosub], out, ["nosub.h5", "subtypes"])
    expect_failure("other subtype order", 3, [reorder], out, ["reorder.h5", "subtypes"])
    expect_failure("slice twice", 3, [dup], out, ["dup.h5", ids[0]])
    expect_failure("integer probabilities", 3, [ints], out, ["ints.h5"])
    expect_failure("slice ID with a comma", 3, [comma], out, ["comma.h5", "ID_a,b"])
    expect_failure("missing file", 3, [good, missing], out, ["no-such.h5"])
    expect_failure("missing file with a weight", 3, [good + ":1", missing + ":1"], out,
                   ["no-such.h5"])
    expect_failure("3 weights for 2 files", 2, ["--weights", "0.5,0.3,0.2", good, good], out,
                   ["3 weights for 2"])
    expect_failure("negative weight", 2, ["--weights", "1,-1", good, good], out, ["-1"])
    expect_failure("weights summing to 0", 2, ["--weights", "0,0", good, good], out)
    expect_failure("--weights and FILE:WEIGHT", 2, ["--weights", "1,1", good + ":1",
                                                    good + ":1"], out)
    expect_failure("FILE:WEIGHT for some files only", 2, [good + ":1", good], out)
    expect_failure("--scores without --labels", 2, ["--scores", out + ".s", good], out)
    expect_failure("no label of a predicted slice", 3,
                   ["--labels", write_labels(os.path.join(WORK, "far.csv"),
                                             [[0] * 6], ["ID_elsewhere"]), good], out,
                   ["nothing to score"])

    proc = run("bagavg", "-o", good, good)
    check(proc.returncode == 2 and os.path.exists(good),
          "-o naming an input: exit 2 (%d), input kept" % proc.returncode)
    leftovers = [n for n in os.listdir(WORK) if ".tmp-" in n]
    check(not leftovers, "no temporary files left after the failures: %s" % leftovers)

    proc = run_plain("bagavg", "--help")
    check(proc.returncode == 0 and "--weights" in proc.stdout and "Exit" in proc.stdout,
          "--help: exit 0, documents --weights and the exit codes")


def main():
    if not os.path.exists(os.path.join(testlib.BIN, "bagavg")):
        print("skip: bin/bagavg is not built")
        sys.exit(77)
    test_averaging()
    test_clipping_and_format()
    test_metric()
    test_baseline()
    test_empty_and_baseline_output()
    test_real_labels()
    test_bad_inputs()
    testlib.finish("bagavg")


if __name__ == "__main__":
    main()
