#!/bin/sh
# dcm2jpg against the original Python recipe (bench/dcm2jpg_ref.py: pydicom read, numpy
# float64 windowing, OpenCV JPEG quality 95), side by side on the same slices in one run.
#
# The slices: the real head-CT slices of the shared data (RSNA series, RSNA singles, GE head
# CT), each copied COPIES times into a scratch folder with a new SOPInstanceUID of the same
# length (so that one run sees many distinct slices). Each side converts all of them into a
# fresh folder, REPS times alternating, and the best time of each counts (the machine is
# shared). dcm2jpg's time includes its start-up and meta.h5; the Python side's excludes the
# interpreter and imports. The one-core figures are pinned to one CPU. Inputs and outputs
# live on a RAM file system when there is one (/dev/shm): on a disk that has just seen many
# files deleted (tests, earlier runs), creating inodes alone can take a third of the time.
#
#   sh bench/dcm2jpg_bench.sh   (COPIES=4 REPS=3 BIN=bin DATA=../shared/data/dicom)
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$root/bin}
DATA=${DATA:-$root/../shared/data/dicom}
PY=${PY:-/usr/bin/python3}
COPIES=${COPIES:-4}
REPS=${REPS:-3}

if [ ! -d "$DATA" ]; then
    echo "dcm2jpg bench: $DATA is absent, nothing to measure"
    exit 0
fi
scratch=${TMPDIR:-/tmp}
if [ -d /dev/shm ] && [ -w /dev/shm ]; then scratch=/dev/shm; fi
work=$(mktemp -d "$scratch/dcm2jpg-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
load_before=$(cut -d" " -f1 /proc/loadavg)

ls "$DATA"/rsna_ich_app_series/dcm/*.dcm "$DATA"/rsna_george091/*.dcm \
    "$DATA"/dcm_qa_ct/GE/*.dcm >"$work/originals.txt"
# Copies with the UID bytes replaced in place (meta header and data set alike).
"$PY" - "$work/originals.txt" "$work/slices" "$COPIES" >"$work/slices.txt" <<'EOF'
import os, sys, warnings
import pydicom
warnings.filterwarnings("ignore")
originals, out, copies = open(sys.argv[1]).read().split(), sys.argv[2], int(sys.argv[3])
os.makedirs(out)
for i, path in enumerate(originals):
    data = open(path, "rb").read()
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID).encode()
    for c in range(copies):
        new = ("9%03d%04d" % (c, i)).rjust(len(uid), "1").encode()
        dst = os.path.join(out, "%d_%d.dcm" % (c, i))
        open(dst, "wb").write(data.replace(uid, new))
        print(dst)
EOF
nslices=$(wc -l <"$work/slices.txt")

now() { date +%s.%N; }
one_core() {
    if command -v taskset >/dev/null 2>&1; then taskset -c 0 "$@"; else "$@"; fi
}
seconds_of() {
    start=$(now)
    "$@"
    echo "$(now) - $start" | bc -l
}

# How much faster two busy processes get through work than one on this machine: the
# ceiling for -j 2 (virtual CPUs may share a physical core with other machines).
burn='awk "BEGIN { for (i = 0; i < 2e7; i++) s += i }"'
one_s=$(seconds_of sh -c "$burn")
two_s=$(seconds_of sh -c "$burn & $burn; wait")
ceiling=$(echo "2 * $one_s / $two_s" | bc -l)

# The smaller of a best-so-far ("" at first) and a new time.
best() {
    if [ -z "$1" ] || [ "$(echo "$2 < $1" | bc -l)" = 1 ]; then echo "$2"; else echo "$1"; fi
}

export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
ref_s="" ours1_s="" ours2_s=""
rep=0
while [ $rep -lt "$REPS" ]; do
    rm -rf "$work/ref" "$work/ours1" "$work/ours2"
    ref_out=$(one_core "$PY" "$root/bench/dcm2jpg_ref.py" "$work/ref" 1 \
        $(cat "$work/slices.txt"))
    ref_s=$(best "$ref_s" "${ref_out% *}")
    t=$(seconds_of one_core "$BIN/dcm2jpg" -q -j 1 -o "$work/ours1" @"$work/slices.txt")
    ours1_s=$(best "$ours1_s" "$t")
    t=$(seconds_of "$BIN/dcm2jpg" -q -j 2 -o "$work/ours2" @"$work/slices.txt")
    ours2_s=$(best "$ours2_s" "$t")
    [ "$(ls "$work/ours2" | grep -c '\.jpg$')" = "$nslices" ] || {
        echo "dcm2jpg bench: not every slice was converted"
        exit 1
    }
    rep=$((rep + 1))
done

rate() { echo "$nslices / $1" | bc -l; }
ref_rate=$(rate "$ref_s")
ours1_rate=$(rate "$ours1_s")
ours2_rate=$(rate "$ours2_s")
printf 'dcm2jpg bench: %d slices (512x512 CT, JPEG q95), best of %d, %s\n' "$nslices" "$REPS" \
    "$(uname -m), $(getconf _NPROCESSORS_ONLN) CPUs, load before $load_before"
printf '  python recipe, 1 core:  %7.1f slices/s  (4:2:0, OpenCV default)\n' "$ref_rate"
printf '  dcm2jpg -j 1, 1 core:   %7.1f slices/s  (%.2fx the recipe; 4:4:4)\n' "$ours1_rate" \
    "$(echo "$ours1_rate / $ref_rate" | bc -l)"
printf '  dcm2jpg -j 2:           %7.1f slices/s  (%.2fx -j 1; this machine: %.2fx at most)\n' \
    "$ours2_rate" "$(echo "$ours2_rate / $ours1_rate" | bc -l)" "$ceiling"
