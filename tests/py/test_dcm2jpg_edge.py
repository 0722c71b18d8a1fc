"""dcm2jpg on edge cases: the odd files of the shared data and fixtures made here with DCMTK's
tools (dcmconv, dcmodify, dcmcjpeg, dcmcjpls, dcmcrle) or by editing bytes.

Every case is converted exactly like pydicom + numpy would (tests/ref/dicom_ref.py), or
rejected with its documented status, message and exit code; nothing crashes, no partial
output is left.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "ref"))
import dicom_ref  # noqa: E402

warnings.filterwarnings("ignore", message="Invalid value for VR UI")
BIN, DATA, WORK = dicom_ref.environment()
for tool in ("dcmconv", "dcmodify", "dcmcjpeg", "dcmcjpls", "dcmcrle"):
    if shutil.which(tool) is None:
        print("skip: DCMTK tool %s is not installed (make deps)" % tool)
        sys.exit(77)

# A signed 16-bit RSNA slice (intercept -1024) and a 12-bit unsigned one (implicit LE).
S16 = os.path.join(DATA, "rsna_ich_app_series/dcm/ID_032d5f85e.dcm")
U12 = os.path.join(DATA, "rsna_george091/ID_00008ce3c.dcm")
UID_ROOT = "1.2.826.0.1.3680043.10.1001."
FX = os.path.join(WORK, "fixtures")
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def sh(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def fixture(name, source, uid, *transform):
    """Copy source with a new SOPInstanceUID, then run a DCMTK converter on it."""
    path = os.path.join(FX, name)
    shutil.copyfile(source, path)
    sh("dcmodify", "-nb", "-m", "(0008,0018)=" + UID_ROOT + uid, path)
    if transform:
        tmp = path + ".in"
        os.rename(path, tmp)
        sh(*transform, tmp, path)
        os.remove(tmp)
    return path


def pixel_value_offset(data, count):
    """Offset of the native pixel words at the end of an explicit-LE file (checked)."""
    start = len(data) - 2 * count
    tag = data[start - 12:start - 4]
    length = int.from_bytes(data[start - 4:start], "little")
    assert tag == b"\xe0\x7f\x10\x00OW\x00\x00" and length == 2 * count, "unexpected layout"
    return start


def edit_pixels(path, transform):
    """Replace the native 16-bit words with transform(words as int32)."""
    data = open(path, "rb").read()
    ds = dicom_ref.read(path)
    count = int(ds.Rows) * int(ds.Columns)
    start = pixel_value_offset(data, count)
    dtype = "<i2" if int(ds.PixelRepresentation) else "<u2"
    words = np.frombuffer(data[start:], dtype=dtype).astype(np.int32)
    new = transform(words).astype(np.int64) & 0xFFFF
    with open(path, "wb") as f:
        f.write(data[:start] + new.astype("<u2").tobytes())


def make_good_fixtures():
    """Files dcm2jpg must convert; name -> path."""
    os.makedirs(FX)
    fx = {}
    fx["s16"] = fixture("s16.dcm", S16, "1")
    fx["big_endian"] = fixture("be.dcm", S16, "2", "dcmconv", "+tb")
    fx["deflated"] = fixture("deflated.dcm", S16, "3", "dcmconv", "+td")
    fx["implicit"] = fixture("implicit.dcm", S16, "4", "dcmconv", "+ti")
    fx["jpeg_lossless"] = fixture("jll.dcm", S16, "5", "dcmcjpeg", "+e1")
    fx["jpeg_ls"] = fixture("jls.dcm", S16, "6", "dcmcjpls")
    fx["rle"] = fixture("rle.dcm", S16, "7", "dcmcrle")
    fx["jpeg_baseline"] = fixture("jbase.dcm", S16, "8", "dcmcjpeg", "+eb")
    fx["jpeg_extended12"] = fixture("jext.dcm", U12, "9", "dcmcjpeg", "+ee")
    fx["jpeg_ls_near"] = fixture("jlsnear.dcm", U12, "10", "dcmcjpls", "+en")

    fx["monochrome1"] = fixture("mono1.dcm", S16, "11")
    sh("dcmodify", "-nb", "-m", "(0028,0004)=MONOCHROME1", fx["monochrome1"])
    fx["no_rescale"] = fixture("norescale.dcm", S16, "12")
    sh("dcmodify", "-nb", "-ea", "(0028,1052)", "-ea", "(0028,1053)", fx["no_rescale"])

    # No preamble and no .dcm extension: the meta header starts at byte 0.
    with_uid = fixture("tmp.dcm", S16, "13")
    fx["no_preamble"] = os.path.join(FX, "no_preamble")
    with open(with_uid, "rb") as f, open(fx["no_preamble"], "wb") as out:
        out.write(f.read()[132:])
    os.remove(with_uid)
    # No meta header at all (a bare data set), explicit little endian.
    fx["no_meta"] = fixture("no_meta.raw", S16, "14", "dcmconv", "-F", "+te")

    # Signed 12-bit data whose words are not sign-extended (0x0FFF, not 0xFFFF, for -1):
    # native, pydicom keeps the raw words; its JPEG decoder sign-extends, JPEG-LS does not.
    fx["signed12_raw"] = fixture("s12raw.dcm", S16, "15")
    edit_pixels(fx["signed12_raw"], lambda w: w & 0x0FFF)
    sh("dcmodify", "-nb", "-m", "(0028,0101)=12", "-m", "(0028,0102)=11", fx["signed12_raw"])
    fx["signed12_raw_jpeg"] = fixture("s12raw_jll.dcm", fx["signed12_raw"], "16", "dcmcjpeg")
    fx["signed12_raw_jpegls"] = fixture("s12raw_jls.dcm", fx["signed12_raw"], "17", "dcmcjpls")

    # The 12-bit wrap quirk: stored = (v - 1024) mod 4096 with intercept 0, so that the fix
    # (v + 1000 mod 4096, intercept -1000) gives back v - 1024 HU except below -1000 HU.
    fx["wrap12"] = fixture("wrap12.dcm", U12, "18", "dcmconv", "+te")
    edit_pixels(fx["wrap12"], lambda w: (w + 3072) % 4096)
    sh("dcmodify", "-nb", "-m", "(0028,1052)=0", fx["wrap12"])
    fx["mr12"] = os.path.join(DATA, "dcm_qa_12bit/12bitUnsigned.dcm")
    return fx


def reference_dataset(name, path):
    ds = dicom_ref.read(path)
    if name == "no_meta":
        # pydicom needs to be told the syntax of a bare data set.
        import pydicom
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = EXPLICIT_LE
    return ds


def check_good(fx):
    out = os.path.join(WORK, "good")
    code, err = dicom_ref.run_dcm2jpg(
        BIN, ["-j", "2", "--any-modality", "--format", "ppm", "-o", out] + list(fx.values()),
        expect=0)
    rows, _ = dicom_ref.read_meta(os.path.join(out, "meta.h5"))
    by_path = {r["path"]: r for r in rows}
    assert len(rows) == len(fx), "%d rows for %d fixtures" % (len(rows), len(fx))
    images = {}
    for name, path in fx.items():
        row = by_path[path]
        assert row["status"] == "ok", "%s: %s (%s)" % (name, row["status"], row["message"])
        got = dicom_ref.load_image(os.path.join(out, row["id"] + ".ppm"))
        want = dicom_ref.window(reference_dataset(name, path))
        differ = int(np.count_nonzero(got != want))
        assert differ == 0, "%s: %d values differ from pydicom+numpy" % (name, differ)
        images[name] = got

        expected = dicom_ref.header(path)
        if name == "no_meta":
            assert row["transfer_syntax"] == EXPLICIT_LE, row["transfer_syntax"]
            expected["transfer_syntax"] = EXPLICIT_LE
        for field, value in expected.items():
            got_value = row[field]
            if isinstance(value, list):
                same = np.allclose(np.asarray(got_value, float), value, rtol=0, atol=0,
                                   equal_nan=True)
            elif isinstance(value, float):
                same = (np.isnan(value) and np.isnan(got_value)) or float(got_value) == value
            else:
                same = got_value == value
            assert same, "%s: meta %s = %r, pydicom %r" % (name, field, got_value, value)
    print("good fixtures: %d converted, each equal to pydicom+numpy: %s"
          % (len(fx), ", ".join(fx)))

    # Lossless encodings, MONOCHROME1 and the missing preamble/meta change no pixel.
    for name in ("big_endian", "deflated", "implicit", "jpeg_lossless", "jpeg_ls", "rle",
                 "monochrome1", "no_preamble", "no_meta"):
        assert np.array_equal(images[name], images["s16"]), name + " differs from s16"
    assert not np.array_equal(images["no_rescale"], images["s16"])
    row = by_path[fx["no_rescale"]]
    assert row["slope"] == 1.0 and row["intercept"] == 0.0, row
    row = by_path[fx["wrap12"]]
    assert row["wrap_fixed"] == 1 and row["intercept"] == 0.0, row
    assert by_path[fx["mr12"]]["wrap_fixed"] == 0, "MR must not get the CT wrap fix"
    assert by_path[fx["s16"]]["wrap_fixed"] == 0
    return out, by_path, images


def check_wrap(fx, good_images):
    """The fix recovers the clean slice; --no-fix-wrap reproduces the original method."""
    out = os.path.join(WORK, "nofix")
    dicom_ref.run_dcm2jpg(BIN, ["--no-fix-wrap", "--format", "ppm", "-o", out, fx["wrap12"]],
                          expect=0)
    rows, attrs = dicom_ref.read_meta(os.path.join(out, "meta.h5"))
    assert attrs["fix_wrap"] == 0 and rows[0]["wrap_fixed"] == 0
    unfixed = dicom_ref.load_image(os.path.join(out, rows[0]["id"] + ".ppm"))
    want = dicom_ref.window(dicom_ref.read(fx["wrap12"]), fix_wrap=False)
    assert np.array_equal(unfixed, want), "--no-fix-wrap differs from the plain reference"

    clean_out = os.path.join(WORK, "clean")
    dicom_ref.run_dcm2jpg(BIN, ["--format", "ppm", "-o", clean_out, U12], expect=0)
    clean_rows, _ = dicom_ref.read_meta(os.path.join(clean_out, "meta.h5"))
    clean = dicom_ref.load_image(os.path.join(clean_out, clean_rows[0]["id"] + ".ppm"))
    # Where the clean slice is at or above -1000 HU the fix must give it back exactly (below,
    # the known fix itself wraps: air outside the field of view turns bright).
    stored, slope, intercept = dicom_ref.stored_values(dicom_ref.read(U12))
    valid = stored * slope + intercept >= -1000
    fixed_same = float(np.mean(np.all(good_images["wrap12"] == clean, axis=-1)[valid]))
    unfixed_same = float(np.mean(np.all(unfixed == clean, axis=-1)[valid]))
    print("12-bit wrap: on the %.1f%% of pixels >= -1000 HU the fixed output equals the clean "
          "slice on %.2f%%, the unfixed one on %.2f%%"
          % (100 * valid.mean(), 100 * fixed_same, 100 * unfixed_same))
    assert fixed_same == 1.0 and unfixed_same < 0.5


def check_resize_and_jpeg_options(fx):
    import cv2
    out = os.path.join(WORK, "small")
    dicom_ref.run_dcm2jpg(BIN, ["--size", "256", "--format", "ppm", "-o", out, fx["s16"]],
                          expect=0)
    rows, attrs = dicom_ref.read_meta(os.path.join(out, "meta.h5"))
    assert attrs["size"] == 256
    small = dicom_ref.load_image(os.path.join(out, rows[0]["id"] + ".ppm"))
    exact = dicom_ref.window(dicom_ref.read(fx["s16"]))
    want = cv2.resize(exact, (256, 256), interpolation=cv2.INTER_LINEAR)
    diff = np.abs(small.astype(int) - want.astype(int))
    print("--size 256 vs OpenCV INTER_LINEAR: max difference %d, mean %.4f"
          % (diff.max(), diff.mean()))
    assert small.shape == (256, 256, 3) and diff.max() <= 1

    sizes, errors = {}, {}
    for label, extra in (("q95", []), ("q80", ["--quality", "80"]),
                         ("420", ["--subsample420"])):
        o = os.path.join(WORK, "jpeg-" + label)
        dicom_ref.run_dcm2jpg(BIN, extra + ["-o", o, fx["s16"]], expect=0)
        _, a = dicom_ref.read_meta(os.path.join(o, "meta.h5"))
        path = os.path.join(o, rows[0]["id"] + ".jpg")
        sizes[label] = os.path.getsize(path)
        errors[label] = float(np.abs(dicom_ref.load_image(path).astype(int) - exact).mean())
        if label == "420":
            assert a["subsampling"] == "4:2:0"
        if label == "q80":
            assert a["quality"] == 80
    print("JPEG bytes %s, mean error %s" % (sizes, {k: round(v, 3) for k, v in errors.items()}))
    assert sizes["q80"] < sizes["q95"] and errors["420"] > errors["q95"]


def make_bad_fixtures():
    bad = {}
    source = fixture("src_bad.dcm", S16, "20")
    data = open(source, "rb").read()
    bad["truncated_file"] = os.path.join(FX, "truncated.dcm")
    with open(bad["truncated_file"], "wb") as f:
        f.write(data[:len(data) - 100000])
    # Short pixel data with a consistent length field: a valid file, too few pixels.
    bad["short_pixels"] = os.path.join(FX, "short_pixels.dcm")
    start = pixel_value_offset(data, 512 * 512)
    keep = 100000
    with open(bad["short_pixels"], "wb") as f:
        f.write(data[:start - 4] + keep.to_bytes(4, "little") + data[start:start + keep])
    bad["truncated_header"] = os.path.join(FX, "truncated_header.dcm")
    with open(bad["truncated_header"], "wb") as f:
        f.write(data[:600])
    rng = np.random.default_rng(7)
    bad["garbage"] = os.path.join(FX, "garbage.dcm")
    with open(bad["garbage"], "wb") as f:
        f.write(bytes(128) + b"DICM" + rng.integers(0, 256, 20000, dtype=np.uint8).tobytes())
    os.remove(source)
    bad["jpeg2000"] = os.path.join(DATA, "dcm_qa_ts/9.dcm")
    bad["duplicate_a"] = fixture("dup_a.dcm", S16, "21")
    bad["duplicate_b"] = fixture("dup_b.dcm", S16, "21", "dcmconv", "+ti")
    return bad


SKIPPED = {
    "colour": ("dcm_qa_ct/Philips/S21570/S4010/I50", r"colour image"),
    "multi_frame": ("pydicom_data/emri_small.dcm", r"multi-frame image \(10 frames\)"),
    "sr": ("pydicom_testfiles/test-SR.dcm", r"no image: Modality SR"),
    "sr_cornerstone": ("cornerstone_testimages/no-pixel-data.dcm", r"no image"),
    "rtplan": ("pydicom_testfiles/rtplan.dcm", r"no image: Modality RTPLAN"),
}
ERRORS = {
    "truncated_file": r"truncated",
    "short_pixels": r"pixel data too short: 100000 bytes",
    "truncated_header": r"truncated|corrupt",
    "garbage": r"truncated or corrupt|corrupt",
    "jpeg2000": r"transfer syntax 1\.2\.840\.10008\.1\.2\.4\.90 \(JPEG 2000",
}


def check_bad(good):
    bad = make_bad_fixtures()
    skipped = {k: os.path.join(DATA, v[0]) for k, v in SKIPPED.items()}
    not_dicom_dir = os.path.join(DATA, "head_ct_kitamura")
    not_dicom = len([p for p in glob.glob(not_dicom_dir + "/**", recursive=True)
                     if os.path.isfile(p) and not os.path.basename(p).startswith(".")])
    out = os.path.join(WORK, "bad")
    os.makedirs(out)
    args = ["-j", "2", "--any-modality", "-o", out, good, not_dicom_dir]
    args += list(bad.values()) + list(skipped.values())
    code, err = dicom_ref.run_dcm2jpg(BIN, args, expect=4)
    rows, attrs = dicom_ref.read_meta(os.path.join(out, "meta.h5"))
    by_path = {r["path"]: r for r in rows}
    assert len(rows) == 1 + len(bad) + len(skipped), "%d rows" % len(rows)

    for name, path in skipped.items():
        row = by_path[path]
        assert row["status"] == "skipped" and re.search(SKIPPED[name][1], row["message"]), (
            "%s: %s %s" % (name, row["status"], row["message"]))
    for name, pattern in ERRORS.items():
        row = by_path[bad[name]]
        assert row["status"] == "error" and re.search(pattern, row["message"]), (
            "%s: %s %s" % (name, row["status"], row["message"]))
        assert bad[name] in err, "%s is not named on stderr" % name
    for mine, other in (("duplicate_a", "duplicate_b"), ("duplicate_b", "duplicate_a")):
        row = by_path[bad[mine]]
        assert row["status"] == "error" and "duplicate SOPInstanceUID" in row["message"]
        assert bad[other] in row["message"], row["message"]
    assert by_path[good]["status"] == "ok"

    summary = err.strip().splitlines()[-1]
    want = ("converted 1, existing 0, skipped %d, failed %d, non-DICOM %d"
            % (len(skipped), len(bad), not_dicom))
    assert want in summary, "summary %r, expected %r" % (summary, want)
    assert (attrs["converted"], attrs["failed"], attrs["non_dicom"]) == (1, len(bad), not_dicom)

    # Only the good slice's image and the table; no temporary files.
    files = sorted(os.listdir(out))
    assert files == sorted([by_path[good]["id"] + ".jpg", "meta.h5"]), files
    print("bad inputs: %d errors and %d skipped with their messages, %d non-DICOM files "
          "ignored, exit 4, no stray output" % (len(bad), len(skipped), not_dicom))
    return bad


def check_exit_codes(good, bad):
    def expect_nothing(name, args, code, pattern):
        out = os.path.join(WORK, "exit-" + name)
        _, err = dicom_ref.run_dcm2jpg(BIN, ["-o", out] + args, expect=code)
        assert re.search(pattern, err), "%s: stderr lacks %r:\n%s" % (name, pattern, err)
        left = os.listdir(out) if os.path.isdir(out) else []
        assert left == [], "%s left %s" % (name, left)

    readme = os.path.join(DATA, "README.md")
    png = sorted(glob.glob(os.path.join(DATA, "head_ct_kitamura", "*.png")))[0]
    expect_nothing("all-failed", [bad["truncated_file"]], 3, r"nothing converted")
    expect_nothing("explicit-text", [good, readme], 3, re.escape(readme) + r": not a DICOM")
    expect_nothing("explicit-png", [png, good], 3, re.escape(png) + r": not a DICOM")
    expect_nothing("missing", [good, os.path.join(WORK, "absent.dcm")], 3, r"no such file")
    expect_nothing("only-mr", [os.path.join(DATA, "dcm_qa_ts/1.dcm")], 3, r"not CT")
    expect_nothing("only-png", [os.path.join(DATA, "head_ct_kitamura")], 3,
                   r"nothing converted")
    expect_nothing("bad-quality", ["--quality", "0", good], 2, r"out of range")
    expect_nothing("unknown-option", ["--frobnicate", good], 2, r"unknown option")
    # The four encodings of cornerstone's CTImage share one SOPInstanceUID: all rejected.
    copies = sorted(glob.glob(os.path.join(DATA, "cornerstone_testimages", "CTImage.dcm*")))
    expect_nothing("duplicates", copies, 3, r"nothing converted")
    _, err = dicom_ref.run_dcm2jpg(BIN, ["-o", os.path.join(WORK, "dups")] + copies, expect=3)
    for path in copies:
        line = [l for l in err.splitlines() if l.startswith("dcm2jpg: error: " + path + ":")]
        assert line and "duplicate SOPInstanceUID" in line[0], "%s not reported" % path
        assert any(other in line[0] for other in copies if other != path), line[0]

    code, err = dicom_ref.run_dcm2jpg(BIN, [good], expect=2)
    assert "-o OUTDIR is required" in err

    proc = subprocess.run([os.path.join(BIN, "dcm2jpg"), "--help"], stdout=subprocess.PIPE,
                          text=True, check=True)
    for word in ("--out", "--list", "--threads", "--quality", "--subsample420", "--size",
                 "--format", "--force", "--no-fix-wrap", "--any-modality", "(default: 95)",
                 "Exit codes", "  4  "):
        assert word in proc.stdout, "--help lacks %r" % word
    print("exit codes: 3 for failed/missing/non-DICOM/non-CT-only input (nothing written), "
          "2 for usage errors, --help complete")


# Covered slice by slice in test_dcm2jpg_real.py.
REAL_SLICES = ("rsna_ich_app_series/", "rsna_george091/", "dcm_qa_ct/GE/")
NO_DECODER = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")


def expected_outcome(item):
    """Status and message pattern for one INVENTORY.tsv row, from the inventory's columns."""
    if item["pixel_decodes"] == "no_pixel_data":
        return "skipped", r"no image"
    if int(item["SamplesPerPixel"] or 1) != 1:
        return "skipped", r"colour image"
    if int(item["NumberOfFrames"] or 1) > 1:
        return "skipped", r"multi-frame"
    if item["TransferSyntaxUID"] in NO_DECODER:
        return "error", re.escape(item["TransferSyntaxUID"])
    return "ok", r"converted"


