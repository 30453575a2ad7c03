"""The Terraform module as data, parsed with python-hcl2.

Strings come back without their quotes; an expression that is not a literal
comes back as its source text wrapped in ${...} (e.g. a reference
"${aws_dynamodb_table.notes.arn}", or a function call), which :func:`ref`
unwraps.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import re
from typing import Any, Iterator

import hcl2
from hcl2.utils import SerializationOptions

OPTIONS = SerializationOptions(strip_string_quotes=True, with_comments=False, explicit_blocks=False)


@dataclasses.dataclass
class Module:
    dir: pathlib.Path
    resources: dict[tuple[str, str], dict[str, Any]]
    data: dict[tuple[str, str], dict[str, Any]]
    locals: dict[str, Any]
    variables: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]

    def resource(self, type_: str, name: str) -> dict[str, Any]:
        try:
            return self.resources[(type_, name)]
        except KeyError:
            raise AssertionError(f"{self.dir}: no resource {type_}.{name}") from None

    def datum(self, type_: str, name: str) -> dict[str, Any]:
        try:
            return self.data[(type_, name)]
        except KeyError:
            raise AssertionError(f"{self.dir}: no data {type_}.{name}") from None

    def local(self, name: str) -> Any:
        try:
            return self.locals[name]
        except KeyError:
            raise AssertionError(f"{self.dir}: no local {name}") from None

    def resources_of(self, type_: str) -> dict[str, dict[str, Any]]:
        return {n: body for (t, n), body in self.resources.items() if t == type_}


@functools.lru_cache(maxsize=None)
def _parse(text: str) -> dict:
    # Parsing is the slow part; broken copies share all but one file.
    # Callers only read the result.
    return hcl2.loads(text, serialization_options=OPTIONS)


def _labelled(blocks: list[dict], into: dict) -> None:
    for block in blocks:
        for type_, named in block.items():
            for name, body in named.items():
                into[(type_, name)] = body


def load_module(directory: pathlib.Path) -> Module:
    m = Module(directory, {}, {}, {}, {}, {})
    files = sorted(directory.glob("*.tf"))
    if not files:
        raise AssertionError(f"no .tf files in {directory}")
    for path in files:
        doc = _parse(path.read_text())
        _labelled(doc.get("resource", []), m.resources)
        _labelled(doc.get("data", []), m.data)
        for block in doc.get("locals", []):
            for k, v in block.items():
                if k in m.locals:
                    raise AssertionError(f"local {k} defined twice")
                m.locals[k] = v
        for block in doc.get("variable", []):
            m.variables.update(block)
        for block in doc.get("output", []):
            m.outputs.update(block)
    return m


def ref(value: Any) -> str | None:
    """"${a.b.c}" -> "a.b.c"; None for anything else."""
    if isinstance(value, str):
        mm = re.fullmatch(r"\$\{(.*)\}", value, re.S)
        if mm:
            return mm.group(1).strip()
    return None


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def strings(value: Any) -> Iterator[str]:
    """Every string in a parsed value, keys included, except descriptions
    (prose)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            if k != "description":
                yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def policy_statements(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The statement blocks of an aws_iam_policy_document."""
    stmts = doc.get("statement", [])
    return stmts if isinstance(stmts, list) else [stmts]
