"""Entry point of `python -m kml.bench`; the command line itself is in kml.bench.cli."""

from kml.bench.cli import main

if __name__ == "__main__":
    main()
