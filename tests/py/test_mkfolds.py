"""mkfolds: folds and labels against an independent Python version of the original fold rule.

Two datasets, each checked with k=5 and k=3 and with the label CSV's troubles (identical
duplicate rows, a conflicting row, a bad value, an unknown subtype, a missing row, gzip,
labels without metadata): a mkphantom dataset with a test split (metadata by dcm2jpg, or the
same columns read with pydicom when dcm2jpg is absent), and, when the shared data is there,
the challenge labels in $DATA/rsna_labels with the 90 RSNA slices. Fixtures (h5py): rows that
failed conversion, a slice ID twice, and a larger set for the stratified method. Useless
inputs (nothing to fold, or a fold the original rule leaves empty) stop the run with a message
that says why; -o naming an input is refused; -j does not change the output.
"""
import csv
import glob
import gzip
import os
import random
import warnings

warnings.filterwarnings("ignore")

import testlib  # noqa: E402
from testlib import (DATA, SUBTYPES, WORK, check, read_folds, read_label_csv,  # noqa: E402
                     run, write_meta)


def write_csv(path, body_rows, gz=False):
    """A labels CSV in the challenge format."""
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["ID", "Label"])
        w.writerows(body_rows)
    return path


def original_folds(labels, meta_rows, k):
    """The reference rule: labelled slices sorted by ID, joined with the metadata (slices
    without it dropped), a patient's fold = position of its first row modulo k."""
    patient = {r["id"]: r["patient_id"] for r in meta_rows if r["status"] in ("ok", "exists")}
    joined = [sid for sid in sorted(labels) if sid in patient]
    first = {}
    for position, sid in enumerate(joined):
        first.setdefault(patient[sid], position)
    return {sid: first[patient[sid]] % k for sid in joined}


def verify(result, labels, meta_rows, k, name, reference=True):
    """Every usable slice once, folds as the rule says, labels as the CSV says."""
    usable = sorted(r["id"] for r in meta_rows if r["status"] in ("ok", "exists"))
    got_fold = result["fold"]
    if reference:
        want = original_folds(labels, meta_rows, k)
        wrong_fold = [s for s in usable if got_fold[s] != want.get(s, -1)]
        check(not wrong_fold, "%s: folds equal the reference rule (%d labelled, %d test): %s"
              % (name, len(want), len(usable) - len(want), wrong_fold[:3]))
    else:
        wrong = [s for s in usable if not (0 <= got_fold[s] < k if s in labels
                                           else got_fold[s] == -1)]
        check(not wrong, "%s: labelled slices in folds 0..%d, the others -1: %s"
              % (name, k - 1, wrong[:3]))
    wrong_label = []
    for s in usable:
        expected = [labels.get(s, {}).get(t, -1) for t in SUBTYPES]
        if result["label"][s] != expected:
            wrong_label.append((s, result["label"][s], expected))
    check(result["ids"] == usable, "%s: every usable slice once, sorted by ID (%d)"
          % (name, len(usable)))
    check(not wrong_label, "%s: labels equal the CSV, -1 where missing: %s"
          % (name, wrong_label[:2]))
    per_patient = {}
    for sid, p in zip(result["ids"], result["patient"]):
        if got_fold[sid] >= 0:
            per_patient.setdefault(p, set()).add(got_fold[sid])
    check(all(len(v) == 1 for v in per_patient.values()),
          "%s: no patient in two folds (%d patients)" % (name, len(per_patient)))
    counts = [sum(1 for s in usable if got_fold[s] == f) for f in range(k)]
    positives = [[sum(1 for s in usable if got_fold[s] == f and result["label"][s][t] == 1)
                  for t in range(6)] for f in range(k)]
    check(result["summary_slices"][:k] == counts and result["summary_pos"] == positives,
          "%s: summary per fold: slices %s, 'any' positives %s"
          % (name, counts, [p[5] for p in positives]))


