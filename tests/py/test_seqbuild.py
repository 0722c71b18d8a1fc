"""seqbuild: series and their slice order against pydicom and the challenge's own index.

Every series in the order of ImagePositionPatient projected on the slice normal, computed
here with pydicom and numpy, on a mkphantom dataset (gantry tilt in some series) and, when the
shared data is there, on the GE head CT (gantry tilt) and every RSNA slice; the 24-slice
challenge series must also come out in the z order of $DATA/rsna_labels/rsna_index.csv.
Fixtures (h5py): duplicate positions, missing orientation, mixed orientations, a missing
position, a single slice, a reversed normal, rows that failed conversion. Inputs that cannot
give sequences (no usable row, a slice without series UID) stop the run; -o naming the input
is refused; -j does not change the output.
"""
import csv
import glob
import os
import warnings

import h5py
import numpy as np

warnings.filterwarnings("ignore")
import pydicom  # noqa: E402

import testlib  # noqa: E402
from testlib import DATA, WORK, check, read_sequences, run, write_meta  # noqa: E402

FLAGS = {"single_slice": 1, "duplicate_position": 2, "no_orientation": 4,
         "mixed_orientation": 8, "no_position": 16, "uneven_spacing": 32}


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


def pydicom_order(files):
    """(patient, study, series) -> [(projected position, ID, normal)] sorted, with pydicom."""
    reference = {}
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        normal /= np.linalg.norm(normal)  # IOP as stored is unit only to about 1e-6
        proj = float(np.array([float(v) for v in ds.ImagePositionPatient]) @ normal)
        key = (ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
        reference.setdefault(key, []).append((proj, ds.SOPInstanceUID, normal))
    for slices in reference.values():
        slices.sort()
    return reference


def build_and_compare(name, inputs, files):
    """meta.h5 of the inputs, seqbuild on it, every series against pydicom_order."""
    meta_path = os.path.join(WORK, name, "meta.h5")
    source = testlib.make_meta(inputs, meta_path, files)
    out = os.path.join(WORK, name, "sequences.h5")
    r = run("seqbuild", "-o", out, meta_path)
    check(r.returncode == 0, "%s: seqbuild on %d slices (metadata from %s): exit %d %s"
          % (name, len(files), source, r.returncode, r.stderr))
    got, attrs = read_sequences(out)
    reference = pydicom_order(files)
    check(set(got) == set(reference) and sorted(got) == list(got),
          "%s: %d series, the same as pydicom's grouping, sorted by patient, study, series"
          % (name, len(reference)))
    order_errors = []
    for key, slices in reference.items():
        proj = np.array([p for p, _, _ in slices])
        g = got[key]
        want_spacing = np.concatenate([[np.nan], np.diff(proj)])
        if (g["ids"] != [s for _, s, _ in slices] or np.abs(g["position"] - proj).max() > 1e-6
                or not np.allclose(g["spacing"], want_spacing, atol=1e-6, equal_nan=True)
                or not np.allclose(g["normal"], slices[0][2], atol=1e-9)
                or g["flags"] != expected_flags(proj)
                or g["series_index"] != [g["index"]] * len(slices)):
            order_errors.append((key[2], g["flags"], expected_flags(proj)))
    check(not order_errors, "%s: every series in the order of the projected position, "
          "positions, spacing, normal and flags as computed with pydicom: %s"
          % (name, order_errors[:3]))
    with h5py.File(meta_path, "r") as f:
        meta_ids = [x.decode() for x in f["id"][()]]
    check(all(meta_ids[m] == i for v in got.values() for m, i in zip(v["meta_index"], v["ids"])),
          "%s: meta_index points at each slice's row of meta.h5" % name)
    return got, attrs


def phantom_group():
    ph = testlib.phantom(os.path.join(WORK, "phantom"), "--series", 8, "--slices", "3-9",
                         "--size", 32, "--seed", 6)
    files = sorted(glob.glob(os.path.join(ph, "*", "*.dcm")))
    got, _ = build_and_compare("phantom_conv", [ph], files)
    tilted = sum(1 for v in got.values() if abs(v["normal"][2]) < 0.999)
    check(tilted >= 1, "phantom: %d of %d series with gantry tilt" % (tilted, len(got)))


def real_group():
    inputs = [os.path.join(DATA, "rsna_ich_app_series", "dcm"),
              os.path.join(DATA, "dcm_qa_ct", "GE"), os.path.join(DATA, "rsna_george091")]
    files = sorted(p for d in inputs for p in glob.glob(os.path.join(d, "*.dcm")))
    got, attrs = build_and_compare("real", inputs, files)

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
    check(len(ge) == 1 and len(ge[0]["ids"]) == 28
          and abs(ge[0]["normal"][2] - 0.9483237) < 1e-6,
          "GE series: 28 slices along the tilted normal (%s), steps %s mm"
          % (np.round(ge[0]["normal"], 4), sorted(set(np.round(ge[0]["spacing"][1:], 2)))))
    singles = sum(1 for v in got.values() if v["flags"] & FLAGS["single_slice"])
    print("real data: %d series, %d single-slice; flags attribute: %s"
          % (len(got), singles, attrs.get("series_flags")))


AXIAL = [1, 0, 0, 0, 1, 0]
TILT = np.radians(15)
TILTED = [1, 0, 0, 0, np.cos(TILT), -np.sin(TILT)]
TILTED_NORMAL = np.cross(TILTED[:3], TILTED[3:])


def fixture_rows():
    """Series A-F of one patient, each with one trouble, and a namesake of A elsewhere."""
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
    return rows


def fixture_group():
    rows = fixture_rows()
    fixture = os.path.join(WORK, "fixture_meta.h5")
    write_meta(fixture, rows)
    r = run("seqbuild", "-o", os.path.join(WORK, "fixture_seq.h5"), fixture)
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
        check(s["ids"] == order and s["flags"] == flags,
              "fixture %s: order %s flags %d (want %s, %d)"
              % (name, s["ids"], s["flags"], order, flags))
    a = series_of("A")
    check(a["spacing"][3] == 0 and np.isnan(a["spacing"][0]),
          "duplicate position: spacing 0 between the pair, NaN first: %s"
          % a["spacing"].tolist())
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
    check(fx[("P2", "S1", "A")]["ids"] == ["x0"], "same series UID under another patient: its "
          "own series")
    r = testlib.run_plain("seqbuild", "-o", os.path.join(WORK, "fx2.h5"), fixture)
    check(all(name in r.stderr for name in FLAGS), "every flag reported on stderr")

    # Two rows with one ID: an error naming both files, nothing written.
    write_meta(os.path.join(WORK, "twice.h5"), rows + [dict(rows[1], path="/g/copy.dcm")])
    r = run("seqbuild", "-o", os.path.join(WORK, "twice_seq.h5"), os.path.join(WORK, "twice.h5"))
    check(r.returncode == 3 and "/g/copy.dcm" in r.stderr and "/f/a1.dcm" in r.stderr
          and not os.path.exists(os.path.join(WORK, "twice_seq.h5")),
          "slice ID twice: exit %d, both paths named, no output" % r.returncode)
    # Nothing usable: exit 3 saying so (an empty sequences.h5 would only fail later).
    for name, meta_rows in (("unusable", [dict(rows[0], status="error"),
                                          dict(rows[1], status="skipped")]), ("no_rows", [])):
        path = os.path.join(WORK, name + ".h5")
        write_meta(path, meta_rows)
        out = os.path.join(WORK, name + "_seq.h5")
        r = run("seqbuild", "-o", out, path)
        check(r.returncode == 3 and name + ".h5" in r.stderr and not os.path.exists(out)
              and ("'error'" in r.stderr or not meta_rows),
              "%s: exit %d, nothing written: %s" % (name, r.returncode, r.stderr.strip()))

    # Without a series UID, slices of different series would merge: exit 3 naming the slice.
    # Without a PatientID the UIDs still tell series apart: a warning.
    no_uid = os.path.join(WORK, "no_uid.h5")
    write_meta(no_uid, [dict(r, series_uid="") if r["id"] == "c2" else r for r in rows])
    r = run("seqbuild", "-o", os.path.join(WORK, "no_uid_seq.h5"), no_uid)
    check(r.returncode == 3 and "c2" in r.stderr and "/f/c2.dcm" in r.stderr
          and "SeriesInstanceUID" in r.stderr,
          "a slice without SeriesInstanceUID: exit %d naming it: %s"
          % (r.returncode, r.stderr.strip()))
    no_patient = os.path.join(WORK, "no_patient.h5")
    write_meta(no_patient, [dict(r, patient_id="") if r["id"] in ("d0", "e1") else r
                            for r in rows])
    r = testlib.run_plain("seqbuild", "-o", os.path.join(WORK, "no_patient_seq.h5"), no_patient)
    check(r.returncode == 0 and "2 usable slices have no PatientID" in r.stderr,
          "slices without PatientID: exit %d with a warning counting them" % r.returncode)

    # -o naming the input, however spelled: exit 2, the input untouched.
    before = testlib.file_bytes(fixture)
    link = os.path.join(WORK, "fixture_link.h5")
    os.symlink(fixture, link)
    exits = [run("seqbuild", "-o", out, fixture).returncode
             for out in (fixture, os.path.join(WORK, ".", "fixture_meta.h5"), link)]
    check(exits == [2, 2, 2] and testlib.file_bytes(fixture) == before,
          "-o naming the input (as given, as ./, as a link): exits %s, input unchanged" % exits)
    r = run("seqbuild", "-o", os.path.join(WORK, "x.h5"), os.path.join(WORK, "nothing.h5"))
    check(r.returncode == 3 and "nothing.h5" in r.stderr, "missing meta.h5: exit %d: %s"
          % (r.returncode, r.stderr.strip()))
    r = run("seqbuild", fixture)
    check(r.returncode == 2, "no -o: exit %d" % r.returncode)
    r = testlib.run_plain("seqbuild", "--help")
    check(r.returncode == 0 and "mixed_orientation" in r.stdout and "Exit codes" in r.stdout,
          "--help describes the flags and exit codes")


def threads_group():
    """-j 1 and -j 3 on a phantom dataset with many short series: the same datasets."""
    ph = testlib.phantom(os.path.join(WORK, "phantom_j"), "--series", 40, "--slices", "2-5",
                         "--size", 16, "--seed", 9)
    files = sorted(glob.glob(os.path.join(ph, "*", "*.dcm")))
    meta_path = os.path.join(WORK, "phantom_j_meta", "meta.h5")
    testlib.make_meta([ph], meta_path, files)
    outs = [os.path.join(WORK, "seq_j%d.h5" % j) for j in (1, 3)]
    codes = [run("seqbuild", "-j", j, "-o", out, meta_path).returncode
             for j, out in zip((1, 3), outs)]
    check(codes == [0, 0] and testlib.same_datasets(*outs),
          "-j 1 and -j 3 on %d slices in 40 series: exits %s, the same datasets"
          % (len(files), codes))


def main():
    phantom_group()
    threads_group()
    if testlib.have_data("seqbuild on the RSNA slices, the challenge series and the GE head CT",
                         "rsna_ich_app_series"):
        real_group()
    fixture_group()
    testlib.finish("seqbuild")


if __name__ == "__main__":
    main()
