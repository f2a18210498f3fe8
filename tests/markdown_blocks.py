"""The fenced code blocks of a Markdown page, as the README and docs tests run them."""

from __future__ import annotations

import re
from pathlib import Path


def python_blocks(path: Path) -> list[str]:
    """The bodies of the page's ```python blocks, in order."""
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