def dataset_checks(name, labels_csv, meta_path):
    """mkfolds on one labels CSV and meta.h5: k=5 and k=3 as the rule says, the summary on
    stderr, then the CSV's troubles. Returns the k=5 result."""
    work = os.path.join(WORK, name)
    os.makedirs(work, exist_ok=True)
    meta_rows = testlib.read_meta(meta_path)[0]
    labels = read_label_csv(labels_csv)
    out = os.path.join(work, "folds.h5")
    r = run("mkfolds", "-o", out, labels_csv, meta_path)
    check(r.returncode == 0, "%s: mkfolds exit %d %s" % (name, r.returncode, r.stderr))
    base = read_folds(out)
    verify(base, labels, meta_rows, 5, name + " k=5")
    r = run("mkfolds", "-o", os.path.join(work, "k3.h5"), "-k", 3, labels_csv, meta_path)
    verify(read_folds(os.path.join(work, "k3.h5")), labels, meta_rows, 3, name + " k=3")

    # Loud summary on stderr without -q.
    r = testlib.run_plain("mkfolds", "-o", out, labels_csv, meta_path)
    check("test" in r.stderr and "positives" not in r.stdout and "patients" in r.stderr,
          "%s: summary table on stderr" % name)
    print(r.stderr)

    with open(labels_csv, newline="") as f:
        body = list(csv.reader(f))[1:]
    shuffled = body + body[::7]
    random.Random(4).shuffle(shuffled)
    dup_csv = write_csv(os.path.join(work, "dups.csv"), shuffled)
    r = run("mkfolds", "-o", os.path.join(work, "dups.h5"), dup_csv, meta_path)
    dups = read_folds(os.path.join(work, "dups.h5"))
    check(r.returncode == 0 and dups["fold"] == base["fold"] and dups["label"] == base["label"]
          and dups["attrs"]["duplicate_label_rows"] == len(body[::7]),
          "%s: shuffled CSV with %d identical duplicate rows: same folds and labels, %d "
          "duplicates counted" % (name, len(body[::7]), dups["attrs"]["duplicate_label_rows"]))

    victim = body[40]
    flipped = [victim[0], "1" if victim[1] == "0" else "0"]
    conflict_csv = write_csv(os.path.join(work, "conflict.csv"),
                             body[:200] + [flipped] + body[200:])
    r = run("mkfolds", "-o", os.path.join(work, "conflict.h5"), conflict_csv, meta_path)
    check(r.returncode == 3 and victim[0] in r.stderr and not os.path.exists(
          os.path.join(work, "conflict.h5")),
          "%s: conflicting rows: exit %d, message names %s: %s"
          % (name, r.returncode, victim[0], r.stderr.strip()))

    bad_csv = write_csv(os.path.join(work, "bad.csv"),
                        body[:10] + [[body[10][0], "2"]] + body[11:])
    r = run("mkfolds", "-o", os.path.join(work, "bad.h5"), bad_csv, meta_path)
    check(r.returncode == 3 and ":12:" in r.stderr, "%s: label '2': exit %d, names line 12: %s"
          % (name, r.returncode, r.stderr.strip()))
    unknown = body[3][0].rsplit("_", 1)[0] + "_sinus"
    bad_csv = write_csv(os.path.join(work, "bad2.csv"), body[:3] + [[unknown, "0"]] + body[3:])
    r = run("mkfolds", "-o", os.path.join(work, "bad2.h5"), bad_csv, meta_path)
    check(r.returncode == 3 and unknown in r.stderr,
          "%s: unknown subtype: exit %d: %s" % (name, r.returncode, r.stderr.strip()))

    partial_id = body[60][0].rsplit("_", 1)[0]
    partial = [row for row in body if row[0] != partial_id + "_subdural"]
    ghosts = [["ID_ghost%04d_%s" % (g, t), "0"] for g in range(3) for t in SUBTYPES]
    extra_csv = write_csv(os.path.join(work, "partial.csv.gz"), partial + ghosts, gz=True)
    r = run("mkfolds", "-o", os.path.join(work, "partial.h5"), extra_csv, meta_path)
    partial_result = read_folds(os.path.join(work, "partial.h5"))
    partial_labels = read_label_csv(extra_csv)
    verify(partial_result, partial_labels, meta_rows, 5,
           "%s: gzip CSV, one missing row, 3 unknown IDs" % name)
    check(partial_result["label"][partial_id][4] == -1
          and partial_result["attrs"]["labels_without_meta"] == 3
          and partial_result["attrs"].get("partial_label_slices") == 1
          and partial_result["fold"] == base["fold"],
          "%s: missing subtype row -> -1; 3 labelled slices without metadata and 1 partially "
          "labelled counted, folds unchanged" % name)
    r = testlib.run_plain("mkfolds", "-o", os.path.join(work, "partial2.h5"), extra_csv,
                          meta_path)
    warning = [line for line in r.stderr.splitlines() if "subtype rows" in line]
    check(r.returncode == 0 and len(warning) == 1 and partial_id in warning[0]
          and " 1 labelled slice lacks" in warning[0] and "subdural" in warning[0],
          "%s: partially labelled slices: a warning with their count and the first: %s"
          % (name, warning))
    return base


