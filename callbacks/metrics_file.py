"""The run folder's `metrics.json`: one flat JSON object that callbacks add keys to."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"


def _to_json(value: Any) -> Any:
    """Convert tensors, numpy scalars and non-finite floats to JSON values."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def read_metrics_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read `metrics.json` from a run folder or a file path; {} when absent."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def update_metrics_json(path: str | os.PathLike, values: dict[str, Any]) -> Path:
    """Merge `values` into `metrics.json` and write it atomically.

    Args:
        path: a run folder (the file goes inside it) or the JSON file itself.
        values: keys to add or replace; tensors and numpy values are converted.

    Returns:
        The path of the written file.
    """
    path = Path(path)
    if path.suffix != ".json":
        path = path / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = read_metrics_json(path)
    merged.update(_to_json(values))
    # Write to a temporary file in the same folder, then rename: a crash mid-write never
    # leaves a truncated metrics.json behind.
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".metrics-", suffix=".json")
    with os.fdopen(handle, "w") as f:
        json.dump(merged, f, indent=2, sort_keys=True)
    # mkstemp creates the file readable by its owner only; metrics are for everyone.
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
