"""What the python tests share: where things are, a tally of checks and skipped groups, running
the programs, meta.h5 fixtures, and reading the HDF5 and CSV outputs back with h5py and csv
(no project code). Imported by tests/py/test_*.py (their own folder is on sys.path).

A test runs every group of checks it can. A group that needs the shared data says so with
one "skip: ... ($DATA absent)" line when the data is absent; the test exits 77 only when
nothing at all could run, 1 when a check failed, 0 otherwise.
"""
import csv
import gzip
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REF_DIR = os.path.join(HERE, "..", "ref")
BIN = os.path.abspath(os.environ.get("BIN") or os.path.join(HERE, "..", "..", "bin"))
WORK = os.environ.get("WORK") or tempfile.mkdtemp(prefix="ichpipe-test.")
_data = os.environ.get("DATA", "")
DATA = os.path.abspath(_data) if _data and os.path.isdir(_data) else None
DATA_ABSENT = "$DATA absent"
SUBTYPES = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]

_failures = []
_ran = 0
_skipped = []


# ---- the tally ----

def import_or_skip(name):
    """The module, or exit 77 (skip) saying which Debian package's module is missing."""
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError as err:
        print(f"skip: python3 lacks {name} ({err})")
        sys.exit(77)


def check(ok, what):
    """A soft check: printed as ok/FAIL, the test goes on and fails at finish()."""
    global _ran
    _ran += 1
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        _failures.append(what)


def passed(what):
    """A group of hard checks (assert) came through; what it measured."""
    check(True, what)


def skip(group, why=DATA_ABSENT):
    print("skip: %s (%s)" % (group, why))
    _skipped.append(group)


def have_data(group, *parts):
    """True when $DATA (and $DATA/parts) is there; otherwise prints the group's skip line."""
    if DATA and os.path.exists(os.path.join(DATA, *parts)):
        return True
    skip(group)
    return False


def require_data(what):
    """For a test that needs the shared data in every check: exit 77 when it is absent."""
    if not DATA:
        print("skip: %s (%s)" % (what, DATA_ABSENT))
        sys.exit(77)


def finish(name):
    if _failures:
        print("%d of %d checks failed: %s" % (len(_failures), _ran, "; ".join(_failures)[:500]))
        sys.exit(1)
    if _ran == 0:
        print("skip: nothing to run: %s" % "; ".join(_skipped))
        sys.exit(77)
    left = " (%d groups skipped: %s)" % (len(_skipped), "; ".join(_skipped)) if _skipped else ""
    print("all %d %s checks passed%s" % (_ran, name, left))
    sys.exit(0)


# ---- running the programs ----

def run(program, *args):
    """bin/<program> with -q and args; the CompletedProcess (text, captured)."""
    cmd = [os.path.join(BIN, program), "-q"] + [str(a) for a in args]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_plain(program, *args):
    """bin/<program> exactly as given (no -q): to see its messages, --help, usage errors."""
    cmd = [os.path.join(BIN, program)] + [str(a) for a in args]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_expect(program, args, expect=0):
    """Run bin/<program> args; returns (exit code, stderr). Raises on another exit code."""
    proc = run_plain(program, *args)
    if expect is not None and proc.returncode != expect:
        raise AssertionError("%s %s: exit %d, expected %d\n%s"
                             % (program, " ".join(str(a) for a in args), proc.returncode,
                                expect, proc.stderr[-3000:]))
    return proc.returncode, proc.stderr


def run_ok(program, *args):
    """bin/<program> -q args; stops the test (exit 1) when it fails, as nothing else can run."""
    proc = run(program, *args)
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        sys.exit("%s %s failed (exit %d)" % (program, " ".join(str(a) for a in args),
                                            proc.returncode))
    return proc


def phantom(out, *args):
    """A seeded mkphantom dataset in out (a new folder); returns out."""
    run_ok("mkphantom", "-o", out, *args)
    return out


# ---- meta.h5: fixtures and reading ----

def write_meta(path, rows):
    """A meta.h5 with dcm2jpg's column names, from dicts (absent keys: empty, NaN, 'ok')."""
    n = len(rows)

    def strings(key, default=""):
        values = [r.get(key, default).encode() for r in rows]
        return np.array(values, dtype="S%d" % max([1] + [len(v) for v in values]))

    with h5py.File(path, "w") as f:
        for key in ("id", "patient_id", "study_uid", "series_uid", "path", "message"):
            f[key] = strings(key)
        f["status"] = strings("status", "ok")
        f["position"] = np.array([r.get("position", [np.nan] * 3) for r in rows],
                                 dtype=np.float64).reshape(n, 3)
        f["orientation"] = np.array([r.get("orientation", [np.nan] * 6) for r in rows],
                                    dtype=np.float64).reshape(n, 6)


