#!/bin/sh
# make demo: phantom head-CT series through the stages of the pipeline that exist so far,
# then a summary. OUT (default demo-out) holds everything; rerunning redoes only what is missing.
set -eu
cd "$(dirname "$0")/.."
OUT=${OUT:-demo-out}
BIN=${BIN:-bin}
THREADS=${THREADS:-2}

start=$(date +%s)
make --no-print-directory -f pipeline/pipeline.mk CONFIG=pipeline/configs/demo.mk \
    OUT="$OUT" BIN="$BIN" THREADS="$THREADS"

# One value of an HDF5 attribute (h5dump from hdf5-tools).
attr() {
    h5dump -a "$2" "$1" 2>/dev/null | sed -n 's/^ *(0): //p' | head -n 1
}
meta=$OUT/jpeg/meta.h5
folds=$OUT/folds.h5
seqs=$OUT/sequences.h5
echo
echo "demo summary ($(($(date +%s) - start)) s)"
echo "  DICOM slices    $OUT/phantom: $(find "$OUT/phantom" -name '*.dcm' | wc -l) files"
echo "  dcm2jpg         $(attr "$meta" converted) converted, $(attr "$meta" existing) kept," \
    "$(attr "$meta" skipped) skipped, $(attr "$meta" failed) failed -> $OUT/jpeg/"
echo "  mkfolds         $(attr "$folds" labelled_slices) labelled slices in" \
    "$(attr "$folds" folds) folds, $(attr "$folds" test_slices) test slices -> $folds"
echo "  seqbuild        $(attr "$seqs" series_count) series," \
    "$(attr "$seqs" slice_count) slices -> $seqs"
echo "  not in the DAG  cnntrain, embdump, lstmtrain (stages 3-5; embdump and lstmtrain are not"
echo "                  written yet): no predictions yet for bagavg to bag"
