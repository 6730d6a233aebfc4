"""Job files: every mistake is reported with its line, field path and why; good files load
to the expected JobSpec; units; the JSON Schema in docs/ and the examples stay in step."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import msgspec
import pytest

from colony.shared import jobspec
from colony.shared.jobspec import (
    IN_PLACE,
    Constraint,
    HealthCheck,
    JobResources,
    JobSpec,
    RestartPolicy,
    SpecChange,
    SpecError,
    Task,
    UpdateStrategy,
    check_name,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
DATA = Path(__file__).parent / "data" / "jobs"


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        jobspec.parse(textwrap.dedent(text), "job.yaml")
    assert str(caught.value) == "\n".join(map(str, caught.value.problems))
    return [str(p) for p in caught.value.problems]


def spec(text: str) -> JobSpec:
    return jobspec.parse(textwrap.dedent(text), "job.yaml").spec


JOB = "name: web\ntask:\n  command: python3\n"
"""The smallest valid job (lines 1-3); cases below add to it from line 4."""


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("replica: 3", "job.yaml:4: replica: unknown field; did you mean replicas?"),
        ("cpu: 1", "job.yaml:4: cpu: unknown field; did you mean resources.cpu?"),
        (
            "zzz: 1",
            "job.yaml:4: zzz: unknown field (a job has: name, driver, task, replicas, "
            "resources, ports, constraints, distinct_nodes, spread, restart, checks, update, "
            "shutdown_delay, meta)",
        ),
        ("replicas: -1", "job.yaml:4: replicas: -1 is too small: must be at least 0"),
        ("replicas: 10001", "job.yaml:4: replicas: 10001 is too large: must be at most 10000"),
        ("replicas: three", 'job.yaml:4: replicas: expected a whole number, got "three"'),
        ("replicas: 1.5", "job.yaml:4: replicas: expected a whole number, got 1.5"),
        ("replicas: [1]", "job.yaml:4: replicas: expected a whole number, got a list"),
        (
            "constraints:\n  - {label: zone, value: ~}",
            "job.yaml:5: constraints[0].value: has no value: expected a string or a list",
        ),
        (
            "driver: dokcer",
            'job.yaml:4: driver: unknown driver "dokcer"; did you mean docker? '
            "(docker, microvm, process, sim)",
        ),
        (
            "resources:\n  memory: 12 gigs",
            'job.yaml:5: resources.memory: "12 gigs" is not a size '
            "(write 512MiB, 2GiB, 1.5GB or bytes)",
        ),
        (
            "resources: {memory: 64}",
            "job.yaml:4: resources.memory: 64 bytes is less than 1MiB; did you mean 64MiB?",
        ),
        (
            "resources: {memory: 2PiB}",
            "job.yaml:4: resources.memory: 2PiB is too large: must be at most 1PiB",
        ),
        (
            "resources: {memory: 0}",
            "job.yaml:4: resources.memory: 0 is too small: must be more than 0",
        ),
        (
            "resources: {memory: 1.5e+9}",
            "job.yaml:4: resources.memory: 1.5e+9 is not a size: "
            "a plain number is whole bytes (or write 512MiB)",
        ),
        (
            "resources: {cpu: 2000}",
            "job.yaml:4: resources.cpu: 2000 is too large: must be at most 1024",
        ),
        ("resources: {cpu: 0}", "job.yaml:4: resources.cpu: 0 is too small: must be more than 0"),
        (
            "resources: {cpu: 5 cores}",
            'job.yaml:4: resources.cpu: "5 cores" is not a number of cores (write 0.5, 2 or 500m)',
        ),
        (
            "resources: {cpu: 0.0001}",
            "job.yaml:4: resources.cpu: 0.0001 is less than 0.001",
        ),
        (
            "resources: {memory: '1.5'}",
            'job.yaml:4: resources.memory: "1.5" is not a size '
            "(write 512MiB, 2GiB, 1.5GB or bytes)",
        ),
        (
            "resources: {memory: 100KiB}",
            "job.yaml:4: resources.memory: 100KiB is less than 1MiB",
        ),
        ("resources: {cpu: .inf}", "job.yaml:4: resources.cpu: must be a finite number, got inf"),
        ("resources: 1GiB", 'job.yaml:4: resources: expected a mapping (cpu, memory), got "1GiB"'),
        (
            "ports: [http, web, http]",
            "job.yaml:4: ports[2]: http is declared twice (also ports[0])",
        ),
        (
            "ports: [HTTP]",
            'job.yaml:4: ports[0]: "HTTP" is not valid: a port name is lowercase '
            "letters, digits and '_', starting with a letter, at most 31 characters",
        ),
        (
            "constraints:\n  - {label: zone, op: '~', value: eu}",
            'job.yaml:5: constraints[0].op: unknown operator "~" (!=, =, in, not_in)',
        ),
        (
            "constraints:\n  - {label: zone, op: ==, value: eu}",
            'job.yaml:5: constraints[0].op: unknown operator "=="; did you mean =? '
            "(!=, =, in, not_in)",
        ),
        (
            "constraints:\n  - {label: zone, op: in, value: eu}",
            "job.yaml:5: constraints[0].value: op in needs a list of values, like [a, b]",
        ),
        (
            "constraints:\n  - label: zone\n    value: [eu, us]",
            "job.yaml:6: constraints[0].value: op = needs one value; for a list use in or not_in",
        ),
        (
            "constraints:\n  - {label: zone, op: not_in, value: []}",
            "job.yaml:5: constraints[0].value: needs at least one value",
        ),
        (
            "constraints:\n  - {label: 'my zone', value: eu}",
            'job.yaml:5: constraints[0].label: "my zone" is not a node label key '
            "(like zone or example.com/rack: "
            "letters, digits, '-', '_' and '.')",
        ),
        (
            "constraints:\n  - {label: zone, value: 'eu west'}",
            'job.yaml:5: constraints[0].value: "eu west" can never match: not a node label value',
        ),
        (
            "constraints:\n  - {label: zone}",
            "job.yaml:5: constraints[0].value: is required but missing",
        ),
        ("constraints: {label: zone}", "job.yaml:4: constraints: expected a list, got a mapping"),
        (
            "spread: 'a b'",
            'job.yaml:4: spread: "a b" is not a node label key (like zone or example.com/rack: '
            "letters, digits, '-', '_' and '.')",
        ),
        ("distinct_nodes: 'yes'", 'job.yaml:4: distinct_nodes: expected true or false, got "yes"'),
        (
            "restart:\n  delay: 10s\n  max_delay: 2s",
            "job.yaml:6: restart.max_delay: 2s is less than delay (10s)",
        ),
        ("restart:\n  delay: 1m", "job.yaml:4: restart.max_delay: 30s is less than delay (1m)"),
        (
            "restart: {delay: 5 minutes}",
            'job.yaml:4: restart.delay: "5 minutes" is not a '
            "duration (write 500ms, 5s, 5m, 1h30m or seconds)",
        ),
        (
            "restart: {interval: 0}",
            "job.yaml:4: restart.interval: 0s is too small: must be more than 0s",
        ),
        ("restart: {interval: 1000h}", "job.yaml:4: restart.interval: 1000h is more than 720h"),
        (
            "restart: {attempts: -2}",
            "job.yaml:4: restart.attempts: -2 is too small: must be at least 0",
        ),
        (
            "restart: {backoff: 0.5}",
            "job.yaml:4: restart.backoff: 0.5 is too small: must be at least 1",
        ),
        (
            "restart: {then: retry}",
            'job.yaml:4: restart.then: unknown choice "retry" (fail, reschedule)',
        ),
        ("meta: [a]", "job.yaml:4: meta: expected a mapping, got a list"),
        ("meta: {team: null}", "job.yaml:4: meta.team: has no value: expected a string"),
        ("name: other", "job.yaml:4: name: is written twice (first on line 1)"),
        ("task: {command: x}", "job.yaml:4: task: is written twice (first on line 2)"),
        ("when: !!timestamp nope", 'job.yaml:4: when: "nope" is not a valid timestamp'),
        ("x: !custom 1", "job.yaml:4: x: could not determine a constructor for the tag '!custom'"),
    ],
)
def test_each_mistake_is_reported_at_its_line_and_path(extra: str, expected: str) -> None:
    found = problems(JOB + extra + "\n")
    assert expected in found, "\n".join(found)


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("command: ''", "job.yaml:3: task.command: must not be empty"),
        ('command: "a\\0b"', "job.yaml:3: task.command: contains a NUL character"),
        ("args: x", 'job.yaml:3: task.args: expected a list, got "x"'),
        ("args: [a, [b]]", "job.yaml:3: task.args[1]: expected a string, got a list"),
        (
            "args: ['${NOPE}']",
            "job.yaml:3: task.args[0]: ${NOPE} is not set for the instance (set it under task.env)",
        ),
        (
            "args: ['${COLONY_NODES}']",
            "job.yaml:3: task.args[0]: ${COLONY_NODES} is not set for "
            "the instance; did you mean COLONY_NODE? (set it under task.env)",
        ),
        (
            "args: ['--port=${PORT}']",
            "job.yaml:3: task.args[0]: ${PORT}: the job declares no port; add one under ports",
        ),
        (
            "env: {'9lives': x}",
            'job.yaml:3: task.env."9lives": is not a variable name '
            "(letters, digits and _, not starting with a digit)",
        ),
        (
            "env: {COLONY_NODE: x}",
            "job.yaml:3: task.env.COLONY_NODE: is set by Colony for each "
            "instance: choose another name",
        ),
        ("env: [A=1]", "job.yaml:3: task.env: expected a mapping, got a list"),
        (
            "workdir: 7\n  user: root",
            "job.yaml:4: task.user: unknown field (known: command, args, env, workdir)",
        ),
    ],
)
def test_task_mistakes(task: str, expected: str) -> None:
    command = "" if "command" in task else "\n  command: x"
    found = problems(f"name: web\ntask:\n  {task}{command}\n")
    assert expected in found, "\n".join(found)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "job.yaml: is empty: a job needs at least name and task"),
        ("# only a comment\n", "job.yaml: is empty: a job needs at least name and task"),
        (
            "- name: web\n",
            "job.yaml:1: a job file is a mapping of fields (name:, task:, ...), not a list",
        ),
        ("web\n", 'job.yaml:1: a job file is a mapping of fields (name:, task:, ...), not "web"'),
        (
            "name: web\ntask:\n  command: x\n---\nname: two\n",
            "job.yaml:4: holds more than one document (---): a job file is one job",
        ),
        ("task:\n  args: []\n", "job.yaml:1: name: is required but missing"),
        ("name: web\ntask:\n  args: []\n", "job.yaml:2: task.command: is required but missing"),
        (
            "name: web\ntask: python3\n",
            'job.yaml:2: task: expected a mapping (command, args, env, workdir), got "python3"',
        ),
        (
            "name: Web_App\ntask: {command: x}\n",
            'job.yaml:1: name: "Web_App" is not valid: a '
            "job name is lowercase letters, digits and '-', 1-40 characters, starting and ending "
            "with a letter or digit",
        ),
        (
            "name: web\ntask: {command: x}\n[a]: 1\n",
            "job.yaml:3: a key must be a name, not a list or mapping",
        ),
        (
            "name: web\ntask:\n  command: x\n  args: &a [x, *a]\n",
            "job.yaml:4: task.args[1]: contains itself (an alias to a list or mapping around it)",
        ),
    ],
)
def test_file_level_mistakes(text: str, expected: str) -> None:
    found = problems(text)
    assert expected in found, "\n".join(found)


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("name: web\ntask: [\n", "job.yaml:3: is not valid YAML: ", "(while parsing a flow node)"),
        ("name: web\n\treplicas: 2\n", "job.yaml:2: is not valid YAML: ", "not tabs"),
        ("name: web\ntask: 'x\n", "job.yaml:3: is not valid YAML: ", "a quoted scalar on line 2)"),
    ],
)
def test_yaml_syntax_errors_give_the_line(text: str, start: str, end: str) -> None:
    # the wording is libyaml's (or PyYAML's where libyaml is missing)
    (found,) = problems(text)
    assert found.startswith(start) and found.endswith(end), found


def test_every_problem_is_listed_in_line_order() -> None:
    found = problems(
        """\
        name: web
        replica: 3
        task:
          command: python3
          args: ["${PRT}"]
        resources:
          memory: 12 gigs
          cpu: 2000
        ports: [http, http]
        restart: {then: retry}
        """
    )
    assert [line.split(":")[1] for line in found] == ["2", "5", "7", "8", "9", "10"]


def test_aliases_cannot_blow_up_a_small_file() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    found = problems("\n".join(lines) + "\n")
    assert len(found) == 1
    assert "has more than 50000 values (aliases expand to too many)" in found[0]


def test_merge_keys_and_anchors_work() -> None:
    loaded = spec(
        """\
        name: web
        task: {command: x}
        restart: &slow {delay: 2s, max_delay: 1m}
        resources:
          <<: {cpu: 2, memory: 1GiB}
          memory: 2GiB
        """
    )
    assert loaded.resources == JobResources(cpu=2.0, memory=2 * 2**30)
    assert (loaded.restart.delay, loaded.restart.max_delay) == (2.0, 60.0)


def test_a_field_left_empty_takes_its_default() -> None:
    loaded = spec("name: web\ntask:\n  command: x\n  env:\n  args:\nresources:\nports:\n")
    assert loaded == JobSpec(name="web", task=Task(command="x"))


def test_a_scalar_where_text_is_expected_is_taken_as_written() -> None:
    loaded = spec(
        """\
        name: web
        task:
          command: x
          args: [--port, 8080, --ratio, 1.10, --debug, yes]
          env: {DEBUG: 1, ON: true, EMPTY: ''}
        meta: {version: 1.10}
        constraints:
          - {label: rack, value: 3}
        """
    )
    assert loaded.task.args == ["--port", "8080", "--ratio", "1.10", "--debug", "yes"]
    assert loaded.task.env == {"DEBUG": "1", "ON": "true", "EMPTY": ""}
    assert loaded.meta == {"version": "1.10"}
    assert loaded.constraints == [Constraint(label="rack", value="3")]


FULL = (DATA / "good-full.yaml").read_text()


def test_a_full_job_loads_to_the_expected_spec() -> None:
    loaded = jobspec.parse(FULL, "api.yaml")
    assert loaded.spec == JobSpec(
        name="api",
        driver="process",
        task=Task(
            command="/usr/bin/python3",
            args=["-m", "http.server", "${PORT_HTTP}", "--bind=${COLONY_ADDRESS}", "${GREETING}"],
            env={"GREETING": "hello"},
            workdir="/srv/api",
        ),
        replicas=5,
        resources=JobResources(cpu=0.25, memory=3 * 2**29),
        ports=["http", "admin_2"],
        constraints=[
            Constraint(label="zone", op="in", value=["eu-west", "eu-north"]),
            Constraint(label="colony.dev/disk", op="!=", value="hdd"),
        ],
        distinct_nodes=True,
        spread="zone",
        restart=RestartPolicy(
            attempts=5, interval=5400.0, delay=0.5, backoff=1.5, max_delay=60.0, then="fail"
        ),
        meta={"team": "payments"},
    )
    assert (loaded.source, loaded.file, loaded.warnings) == (FULL, "api.yaml", ())


def test_the_smallest_job_takes_every_default() -> None:
    assert spec(JOB) == JobSpec(name="web", task=Task(command="python3"))


@pytest.mark.parametrize("text", [JOB, FULL, *(path.read_text() for path in EXAMPLES)])
def test_round_trip_through_yaml(text: str) -> None:
    loaded = jobspec.parse(text).spec
    written = jobspec.to_yaml(loaded)
    assert jobspec.parse(written).spec == loaded
    assert jobspec.to_yaml(jobspec.parse(written).spec) == written


@pytest.mark.parametrize(
    ("driver", "why"),
    [
        ("docker", "docker is not available yet: no node can run this job"),
        ("microvm", "microvm is not available yet: no node can run this job"),
        ("sim", "sim runs nothing (it is for benchmarks)"),
    ],
)
def test_drivers_not_available_yet_load_with_a_warning(driver: str, why: str) -> None:
    loaded = jobspec.parse(f"{JOB}driver: {driver}\n", "job.yaml")
    assert loaded.spec.driver == driver
    assert [str(w) for w in loaded.warnings] == [f"job.yaml:4: driver: {why}"]


def test_a_variable_without_braces_is_warned_about_unless_a_shell_runs() -> None:
    text = "name: web\nports: [http]\ntask:\n  command: {}\n  args: [-c, 'echo $PORT']\n"
    warned = jobspec.parse(text.format("python3"), "job.yaml").warnings
    assert [str(w) for w in warned] == [
        "job.yaml:5: task.args[1]: $PORT is passed as is (no shell expands it): write ${PORT}"
    ]
    assert jobspec.parse(text.format("/bin/sh"), "job.yaml").warnings == ()


def test_expand_replaces_known_variables_only() -> None:
    env = {"PORT": "8080", "COLONY_NODE": "n1"}
    assert jobspec.expand("--listen=:${PORT}/${COLONY_NODE}", env) == "--listen=:8080/n1"
    assert jobspec.expand("${OTHER} $PORT", env) == "${OTHER} $PORT"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 2**20),
        ("512MiB", 512 * 2**20),
        ("512Mi", 512 * 2**20),
        ("512M", 512 * 2**20),
        ("512m", 512 * 2**20),
        ("512mb", 512 * 2**20),
        ("2GiB", 2 * 2**30),
        ("1.5GB", 3 * 2**29),
        ("1.5g", 3 * 2**29),
        ("64k", 64 * 2**10),
        ("1T", 2**40),
        ("1PiB", 2**50),
        ("100B", 100),
        # a space between the number and its unit, as people write it
        ("12 GB", 12 * 2**30),
        ("2 G", 2 * 2**30),
        ("1.5 GiB", 3 * 2**29),
        ("100 B", 100),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert jobspec.parse_size(text) == size
    assert jobspec.parse_size(jobspec.format_size(size)) == size


def test_a_size_in_a_job_file_may_have_a_space_before_its_unit() -> None:
    assert spec(JOB + "resources: {memory: 12 GB}").resources.memory == 12 * 2**30


@pytest.mark.parametrize(
    "text", ["12 gigs", "GiB", "1.5", "-1GiB", "1e9", "2  G", "12 ", " 12G", "1XB", "1iB", "1.5 B"]
)
def test_not_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        jobspec.parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("5s", 5.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1m30s500ms", 90.5),
        ("1.5h", 5400.0),
        ("30", 30.0),
        ("0.25", 0.25),
        ("0s", 0.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert jobspec.parse_duration(text) == seconds
    assert jobspec.parse_duration(jobspec.format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["5 m", "5min", "h", "1d", "-5s", "5s ", "1h30"])
def test_not_durations(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        jobspec.parse_duration(text)


@pytest.mark.parametrize(
    ("text", "cores"), [("2", 2.0), ("0.5", 0.5), ("500m", 0.5), ("1m", 0.001)]
)
def test_cores(text: str, cores: float) -> None:
    assert jobspec.parse_cores(text) == cores


def test_durations_and_sizes_are_written_short() -> None:
    assert [jobspec.format_duration(s) for s in (5400, 0.5, 90.5, 0, 1e-4)] == [
        "1h30m",
        "500ms",
        "1m30s500ms",
        "0s",
        "0.0001s",
    ]
    assert [jobspec.format_size(n) for n in (2**20, 3 * 2**29, 2**50, 1000, 2048)] == [
        "1MiB",
        "1536MiB",
        "1PiB",
        "1000",
        "2KiB",
    ]


def test_load_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(JOB)
    loaded = jobspec.load(path)
    assert (loaded.spec.name, loaded.source, loaded.file) == ("web", JOB, str(path))


def test_load_says_why_a_file_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        jobspec.load(tmp_path / "nope.yaml")
    assert (
        str(caught.value) == f"{tmp_path / 'nope.yaml'}: cannot be read: No such file or directory"
    )


def test_load_refuses_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: web\nmeta: {city: M\xfcnchen}\n")
    with pytest.raises(SpecError) as caught:
        jobspec.load(path)
    assert str(caught.value) == f"{path}:2: is not UTF-8 text (byte 0xfc at offset 24)"


def test_a_file_over_the_limit_is_refused(tmp_path: Path) -> None:
    text = JOB + "# " + "x" * jobspec.MAX_SOURCE_BYTES + "\n"
    path = tmp_path / "big.yaml"
    path.write_text(text)
    for call in (lambda: jobspec.load(path), lambda: jobspec.parse(text, str(path))):
        with pytest.raises(SpecError) as caught:
            call()
        assert str(caught.value) == (
            f"{path}: is {len(text)} bytes: a job file may be at most 65536 bytes"
        )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load_without_warnings(path: Path) -> None:
    loaded = jobspec.load(path)
    assert loaded.warnings == ()


def test_the_web_example_is_the_quickstart_job() -> None:
    web = jobspec.load(ROOT / "examples" / "web.yaml").spec
    assert (web.name, web.replicas, web.ports) == ("web", 3, ["http"])
    assert web.resources == JobResources(cpu=0.1, memory=64 * 2**20)
    assert web.task.command == "python3"
    assert web.checks == [
        HealthCheck(type="http", port="http", path="/", interval=2, timeout=1, grace=5)
    ]
    assert web.update == UpdateStrategy(
        max_parallel=1,
        min_healthy_time=3,
        healthy_deadline=30,
        progress_deadline=60,
        auto_revert=True,
    )
    assert web.shutdown_delay == 1.0


def test_the_web_versions_differ_from_web_only_where_they_demonstrate() -> None:
    web, v2, broken = (
        jobspec.load(ROOT / "examples" / f"{name}.yaml").spec
        for name in ("web", "web-v2", "web-broken")
    )
    assert [c.path for c in jobspec.diff(web, v2)] == [
        "task.args[1]",
        "task.env.GREETING",
        "update.canary",
    ]
    assert (v2.update.canary, v2.update.auto_promote, v2.task.env) == (
        1,
        False,
        {"GREETING": "hello"},
    )
    assert [c.path for c in jobspec.diff(web, broken)] == ["task.args[1]", "checks[0].path"]
    assert jobspec.diff(web, broken)[1] == SpecChange("checks[0].path", "/", "/health")
    assert jobspec.replaces_instances(web, v2) and jobspec.replaces_instances(web, broken)


def test_the_published_schema_is_the_generated_one() -> None:
    published = json.loads((ROOT / "docs" / "jobspec.schema.json").read_text())
    assert published == jobspec.json_schema(), (
        "docs/jobspec.schema.json is out of date: regenerate it with\n"
        ".venv/bin/python -m colony.shared.jobspec > docs/jobspec.schema.json"
    )


@pytest.mark.parametrize(
    "path", [*EXAMPLES, *sorted(DATA.glob("good-*.yaml"))], ids=lambda p: p.name
)
def test_examples_validate_against_the_schema(path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    jsonschema.validate(yaml.safe_load(path.read_text()), jobspec.json_schema())


def test_a_control_character_is_named_with_its_line() -> None:
    found = problems('name: web\ntask: {command: x}\nmeta: {a: "b\x07"}\n')
    assert found == ["job.yaml:3: contains a character YAML does not allow ('\\x07')"]


def test_unit_fields_left_empty_take_their_default() -> None:
    loaded = spec(JOB + "resources:\n  memory:\n  cpu:\nrestart:\n  delay:\n")
    assert (loaded.resources, loaded.restart) == (JobResources(), RestartPolicy())


def test_the_errors_shown_in_the_docs_are_what_validate_says() -> None:
    expected = (DATA / "bad-web.txt").read_text()
    with pytest.raises(SpecError) as caught:
        jobspec.parse((DATA / "bad-web.yaml").read_text(), "web.yaml")
    assert str(caught.value) + "\n" == expected
    docs = (ROOT / "docs" / "jobspec.md").read_text()
    assert f"$ colony job validate web.yaml\n{expected}```" in docs


def test_the_job_in_the_docs_is_valid() -> None:
    docs = (ROOT / "docs" / "jobspec.md").read_text()
    first = docs.split("```yaml\n")[1].split("```")[0]
    assert jobspec.parse(first).spec.ports == ["http"]


def test_every_job_in_the_docs_loads_without_problems() -> None:
    docs = (ROOT / "docs" / "jobspec.md").read_text()
    jobs = [block.split("```")[0] for block in docs.split("```yaml\n")[1:]]
    jobs = [job for job in jobs if "task:" in job]
    assert len(jobs) >= 3
    for job in jobs:
        assert jobspec.parse(job).warnings == ()


def test_a_mapping_merged_into_itself_is_refused() -> None:
    found = problems("name: web\ntask: {command: x}\nmeta: &m {a: b, <<: *m}\n")
    assert found == ["job.yaml:3: meta: contains itself (an alias to a list or mapping around it)"]


# --- health checks, update strategy, shutdown delay -------------------------------------

CHECKED = "name: web\nports: [http, admin]\ntask:\n  command: python3\nchecks:\n"
"""A job with two ports (lines 1-5); cases below add checks from line 6."""


@pytest.mark.parametrize(
    ("checks", "expected"),
    [
        (
            "  - {type: http, port: htp}",
            "job.yaml:6: checks[0].port: the job has no port named 'htp' "
            "(its ports: http, admin); did you mean http?",
        ),
        (
            "  - {type: tcp}",
            "job.yaml:6: checks[0]: a tcp check needs port: one of the job's ports (http, admin)",
        ),
        (
            "  - {type: exec}",
            "job.yaml:6: checks[0].command: an exec check needs a command "
            "(run in the instance's env; exit 0: healthy)",
        ),
        (
            "  - {type: tcp, port: http, path: /x}",
            "job.yaml:6: checks[0].path: only http checks have a path (this is a tcp check)",
        ),
        (
            "  - {type: exec, command: 'true', status: 204}",
            "job.yaml:6: checks[0].status: only http checks have a status (this is an exec check)",
        ),
        (
            "  - {type: exec, command: 'true', port: http}",
            "job.yaml:6: checks[0].port: only tcp and http checks have a port "
            "(this is an exec check)",
        ),
        (
            "  - {type: http, port: http, command: curl}",
            "job.yaml:6: checks[0].command: only exec checks have a command "
            "(this is an http check)",
        ),
        (
            "  - {type: tcp, port: http, args: [-v]}",
            "job.yaml:6: checks[0].args: only exec checks have args (this is a tcp check)",
        ),
        (
            "  - {type: http, port: http, path: health}",
            'job.yaml:6: checks[0].path: "health" must start with / (like /health)',
        ),
        (
            "  - {type: htp, port: http}",
            'job.yaml:6: checks[0].type: unknown check type "htp"; did you mean http? '
            "(exec, http, tcp)",
        ),
        ("  - {port: http}", "job.yaml:6: checks[0].type: is required but missing"),
        (
            "  - {type: tcp, port: http, interval: 1s, timeout: 5s}",
            "job.yaml:6: checks[0].timeout: 5s is longer than interval (1s): "
            "the next check would start first",
        ),
        (
            "  - {type: tcp, port: http, interval: 1s}",
            "job.yaml:6: checks[0].timeout: 2s is longer than interval (1s): "
            "the next check would start first",
        ),
        (
            "  - {type: tcp, port: http, interval: 10 sec}",
            'job.yaml:6: checks[0].interval: "10 sec" is not a duration '
            "(write 500ms, 5s, 5m, 1h30m or seconds)",
        ),
        (
            "  - {type: tcp, port: http, interval: 0.001}",
            "job.yaml:6: checks[0].interval: 0.001 is less than 10ms",
        ),
        (
            "  - {type: tcp, port: http, timeout: 0}",
            "job.yaml:6: checks[0].timeout: 0s is too small: must be more than 0s",
        ),
        (
            "  - {type: tcp, port: http, grace: 2h}",
            "job.yaml:6: checks[0].grace: 2h is more than 1h",
        ),
        (
            "  - {type: tcp, port: http, unhealthy_threshold: 0}",
            "job.yaml:6: checks[0].unhealthy_threshold: 0 is too small: must be at least 1",
        ),
        (
            "  - {type: http, port: http, status: 700}",
            "job.yaml:6: checks[0].status: 700 is too large: must be at most 599",
        ),
        (
            "  - {type: tcp, port: http, intervall: 5s}",
            "job.yaml:6: checks[0].intervall: unknown field; did you mean interval?",
        ),
        (
            "  - {type: tcp, port: http}\n  - {type: tcp, port: http}",
            'job.yaml:7: checks[1]: "tcp http" is also the name of checks[0]: '
            "give each check its own name",
        ),
        (
            "  - {type: tcp, port: http, name: up}\n  - {type: exec, command: x, name: up}",
            'job.yaml:7: checks[1].name: "up" is also the name of checks[0]: '
            "give each check its own name",
        ),
        (
            "  - type: exec\n    command: check\n    args: ['${PRT}']",
            "job.yaml:8: checks[0].args[0]: ${PRT} is not set for the instance; "
            "did you mean PORT? (set it under task.env)",
        ),
        (
            "  - {type: exec, command: check, args: ['${PORT_WEB}']}",
            "job.yaml:6: checks[0].args[0]: ${PORT_WEB}: the job declares no port web; "
            "it has http, admin",
        ),
        (
            "  - http",
            "job.yaml:6: checks[0]: expected a mapping (type, name, port, path, "
            "status, command, args, interval, timeout, healthy_threshold, unhealthy_threshold, "
            'grace), got "http"',
        ),
    ],
)
def test_check_mistakes(checks: str, expected: str) -> None:
    found = problems(CHECKED + checks + "\n")
    assert expected in found, "\n".join(found)
    assert len(found) == 1, "\n".join(found)


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        (
            "{type: http, port: http}",
            "job.yaml:5: checks[0].port: the job has no port named 'http' "
            "(it declares none: add one under ports)",
        ),
        (
            "{type: tcp}",
            "job.yaml:5: checks[0]: a tcp check needs a port, and the job declares none "
            "(add one under ports)",
        ),
    ],
)
def test_a_job_without_ports_cannot_have_tcp_or_http_checks(check: str, expected: str) -> None:
    assert problems(f"{JOB}checks:\n  - {check}\n") == [expected]


def test_a_check_on_a_wrong_port_list_is_not_blamed_twice() -> None:
    found = problems(
        "name: web\nports: [HTTP]\ntask: {command: x}\nchecks:\n  - {type: tcp, port: HTTP}\n"
    )
    assert [p.split(":")[2].strip() for p in found] == ["ports[0]"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "update: {min_healthy_time: 2 hours}",
            'job.yaml:4: update.min_healthy_time: "2 hours" is not a duration '
            "(write 500ms, 5s, 5m, 1h30m or seconds)",
        ),
        (
            "update: {healthy_deadline: 48h}",
            "job.yaml:4: update.healthy_deadline: 48h is more than 24h",
        ),
        (
            "update: {progress_deadline: 0}",
            "job.yaml:4: update.progress_deadline: 0s is too small: must be more than 0s",
        ),
        (
            "update: {max_parallel: 0}",
            "job.yaml:4: update.max_parallel: 0 is too small: must be at least 1",
        ),
        (
            "update: {canary: -1}",
            "job.yaml:4: update.canary: -1 is too small: must be at least 0",
        ),
        (
            "update: {auto_revert: yes please}",
            'job.yaml:4: update.auto_revert: expected true or false, got "yes please"',
        ),
        (
            "update: {canaries: 1}",
            "job.yaml:4: update.canaries: unknown field; did you mean canary?",
        ),
        (
            "max_parallel: 2",
            "job.yaml:4: max_parallel: unknown field; did you mean update.max_parallel?",
        ),
        ("shutdown_delay: 10m", "job.yaml:4: shutdown_delay: 10m is more than 5m"),
        ("shutdown_delay: -1", "job.yaml:4: shutdown_delay: -1s is too small: must be at least 0s"),
        ("checks: {type: tcp}", "job.yaml:4: checks: expected a list, got a mapping"),
    ],
)
def test_update_and_shutdown_mistakes(extra: str, expected: str) -> None:
    found = problems(JOB + extra + "\n")
    assert expected in found, "\n".join(found)


CHECKS_JOB = """\
name: web
replicas: 3
ports: [http]
task:
  command: python3
  env: {TOKEN: abc}
