"""Published test accuracies (%, mean and 95% CI), keyed by (method, benchmark, way, shot), for
`python -m kml.report --published`. Method and benchmark names are the ones runs write into results.json
(tests/test_report.py checks that every key is one a run or the report can produce).

Transcribed from ../shared/paper/kml_neurips2021_results.json (tests/test_report.py compares the two when
that file is present), whose source is SOURCE below. The paper publishes overall accuracies only, no
per-mode numbers. Its ProtoNet-family rows come from the authors' released code, whose prototypes are
transductive (docs/protocols.md): compare them with protocol=released runs.
"""
SOURCE = ("Abdollahzadeh, Malekzadeh, Cheung, 'Revisit Multimodal Meta-Learning through the Lens of Multi-Task "
          "Learning', NeurIPS 2021 (vol. 34, pp. 14632-14644), multimodal few-shot classification tables, "
          "5-way, overall test accuracy (mean ± 95% CI); transcribed from the authors' presentation slides, "
          "which show the paper's tables")

# The rows of the paper's tables, in its order (the report sorts its rows the same way).
METHODS = ("MAML", "Multi-MAML", "MMAML", "MMAML+KML", "ProtoNet", "Multi-ProtoNet", "MProtoNet", "MProtoNet+KML")
SETUPS = ("2mode_dag", "2mode", "3mode", "5mode")  # 2mode_dag: mini-ImageNet + FC100 (the paper's 2Mode†)

# method -> setup -> (1-shot, 5-shot), each (mean, ci95) in %.
_TABLE = {
    "MAML": {"2mode_dag": ((40.53, 0.68), (54.11, 0.63)), "2mode": ((65.18, 0.61), (74.18, 0.57)),
             "3mode": ((54.40, 0.56), (66.51, 0.54)), "5mode": ((47.19, 0.49), (58.13, 0.48))},
    "Multi-MAML": {"2mode_dag": ((39.27, 0.76), (53.51, 0.72)), "2mode": ((66.77, 0.68), (73.07, 0.61)),
                   "3mode": ((56.01, 0.66), (65.92, 0.62)), "5mode": ((48.33, 0.58), (59.20, 0.52))},
    "MMAML": {"2mode_dag": ((39.11, 0.62), (52.02, 0.63)), "2mode": ((67.67, 0.63), (73.52, 0.71)),
              "3mode": ((57.35, 0.61), (64.21, 0.57)), "5mode": ((49.53, 0.50), (58.89, 0.47))},
    "MMAML+KML": {"2mode_dag": ((40.73, 0.66), (53.72, 0.60)), "2mode": ((68.01, 0.59), (77.02, 0.66)),
                  "3mode": ((57.68, 0.59), (67.12, 0.55)), "5mode": ((50.31, 0.49), (60.51, 0.47))},
    "ProtoNet": {"2mode_dag": ((43.05, 0.58), (57.70, 0.59)), "2mode": ((69.55, 0.54), (75.12, 0.41)),
                 "3mode": ((58.14, 0.49), (66.84, 0.44)), "5mode": ((49.31, 0.53), (58.91, 0.51))},
    "Multi-ProtoNet": {"2mode_dag": ((43.42, 0.56), (56.73, 0.64)), "2mode": ((70.17, 0.61), (75.33, 0.46)),
                       "3mode": ((59.89, 0.50), (67.03, 0.44)), "5mode": ((50.69, 0.57), (59.88, 0.54))},
    "MProtoNet": {"2mode_dag": ((43.57, 0.59), (56.03, 0.64)), "2mode": ((70.60, 0.56), (75.72, 0.47)),
                  "3mode": ((59.62, 0.54), (67.51, 0.47)), "5mode": ((51.75, 0.52), (59.95, 0.42))},
    "MProtoNet+KML": {"2mode_dag": ((44.40, 0.65), (59.31, 0.62)), "2mode": ((73.69, 0.52), (79.82, 0.40)),
                      "3mode": ((62.08, 0.54), (70.03, 0.43)), "5mode": ((56.72, 0.46), (64.91, 0.38))},
}

PUBLISHED: dict[tuple[str, str, int, int], tuple[float, float]] = {
    (method, setup, 5, shot): value
    for method, setups in _TABLE.items()
    for setup, pair in setups.items()
    for shot, value in zip((1, 5), pair, strict=True)
}
