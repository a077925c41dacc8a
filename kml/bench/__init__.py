"""Benchmarks that print numbers (never timed assertions): `python -m kml.bench [data|train]`.

Modules: cli (the command line), data (sampler episodes/s), train (the meta-training step table),
reference (the `higher` MAML step that table compares with), instruments (timing, FLOPs, peak memory,
matmul ceiling), table (formatting of the train table); the GPU check: gpu (its entry and steps' time
limits), gpu_steps (the steps' child processes; env), gpu_speed, gpu_real, gpu_data (the carried
archives), gpu_report (summary), gpu_pack (what the device calls carry). The names below are
re-exported because the tests, and any caller of the former single-file module, use them as
`kml.bench.<name>`.
"""

from kml.bench.cli import main
from kml.bench.instruments import PeakMemory, count_flops
from kml.bench.reference import higher_status
from kml.bench.table import COLUMNS

__all__ = ["COLUMNS", "PeakMemory", "count_flops", "higher_status", "main"]
