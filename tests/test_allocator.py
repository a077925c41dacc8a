"""kml.run.allocator: with glibc's thresholds raised, a training-like step stops page-faulting its buffers in."""
import subprocess
import sys

import pytest

from kml.run.allocator import keep_freed_memory

# Conv forward + backward with buffers above glibc's default mmap threshold; prints minor page faults
# per step after a warm-up step.
STEP = """
import resource, sys, torch
from kml.run.allocator import keep_freed_memory
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    assert keep_freed_memory()
conv, x = torch.nn.Conv2d(16, 16, 3, padding=1), torch.randn(40, 16, 64, 64)
def step():
    conv.zero_grad()
    (conv(torch.relu(conv(x))) ** 2).mean().backward()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def faults_per_step(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", STEP, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return float(done.stdout)


@pytest.mark.skipif(not keep_freed_memory(), reason="needs glibc's mallopt (Linux)")
def test_kept_memory_is_reused_instead_of_faulted_in_again():
    default, kept = faults_per_step("default"), faults_per_step("keep")
    assert kept < default / 3, (kept, default)
