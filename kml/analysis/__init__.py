"""What reads finished runs: the paper-style report, paired comparisons, plots, the published numbers, the
study runner, and the transference analysis (a training hook and a measurement of saved models).

Entry points: `python -m kml.report`, `python -m kml.study`, `launch.py run=transference`."""
