"""The container image: static checks of the Dockerfile, and its build stage run for real.

The test machines have no container engine, so the build stage is replayed on the
host instead. The build context that .dockerignore leaves is copied to a temporary
directory, and the stage's COPY instructions copy from it. Each RUN runs under
/bin/sh with the stage's ENV, whose absolute paths are moved below the temporary
directory, and with the host's python3 as `python`. The resulting venv is the one
that the runtime stage copies. Its console script is started from outside the
repository, so that it cannot import the source tree.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from prometheus_client.parser import text_string_to_metric_families

from exporter import __version__
from exporter.config import parse_args
from tests.servers import REPO, free_port, http_get

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
LOCK = REPO / "requirements.lock"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CONSOLE_SCRIPT = "storm-termination-exporter"

# Debian releases that a python image tag can name. A tag without one, such as
# 3.11.17-slim, moves to the next Debian release when that becomes the default.
DEBIAN_RELEASES = ("bullseye", "bookworm", "trixie")
PINNED_TAG = re.compile(r"^\d+\.\d+\.\d+-slim-(?P<release>[a-z]+)$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")

# Packages that compile code. None of them may be installed in the runtime stage.
BUILD_TOOLS = (
    "build-essential", "gcc", "g++", "cpp", "clang", "make", "cmake", "libc6-dev",
    "python3-dev", "pkg-config", "autoconf", "automake",
)

# Output of pip when it could not download from the package registry.
REGISTRY_ERRORS = (
    "NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
    "Network is unreachable", "No matching distribution found", "Could not find a version",
    "Connection refused", "Read timed out",
)

RUN_STEP_TIMEOUT = 300.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


# Dockerfile parsing.


@dataclass
class Instruction:
    keyword: str
    arguments: str
    line: int

    def exec_form(self) -> list[str] | None:
        """Return the JSON array of an exec-form instruction, or None for shell form."""
        if not self.arguments.startswith("["):
            return None
        value = json.loads(self.arguments)
        assert isinstance(value, list) and all(isinstance(item, str) for item in value), (
            f"line {self.line}: {self.keyword} exec form must be a JSON array of strings"
        )
        return value


@dataclass
class Stage:
    image: str
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [item for item in self.instructions if item.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            values.update(parse_pairs(instruction, values))
        return values

    def arg_defaults(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ARG"):
            name, _, default = instruction.arguments.partition("=")
            values[name.strip()] = default.strip().strip('"')
        return values

    def labels(self) -> dict[str, str]:
        """Return the LABEL values with the stage's ARG defaults substituted."""
        values: dict[str, str] = {}
        for instruction in self.all("LABEL"):
            values.update(parse_pairs(instruction, self.arg_defaults()))
        return values