def attributes_check(name, base, labelled, test):
    a = base["attrs"]
    check(a["labels_without_meta"] == 0 and a["test_slices"] == test
          and a["labelled_slices"] == labelled and a["folds"] == 5 and a["method"] == "original",
          "%s attributes: %d labelled, %d test, %d labels without metadata (expected %d, %d, 0)"
          % (name, a["labelled_slices"], a["test_slices"], a["labels_without_meta"], labelled,
             test))


def phantom_group():
    """A phantom dataset with a test split: returns its labels CSV and meta.h5. (Seed 5: its
    6 labelled patients fill every fold with K=5 and K=3; most seeds leave one empty.)"""
    ph = testlib.phantom(os.path.join(WORK, "phantom"), "--series", 8, "--slices", "6-10",
                         "--size", 32, "--seed", 5, "--test-fraction", 0.25)
    files = sorted(glob.glob(os.path.join(ph, "*", "*.dcm")))
    meta_path = os.path.join(WORK, "phantom_conv", "meta.h5")
    source = testlib.make_meta([ph], meta_path, files)
    print("phantom: metadata of %d slices from %s" % (len(files), source))
    labels_csv = os.path.join(ph, "labels.csv")
    base = dataset_checks("phantom", labels_csv, meta_path)
    test = len(read_label_csv(os.path.join(ph, "test_labels.csv")))
    attributes_check("phantom", base, len(files) - test, test)
    check(test > 0 and all(base["fold"][sid] == -1
                           for sid in read_label_csv(os.path.join(ph, "test_labels.csv"))),
          "phantom: the %d slices of test_labels.csv are the test set (fold -1)" % test)
    return labels_csv, meta_path


def real_group():
    """The challenge labels with the metadata of the 90 RSNA slices."""
    labels_csv = os.path.join(DATA, "rsna_labels", "stage_2_train_format_labels.csv")
    inputs = [os.path.join(DATA, "rsna_george091"),
              os.path.join(DATA, "rsna_ich_app_series", "dcm")]
    files = sorted(p for d in inputs for p in glob.glob(os.path.join(d, "*.dcm")))
    meta_path = os.path.join(WORK, "conv", "meta.h5")
    source = testlib.make_meta(inputs, meta_path, files)
    print("real: metadata of %d slices from %s" % (len(files), source))
    base = dataset_checks("real", labels_csv, meta_path)
    attributes_check("real", base, 78, 12)


def meta_troubles():
    """Rows that failed conversion are left out; a slice ID twice in meta.h5 is an error."""
    fixture_rows = []
    for p in range(12):
        for s in range(5):
            fixture_rows.append({"id": "ID_%03d%02d" % (p * 7 % 12, s),
                                 "patient_id": "P%02d" % p, "path": "/x/%d_%d.dcm" % (p, s),
                                 "status": "ok"})
    fixture_rows[3]["status"] = "error"
    fixture_rows[8]["status"] = "skipped"
    fixture_rows[9]["status"] = "exists"
    fixture_labels = {r["id"]: {t: int(i % 9 == 0) for t in SUBTYPES}
                      for i, r in enumerate(fixture_rows) if i % 5 != 4}
    fixture_csv = write_csv(os.path.join(WORK, "fixture_labels.csv"),
                            [["%s_%s" % (sid, t), str(v)] for sid, lab in fixture_labels.items()
                             for t, v in lab.items()])
    fixture_meta = os.path.join(WORK, "fixture_meta.h5")
    write_meta(fixture_meta, fixture_rows)
    r = run("mkfolds", "-o", os.path.join(WORK, "fixture.h5"), fixture_csv, fixture_meta)
    verify(read_folds(os.path.join(WORK, "fixture.h5")), fixture_labels, fixture_rows, 5,
           "fixture with rows in error/skipped/exists")

    twice = fixture_rows + [dict(fixture_rows[0], path="/elsewhere/copy.dcm")]
    write_meta(os.path.join(WORK, "twice.h5"), twice)
    r = run("mkfolds", "-o", os.path.join(WORK, "twice_folds.h5"), fixture_csv,
                os.path.join(WORK, "twice.h5"))
    check(r.returncode == 3 and "/elsewhere/copy.dcm" in r.stderr and "/x/0_0.dcm" in r.stderr,
          "a slice ID twice in meta.h5: exit %d, both paths named" % r.returncode)


