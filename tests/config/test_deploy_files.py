"""The deployment files (deploy/docker-compose.yml, deploy/systemd/) against the code they start.

Fast and offline (PyYAML, which drf-spectacular requires, and the standard library): every Celery
queue that a task is routed to or that beat sends to is consumed by a compose service and by a
systemd unit; exactly one beat in each; every command names this project's real entry points
(config/gunicorn.py, config.wsgi:application, ``celery -A config``, manage.py); every environment
variable given to the application is one config/settings.py or config/gunicorn.py reads (recorded
by running them, so names built at run time count), or one of the few that libraries read.
`make deploy-check` adds `docker compose config` and `systemd-analyze verify` (deploy/check.sh).

Each check is a function that returns what is wrong, so that the tests at the end show it finds
each kind of mistake in a copy of the real files with that mistake made.
"""

from __future__ import annotations

import ast
import json
import os
import runpy
import shlex
from pathlib import Path
from unittest import mock

import pytest
import yaml
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
UNITS = DEPLOY / "systemd"
ENV_EXAMPLE = UNITS / "lookalike.env.example"
INSTALL_ROOT = "/opt/lookalike"  # where the units expect the checkout (with its .venv)
IMAGE_DOCKERFILE = "deploy/Dockerfile"

# Read by libraries, not by config/settings.py: allowed in the application's environment.
LIBRARY_VARIABLES = {
    "AWS_ACCESS_KEY_ID": "boto3: the S3 storages' credentials",
    "AWS_SECRET_ACCESS_KEY": "boto3: the S3 storages' credentials",
    "KERAS_HOME": "Keras: where it caches the ImageNet weights",
}
# What every process of the application must be given in production.
REQUIRED_VARIABLES = ("DJANGO_ENV", "SECRET_KEY", "ALLOWED_HOSTS", "DATABASE_URL", "REDIS_URL",
                      "MEDIA_STORAGE_BACKEND", "MODELS_STORAGE_BACKEND", "MODELS_ROOT")


# --------------------------------------------------------------------------- reading the files
def compose_services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def app_services(services: dict[str, dict]) -> dict[str, dict]:
    """The services that run this project's image (built from deploy/Dockerfile)."""
    return {name: spec for name, spec in services.items()
            if isinstance(spec.get("build"), dict) and spec["build"].get("dockerfile") == IMAGE_DOCKERFILE}


def argv_of(command) -> list[str]:
    return list(command) if isinstance(command, list) else shlex.split(command)


