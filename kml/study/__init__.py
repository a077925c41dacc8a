"""`python -m kml.study status|run|report` (its __main__): the entry point of kml.analysis.study, where the code lives."""
