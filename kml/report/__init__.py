"""`python -m kml.report DIR...` (its __main__): the entry point of kml.analysis.report, where the code lives."""
