"""What glibc's allocator costs a CPU step that makes large tensors: the float conversion and
normalisation of a 128 × 3 × 224 × 224 uint8 batch, 20 times, one thread, with glibc's defaults
(``default``: tensors above 32 MB are mmap-ed and unmapped each time, so every step page-faults
them in again) or with ``mallopt`` keeping them in the heap (``tuned``). Prints the time per
iteration, the system time and the minor page faults.

Run:  for m in default tuned default tuned; do .venv/bin/python benchmarks/bench_malloc.py $m; done
"""

import ctypes
import resource
import sys
import time

import torch

torch.set_num_threads(1)
if sys.argv[1:] == ["tuned"]:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
    libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)
x = torch.randint(0, 255, (128, 3, 224, 224), dtype=torch.uint8)
r0 = resource.getrusage(resource.RUSAGE_SELF)
t = time.perf_counter()
for _ in range(20):
    y = (x.float() - 127.5) / 64.0
    s = y.sum()
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(
    (sys.argv[1:] or ["default"])[0],
    "ms/iter %.1f" % ((time.perf_counter() - t) / 20 * 1e3),
    "sys s %.2f" % (r1.ru_stime - r0.ru_stime),
    "minflt",
    r1.ru_minflt - r0.ru_minflt,
)
