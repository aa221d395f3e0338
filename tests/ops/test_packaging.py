"""The wheel is what the Dockerfile installs: build it, install it into a fresh venv with
the locked dependencies, and run the installed ``processor`` from outside the checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

from processor import __version__, native
from tests.ops.test_dockerfile import BUILD_LOCK, dockerignore_excludes
from tests.ops.tools import REPO, output, run


def project_version() -> str:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert isinstance(version, str)
    return version


def test_package_version_matches_pyproject() -> None:
    assert __version__ == project_version()


def test_changelog_has_a_section_for_this_version() -> None:
    text = (REPO / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog")
    assert "keepachangelog.com" in text
    versions = re.findall(r"^## \[([^\]]+)\]", text, re.MULTILINE)
    assert versions, "no version sections"
    assert project_version() in versions


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(REPO)], timeout=300
    )
    assert result.returncode == 0, output(result)
    (built,) = out.glob("processor-*.whl")
    return built


def test_wheel_carries_the_package_and_the_migrations(wheel: Path) -> None:
    assert wheel.name.startswith(f"processor-{project_version()}-py3-none-any")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read(
            f"processor-{project_version()}.dist-info/entry_points.txt"
        ).decode()
    assert "processor/_schema/migrations/0001_positions.sql" in names
    for sql in (REPO / "schema").rglob("*.sql"):
        packed = "processor/_schema/" + sql.relative_to(REPO / "schema").as_posix()
        assert packed in names, f"{sql} is not in the wheel"
    # Every tracked source file of the package (code and data, e.g. simulator tracks);
    # not the local mypyc build (ops/compile_native.py), which is built for this machine.
    for path in (REPO / "processor").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and not native_build(path):
            assert path.relative_to(REPO).as_posix() in names, f"{path} is not in the wheel"
    assert "processor = processor.cli:main" in entry_points
    assert not any(n.startswith(("tests/", "bench/", "ops/")) for n in names)


def native_build(path: Path) -> bool:
    return path.suffix == ".so" or path.name == native.MANIFEST.name


def locked_venv(where: Path, *locks: Path, bytecode: bool = True) -> Path:
    """A fresh venv with ``locks`` installed as the Dockerfile does (hash-checked, wheels
    only); its python. ``bytecode=False`` skips pip's .pyc compile (half the install
    time), for a venv whose Python code runs only a few times (PYTHONDONTWRITEBYTECODE
    is set here, so imports would never write them)."""
    venv.create(where, with_pip=True)
    python = where / "bin" / "python"
    files = [arg for lock in locks for arg in ("-r", str(lock))]
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    flags = ["install", "--quiet", "--require-hashes", "--only-binary=:all:"]
    if not bytecode:
        flags.insert(1, "--no-compile")
    installed = run([*pip, *flags, *files], timeout=600)
    assert installed.returncode == 0, output(installed)
    return python


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's /opt/venv: requirements.lock only. Each test installs its own wheel
    into it (``--force-reinstall``), so they share the ~20 s install, not their state."""
    return locked_venv(tmp_path_factory.mktemp("runtime") / "venv", REPO / "requirements.lock")


def install_wheel(python: Path, wheel: Path) -> None:
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    installed = run([*pip, "--no-deps", "--force-reinstall", str(wheel)])
    assert installed.returncode == 0, output(installed)


def test_wheel_installs_with_the_locked_dependencies_and_runs(
    wheel: Path, runtime_venv: Path, tmp_path: Path
) -> None:
    """The runtime lock (hash-checked), the wheel without dependencies: the Dockerfile's
    builder stage, minus Docker and the compiler."""
    python = runtime_venv
    env_dir = python.parent.parent
    install_wheel(python, wheel)
    broken = run([str(python), "-m", "pip", "check"])
    assert broken.returncode == 0, f"the runtime lock misses a dependency:\n{output(broken)}"

    processor = str(env_dir / "bin" / "processor")
    # Run from an empty directory, so nothing is imported from the checkout.
    version = run([processor, "--version"], cwd=tmp_path)
    assert version.returncode == 0, output(version)
    assert version.stdout.strip() == f"processor {project_version()}"
    # A wheel built anywhere but the image's builder is pure Python, whatever the
    # checkout has compiled (ops/hatch_native.py).
    pure = run([processor, "native"], cwd=tmp_path)
    assert pure.returncode == 0, output(pure)
    assert pure.stdout.count(": source: not compiled") == len(native.COMPILED), pure.stdout
    migrate_help = run([processor, "migrate", "--help"], cwd=tmp_path)
    assert migrate_help.returncode == 0, output(migrate_help)
    assert "migrations" in migrate_help.stdout
    where = run(
        [
            str(python),
            "-c",
            "from processor.core.migrate import migrations_dir; print(migrations_dir())",
        ],
        cwd=tmp_path,
    )
    assert where.returncode == 0, output(where)
    migrations = Path(where.stdout.strip())
    assert migrations.is_relative_to(env_dir), f"migrations found outside the venv: {migrations}"
    assert (migrations / "0001_positions.sql").is_file()


