"""Where the desired state outlives the controller: a protocol, and a JSON file.

Ray's GCS key-value store (``actor.py``) is the other kind: it lasts as long as the cluster.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
"""The layout of a saved state; a store holding another is ignored."""


class Store(Protocol):
    """Somewhere the desired state survives the controller."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, document: dict[str, Any]) -> None: ...


class FileStore:
    """A JSON file, replaced atomically on every save."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any] | None:
        try:
            document = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            logger.warning("ignoring unreadable state file %s: %s", self.path, error)
            return None
        return document if isinstance(document, dict) else None

    def save(self, document: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".state-")
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle)
        os.replace(temporary, self.path)
