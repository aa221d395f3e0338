"""Which hot-path modules may run compiled (mypyc), and the guard against a stale build.

Most of the processor's CPU per record is Python-level work in a few modules (decoding,
hot state, the latency histogram, the IO mapping's batch loop). ``ops/compile_native.py``
compiles ``COMPILED`` with mypyc into extension modules beside their sources: same code,
same types (mypy strict already holds them), no second implementation to keep in step.
Without a compiler the sources run as they are; the compiled form is an accelerator,
never a requirement.

CPython imports an extension module before a ``.py`` of the same name, so after an edit
the old compiled code would run and the edit would silently not. ``guard()`` (called by
``processor/__init__.py`` before any of these is imported) compares each source with the
hash ``ops/compile_native.py`` recorded when it compiled it, and imports a changed one,
or all of them under ``PROCESSOR_PURE_PYTHON=1``, from its source. ``status()`` says
which form each module runs in, for the start-up log and the benches.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# Modules compiled by ops/compile_native.py. Each must be plain classes and functions
# (no attrs classes, no msgspec Structs: mypyc cannot compile those; they live in
# modules of their own, such as core/payload.py) and must not be monkeypatched.
COMPILED = (
    "processor.core.codec",
    "processor.core.hot_state",
    "processor.core.batch_histogram",
    "processor.domain.io_apply",
)
PURE_ENV = "PROCESSOR_PURE_PYTHON"
_PACKAGE = Path(__file__).parent
MANIFEST = _PACKAGE / "_native.json"
_EXTENSIONS = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def source_path(module: str) -> Path:
    """``processor.core.codec`` -> ``<package>/core/codec.py``."""
    return _PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compiled_path(module: str) -> Path | None:
    """The extension module CPython would import for ``module``, if there is one."""
    source = source_path(module)
    for suffix in _EXTENSIONS:
        candidate = source.with_suffix(suffix)
        if candidate.exists():
            return candidate
    return None


def build_files() -> list[Path]:
    """What a compile leaves in the package: each extension module, mypyc's companion
    extension beside it (its runtime, one per module with separate compilation), and
    the manifest. For ``ops/compile_native.py --clean`` and the image's wheel."""
    found = [MANIFEST] if MANIFEST.exists() else []
    for module in COMPILED:
        extension = compiled_path(module)
        if extension is not None:
            found.append(extension)
            companion = extension.with_name(extension.name.replace(".", "__mypyc.", 1))
            found += [companion] if companion.exists() else []
    return found


def read_manifest(path: Path = MANIFEST) -> dict[str, str]:
    """Source hash per module at compile time ({} without a readable manifest)."""
    try:
        modules = json.loads(path.read_text())["modules"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {str(k): str(v) for k, v in modules.items()} if isinstance(modules, dict) else {}


def from_source(modules: Sequence[str], manifest: dict[str, str], *, pure: bool) -> dict[str, str]:
    """The compiled modules that must be imported from source, each with the reason."""
    reasons = {}
    for module in modules:
        if compiled_path(module) is None:
            continue
        if pure:
            reasons[module] = f"{PURE_ENV} is set"
        elif manifest.get(module) != source_hash(source_path(module)):
            reasons[module] = "source changed since it was compiled (run ops/compile_native.py)"
    return reasons


def extension_files() -> list[Path]:
    """Every extension module file in the package (mypyc's, since the package has no
    others), whether ``COMPILED`` lists its module or not."""
    return [p for p in _PACKAGE.rglob("*") if p.name.endswith(_EXTENSIONS) and p.is_file()]


def strays() -> dict[str, str]:
    """Modules with an extension beside their source that ``COMPILED`` does not list: a
    build left from before the module left the list. CPython would import it, and no
    manifest entry says whether it matches its source, so the source runs."""
    reasons = {}
    for path in extension_files():
        suffix = next(s for s in _EXTENSIONS if path.name.endswith(s))
        stem = path.name.removesuffix(suffix)
        module = ".".join(("processor", *path.relative_to(_PACKAGE).parent.parts, stem))
        if module not in COMPILED and path.with_name(stem + ".py").exists():
            reasons[module] = "not in native.COMPILED: a stray build (run ops/compile_native.py)"
    return reasons


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Finds the named modules' ``.py`` files, ahead of the extension modules beside them."""

    def __init__(self, modules: dict[str, str]) -> None:
        self.modules = modules

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def runs_compiled(module: ModuleType) -> bool:
    """Whether ``module`` was imported from an extension module (for code that picks
    the faster of two equivalent forms)."""
    return (module.__file__ or "").endswith(_EXTENSIONS)


def guard() -> None:
    """Import stale (or, under ``PROCESSOR_PURE_PYTHON``, all) compiled modules from source.
    Idempotent; a no-op where nothing is compiled."""
    if any(isinstance(f, _SourceFirst) for f in sys.meta_path):
        return
    pure = os.environ.get(PURE_ENV, "") not in ("", "0")
    stale = {**from_source(COMPILED, read_manifest(), pure=pure), **strays()}
    if stale:
        sys.meta_path.insert(0, _SourceFirst(stale))


def status() -> dict[str, str]:
    """Per module of ``COMPILED``: ``compiled``, or ``source`` with why (for logs)."""
    finder = next((f for f in sys.meta_path if isinstance(f, _SourceFirst)), None)
    result = {}
    for module in COMPILED:
        loaded = sys.modules.get(module)
        if loaded is not None:
            compiled = runs_compiled(loaded)
        else:
            compiled = compiled_path(module) is not None
        if finder is not None and module in finder.modules:
            result[module] = f"source: {finder.modules[module]}"
        else:
            result[module] = "compiled" if compiled else "source: not compiled"
    return result
