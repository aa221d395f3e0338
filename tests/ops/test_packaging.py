"""The wheel is what the Dockerfile installs: build it, install it into a fresh venv with
the locked dependencies, and run the installed ``processor`` from outside the checkout.
"""

from __future__ import annotations

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


def test_wheel_installs_with_the_locked_dependencies_and_runs(wheel: Path, tmp_path: Path) -> None:
    """A fresh venv, the runtime lock (hash-checked), the wheel without dependencies:
    exactly the Dockerfile's builder stage, minus Docker. About 20 s (pip, from cache)."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    locked = run([*pip, "--require-hashes", "-r", str(REPO / "requirements.lock")], timeout=600)
    assert locked.returncode == 0, output(locked)
    installed = run([*pip, "--no-deps", str(wheel)], timeout=300)
    assert installed.returncode == 0, output(installed)
    broken = run([str(python), "-m", "pip", "check"])
    assert broken.returncode == 0, f"the runtime lock misses a dependency:\n{output(broken)}"

    processor = str(env_dir / "bin" / "processor")
    # Run from an empty directory, so nothing is imported from the checkout.
    version = run([processor, "--version"], cwd=tmp_path)
    assert version.returncode == 0, output(version)
    assert version.stdout.strip() == f"processor {project_version()}"
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


def test_the_image_builds_the_same_wheel_from_its_context_and_locked_backend(
    wheel: Path, tmp_path: Path
) -> None:
    """The Dockerfile's builder, minus Docker: only the files .dockerignore lets into the
    build context, the backend from ops/build.lock (hash-checked), no build isolation.
    A file the context misses (the force-included schema/, say) or a locked backend that
    cannot build the wheel fails here, not in the first real image build."""
    context = tmp_path / "context"
    tops = [p for p in REPO.iterdir() if p.name not in {".venv", ".git"}]
    for path in [f for top in tops for f in (top.rglob("*") if top.is_dir() else [top])]:
        relative = path.relative_to(REPO).as_posix()
        if path.is_file() and not dockerignore_excludes(relative):
            target = context / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    assert (context / BUILD_LOCK.relative_to(REPO)).is_file()
    build_env = tmp_path / "build-venv"
    venv.create(build_env, with_pip=True)
    pip = [str(build_env / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    backend = run(
        [
            *pip,
            "install",
            "--quiet",
            "--require-hashes",
            "--only-binary=:all:",
            "-r",
            str(context / "ops" / "build.lock"),
        ],
        timeout=300,
    )
    assert backend.returncode == 0, output(backend)
    out = tmp_path / "wheels"
    built = run(
        [
            *pip,
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(context),
        ],
        timeout=300,
    )
    assert built.returncode == 0, output(built)
    (image_wheel,) = out.glob("processor-*.whl")
    with zipfile.ZipFile(image_wheel) as a, zipfile.ZipFile(wheel) as b:
        assert "processor/_schema/directus/race_tables.sql" in a.namelist()
        assert sorted(a.namelist()) == sorted(b.namelist())