def parse_instructions(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions, joining continuation lines.

    Comment lines and empty lines inside a continued instruction are dropped,
    as Docker's parser does. Only the default escape character (backslash) is
    supported.
    """
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#"):
            if not instructions and not pending:
                directive = re.match(r"#\s*escape\s*=", stripped)
                assert directive is None, f"line {number}: the escape parser directive is not supported here"
            continue
        if not stripped:
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        joined = " ".join(part.strip() for part in pending)
        pending = []
        keyword, _, arguments = joined.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
    assert not pending, f"line {start}: the last instruction ends with a continuation backslash"
    return instructions


def expand(text: str, variables: dict[str, str]) -> str:
    """Substitute $NAME and ${NAME} as Docker does in FROM, ENV and COPY."""
    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, "")

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, text)


def parse_pairs(instruction: Instruction, variables: dict[str, str]) -> dict[str, str]:
    """Parse the key=value pairs of ENV or LABEL. A value may refer to earlier ENV values."""
    words = shlex.split(instruction.arguments)
    if words and "=" not in words[0]:
        # The legacy form `ENV KEY value with spaces`.
        return {words[0]: expand(" ".join(words[1:]), variables)}
    pairs: dict[str, str] = {}
    for word in words:
        key, separator, value = word.partition("=")
        assert separator, f"line {instruction.line}: {word!r} is not KEY=VALUE"
        pairs[key] = expand(value, {**variables, **pairs})
    return pairs


def parse_stages(text: str) -> list[Stage]:
    instructions = parse_instructions(text)
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = [word for word in instruction.arguments.split() if not word.startswith("--")]
            image = expand(words[0], global_args)
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            assert len(words) in (1, 3), f"line {instruction.line}: cannot parse FROM {instruction.arguments}"
            stages.append(Stage(image, name, instruction.line))
        elif not stages:
            assert instruction.keyword == "ARG", (
                f"line {instruction.line}: only ARG may come before the first FROM"
            )
            name, _, default = instruction.arguments.partition("=")
            global_args[name.strip()] = default.strip().strip('"')
        else:
            stages[-1].instructions.append(instruction)
    return stages


def split_image(reference: str) -> tuple[str, str | None, str | None]:
    """Split `repository[:tag][@digest]` into its parts."""
    reference, _, digest = reference.partition("@")
    last_slash = reference.rfind("/")
    colon = reference.rfind(":")
    if colon > last_slash:
        return reference[:colon], reference[colon + 1:], digest or None
    return reference, None, digest or None


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_stages(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def build_stage(stages) -> Stage:
    copied = copy_from_sources(stages[-1])
    assert len(copied) == 1, f"the runtime stage must copy from exactly one stage, not {copied}"
    stage_name = copied[0]
    for stage in stages[:-1]:
        if stage.name == stage_name:
            return stage
    raise AssertionError(f"COPY --from={stage_name}: no stage of that name")


@pytest.fixture(scope="module")
def runtime_stage(stages) -> Stage:
    return stages[-1]


def copy_from_sources(stage: Stage) -> list[str]:
    names = []
    for instruction in stage.all("COPY"):
        for word in instruction.arguments.split():
            if word.startswith("--from="):
                names.append(word.removeprefix("--from="))
    return sorted(set(names))


def shell_commands(stage: Stage) -> list[tuple[int, str]]:
    """Return every RUN of the stage as (line, command text)."""
    commands = []
    for instruction in stage.all("RUN"):
        argv = instruction.exec_form()
        commands.append((instruction.line, shlex.join(argv) if argv is not None else instruction.arguments))
    return commands


def pip_calls(text: str) -> list[list[str]]:
    """Return the words of every pip command in one shell command line."""
    calls = []
    for part in re.split(r"&&|\|\||;|\|", text):
        words = shlex.split(part)
        for index, word in enumerate(words):
            if word.endswith("/pip") or word == "pip" or (word == "-m" and words[index + 1:index + 2] == ["pip"]):
                calls.append(words[index:])
                break
    return calls


def pip_subcommand(words: list[str]) -> str:
    """Return the pip subcommand (install, wheel, ...) after pip and its global options."""
    index = 2 if words[0] == "-m" else 1
    while index < len(words) and words[index].startswith("-"):
        if words[index] == "--python":
            index += 1  # the option's value
        index += 1
    return words[index] if index < len(words) else ""


# Static checks of the Dockerfile.


def test_every_from_pins_exact_tag(stages):
    names = {stage.name for stage in stages if stage.name}
    for stage in stages:
        if stage.image in names:
            continue  # a stage built earlier in this file
        repository, tag, digest = split_image(stage.image)
        assert tag is not None, f"line {stage.line}: FROM {stage.image} has no tag"
        assert tag != "latest", f"line {stage.line}: FROM {stage.image} uses latest"
        match = PINNED_TAG.match(tag)
        assert match, f"line {stage.line}: tag {tag!r} is not MAJOR.MINOR.PATCH-slim-<debian release>"
        assert match["release"] in DEBIAN_RELEASES, f"line {stage.line}: {match['release']!r} is no Debian release"
        if digest is not None:
            assert DIGEST.match(digest), f"line {stage.line}: digest {digest!r} is not sha256:<64 hex>"
        assert repository in ("python", "docker.io/library/python"), f"line {stage.line}: {repository}"


def test_no_latest_anywhere():
    text = DOCKERFILE.read_text()
    assert ":latest" not in text
    assert "@latest" not in text


def test_stages_share_base_image(build_stage, runtime_stage):
    # The venv's bin/python is a link to the build stage's interpreter path.
    assert build_stage.image == runtime_stage.image


def test_no_add_from_url(stages):
    for stage in stages:
        for instruction in stage.all("ADD"):
            sources = [word for word in instruction.arguments.split() if not word.startswith("--")][:-1]
            for source in sources:
                assert not re.match(r"^(https?|git|ssh)://|^git@", source), (
                    f"line {instruction.line}: ADD from a URL: {source}"
                )


def test_entrypoint_is_console_script(runtime_stage):
    entrypoint = runtime_stage.last("ENTRYPOINT")
    assert entrypoint is not None, "the runtime stage has no ENTRYPOINT"
    argv = entrypoint.exec_form()
    assert argv is not None, f"line {entrypoint.line}: ENTRYPOINT must use exec form, not a shell"
    assert argv == [CONSOLE_SCRIPT]
    assert PYPROJECT["project"]["scripts"][CONSOLE_SCRIPT] == "exporter.cli:main"


def test_no_shell_or_init_in_front(runtime_stage):
    entrypoint = runtime_stage.last("ENTRYPOINT")
    argv = entrypoint.exec_form() or []
    for wrapper in ("sh", "bash", "tini", "dumb-init", "/bin/sh", "/sbin/tini"):
        assert wrapper not in argv, f"line {entrypoint.line}: {wrapper} in front of the exporter"
    # A shell-form CMD would reach the exporter as the arguments "/bin/sh -c ...".
    for command in runtime_stage.all("CMD"):
        assert command.exec_form() is not None, f"line {command.line}: CMD in shell form"


def test_console_script_on_path(build_stage, runtime_stage):
    venv = build_stage.env()["VENV"]
    copies = [item for item in runtime_stage.all("COPY") if "--from=" in item.arguments]
    assert len(copies) == 1
    words = [word for word in copies[0].arguments.split() if not word.startswith("--")]
    assert words == [venv, venv], f"line {copies[0].line}: the runtime stage must copy only the venv, to the same path"
    path = runtime_stage.env()["PATH"].split(":")
    assert path[0] == f"{venv}/bin"


def test_runtime_user_numeric_non_root(runtime_stage):
    user = runtime_stage.last("USER")
    assert user is not None, "the runtime stage has no USER"
    uid, _, gid = user.arguments.partition(":")
    assert uid.isdigit(), f"line {user.line}: USER {user.arguments} must be numeric"
    assert int(uid) != 0
    assert gid.isdigit(), f"line {user.line}: the group of USER {user.arguments} must be numeric"
    assert int(gid) != 0


def test_runtime_stage_installs_nothing(runtime_stage):
    for line, command in shell_commands(runtime_stage):
        for manager in ("apt-get install", "apt install", "apk add", "dpkg -i"):
            assert manager not in command, f"line {line}: the runtime stage installs packages: {command}"
        for tool in BUILD_TOOLS:
            assert not re.search(rf"(^|\s){re.escape(tool)}(\s|$)", command), f"line {line}: {tool}"
        for words in pip_calls(command):
            assert pip_subcommand(words) == "uninstall", f"line {line}: pip in the runtime stage: {command}"
    for instruction in runtime_stage.all("COPY"):
        assert "--from=" in instruction.arguments, (
            f"line {instruction.line}: the runtime stage copies from the build context"
        )


def test_pip_never_keeps_cache(stages):
    for stage in stages:
        cache_off = stage.env().get("PIP_NO_CACHE_DIR") in ("1", "true", "yes", "on")
        for line, command in shell_commands(stage):
            for words in pip_calls(command):
                if pip_subcommand(words) not in ("install", "wheel", "download"):
                    continue
                assert cache_off or "--no-cache-dir" in words, f"line {line}: pip without --no-cache-dir"


def test_pip_installs_are_pinned(build_stage):
    build_requires = [Requirement(text) for text in PYPROJECT["build-system"]["requires"]]
    pinned: dict[str, str] = {}
    for line, command in shell_commands(build_stage):
        for words in pip_calls(command):
            if pip_subcommand(words) != "install":
                continue
            arguments = words[words.index("install") + 1:]
            if "--requirement" in arguments or "-r" in arguments:
                assert "--no-deps" in arguments, f"line {line}: a locked install needs --no-deps"
                assert "requirements.lock" in arguments, f"line {line}: install from requirements.lock"
                wheels = [word for word in arguments if word.endswith(".whl")]
                assert len(wheels) == 1, f"line {line}: the project must be installed from its wheel"
                continue
            for word in arguments:
                if word.startswith("-"):
                    continue
                requirement = Requirement(word)
                assert len(requirement.specifier) == 1, f"line {line}: {word} is not pinned with =="
                (specifier,) = requirement.specifier
                assert specifier.operator == "==", f"line {line}: {word} is not pinned with =="
                pinned[canonicalize_name(requirement.name)] = specifier.version
    for requirement in build_requires:
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"the build stage does not pin {requirement.name}"
        assert requirement.specifier.contains(pinned[name]), (
            f"{requirement.name}=={pinned[name]} does not meet pyproject's build requirement {requirement}"
        )


def test_build_stage_has_no_literal_paths(build_stage):
    # The replay below can move only the paths that ENV names.
    for line, command in shell_commands(build_stage):
        for word in shlex.split(command):
            value = word.partition("=")[2] if word.startswith("--") else word
            assert not value.startswith("/"), f"line {line}: absolute path {value} not named by ENV"


def test_expose_matches_default_port(runtime_stage):
    exposed = [word for item in runtime_stage.all("EXPOSE") for word in item.arguments.split()]
    assert exposed == [str(parse_args([]).listen_port)]


def test_oci_labels(runtime_stage):
    labels = runtime_stage.labels()
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.title"] == PYPROJECT["project"]["name"]
    assert labels["org.opencontainers.image.description"] == PYPROJECT["project"]["description"]
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]
    assert labels["org.opencontainers.image.base.name"] in (
        runtime_stage.image, f"docker.io/library/{runtime_stage.image}",
    )


def test_stop_signal_is_sigterm(runtime_stage):
    stop = runtime_stage.last("STOPSIGNAL")
    assert stop is None or stop.arguments == "SIGTERM"


# The lock file.


def read_lock() -> dict[str, tuple[str, str]]:
    """Return canonical name -> (name as written, version) for every requirements.lock line."""
    pins: dict[str, tuple[str, str]] = {}
    for number, raw in enumerate(LOCK.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+!-]*)", line)
        assert match, f"requirements.lock line {number}: {line!r} is not NAME==VERSION"
        name = canonicalize_name(match[1])
        assert name not in pins, f"requirements.lock line {number}: {match[1]} pinned twice"
        pins[name] = (match[1], match[2])
    return pins


def test_lock_pins_every_line():
    pins = read_lock()
    assert pins, "requirements.lock pins nothing"
    assert canonicalize_name(PYPROJECT["project"]["name"]) not in pins


def test_lock_covers_pyproject_dependencies():
    pins = read_lock()
    for text in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"requirements.lock does not pin {requirement.name}"
        assert requirement.specifier.contains(pins[name][1]), (
            f"{requirement.name}=={pins[name][1]} in requirements.lock does not meet {requirement}"
        )


def test_lock_has_no_test_or_bench_dependencies():
    pins = read_lock()
    for extra, requirements in PYPROJECT["project"]["optional-dependencies"].items():
        for text in requirements:
            name = canonicalize_name(Requirement(text).name)
            assert name not in pins, f"requirements.lock pins {name} of the {extra} extra"


# The build context.


def pattern_regex(pattern: str) -> re.Pattern:
    """Translate a .dockerignore pattern into a regex over slash-separated paths."""
    out = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out += "(.*/)?"
            index += 3
        elif pattern.startswith("**", index):
            out += ".*"
            index += 2
        elif pattern[index] == "*":
            out += "[^/]*"
            index += 1
        elif pattern[index] == "?":
            out += "[^/]"
            index += 1
        elif pattern[index] == "[":
            end = pattern.index("]", index)
            out += pattern[index:end + 1]
            index = end + 1
        else:
            out += re.escape(pattern[index])
            index += 1
    return re.compile(out)


def read_dockerignore() -> list[tuple[bool, re.Pattern, str]]:
    """Return (is exception, regex, pattern) for every .dockerignore line, in order."""
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((exception, pattern_regex(pattern), pattern))
    return rules


def ignored(path: str, rules) -> bool:
    """Apply the rules as Docker does: the last rule that matches the path or a parent wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[:count]) for count in range(1, len(parts) + 1)]
    result = False
    for exception, regex, _ in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            result = not exception
    return result


