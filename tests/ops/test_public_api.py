"""README's API table names every public name of kbit.functional, kbit.nn and kbit.optim (the *8bit / *32bit
variants through their base name, as the table writes them), so a new public function cannot go undocumented."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import kbit.functional
import kbit.nn
import kbit.optim

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
TABLE = README[README.index("| kbit | bitsandbytes | what |"):README.index("## Formats")]


def _documented(name: str) -> bool:
    base = re.sub(r"(8bit|32bit)$", "", name)
    return re.search(rf"\b{re.escape(base)}\b", TABLE) is not None


@pytest.mark.parametrize("module", [kbit.functional, kbit.nn, kbit.optim], ids=lambda m: m.__name__)
def test_every_public_name_is_in_the_readme_api_table(module):
    missing = [n for n in module.__all__ if not _documented(n)]
    assert not missing, f"README's API table lacks {missing}"
