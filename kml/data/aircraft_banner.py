"""FGVC-Aircraft as the authors' released code reads it: every photo keeps its 20-pixel copyright banner.

A bug-compatibility dataset (docs/protocols.md): `python -m kml.data prepare aircraft_banner --source
fgvc-aircraft-2013b.tar.gz`, then `data.aircraft_banner=true` (set by protocol=released) serves it as the
`aircraft` mode. Same archive, classes and splits as kml.data.aircraft; only the crop is left out.
"""
from kml.data.aircraft import CHANNELS, DOWNLOADS, classes

__all__ = ["CHANNELS", "DOWNLOADS", "READ_OPTIONS", "classes"]

READ_OPTIONS: dict = {}  # no crop_bottom