def may_include_below(directory: str, rules) -> bool:
    """Tell whether an exception rule may re-include a file below an ignored directory."""
    parts = directory.split("/")
    for exception, _, pattern in rules:
        if not exception:
            continue
        segments = pattern.split("/")
        for index, part in enumerate(parts):
            if index >= len(segments) or segments[index] == "**":
                return True
            if not fnmatchcase(part, segments[index]):
                break
        else:
            return True
    return False


def build_context(destination: Path) -> list[str]:
    """Copy the files that .dockerignore leaves in the build context, and return their paths."""
    rules = read_dockerignore()
    copied = []
    for root, directories, files in os.walk(REPO):
        relative_root = os.path.relpath(root, REPO)
        prefix = "" if relative_root == "." else relative_root + "/"
        directories[:] = [
            name for name in directories
            if not ignored(prefix + name, rules) or may_include_below(prefix + name, rules)
        ]
        for name in files:
            path = prefix + name
            if ignored(path, rules):
                continue
            target = destination / path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / path, target)
            copied.append(path)
    return sorted(copied)


def test_dockerignore_keeps_sources_only():
    rules = read_dockerignore()
    for path in ("pyproject.toml", "README.md", "requirements.lock", "exporter/cli.py",
                 "exporter/sources/netlink.py"):
        assert not ignored(path, rules), f"{path} is missing from the build context"
    for path in (".git/HEAD", ".venv/bin/python", "tests/test_image.py", "bench/run.py",
                 "deploy/base/prometheusrule.yaml", "exporter/__pycache__/cli.cpython-311.pyc",
                 "Dockerfile", "storm_termination_exporter.egg-info/PKG-INFO"):
        assert ignored(path, rules), f"{path} is in the build context"