def stratified():
    """The stratified method on a larger set: seeded, grouped by patient, balanced."""
    rng = random.Random(7)
    big_rows, big_labels = [], {}
    for p in range(300):
        sick = rng.random() < 0.3
        n = rng.randint(10, 40)
        start = rng.randint(0, n - 1)
        length = rng.randint(3, 12) if sick else 0
        for s in range(n):
            sid = "ID_%09x" % rng.getrandbits(36)
            big_rows.append({"id": sid, "patient_id": "ID_%08x" % p, "status": "ok",
                             "path": "/b/%s.dcm" % sid})
            if rng.random() < 0.9:
                pos = int(start <= s < start + length)
                big_labels[sid] = {t: pos if t in ("any", "subdural") else 0 for t in SUBTYPES}
    big_meta = os.path.join(WORK, "big_meta.h5")
    write_meta(big_meta, big_rows)
    big_csv = write_csv(os.path.join(WORK, "big_labels.csv"),
                        [["%s_%s" % (sid, t), str(v)] for sid, lab in big_labels.items()
                         for t, v in lab.items()])
    results = {}
    for name, extra in (("original", []), ("s1", ["--method", "stratified", "--seed", 1]),
                        ("s1again", ["--method", "stratified", "--seed", 1]),
                        ("s2", ["--method", "stratified", "--seed", 2])):
        path = os.path.join(WORK, "big_%s.h5" % name)
        r = run("mkfolds", "-o", path, *extra, big_csv, big_meta)
        check(r.returncode == 0, "big fixture %s: exit %d %s" % (name, r.returncode, r.stderr))
        results[name] = read_folds(path)
    verify(results["original"], big_labels, big_rows, 5, "big fixture, original")
    check(results["s1"]["fold"] == results["s1again"]["fold"]
          and results["s1"]["fold"] != results["s2"]["fold"],
          "stratified: same seed same folds, another seed other folds")
    per_patient_pos = {}
    for row in big_rows:
        if row["id"] in big_labels:
            per_patient_pos[row["patient_id"]] = (per_patient_pos.get(row["patient_id"], 0)
                                                  + big_labels[row["id"]]["any"])
    largest = max(per_patient_pos.values())
    spreads = {}
    for name in ("original", "s1", "s2"):
        res = results[name]
        if name != "original":
            verify(res, big_labels, big_rows, 5, "big fixture, stratified %s" % name,
                   reference=False)
        pos = [p[5] for p in res["summary_pos"]]
        spreads[name] = (max(pos) - min(pos), pos, res["summary_slices"][:5])
    print("'any' positives per fold (spread, positives, slices): %s" % spreads)
    sizes = {n: max(v[2]) / min(v[2]) for n, v in spreads.items()}
    check(sizes["s1"] < 1.1 and sizes["s2"] < 1.1,
          "stratified: largest fold / smallest fold %.3f and %.3f (original %.3f)"
          % (sizes["s1"], sizes["s2"], sizes["original"]))
    check(spreads["s1"][0] <= largest and spreads["s2"][0] <= largest
          and spreads["s1"][0] < spreads["original"][0],
          "stratified: positives per fold differ by at most the largest patient's %d "
          "(s1 %d, s2 %d; original %d)" % (largest, spreads["s1"][0], spreads["s2"][0],
                                           spreads["original"][0]))