def meta_rows_from_pydicom(files):
    """The meta.h5 columns that mkfolds and seqbuild read, as pydicom reads them."""
    import pydicom
    rows = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        rows.append({"id": ds.SOPInstanceUID, "patient_id": ds.PatientID,
                     "study_uid": ds.StudyInstanceUID, "series_uid": ds.SeriesInstanceUID,
                     "path": path, "status": "ok",
                     "position": [float(v) for v in ds.ImagePositionPatient],
                     "orientation": [float(v) for v in ds.ImageOrientationPatient]})
    return rows


def make_meta(inputs, meta_path, files):
    """meta.h5 of the DICOM inputs: dcm2jpg's (tiny images), or the same columns read with
    pydicom when bin/dcm2jpg is absent. Returns where it came from."""
    os.makedirs(os.path.dirname(meta_path), exist_ok=True)
    if os.path.exists(os.path.join(BIN, "dcm2jpg")):
        run_ok("dcm2jpg", "-j", 2, "--format", "ppm", "--size", 32, "-o",
               os.path.dirname(meta_path), *inputs)
        return "dcm2jpg"
    write_meta(meta_path, meta_rows_from_pydicom(files))
    return "pydicom fixture"


def read_meta(path):
    """meta.h5 as a list of dicts (one per row) plus the root attributes."""
    with h5py.File(path, "r") as f:
        columns = {}
        for name in f:
            values = f[name][()]
            if values.dtype.kind == "S":
                values = [v.decode() for v in values]
            columns[name] = values
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    n = len(columns["id"])
    rows = [{name: columns[name][i] for name in columns} for i in range(n)]
    return rows, attrs


def load_image(path):
    """RGB uint8 array of a JPEG or PPM, decoded by PIL (independent of the project)."""
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# ---- folds.h5, sequences.h5 and label CSVs ----

def read_folds(path):
    with h5py.File(path, "r") as f:
        ids = [s.decode() for s in f["id"][()]]
        return {
            "ids": ids,
            "patient": [s.decode() for s in f["patient_id"][()]],
            "fold": dict(zip(ids, f["fold"][()].tolist())),
            "label": dict(zip(ids, f["label"][()].tolist())),
            "attrs": dict(f.attrs),
            "summary_slices": f["summary/slices"][()].tolist(),
            "summary_pos": f["summary/positives"][()].tolist(),
        }


def read_sequences(path):
    """(patient, study, series) -> the series' slices in file order, and the attributes."""
    with h5py.File(path, "r") as f:
        s = {k: f["series/" + k][()] for k in f["series"]}
        sl = {k: f["slices/" + k][()] for k in f["slices"]}
        attrs = dict(f.attrs)
    out = {}
    for i in range(len(s["start"])):
        a, n = int(s["start"][i]), int(s["length"][i])
        key = (s["patient_id"][i].decode(), s["study_uid"][i].decode(),
               s["series_uid"][i].decode())
        out[key] = {
            "ids": [x.decode() for x in sl["id"][a:a + n]],
            "meta_index": sl["meta_index"][a:a + n].tolist(),
            "position": sl["position"][a:a + n], "spacing": sl["spacing"][a:a + n],
            "flags": int(s["flags"][i]), "normal": s["normal"][i],
            "series_index": sl["series"][a:a + n].tolist(), "index": i,
        }
    return out, attrs


def read_label_csv(path):
    """id -> {subtype: 0/1}, exactly as the challenge-format CSV says (rows may repeat)."""
    opener = gzip.open if path.endswith(".gz") else open
    out = {}
    with opener(path, "rt", newline="") as f:
        for row in csv.reader(f):
            if row == ["ID", "Label"]:
                continue
            sid, sub = row[0].rsplit("_", 1)
            out.setdefault(sid, {})[sub] = int(row[1])
    return out


def label_lists(path):
    """id -> [six labels in SUBTYPES order], -1 where the CSV has no row; {} when no file."""
    if not os.path.exists(path):
        return {}
    return {sid: [lab.get(t, -1) for t in SUBTYPES] for sid, lab in read_label_csv(path).items()}


# ---- comparing outputs ----

def h5_datasets(path):
    """Every dataset of an HDF5 file, by its path, as numpy arrays (attributes left out: they
    hold the command line and the time)."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def h5_contents(path):
    """Every dataset (h5_datasets) and the root attributes but the provenance that differs
    between two identical runs (command_line, created)."""
    with h5py.File(path, "r") as f:
        attrs = {k: f.attrs[k] for k in f.attrs if k not in ("command_line", "created")}
    return h5_datasets(path), attrs


def same_datasets(a, b):
    """Do two HDF5 files hold the same datasets with equal values (NaN equal to NaN)?"""
    da, db = h5_datasets(a), h5_datasets(b)
    if set(da) != set(db):
        return False
    for name in da:
        x, y = np.asarray(da[name]), np.asarray(db[name])
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if x.dtype.kind == "f":
            if not np.array_equal(x, y, equal_nan=True):
                return False
        elif not np.array_equal(x, y):
            return False
    return True


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()
