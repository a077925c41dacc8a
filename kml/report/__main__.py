"""`python -m kml.report DIR...`: the entry point of kml.analysis.report (paper-style tables of finished runs)."""
import sys

from kml.analysis.report import main

if __name__ == "__main__":
    sys.exit(main())