def expect_refusal(name, code, args, *needles):
    """mkfolds args must exit with code, write nothing, and say every needle on stderr."""
    out = os.path.join(WORK, "refused_%s.h5" % name.replace(" ", "_")[:40])
    r = run("mkfolds", "-o", out, *args)
    said = all(n in r.stderr for n in needles)
    check(r.returncode == code and said and not os.path.exists(out),
          "%s: exit %d (want %d), nothing written, message names %s: %s"
          % (name, r.returncode, code, list(needles), r.stderr.strip()[:300]))


def useless_inputs(labels_csv, meta_path):
    """Inputs that would give an empty or wrong folds.h5 with exit 0 before: exit 3."""
    meta_rows = testlib.read_meta(meta_path)[0]
    labels = read_label_csv(labels_csv)
    empty = os.path.join(WORK, "empty.csv")
    open(empty, "w").close()
    expect_refusal("empty labels CSV", 3, [empty, meta_path], "empty.csv", "no label rows")
    header_only = write_csv(os.path.join(WORK, "header_only.csv"), [])
    expect_refusal("header-only labels CSV", 3, [header_only, meta_path], "header_only.csv")

    other = write_csv(os.path.join(WORK, "other_dataset.csv"),
                      [["ID_other%03d_%s" % (i, t), "0"] for i in range(4) for t in SUBTYPES])
    first_meta = sorted(r["id"] for r in meta_rows if r["status"] == "ok")[0]
    expect_refusal("labels of another dataset", 3, [other, meta_path], "ID_other000",
                   first_meta, "none of the 4 labelled slices")

    unusable = os.path.join(WORK, "unusable_meta.h5")
    write_meta(unusable, [dict(r, status="error") for r in meta_rows[:5]])
    expect_refusal("meta.h5 without usable rows", 3, [labels_csv, unusable], "unusable_meta.h5",
                   "no usable rows", "5 'error'")
    no_rows = os.path.join(WORK, "no_rows_meta.h5")
    write_meta(no_rows, [])
    expect_refusal("meta.h5 without rows", 3, [labels_csv, no_rows], "no_rows_meta.h5")

    patients = len({r["patient_id"] for r in meta_rows if r["id"] in labels})
    expect_refusal("-k 100 with %d patients" % patients, 3,
                   ["-k", 100, labels_csv, meta_path], "-k 100", "%d labelled patients" % patients)

    one = os.path.join(WORK, "one_patient.h5")
    write_meta(one, [dict(r, patient_id="P1") for r in meta_rows])
    expect_refusal("every slice of one patient", 3, [labels_csv, one], "1 labelled patient")
    every_blank = os.path.join(WORK, "every_blank.h5")
    write_meta(every_blank, [dict(r, patient_id="") for r in meta_rows])
    expect_refusal("every PatientID empty", 3, [labels_csv, every_blank], "has no PatientID")

    # A labelled slice without PatientID: exit 3 naming it. A test slice: a warning only.
    labelled = sorted(r["id"] for r in meta_rows if r["id"] in labels)[7]
    blank = os.path.join(WORK, "blank_patient.h5")
    write_meta(blank, [dict(r, patient_id="  ") if r["id"] == labelled else r
                       for r in meta_rows])
    expect_refusal("labelled slice without PatientID", 3, [labels_csv, blank], labelled,
                   "PatientID")
    test_slice = sorted(r["id"] for r in meta_rows if r["id"] not in labels)[0]
    write_meta(blank, [dict(r, patient_id="") if r["id"] == test_slice else r
                       for r in meta_rows])
    r = testlib.run_plain("mkfolds", "-o", os.path.join(WORK, "blank_test.h5"), labels_csv,
                          blank)
    check(r.returncode == 0 and "1 test slices" in r.stderr and test_slice in r.stderr,
          "a test slice without PatientID: exit %d with a warning naming it" % r.returncode)


