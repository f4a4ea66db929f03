"""The image itself: who it runs as, what it carries, how it is labelled, its CLI."""

from __future__ import annotations

import json
import re
import tomllib

import pytest

from tests.container.conftest import REPO_ROOT, Image

SERVICE_UID = 10001
# The target is 200 MB (docs/container.md has the current size and where it
# goes); this ceiling catches a regression such as debug info, library sources
# or the package manager coming back, with a little room for dependency updates.
SIZE_CEILING_MB = 210

COMPILERS_AND_BUILD_TOOLS = (
    "gcc",
    "cc",
    "c++",
    "g++",
    "clang",
    "ld",
    "as",
    "make",
    "strip",
    "pip",
    "pip3",
)


def _python(run_once, script: str, **run: object) -> str:  # noqa: ANN001
    """What ``python3 -c script`` prints in the image (``run``: run_once's options,
    its hardened flags by default); it must succeed."""
    result = run_once("-c", script, entrypoint="python3", **run)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _project_version() -> str:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_runs_as_a_numeric_non_root_user(image: Image, run_once) -> None:
    # Numeric, so that Kubernetes can verify runAsNonRoot without a passwd lookup.
    assert image.config["User"] == f"{SERVICE_UID}:{SERVICE_UID}"
    # Without --user: the image's own default.
    result = run_once(
        "-c",
        "import os; print(os.getuid(), os.getgid())",
        entrypoint="python3",
        flags=("--network", "host"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(SERVICE_UID), str(SERVICE_UID)]


def test_has_no_compilers_build_tools_or_pip(run_once) -> None:
    script = (
        "import json, shutil; "
        f"print(json.dumps({{t: shutil.which(t) for t in {COMPILERS_AND_BUILD_TOOLS!r}}}))"
    )
    out = _python(run_once, script)
    found = {tool: path for tool, path in json.loads(out).items() if path}
    assert found == {}, f"the final image carries build tools: {found}"


def test_libraries_are_bytecode_only_and_bhiv_keeps_its_sources(run_once) -> None:
    # hack/image/bytecode-only.py: third-party modules as .pyc beside where their
    # source was; BHIV's own tracebacks keep their source lines.
    script = (
        "import json, pathlib, sysconfig; "
        "site = pathlib.Path(sysconfig.get_path('purelib')); "
        "py = [p.relative_to(site).parts[0] for p in site.rglob('*.py')]; "
        "import sqlalchemy.orm, fastapi, pydantic; "
        "print(json.dumps({'libraries': sorted(set(py) - {'bhiv'}), 'bhiv': py.count('bhiv') > 0, "
        "'sqlalchemy': sqlalchemy.orm.__file__.endswith('.pyc')}))"
    )
    out = _python(run_once, script)
    assert json.loads(out) == {"libraries": [], "bhiv": True, "sqlalchemy": True}


def test_has_no_package_manager_and_dpkg_says_so(run_once) -> None:
    # Purged in the runtime stage, with dpkg: its database (what image scanners
    # read) lists exactly what is installed.
    script = (
        "import json, shutil, subprocess; "
        "q = subprocess.run(['dpkg-query', '-W', '-f=${Package}\\n'], capture_output=True, text=True); "
        "print(json.dumps({'tools': [t for t in ('apt-get', 'apt', 'perl', 'gpgv') if shutil.which(t)], "
        "'packages': sorted({'apt', 'perl-base', 'gpgv', 'libc6'} & set(q.stdout.split()))}))"
    )
    out = _python(run_once, script)
    assert json.loads(out) == {"tools": [], "packages": ["libc6"]}


def test_carries_no_build_inputs_and_cannot_change_its_own_code(run_once) -> None:
    # The CA bundle and the sources are builder-stage inputs; only the venv is
    # copied over, owned by root.
    script = (
        "import json, os; "
        "print(json.dumps({"
        "'build_ca': os.path.exists('/tmp/build-ca'), 'src': os.path.exists('/src'), "
        "'venv_writable': os.access('/opt/bhiv/lib', os.W_OK), "
        "'bin_writable': os.access('/opt/bhiv/bin', os.W_OK)}))"
    )
    # Without --read-only or --tmpfs: the image's own /tmp, as built.
    out = _python(run_once, script, flags=("--network", "host"))
    assert json.loads(out) == {
        "build_ca": False,
        "src": False,
        "venv_writable": False,
        "bin_writable": False,
    }


def test_oci_labels(image: Image) -> None:
    labels = image.labels
    assert labels["org.opencontainers.image.title"] == "BHIV Core"
    assert labels["org.opencontainers.image.version"] == _project_version()
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert re.fullmatch(
        r"[0-9a-f]{40}(-dirty)?|unknown", labels["org.opencontainers.image.revision"]
    )
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ|unknown", labels["org.opencontainers.image.created"]
    )
    assert labels["org.opencontainers.image.base.name"]