def test_build_stage_copies_only_context_files(build_stage):
    rules = read_dockerignore()
    for instruction in build_stage.all("COPY"):
        words = [word for word in instruction.arguments.split() if not word.startswith("--")]
        for source in words[:-1]:
            assert (REPO / source).exists(), f"line {instruction.line}: COPY {source}: not found"
            assert not ignored(source.rstrip("/"), rules), (
                f"line {instruction.line}: COPY {source}, but .dockerignore leaves it out"
            )


# The build stage, replayed on the host.


def host_path() -> list[str]:
    """Return the entries of PATH without the bin directory of the venv running the tests."""
    own_bin = Path(sys.prefix, "bin").resolve()
    return [entry for entry in os.environ.get("PATH", "").split(os.pathsep)
            if entry and Path(entry).resolve() != own_bin]


@dataclass
class Installed:
    root: Path
    venv: Path
    wheel: Path
    context: list[str]
    python_version: str  # MAJOR.MINOR of the interpreter, the same as the image's

    @property
    def script(self) -> Path:
        return self.venv / "bin" / CONSOLE_SCRIPT

    def env(self) -> dict[str, str]:
        """Return an environment without the test's venv or any path to the source tree.

        As in the image, Python writes no bytecode, so the venv stays as built.
        """
        env = {key: value for key, value in os.environ.items()
               if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PATH"] = os.pathsep.join([str(self.venv / "bin"), *host_path()])
        return env

    def run(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(argv), cwd=self.root / "run", env=self.env(), capture_output=True, text=True,
            timeout=timeout, check=False,
        )


def host_python() -> tuple[Path, str]:
    """Return the real executable and MAJOR.MINOR of the python3 on PATH, outside the test's venv."""
    found = shutil.which("python3", path=os.pathsep.join(host_path()))
    assert found is not None, "no python3 on PATH to replay the build stage with"
    probe = subprocess.run(
        [found, "-c", "import sys; print(sys.executable); print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True, timeout=30,
    )
    executable, version = probe.stdout.split()
    return Path(executable), version


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def replay_failure(line: int, command: str, result: subprocess.CompletedProcess) -> str:
    output = f"--- stdout (end) ---\n{tail(result.stdout)}\n--- stderr (end) ---\n{tail(result.stderr)}"
    if any(marker in result.stdout + result.stderr for marker in REGISTRY_ERRORS):
        return (
            f"Dockerfile line {line}: pip could not download a pinned package (exit "
            f"{result.returncode}). The test installs them from the package registry (PyPI), as "
            f"CI can: check the network and pip's index configuration, and that the pinned "
            f"version exists.\ncommand: {command}\n{output}"
        )
    return f"Dockerfile line {line} failed with exit {result.returncode}:\ncommand: {command}\n{output}"


def replay_copy(instruction: Instruction, context: Path, workdir: Path) -> None:
    words = [word for word in instruction.arguments.split() if not word.startswith("--")]
    *sources, destination = words
    target = workdir / destination
    into_directory = destination.endswith("/") or len(sources) > 1
    for source in sources:
        matches = sorted(context.glob(source.rstrip("/"))) or [context / source.rstrip("/")]
        for match in matches:
            assert match.exists(), f"line {instruction.line}: COPY {source}: not in the build context"
            if match.is_dir():
                # Docker copies the contents of a directory, not the directory itself.
                shutil.copytree(match, target, dirs_exist_ok=True)
                continue
            file_target = target / match.name if into_directory else target
            file_target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(match, file_target)


def replay_build_stage(stage: Stage, root: Path) -> tuple[dict[str, str], str]:
    """Run the stage's COPY and RUN instructions below ``root``.

    Return the stage's ENV with its paths as moved, and the Python version used.
    """
    python, version = host_python()
    _, tag, _ = split_image(stage.image)
    image_version = ".".join(tag.split(".")[:2])
    assert version == image_version, (
        f"python3 on this machine is {version}, the image's Python is {image_version}: "
        "the replay would not test the image's interpreter"
    )
    tools = root / "tools"
    tools.mkdir()
    for name in ("python", "python3"):
        (tools / name).symlink_to(python)

    context = root / "context"
    context.mkdir()
    build_context(context)

    def moved(path: str) -> Path:
        return root / "fs" / path.lstrip("/")

    # The base image sets none of the variables that change how Python runs.
    # PYTHONDONTWRITEBYTECODE from the host, for one, would keep the build stage
    # from writing the bytecode that the image gets.
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("PYTHON") and key != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join([str(tools), *host_path()])
    stage_env: dict[str, str] = {}
    workdir = moved("/")
    for instruction in stage.instructions:
        keyword = instruction.keyword
        if keyword == "ENV":
            for key, value in parse_pairs(instruction, stage_env).items():
                stage_env[key] = str(moved(value)) if value.startswith("/") else value
        elif keyword == "WORKDIR":
            if instruction.arguments.startswith("/"):
                workdir = moved(instruction.arguments)
            else:
                workdir = workdir / instruction.arguments
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            assert "--from=" not in instruction.arguments, f"line {instruction.line}: COPY --from in the build stage"
            replay_copy(instruction, context, workdir)
        elif keyword == "RUN":
            argv = instruction.exec_form()
            assert not instruction.arguments.startswith("--"), (
                f"line {instruction.line}: RUN flags are not supported by the replay"
            )
            command = argv if argv is not None else ["/bin/sh", "-c", instruction.arguments]
            result = subprocess.run(
                command, cwd=workdir, env={**env, **stage_env}, capture_output=True, text=True,
                timeout=RUN_STEP_TIMEOUT, check=False,
            )
            if result.returncode != 0:
                pytest.fail(replay_failure(instruction.line, instruction.arguments, result), pytrace=False)
        elif keyword in ("ARG", "LABEL"):
            continue
        else:
            pytest.fail(f"line {instruction.line}: the replay does not support {keyword}", pytrace=False)
    return stage_env, version


@pytest.fixture(scope="module")
def installed(build_stage) -> Installed:
    root = Path(tempfile.mkdtemp(prefix="storm-exporter-image-"))
    try:
        stage_env, python_version = replay_build_stage(build_stage, root)
        (root / "run").mkdir()
        wheels = sorted(Path(stage_env["WHEELS"]).glob("*.whl"))
        assert len(wheels) == 1, f"the build stage built {wheels}, expected one wheel"
        context = sorted(str(path.relative_to(root / "context"))
                         for path in (root / "context").rglob("*") if path.is_file())
        yield Installed(root, Path(stage_env["VENV"]), wheels[0], context, python_version)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def source_modules() -> set[str]:
    return {
        str(path.relative_to(REPO))
        for path in (REPO / "exporter").rglob("*.py")
        if "__pycache__" not in path.parts
    }


def wheel_version(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        for line in archive.read(metadata).decode().splitlines():
            if line.startswith("Version: "):
                return line.removeprefix("Version: ")
    raise AssertionError(f"{wheel.name} has no Version in its METADATA")


def test_context_is_sources_only(installed):
    for path in installed.context:
        assert path in ("pyproject.toml", "README.md", "requirements.lock") or path.startswith("exporter/"), path


def test_wheel_has_every_module_no_tests(installed):
    with zipfile.ZipFile(installed.wheel) as archive:
        names = archive.namelist()
    modules = {name for name in names if name.endswith(".py")}
    assert modules == source_modules()
    for name in names:
        top = name.split("/")[0]
        assert top == "exporter" or top.endswith(".dist-info"), f"{name} does not belong in the wheel"
    for package in {str(path.parent.relative_to(REPO)) for path in (REPO / "exporter").rglob("__init__.py")}:
        assert f"{package}/__init__.py" in names


def test_wheel_version_and_entry_point(installed):
    assert wheel_version(installed.wheel) == __version__
    with zipfile.ZipFile(installed.wheel) as archive:
        (entry_points,) = [name for name in archive.namelist() if name.endswith(".dist-info/entry_points.txt")]
        text = archive.read(entry_points).decode()
    assert f"{CONSOLE_SCRIPT} = exporter.cli:main" in text


def test_venv_holds_exactly_the_lock(installed):
    probe = installed.run(
        str(installed.venv / "bin" / "python"), "-c",
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))",
    )
    assert probe.returncode == 0, probe.stderr
    found = {canonicalize_name(name): version for name, version in json.loads(probe.stdout).items()}
    project = canonicalize_name(PYPROJECT["project"]["name"])
    assert found.pop(project) == __version__
    expected = {name: version for name, (_, version) in read_lock().items()}
    assert found == expected
    for tool in ("pip", "setuptools", "wheel"):
        assert tool not in found


def test_venv_bytecode_only_for_imported_modules(installed):
    site_packages = installed.venv / "lib" / f"python{installed.python_version}" / "site-packages"
    tag = "cpython-" + installed.python_version.replace(".", "")
    for module in ("exporter/app", "exporter/kubewatch", "exporter/diagreport", "exporter/simulate"):
        directory, _, name = module.rpartition("/")
        assert (site_packages / directory / "__pycache__" / f"{name}.{tag}.pyc").is_file(), module
    assert (site_packages / "kubernetes" / "client" / "__pycache__" / f"__init__.{tag}.pyc").is_file()
    # None of the --help runs imports the asyncio client of the kubernetes package.
    assert list((site_packages / "kubernetes" / "aio").rglob("*.pyc")) == []


def test_every_module_imports_from_venv(installed):
    # exporter.__main__ runs the command when imported, so it is left out.
    script = (
        "import importlib, json, pkgutil, exporter\n"
        "names = [info.name for info in pkgutil.walk_packages(exporter.__path__, 'exporter.')\n"
        "         if info.name != 'exporter.__main__']\n"
        "files = {name: importlib.import_module(name).__file__ for name in names}\n"
        "files['exporter'] = exporter.__file__\n"
        "print(json.dumps(files))\n"
    )
    result = installed.run(str(installed.venv / "bin" / "python"), "-c", script)
    assert result.returncode == 0, result.stderr
    files = json.loads(result.stdout)
    expected = {
        path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for path in source_modules()
    } - {"exporter.__main__"}
    assert set(files) == expected
    site_packages = installed.venv.resolve()
    for name, path in files.items():
        assert Path(path).resolve().is_relative_to(site_packages), f"{name} was imported from {path}"


def test_help_exits_zero(installed):
    result = installed.run(str(installed.script), "--help")
    assert result.returncode == 0, result.stderr
    assert "--web.listen-address" in result.stdout
    assert "--events.source" in result.stdout


def test_diagnose_json_runs(installed):
    result = installed.run(str(installed.script), "diagnose", "--format=json")
    assert result.returncode in (0, 1), result.stderr
    document = json.loads(result.stdout)
    assert isinstance(document["workers"], list)
    # Exit status 1 means a serious finding, and so does the document's "serious" field.
    assert document["serious"] == (result.returncode == 1)


def test_entrypoint_serves_and_stops_on_sigterm(installed):
    port = free_port()
    address = f"127.0.0.1:{port}"
    log_path = installed.root / "exporter.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(installed.script), f"--web.listen-address={address}", "--events.source=poll",
             "--kubernetes=off"],
            cwd=installed.root / "run", env=installed.env(), stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        ready = False
        while time.monotonic() < deadline and process.poll() is None:
            try:
                ready = http_get(f"http://{address}/readyz", timeout=1)[0] == 200
            except OSError:
                ready = False
            if ready:
                break
            time.sleep(0.1)
        output = log_path.read_text(errors="replace")
        assert process.poll() is None, f"the exporter exited with {process.returncode}:\n{output}"
        assert ready, f"/readyz not 200 after {START_TIMEOUT}s:\n{output}"

        status, _, body = http_get(f"http://{address}/metrics")
        assert status == 200
        build_info = [
            sample
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
            if sample.name == "storm_termination_exporter_build_info"
        ]
        assert len(build_info) == 1, f"build_info samples: {build_info}"
        assert build_info[0].labels == {"version": wheel_version(installed.wheel)}
        assert build_info[0].value == 1.0

        process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the exporter did not exit within {STOP_TIMEOUT}s of SIGTERM:\n"
                        f"{log_path.read_text(errors='replace')}")
        output = log_path.read_text(errors="replace")
        assert status == 0, output
        assert "Received SIGTERM; stopping" in output
        assert "Stopped" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