def empty_original_fold():
    """Three patients of two slices each: in ID order their first slices sit at positions 0,
    2 and 4, so with -k 2 the original rule puts every patient in fold 0 although K does not
    exceed the patients. That is refused (exit 3, nothing written); the stratified method
    fills both folds."""
    rows = [{"id": "ID_%s%d" % (p, s), "patient_id": "P" + p, "path": "/e/%s%d.dcm" % (p, s)}
            for p in "abc" for s in range(2)]
    labels = {r["id"]: {t: int(r["id"].endswith("0")) for t in SUBTYPES} for r in rows}
    meta = os.path.join(WORK, "three_patients.h5")
    write_meta(meta, rows)
    labels_csv = write_csv(os.path.join(WORK, "three_patients.csv"),
                           [["%s_%s" % (sid, t), str(v)] for sid, lab in labels.items()
                            for t, v in lab.items()])
    want = original_folds(labels, [dict(r, status="ok") for r in rows], 2)
    check(sorted(set(want.values())) == [0],
          "fixture: the reference rule puts all 3 patients in fold 0 with -k 2: %s" % want)
    expect_refusal("original rule leaving fold 1 empty", 3,
                   ["-k", 2, labels_csv, meta], "-k 2 --method original",
                   "1 of the 2 folds would be empty (first: fold 1)", "3 labelled patients",
                   "three_patients.csv", "patients per fold: 3 0")
    out = os.path.join(WORK, "three_stratified.h5")
    r = run("mkfolds", "-k", 2, "--method", "stratified", "-o", out, labels_csv, meta)
    folds = sorted(set(read_folds(out)["fold"].values())) if r.returncode == 0 else []
    check(r.returncode == 0 and folds == [0, 1],
          "the same patients with --method stratified: exit %d, folds used %s %s"
          % (r.returncode, folds, r.stderr.strip()[:200]))


def overwrite_and_threads(labels_csv, meta_path):
    """-o naming an input (any spelling, or a link to it) is a usage error; -j changes
    nothing in the output."""
    labels_before, meta_before = testlib.file_bytes(labels_csv), testlib.file_bytes(meta_path)
    link = os.path.join(WORK, "meta_link.h5")
    os.symlink(meta_path, link)
    spellings = {"the labels CSV": labels_csv,
                 "the meta.h5 as DIR/../DIR/meta.h5": os.path.join(
                     os.path.dirname(meta_path), "..",
                     os.path.basename(os.path.dirname(meta_path)), "meta.h5"),
                 "a link to meta.h5": link}
    exits = {}
    for name, out in spellings.items():
        r = run("mkfolds", "-o", out, labels_csv, meta_path)
        exits[name] = r.returncode
    check(set(exits.values()) == {2} and testlib.file_bytes(labels_csv) == labels_before
          and testlib.file_bytes(meta_path) == meta_before,
          "-o naming an input: exit 2, inputs unchanged: %s" % exits)

    outs = [os.path.join(WORK, "threads%d.h5" % j) for j in (1, 4)]
    codes = [run("mkfolds", "-j", j, "--method", "stratified", "-o", out, labels_csv,
                 meta_path).returncode for j, out in zip((1, 4), outs)]
    check(codes == [0, 0] and testlib.same_datasets(*outs),
          "-j 1 and -j 4: exits %s, the same datasets" % codes)


def command_line(labels_csv, meta_path):
    r = testlib.run_plain("mkfolds", "--help")
    check(r.returncode == 0 and "--method" in r.stdout and "default: 5" in r.stdout
          and "Exit codes" in r.stdout, "--help lists options, defaults and exit codes")
    r = run("mkfolds", labels_csv, meta_path)
    check(r.returncode == 2, "no -o: exit %d" % r.returncode)
    r = run("mkfolds", "-o", os.path.join(WORK, "x.h5"), os.path.join(WORK, "missing.csv"),
            meta_path)
    check(r.returncode == 3 and "missing.csv" in r.stderr, "missing labels file: exit %d: %s"
          % (r.returncode, r.stderr.strip()))


def main():
    labels_csv, meta_path = phantom_group()
    if testlib.have_data("mkfolds on the challenge labels and the 90 RSNA slices",
                         "rsna_labels"):
        real_group()
    meta_troubles()
    stratified()
    useless_inputs(labels_csv, meta_path)
    empty_original_fold()
    overwrite_and_threads(labels_csv, meta_path)
    command_line(labels_csv, meta_path)
    testlib.finish("mkfolds")


if __name__ == "__main__":
    main()
