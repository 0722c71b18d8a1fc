#!/bin/sh
# mkphantom -> dcm2jpg -> mkfolds -> seqbuild on synthetic series: every slice converted, the
# test split (test_labels.csv) is exactly fold -1, the training labels land unchanged in
# folds.h5, and every series comes out of seqbuild in InstanceNumber order (mkphantom numbers
# slices along the normal), tilted series included. Needs no shared data.
set -eu
: "${BIN:?}" "${WORK:?}" "${PY:=/usr/bin/python3}"
fail() {
    echo "FAIL: $*"
    exit 1
}
for p in mkphantom dcm2jpg mkfolds seqbuild; do
    [ -x "$BIN/$p" ] || fail "$BIN/$p is missing"
done

ph=$WORK/phantom
"$BIN/mkphantom" -q -o "$ph" --series 8 --slices 6-10 --size 64 --seed 21 \
    --test-fraction 0.25 -j 2 || fail "mkphantom: exit $?"
"$BIN/dcm2jpg" -q -j 2 -o "$WORK/jpg" "$ph" || fail "dcm2jpg: exit $?"
"$BIN/mkfolds" -q -j 2 -o "$WORK/folds.h5" "$ph/labels.csv" "$WORK/jpg/meta.h5" ||
    fail "mkfolds: exit $?"
"$BIN/seqbuild" -q -j 2 -o "$WORK/sequences.h5" "$WORK/jpg/meta.h5" || fail "seqbuild: exit $?"

"$PY" - "$ph" "$WORK" "$(dirname "$0")/py" <<'EOF' || fail "checks above"
import glob, os, sys, warnings
warnings.filterwarnings("ignore")
import pydicom

ph, work = sys.argv[1:3]
sys.path.insert(0, sys.argv[3])
import testlib
from testlib import check

train = testlib.label_lists(os.path.join(ph, "labels.csv"))
test = testlib.label_lists(os.path.join(ph, "test_labels.csv"))
files = glob.glob(os.path.join(ph, "*", "*.dcm"))
status = [r["status"] for r in testlib.read_meta(os.path.join(work, "jpg", "meta.h5"))[0]]
check(len(files) == len(status) and set(status) == {"ok"},
      "dcm2jpg: %d of %d phantom slices ok" % (status.count("ok"), len(files)))

folds = testlib.read_folds(os.path.join(work, "folds.h5"))
fold, label = folds["fold"], folds["label"]
check({i for i, v in fold.items() if v == -1} == set(test),
      "fold -1 is exactly the %d slices of test_labels.csv" % len(test))
check(all(label[i] == v for i, v in train.items()) and all(fold[i] >= 0 for i in train),
      "the %d training slices keep their labels and get folds 0-4" % len(train))
check(all(label[i] == [-1] * 6 for i in test), "test slices have no labels (-1)")

number = {}
for path in files:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    number[ds.SOPInstanceUID] = (ds.SeriesInstanceUID, int(ds.InstanceNumber))
sequences, _ = testlib.read_sequences(os.path.join(work, "sequences.h5"))
bad = []
for s in sequences.values():
    got = [number[i] for i in s["ids"]]
    if got != sorted(got) or len({uid for uid, _ in got}) != 1:
        bad.append(got[:3])
tilted = sum(1 for s in sequences.values() if abs(s["normal"][2]) < 0.999)
check(len(sequences) == 8 and not bad and not any(s["flags"] for s in sequences.values()),
      "seqbuild: 8 series in InstanceNumber order (%d tilted), no flags %s" % (tilted, bad[:1]))
testlib.finish("phantom pipeline")
EOF
echo "phantom pipeline: all checks passed"
