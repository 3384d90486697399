"""The README and docs/architecture.md name files that exist: the layout they describe is the tree's."""
from __future__ import annotations

import re

import pytest

from conftest import REPO

PATH = re.compile(r"`((?:scripts|pbs|tests|bench|demo|docs|params|tasks|merge)/[A-Za-z0-9_./-]+|pipeline/[a-z_]+\.py)`")


@pytest.mark.parametrize("doc", ["README.md", "docs/architecture.md"])
def test_every_file_a_doc_names_exists(doc):
    named = set(PATH.findall((REPO / doc).read_text()))
    missing = []
    for path in sorted(named):
        if "<" in path or "*" in path or path.endswith("/x.py"):   # placeholders
            continue
        where = REPO / "scripts" / path if path.startswith("pipeline/") else REPO / path
        if not where.exists():
            missing.append(path)
    assert named and not missing, f"{doc} names what is not in the tree: {missing}"
