"""Suite-wide settings."""
import os

import torch

# Under pytest-xdist each worker's PyTorch would start one OpenMP thread per core: with 2
# workers on 2 cores that is 4 threads, whose spinning barriers turn every parallel op into a
# wait (the two study dry runs: 111 s side by side, 42 s with one thread a worker). One thread
# a worker, and for the processes the tests start (CLI subprocesses, torchrun); a test that is
# about threads sets its own count.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
