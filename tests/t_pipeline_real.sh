#!/bin/sh
# The whole DAG on the real challenge slices in $DATA: the 24-slice series of
# rsna_ich_app_series and the 66 slices of rsna_george091 (both pixel encodings the challenge
# used: 12-bit unsigned implicit and 16-bit signed explicit; singleton series and one 2-slice
# series), labels from rsna_labels. A tiny model, one fold, one classifier epoch, a small LSTM:
# no score is expected from 78 labelled slices; the test checks that every program ran on the
# real data and that the submission covers each unlabelled slice exactly once, six rows each,
# probabilities in range.
set -eu
: "${BIN:?}" "${WORK:?}" "${PY:=/usr/bin/python3}"
fail() {
    echo "FAIL: $*"
    exit 1
}
labels=${DATA:-}/rsna_labels/stage_2_train_format_labels.csv
if [ -z "${DATA:-}" ] || [ ! -f "$labels" ] || [ ! -d "$DATA/rsna_george091" ]; then
    echo "skip: the real challenge slices (\$DATA/rsna_george091, rsna_ich_app_series," \
        "rsna_labels) are not here"
    exit 77
fi
for p in dcm2jpg mkfolds seqbuild cnntrain embdump lstmtrain bagavg; do
    [ -x "$BIN/$p" ] || fail "$BIN/$p is missing"
done

out=$WORK/real
start=$(date +%s)
make --no-print-directory -f pipeline/pipeline.mk OUT="$out" BIN="$BIN" \
    DICOM="$DATA/rsna_ich_app_series/dcm $DATA/rsna_george091" LABELS="$labels" \
    FOLDS_TRAINED=0 CNN_ARCH=tiny CNN_INIT= CNN_EPOCHS=1 CNN_SIZE=64 CNN_BATCH=8 \
    CNN_MICRO_BATCH=8 CNN_LR=1e-3 LSTM_HIDDEN=16 LSTM_EPOCHS=2 LSTM_BAG=2 LSTM_LR=1e-3 \
    >"$WORK/real.log" 2>&1 || {
    tail -n 30 "$WORK/real.log"
    fail "the pipeline on the real slices failed"
}
echo "ok    the DAG ran on the real slices in $(($(date +%s) - start)) s"

"$PY" - "$out" "$labels" "$DATA" <<'PYEOF'
import csv
import os
import sys

import h5py
import numpy as np

out, labels_path, data = sys.argv[1:4]
SUBTYPES = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural",
            "any"]
failures = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)


with open(labels_path) as f:
    labelled = {row[0].rsplit("_", 1)[0] for row in csv.reader(f) if row[0] != "ID"}
index = list(csv.DictReader(open(os.path.join(data, "rsna_labels", "rsna_index.csv"))))
all_ids = {r["SOPInstanceUID"] for r in index}
test_ids = sorted(all_ids - labelled)

# The submission: every unlabelled slice exactly once, six rows, probabilities in range.
with open(os.path.join(out, "submission.csv")) as f:
    rows = list(csv.reader(f))
keys = [r[0] for r in rows[1:]]
want = ["%s_%s" % (s, t) for s in test_ids for t in SUBTYPES]
values = np.array([float(r[1]) for r in rows[1:]])
check(rows[0] == ["ID", "Label"] and keys == want,
      "submission: header ID,Label, %d rows = %d unlabelled slices x 6, each once, in order"
      % (len(keys), len(test_ids)))
check(bool(np.all((values >= 1e-5) & (values <= 1 - 1e-5))),
      "submission: probabilities within [1e-5, 1 - 1e-5] (min %.3g, max %.3g)"
      % (values.min(), values.max()))

# Both encodings went through dcm2jpg; every slice has an image.
with h5py.File(os.path.join(out, "jpeg", "meta.h5"), "r") as f:
    names = list(f.keys())
    bits = f["bits_stored"][()] if "bits_stored" in f else None
    status = f["status"].asstr()[()] if "status" in f else None
if bits is not None:
    check(set(np.unique(bits)) >= {12, 16}, "meta.h5: slices of 12 and 16 bits stored (%s)"
          % sorted(set(int(b) for b in bits)))
jpgs = {n[:-4] for n in os.listdir(os.path.join(out, "jpeg")) if n.endswith(".jpg")}
check(jpgs == all_ids, "dcm2jpg: %d images, one per real slice (%d)" % (len(jpgs), len(all_ids)))

# seqbuild: the 24-slice series and the singletons.
with h5py.File(os.path.join(out, "sequences.h5"), "r") as f:
    lengths = f["series/length"][()]
check(24 in lengths and 1 in lengths and 2 in lengths,
      "sequences.h5: %d series, lengths include 24, 2 and 1 (%s)"
      % (len(lengths), sorted(set(int(n) for n in lengths))))

# embdump covered every slice across its three splits, lstmtrain predicted val and test.
emb_ids = set()
for split in ("train", "val", "test"):
    with h5py.File(os.path.join(out, "emb", "f0", "e1", split + ".h5"), "r") as f:
        emb_ids |= set(f["id"].asstr()[()])
check(emb_ids == all_ids, "embdump: train + val + test embeddings cover all %d slices"
      % len(all_ids))
with h5py.File(os.path.join(out, "lstm", "f0", "e1", "test.h5"), "r") as f:
    lstm_test = sorted(f["id"].asstr()[()])
check(lstm_test == test_ids, "lstmtrain: test predictions for the %d unlabelled slices"
      % len(test_ids))
sys.exit(1 if failures else 0)
PYEOF
