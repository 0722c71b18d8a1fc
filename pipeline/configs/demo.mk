# The demo: phantom head-CT series generated on the spot, a tiny classifier at 96 pixels and a
# small sequence model, one fold. Sized to finish in a few minutes on 2 cores.
PHANTOM = 1
PHANTOM_ARGS = --series 160 --slices 20-28 --size 128 --seed 1 --prevalence 0.9 \
    --test-fraction 0.25
THREADS = 2

FOLDS_TRAINED = 0
CNN_ARCH = tiny
CNN_INIT =
CNN_EPOCHS = 5
CNN_SIZE = 96
CNN_LR = 1e-3
CNN_BATCH = 16
CNN_MICRO_BATCH = 8
CNN_SAVE_EVERY = 50

LSTM_HIDDEN = 64
LSTM_EPOCHS = 12
LSTM_BAG = 6
LSTM_LR = 3e-3
LSTM_BATCH = 1
LSTM_LR_DECAY = 0.95

# LSF (lsf/submit, lsf/README.md): every demo job fits a CPU host, 2 GB and half an hour.
LSF_DEMO_STAGES = mkphantom dcm2jpg mkfolds seqbuild cnntrain embdump lstmtrain bagavg
$(foreach s,$(LSF_DEMO_STAGES),$(eval LSF_$(s)_GPUS = 0)$(eval LSF_$(s)_MEM = 2GB)\
    $(eval LSF_$(s)_WALL = 0:30))
