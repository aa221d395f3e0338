"""Hatchling build hook: the mypyc build goes into the wheel only when asked for.

A build of the hot path (``ops/compile_native.py``) is for one interpreter and C
library, so wheels leave it out (``exclude`` in pyproject.toml): a wheel built anywhere
else is pure Python and installs everywhere. The image's builder compiles from the same
sources first and sets ``PROCESSOR_NATIVE_WHEEL=1``: then every compiled module must be
there and fresh (its source hash in the manifest), or the build fails rather than
shipping a wheel that silently runs from source; the extensions and the manifest go in,
and the wheel is tagged for this interpreter and platform, as a wheel with extension
modules must be.
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

ASK = "PROCESSOR_NATIVE_WHEEL"


class NativeBuild(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        if os.environ.get(ASK, "") in ("", "0"):
            return
        root = Path(self.root)
        # processor/native.py without importing the package (it is stdlib only)
        native = SimpleNamespace(**runpy.run_path(str(root / "processor" / "native.py")))
        missing = [m for m in native.COMPILED if native.compiled_path(m) is None]
        stale = native.from_source(native.COMPILED, native.read_manifest(), pure=False)
        if missing or stale:
            raise RuntimeError(
                f"{ASK}=1, but the hot path is not compiled from these sources"
                f" (missing: {missing or 'none'}; stale: {sorted(stale) or 'none'});"
                " run ops/compile_native.py first"
            )
        for path in native.build_files():
            build_data["force_include"][str(path)] = path.relative_to(root).as_posix()
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
