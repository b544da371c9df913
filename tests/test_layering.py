"""The layers point one way (DESIGN.md "Layout"), read from the source's imports.

Static: every import statement in the files, those inside functions too (a
lazy import is still a dependency), so a cycle cannot hide behind a late
import, and no module need be importable for its rule to be checked.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# payments' domain: what the API, the worker and realtime build on.
PAYMENTS_DOMAIN = (
    "payments/models.py",
    "payments/services.py",
    "payments/selectors.py",
    "payments/payloads.py",
    "payments/tasks.py",
    "payments/errors.py",
    "payments/outbox.py",
    "payments/gateways",
)


@dataclass(frozen=True)
class Rule:
    """Files under ``paths`` import nothing under ``forbidden`` but ``allowed``."""

    name: str
    paths: tuple[str, ...]
    forbidden: tuple[str, ...]
    allowed: tuple[str, ...] = ()


RULES = [
    # Infrastructure every layer uses: it may not use them back.
    Rule("ops is infrastructure", ("ops",), ("payments", "realtime")),
    # Every layer builds its JSON errors with it.
    Rule(
        "config.errors imports no app",
        ("config/errors.py",),
        ("ops", "payments", "realtime"),
    ),
    Rule(
        "the domain knows no API, worker runtime or DRF",
        PAYMENTS_DOMAIN,
        ("payments.api", "payments.worker", "rest_framework"),
    ),
    # payments calls realtime.notify (after commit) and nothing else of it.
    Rule(
        "payments only notifies realtime",
        ("payments",),
        ("realtime",),
        ("realtime.notify",),
    ),
    # realtime never writes payments: it reads them through the selectors.
    Rule(
        "realtime reads payments through selectors",
        ("realtime",),
        ("payments",),
        ("payments.selectors",),
    ),
]


@dataclass(frozen=True)
class Import:
    path: str
    line: int
    module: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.module}"


def _module_of(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_in(path: Path, root: Path) -> list[Import]:
    """Every module ``path`` imports; ``from a import b`` counts as ``a.b``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_of(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    relative = path.relative_to(root).as_posix()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # b may be a submodule (from payments import selectors) or a name
            # in a (from payments.models import Payment): either way a.b is
            # under a, which is what the rules compare.
            modules = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [Import(relative, node.lineno, module) for module in modules]
    return found


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(f"{p}.") for p in prefixes)


def _files(root: Path, paths: tuple[str, ...]) -> list[Path]:
    files = []
    for each in paths:
        path = root / each
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def violations(rule: Rule, root: Path = ROOT) -> list[Import]:
    files = _files(root, rule.paths)
    missing = [str(path) for path in files if not path.is_file()]
    assert not missing, f"{rule.name}: no such file {missing}"
    return [
        found
        for path in files
        for found in imports_in(path, root)
        if _under(found.module, rule.forbidden)
        and not _under(found.module, rule.allowed)
    ]


@pytest.mark.parametrize("rule", RULES, ids=[rule.name for rule in RULES])
def test_layers_point_one_way(rule: Rule) -> None:
    found = violations(rule)

    assert not found, f"{rule.name}:\n" + "\n".join(map(str, found))


def test_an_import_breaking_a_rule_is_found(tmp_path: Path) -> None:
    """The checker itself: plain, from-, relative and lazy imports all count."""
    ops = tmp_path / "ops"
    ops.mkdir()
    (ops / "__init__.py").write_text("")
    (ops / "views.py").write_text(
        "import payments.models\n"
        "from realtime import notify\n"
        "from .metrics import seconds_since\n"
        "def view():\n"
        "    from payments.worker.heartbeat import workers_alive\n"
    )

    found = violations(RULES[0], root=tmp_path)

    assert [(i.line, i.module) for i in found] == [
        (1, "payments.models"),
        (2, "realtime.notify"),
        (5, "payments.worker.heartbeat.workers_alive"),
    ]
    assert (
        imports_in(ops / "views.py", tmp_path)[2].module == "ops.metrics.seconds_since"
    )