def environment_of(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {key: str(value) for key, value in environment.items()}


def unit_directives(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file, in order (keys such as ExecStart may repeat)."""
    found, section = [], ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif "=" in line:
            key, value = line.split("=", 1)
            found.append((section, key.strip(), value.strip()))
    return found


def unit_files() -> list[Path]:
    return sorted(UNITS.glob("*.service"))


def unit_exec_starts(paths: list[Path]) -> dict[str, list[str]]:
    return {path.name: shlex.split(value) for path in paths
            for section, key, value in unit_directives(path) if (section, key) == ("Service", "ExecStart")}


def env_file_variables(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an EnvironmentFile (a value in single quotes is taken as it is)."""
    found = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            found[key.strip()] = value[1:-1] if value[:1] == value[-1:] == "'" else value
    return found


# --------------------------------------------------------------------------- the checks
def celery_invocation(argv: list[str]) -> tuple[str | None, str | None, list[str]]:
    """(the -A app, the subcommand, the arguments after it) of a ``celery`` command line, or Nones."""
    if not argv or Path(argv[0]).name != "celery":
        return None, None, []
    app, rest = None, argv[1:]
    while rest:
        token = rest.pop(0)
        if token in ("-A", "--app"):
            app = rest.pop(0) if rest else None
        elif token.startswith("--app="):
            app = token.split("=", 1)[1]
        elif not token.startswith("-"):
            return app, token, rest
    return app, None, []


def option_value(args: list[str], *names: str) -> str | None:
    for index, token in enumerate(args):
        if token in names and index + 1 < len(args):
            return args[index + 1]
        for name in names:
            if name.startswith("--") and token.startswith(name + "="):
                return token.split("=", 1)[1]
    return None


def queues_consumed(commands: dict[str, list[str]]) -> dict[str, set[str]]:
    """Queue -> the services or units whose worker consumes it (no -Q: the default queue only)."""
    consumed: dict[str, set[str]] = {}
    for name, argv in commands.items():
        _, subcommand, args = celery_invocation(argv)
        if subcommand == "worker":
            queues = option_value(args, "-Q", "--queues") or settings.CELERY_TASK_DEFAULT_QUEUE
            for queue in queues.split(","):
                consumed.setdefault(queue.strip(), set()).add(name)
    return consumed


def queues_needed() -> set[str]:
    """Every queue a task is routed to, and the queue of every task beat sends."""
    routes = settings.CELERY_TASK_ROUTES
    needed = {route["queue"] for route in routes.values()}
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        needed.add(routes.get(entry["task"], {}).get("queue", settings.CELERY_TASK_DEFAULT_QUEUE))
    return needed


def queue_problems(commands: dict[str, list[str]]) -> list[str]:
    consumed = queues_consumed(commands)
    return [f"no worker consumes the queue {queue!r}" for queue in sorted(queues_needed() - set(consumed))]


def beat_problems(commands: dict[str, list[str]]) -> list[str]:
    beats = []
    for name, argv in commands.items():
        _, subcommand, args = celery_invocation(argv)
        if subcommand == "beat" or (subcommand == "worker" and ("-B" in args or "--beat" in args)):
            beats.append(name)
    return [] if len(beats) == 1 else [f"{len(beats)} beats ({', '.join(sorted(beats)) or 'none'}), not exactly one"]


def _defines(path: Path, name: str) -> bool:
    """Does the module at ``path`` assign ``name`` at its top level?"""
    if not path.is_file():
        return False
    tree = ast.parse(path.read_text())
    return any(isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
               for node in tree.body)


def entry_point_problems(argv: list[str], *, install_root: str | None = None) -> list[str]:
    """What is wrong with one process's command line. It must be gunicorn with config/gunicorn.py
    serving config.wsgi:application, ``celery -A config worker|beat``, or ``python manage.py
    migrate``; under ``install_root`` (the units) the programs are that checkout's .venv's."""
    def local(path: str) -> Path:
        if install_root and path.startswith(install_root + "/"):
            path = path[len(install_root) + 1:]
        return ROOT / path

    program = Path(argv[0]).name if argv else ""
    if install_root and argv and argv[0] != f"{install_root}/.venv/bin/{program}":
        return [f"{argv[0]} is not a program of {install_root}/.venv"]
    if program == "gunicorn":
        config_file, app = option_value(argv, "-c", "--config"), argv[-1]
        problems = []
        if config_file is None or local(config_file) != ROOT / "config" / "gunicorn.py" or not local(config_file).is_file():
            problems.append(f"gunicorn's -c is {config_file!r}, not config/gunicorn.py")
        module, _, attribute = app.partition(":")
        if module != "config.wsgi" or not _defines(ROOT / "config" / "wsgi.py", attribute or "application"):
            problems.append(f"gunicorn serves {app!r}, not config.wsgi:application")
        return problems
    if program == "celery":
        app, subcommand, _ = celery_invocation(argv)
        problems = [] if app == "config" and _defines(ROOT / "config" / "celery.py", "app") else [
            f"celery -A {app!r} is not this project's app (-A config)"]
        return problems + ([] if subcommand in ("worker", "beat") else [f"celery {subcommand!r}: not worker or beat"])
    if program.startswith("python") and len(argv) >= 3:
        if local(argv[1]) == ROOT / "manage.py" and argv[2] == "migrate":
            return []
    return [f"{shlex.join(argv)!r} is none of this project's entry points"]


_RECORDED: dict[str, set[str]] = {}


class _RecordingEnviron(dict):
    """os.environ's stand-in while a settings file runs: remembers every name asked for."""

    def __init__(self, values, seen: set[str]):
        super().__init__(values)
        self.seen = seen

    def get(self, key, default=None):
        self.seen.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.seen.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.seen.add(key)
        return super().__contains__(key)


def variables_read(path: Path, **environ: str) -> set[str]:
    """The environment variables that running the Python file ``path`` asks for."""
    seen: set[str] = set()
    with mock.patch.object(os, "environ", _RecordingEnviron({**os.environ, **environ}, seen)):
        runpy.run_path(str(path), run_name="deploy_files_check")
    return seen


def known_variables() -> set[str]:
    """What config/settings.py reads (locally and with DJANGO_ENV=production), config/gunicorn.py
    reads, and the libraries' own."""
    if not _RECORDED:
        _RECORDED["settings"] = variables_read(ROOT / "config" / "settings.py") | variables_read(
            ROOT / "config" / "settings.py", DJANGO_ENV="production", SECRET_KEY="k" * 50, DEBUG="0")
        _RECORDED["gunicorn"] = variables_read(ROOT / "config" / "gunicorn.py")
    return _RECORDED["settings"] | _RECORDED["gunicorn"] | set(LIBRARY_VARIABLES)


def variable_problems(names) -> list[str]:
    known = known_variables()
    return [f"{name} is read by neither config/settings.py nor config/gunicorn.py" for name in sorted(set(names) - known)]


def required_variable_problems(where: str, environment: dict[str, str]) -> list[str]:
    problems = [f"{where}: {name} is not set" for name in REQUIRED_VARIABLES if name not in environment]
    if environment.get("DJANGO_ENV", "production") != "production":
        problems.append(f"{where}: DJANGO_ENV is {environment['DJANGO_ENV']!r}, not production")
    for name in ("MEDIA_STORAGE_OPTIONS", "MODELS_STORAGE_OPTIONS"):
        try:
            json.loads(environment.get(name, "{}"))
        except ValueError:
            problems.append(f"{where}: {name} is not JSON")
    return problems


def compose_commands(services: dict[str, dict]) -> dict[str, list[str]]:
    return {name: argv_of(spec["command"]) for name, spec in app_services(services).items() if "command" in spec}


def worker_ping_problems(services: dict[str, dict]) -> list[str]:
    """A worker service's healthcheck pings its own node (-n NAME@%h -> -d NAME@$HOSTNAME)."""
    problems = []
    for name, argv in compose_commands(services).items():
        _, subcommand, args = celery_invocation(argv)
        if subcommand != "worker":
            continue
        node = (option_value(args, "-n", "--hostname") or "").split("@")[0]
        test = " ".join(argv_of((services[name].get("healthcheck") or {}).get("test") or []))
        if not node or f"inspect ping -d {node}@$$HOSTNAME" not in test:
            problems.append(f"{name}: its healthcheck does not ping its node {node or '(no -n)'}@<host>")
    return problems


_SECONDS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def duration_seconds(text) -> float:
    """Seconds of a compose duration ("30s", "1m30s", "10m") or a systemd time span ("30", "15min",
    "2min 30s")."""
    import re

    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", str(text).strip())
    if not parts or any(unit not in _SECONDS for _, unit in parts):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(number) * _SECONDS[unit] for number, unit in parts)


def web_stop_problems(compose_web: dict, web_unit: Path) -> list[str]:
    """The supervisors wait longer than gunicorn lets in-flight requests finish (graceful_timeout)."""
    graceful = runpy.run_path(str(ROOT / "config" / "gunicorn.py"))["graceful_timeout"]
    waits = {"compose web's stop_grace_period": duration_seconds(compose_web.get("stop_grace_period", "10s")),
             f"{web_unit.name}'s TimeoutStopSec": duration_seconds(next(
                 (v for _, k, v in unit_directives(web_unit) if k == "TimeoutStopSec"), "90"))}
    return [f"{where} ({wait:g} s) is not longer than gunicorn's graceful_timeout ({graceful} s)"
            for where, wait in waits.items() if wait <= graceful]


# --------------------------------------------------------------------------- the real files
def test_the_compose_file_and_the_units_are_there():
    services = compose_services()
    assert {"postgres", "redis", "minio", "migrate", "web", "worker-features", "worker-training", "beat"} <= set(services)
    assert {"lookalike-web.service", "lookalike-worker-features.service", "lookalike-worker-training.service",
            "lookalike-worker-default.service", "lookalike-beat.service"} <= {p.name for p in unit_files()}
    assert len(app_services(services)) >= 6  # the check below reads the application's services


def test_every_queue_is_consumed_in_compose_and_in_the_units():
    assert queues_needed() >= {"features", "training", "celery"}
    assert queue_problems(compose_commands(compose_services())) == []
    assert queue_problems(unit_exec_starts(unit_files())) == []


def test_exactly_one_beat_in_compose_and_in_the_units():
    services = compose_services()
    assert beat_problems(compose_commands(services)) == []
    assert beat_problems(unit_exec_starts(unit_files())) == []
    (beat,) = [name for name, argv in compose_commands(services).items() if celery_invocation(argv)[1] == "beat"]
    assert services[beat].get("deploy", {}).get("replicas", 1) == 1


def test_every_command_names_this_projects_entry_points():
    problems = [f"{name}: {p}" for name, argv in compose_commands(compose_services()).items()
                for p in entry_point_problems(argv)]
    problems += [f"{name}: {p}" for name, argv in unit_exec_starts(unit_files()).items()
                 for p in entry_point_problems(argv, install_root=INSTALL_ROOT)]
    assert problems == []
    assert set(unit_exec_starts(unit_files())) == {p.name for p in unit_files()}  # every unit starts something


def test_the_applications_variables_are_the_settings_own_and_complete():
    services = app_services(compose_services())
    units_env = {value.split("=", 1)[0] for path in unit_files() for section, key, value in unit_directives(path)
                 if key == "Environment"}
    example = env_file_variables(ENV_EXAMPLE)
    names = set(units_env) | set(example) | {n for spec in services.values() for n in environment_of(spec)}
    assert variable_problems(names) == []
    problems = required_variable_problems(ENV_EXAMPLE.name, example)
    problems += [p for name, spec in services.items() for p in required_variable_problems(name, environment_of(spec))]
    assert problems == []
    for path in unit_files():
        assert ("Service", "EnvironmentFile", "/etc/lookalike/lookalike.env") in unit_directives(path), path.name


def test_health_checks_use_the_probes_and_ping_their_own_worker():
    services = compose_services()
    assert "/readyz" in " ".join(argv_of(services["web"]["healthcheck"]["test"]))
    assert (DEPLOY / "probe.py").is_file()
    assert worker_ping_problems(services) == []


def test_the_web_servers_supervisors_wait_out_its_graceful_stop():
    assert web_stop_problems(compose_services()["web"], UNITS / "lookalike-web.service") == []


def test_the_deployment_guide_names_every_service_and_unit():
    guide = (ROOT / "docs" / "deployment.md").read_text()
    missing = [name for name in [*compose_services(), *(p.name for p in UNITS.iterdir())] if name not in guide]
    assert missing == []


# --------------------------------------------------------------------------- the checks find mistakes
def _without(services: dict, name: str) -> dict:
    return {key: value for key, value in services.items() if key != name}


def test_a_queue_that_no_worker_consumes_is_found():
    services = compose_services()
    assert queue_problems(compose_commands(_without(services, "worker-training"))) == [
        "no worker consumes the queue 'training'"]
    units = unit_exec_starts(unit_files())
    del units["lookalike-worker-default.service"]
    assert queue_problems(units) == ["no worker consumes the queue 'celery'"]


def test_a_second_beat_or_none_is_found():
    commands = compose_commands(compose_services())
    assert beat_problems({**commands, "beat-2": commands["beat"]}) == ["2 beats (beat, beat-2), not exactly one"]
    assert beat_problems({**commands, "worker-training": [*commands["worker-training"], "-B"]})
    assert beat_problems(compose_commands(_without(compose_services(), "beat"))) == ["0 beats (none), not exactly one"]


@pytest.mark.parametrize("old, new", [
    ("config.wsgi:application", "config.wsgi_old:application"),
    ("config/gunicorn.py", "config/gunicorn_old.py"),
    ("config.wsgi:application", "config.wsgi:app"),
])
def test_a_wrong_web_entry_point_is_found(old, new):
    argv = [token.replace(old, new) for token in compose_commands(compose_services())["web"]]
    assert entry_point_problems(argv)
    unit_argv = [token.replace(old, new) for token in unit_exec_starts(unit_files())["lookalike-web.service"]]
    assert entry_point_problems(unit_argv, install_root=INSTALL_ROOT)


def test_a_wrong_celery_app_or_program_is_found():
    argv = unit_exec_starts(unit_files())["lookalike-worker-features.service"]
    assert entry_point_problems([token.replace("config", "catalog") if token == "config" else token for token in argv],
                                install_root=INSTALL_ROOT) == ["celery -A 'catalog' is not this project's app (-A config)"]
    assert entry_point_problems(["/usr/bin/celery", *argv[1:]], install_root=INSTALL_ROOT)
    assert entry_point_problems(["python", "-m", "http.server"])


def test_a_variable_the_settings_do_not_read_is_found():
    assert variable_problems({"DATABASE_URL", "MEDIA_STORAGE_OPTIONS", "SECURE_SSL_REDIRECT", "WEB_WORKERS"}) == []
    assert variable_problems({"DATABASE_URL", "MODELS_STORAGE_OPTION"}) == [
        "MODELS_STORAGE_OPTION is read by neither config/settings.py nor config/gunicorn.py"]
    problems = required_variable_problems("x", {"DJANGO_ENV": "local", "MODELS_STORAGE_OPTIONS": "{bucket_name: x}"})
    assert {"x: SECRET_KEY is not set", "x: DJANGO_ENV is 'local', not production",
            "x: MODELS_STORAGE_OPTIONS is not JSON"} <= set(problems)


def test_a_worker_healthcheck_that_pings_another_node_is_found():
    services = compose_services()
    training = dict(services["worker-training"], healthcheck=services["worker-features"]["healthcheck"])
    assert worker_ping_problems({**services, "worker-training": training}) == [
        "worker-training: its healthcheck does not ping its node training@<host>"]


def test_a_stop_grace_shorter_than_gunicorns_is_found():
    assert [duration_seconds(t) for t in ("30s", "1m30s", "10m", "15min", "2min 30s", "20")] == [30, 90, 600, 900, 150, 20]
    web = dict(compose_services()["web"], stop_grace_period="5s")
    (problem,) = web_stop_problems(web, UNITS / "lookalike-web.service")
    assert problem.startswith("compose web's stop_grace_period (5 s) is not longer than gunicorn's graceful_timeout")
