"""MkDocs hook: fills the markers in docs pages with text generated from launch's code, so the key
reference cannot drift from config/schema.py (`mkdocs build --strict` runs in the test suite)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: launcher/

from launcher.config.reference import job_reference, profile_reference  # noqa: E402

MARKERS = {"<!-- generated: job keys -->": job_reference, "<!-- generated: profile keys -->": profile_reference}


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    for marker, make in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
