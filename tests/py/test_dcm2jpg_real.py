"""dcm2jpg on every real CT slice of the shared data, against pydicom + numpy.

- lossless (ppm) output equals the reference windowing exactly, every pixel of every slice;
- JPEG output (quality 95, 4:4:4) stays within a small error of the exact values;
- the RSNA app's own windowed JPEGs (another implementation, OpenCV 4:2:0) agree roughly,
  byte order included with --bgr (OpenCV wrote channel 0, brain, as blue);
- every meta.h5 field equals what pydicom reads.
"""
import math
import os
import sys
import warnings

import numpy as np

import testlib
from testlib import DATA, WORK

sys.path.insert(0, testlib.REF_DIR)
import dicom_ref  # noqa: E402

# JPEG q95 4:4:4 against the exact values. reference-method.md measured 0.03-0.9 mean and
# 1-8 at the 99th percentile on real head slices; the small sharp-edged CT_small phantom and
# the chest CT reach about 2 and 10. Limits per slice, and tighter ones over all pixels.
JPEG_MEAN_MAX = 2.5
JPEG_P99_MAX = 12
POOLED_MEAN_MAX = 1.0
POOLED_P99_MAX = 8
# The app's JPEGs are OpenCV 4:2:0 at quality 95: chroma subsampling costs several levels.
APP_MEAN_MAX = 3.0
# With --bgr --subsample420 our encoder reproduces them (measured: identical pixels).
BGR_MEAN_MAX = 0.05

# RSNA IDs are not valid UIDs; pydicom warns on every one.
warnings.filterwarnings("ignore", message="Invalid value for VR UI")
testlib.require_data("dcm2jpg on the real slices")

# One folder per invocation group; the four cornerstone files share one SOPInstanceUID, so
# each goes through its own run (together they are the duplicate-ID error case).
MAIN_INPUTS = [
    "rsna_ich_app_series/dcm",
    "rsna_george091",
    "dcm_qa_ct/GE",
    "dcm_qa_ct/Philips/S21610/S1000/I10",  # a localizer: converted with --keep-localizers
    "pydicom_data/693_UNCR.dcm",
    "pydicom_testfiles/CT_small.dcm",
]
CORNERSTONE = ["cornerstone_testimages/CTImage.dcm" + suffix for suffix in (
    "",
    "_LittleEndianExplicitTransferSyntax_1.2.840.10008.1.2.1.dcm",
    "_RLELosslessTransferSyntax_1.2.840.10008.1.2.5.dcm",
    "_JPEGProcess14SV1TransferSyntax_1.2.840.10008.1.2.4.70.dcm",
)]


def same_value(a, b):
    if isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return a == b


def check_meta_row(row, path):
    expected = dicom_ref.header(path)
    for field, want in expected.items():
        got = row[field]
        if isinstance(want, list):
            got = list(np.asarray(got, dtype=float))
            ok = len(got) == len(want) and all(same_value(g, w) for g, w in zip(got, want))
        elif isinstance(want, float):
            ok = same_value(float(got), want)
        elif isinstance(want, int):
            ok = int(got) == want
        else:
            ok = got == want
        assert ok, "%s: meta.h5 %s = %r, pydicom says %r" % (path, field, got, want)
    return len(expected)


def convert(inputs, out, extra):
    args = ["-q", "-j", "2", "--keep-localizers", "-o", out] + extra
    args += [os.path.join(DATA, p) for p in inputs]
    testlib.run_expect("dcm2jpg", args, expect=0)
    rows, attrs = testlib.read_meta(os.path.join(out, "meta.h5"))
    return rows, attrs