def check_inventory():
    """Every other DICOM file of the shared data (INVENTORY.tsv), any modality."""
    import csv
    with open(os.path.join(DATA, "INVENTORY.tsv")) as f:
        items = [r for r in csv.DictReader(f, delimiter="\t")
                 if not r["path"].startswith(REAL_SLICES)]
    # Runs in which no SOPInstanceUID occurs twice (several files here share one).
    runs = []
    for item in items:
        for run in runs:
            if item["SOPInstanceUID"] not in run:
                run[item["SOPInstanceUID"]] = item
                break
        else:
            runs.append({item["SOPInstanceUID"]: item})

    tally = {}
    for k, run in enumerate(runs):
        out = os.path.join(WORK, "inventory%d" % k)
        paths = [os.path.join(DATA, item["path"]) for item in run.values()]
        expected = {p: expected_outcome(item) for p, item in zip(paths, run.values())}
        statuses = [e[0] for e in expected.values()]
        code = 4 if "error" in statuses and "ok" in statuses else 0 if "ok" in statuses else 3
        dicom_ref.run_dcm2jpg(BIN, ["--any-modality", "--format", "ppm", "-o", out] + paths,
                              expect=code)
        if code == 3:
            continue
        rows, _ = dicom_ref.read_meta(os.path.join(out, "meta.h5"))
        for row in rows:
            status, pattern = expected[row["path"]]
            name = os.path.relpath(row["path"], DATA)
            assert row["status"] == status and re.search(pattern, row["message"]), (
                "%s: %s (%s), expected %s" % (name, row["status"], row["message"], status))
            tally[status] = tally.get(status, 0) + 1
            if status != "ok":
                continue
            got = dicom_ref.load_image(os.path.join(out, row["id"] + ".ppm"))
            want = dicom_ref.window(dicom_ref.read(row["path"]))
            assert np.array_equal(got, want), name + ": differs from pydicom+numpy"
            for field, value in dicom_ref.header(row["path"]).items():
                if isinstance(value, (list, float)):
                    same = np.array_equal(np.asarray(row[field], float), np.asarray(value),
                                          equal_nan=True)
                else:
                    same = row[field] == value
                assert same, "%s: meta %s = %r, pydicom %r" % (name, field, row[field], value)
    print("inventory: %d other DICOM files in %d runs: %s; every converted one equals "
          "pydicom+numpy" % (len(items), len(runs), tally))


def main():
    fx = make_good_fixtures()
    _, _, images = check_good(fx)
    check_wrap(fx, images)
    check_resize_and_jpeg_options(fx)
    bad = check_bad(fx["s16"])
    check_exit_codes(fx["s16"], bad)
    check_inventory()


if __name__ == "__main__":
    main()
