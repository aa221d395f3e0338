"""Compile the hot-path modules (``processor.native.COMPILED``) with mypyc, in place.

    .venv/bin/python ops/compile_native.py           # compile; ops/setup.sh runs this
    .venv/bin/python ops/compile_native.py --clean   # remove the compiled modules
    /opt/build/bin/python ops/compile_native.py --python-executable /opt/venv/bin/python
                                                     # the image's builder (Dockerfile)

Each module becomes an extension module beside its source (``processor/core/codec.py``
-> ``codec.cpython-311-*.so``), and ``processor/_native.json`` records the hash of the
source it was compiled from: ``processor/native.py`` runs a changed source as Python
until this runs again. Needs a C compiler, the Python headers, mypy and setuptools (in
the dev venv; ``ops/native.lock`` for the image); without them it says so and exits 1,
and the processor runs its sources (slower, same behaviour). Separate compilation (one
extension per module) keeps each next to its source, so an editable install and a wheel
find them the same way. The build's scratch files go to a temporary directory.

It runs without the processor's dependencies installed beside it: ``native.py`` is
loaded as a file (the package's ``__init__`` imports trio-asyncio), and mypy reads the
dependencies' types from ``--python-executable``'s packages.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent

_SETUP = """
import sys
from setuptools import setup
from mypyc.build import mypycify
setup(
    name="processor-native",
    py_modules=[],
    ext_modules=mypycify(sys.argv.pop(1).split(","), opt_level=sys.argv.pop(1),
                         separate=True, target_dir=sys.argv.pop(1)),
)
"""


# processor/native.py without importing the package (it is stdlib only)
native = SimpleNamespace(**runpy.run_path(str(ROOT / "processor" / "native.py")))


def clean() -> None:
    """Remove the build, and any extension module left in the package by a module since
    dropped from ``COMPILED`` (``native.strays``: the guard runs its source instead, but
    the file should not linger)."""
    for path in {*native.build_files(), *native.extension_files()}:
        path.unlink()


def compile_modules(python_executable: str, opt_level: str = "3") -> int:
    clean()  # a half-built set must never sit beside a manifest that vouches for it
    sources = [str(native.source_path(m).relative_to(ROOT)) for m in native.COMPILED]
    # mypycify takes mypy options among its paths: the interpreter whose site-packages
    # hold the dependencies' types (msgspec, orjson, attrs, ...).
    paths = [*sources, f"--python-executable={python_executable}"]
    with tempfile.TemporaryDirectory() as tmp:
        setup = Path(tmp, "setup.py")
        setup.write_text(_SETUP)
        build = [
            sys.executable, str(setup), ",".join(paths), opt_level, str(Path(tmp, "c")),
            "build_ext", "--inplace", "--build-temp", str(Path(tmp, "t")),
        ]  # fmt: skip
        env = {**os.environ, "MYPY_CACHE_DIR": str(Path(tmp, "mypy_cache"))}
        done = subprocess.run(build, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        clean()
        print(done.stdout[-4000:] + done.stderr[-4000:], file=sys.stderr)
        print("compile_native: mypyc failed; the processor runs from source", file=sys.stderr)
        return 1
    hashes = {m: native.source_hash(native.source_path(m)) for m in native.COMPILED}
    native.MANIFEST.write_text(json.dumps({"modules": hashes}, indent=1) + "\n")
    print(f"compile_native: compiled {', '.join(native.COMPILED)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clean", action="store_true", help="remove the compiled modules")
    parser.add_argument(
        "--python-executable",
        default=sys.executable,
        help="the interpreter whose installed packages mypy reads (default: this one)",
    )
    parser.add_argument(
        "--opt-level",
        choices=["0", "1", "2", "3"],
        default="3",
        help="the C compiler's optimisation (default 3; tests that only check the build"
        " flow use 0, which compiles in a fraction of the time)",
    )
    args = parser.parse_args()
    if args.clean:
        clean()
        return 0
    return compile_modules(args.python_executable, args.opt_level)


if __name__ == "__main__":
    sys.exit(main())