def test_entrypoint_and_environment(image: Image) -> None:
    assert image.config["Entrypoint"] == ["bhiv"]
    env = image.env
    # Listens on every interface of its pod; the tests override it, since with
    # host networking that would be every interface of this machine.
    assert env["BHIV_HOST"] == "0.0.0.0"  # noqa: S104
    # The only writable place under a read-only root filesystem.
    assert env["BHIV_DATA_DIR"].startswith("/tmp/")  # noqa: S108
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith("/opt/bhiv/bin:")


def test_size_stays_under_its_ceiling(image: Image) -> None:
    size_mb = image.size_bytes / 1e6
    assert size_mb < SIZE_CEILING_MB, (
        f"{image.ref} is {size_mb:.0f} MB (ceiling {SIZE_CEILING_MB} MB)"
    )


def test_bhiv_help(run_once) -> None:
    result = run_once("--help")
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout


def _cli_commands(help_text: str) -> set[str]:
    # Typer's rich help lists one command per row of the "Commands" panel: "│ name  text │".
    commands, in_panel = set(), False
    for line in help_text.splitlines():
        if "Commands" in line:
            in_panel = True
        elif in_panel and (match := re.match(r"^\W*([a-z][a-z0-9-]*)\s{2,}", line)):
            commands.add(match.group(1))
    return commands


def test_operator_help(run_once) -> None:
    # The operator runs from the same image as `bhiv operator`; checked once the
    # CLI lists that command.
    commands = _cli_commands(run_once("--help").stdout)
    if "operator" not in commands:
        pytest.skip(
            "`bhiv operator` is not in this image's CLI yet "
            f"(commands: {', '.join(sorted(commands))})"
        )
    result = run_once("operator", "--help")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Usage: bhiv operator" in result.stdout


def test_kubernetes_access_is_lightkube_not_the_official_client(run_once) -> None:
    # bhiv.kube (lightkube) is the one Kubernetes client BHIV uses; Kopf has its own
    # aiohttp session. The official client (59 MB) is not in the image.
    script = (
        "import bhiv.kube, bhiv.operator.kube, kopf, importlib.util as u; "
        "print(u.find_spec('kubernetes'))"
    )
    out = _python(run_once, script)
    assert out.strip() == "None"


def test_installs_exactly_the_locked_versions(run_once) -> None:
    # The Dockerfile installs requirements.lock with --require-hashes: every
    # distribution in the image but bhiv-core itself is pinned there, at that version.
    locked = {
        name.lower().replace("_", "-"): version
        for name, version in re.findall(
            r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)",
            (REPO_ROOT / "requirements.lock").read_text(),
            re.M,
        )
    }
    script = (
        "import importlib.metadata as m; "
        "print('\\n'.join(f\"{d.metadata['Name']}=={d.version}\" for d in m.distributions()))"
    )
    out = _python(run_once, script)
    installed = dict(line.lower().replace("_", "-").split("==") for line in out.split())
    installed.pop("bhiv-core")
    unlocked = {n: v for n, v in installed.items() if locked.get(n) != v}
    assert unlocked == {}, f"in the image but not at their locked version: {unlocked}"


def test_counts_cl100k_tokens_with_no_network(run_once) -> None:
    # The ranks file ships inside the bhiv package; tiktoken's download is never tried.
    script = (
        "import tiktoken.load as l\n"
        "def offline(*a, **k): raise OSError('no network')\n"
        "l.read_file = offline\n"
        "from bhiv.llm.tokens import counter\n"
        "c = counter('cl100k_base')\n"
        "print(c.method, c.text('hello world'))\n"
    )
    out = _python(run_once, script)
    assert out.split() == ["cl100k_base", "2"]
