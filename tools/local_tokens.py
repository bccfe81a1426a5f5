"""API tokens for the local stack (`make up`, development only): an auditor token for the demo
and the operator, and a reviewer token per agency for the review console (POLICY.md §6).

Written once into a directory of the git-ignored .state/ (mode 0600): ``api-tokens.json``
holds the hashes, in the form the services read as ``API_TOKENS`` (docs/SECURITY.md), and
``local-tokens.json`` the tokens themselves. Never use these files outside a development box.

    python -m tools.local_tokens .state/tokens     # prints the path to give as API_TOKENS
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.runtime.auth import hash_token
from shared.runtime.settings import DEFAULT_AGENCIES

DIRECTORY = Path(__file__).resolve().parents[1] / ".state" / "tokens"
TOKENS = "local-tokens.json"
TABLE = "api-tokens.json"


def ensure(directory: Path = DIRECTORY, agencies: Sequence[str] = DEFAULT_AGENCIES) -> Path:
    """Create the token files unless they exist; return the path of the hashed table."""
    directory.mkdir(parents=True, exist_ok=True)
    table = directory / TABLE
    if table.exists() and (directory / TOKENS).exists():
        return table
    tokens: dict[str, Any] = {"auditor": secrets.token_urlsafe(32),
              "reviewers": {a: secrets.token_urlsafe(32) for a in agencies}}
    entries = {hash_token(tokens["auditor"]): {"role": "auditor", "name": "local-auditor"}}
    for agency, token in tokens["reviewers"].items():
        entries[hash_token(token)] = {"role": "reviewer", "agency": agency,
                                      "name": f"{agency}-local-reviewer"}
    for name, content in ((TOKENS, tokens), (TABLE, entries)):
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(content, f, indent=2)
    return table


def load(directory: Path = DIRECTORY) -> dict[str, object] | None:
    """The local tokens, if `make up` made them."""
    path = directory / TOKENS
    return json.loads(path.read_text()) if path.exists() else None


if __name__ == "__main__":
    print(ensure(Path(sys.argv[1]) if len(sys.argv) > 1 else DIRECTORY))
