"""Fetching official archives (`prepare --download`)."""
from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from kml.data.errors import DataError


def fetch(url: str, target: Path, timeout: float = 30.0) -> Path:
    """Download `url` to `target` (skipped if present); partial downloads never keep the final name."""
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {target.name}") as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
        if total is not None and partial.stat().st_size != total:
            raise OSError(f"received {partial.stat().st_size} of {total} bytes")
        os.replace(partial, target)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        raise DataError(
            f"could not download {url} ({err}); without network, fetch it elsewhere and pass it with --source"
        ) from err
    finally:  # also on Ctrl-C
        partial.unlink(missing_ok=True)
    return target
