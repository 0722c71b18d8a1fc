"""seqbuild: series and their slice order against pydicom and the challenge's own index.

Real data: the 24-slice challenge series must come out in the z order of
$DATA/rsna_labels/rsna_index.csv; the GE head CT (gantry tilt) and every other RSNA slice in the
order of ImagePositionPatient projected on the slice normal, computed here with pydicom and
numpy. Fixtures (h5py): duplicate positions, missing orientation, mixed orientations, a
missing position, a single slice, a reversed normal, rows that failed conversion.
"""
import csv
import glob
import os
import subprocess
import sys
import warnings

import h5py
import numpy as np

warnings.filterwarnings("ignore")
import pydicom  # noqa: E402

BIN = os.environ.get("BIN", "bin")
WORK = os.environ.get("WORK") or __import__("tempfile").mkdtemp()
DATA = os.environ.get("DATA", "")
FLAGS = {"single_slice": 1, "duplicate_position": 2, "no_orientation": 4,
         "mixed_orientation": 8, "no_position": 16, "uneven_spacing": 32}
failures = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)


def seqbuild(*args):
    cmd = [os.path.join(BIN, "seqbuild"), "-q"] + [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True)


def write_meta(path, rows):
    def strings(key, default=""):
        values = [r.get(key, default).encode() for r in rows]
        return np.array(values, dtype="S%d" % max([1] + [len(v) for v in values]))

    with h5py.File(path, "w") as f:
        for key in ("id", "patient_id", "study_uid", "series_uid", "path"):
            f[key] = strings(key)
        f["status"] = strings("status", "ok")
        f["position"] = np.array([r.get("position", [np.nan] * 3) for r in rows],
                                 dtype=np.float64).reshape(len(rows), 3)
        f["orientation"] = np.array([r.get("orientation", [np.nan] * 6) for r in rows],
                                    dtype=np.float64).reshape(len(rows), 6)


def read_sequences(path):
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


