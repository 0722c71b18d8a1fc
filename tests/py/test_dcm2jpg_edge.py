"""dcm2jpg on edge cases: fixtures made here from mkphantom slices with DCMTK's tools
(dcmconv, dcmodify, dcmcjpeg, dcmcjpls, dcmcrle, img2dcm) or by editing bytes, and, when the
shared data is there, its odd files.

Every case is converted exactly like pydicom + numpy would (tests/ref/dicom_ref.py), or
rejected with its documented status, message and exit code; nothing crashes, no partial
output is left. The fixtures need no shared data; the groups on its files say when they are
skipped.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np

import testlib
from testlib import BIN, DATA, WORK, passed

sys.path.insert(0, testlib.REF_DIR)
import dicom_ref  # noqa: E402

warnings.filterwarnings("ignore", message="Invalid value for VR UI")
TOOLS = ("dcmconv", "dcmodify", "dcmcjpeg", "dcmcjpls", "dcmcrle", "img2dcm")
MISSING_TOOLS = [tool for tool in TOOLS if shutil.which(tool) is None]

# Fixtures are made from mkphantom slices of SIZE x SIZE pixels.
SIZE = 128
UID_ROOT = "1.2.826.0.1.3680043.10.1001."
FX = os.path.join(WORK, "fixtures")
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_2000 = "1.2.840.10008.1.2.4.90"
# Pixel bytes kept by the short-pixel-data fixture.
SHORT_KEEP = 10000


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


def make_bases():
    """Two base slices: s16 as mkphantom writes it (signed 16-bit, intercept -1024, explicit
    little endian) and u12, 12-bit unsigned with intercept -1024 in implicit little endian, as
    many RSNA slices are. u12 is the top slice: mostly air around a small head, so that the
    12-bit wrap quirk changes most of its pixels."""
    import pydicom
    root = testlib.phantom(os.path.join(WORK, "phantom"), "--series", 1, "--slices", 3,
                           "--size", SIZE, "--seed", 5, "--prevalence", 1)
    slices = sorted(glob.glob(os.path.join(root, "*", "*.dcm")),
                    key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True)
                                      .InstanceNumber))
    os.makedirs(FX)
    u12 = os.path.join(FX, "u12.dcm")
    shutil.copyfile(slices[-1], u12)
    # The same stored values (HU + 1024) within 12 bits: -2000 outside the field of view
    # becomes 0, i.e. -1024 HU.
    edit_pixels(u12, lambda w: np.clip(w, 0, 4095))
    sh("dcmodify", "-nb", "-m", "(0028,0103)=0", "-m", "(0028,0101)=12", "-m",
       "(0028,0102)=11", u12)
    os.rename(u12, u12 + ".in")
    sh("dcmconv", "+ti", u12 + ".in", u12)
    os.remove(u12 + ".in")
    return slices[1], u12


def make_good_fixtures(s16, u12):
    """Files dcm2jpg must convert; name -> path."""
    fx = {}
    fx["s16"] = fixture("s16.dcm", s16, "1")
    fx["big_endian"] = fixture("be.dcm", s16, "2", "dcmconv", "+tb")
    fx["deflated"] = fixture("deflated.dcm", s16, "3", "dcmconv", "+td")
    fx["implicit"] = fixture("implicit.dcm", s16, "4", "dcmconv", "+ti")
    fx["jpeg_lossless"] = fixture("jll.dcm", s16, "5", "dcmcjpeg", "+e1")
    fx["jpeg_ls"] = fixture("jls.dcm", s16, "6", "dcmcjpls")
    fx["rle"] = fixture("rle.dcm", s16, "7", "dcmcrle")
    fx["jpeg_baseline"] = fixture("jbase.dcm", s16, "8", "dcmcjpeg", "+eb")
    fx["jpeg_extended12"] = fixture("jext.dcm", u12, "9", "dcmcjpeg", "+ee")
    fx["jpeg_ls_near"] = fixture("jlsnear.dcm", u12, "10", "dcmcjpls", "+en")

    fx["monochrome1"] = fixture("mono1.dcm", s16, "11")
    sh("dcmodify", "-nb", "-m", "(0028,0004)=MONOCHROME1", fx["monochrome1"])
    fx["no_rescale"] = fixture("norescale.dcm", s16, "12")
    sh("dcmodify", "-nb", "-ea", "(0028,1052)", "-ea", "(0028,1053)", fx["no_rescale"])

    # No preamble and no .dcm extension: the meta header starts at byte 0.
    with_uid = fixture("tmp.dcm", s16, "13")
    fx["no_preamble"] = os.path.join(FX, "no_preamble")
    with open(with_uid, "rb") as f, open(fx["no_preamble"], "wb") as out:
        out.write(f.read()[132:])
    os.remove(with_uid)
    # No meta header at all (a bare data set), explicit little endian.
    fx["no_meta"] = fixture("no_meta.raw", s16, "14", "dcmconv", "-F", "+te")

    # Signed 12-bit data whose words are not sign-extended (0x0FFF, not 0xFFFF, for -1):
    # native, pydicom keeps the raw words; its JPEG decoder sign-extends, JPEG-LS does not.
    fx["signed12_raw"] = fixture("s12raw.dcm", s16, "15")
    edit_pixels(fx["signed12_raw"], lambda w: w & 0x0FFF)
    sh("dcmodify", "-nb", "-m", "(0028,0101)=12", "-m", "(0028,0102)=11", fx["signed12_raw"])
    fx["signed12_raw_jpeg"] = fixture("s12raw_jll.dcm", fx["signed12_raw"], "16", "dcmcjpeg")
    fx["signed12_raw_jpegls"] = fixture("s12raw_jls.dcm", fx["signed12_raw"], "17", "dcmcjpls")

    # The 12-bit wrap quirk: stored = (v - 1024) mod 4096 with intercept 0, so that the fix
    # (v + 1000 mod 4096, intercept -1000) gives back v - 1024 HU except below -1000 HU.
    fx["wrap12"] = fixture("wrap12.dcm", u12, "18", "dcmconv", "+te")
    edit_pixels(fx["wrap12"], lambda w: (w + 3072) % 4096)
    sh("dcmodify", "-nb", "-m", "(0028,1052)=0", fx["wrap12"])
    # MR: 12-bit unsigned with intercept 0, which would get the wrap fix if it were CT.
    fx["mr12"] = fixture("mr12.dcm", u12, "19")
    sh("dcmodify", "-nb", "-m", "(0008,0060)=MR", "-m", "(0028,1052)=0", fx["mr12"])
    fx["odd8"] = make_odd8(s16)
    return fx


def make_odd8(s16):
    """8-bit unsigned, 13 x 15 pixels: 195 bytes of pixel data stored with the one padding
    byte the standard asks for (196), which is no length mismatch."""
    import pydicom
    ds = pydicom.dcmread(s16)
    hu = ds.pixel_array[50:63, 40:55].astype(np.int64) - 1024
    stored = np.clip(hu + 60, 0, 255).astype(np.uint8)
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.RescaleIntercept, ds.RescaleSlope = -60, 1
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OB"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID_ROOT + "40"
    path = os.path.join(FX, "odd8.dcm")
    ds.save_as(path)
    stored_length = len(pydicom.dcmread(path)["PixelData"].value)
    assert stored_length == 196, "odd8 fixture: pixel data %d bytes" % stored_length
    return path


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
    testlib.run_expect(
        "dcm2jpg", ["-j", "2", "--any-modality", "--format", "ppm", "-o", out]
        + list(fx.values()), expect=0)
    rows, _ = testlib.read_meta(os.path.join(out, "meta.h5"))
    by_path = {r["path"]: r for r in rows}
    assert len(rows) == len(fx), "%d rows for %d fixtures" % (len(rows), len(fx))
    images = {}
    for name, path in fx.items():
        row = by_path[path]
        assert row["status"] == "ok", "%s: %s (%s)" % (name, row["status"], row["message"])
        got = testlib.load_image(os.path.join(out, row["id"] + ".ppm"))
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
    passed("good fixtures: %d converted, each equal to pydicom+numpy: %s"
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
    passed("lossless encodings, MONOCHROME1, no preamble and no meta header change no pixel; "
           "missing rescale tags mean 1 and 0; the wrap fix on 12-bit CT only")
    return images


def check_wrap(fx, good_images, u12):
    """The fix recovers the clean slice; --no-fix-wrap reproduces the original method."""
    out = os.path.join(WORK, "nofix")
    testlib.run_expect("dcm2jpg", ["--no-fix-wrap", "--format", "ppm", "-o", out, fx["wrap12"]],
                       expect=0)
    rows, attrs = testlib.read_meta(os.path.join(out, "meta.h5"))
    assert attrs["fix_wrap"] == 0 and rows[0]["wrap_fixed"] == 0
    unfixed = testlib.load_image(os.path.join(out, rows[0]["id"] + ".ppm"))
    want = dicom_ref.window(dicom_ref.read(fx["wrap12"]), fix_wrap=False)
    assert np.array_equal(unfixed, want), "--no-fix-wrap differs from the plain reference"

    clean_out = os.path.join(WORK, "clean")
    testlib.run_expect("dcm2jpg", ["--format", "ppm", "-o", clean_out, u12], expect=0)
    clean_rows, _ = testlib.read_meta(os.path.join(clean_out, "meta.h5"))
    clean = testlib.load_image(os.path.join(clean_out, clean_rows[0]["id"] + ".ppm"))
    # Where the clean slice is at or above -1000 HU the fix must give it back exactly (below,
    # the known fix itself wraps: air outside the field of view turns bright).
    stored, slope, intercept = dicom_ref.stored_values(dicom_ref.read(u12))
    valid = stored * slope + intercept >= -1000
    fixed_same = float(np.mean(np.all(good_images["wrap12"] == clean, axis=-1)[valid]))
    unfixed_same = float(np.mean(np.all(unfixed == clean, axis=-1)[valid]))
    assert fixed_same == 1.0 and unfixed_same < 0.5, (fixed_same, unfixed_same)
    passed("12-bit wrap: on the %.1f%% of pixels >= -1000 HU the fixed output equals the clean "
           "slice on %.2f%%, the unfixed one on %.2f%%"
           % (100 * valid.mean(), 100 * fixed_same, 100 * unfixed_same))


def check_resize_and_jpeg_options(fx):
    import cv2
    # OpenCV's fixed-point INTER_LINEAR is reproduced exactly (common/imgproc.c), for an
    # exact 2x reduction and for a ratio that is not a whole number.
    exact = dicom_ref.window(dicom_ref.read(fx["s16"]))
    for side in (SIZE // 2, SIZE * 3 // 4 + 1):
        out = os.path.join(WORK, "small%d" % side)
        testlib.run_expect("dcm2jpg", ["--size", side, "--format", "ppm", "-o", out,
                                       fx["s16"]], expect=0)
        rows, attrs = testlib.read_meta(os.path.join(out, "meta.h5"))
        assert attrs["size"] == side
        small = testlib.load_image(os.path.join(out, rows[0]["id"] + ".ppm"))
        want = cv2.resize(exact, (side, side), interpolation=cv2.INTER_LINEAR)
        diff = np.abs(small.astype(int) - want.astype(int))
        assert small.shape == (side, side, 3) and diff.max() == 0, (small.shape, diff.max())
        passed("--size %d vs OpenCV INTER_LINEAR: max difference %d" % (side, diff.max()))

    sizes, errors = {}, {}
    for label, extra in (("q95", []), ("q80", ["--quality", "80"]),
                         ("420", ["--subsample420"])):
        o = os.path.join(WORK, "jpeg-" + label)
        testlib.run_expect("dcm2jpg", extra + ["-o", o, fx["s16"]], expect=0)
        _, a = testlib.read_meta(os.path.join(o, "meta.h5"))
        path = os.path.join(o, rows[0]["id"] + ".jpg")
        sizes[label] = os.path.getsize(path)
        errors[label] = float(np.abs(testlib.load_image(path).astype(int) - exact).mean())
        if label == "420":
            assert a["subsampling"] == "4:2:0"
        if label == "q80":
            assert a["quality"] == 80
    assert sizes["q80"] < sizes["q95"] and errors["420"] > errors["q95"], (sizes, errors)
    passed("JPEG bytes %s, mean error %s"
           % (sizes, {k: round(v, 3) for k, v in errors.items()}))

    # --bgr: the original method's byte order (OpenCV wrote array channel 0, brain, as B).
    out = os.path.join(WORK, "bgr")
    testlib.run_expect("dcm2jpg", ["--bgr", "--format", "ppm", "-o", out, fx["s16"]], expect=0)
    rows, attrs = testlib.read_meta(os.path.join(out, "meta.h5"))
    got = testlib.load_image(os.path.join(out, rows[0]["id"] + ".ppm"))
    assert attrs["channel_order"] == "bgr" and np.array_equal(got, exact[:, :, ::-1])
    assert not np.array_equal(got, exact)
    passed("--bgr: R holds the bone window and B the brain window, exactly; channel_order "
           "'bgr' in meta.h5")

    # --size is limited to 8192: larger ones are a usage error, not an allocation failure.
    expect_nothing("size-over-limit", ["--size", "8193", fx["s16"]], 2, r"out of range")
    check_out_of_memory(fx["s16"])


def binary_has_asan():
    with open(os.path.join(BIN, "dcm2jpg"), "rb") as f:
        return b"__asan_init" in f.read()


def run_limited(limit, args):
    """dcm2jpg args with its address space limited to limit bytes."""
    import resource

    def set_limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return subprocess.run([os.path.join(BIN, "dcm2jpg")] + [str(a) for a in args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          preexec_fn=set_limit)


def check_out_of_memory(s16):
    """An image too big for the memory there is fails that file (exit 3 here, with no other
    slice), instead of ending the program as an internal error (exit 1)."""
    if binary_has_asan():
        testlib.skip("an allocation failure under a memory limit", "AddressSanitizer build")
        return
    out = os.path.join(WORK, "oom")
    small = ["-q", "--force", "--size", 64, "-o", out, s16]
    # The least address space a small conversion needs (within 4 MiB), plus 32 MiB: far less
    # than the 192 MiB of one 8192 x 8192 RGB image.
    low, high = 16 << 20, 4 << 30
    if run_limited(high, small).returncode != 0:
        testlib.skip("an allocation failure under a memory limit", "fails even with 4 GiB")
        return
    while high - low > 4 << 20:
        mid = (low + high) // 2
        if run_limited(mid, small).returncode == 0:
            high = mid
        else:
            low = mid
    limit = high + (32 << 20)
    proc = run_limited(limit, ["--size", 8192, "-o", out + "-big", s16])
    assert proc.returncode == 3, "exit %d\n%s" % (proc.returncode, proc.stderr[-2000:])
    assert re.search(r"out of memory for a 8192x8192 image", proc.stderr), proc.stderr
    assert run_limited(limit, small).returncode == 0
    passed("--size 8192 under a %d MiB address-space limit (a 64-pixel conversion needs %d "
           "MiB): 'out of memory for a 8192x8192 image' for the file, exit 3; --size 8193 is "
           "a usage error" % (limit >> 20, high >> 20))


def make_bad_fixtures(s16):
    """Files dcm2jpg must reject: name -> path."""
    bad = {}
    source = fixture("src_bad.dcm", s16, "20")
    data = open(source, "rb").read()
    bad["truncated_file"] = os.path.join(FX, "truncated.dcm")
    with open(bad["truncated_file"], "wb") as f:
        f.write(data[:len(data) - SIZE * SIZE])
    # Short pixel data with a consistent length field: a valid file, too few pixels.
    bad["short_pixels"] = os.path.join(FX, "short_pixels.dcm")
    start = pixel_value_offset(data, SIZE * SIZE)
    with open(bad["short_pixels"], "wb") as f:
        f.write(data[:start - 4] + SHORT_KEEP.to_bytes(4, "little")
                + data[start:start + SHORT_KEEP])
    # Cut just before the pixel data element: a complete-looking CT header, no image.
    bad["cut_before_pixels"] = os.path.join(FX, "cut_before_pixels.dcm")
    with open(bad["cut_before_pixels"], "wb") as f:
        f.write(data[:start - 12])
    bad["truncated_header"] = os.path.join(FX, "truncated_header.dcm")
    with open(bad["truncated_header"], "wb") as f:
        f.write(data[:600])
    rng = np.random.default_rng(7)
    bad["garbage"] = os.path.join(FX, "garbage.dcm")
    with open(bad["garbage"], "wb") as f:
        f.write(bytes(128) + b"DICM" + rng.integers(0, 256, 20000, dtype=np.uint8).tobytes())
    os.remove(source)
    # JPEG 2000, which DCMTK cannot decode: a JPEG lossless file whose meta header names
    # JPEG 2000 instead (the two UIDs have the same length).
    bad["jpeg2000"] = fixture("j2k.dcm", s16, "22", "dcmcjpeg", "+e1")
    data = open(bad["jpeg2000"], "rb").read()
    assert data.count(JPEG_LOSSLESS_SV1.encode()) == 1, "transfer syntax UID not found once"
    with open(bad["jpeg2000"], "wb") as f:
        f.write(data.replace(JPEG_LOSSLESS_SV1.encode(), JPEG_2000.encode()))
    bad["duplicate_a"] = fixture("dup_a.dcm", s16, "21")
    bad["duplicate_b"] = fixture("dup_b.dcm", s16, "21", "dcmconv", "+ti")

    # Rows x Columns a quarter of the pixel data: decoded, it would be a scrambled image.
    bad["rows_mismatch"] = fixture("rows_mismatch.dcm", s16, "23")
    sh("dcmodify", "-nb", "-m", "(0028,0010)=%d" % (SIZE // 2), "-m",
       "(0028,0011)=%d" % (SIZE // 2), bad["rows_mismatch"])
    # Rescale values that are no finite number, or a slope of 0. dcmodify writes a valid
    # placeholder of the same length, replaced byte for byte.
    for k, (name, tag, bad_text) in enumerate(RESCALE_CASES):
        path = fixture(name + ".dcm", s16, str(24 + k))
        placeholder = b"-9.87654" if tag == "(0028,1052)" else b"9.876543"
        sh("dcmodify", "-nb", "-m", "%s=%s" % (tag, placeholder.decode()), path)
        raw = open(path, "rb").read()
        assert raw.count(placeholder) == 1, name
        with open(path, "wb") as f:
            f.write(raw.replace(placeholder, bad_text.ljust(len(placeholder)).encode()))
        bad[name] = path
    return bad


# name, tag, value: each a per-file error naming the tag and the value.
RESCALE_CASES = [
    ("slope_text", "(0028,1053)", "abc"),
    ("slope_nan", "(0028,1053)", "NaN"),
    ("slope_overflow", "(0028,1053)", "1e400"),
    ("slope_zero", "(0028,1053)", "0"),
    ("intercept_text", "(0028,1052)", "-1024abc"),
]


def make_skipped_fixtures(s16):
    """Valid DICOM that dcm2jpg reports and skips: name -> path."""
    from PIL import Image
    skipped = {}
    # Colour: a secondary capture made by img2dcm from an RGB JPEG.
    rgb = os.path.join(FX, "colour.jpg")
    gradient = np.linspace(0, 255, 48 * 64 * 3).astype(np.uint8).reshape(48, 64, 3)
    Image.fromarray(gradient).save(rgb, quality=90)
    skipped["colour"] = os.path.join(FX, "colour.dcm")
    sh("img2dcm", rgb, skipped["colour"])
    # Two frames: the pixel data twice, its length field and NumberOfFrames to match.
    skipped["multi_frame"] = fixture("frames.dcm", s16, "30")
    data = open(skipped["multi_frame"], "rb").read()
    start = pixel_value_offset(data, SIZE * SIZE)
    with open(skipped["multi_frame"], "wb") as f:
        f.write(data[:start - 4] + (4 * SIZE * SIZE).to_bytes(4, "little") + data[start:]
                + data[start:])
    sh("dcmodify", "-nb", "-i", "(0028,0008)=2", skipped["multi_frame"])
    # No pixel data and no image: a structured report (SR class, no Rows/Columns).
    skipped["sr"] = fixture("sr.dcm", s16, "31")
    sh("dcmodify", "-nb", "-ea", "(7fe0,0010)", "-ea", "(0028,0010)", "-ea", "(0028,0011)",
       "-m", "(0008,0016)=1.2.840.10008.5.1.4.1.1.88.11", "-m", "(0008,0060)=SR",
       skipped["sr"])
    # A scout image.
    skipped["localizer"] = fixture("localizer.dcm", s16, "32")
    sh("dcmodify", "-nb", "-m", "(0008,0008)=ORIGINAL\\PRIMARY\\LOCALIZER",
       skipped["localizer"])
    return skipped


def make_not_dicom():
    """A folder of files that are no DICOM at all (an image, a table, a text)."""
    from PIL import Image
    folder = os.path.join(FX, "not_dicom")
    os.makedirs(folder)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(os.path.join(folder, "image.png"))
    with open(os.path.join(folder, "table.csv"), "w") as f:
        f.write("ID,Label\nID_0_any,0\n")
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write("# Notes\n" + "text " * 100 + "\n")
    return folder


SKIPPED = {
    "colour": r"colour image",
    "multi_frame": r"multi-frame image \(2 frames\)",
    "sr": r"no image: Modality SR",
    "localizer": r"localizer \(scout\) image: ImageType ORIGINAL\\PRIMARY\\LOCALIZER",
}
ERRORS = {
    "cut_before_pixels": r"no pixel data: truncated\?",
    "rows_mismatch": r"pixel data is %d bytes, but Rows %d x Columns %d .* = %d bytes"
                     % (2 * SIZE * SIZE, SIZE // 2, SIZE // 2, SIZE * SIZE // 2),
    "slope_text": r"invalid RescaleSlope 'abc'",
    "slope_nan": r"invalid RescaleSlope 'NaN'",
    "slope_overflow": r"invalid RescaleSlope '1e400'",
    "slope_zero": r"invalid RescaleSlope 0",
    "intercept_text": r"invalid RescaleIntercept '-1024abc'",
    "truncated_file": r"truncated",
    "short_pixels": r"pixel data is %d bytes, but Rows %d x Columns %d .* = %d bytes"
                    % (SHORT_KEEP, SIZE, SIZE, 2 * SIZE * SIZE),
    "truncated_header": r"truncated|corrupt",
    "garbage": r"truncated or corrupt|corrupt",
    "jpeg2000": r"transfer syntax 1\.2\.840\.10008\.1\.2\.4\.90 \(JPEG 2000",
}
# The shared data's own odd files (path, message), added to the same run when present.
REAL_SKIPPED = {
    "real_colour": ("dcm_qa_ct/Philips/S21570/S4010/I50", r"colour image"),
    "real_multi_frame": ("pydicom_data/emri_small.dcm", r"multi-frame image \(10 frames\)"),
    "real_sr": ("pydicom_testfiles/test-SR.dcm", r"no image: Modality SR"),
    "real_sr_cornerstone": ("cornerstone_testimages/no-pixel-data.dcm", r"no image"),
    "real_rtplan": ("pydicom_testfiles/rtplan.dcm", r"no image: Modality RTPLAN"),
}
REAL_ERRORS = {
    "real_jpeg2000": ("dcm_qa_ts/9.dcm", ERRORS["jpeg2000"]),
}
REAL_NOT_DICOM = "head_ct_kitamura"


def count_files(folder):
    return len([p for p in glob.glob(folder + "/**", recursive=True)
                if os.path.isfile(p) and not os.path.basename(p).startswith(".")])


def check_bad(good, bad, skipped):
    """Errors, skipped files and non-DICOM files in one run with a good slice: each reported
    with its message, the summary counts them, only the good slice is written."""
    skipped = dict(skipped)
    errors = dict(ERRORS)
    not_dicom_dirs = [make_not_dicom()]
    expect_skipped = dict(SKIPPED)
    if testlib.have_data("the shared data's colour, multi-frame, SR, RT plan, JPEG 2000 and "
                         "PNG files in the bad-input run"):
        for name, (path, pattern) in REAL_SKIPPED.items():
            skipped[name] = os.path.join(DATA, path)
            expect_skipped[name] = pattern
        for name, (path, pattern) in REAL_ERRORS.items():
            bad = dict(bad, **{name: os.path.join(DATA, path)})
            errors[name] = pattern
        not_dicom_dirs.append(os.path.join(DATA, REAL_NOT_DICOM))
    not_dicom = sum(count_files(d) for d in not_dicom_dirs)
    out = os.path.join(WORK, "bad")
    os.makedirs(out)
    args = ["-j", "2", "--any-modality", "-o", out, good] + not_dicom_dirs
    args += list(bad.values()) + list(skipped.values())
    code, err = testlib.run_expect("dcm2jpg", args, expect=4)
    rows, attrs = testlib.read_meta(os.path.join(out, "meta.h5"))
    by_path = {r["path"]: r for r in rows}
    assert len(rows) == 1 + len(bad) + len(skipped), "%d rows" % len(rows)

    for name, path in skipped.items():
        row = by_path[path]
        assert row["status"] == "skipped" and re.search(expect_skipped[name], row["message"]), (
            "%s: %s %s" % (name, row["status"], row["message"]))
    for name, pattern in errors.items():
        row = by_path[bad[name]]
        assert row["status"] == "error" and re.search(pattern, row["message"]), (
            "%s: %s %s" % (name, row["status"], row["message"]))
        assert bad[name] in err, "%s is not named on stderr" % name
    # The independent reader refuses the same rescale values: an exception, or a value that
    # is not finite or a slope of 0.
    for name, _, _ in RESCALE_CASES:
        try:
            slope, intercept = dicom_ref.rescale(dicom_ref.read(bad[name]))
            refused = not (np.isfinite(slope) and np.isfinite(intercept) and slope != 0)
        except (ValueError, TypeError, OverflowError):
            refused = True
        assert refused, "%s: pydicom reads a usable slope and intercept" % name
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

    # Only the good slice's image, the table and the settings record; no temporary files.
    files = sorted(os.listdir(out))
    assert files == sorted([by_path[good]["id"] + ".jpg", "meta.h5", ".dcm2jpg-settings"]), files
    passed("bad inputs: %d errors and %d skipped with their messages (%s), %d non-DICOM files "
           "ignored, exit 4, no stray output"
           % (len(bad), len(skipped), ", ".join(sorted(errors) + sorted(skipped)), not_dicom))
    return not_dicom_dirs[0]


def expect_nothing(name, args, code, pattern):
    """dcm2jpg exits with code, says pattern on stderr and leaves its output folder empty."""
    out = os.path.join(WORK, "exit-" + name)
    _, err = testlib.run_expect("dcm2jpg", ["-o", out] + args, expect=code)
    assert re.search(pattern, err), "%s: stderr lacks %r:\n%s" % (name, pattern, err)
    left = os.listdir(out) if os.path.isdir(out) else []
    assert left == [], "%s left %s" % (name, left)
    return err


def check_duplicates(name, copies):
    """Files sharing one SOPInstanceUID: all rejected, each naming another."""
    err = expect_nothing(name, copies, 3, r"nothing converted")
    for path in copies:
        line = [l for l in err.splitlines() if l.startswith("dcm2jpg: error: " + path + ":")]
        assert line and "duplicate SOPInstanceUID" in line[0], "%s not reported" % path
        assert any(other in line[0] for other in copies if other != path), line[0]


def check_exit_codes(good, bad, mr, not_dicom_dir):
    text = os.path.join(not_dicom_dir, "README.md")
    png = os.path.join(not_dicom_dir, "image.png")
    expect_nothing("all-failed", [bad["truncated_file"]], 3, r"nothing converted")
    expect_nothing("explicit-text", [good, text], 3, re.escape(text) + r": not a DICOM")
    expect_nothing("explicit-png", [png, good], 3, re.escape(png) + r": not a DICOM")
    expect_nothing("missing", [good, os.path.join(WORK, "absent.dcm")], 3, r"no such file")
    expect_nothing("only-mr", [mr], 3, r"not CT")
    expect_nothing("only-png", [not_dicom_dir], 3, r"nothing converted")
    expect_nothing("bad-quality", ["--quality", "0", good], 2, r"out of range")
    expect_nothing("unknown-option", ["--frobnicate", good], 2, r"unknown option")
    # One SOPInstanceUID in three encodings: all rejected.
    third = fixture("dup_c.dcm", bad["duplicate_a"], "21", "dcmcrle")
    check_duplicates("duplicates", [bad["duplicate_a"], bad["duplicate_b"], third])

    code, err = testlib.run_expect("dcm2jpg", [good], expect=2)
    assert "-o OUTDIR is required" in err

    proc = testlib.run_plain("dcm2jpg", "--help")
    assert proc.returncode == 0, proc.returncode
    for word in ("--out", "--list", "--threads", "--quality", "--subsample420", "--size",
                 "--format", "--force", "--no-fix-wrap", "--any-modality", "(default: 95",
                 "--bgr", "--keep-localizers", "0..8192", "Exit codes", "  4  "):
        assert word in proc.stdout, "--help lacks %r" % word
    passed("exit codes: 3 for failed/missing/non-DICOM/non-CT-only input (nothing written), "
           "2 for usage errors, --help complete")


def check_localizer_kept(path):
    """--keep-localizers converts a scout like any slice; meta.h5 has its ImageType."""
    out = os.path.join(WORK, "localizer")
    testlib.run_expect("dcm2jpg", ["--keep-localizers", "--format", "ppm", "-o", out, path],
                       expect=0)
    rows, attrs = testlib.read_meta(os.path.join(out, "meta.h5"))
    row = rows[0]
    assert row["status"] == "ok" and row["image_type"] == "ORIGINAL\\PRIMARY\\LOCALIZER", row
    assert attrs["keep_localizers"] == 1
    got = testlib.load_image(os.path.join(out, row["id"] + ".ppm"))
    assert np.array_equal(got, dicom_ref.window(dicom_ref.read(path)))
    passed("localizer: skipped by default, converted (equal to pydicom+numpy) with "
           "--keep-localizers; image_type %r in meta.h5" % row["image_type"])


def unprivileged_prefix():
    """A command prefix under which file permissions hold: as root, setpriv drops every
    capability (the uid stays 0); others need none. None when that is not possible."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    prefix = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]
    probe = os.path.join(WORK, "probe")
    open(probe, "w").close()
    os.chmod(probe, 0)
    proc = subprocess.run(prefix + ["cat", probe], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    os.chmod(probe, 0o600)
    return prefix if proc.returncode != 0 else None


def run_prefixed(prefix, args):
    cmd = (prefix or []) + [os.path.join(BIN, "dcm2jpg")] + [str(a) for a in args]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check_walk(s16, prefix):
    """In a folder walk, what cannot be read is an error row (exit 4), never lost in silence:
    an empty or cut *.dcm, a broken link, an unreadable subfolder. A file reached twice (the
    folder given twice, a file in it given again, a link to a file, a link loop) is converted
    once, with no duplicate-ID error."""
    top = os.path.join(FX, "walk")
    series = os.path.join(top, "series")
    locked = os.path.join(top, "locked")
    os.makedirs(series)
    os.makedirs(locked)
    first = fixture("walk/series/a.dcm", s16, "50")
    fixture("walk/series/b.dcm", s16, "51")
    fixture("walk/locked/c.dcm", s16, "52")
    open(os.path.join(series, "empty.dcm"), "wb").close()
    with open(first, "rb") as f, open(os.path.join(series, "cut.dcm"), "wb") as out:
        out.write(f.read()[:100])
    with open(os.path.join(series, "notes.txt"), "w") as f:
        f.write("not an image\n")
    os.symlink(os.path.join(FX, "absent.dcm"), os.path.join(series, "gone.dcm"))
    os.symlink("a.dcm", os.path.join(series, "link_to_a.dcm"))
    os.symlink("..", os.path.join(series, "loop"))
    errors = {os.path.join(series, "empty.dcm"): r"empty file \(0 bytes\)",
              os.path.join(series, "cut.dcm"): r"named like a DICOM file, but not a DICOM",
              os.path.join(series, "gone.dcm"): r"broken symbolic link"}
    if prefix is not None:
        os.chmod(locked, 0)
        errors[locked] = r"cannot read folder: Permission denied"
    else:
        testlib.skip("an unreadable subfolder in a walk", "cannot drop root's capabilities")

    out = os.path.join(WORK, "walk-out")
    proc = run_prefixed(prefix, ["-j", 2, "-o", out, top, top, first])
    os.chmod(locked, 0o755)
    assert proc.returncode == 4, "exit %d\n%s" % (proc.returncode, proc.stderr[-3000:])
    rows, attrs = testlib.read_meta(os.path.join(out, "meta.h5"))
    by_path = {r["path"]: r for r in rows}
    ok = sorted(os.path.basename(r["path"]) for r in rows if r["status"] == "ok")
    want_ok = ["a.dcm", "b.dcm"] + ([] if prefix is not None else ["c.dcm"])
    assert ok == want_ok, ok
    assert not any("duplicate" in r["message"] for r in rows), [r["message"] for r in rows]
    for path, pattern in errors.items():
        row = by_path.get(path)
        assert row and row["status"] == "error" and re.search(pattern, row["message"]), (
            path, row)
        assert path in proc.stderr, "%s not named on stderr" % path
    assert len(rows) == len(want_ok) + len(errors) and attrs["non_dicom"] == 1, (
        len(rows), attrs["non_dicom"])
    assert "link loop" in proc.stderr and "converted once" in proc.stderr, proc.stderr
    passed("folder walk: %d errors (%s), 1 non-DICOM file ignored, exit 4; the folder given "
           "twice, a file given again, a link to it and a link loop: each slice converted "
           "once" % (len(errors), ", ".join(os.path.basename(p) for p in errors)))


def check_unreadable_explicit(s16, prefix):
    """A file named explicitly that cannot be opened: the system's reason, not 'not DICOM'."""
    if prefix is None:
        testlib.skip("an unreadable file named explicitly", "cannot drop root's capabilities")
        return
    path = fixture("unreadable.dcm", s16, "53")
    os.chmod(path, 0)
    out = os.path.join(WORK, "unreadable-out")
    proc = run_prefixed(prefix, ["-o", out, path])
    os.chmod(path, 0o644)
    assert proc.returncode == 3, "exit %d\n%s" % (proc.returncode, proc.stderr)
    want = re.escape(path) + r": cannot read: Permission denied"
    assert re.search(want, proc.stderr), proc.stderr
    assert not os.path.exists(out) or os.listdir(out) == []
    passed("an unreadable file named explicitly: '%s', exit 3, nothing written"
           % proc.stderr.strip().splitlines()[-1].split(": ", 2)[-1])


def check_exit_codes_real():
    """The same on the shared data's own files."""
    readme = os.path.join(DATA, "README.md")
    png = sorted(glob.glob(os.path.join(DATA, REAL_NOT_DICOM, "*.png")))[0]
    good = os.path.join(DATA, "rsna_ich_app_series/dcm/ID_032d5f85e.dcm")
    expect_nothing("real-explicit-text", [good, readme], 3, re.escape(readme) + r": not a DICOM")
    expect_nothing("real-explicit-png", [png, good], 3, re.escape(png) + r": not a DICOM")
    expect_nothing("real-only-mr", [os.path.join(DATA, "dcm_qa_ts/1.dcm")], 3, r"not CT")
    expect_nothing("real-localizer", [os.path.join(DATA, "dcm_qa_ct/Philips/S21610/S1000/I10")],
                   3, r"localizer \(scout\) image")
    expect_nothing("real-only-png", [os.path.join(DATA, REAL_NOT_DICOM)], 3,
                   r"nothing converted")
    # The four encodings of cornerstone's CTImage share one SOPInstanceUID: all rejected.
    copies = sorted(glob.glob(os.path.join(DATA, "cornerstone_testimages", "CTImage.dcm*")))
    check_duplicates("real-duplicates", copies)
    passed("exit codes on the shared data's README, PNGs, an MR slice, a localizer and "
           "cornerstone's four copies of one slice: 3, nothing written")


# Covered slice by slice in test_dcm2jpg_real.py.
REAL_SLICES = ("rsna_ich_app_series/", "rsna_george091/", "dcm_qa_ct/GE/")
NO_DECODER = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")


def is_localizer(path):
    """ImageType holds LOCALIZER, as pydicom reads it."""
    import pydicom
    image_type = pydicom.dcmread(path, stop_before_pixels=True, force=True).get("ImageType")
    values = [image_type] if isinstance(image_type, str) else list(image_type or [])
    return "LOCALIZER" in [str(v).strip() for v in values]


def expected_outcome(item):
    """Status and message pattern for one INVENTORY.tsv row, from the inventory's columns
    (and ImageType, which it lacks)."""
    if item["pixel_decodes"] == "no_pixel_data":
        return "skipped", r"no image"
    if int(item["SamplesPerPixel"] or 1) != 1:
        return "skipped", r"colour image"
    if int(item["NumberOfFrames"] or 1) > 1:
        return "skipped", r"multi-frame"
    if is_localizer(os.path.join(DATA, item["path"])):
        return "skipped", r"localizer \(scout\) image"
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
        testlib.run_expect("dcm2jpg", ["--any-modality", "--format", "ppm", "-o", out] + paths,
                           expect=code)
        if code == 3:
            continue
        rows, _ = testlib.read_meta(os.path.join(out, "meta.h5"))
        for row in rows:
            status, pattern = expected[row["path"]]
            name = os.path.relpath(row["path"], DATA)
            assert row["status"] == status and re.search(pattern, row["message"]), (
                "%s: %s (%s), expected %s" % (name, row["status"], row["message"], status))
            tally[status] = tally.get(status, 0) + 1
            if status != "ok":
                continue
            got = testlib.load_image(os.path.join(out, row["id"] + ".ppm"))
            want = dicom_ref.window(dicom_ref.read(row["path"]))
            assert np.array_equal(got, want), name + ": differs from pydicom+numpy"
            for field, value in dicom_ref.header(row["path"]).items():
                if isinstance(value, (list, float)):
                    same = np.array_equal(np.asarray(row[field], float), np.asarray(value),
                                          equal_nan=True)
                else:
                    same = row[field] == value
                assert same, "%s: meta %s = %r, pydicom %r" % (name, field, row[field], value)
    localizers = [p for run in runs for p in run.values() if "localizer" in
                  expected_outcome(p)[1]]
    assert len(localizers) == 1, "expected the Philips scout among the files: %s" % localizers
    passed("inventory: %d other DICOM files in %d runs: %s (a localizer among the skipped); "
           "every converted one equals pydicom+numpy" % (len(items), len(runs), tally))


def check_mutations(fx):
    """Seeded random byte changes and cuts: each file converts or fails cleanly (exit 0 or 3),
    never a crash, never a stray file. Run under make test-asan this is a small fuzz test."""
    sources = [fx[k] for k in ("s16", "implicit", "jpeg_lossless", "rle", "deflated",
                               "jpeg_ls")]
    rng = np.random.default_rng(11)
    out = os.path.join(WORK, "mutations")
    outcomes = {}
    for k in range(48):
        data = bytearray(open(sources[k % len(sources)], "rb").read())
        # Mostly in the header (where parsing decisions are), sometimes anywhere.
        limit = min(len(data), 2000) if k % 3 else len(data)
        for _ in range(int(rng.integers(1, 8))):
            data[int(rng.integers(0, limit))] = int(rng.integers(0, 256))
        if k % 5 == 0:
            data = data[:int(rng.integers(100, len(data)))]
        path = os.path.join(FX, "mutated%02d.dcm" % k)
        with open(path, "wb") as f:
            f.write(bytes(data))
        proc = subprocess.run([os.path.join(BIN, "dcm2jpg"), "-q", "--force", "--any-modality",
                               "-o", out, path], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        assert proc.returncode in (0, 3), "%s: exit %d\n%s" % (path, proc.returncode,
                                                                proc.stderr[-2000:])
        outcomes[proc.returncode] = outcomes.get(proc.returncode, 0) + 1
        stray = [n for n in os.listdir(out) if ".tmp-" in n] if os.path.isdir(out) else []
        assert not stray, "%s left %s" % (path, stray)
    passed("mutated files: %d converted, %d rejected (exit 3), no crash, no stray file"
           % (outcomes.get(0, 0), outcomes.get(3, 0)))


def main():
    if MISSING_TOOLS:
        testlib.skip("the checks on fixtures", "DCMTK tools %s are not installed: make deps"
                     % ", ".join(MISSING_TOOLS))
    else:
        s16, u12 = make_bases()
        fx = make_good_fixtures(s16, u12)
        images = check_good(fx)
        check_wrap(fx, images, u12)
        check_resize_and_jpeg_options(fx)
        bad = make_bad_fixtures(s16)
        skipped = make_skipped_fixtures(s16)
        not_dicom_dir = check_bad(fx["s16"], bad, skipped)
        check_localizer_kept(skipped["localizer"])
        check_exit_codes(fx["s16"], bad, fx["mr12"], not_dicom_dir)
        prefix = unprivileged_prefix()
        check_walk(s16, prefix)
        check_unreadable_explicit(s16, prefix)
        check_mutations(fx)
    if testlib.have_data("exit codes on the shared data's README, PNGs, MR and cornerstone "
                         "files"):
        check_exit_codes_real()
    if testlib.have_data("every other DICOM file of the shared data (INVENTORY.tsv)",
                         "INVENTORY.tsv"):
        check_inventory()
    testlib.finish("dcm2jpg edge-case")


if __name__ == "__main__":
    main()
