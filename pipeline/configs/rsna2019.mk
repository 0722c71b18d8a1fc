# The full reference method on the challenge data (reference-method.md): folds 0 1 2 of 5,
# ResNeXt-101 32x8d from the WSL weights at 480 px for 5 epochs, TTA orig+hflip+transpose,
# 2 x BiLSTM 2048 for 12 epochs per (fold, classifier epoch), 15 runs bagged.
# Expected layout under RSNA: stage_2_train/*.dcm, stage_2_test/*.dcm, stage_2_train.csv.
RSNA ?= /data/rsna
DICOM = $(RSNA)/stage_2_train $(RSNA)/stage_2_test
LABELS = $(RSNA)/stage_2_train.csv
FOLDS = 5
FOLD_METHOD = original
JPEG_QUALITY = 95
FIX_WRAP = 1

FOLDS_TRAINED = 0 1 2
CNN_ARCH = resnext101_32x8d
# pth2h5 of ig_resnext101_32x8-c38310e5.pth (README, "Pretrained weights").
CNN_INIT = weights/wsl.h5
CNN_EPOCHS = 5
CNN_SIZE = 480
CNN_LR = 2e-5
CNN_BATCH = 64
CNN_MICRO_BATCH = 16
# A mid-epoch checkpoint every 500 steps (about 32,000 images): an epoch takes hours.
CNN_SAVE_EVERY = 500

EMB_TTA = orig,hflip,transpose
LSTM_HIDDEN = 2048
LSTM_EPOCHS = 12
LSTM_BAG = 12
LSTM_LR = 1e-5
LSTM_LR_DECAY = 0.95
LSTM_BATCH = 4

# LSF (lsf/submit, lsf/README.md): the original's layout, a classifier on the four GPUs of one
# host (mpirun -np 4, a rank per GPU); one GPU per embedding and sequence-model job, as many
# side by side as the cluster grants. A run limit that stops cnntrain is no loss: the next
# lsf/submit resumes it from its last checkpoint (CNN_SAVE_EVERY). For a container, set
# LSF_IMAGE and LSF_APP (an application profile that runs $LSB_CONTAINER_IMAGE).
LSF_cnntrain_GPUS = 4
LSF_cnntrain_SLOTS = 4
LSF_cnntrain_PTILE = 4
LSF_cnntrain_MEM = 256GB
LSF_cnntrain_WALL = 72:00
LSF_embdump_WALL = 24:00
LSF_lstmtrain_WALL = 8:00
