"""Benchmarks that print numbers (never timed assertions):
`python -m kml.bench [data|train|transference|profile|gpu|gpu-pack] [--quick]`.

data:  episodes/s of the samplers.
train: one meta-iteration (forward + backward + Adam step) of every learner × modulation (× MAML order)
       on one fixed meta-batch: ms, tasks/s, peak memory, achieved FLOP/s and its fraction of this
       device's own dense float32 matmul FLOP/s (measured in the same run), and the ratio to a
       reference MAML step written with the `higher` library (extra `bench`), same model and tasks.
transference: source-target pairs/s of the transference analysis and its overhead on a training run.
profile: where one meta-iteration of one learner (--learner, --modulation, --path) goes, by phase and
       by aten operator (--by-shape: and input shapes).
gpu:   the GPU check (kml.bench.gpu): environment and matmul ceilings, the tests on the device, the train
       table with each fast-path switch, a real 2mode run, each step within its time limit; `gpu --help`.
gpu-pack: run here before the device calls: gathers the wheels and archives they carry, prints the calls.
Without an argument data and train run. Every figure is a median over repeats after warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import torch

GPU_COMMANDS = ("gpu", "gpu-pack")  # their own command lines (kml.bench.gpu), parsed there


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in GPU_COMMANDS:
        # Before the other benchmarks are imported: on a bare GPU machine `gpu` installs what they need.
        from kml.bench import gpu

        raise SystemExit(gpu.main(argv[1:]) if argv[0] == "gpu" else gpu.pack_main(argv[1:]))
    # Imported here, not at the top: they need the project's dependencies, which `gpu` may have to install.
    from kml.bench.data import bench_data
    from kml.bench.profile import profile
    from kml.bench.train import bench_train
    from kml.bench.transference import bench_transference, print_rows
    from kml.run.allocator import keep_freed_memory

    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if args.keep_freed_memory:
        print(f"keep freed memory (glibc mallopt): {'on' if keep_freed_memory() else 'not available'}")
    if device.type == "cuda" and not torch.cuda.is_available():
        build_parser().error("--device cuda: no CUDA device is visible")
    if args.what in (None, "data"):
        rows = bench_data(args.root, args.quick, args.image_size)
        width = max(len(r[0]) for r in rows)
        print(f"{'sampler'.ljust(width)}  episodes/s  vs 1000/s goal")
        for label, rate in rows:
            print(f"{label.ljust(width)}  {rate:10.0f}  {rate / 1000:6.2f}x")
    if args.what in (None, "train"):
        if args.what is None:
            print()
        with threads(args.threads):
            bench_train(args, device)
    if args.what == "transference":
        with threads(args.threads):
            print_rows(bench_transference(args.root, args.quick, device))
    if args.what == "profile":
        with threads(args.threads):
            profile(args, device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kml.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["data", "train", "transference", "profile", *GPU_COMMANDS], nargs="?",
                        help="default: data and train")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke test)")
    parser.add_argument(
        "--all", action="store_true", help="on a CPU too: 1- and 5-shot, every modulation and order"
    )
    parser.add_argument("--image-size", type=int, help="default 84 (16 with --quick)")
    parser.add_argument(
        "--repeats", type=int, help="timed repeats (default 3 on CPU, 10 on CUDA, 1 with --quick)"
    )
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for train and transference (0 = torch's default)")
    parser.add_argument("--autocast", action="store_true", help="batched rows: bfloat16 autocast")
    parser.add_argument(
        "--channels-last",
        choices=["true", "false", "auto"],
        help="batched rows: NHWC activations (default: conf/learner's auto, NHWC where differentiated once)",
    )
    parser.add_argument(
        "--compile", help="batched rows: torch.compile backend (where no 2nd derivative is taken)"
    )
    parser.add_argument("--tasks-per-pass", help="batched rows: tasks per pass, a number or auto")
    parser.add_argument("--core", action="store_true",
                        help="train: only 1-shot second-order MAML and ProtoNet, none and KML, on any device")
    parser.add_argument("--paths", type=lambda text: text.split(","), default=["batched", "per-task", "higher"],
                        help="train: the paths to time, comma-separated (default batched,per-task,higher)")
    parser.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                        help="glibc keeps freed buffers for reuse, as launch.py does (kml/allocator.py)")
    parser.add_argument("--verbose", action="store_true", help="print each shot's rows as they are measured")
    parser.add_argument("--root", default="data", help="where synthetic data is cached")
    profiled = parser.add_argument_group("profile")
    profiled.add_argument("--learner", choices=["maml", "protonet"], default="maml")
    profiled.add_argument("--modulation", choices=["none", "film", "kml"], default="kml")
    profiled.add_argument("--path", choices=["batched", "per-task", "higher"], default="batched")
    profiled.add_argument("--first-order", action="store_true", help="first-order MAML")
    profiled.add_argument("--by-shape", action="store_true", help="one row per operator and input shapes")
    profiled.add_argument("--top", type=int, default=30, help="operator rows to print")
    return parser


@contextlib.contextmanager
def threads(count: int):
    """torch's CPU threads set to `count` (0: leave them) for the block, then restored (the benchmarks
    also run inside the test process)."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
