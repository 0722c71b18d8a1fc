# The demo: phantom head-CT series generated on the spot, small and fast.
PHANTOM = 1
PHANTOM_ARGS = --series 16 --slices 24-32 --size 256 --seed 1 --test-fraction 0.25
THREADS = 2
