"""dcm2jpg's output folder across runs: images are reused only when the settings that shaped
them are known to equal the run's; meta.h5 describes the whole folder (rows of earlier runs
are kept); a second run into the folder waits for the first. An output folder that is an
input folder, or one that the input's walk would reach, is refused; an empty .dcm gives the
same message whether it is named or found in a walk.

On two mkphantom series (no shared data needed), and on the reviewer's commands with the
shared data's challenge series when it is there.
"""
import fcntl
import glob
import os
import subprocess
import time

import h5py

import testlib
from testlib import BIN, DATA, WORK, passed

SETTINGS_FILE = ".dcm2jpg-settings"


def dcm2jpg(*args, expect=0):
    """Run bin/dcm2jpg (messages kept); returns stderr. Fails on another exit code."""
    _, err = testlib.run_expect("dcm2jpg", ["-j", 2] + list(args), expect=expect)
    return err


def summary(err):
    """(converted, existing) from the closing summary line."""
    line = [l for l in err.splitlines() if "converted " in l and "existing " in l][-1]
    words = line.replace(",", "").split()
    return int(words[words.index("converted") + 1]), int(words[words.index("existing") + 1])


def table(out):
    rows, attrs = testlib.read_meta(os.path.join(out, "meta.h5"))
    return rows, attrs


def statuses(rows):
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts


def image_side(out, ident, ext="jpg"):
    return testlib.load_image(os.path.join(out, "%s.%s" % (ident, ext))).shape[0]


def images(out, ext="jpg"):
    return sorted(os.path.basename(p)[:-len(ext) - 1]
                  for p in glob.glob(os.path.join(out, "*." + ext)))


def check_settings_change(series):
    """--size 32 --quality 20, then the defaults: every image is made again, at 64 px."""
    out = os.path.join(WORK, "settings")
    err = dcm2jpg("--size", 32, "--quality", 20, "-o", out, series)
    rows, _ = table(out)
    assert summary(err) == (24, 0) and image_side(out, rows[0]["id"]) == 32

    err = dcm2jpg("-o", out, series)
    rows, attrs = table(out)
    assert summary(err) == (24, 0), summary(err)
    notice = [l for l in err.splitlines() if "made again" in l]
    assert len(notice) == 1 and "size 32 -> 0" in notice[0] and "quality 20 -> 95" in notice[0]
    assert {image_side(out, r["id"]) for r in rows} == {64}
    assert (attrs["size"], attrs["quality"], statuses(rows)) == (0, 95, {"ok": 24})

    err = dcm2jpg("-o", out, series)
    assert summary(err) == (0, 24) and "made again" not in err, summary(err)
    # The record and the table agree with what the images are.
    with open(os.path.join(out, SETTINGS_FILE)) as f:
        record = dict(line.split() for line in f if not line.startswith("#"))
    assert record["size"] == "0" and record["quality"] == "95", record
    passed("settings change (--size 32 --quality 20, then defaults): 24 images made again at "
           "64 px, one notice (%s); a third run reuses all 24" % notice[0].split("again: ")[-1])


def check_unfinished_runs(series):
    """Images without a table: trusted when the settings record written before the first
    image matches, made again when there is no record or it contradicts meta.h5."""
    out = os.path.join(WORK, "unfinished")
    dcm2jpg("-o", out, series)
    meta = os.path.join(out, "meta.h5")
    record = os.path.join(out, SETTINGS_FILE)

    # A first run killed after its images: no meta.h5, the record is there.
    os.remove(meta)
    err = dcm2jpg("-o", out, series)
    assert summary(err) == (0, 24) and "made again" not in err, summary(err)

    # Images of unknown origin: no meta.h5, no record.
    os.remove(meta)
    os.remove(record)
    err = dcm2jpg("-o", out, series)
    assert summary(err) == (24, 0), summary(err)
    assert "no meta.h5 nor %s" % SETTINGS_FILE in err, err

    # A run with --size 32 killed part way: the record says 32, meta.h5 still says 0.
    text = open(record).read().replace("size 0\n", "size 32\n")
    with open(record, "w") as f:
        f.write(text)
    err = dcm2jpg("-o", out, series)
    assert summary(err) == (24, 0) and "did not finish" in err, err
    passed("unfinished runs: images reused when the settings record matches (no meta.h5); "
           "made again with no record, or when the record contradicts meta.h5")


