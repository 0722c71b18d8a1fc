# The full reference method on the challenge data (reference-method.md).
# Expected layout under RSNA: stage_2_train/*.dcm, stage_2_test/*.dcm, stage_2_train.csv.
RSNA ?= /data/rsna
DICOM = $(RSNA)/stage_2_train $(RSNA)/stage_2_test
LABELS = $(RSNA)/stage_2_train.csv
FOLDS = 5
FOLD_METHOD = original
JPEG_QUALITY = 95
FIX_WRAP = 1