def test_the_image_builder_compiles_the_hot_path_into_the_same_wheel(
    wheel: Path, runtime_venv: Path, tmp_path: Path
) -> None:
    """The Dockerfile's builder, minus Docker: only the files .dockerignore lets into the
    build context; the runtime venv from requirements.lock, the backend and the compiler
    from ops/build.lock and ops/native.lock (hash-checked, wheels only, no build
    isolation); mypyc over the context's sources, then the wheel asked to carry them. A
    file the context misses, a lock that cannot build, or a wheel that would run from
    source fails here, not in the first real image build. About a minute."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here (the image's builder installs gcc)")
    context = tmp_path / "context"
    tops = [p for p in REPO.iterdir() if p.name not in {".venv", ".git"}]
    for path in [f for top in tops for f in (top.rglob("*") if top.is_dir() else [top])]:
        relative = path.relative_to(REPO).as_posix()
        if path.is_file() and not dockerignore_excludes(relative):
            target = context / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    assert (context / BUILD_LOCK.relative_to(REPO)).is_file()
    assert not list(context.rglob("*.so")), "a host build got into the build context"

    runtime = runtime_venv
    build = locked_venv(
        tmp_path / "build",
        context / "ops" / "build.lock",
        context / "ops" / "native.lock",
        bytecode=False,
    )
    # -O0: the same build flow as the image's, in half the time (the -O3 build's
    # behaviour is what tests/unit/test_native.py holds to the sources)
    compiled = run(
        [
            str(build),
            "ops/compile_native.py",
            "--python-executable",
            str(runtime),
            "--opt-level",
            "0",
        ],
        cwd=context,
        timeout=600,
    )
    assert compiled.returncode == 0, output(compiled)
    out = tmp_path / "wheels"
    pip_wheel = [str(build), "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    native_env = {**os.environ, "PROCESSOR_NATIVE_WHEEL": "1"}
    built = run([*pip_wheel, "--wheel-dir", str(out), str(context)], env=native_env, timeout=300)
    assert built.returncode == 0, output(built)
    (image_wheel,) = out.glob("processor-*.whl")
    assert "-py3-none-any" not in image_wheel.name, "a wheel with extensions is platform-tagged"
    with zipfile.ZipFile(image_wheel) as a, zipfile.ZipFile(wheel) as b:
        names = a.namelist()
        assert "processor/_schema/directus/race_tables.sql" in names
        # the same wheel as the checkout's, plus the build: each module, its mypyc
        # runtime and the manifest
        extra = sorted(set(names) - set(b.namelist()))
        assert sorted(set(b.namelist()) - set(names)) == [], "the image wheel lacks files"
        assert all(native_build(Path(n)) for n in extra), extra
        for module in native.COMPILED:
            stem = module.replace(".", "/")
            assert [n for n in extra if n.startswith(stem + ".")], f"{module} is not compiled"
            assert [n for n in extra if n.startswith(stem + "__mypyc.")], module
        assert native.MANIFEST.name in {Path(n).name for n in extra}

    install_wheel(runtime, image_wheel)
    # From an empty directory: the installed package, not the context's.
    plain_env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    status = run(
        [str(runtime.parent / "processor"), "native", "--require-compiled"],
        cwd=tmp_path,
        env=plain_env,
    )
    assert status.returncode == 0, output(status)
    assert status.stdout.count(": compiled") == len(native.COMPILED), status.stdout

    # A source changed after the compile: the image build fails instead of shipping
    # extensions that would run from source.
    codec = context / "processor" / "core" / "codec.py"
    codec.write_text(codec.read_text() + "\n# edited after the compile\n")
    refused = run([*pip_wheel, "--wheel-dir", str(tmp_path / "stale"), str(context)],
                  env=native_env, timeout=300)  # fmt: skip
    assert refused.returncode != 0
    assert "processor.core.codec" in output(refused), output(refused)