def check_merged_table(series_a, series_b, broken):
    """Two runs into one folder give one table: the first run's rows are kept."""
    out = os.path.join(WORK, "merged")
    dcm2jpg("-o", out, series_a, broken, expect=4)
    err = dcm2jpg("-o", out, series_b)
    rows, attrs = table(out)
    assert statuses(rows) == {"exists": 24, "ok": 24, "error": 1}, statuses(rows)
    assert attrs["kept_rows"] == 25 and "keeps 25 row(s)" in err
    usable = sorted(r["id"] for r in rows if r["status"] in ("ok", "exists"))
    assert usable == images(out) and len(usable) == 48
    first_rows = [r for r in rows if r["path"].startswith(series_a)]
    assert len(first_rows) == 24 and all(r["status"] == "exists" for r in first_rows)
    assert all(r["message"].startswith("kept from an earlier run") for r in first_rows)

    # The first series again: its rows are replaced, the second's kept.
    err = dcm2jpg("-o", out, series_a)
    rows, _ = table(out)
    assert statuses(rows) == {"exists": 48, "error": 1} and summary(err) == (0, 24)

    # A kept row whose image is gone is dropped.
    victim = [r["id"] for r in rows if r["path"].startswith(series_b)][0]
    os.remove(os.path.join(out, victim + ".jpg"))
    dcm2jpg("-o", out, series_a)
    rows, _ = table(out)
    assert victim not in [r["id"] for r in rows] and len(rows) == 48

    # Other settings: this run's images are made again; the rest can no longer be described
    # by the table's settings and are marked stale (not usable).
    err = dcm2jpg("--size", 32, "-o", out, series_a)
    rows, attrs = table(out)
    assert statuses(rows) == {"ok": 24, "stale": 23, "error": 1}, statuses(rows)
    assert attrs["stale"] == 23 and "'stale'" in err
    passed("merged table: two runs (24 + 24 slices, 1 error) give 49 rows, 48 usable = the 48 "
           "images; a re-run of the first keeps the second's rows; a row whose image is gone "
           "is dropped; after a settings change the other run's 23 rows are 'stale'")

    # --only-inputs (the pipeline's way): the table lists this run's inputs alone; the images
    # of the other run stay on disk, unlisted, and this run's existing images are reused.
    err = dcm2jpg("--size", 32, "--only-inputs", "-o", out, series_a)
    rows, attrs = table(out)
    assert statuses(rows) == {"exists": 24}, statuses(rows)
    assert all(r["path"].startswith(series_a) for r in rows) and attrs["kept_rows"] == 0
    assert "--only-inputs" in err and len(images(out)) == 47, (err, len(images(out)))
    passed("--only-inputs: 24 rows, all of this run's input (existing images reused); the other "
           "run's 23 images stay on disk, unlisted")


