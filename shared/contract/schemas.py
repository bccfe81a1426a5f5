"""JSON Schema of every event type, checked into the repo, and the breaking-change check.

``python -m shared.contract.schemas write`` regenerates ``shared/contract/schemas/*.json``;
``check`` (run by the tests) fails when the code's schemas break the checked-in ones. Adding an
optional field or a new type passes; dropping or renaming a field, changing its type, making a
field required, or dropping an enum value or an event type fails.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from shared.contract.events import TOPIC_TYPES

DIRECTORY = Path(__file__).with_name("schemas")


def current() -> dict[str, dict[str, Any]]:
    """Schemas by ``<topic>/<type>``."""
    return {
        f"{topic}/{name}": model.model_json_schema()
        for topic, types in TOPIC_TYPES.items() for name, model in types.items()
    }


def write() -> None:
    for key, schema in current().items():
        path = DIRECTORY / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


def checked_in() -> dict[str, dict[str, Any]]:
    return {
        f"{p.parent.name}/{p.stem}": json.loads(p.read_text())
        for p in sorted(DIRECTORY.glob("*/*.json"))
    }


def breaking_changes(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    for name, old_schema in old.items():
        if name not in new:
            problems.append(f"{name}: event type removed")
            continue
        problems += [f"{name}: {p}" for p in _compare(old_schema, new[name], old_schema, new[name], "")]
    return problems


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _compare(old: dict[str, Any], new: dict[str, Any], old_root: dict[str, Any],
             new_root: dict[str, Any], path: str) -> list[str]:
    old, new = _resolve(old, old_root), _resolve(new, new_root)
    problems = []
    if "anyOf" in old or "anyOf" in new:
        old_variants = [_resolve(v, old_root) for v in old.get("anyOf", [old])]
        new_variants = [_resolve(v, new_root) for v in new.get("anyOf", [new])]
        new_types = {v.get("type") for v in new_variants}
        for variant in old_variants:
            if variant.get("type") not in new_types:
                problems.append(f"{path or '.'}: no longer accepts type {variant.get('type')}")
        return problems
    if old.get("type") != new.get("type"):
        problems.append(f"{path or '.'}: type {old.get('type')} became {new.get('type')}")
    if "enum" in old and not set(old["enum"]) <= set(new.get("enum", old["enum"])):
        problems.append(f"{path}: enum values dropped {set(old['enum']) - set(new['enum'])}")
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    for field, schema in old_props.items():
        if field not in new_props:
            problems.append(f"{path}.{field}: field removed")
        else:
            problems += _compare(schema, new_props[field], old_root, new_root, f"{path}.{field}")
    added_required = set(new.get("required", [])) - set(old.get("required", []))
    if added_required:
        problems.append(f"{path or '.'}: newly required {sorted(added_required)}")
    if "items" in old and "items" in new:
        problems += _compare(old["items"], new["items"], old_root, new_root, f"{path}[]")
    return problems


if __name__ == "__main__":
    if sys.argv[1:] == ["write"]:
        write()
        print(f"wrote {len(current())} schemas to {DIRECTORY}")
    else:
        found = breaking_changes(checked_in(), current())
        print("\n".join(found) or "no breaking changes")
        sys.exit(1 if found else 0)
