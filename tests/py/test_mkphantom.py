"""mkphantom: its DICOM files read back by pydicom, its labels, and its lesions.

Two runs with the same seed, one with every series diseased (--prevalence 1) and one with
none (--prevalence 0), draw the same heads and the same noise, so their difference is exactly
what the lesions add (series matched by their row in series.csv: the IDs differ, as the
options do). That difference is checked against the labels CSV, the place each subtype must
take, and the fading at the ends of each lesion. Also: byte-identical output for -j 1 and
-j 2, no ID shared by runs with different options, DICOM tags and geometry, tissue densities,
dcm2jpg's view of the pixels, and what --labels and --force may overwrite or remove.
"""
import csv
import filecmp
import glob
import os
import re
import sys
import warnings

import numpy as np

warnings.filterwarnings("ignore")  # challenge-style IDs are not valid DICOM UIDs, on purpose
import pydicom  # noqa: E402
from scipy import ndimage  # noqa: E402

import testlib  # noqa: E402
from testlib import BIN, SUBTYPES, WORK, check  # noqa: E402

sys.path.insert(0, testlib.REF_DIR)
import dicom_ref  # noqa: E402

SIZE = 128


def run(*args):
    testlib.run_ok("mkphantom", *args)


def read_labels(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def load_series(root):
    """series folder -> list of datasets sorted by InstanceNumber."""
    out = {}
    for path in sorted(glob.glob(os.path.join(root, "*", "*.dcm"))):
        ds = pydicom.dcmread(path)
        ds.filename_ = path
        out.setdefault(os.path.basename(os.path.dirname(path)), []).append(ds)
    for v in out.values():
        v.sort(key=lambda d: int(d.InstanceNumber))
    return out


def manifest_rows(root):
    """series.csv as dicts, in generation order."""
    with open(os.path.join(root, "series.csv"), newline="") as f:
        return list(csv.DictReader(f))


def ids_of(root):
    """Every ID a run wrote: slice, series, study and patient IDs, from its DICOM files."""
    ids = set()
    for path in glob.glob(os.path.join(root, "*", "*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ids |= {ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.PatientID}
    return ids


def hu(ds):
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


SEED = int(os.environ.get("PHANTOM_SEED", 11))
common = ["--series", 10, "--slices", "14-18", "--size", SIZE, "--seed", SEED]
sick, sick2, healthy = (os.path.join(WORK, n) for n in ("sick", "sick_j1", "healthy"))
run("-o", sick, "-j", 2, "--prevalence", 1, "--test-fraction", 0.2, *common)
run("-o", sick2, "-j", 1, "--prevalence", 1, "--test-fraction", 0.2, *common)
run("-o", healthy, "-j", 2, "--prevalence", 0, "--test-fraction", 0.2, *common)

# ---- determinism ----
files = sorted(os.path.relpath(p, sick) for p in glob.glob(os.path.join(sick, "**", "*"),
                                                            recursive=True) if os.path.isfile(p))
same = [filecmp.cmp(os.path.join(sick, f), os.path.join(sick2, f), shallow=False) for f in files]
check(len(files) > 100 and all(same), "same seed, -j 2 vs -j 1: %d of %d files byte-identical"
      % (sum(same), len(files)))
other = os.path.join(WORK, "other_seed")
run("-o", other, "--series", 2, "--slices", 3, "--size", 32, "--seed", 12, "--uids", "dicom")
first_ids = {os.path.basename(p) for p in glob.glob(os.path.join(sick, "*", "*.dcm"))}
other_ids = {os.path.basename(p) for p in glob.glob(os.path.join(other, "*", "*.dcm"))}
check(not (first_ids & other_ids), "another seed gives other slice IDs")
uid = re.compile(r"2\.25\.(0|[1-9][0-9]*)")
bad_uids = []
for path in glob.glob(os.path.join(other, "*", "*.dcm")):
    ds = pydicom.dcmread(path)
    for key in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        value = ds.get(key)
        if not uid.fullmatch(value) or len(value) > 64:
            bad_uids.append((key, value))
check(len(other_ids) == 6 and not bad_uids,
      "--uids dicom: valid 2.25 UIDs of at most 64 characters %s" % bad_uids[:2])

# Runs that differ in any option that changes the content share no ID; before, IDs came from
# --seed alone, so these reused the same IDs for other pixels and labels.
variants = {"--size 32 --series 2": ["--size", 32, "--series", 2, "--slices", "14-18"],
            "--slices 3 --series 2": ["--size", SIZE, "--series", 2, "--slices", 3]}
shared = {}
sick_ids = ids_of(sick)
for name, args in variants.items():
    out = os.path.join(WORK, "variant%d" % len(shared))
    run("-o", out, "--seed", SEED, "--prevalence", 1, "--test-fraction", 0.2, *args)
    shared[name] = len(sick_ids & ids_of(out))
shared["--prevalence 0"] = len(sick_ids & ids_of(healthy))
check(not any(shared.values()),
      "same seed, other --size, --slices or --prevalence: no shared slice, series, study or "
      "patient ID among %d (shared: %s)" % (len(sick_ids), shared))

# ---- DICOM tags and geometry, as pydicom reads them ----
series = load_series(sick)
healthy_series = load_series(healthy)
check(len(series) == 10 and len(healthy_series) == 10, "10 series folders in both runs")
nslices = sum(len(v) for v in series.values())
tag_problems = []
for folder, slices in series.items():
    for ds in slices:
        meta = ds.file_meta
        expect = {
            "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2", "Modality": "CT", "Rows": SIZE,
            "Columns": SIZE, "BitsAllocated": 16, "BitsStored": 16, "HighBit": 15,
            "PixelRepresentation": 1, "SamplesPerPixel": 1,
            "PhotometricInterpretation": "MONOCHROME2", "SeriesInstanceUID": folder,
        }
        for k, v in expect.items():
            if ds.get(k) != v:
                tag_problems.append("%s %s=%r" % (ds.filename_, k, ds.get(k)))
        if float(ds.RescaleIntercept) != -1024 or float(ds.RescaleSlope) != 1:
            tag_problems.append("%s rescale" % ds.filename_)
        if meta.TransferSyntaxUID != "1.2.840.10008.1.2.1":
            tag_problems.append("%s transfer syntax %s" % (ds.filename_, meta.TransferSyntaxUID))
        if meta.MediaStorageSOPInstanceUID != ds.SOPInstanceUID:
            tag_problems.append("%s meta SOP UID" % ds.filename_)
        if os.path.basename(ds.filename_) != ds.SOPInstanceUID + ".dcm":
            tag_problems.append("%s file name is not the SOPInstanceUID" % ds.filename_)
        if not re.fullmatch(r"ID_[0-9a-f]{9}", ds.SOPInstanceUID):
            tag_problems.append("%s SOP UID style %s" % (ds.filename_, ds.SOPInstanceUID))
        if not re.fullmatch(r"ID_[0-9a-f]{8}", ds.PatientID):
            tag_problems.append("%s PatientID style %s" % (ds.filename_, ds.PatientID))
        if ds.pixel_array.dtype != np.int16:
            tag_problems.append("%s pixel dtype %s" % (ds.filename_, ds.pixel_array.dtype))
check(not tag_problems, "tags of %d slices (CT Image Storage, int16, intercept -1024, names): %s"
      % (nslices, tag_problems[:3]))

geometry_errors = []
tilted = 0
for folder, slices in series.items():
    iop = np.array([float(v) for v in slices[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    tilted += abs(normal[2]) < 0.999
    pos = np.array([[float(v) for v in d.ImagePositionPatient] for d in slices])
    proj = pos @ normal
    steps = np.diff(proj)
    thickness = float(slices[0].SliceThickness)
    lateral = np.linalg.norm(np.diff(pos, axis=0) - np.outer(steps, normal), axis=1)
    same_iop = all(np.allclose([float(v) for v in d.ImageOrientationPatient], iop)
                   for d in slices)
    if not (same_iop and np.all(np.abs(steps - thickness) < 1e-3) and lateral.max() < 1e-3
            and abs(np.linalg.norm(normal) - 1) < 1e-6 and abs(iop[:3] @ iop[3:]) < 1e-9):
        geometry_errors.append((folder, steps.min(), steps.max(), thickness, lateral.max()))
check(not geometry_errors, "positions step along the slice normal by SliceThickness, in "
      "InstanceNumber order: %s" % geometry_errors[:2])
check(tilted >= 1, "%d of 10 series have gantry tilt" % tilted)
patients = {d[0].PatientID for d in series.values()}
studies = {d[0].StudyInstanceUID for d in series.values()}
check(len(studies) == 10 and len(patients) <= 10,
      "%d studies, %d patients" % (len(studies), len(patients)))

# ---- labels CSVs ----
header, train_rows = read_labels(os.path.join(sick, "labels.csv"))
_, test_rows = read_labels(os.path.join(sick, "test_labels.csv"))
check(header == ["ID", "Label"], "labels header %s" % header)
labels = {}
order_ok = True
for rows in (train_rows, test_rows):
    for i in range(0, len(rows), 6):
        group = rows[i:i + 6]
        ids = {r[0].rsplit("_", 1)[0] for r in group}
        subs = [r[0].rsplit("_", 1)[1] for r in group]
        order_ok &= len(ids) == 1 and subs == SUBTYPES
        labels[ids.pop()] = [int(r[1]) for r in group]
check(order_ok and len(train_rows) % 6 == 0, "six rows per slice in the challenge order")
train_ids = {r[0].rsplit("_", 1)[0] for r in train_rows}
test_ids = {r[0].rsplit("_", 1)[0] for r in test_rows}
all_ids = {d.SOPInstanceUID for v in series.values() for d in v}
check(not (train_ids & test_ids) and train_ids | test_ids == all_ids,
      "every slice labelled once: %d train + %d test = %d files"
      % (len(train_ids), len(test_ids), len(all_ids)))
test_patients = {d.PatientID for v in series.values() for d in v if d.SOPInstanceUID in test_ids}
train_patients = {d.PatientID for v in series.values() for d in v
                  if d.SOPInstanceUID in train_ids}
check(test_ids and not (test_patients & train_patients),
      "test split by whole patients (%d test patients)" % len(test_patients))
check(all(lab[5] == max(lab[:5]) for lab in labels.values()), "'any' is the maximum of the five")
_, healthy_rows = read_labels(os.path.join(healthy, "labels.csv"))
check(all(r[1] == "0" for r in healthy_rows), "--prevalence 0: every label 0")

# ---- tissue densities on the healthy heads ----
values = np.concatenate([hu(d).ravel() for v in healthy_series.values() for d in v])
soft = values[(values > -50) & (values < 150)]
hist, edges = np.histogram(soft, bins=np.arange(-50, 151, 2))
mode = edges[np.argmax(hist)] + 1
bone = values[values > 300]
p_bone = np.percentile(bone, [50, 99.9])
check(25 <= mode <= 41, "brain tissue mode %.0f HU (25..41)" % mode)
check(700 <= p_bone[1] <= 1500, "bone: 99.9th percentile %.0f HU (700..1500)" % p_bone[1])
outside = np.mean(values == -3024)
air = values[(values > -1100) & (values < -900)]
check(outside > 0.1 and abs(np.median(air) + 1000) < 5,
      "%.0f%% outside the FOV at -3024 HU, air median %.1f HU" % (100 * outside, np.median(air)))
ventricle_csf = []
for v in healthy_series.values():
    for d in v:
        img = hu(d)
        c = img[SIZE // 2 - 12:SIZE // 2 + 12, SIZE // 2 - 12:SIZE // 2 + 12]
        ventricle_csf.extend(c[c < 17].tolist())
check(len(ventricle_csf) > 50 and 0 <= np.median(ventricle_csf) <= 15,
      "central CSF (ventricles) median %.1f HU over %d pixels (0..15)"
      % (np.median(ventricle_csf), len(ventricle_csf)))

# ---- lesions: the difference between the diseased and the healthy run ----
# The mixed run above, and one run per subtype (its heads equal the healthy run's: lesions
# are drawn after everything else), so that every subtype is seen alone.
def all_labels(root):
    out = testlib.label_lists(os.path.join(root, "labels.csv"))
    out.update(testlib.label_lists(os.path.join(root, "test_labels.csv")))
    return out


runs = [(sick, healthy)]
one_kind = ["--series", 3, "--slices", "14-18", "--size", SIZE, "--seed", SEED]
small_healthy = os.path.join(WORK, "healthy_small")
run("-o", small_healthy, "--prevalence", 0, *one_kind)
for k in range(5):
    out = os.path.join(WORK, SUBTYPES[k])
    rates = ",".join("1" if i == k else "0" for i in range(5))
    run("-o", out, "-j", 2, "--prevalence", 1, "--rates", rates, *one_kind)
    runs.append((out, small_healthy))

subtype_seen = {s: 0 for s in SUBTYPES[:5]}
label_disagree = []
place_problems = []
blood_peaks = []
solid = {}
aspect = {}
fade = {"middle": [], "end": []}
for sick_dir, healthy_dir in runs:
    run_series = series if sick_dir == sick else load_series(sick_dir)
    run_healthy = healthy_series if healthy_dir == healthy else load_series(healthy_dir)
    run_labels = all_labels(sick_dir)
    # The n-th series of both runs has the same head and noise.
    pairs = zip(manifest_rows(sick_dir), manifest_rows(healthy_dir))
    for row, healthy_row in pairs:
        folder = row["folder"]
        slices = run_series[folder]
        lesions = [x.split(":")[0] for x in row["lesions"].split(";") if x]
        px = float(slices[0].PixelSpacing[0])
        peaks = []
        for d, h in zip(slices, run_healthy[healthy_row["folder"]]):
            a, b = hu(d), hu(h)
            diff = a - b
            lab = run_labels[d.SOPInstanceUID]
            evident = (diff >= 10).sum() * px * px
            if not lesions:
                if np.any(diff != 0) or any(lab):
                    label_disagree.append((d.SOPInstanceUID, "lesion-free series differs"))
                continue
            peaks.append(diff.max())
            if lab[5] and evident < 5:
                label_disagree.append((d.SOPInstanceUID, "labelled, %.1f mm2 changed" % evident))
            if not lab[5] and evident > 40:
                label_disagree.append((d.SOPInstanceUID,
                                       "unlabelled, %.1f mm2 changed" % evident))
            if lab[5]:
                core = (diff >= 0.8 * diff.max()) & (ndimage.distance_transform_edt(b < 300) > 2)
                if core.any():
                    blood_peaks.append(np.median(a[core]))
            # Place: only slices with one lesion kind, so the difference belongs to it.
            kinds = [SUBTYPES[k] for k in range(5) if lab[k]]
            if len(set(lesions)) != 1 or len(kinds) != 1:
                continue
            kind = kinds[0]
            subtype_seen[kind] += 1
            lesion = diff >= 10
            mm_from_bone = ndimage.distance_transform_edt(b <= 300) * px
            near = mm_from_bone[lesion]
            # Ventricles of the healthy head; and how solid the blood is (strands in the
            # sulci vanish under an erosion, a lens or crescent does not).
            in_csf = ndimage.binary_dilation(b < 20, iterations=1)[lesion].mean()
            solid.setdefault(kind, []).append(
                ndimage.binary_erosion(lesion, np.ones((3, 3))).sum() / lesion.sum())
            if kind in ("epidural", "subdural"):
                # Thickness over length along the skull: a lens is thick and short, a
                # crescent thin and long.
                along = (lesion & (mm_from_bone <= 1.5 * px)).sum() * px
                aspect.setdefault(kind, []).append(near.max() / max(along, px))
            ok = True
            if kind in ("epidural", "subdural"):
                ok = near.min() <= 2 * px + 1 and np.percentile(near, 90) <= 28
            elif kind == "subarachnoid":
                ok = np.percentile(near, 90) <= 22
            elif kind == "intraparenchymal":
                ok = near.min() >= 3
            elif kind == "intraventricular":
                ok = in_csf >= 0.7 and near.min() >= 15
            if not ok:
                place_problems.append((d.SOPInstanceUID, kind, round(near.min(), 1),
                                       round(np.percentile(near, 90), 1), round(in_csf, 2)))
        # Fading: a lesion's first and last labelled slices are fainter than its middle.
        pos = [i for i, d in enumerate(slices) if run_labels[d.SOPInstanceUID][5]]
        # (Blood in the temporal horns, below the lateral ventricles, may leave a gap.)
        if len(lesions) == 1 and len(pos) >= 4 and lesions[0] != "intraventricular":
            fade["end"] += [peaks[pos[0]], peaks[pos[-1]]]
            fade["middle"] += [max(peaks[i] for i in pos[1:-1])]
            if np.any(np.diff(pos) != 1):
                place_problems.append((folder, "labelled slices not contiguous", pos))

check(not label_disagree, "labels agree with the lesions' footprint (%d problems): %s"
      % (len(label_disagree), label_disagree[:3]))
check(all(subtype_seen.values()) and not place_problems,
      "each subtype in its place on %s single-kind slices: %s"
      % (subtype_seen, place_problems[:3]))
solidity = {k: float(np.mean(v)) for k, v in solid.items()}
check(solidity["subarachnoid"] < 0.5 * min(solidity["subdural"], solidity["epidural"]),
      "subarachnoid blood lies in thin strands, subdural and epidural blood is solid "
      "(share of lesion pixels left after an erosion: %s)"
      % {k: round(v, 2) for k, v in solidity.items()})
aspects = {k: float(np.median(v)) for k, v in aspect.items()}
check(aspects["epidural"] > 1.5 * aspects["subdural"],
      "epidural blood is a lens, subdural a crescent (median thickness / length along the "
      "skull: %s)" % {k: round(v, 2) for k, v in aspects.items()})
check(blood_peaks and 45 <= np.median(blood_peaks) <= 95 and max(blood_peaks) <= 110,
      "blood: lesion cores median %.0f HU, highest %.0f (45..95)" % (np.median(blood_peaks),
                                                                   max(blood_peaks)))
check(fade["end"] and np.mean(fade["end"]) < 0.8 * np.mean(fade["middle"]),
      "lesions fade: largest change %.0f HU at their ends vs %.0f HU in the middle"
      % (np.mean(fade["end"]), np.mean(fade["middle"])))
faint = sum(1 for p in fade["end"] if p < 30)
print("faint end slices (under 30 HU of change): %d of %d" % (faint, len(fade["end"])))

# ---- dcm2jpg sees the same pixels as pydicom ----
dcm2jpg = os.path.join(BIN, "dcm2jpg")
if os.path.exists(dcm2jpg):
    out = os.path.join(WORK, "ppm")
    folder = sorted(series)[0]
    r = testlib.run("dcm2jpg", "--format", "ppm", "-o", out, os.path.join(sick, folder))
    check(r.returncode == 0, "dcm2jpg on a phantom series: exit %d %s" % (r.returncode,
                                                                          r.stderr[-300:]))
    worst = 0
    for d in series[folder]:
        want = dicom_ref.window(d)
        got = testlib.load_image(os.path.join(out, d.SOPInstanceUID + ".ppm"))
        worst = max(worst, int(np.abs(got.astype(int) - want).max()))
    check(worst == 0, "dcm2jpg --format ppm equals the pydicom windowing of %d slices "
          "(max difference %d)" % (len(series[folder]), worst))
else:
    testlib.skip("dcm2jpg's view of the phantom", "bin/dcm2jpg absent")

# ---- the command line ----
usage = [testlib.run_plain("mkphantom", *args).returncode
         for args in (["--series", "1"], ["-o", WORK + "/u", "--slices", "0"],
                      ["-o", WORK + "/u", "--rates", "1,2"], ["-o", WORK + "/u", "--size", "8"])]
check(usage == [2, 2, 2, 2], "bad command lines (no -o, --slices 0, --rates 1,2, --size 8): "
      "exits %s" % usage)
blocker = os.path.join(WORK, "a_file")
open(blocker, "w").close()
r = testlib.run_plain("mkphantom", "-o", os.path.join(blocker, "sub"), "--series", "1",
                      "--size", "16")
check(r.returncode == 5 and "a_file" in r.stderr, "output folder under a file: exit %d: %s"
      % (r.returncode, r.stderr.strip()))
r = testlib.run_plain("mkphantom", "--help")
check(r.returncode == 0 and "--test-fraction" in r.stdout and "default: 512" in r.stdout
      and "--force" in r.stdout, "--help lists the options with defaults")


# ---- a second run into the same folder ----
def tree(root):
    return sorted(os.path.relpath(os.path.join(d, n), root)
                  for d, _, names in os.walk(root) for n in names)


rerun = os.path.join(WORK, "rerun")
small = ["--slices", 2, "--size", 16, "--seed", 3]
run("-o", rerun, "--series", 4, "--test-fraction", 0.5, *small)
first = tree(rerun)
r = testlib.run("mkphantom", "-o", rerun, "--series", 1, *small)
check(r.returncode == 3 and rerun in r.stderr and "--force" in r.stderr and tree(rerun) == first,
      "into a non-empty folder: exit %d, nothing touched: %s" % (r.returncode, r.stderr.strip()))

# Someone else's files beside the run, and inside its series folders: one a .dcm file, as
# mkphantom's own are (--force used to remove every .dcm of a series folder).
series_dirs = sorted(d for d in os.listdir(rerun) if os.path.isdir(os.path.join(rerun, d)))
others = ["notes.txt", os.path.join("extra", "keep.dcm"), os.path.join(series_dirs[-1], "x.png"),
          os.path.join(series_dirs[0], "zz_user.dcm")]
for name in others:
    os.makedirs(os.path.dirname(os.path.join(rerun, name)), exist_ok=True)
    with open(os.path.join(rerun, name), "w") as f:
        f.write("not mkphantom's\n")
r = testlib.run_plain("mkphantom", "-o", rerun, "--series", 1, "--force", *small)
fresh = os.path.join(WORK, "rerun_fresh")
run("-o", fresh, "--series", 1, *small)
same = tree(fresh) == sorted(set(tree(rerun)) - set(others)) and all(
    filecmp.cmp(os.path.join(fresh, f), os.path.join(rerun, f), shallow=False)
    for f in tree(fresh))
check(r.returncode == 0 and same and all(os.path.exists(os.path.join(rerun, n)) for n in others),
      "--force over a 4-series run with a test split: the files of a fresh 1-series run, no "
      "stale series or test_labels.csv (%d files before, %d after), other files kept (%s)"
      % (len(first), len(tree(rerun)), ", ".join(others)))
warning = [line for line in r.stderr.splitlines() if "kept" in line]
check(len(warning) == 1 and "zz_user.dcm" in warning[0] and "2 files" in warning[0],
      "--force warns about the 2 files it kept in series folders: %s" % warning)

# A series.csv without slice_ids (as written before that column): the slice IDs of the
# earlier run come from its labels CSVs in OUTDIR.
older = os.path.join(WORK, "older")
run("-o", older, "--series", 3, "--test-fraction", 0.4, *small)
earlier_files = set(tree(older))
with open(os.path.join(older, "series.csv"), newline="") as f:
    rows = [row[:-1] for row in csv.reader(f)]
with open(os.path.join(older, "series.csv"), "w", newline="") as f:
    csv.writer(f, lineterminator="\n").writerows(rows)
r = testlib.run("mkphantom", "-o", older, "--series", 1, "--force", "--seed", 5,
                *small[:-2])
left = earlier_files & set(tree(older)) - {"labels.csv", "series.csv"}
check(r.returncode == 0 and not left,
      "--force over a series.csv without slice_ids: every earlier slice removed (via its "
      "labels CSVs): exit %d, %d earlier files left %s" % (r.returncode, len(left),
                                                          sorted(left)[:2]))

foreign = os.path.join(WORK, "foreign")
os.makedirs(foreign)
with open(os.path.join(foreign, "series.csv"), "w") as f:
    f.write("a,b\n1,2\n")
r = testlib.run("mkphantom", "-o", foreign, "--series", 1, "--force", *small)
check(r.returncode == 3 and "series.csv" in r.stderr and os.listdir(foreign) == ["series.csv"],
      "--force on a series.csv mkphantom did not write: exit %d, kept: %s"
      % (r.returncode, r.stderr.strip()))

# ---- --labels: never one of the run's own outputs, never someone else's file ----
precious = os.path.join(WORK, "precious.csv")
with open(precious, "w") as f:
    f.write("patient,notes\n1,keep me\n")
exits = []
for extra in ([], ["--force"]):
    out = os.path.join(WORK, "lab_precious%d" % len(exits))
    r = testlib.run("mkphantom", "-o", out, "--series", 1, "--labels", precious, *extra, *small)
    exits.append(r.returncode)
    print(r.stderr.strip())
check(exits == [3, 3] and open(precious).read() == "patient,notes\n1,keep me\n"
      and not os.path.exists(os.path.join(WORK, "lab_precious0")),
      "--labels naming an existing file that is no labels CSV: exit %s without and with "
      "--force, file unchanged, nothing written" % exits)

custom = os.path.join(WORK, "custom_labels.csv")
run("-o", os.path.join(WORK, "lab_a"), "--series", 2, "--labels", custom, *small)
before = open(custom).read()
r1 = testlib.run("mkphantom", "-o", os.path.join(WORK, "lab_b"), "--series", 1, "--labels",
                 custom, *small)
unchanged = open(custom).read() == before
r2 = testlib.run("mkphantom", "-o", os.path.join(WORK, "lab_b"), "--series", 1, "--labels",
                 custom, "--force", *small)
slices_now = len(testlib.label_lists(custom))
check(r1.returncode == 3 and unchanged and r2.returncode == 0 and slices_now == 2,
      "--labels naming an earlier run's labels CSV: exit %d and kept without --force, "
      "replaced with it (exit %d, %d slices now)" % (r1.returncode, r2.returncode, slices_now))

clash_dir = os.path.join(WORK, "lab_clash")
os.makedirs(clash_dir)
os.symlink(clash_dir, os.path.join(WORK, "lab_alias"))
clashes = {}
for spelled in (os.path.join(clash_dir, "series.csv"),
                os.path.join(clash_dir, ".", "sub", "..", "test_labels.csv"),
                os.path.join(WORK, "lab_alias", "series.csv")):
    r = testlib.run("mkphantom", "-o", clash_dir, "--series", 1, "--test-fraction", 0.5,
                    "--labels", spelled, *small)
    clashes[os.path.relpath(spelled, WORK)] = r.returncode
check(set(clashes.values()) == {2} and os.listdir(clash_dir) == [],
      "--labels naming OUTDIR/series.csv or OUTDIR/test_labels.csv (however spelled): exit 2, "
      "nothing written: %s" % clashes)

r = testlib.run_plain("mkphantom", "--help")
check("--labels" in r.stdout and "did not write are kept" in r.stdout
      and "share no IDs" in r.stdout, "--help says what --labels and --force may replace and "
      "how IDs are derived")

testlib.finish("mkphantom")