def check_waits_for_other_run(series):
    """A second run into a folder in use waits for the first (here: a lock held by the test)."""
    out = os.path.join(WORK, "locked")
    os.makedirs(out)
    log = os.path.join(WORK, "locked.log")
    holder = os.open(out, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    with open(log, "w") as err:
        proc = subprocess.Popen([os.path.join(BIN, "dcm2jpg"), "-o", out, series],
                                stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + 10
    while "waiting" not in open(log).read() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    waited = proc.poll() is None and not os.path.exists(os.path.join(out, "meta.h5"))
    fcntl.flock(holder, fcntl.LOCK_UN)
    os.close(holder)
    code = proc.wait(timeout=60)
    text = open(log).read()
    assert waited and "waiting for it to finish" in text, text
    assert code == 0 and summary(text) == (24, 0), text
    passed("a run into a folder another run holds waits ('%s'), then completes"
           % [l for l in text.splitlines() if "waiting" in l][0].split(": ", 1)[-1])


def tree(folder):
    """Every path below folder, hidden ones too."""
    return sorted(os.path.join(d, n) for d, dirs, files in os.walk(folder) for n in dirs + files)


def check_output_in_input():
    """-o naming an input folder (any spelling: trailing /., a link, a path through ..) or a
    folder its walk would reach (existing or not) is a usage error: exit 2, the message names
    both, nothing is written. A hidden folder inside the input is not walked: accepted."""
    root = testlib.phantom(os.path.join(WORK, "self"), "--series", 1, "--slices", 3,
                           "--size", 32, "--seed", 4)
    os.makedirs(os.path.join(root, "existing"))
    link = os.path.join(WORK, "self-link")
    os.symlink(root, link)
    before = tree(root)
    same = {"the folder itself": (root, root), "with a trailing /.": (root + "/.", root),
            "through a link": (link, root), "given through the link": (root, link)}
    inside = {"an existing subfolder": (os.path.join(root, "existing"), root),
              "a new nested folder": (os.path.join(root, "new", "deeper"), root),
              "a path through ..": (os.path.join(root, "existing", "..", "x"), root),
              "a subfolder of the link": (os.path.join(link, "out"), root)}
    said = []
    for cases, words in ((same, "is the input folder"), (inside, "is inside the input folder")):
        for name, (out, given) in cases.items():
            _, err = testlib.run_expect("dcm2jpg", ["-o", out, given], expect=2)
            line = "-o %s %s %s" % (out, words, given)
            assert line in err, "%s: %r not in %s" % (name, line, err)
            assert tree(root) == before, "%s: wrote %s" % (name, set(tree(root)) - set(before))
            said.append(name)
    hidden = os.path.join(root, ".images")
    dcm2jpg("-o", hidden, root)
    assert os.path.isfile(os.path.join(hidden, "meta.h5"))
    passed("-o equal to the input folder (%s) or below it (%s): exit 2 naming both, nothing "
           "written; a hidden folder inside it (not walked): converted"
           % (", ".join(same), ", ".join(inside)))

    # A link inside the input to the output's parent: the walk reaches the output folder
    # through it on the next run; its files are left out, and said to be.
    outside = os.path.join(WORK, "self-outside")
    os.makedirs(outside)
    os.symlink(outside, os.path.join(root, "to-outside"))
    out = os.path.join(outside, "out")
    first = dcm2jpg("-o", out, root)
    second = dcm2jpg("-o", out, root)
    rows, _ = table(out)
    assert summary(second) == (0, summary(first)[0]), second
    assert "reached through a link into the output folder" in second, second
    assert not any(out in r["path"] for r in rows), [r["path"] for r in rows]
    passed("a link in the input that leads to the output folder: a second run leaves the "
           "%d files found there out and says so; meta.h5 has no row of them"
           % len(tree(out)))


def check_empty_file_message():
    """An empty .dcm named on the command line and the same file found in a walk: the same
    words ("empty file (0 bytes)"), exit 3 and 4."""
    folder = os.path.join(WORK, "empty-dcm")
    os.makedirs(folder)
    empty = os.path.join(folder, "empty.dcm")
    open(empty, "wb").close()
    good = testlib.phantom(os.path.join(WORK, "empty-dcm-good"), "--series", 1, "--slices", 2,
                           "--size", 32, "--seed", 5)
    named_out, walked_out = os.path.join(WORK, "empty-named"), os.path.join(WORK, "empty-walk")
    named = dcm2jpg("-o", named_out, good, empty, expect=3)
    walked = dcm2jpg("-o", walked_out, good, folder, expect=4)

    def said(err):
        lines = [l for l in err.splitlines() if l.startswith("dcm2jpg: error: %s: " % empty)]
        assert len(lines) == 1, err
        return lines[0].split(empty + ": ", 1)[1]
    rows, _ = table(walked_out)
    message = [r["message"] for r in rows if r["path"] == empty]
    assert said(named) == said(walked) == "empty file (0 bytes)" and message == [said(walked)], (
        said(named), said(walked), message)
    assert not os.path.exists(named_out) or os.listdir(named_out) == []
    passed("an empty .dcm: %r named (exit 3, nothing written) and in a walk (exit 4, its row "
           "says the same)" % said(named))


def check_real_repro():
    """The reviewer's commands on the shared data."""
    app = os.path.join(DATA, "rsna_ich_app_series", "dcm")
    george = os.path.join(DATA, "rsna_george091")
    out = os.path.join(WORK, "real-settings")
    dcm2jpg("--size", 64, "--quality", 20, "-o", out, app)
    err = dcm2jpg("-o", out, app)
    rows, _ = table(out)
    assert summary(err) == (24, 0) and {image_side(out, r["id"]) for r in rows} == {512}

    out = os.path.join(WORK, "real-merged")
    dcm2jpg("-o", out, george)
    dcm2jpg("-o", out, os.path.join(DATA, "rsna_ich_app_series"))
    rows, _ = table(out)
    usable = sorted(r["id"] for r in rows if r["status"] in ("ok", "exists"))
    assert len(usable) == 90 and usable == images(out), (len(usable), len(images(out)))
    passed("shared data: --size 64 --quality 20 then defaults remakes the 24 app slices at 512 "
           "px; rsna_george091 then rsna_ich_app_series into one folder: 90 JPEGs, 90 usable "
           "rows")


def main():
    root = testlib.phantom(os.path.join(WORK, "phantom"), "--series", 2, "--slices", 24,
                           "--size", 64, "--seed", 12)
    series_a, series_b = sorted(p for p in glob.glob(os.path.join(root, "*"))
                                if os.path.isdir(p))
    broken = os.path.join(WORK, "broken")
    os.makedirs(broken)
    open(os.path.join(broken, "empty.dcm"), "wb").close()

    check_settings_change(series_a)
    check_unfinished_runs(series_a)
    check_merged_table(series_a, series_b, broken)
    check_waits_for_other_run(series_b)
    check_output_in_input()
    check_empty_file_message()
    if testlib.have_data("the reviewer's re-run and two-run commands on the challenge series",
                         "rsna_ich_app_series"):
        check_real_repro()
    with h5py.File(os.path.join(WORK, "merged", "meta.h5"), "r") as f:
        assert "image_type" in f
    testlib.finish("dcm2jpg output-folder")


if __name__ == "__main__":
    main()