def expected_flags(proj):
    steps = np.diff(proj)
    flags = FLAGS["single_slice"] if len(proj) == 1 else 0
    if np.any(steps < 0.01):
        flags |= FLAGS["duplicate_position"]
    good = np.sort(steps[steps >= 0.01])
    if len(good) >= 2:
        median = good[len(good) // 2]
        if good[-1] > 1.5 * median or good[0] < 0.5 * median:
            flags |= FLAGS["uneven_spacing"]
    return flags


# ---- real data ----
if not DATA or not os.path.isdir(os.path.join(DATA, "rsna_ich_app_series")):
    print("skip: the shared DICOM data ($DATA) is absent")
    sys.exit(77)
inputs = [os.path.join(DATA, "rsna_ich_app_series", "dcm"), os.path.join(DATA, "dcm_qa_ct", "GE"),
          os.path.join(DATA, "rsna_george091")]
files = sorted(p for d in inputs for p in glob.glob(os.path.join(d, "*.dcm")))
meta_path = os.path.join(WORK, "conv", "meta.h5")
dcm2jpg = os.path.join(BIN, "dcm2jpg")
if os.path.exists(dcm2jpg):
    r = subprocess.run([dcm2jpg, "-q", "-j", "2", "--format", "ppm", "--size", "32", "-o",
                        os.path.dirname(meta_path)] + inputs, capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr)
        sys.exit("dcm2jpg failed (exit %d)" % r.returncode)
    source = "dcm2jpg"
else:
    rows = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        rows.append({"id": ds.SOPInstanceUID, "patient_id": ds.PatientID,
                     "study_uid": ds.StudyInstanceUID, "series_uid": ds.SeriesInstanceUID,
                     "path": path, "position": [float(v) for v in ds.ImagePositionPatient],
                     "orientation": [float(v) for v in ds.ImageOrientationPatient]})
    os.makedirs(os.path.dirname(meta_path), exist_ok=True)
    write_meta(meta_path, rows)
    source = "pydicom fixture"

out = os.path.join(WORK, "sequences.h5")
r = seqbuild("-o", out, meta_path)
check(r.returncode == 0, "seqbuild on %d real slices (metadata from %s): exit %d %s"
      % (len(files), source, r.returncode, r.stderr))
got, attrs = read_sequences(out)

# The reference: pydicom, grouped and projected here.
reference = {}
for path in files:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    normal /= np.linalg.norm(normal)  # IOP as stored is unit only to about 1e-6
    proj = float(np.array([float(v) for v in ds.ImagePositionPatient]) @ normal)
    key = (ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
    reference.setdefault(key, []).append((proj, ds.SOPInstanceUID, normal))
check(set(got) == set(reference) and sorted(got) == list(got),
      "%d series, the same as pydicom's grouping, sorted by patient, study, series"
      % len(reference))
order_errors = []
for key, slices in reference.items():
    slices.sort()
    proj = np.array([p for p, _, _ in slices])
    g = got[key]
    want_spacing = np.concatenate([[np.nan], np.diff(proj)])
    if (g["ids"] != [s for _, s, _ in slices] or np.abs(g["position"] - proj).max() > 1e-6
            or not np.allclose(g["spacing"], want_spacing, atol=1e-6, equal_nan=True)
            or not np.allclose(g["normal"], slices[0][2], atol=1e-9)
            or g["flags"] != expected_flags(proj)
            or g["series_index"] != [g["index"]] * len(slices)):
        order_errors.append((key[2], g["flags"], expected_flags(proj)))
check(not order_errors, "every series in the order of the projected position, positions, "
      "spacing, normal and flags as computed with pydicom: %s" % order_errors[:3])

# The challenge series against the challenge's own index (sorted by z there).
with open(os.path.join(DATA, "rsna_labels", "rsna_index.csv"), newline="") as f:
    index = [r for r in csv.DictReader(f) if r["SeriesInstanceUID"] == "ID_e17326e0bd"]
index.sort(key=lambda r: float(r["ImagePositionPatient_z"]))
app = got[("ID_fff502d5", "ID_f10de2d018", "ID_e17326e0bd")]
check(len(index) == 24 and app["ids"] == [r["SOPInstanceUID"] for r in index],
      "challenge series: its 24 slices in the z order of rsna_index.csv (first %s, last %s)"
      % (app["ids"][0], app["ids"][-1]))
check(app["flags"] == FLAGS["uneven_spacing"],
      "challenge series flagged uneven_spacing only (every third slice is held out): "
      "steps %.2f..%.2f mm" % (np.nanmin(app["spacing"]), np.nanmax(app["spacing"])))
ge = [v for k, v in got.items() if k[0] == "QMNx85rKkkg"]
check(len(ge) == 1 and len(ge[0]["ids"]) == 28 and abs(ge[0]["normal"][2] - 0.9483237) < 1e-6,
      "GE series: 28 slices along the tilted normal (%s), steps %s mm"
      % (np.round(ge[0]["normal"], 4), sorted(set(np.round(ge[0]["spacing"][1:], 2)))))
singles = sum(1 for v in got.values() if v["flags"] & FLAGS["single_slice"])
with h5py.File(meta_path, "r") as f:
    meta_ids = [x.decode() for x in f["id"][()]]
check(all(meta_ids[m] == i for v in got.values() for m, i in zip(v["meta_index"], v["ids"])),
      "meta_index points at each slice's row of meta.h5")
print("real data: %d series, %d single-slice; flags attribute: %s"
      % (len(got), singles, attrs.get("series_flags")))

# ---- fixtures ----
AXIAL = [1, 0, 0, 0, 1, 0]
t = np.radians(15)
TILTED = [1, 0, 0, 0, np.cos(t), -np.sin(t)]
TILTED_NORMAL = np.cross(TILTED[:3], TILTED[3:])
rows = []


def add(series, sid, position, orientation=AXIAL, status="ok", patient="P1"):
    rows.append({"id": sid, "patient_id": patient, "study_uid": "S1", "series_uid": series,
                 "path": "/f/%s.dcm" % sid, "status": status,
                 "position": position, "orientation": orientation})


# A: scrambled, two slices at one position (ties broken by ID), a failed row ignored.
for sid, z in (("a3", 10), ("a1", 0), ("a5", 15), ("a2", 5), ("a4", 10)):
    add("A", sid, [0, 0, z])
add("A", "a0", [0, 0, -5], status="error")
add("A", "a6", [0, 0, 20], status="exists")
# B: one slice without orientation: the series falls back to z.
for i, z in enumerate((30, 10, 20)):
    add("B", "b%d" % i, [0, 5 * z, z], AXIAL if i else [np.nan] * 6)
# C: four tilted slices and one axial: the majority's normal.
for i in range(4):
    add("C", "c%d" % i, list(np.array([0, 0, 50]) + (3 - i) * 5 * TILTED_NORMAL), TILTED)
add("C", "c9", [0, 0, 80], AXIAL)
# D: a single slice; E: one slice without a position; F: a normal pointing down.
add("D", "d0", [0, 0, 0])
for i, z in enumerate((2, 1, None, 3)):
    add("E", "e%d" % i, [0, 0, z] if z is not None else [np.nan] * 3)
for i, z in enumerate((5, 15, 10)):
    add("F", "f%d" % i, [0, 0, z], [1, 0, 0, 0, -1, 0])
# Another patient with a series of the same UID: a different series.
add("A", "x0", [0, 0, 1], patient="P2")

fixture = os.path.join(WORK, "fixture_meta.h5")
write_meta(fixture, rows)
r = seqbuild("-o", os.path.join(WORK, "fixture_seq.h5"), fixture)
check(r.returncode == 0, "fixture: exit %d" % r.returncode)
fx, _ = read_sequences(os.path.join(WORK, "fixture_seq.h5"))


def series_of(name, patient="P1"):
    return fx[(patient, "S1", name)]


expect = {
    "A": (["a1", "a2", "a3", "a4", "a5", "a6"], FLAGS["duplicate_position"]),
    "B": (["b1", "b2", "b0"], FLAGS["no_orientation"]),
    "C": (["c3", "c2", "c1", "c0", "c9"], FLAGS["mixed_orientation"] | FLAGS[
        "uneven_spacing"]),
    "D": (["d0"], FLAGS["single_slice"]),
    "E": (["e1", "e0", "e3", "e2"], FLAGS["no_position"]),
    "F": (["f1", "f2", "f0"], 0),
}
for name, (order, flags) in expect.items():
    s = series_of(name)
    check(s["ids"] == order and s["flags"] == flags, "fixture %s: order %s flags %d (want %s, %d)"
          % (name, s["ids"], s["flags"], order, flags))
a = series_of("A")
check(a["spacing"][3] == 0 and np.isnan(a["spacing"][0]),
      "duplicate position: spacing 0 between the pair, NaN first: %s" % a["spacing"].tolist())
b = series_of("B")
check(b["position"].tolist() == [10, 20, 30] and b["normal"].tolist() == [0, 0, 1],
      "no orientation: positions are z (%s)" % b["position"].tolist())
c = series_of("C")
check(np.allclose(c["normal"], TILTED_NORMAL) and np.allclose(np.diff(c["position"][:4]), 5),
      "mixed orientation: ordered along the tilted majority's normal, steps 5 mm")
e = series_of("E")
check(np.isnan(e["position"][-1]) and np.isnan(e["spacing"][-1]),
      "no position: last, position and spacing NaN")
f = series_of("F")
check(f["position"].tolist() == [-15, -10, -5], "reversed normal: ascending along it, i.e. "
      "descending z: %s" % f["position"].tolist())
check(fx[("P2", "S1", "A")]["ids"] == ["x0"], "same series UID under another patient: its own "
      "series")
r = subprocess.run([os.path.join(BIN, "seqbuild"), "-o", os.path.join(WORK, "fx2.h5"), fixture],
                   capture_output=True, text=True)
check(all(name in r.stderr for name in FLAGS), "every flag reported on stderr")

# Two rows with one ID: an error naming both files, nothing written.
write_meta(os.path.join(WORK, "twice.h5"), rows + [dict(rows[1], path="/g/copy.dcm")])
r = seqbuild("-o", os.path.join(WORK, "twice_seq.h5"), os.path.join(WORK, "twice.h5"))
check(r.returncode == 3 and "/g/copy.dcm" in r.stderr and "/f/a1.dcm" in r.stderr
      and not os.path.exists(os.path.join(WORK, "twice_seq.h5")),
      "slice ID twice: exit %d, both paths named, no output" % r.returncode)
# Nothing usable: an empty but valid file.
write_meta(os.path.join(WORK, "empty.h5"), [dict(rows[0], status="error")])
r = seqbuild("-o", os.path.join(WORK, "empty_seq.h5"), os.path.join(WORK, "empty.h5"))
empty, _ = read_sequences(os.path.join(WORK, "empty_seq.h5")) if r.returncode == 0 else ({1: 1},
                                                                                       None)
check(r.returncode == 0 and empty == {}, "no usable rows: exit %d, no series" % r.returncode)
r = seqbuild("-o", os.path.join(WORK, "x.h5"), os.path.join(WORK, "nothing.h5"))
check(r.returncode == 3 and "nothing.h5" in r.stderr, "missing meta.h5: exit %d: %s"
      % (r.returncode, r.stderr.strip()))
r = seqbuild(meta_path)
check(r.returncode == 2, "no -o: exit %d" % r.returncode)
r = subprocess.run([os.path.join(BIN, "seqbuild"), "--help"], capture_output=True, text=True)
check(r.returncode == 0 and "mixed_orientation" in r.stdout and "Exit codes" in r.stdout,
      "--help describes the flags and exit codes")

if failures:
    print("%d checks failed" % len(failures))
    sys.exit(1)
print("all seqbuild checks passed")
