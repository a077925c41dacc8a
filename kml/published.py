"""Published test accuracies (%), keyed by (method, benchmark, way, shot), for `kml.report --published`.

Only numbers checked against the papers belong here; an empty table is better than a wrong one.
"""
SOURCE = ("Abdollahzadeh, Malekzadeh, Cheung, 'Revisit Multimodal Meta-Learning through the Lens of "
          "Multi-Task Learning', NeurIPS 2021 (arXiv 2110.14202); results tables not yet checked")

# Empty on purpose: the paper's results tables could not be read from this offline workplace (only the
# opening of its stored text is reachable; the authors' README lists commands, no numbers). Fill these
# from the paper's own tables, citing the table above each block, never from memory or third-party notes.
PUBLISHED: dict[tuple[str, str, int, int], float] = {}
# Per-mode numbers where the paper reports them, keyed additionally by mode (e.g. "omniglot").
PUBLISHED_PER_MODE: dict[tuple[str, str, int, int, str], float] = {}
