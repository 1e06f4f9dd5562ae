"""The import layers (docs/daemon.md, "How the process is wired"):

- only the engine itself, the verbs (rokfs/control.py), fsck and the wiring
  module that opens the pool (rokfs/runner.py) import an engine module;
  checked statically on every import, function-level and relative ones too;
- a client (rokfs.client, rokctl, the CSI shim) loads no engine module, no
  verbs and no daemon module, checked in a fresh interpreter.
"""

import ast
import json
import pathlib
import pkgutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("rokfs", "nbd_server", "csi_shim")
ENGINE = ("rokfs.pool", "rokfs.image", "rokfs.commit", "rokfs.extents", "rokfs.extentmap",
          "rokfs.partial", "rokfs.store")
MAY_IMPORT_ENGINE = {f"{name.replace('.', '/')}.py" for name in ENGINE} | {
    "rokfs/control.py", "rokfs/fsck.py", "rokfs/runner.py"}
VERBS = ("rokfs.control", "rokfs.device", "rokfs.hydration", "rokfs.registry_verbs",
         "rokfs.policy_verbs")
WIRING = ("rokfs.daemon", "rokfs.runner", "rokfs.config", "rokfs.cli", "rokfs.admin")
CLIENTS = ["rokfs.client", "rokfs.rokctl",
           *(f"csi_shim.{m.name}" for m in pkgutil.iter_modules([str(REPO / "csi_shim")])
             if m.name != "__main__")]


def package_of(path):
    """The package a file's relative imports start from: ['rokfs', 'remote']."""
    return list(path.relative_to(REPO).parts[:-1])


def imported_modules(source, package):
    """(line, module) for every import in `source`, relative ones resolved
    from `package`; `from X import y` counts as X and as X.y (y may be a module)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            yield node.lineno, base
            yield from ((node.lineno, f"{base}.{alias.name}") for alias in node.names)


def _absolute(node, package):
    if not node.level:
        return node.module
    parent = package[:len(package) - (node.level - 1)]
    return ".".join([*parent, *([node.module] if node.module else [])])


def engine_module(module):
    """The engine module that `module` is or lies in, else None."""
    return next((e for e in ENGINE if module == e or module.startswith(e + ".")), None)


def source_files():
    for package in PACKAGES:
        yield from sorted((REPO / package).rglob("*.py"))


def test_only_the_engine_verbs_fsck_and_the_pool_opener_import_the_engine():
    violations = sorted({
        f"{path.relative_to(REPO)}:{line} imports {engine_module(module)}"
        for path in source_files()
        if str(path.relative_to(REPO)) not in MAY_IMPORT_ENGINE
        for line, module in imported_modules(path.read_text(), package_of(path))
        if engine_module(module)})
    assert not violations, "adapters, clients and base modules must not import the " \
        "engine (call Control verbs):\n" + "\n".join(violations)


def test_the_static_check_sees_every_kind_of_import():
    source = ("import rokfs.store\nfrom ..pool import Pool\nfrom .. import extents\n"
              "def f():\n    from rokfs.extentmap import LEAF\n"
              "from .fsck import fsck\nfrom . import names\n")
    found = {engine_module(m) for _, m in imported_modules(source, ["rokfs", "remote"])}
    assert found == {None, "rokfs.store", "rokfs.pool", "rokfs.extents", "rokfs.extentmap"}


@pytest.mark.parametrize("module", CLIENTS)
def test_a_client_loads_no_engine_verbs_or_daemon(module):
    forbidden = [*ENGINE, *VERBS, *WIRING]
    code = (f"import json, sys, {module}\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m in {forbidden!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [], f"importing {module} loads these"
