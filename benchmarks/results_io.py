"""What every benchmark script stamps on and how it writes its result file."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any


def utc_now() -> str:
  """The current UTC time, ISO 8601 to the second (the results' ``date``)."""
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds")


def write_json(path: str | Path, report: dict[str, Any]) -> Path:
  """Writes ``report`` as indented JSON (creating the folder) and says so."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(report, indent=1) + "\n")
  print(f"wrote {path}")
  return path
