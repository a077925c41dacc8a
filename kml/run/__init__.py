"""What runs one experiment: the few-shot and meta-mapper runners (train, mapper), the shared meta-training
loop, evaluation, checkpoints, the logger, the run-folder lock, full-disk-safe writes, and the run's set-up
(device, seeds, threads, allocator). Whatever runs beside training attaches as a configured hook (hooks).

It reads learners, models and data, and never the analysis: nothing here imports kml.analysis."""