def main():
    slices = 0
    fields_checked = 0
    worst_mean = worst_p99 = 0.0
    all_errors = []
    groups = [MAIN_INPUTS] + [[p] for p in CORNERSTONE]
    jpg_dir_main = os.path.join(WORK, "jpg0")
    for g, inputs in enumerate(groups):
        ppm_dir = os.path.join(WORK, "ppm%d" % g)
        jpg_dir = os.path.join(WORK, "jpg%d" % g)
        rows, attrs = convert(inputs, ppm_dir, ["--format", "ppm"])
        jrows, jattrs = convert(inputs, jpg_dir, [])
        assert attrs["format"] == "ppm" and jattrs["quality"] == 95
        assert jattrs["subsampling"] == "4:4:4" and jattrs["fix_wrap"] == 1
        assert len(rows) == len(jrows)

        for row in rows:
            path = row["path"]
            assert row["status"] == "ok", "%s: status %s (%s)" % (path, row["status"],
                                                                  row["message"])
            fields_checked += check_meta_row(row, path)
            expected = dicom_ref.window(dicom_ref.read(path))

            got = testlib.load_image(os.path.join(ppm_dir, row["id"] + ".ppm"))
            assert got.shape == expected.shape, "%s: shape %s, expected %s" % (
                path, got.shape, expected.shape)
            differ = int(np.count_nonzero(got != expected))
            assert differ == 0, "%s: %d channel values differ from the reference (max %d)" % (
                path, differ, int(np.abs(got.astype(int) - expected).max()))

            jpeg = testlib.load_image(os.path.join(jpg_dir, row["id"] + ".jpg"))
            error = np.abs(jpeg.astype(int) - expected.astype(int))
            mean, p99 = float(error.mean()), float(np.percentile(error, 99))
            all_errors.append(error.ravel())
            worst_mean, worst_p99 = max(worst_mean, mean), max(worst_p99, p99)
            assert mean <= JPEG_MEAN_MAX and p99 <= JPEG_P99_MAX, (
                "%s: JPEG error mean %.3f p99 %.1f (limits %.1f, %d)"
                % (path, mean, p99, JPEG_MEAN_MAX, JPEG_P99_MAX))
            slices += 1

    assert slices >= 120, "only %d real slices converted" % slices
    pooled = np.concatenate(all_errors)
    print("exact (ppm) on %d real slices, %d meta fields equal pydicom" % (slices,
                                                                          fields_checked))
    print("JPEG q95 4:4:4 vs exact: pooled mean %.3f, p99 %.1f, max %d; worst slice mean "
          "%.3f, worst slice p99 %.1f" % (pooled.mean(), np.percentile(pooled, 99),
                                          pooled.max(), worst_mean, worst_p99))
    assert pooled.mean() <= POOLED_MEAN_MAX and np.percentile(pooled, 99) <= POOLED_P99_MAX

    # The app's JPEGs are BGR-ordered OpenCV output of the same windowing.
    app_dir = os.path.join(DATA, "rsna_ich_app_series", "jpg_windowed_ref")
    app_means = []
    for name in sorted(os.listdir(app_dir)):
        dcm = os.path.join(DATA, "rsna_ich_app_series", "dcm", name[:-4] + ".dcm")
        if not os.path.exists(dcm):
            continue
        ours = testlib.load_image(os.path.join(WORK, "ppm0", name[:-4] + ".ppm"))
        theirs = testlib.load_image(os.path.join(app_dir, name))[:, :, ::-1]
        app_means.append(float(np.abs(ours.astype(int) - theirs.astype(int)).mean()))
    assert app_means, "no app reference JPEGs found in %s" % app_dir
    print("vs the app's own windowed JPEGs (%d): mean abs difference %.3f (max slice %.3f)"
          % (len(app_means), np.mean(app_means), max(app_means)))
    assert max(app_means) <= APP_MEAN_MAX

    # --bgr writes the app's byte order: its files and ours then agree as decoded, with no
    # channel reversal; without it, R holds the brain window in ours and the bone one in its.
    bgr_dir = os.path.join(WORK, "bgr")
    _, attrs = convert(["rsna_ich_app_series/dcm"], bgr_dir, ["--bgr", "--subsample420"])
    assert attrs["channel_order"] == "bgr", attrs["channel_order"]
    bgr_means, plain_means = [], []
    for name in sorted(os.listdir(app_dir)):
        theirs = testlib.load_image(os.path.join(app_dir, name)).astype(int)
        ours_bgr = testlib.load_image(os.path.join(bgr_dir, name)).astype(int)
        ours_plain = testlib.load_image(os.path.join(jpg_dir_main, name)).astype(int)
        bgr_means.append(float(np.abs(ours_bgr - theirs).mean()))
        plain_means.append(float(np.abs(ours_plain - theirs).mean()))
    print("app's JPEGs as decoded vs ours: --bgr --subsample420 mean abs difference %.3f (max "
          "slice %.3f, %d of %d identical); default order %.3f (min slice %.3f)"
          % (np.mean(bgr_means), max(bgr_means), bgr_means.count(0.0), len(bgr_means),
             np.mean(plain_means), min(plain_means)))
    assert max(bgr_means) <= BGR_MEAN_MAX and np.mean(plain_means) > APP_MEAN_MAX


if __name__ == "__main__":
    main()