checks:
  - type: http
    port: http
    path: /health
    status: 204
    interval: 2s
    timeout: 500ms
    healthy_threshold: 2
    unhealthy_threshold: 5
    grace: 1m
  - {type: tcp, port: http, name: listening}
  - type: exec
    command: /bin/check
    args: [--token, "${TOKEN}", "${PORT}"]
    interval: 30
update:
  max_parallel: 2
  min_healthy_time: 3s
  healthy_deadline: 2m
  progress_deadline: 10m
  canary: 1
  auto_promote: true
  auto_revert: true
shutdown_delay: 1500ms
"""


def test_checks_update_and_shutdown_delay_load_with_their_units() -> None:
    loaded = jobspec.parse(CHECKS_JOB, "web.yaml")
    assert loaded.warnings == ()
    assert loaded.spec.checks == [
        HealthCheck(
            type="http",
            port="http",
            path="/health",
            status=204,
            interval=2.0,
            timeout=0.5,
            healthy_threshold=2,
            unhealthy_threshold=5,
            grace=60.0,
        ),
        HealthCheck(type="tcp", port="http", name="listening"),
        HealthCheck(
            type="exec",
            command="/bin/check",
            args=["--token", "${TOKEN}", "${PORT}"],
            interval=30.0,
        ),
    ]
    assert loaded.spec.update == UpdateStrategy(
        max_parallel=2,
        min_healthy_time=3.0,
        healthy_deadline=120.0,
        progress_deadline=600.0,
        canary=1,
        auto_promote=True,
        auto_revert=True,
    )
    assert loaded.spec.shutdown_delay == 1.5
    assert [check_name(c) for c in loaded.spec.checks] == [
        "http http",
        "listening",
        "exec /bin/check",
    ]


def test_the_defaults_of_checks_update_and_shutdown_delay() -> None:
    loaded = spec(JOB + "ports: [http]\nchecks:\n  - {type: tcp, port: http}\n")
    assert loaded.checks == [HealthCheck(type="tcp", port="http")]
    assert (loaded.update, loaded.shutdown_delay) == (UpdateStrategy(), 0.0)
    assert spec(JOB + "update:\n  canary:\n").update == UpdateStrategy()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "replicas: 2\nupdate: {canary: 3}",
            ["job.yaml:5: update.canary: 3 is more than replicas (2)"],
        ),
        (
            "update:\n  auto_promote: true",
            ["job.yaml:5: update.auto_promote: does nothing without canaries (update.canary)"],
        ),
        (
            "ports: [http]\nchecks:\n  - {type: exec, command: curl, args: ['localhost:$PORT']}",
            [
                "job.yaml:6: checks[0].args[0]: $PORT is passed as is (no shell expands it): "
                "write ${PORT}"
            ],
        ),
        (
            "ports: [http]\nchecks:\n  - {type: exec, command: sh, args: [-c, 'nc -z :: $PORT']}",
            [],
        ),
    ],
)
def test_update_and_check_warnings(extra: str, expected: list[str]) -> None:
    loaded = jobspec.parse(JOB + extra + "\n", "job.yaml")
    assert [str(w) for w in loaded.warnings] == expected


def test_check_name() -> None:
    assert check_name(HealthCheck(type="http", port="web")) == "http web"
    assert check_name(HealthCheck(type="tcp", port="db")) == "tcp db"
    assert (
        check_name(HealthCheck(type="exec", command="pg_isready", args=["-q"])) == "exec pg_isready"
    )
    assert check_name(HealthCheck(type="tcp", port="db", name="db up")) == "db up"


def test_a_job_with_checks_round_trips_through_yaml() -> None:
    loaded = jobspec.parse(CHECKS_JOB).spec
    written = jobspec.to_yaml(loaded)
    assert "interval: 2s" in written and "shutdown_delay: 1s500ms" in written
    assert jobspec.parse(written).spec == loaded


# --- versions: diff and in-place updates ------------------------------------------------

BASE = jobspec.parse(CHECKS_JOB).spec


def changed(**fields: object) -> JobSpec:
    return msgspec.structs.replace(BASE, **fields)


def test_no_change_no_diff() -> None:
    assert jobspec.diff(BASE, jobspec.parse(CHECKS_JOB).spec) == []
    assert not jobspec.replaces_instances(BASE, BASE)


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        (changed(replicas=5), [SpecChange("replicas", "3", "5")]),
        (
            changed(resources=JobResources(cpu=0.5, memory=2**30)),
            [
                SpecChange("resources.cpu", "0.1", "0.5"),
                SpecChange("resources.memory", "64MiB", "1GiB"),
            ],
        ),
        (
            changed(
                task=msgspec.structs.replace(
                    BASE.task, args=["-m", "x"], env={"TOKEN": "new", "A": "1"}
                )
            ),
            [
                SpecChange("task.args[0]", "", "-m"),
                SpecChange("task.args[1]", "", "x"),
                SpecChange("task.env.TOKEN", "abc", "new"),
                SpecChange("task.env.A", "", "1"),
            ],
        ),
        (
            changed(ports=["http", "admin"]),
            [SpecChange("ports[1]", "", "admin")],
        ),
        (
            changed(checks=[msgspec.structs.replace(BASE.checks[0], path="/ready", interval=5.0)]),
            [
                SpecChange("checks[0].path", "/health", "/ready"),
                SpecChange("checks[0].interval", "2s", "5s"),
                SpecChange("checks[1]", "{type: tcp, name: listening, port: http}", ""),
                SpecChange(
                    "checks[2]",
                    '{type: exec, command: /bin/check, args: [--token, "${TOKEN}", "${PORT}"], '
                    "interval: 30s}",
                    "",
                ),
            ],
        ),
        (
            changed(update=UpdateStrategy(canary=0, auto_revert=True, min_healthy_time=90)),
            [
                SpecChange("update.max_parallel", "2", "1"),
                SpecChange("update.min_healthy_time", "3s", "1m30s"),
                SpecChange("update.healthy_deadline", "2m", "5m"),
                SpecChange("update.canary", "1", "0"),
                SpecChange("update.auto_promote", "true", "false"),
            ],
        ),
        (changed(shutdown_delay=0.0), [SpecChange("shutdown_delay", "1s500ms", "0s")]),
        (
            changed(constraints=[Constraint(label="zone", op="in", value=["eu", "us west"])]),
            [SpecChange("constraints[0]", "", '{label: zone, op: in, value: [eu, "us west"]}')],
        ),
        (changed(meta={"team": "web"}), [SpecChange("meta.team", "", "web")]),
        (
            changed(distinct_nodes=True, spread="zone"),
            [
                SpecChange("distinct_nodes", "false", "true"),
                SpecChange("spread", "", "zone"),
            ],
        ),
        (
            changed(restart=RestartPolicy(backoff=1.5, then="fail")),
            [
                SpecChange("restart.backoff", "2", "1.5"),
                SpecChange("restart.then", "reschedule", "fail"),
            ],
        ),
    ],
)
def test_diff_says_each_changed_field_as_a_job_file_writes_it(
    new: JobSpec, expected: list[SpecChange]
) -> None:
    assert jobspec.diff(BASE, new) == expected


def test_diff_of_a_constraint_value_that_became_a_list() -> None:
    old = changed(constraints=[Constraint(label="zone", value="eu")])
    new = changed(constraints=[Constraint(label="zone", op="in", value=["eu", "us"])])
    assert jobspec.diff(old, new) == [
        SpecChange("constraints[0].op", "=", "in"),
        SpecChange("constraints[0].value", "eu", "[eu, us]"),
    ]
    assert jobspec.diff(new, old)[1] == SpecChange("constraints[0].value", "[eu, us]", "eu")


@pytest.mark.parametrize(
    ("new", "replaces"),
    [
        (changed(replicas=10), False),
        (changed(update=UpdateStrategy(max_parallel=5)), False),
        (changed(meta={"owner": "me"}), False),
        (changed(replicas=1, update=UpdateStrategy(), meta={"a": "b"}), False),
        (changed(task=msgspec.structs.replace(BASE.task, env={"TOKEN": "x"})), True),
        (changed(resources=JobResources(memory=2**30)), True),
        (changed(checks=[]), True),
        (changed(shutdown_delay=2.0), True),
        (changed(restart=RestartPolicy(attempts=1)), True),
        (changed(replicas=1, ports=["http", "admin"]), True),
    ],
)
def test_replaces_instances_iff_a_field_outside_in_place_changed(
    new: JobSpec, replaces: bool
) -> None:
    assert jobspec.replaces_instances(BASE, new) is replaces
    assert jobspec.replaces_instances(new, BASE) is replaces
    # IN_PLACE is exactly what may differ: every other changed field is in the diff
    outside = [
        c for c in jobspec.diff(BASE, new) if c.path.split(".")[0].split("[")[0] not in IN_PLACE
    ]
    assert bool(outside) is replaces


def test_checks_without_their_port_are_not_also_called_duplicates() -> None:
    found = problems(CHECKED + "  - {type: tcp}\n  - {type: tcp}\n")
    assert [p.split(": ")[1] for p in found] == ["checks[0]", "checks[1]"]
