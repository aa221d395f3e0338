"""The compiled hot-path modules (``processor/native.py``): same behaviour as their
sources, and never a stale build.

mypyc compiles the same source, but it is not the same interpreter: it checks declared
types at run time and unboxes ``int`` / ``float`` (a value declared ``float`` comes out a
float even where CPython would keep an ``int``). So the compiled decoder is held to its
own source, loaded as Python beside it, on the same inputs as ``test_codec``'s properties,
types of every field included.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor import native
from processor.core import codec
from processor.core.errors import PoisonRecord
from processor.core.model import Position
from tests.unit.test_codec import NOW, PROPERTY, TOLERANCE_S, contract_shaped, positions

needs_build = pytest.mark.skipif(
    native.compiled_path("processor.core.codec") is None,
    reason="not compiled here (ops/compile_native.py; .ci/run requires it)",
)


def from_source(module: str) -> ModuleType:
    """``module`` as CPython runs its source, under a name of its own."""
    spec = importlib.util.spec_from_file_location(module + "_source", native.source_path(module))
    assert spec is not None
    assert spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def outcome(decoder: Any, fields: dict[bytes, bytes]) -> Any:
    """What ``decode`` made of the fields: the position with its field types, or the
    error's kind and reason."""
    try:
        position = decoder.decode(fields, now=NOW, future_tolerance_s=TOLERANCE_S)
    except PoisonRecord as exc:
        return type(exc), exc.reason
    assert type(position) is Position
    types = [type(getattr(position, f)) for f in position.__struct_fields__]
    attributes = [(k, type(v)) for k, v in position.attributes.items()]
    return position, types, attributes


@needs_build
def test_the_codec_in_use_is_the_compiled_one() -> None:
    """What the suite tests is what the daemon runs, once compiled."""
    assert Path(codec.__file__ or "").suffix == ".so"
    assert native.status()["processor.core.codec"] == "compiled"


@needs_build
@PROPERTY
@given(positions())
def test_compiled_decoder_is_its_source_on_contract_records(position: Position) -> None:
    fields = codec.encode(position)
    assert outcome(codec, fields) == outcome(SOURCE_CODEC, fields)


@needs_build
@PROPERTY
@given(contract_shaped, st.sampled_from([None, b"1", b"2"]))
def test_compiled_decoder_is_its_source_on_any_payload(
    payload: dict[str, Any], version: bytes | None
) -> None:
    fields = {b"payload": json.dumps(payload).encode()}  # ints beyond 64 bits too
    if version is not None:
        fields[b"v"] = version
    assert outcome(codec, fields) == outcome(SOURCE_CODEC, fields)


@needs_build
def test_compiled_stored_json_is_its_source() -> None:
    value = {"1": 2**70, "2": -(2**64), "3": b"\xff\x00", "4": 0.1, "5": 7}
    assert codec.stored_json(value) == SOURCE_CODEC.stored_json(value)


SOURCE_CODEC = from_source("processor.core.codec")


def run_in(package_root: Path, code: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=package_root,
        env={**os.environ, "PYTHONPATH": str(package_root), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


STATUS = (
    "import processor.core.codec, processor.core.hot_state, processor.native as n; "
    "import json; print(json.dumps(n.status()))"
)


@needs_build
def test_an_edited_source_runs_as_python_until_recompiled(tmp_path: Path) -> None:
    """A copy of the package with its compiled modules and manifest: after an edit to one
    source, that module is imported from the edited source, the others stay compiled."""
    shutil.copytree(
        Path(native.__file__).parent,
        tmp_path / "processor",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    assert orjson.loads(run_in(tmp_path, STATUS))["processor.core.hot_state"] == "compiled"

    hot_state = tmp_path / "processor/core/hot_state.py"
    hot_state.write_text(hot_state.read_text() + "\nEDITED = True\n")
    status = orjson.loads(run_in(tmp_path, STATUS))
    assert status["processor.core.hot_state"].startswith("source: source changed")
    assert status["processor.core.codec"] == "compiled"
    edited = run_in(tmp_path, "import processor.core.hot_state as h; print(h.EDITED, h.__file__)")
    assert edited == f"True {hot_state}"


@needs_build
def test_pure_python_switch_runs_every_source(tmp_path: Path) -> None:
    status = orjson.loads(run_in(Path.cwd(), STATUS, PROCESSOR_PURE_PYTHON="1"))
    assert set(status) == set(native.COMPILED)
    assert all(s == "source: PROCESSOR_PURE_PYTHON is set" for s in status.values())
    origin = run_in(
        Path.cwd(), "import processor.core.codec as c; print(c.__file__)", PROCESSOR_PURE_PYTHON="1"
    )
    assert origin == str(native.source_path("processor.core.codec"))


def test_a_missing_or_broken_manifest_vouches_for_nothing(tmp_path: Path) -> None:
    assert native.read_manifest(tmp_path / "absent.json") == {}
    (tmp_path / "broken.json").write_text("{not json")
    assert native.read_manifest(tmp_path / "broken.json") == {}
    (tmp_path / "odd.json").write_text('{"modules": [1, 2]}')
    assert native.read_manifest(tmp_path / "odd.json") == {}


@needs_build
def test_a_hash_that_differs_sends_the_module_to_its_source() -> None:
    manifest = native.read_manifest()
    assert native.from_source(native.COMPILED, manifest, pure=False) == {}
    changed = {**manifest, "processor.core.codec": "0" * 64}
    assert list(native.from_source(native.COMPILED, changed, pure=False)) == [
        "processor.core.codec"
    ]


@needs_build
def test_an_extension_the_list_does_not_name_never_runs(tmp_path: Path) -> None:
    """A build left beside a module that ``COMPILED`` no longer lists (here: the codec's
    extension under the name of ``core/model``, which CPython would fail to import) is
    passed over for the module's source."""
    shutil.copytree(
        Path(native.__file__).parent,
        tmp_path / "processor",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    extension = native.compiled_path("processor.core.codec")
    assert extension is not None
    suffix = extension.name.removeprefix("codec")
    shutil.copy(extension, tmp_path / "processor" / "core" / f"model{suffix}")
    origin = run_in(tmp_path, "import processor.core.model as m; print(m.__file__)")
    assert origin == str(tmp_path / "processor" / "core" / "model.py")
    assert native.strays() == {}, "this checkout has a stray build"
