"""`python -m kml.study status|run|report`: the entry point of kml.analysis.study (the study in chunks)."""
import sys

from kml.analysis.study import main

if __name__ == "__main__":
    sys.exit(main())
