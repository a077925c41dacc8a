"""Published test accuracies (%), keyed by (method, benchmark, way, shot), for `kml.report --published`.

Only numbers checked against the papers belong here; an empty table is better than a wrong one.
"""
SOURCE = ("Abdollahzadeh, Malekzadeh, Cheung, 'Revisit Multimodal Meta-Learning through the Lens of "
          "Multi-Task Learning', NeurIPS 2021, Tables 2-3")

PUBLISHED: dict[tuple[str, str, int, int], float] = {}
