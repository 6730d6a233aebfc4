"""Job specs: what a user asks Colony to run, as the system holds it.

A job file is YAML written by a person (durations like ``5m``, memory like
``512MiB``); `load` turns it into a `JobSpec`, whose fields are plain numbers
(seconds, bytes, cores), or explains exactly what is wrong with it. The
`JobSpec` travels in the `JobRun` command beside the file's text as given
(the system never changes what the user wrote).
"""

from __future__ import annotations

import difflib
import json
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import msgspec.inspect as mi
import yaml

MAX_REPLICAS = 10_000
MAX_SOURCE_BYTES = 64 * 1024
"""A job file's text, at most (it is stored as given)."""

JobName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")]
"""A job's name: lowercase letters, digits and '-', 1-40 characters (instance ids and
change subjects are made from it)."""
PortName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,30}$")]
"""A port's name: given to the instance as PORT_<NAME> (upper case)."""
Driver = Literal["process", "docker", "microvm", "sim"]
"""How an instance runs. `sim` is for benchmarks only (it runs nothing)."""


class _Spec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class Task(_Spec, kw_only=True):
    command: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    args: list[str] = []
    env: dict[str, str] = {}
    workdir: str = ""
    """The instance's working directory ('' : its own folder on the node)."""


class JobResources(_Spec, kw_only=True):
    cpu: Annotated[float, msgspec.Meta(gt=0, le=1024)] = 0.1
    """Cores reserved for each instance."""
    memory: Annotated[int, msgspec.Meta(gt=0, le=2**50)] = 64 * 2**20
    """Bytes reserved for each instance (and its limit, where the node can enforce one)."""


class Constraint(_Spec, kw_only=True):
    label: Annotated[str, msgspec.Meta(min_length=1, max_length=317)]
    op: Literal["=", "!=", "in", "not_in"] = "="
    value: str | list[str]


class RestartPolicy(_Spec, kw_only=True):
    attempts: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 3
    """Restarts allowed within `interval` on the same node."""
    interval: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    delay: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    """Seconds before the first restart; multiplied by `backoff` for each next one."""
    backoff: Annotated[float, msgspec.Meta(ge=1)] = 2.0
    max_delay: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    then: Literal["reschedule", "fail"] = "reschedule"
    """When the attempts run out: place a replacement on another node, or leave it failed."""


class HealthCheck(_Spec, kw_only=True):
    """How the node's monitor tells a healthy instance from a broken one."""

    type: Literal["tcp", "http", "exec"]
    name: Annotated[str, msgspec.Meta(max_length=64)] = ""
    """Shown in status and events ('' : "<type> <port>" or "exec <command>")."""
    port: str = ""
    """tcp, http: the name of one of the job's ports."""
    path: Annotated[str, msgspec.Meta(max_length=2048)] = "/"
    """http: the path asked for (GET)."""
    status: Annotated[int, msgspec.Meta(ge=100, le=599)] = 200
    """http: the status that means healthy."""
    command: Annotated[str, msgspec.Meta(max_length=4096)] = ""
    """exec: run with the instance's env and working dir; exit 0 means healthy."""
    args: list[str] = []
    interval: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    """A check that has not answered by then failed."""
    healthy_threshold: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1
    """Passes in a row that make an unhealthy (or new) instance healthy."""
    unhealthy_threshold: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    """Failures in a row that make a healthy (or new) instance unhealthy."""
    grace: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """Seconds after the instance started during which failures do not count."""


class UpdateStrategy(_Spec, kw_only=True):
    """How a new version of the job replaces the running one."""

    max_parallel: Annotated[int, msgspec.Meta(ge=1, le=MAX_REPLICAS)] = 1
    """Instances replaced at a time (a batch): the next batch starts once these are healthy."""
    min_healthy_time: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    """An instance counts as healthy only once it has stayed healthy this long."""
    healthy_deadline: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    """A new instance not healthy this long after it was placed fails the rollout."""
    progress_deadline: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    """A batch not all healthy this long after it started fails the rollout."""
    canary: Annotated[int, msgspec.Meta(ge=0, le=MAX_REPLICAS)] = 0
    """New-version instances run beside the old ones until promoted."""
    auto_promote: bool = False
    """Promote once every canary is healthy (else: `colony job promote`)."""
    auto_revert: bool = False
    """On a failed rollout, roll back to the last version that was healthy."""


class JobSpec(_Spec, kw_only=True):
    name: JobName
    driver: Driver = "process"
    task: Task
    replicas: Annotated[int, msgspec.Meta(ge=0, le=MAX_REPLICAS)] = 1
    resources: JobResources = JobResources()
    ports: list[PortName] = []
    constraints: list[Constraint] = []
    distinct_nodes: bool = False
    spread: str = ""
    """A node label whose values the instances spread evenly across ('' : none)."""
    restart: RestartPolicy = RestartPolicy()
    checks: list[HealthCheck] = []
    """No checks: an instance is healthy while it runs."""
    update: UpdateStrategy = UpdateStrategy()
    shutdown_delay: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """Seconds an instance keeps running after it left the job's endpoints, before it is
    told to stop (clients stop sending to it first)."""
    meta: dict[str, str] = {}


# --- versions: what changed, and whether instances must be replaced -------------------

IN_PLACE = ("replicas", "update", "meta")
"""Top-level fields a new version may change without replacing running instances (they
keep running at their version; the rest of their spec is the same)."""


class SpecChange(msgspec.Struct, frozen=True):
    """One field that differs between two versions of a job, as a person reads it."""

    path: str
    """Dotted, with list positions: "task.args[1]", "resources.memory", "checks[0].path"."""
    old: str
    """As a job file would say it ("512MiB", "10s", "[a, b]"); '' : not set (added)."""
    new: str
    """'' : removed."""


def diff(old: JobSpec, new: JobSpec) -> list[SpecChange]:
    """Every field that differs, in field order, each at the deepest path that differs
    (sections field by field, lists element by element, env and meta key by key)."""
    changes: list[SpecChange] = []
    _diff(old, new, "", None, changes)
    return changes


def replaces_instances(old: JobSpec, new: JobSpec) -> bool:
    """Whether instances running `old` must be replaced to run `new` (a change outside
    IN_PLACE), rather than kept as they are."""
    return msgspec.structs.replace(old, **{name: getattr(new, name) for name in IN_PLACE}) != new


def _default(f: mi.Field) -> Any:
    return f.default_factory() if f.default is msgspec.NODEFAULT else f.default


_ABSENT: Any = object()
"""A list element, env or meta entry that one side of a diff does not have."""


def _diff(old: Any, new: Any, path: str, unit: _Unit | None, changes: list[SpecChange]) -> None:
    if old == new:
        return
    if isinstance(old, msgspec.Struct) and type(old) is type(new):
        for name in old.__struct_fields__:
            at, field_unit = _join(path, name), _UNIT_FIELDS.get((type(old), name))
            _diff(getattr(old, name), getattr(new, name), at, field_unit, changes)
    elif isinstance(old, list) and isinstance(new, list):
        for i in range(max(len(old), len(new))):
            before = old[i] if i < len(old) else _ABSENT
            after = new[i] if i < len(new) else _ABSENT
            _diff(before, after, f"{path}[{i}]", None, changes)
    elif isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(key for key in new if key not in old)]:
            _diff(old.get(key, _ABSENT), new.get(key, _ABSENT), _join(path, key), None, changes)
    else:
        changes.append(SpecChange(path, _written_text(old, unit), _written_text(new, unit)))


def _written_text(value: Any, unit: _Unit | None = None, inside: bool = False) -> str:
    """A value as a job file writes it: 64MiB, 10s, true, [a, b], {type: http, port: web};
    '' for one not there."""
    if value is _ABSENT:
        return ""
    if unit is not None:
        return unit.show(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value).removesuffix(".0")  # backoff: 2, not 2.0
    if isinstance(value, str):
        # inside [..] or {..} a comma, bracket or blank would change what it says
        plain = value and value.strip() == value and not re.search(r"[,:#\[\]{}\"'\s]", value)
        return _quoted(value) if inside and not plain else value
    if isinstance(value, list):
        return "[" + ", ".join(_written_text(v, inside=True) for v in value) + "]"
    if isinstance(value, dict):
        pairs = (
            f"{_written_text(k, inside=True)}: {_written_text(v, inside=True)}"
            for k, v in value.items()
        )
        return "{" + ", ".join(pairs) + "}"
    if isinstance(value, msgspec.Struct):  # a whole check or constraint, added or removed
        items = []
        for f in mi.type_info(type(value)).fields:
            v = getattr(value, f.name)
            if f.required or v != _default(f):
                unit = _UNIT_FIELDS.get((type(value), f.name))
                items.append(f"{f.name}: {_written_text(v, unit, inside=True)}")
        return "{" + ", ".join(items) + "}"
    return str(value)


def check_name(check: HealthCheck) -> str:
    """How a check is shown (status, events, errors): its name, else "http web" (type and
    port) or "exec <command>"."""
    return _check_name(check.type, check.name, check.port, check.command)


def _check_name(kind: str, name: str, port: str, command: str) -> str:
    return name or (f"exec {command}" if kind == "exec" else f"{kind} {port}")


_CHECK_NEEDS = {"tcp": "port", "http": "port", "exec": "command"}
"""What each type of check cannot do without."""
_CHECK_FIELDS = {
    "port": ("tcp", "http"),
    "path": ("http",),
    "status": ("http",),
    "command": ("exec",),
    "args": ("exec",),
}
"""The fields only some types of check have."""


# --- loading a job file ---------------------------------------------------------------

MIN_MEMORY = 2**20
"""Less memory than this is a unit left out (`memory: 64` is 64 bytes), not a real ask."""
MAX_DURATION = 30 * 86400.0
"""Longer restart timings are typos (and would overflow timers)."""
AGENT_ENV = ("COLONY_INSTANCE", "COLONY_JOB", "COLONY_NODE", "COLONY_ADDRESS")
"""What the agent puts in every instance's env (with PORT and PORT_<NAME>)."""
ARG_VARIABLE = re.compile(r"\$\{([^}]*)\}")
"""`${NAME}` in a task's args: replaced by the agent with that env variable's value."""
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# The unit forms, as patterns both Python and JSON Schema (ECMA 262) read the same way.
# A size may have one space before its unit ("12 GB"), as people write it.
_SIZE_FORM = r"^([0-9]+( ?[Bb])?|[0-9]+(\.[0-9]+)? ?[KkMmGgTtPp][Ii]?[Bb]?)$"
_SIZE_UNITS = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}
_CORES_FORM = r"^[0-9]+(\.[0-9]+)?m?$"
_DURATION_FORM = r"^([0-9]+(\.[0-9]+)?|([0-9]+(\.[0-9]+)?(ms|s|m|h))+)$"
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_BOUNDS = (
    ("gt", operator.le, "too small: must be more than"),
    ("ge", operator.lt, "too small: must be at least"),
    ("le", operator.gt, "too large: must be at most"),
    ("lt", operator.ge, "too large: must be less than"),
)
"""msgspec's bounds on a number: the test that breaks each, and how to say so."""
_LABEL_KEYS = " (like zone or example.com/rack: letters, digits, '-', '_' and '.')"
_YAML = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml where PyYAML has it: 15 times faster on a big file."""
_SHELLS = {"sh", "bash", "dash", "zsh", "ash", "ksh", "fish"}
_MAX_NODES = 50_000
"""YAML values in one file, at most (aliases can make a small file expand enormously)."""
_PATTERNS = {
    JobName.__metadata__[0].pattern: "a job name is lowercase letters, digits and '-', "
    "1-40 characters, starting and ending with a letter or digit",
    PortName.__metadata__[0].pattern: "a port name is lowercase letters, digits and '_', "
    "starting with a letter, at most 31 characters",
}


class Problem(msgspec.Struct, frozen=True):
    """One thing wrong with a job file: where (file, line, field path) and why."""

    file: str
    line: int | None
    """1-based line of the YAML value at fault (None: the file as a whole)."""
    path: str
    """The field, like `task.args[2]` or `resources.memory` ('' : the whole document)."""
    why: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.why}" if self.path else f"{where}: {self.why}"


class SpecError(ValueError):
    """A job file is invalid; `problems` lists everything wrong with it, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


@dataclass(frozen=True)
class LoadedJob:
    """A valid job file: its spec, its text as given (stored as is) and where it came from."""

    spec: JobSpec
    source: str
    file: str
    warnings: tuple[Problem, ...] = ()
    """What is valid but will not work as one may hope (a driver no node has yet)."""


def load(path: str | Path) -> LoadedJob:
    """Read and check a job file; raise a SpecError saying everything wrong with it."""
    file = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise SpecError([Problem(file, None, "", f"cannot be read: {e.strerror or e}")]) from None
    if len(data) > MAX_SOURCE_BYTES:
        raise SpecError([_too_big(file, len(data))])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        why = f"is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})"
        raise SpecError([Problem(file, line, "", why)]) from None
    return parse(text, file)


def parse(text: str, file: str = "<stdin>") -> LoadedJob:
    """Check a job file's text; raise a SpecError saying everything wrong with it."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_SOURCE_BYTES:
        raise SpecError([_too_big(file, size)])
    reader = _Reader(file)
    try:
        root = yaml.compose(text, Loader=_YAML)
    except yaml.MarkedYAMLError as e:
        raise SpecError([_syntax_problem(file, e)]) from None
    except yaml.reader.ReaderError as e:  # a control character: YAML allows none
        line = text[: e.position].count("\n") + 1
        why = f"contains a character YAML does not allow ({chr(e.character)!r})"
        raise SpecError([Problem(file, line, "", why)]) from None
    if root is None:
        raise SpecError([Problem(file, None, "", "is empty: a job needs at least name and task")])
    try:
        tree = reader.tree(root, "")
    except _TooBig:
        raise SpecError(reader.problems) from None
    if tree.kind != "map":
        why = f"a job file is a mapping of fields (name:, task:, ...), not {_shown(tree)}"
        raise SpecError([*reader.problems, Problem(file, tree.line, "", why)])
    checker = _Checker(file, reader.problems)
    data = checker.struct(tree, mi.type_info(JobSpec), "")
    checker.semantics(data)
    if checker.problems:
        raise SpecError(sorted(checker.problems, key=lambda p: (p.line or 0, p.path)))
    try:
        spec = msgspec.convert(data, JobSpec)
    except msgspec.ValidationError as e:  # the checks above missed a rule of the types
        raise SpecError([Problem(file, root.start_mark.line + 1, "", str(e))]) from None
    return LoadedJob(spec, text, file, tuple(checker.warnings(spec)))


def parse_size(text: str) -> int:
    """Bytes from `512MiB`, `2GiB`, `1.5GB`, `12 GB`, `512M`, `512Mi` or `1048576`: every
    unit is binary (1GB = 1GiB), as Docker and `colony capacity` read them. Raises
    ValueError."""
    if not re.match(_SIZE_FORM, text):
        raise ValueError(f"{_quoted(text)} is not a size (write 512MiB, 2GiB, 1.5GB or bytes)")
    number = text.rstrip("KkMmGgTtPpIiBb ")
    return int(float(number) * _SIZE_UNITS.get(text[len(number) :].lstrip()[:1].lower(), 1))


def parse_cores(text: str) -> float:
    """Cores from `0.5`, `2` or `500m` (millicores, as in Kubernetes). Raises ValueError."""
    if not re.match(_CORES_FORM, text):
        raise ValueError(f"{_quoted(text)} is not a number of cores (write 0.5, 2 or 500m)")
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def parse_duration(text: str) -> float:
    """Seconds from `500ms`, `5s`, `5m`, `1h`, `1h30m` or a number. Raises ValueError."""
    if not re.match(_DURATION_FORM, text):
        raise ValueError(
            f"{_quoted(text)} is not a duration (write 500ms, 5s, 5m, 1h30m or seconds)"
        )
    parts = re.findall(r"([0-9.]+)(ms|s|m|h)", text)
    return sum(float(n) * _DURATION_UNITS[unit] for n, unit in parts) if parts else float(text)


def format_size(size: int) -> str:
    """The shortest exact form `parse_size` reads back: 64MiB, 1536MiB, 1000."""
    if size <= 0:
        return str(size)
    for suffix, unit in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return f"{size // 2**10}KiB" if size % 2**10 == 0 else str(size)


def format_duration(seconds: float) -> str:
    """The form `parse_duration` reads back: 1h30m, 5m, 1s500ms, 0s."""
    if seconds < 0:
        return f"-{format_duration(-seconds)}"
    millis = round(seconds * 1000)
    if abs(millis - seconds * 1000) > 1e-6:
        return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"
    parts = []
    for suffix, unit in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        if millis >= unit:
            parts.append(f"{millis // unit}{suffix}")
            millis %= unit
    return "".join(parts) or "0s"


def to_yaml(spec: JobSpec) -> str:
    """A spec as a job file (units as people write them) that `parse` reads back equal."""
    return yaml.safe_dump(_yaml_data(spec), sort_keys=False, allow_unicode=True)


def _yaml_data(value: Any) -> Any:
    """A spec's value as a job file holds it: sizes and durations with their units."""
    if isinstance(value, msgspec.Struct):
        written = {}
        for f in mi.type_info(type(value)).fields:
            name, v = f.name, getattr(value, f.name)
            kinds = _CHECK_FIELDS.get(name) if isinstance(value, HealthCheck) else None
            if kinds and value.type not in kinds and v == _default(f):
                continue  # a tcp check's path: a field of another type of check
            unit = _UNIT_FIELDS.get((type(value), name))
            text = unit.show(v) if unit else ""
            # a plain number stays one (cpu: 0.5, memory: 1000), units as text (64MiB, 5s)
            written[name] = text if re.search(r"[^0-9.]", text) else _yaml_data(v)
        return written
    if isinstance(value, list):
        return [_yaml_data(v) for v in value]
    return msgspec.to_builtins(value)


def expand(arg: str, env: dict[str, str]) -> str:
    """An arg with each `${NAME}` replaced by env[NAME] (left as is if env has none)."""
    return ARG_VARIABLE.sub(lambda m: env.get(m[1], m[0]), arg)


@dataclass(frozen=True)
class _Unit:
    """A field that the YAML form writes with a unit, and the JobSpec holds as a number."""

    parse: Callable[[str], float]
    show: Callable[[Any], str]
    form: str
    """The pattern of its strings (for the JSON Schema)."""
    description: str
    least: float = 0.0
    """Anything above 0 but below this is a mistake (64 bytes of memory: a unit left out)."""
    most: float = math.inf


def _duration(most: float, least: float = 0.0) -> _Unit:
    return _Unit(
        parse_duration,
        format_duration,
        _DURATION_FORM,
        "Seconds, or a duration: 500ms, 5s, 5m, 1h30m",
        least=least,
        most=most,
    )


_HOUR = 3600.0
_UNIT_FIELDS: dict[tuple[type, str], _Unit] = {
    (JobResources, "memory"): _Unit(
        parse_size,
        format_size,
        _SIZE_FORM,
        "Bytes, or a size: 512MiB, 2GiB, 1.5GB, 12 GB, 512M (every unit binary: 1GB = 1GiB)",
        least=MIN_MEMORY,
    ),
    (JobResources, "cpu"): _Unit(
        parse_cores, "{:g}".format, _CORES_FORM, "Cores: 0.5, 2, or millicores: 500m", least=0.001
    ),
    **{
        (RestartPolicy, name): _duration(MAX_DURATION)
        for name in ("interval", "delay", "max_delay")
    },
    # a check more often than every 10ms is a unit left out (`interval: 0.001`), and one
    # rarer than hourly never tells anything in time
    (HealthCheck, "interval"): _duration(_HOUR, least=0.01),
    (HealthCheck, "timeout"): _duration(_HOUR, least=0.01),
    (HealthCheck, "grace"): _duration(_HOUR),
    (UpdateStrategy, "min_healthy_time"): _duration(_HOUR),
    (UpdateStrategy, "healthy_deadline"): _duration(24 * _HOUR),
    (UpdateStrategy, "progress_deadline"): _duration(24 * _HOUR),
    # clients need seconds to stop sending; a stop that waits longer looks stuck
    (JobSpec, "shutdown_delay"): _duration(5 * 60.0),
}
"""The fields written with units, by (struct, field): how to read, show and bound them."""


class _Bad:
    def __repr__(self) -> str:
        return "<bad>"


_BAD: Any = _Bad()
"""What a check returns for a value it found wrong (and already reported)."""


class _TooBig(Exception):
    pass


@dataclass
class _Y:
    """A YAML value with where it was written."""

    kind: Literal["scalar", "list", "map"]
    value: Any
    """Scalar: the Python value (or _BAD); list: [_Y]; map: {key: _Y}."""
    text: str
    """A scalar as written (a string field takes it as is: `version: 1.10` is "1.10")."""
    line: int
    keys: dict[str, int] = field(default_factory=dict)
    """A map's keys: the line each is on."""


class _Reader:
    """YAML nodes -> _Y values, noting duplicate keys and values YAML cannot construct."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self.count = 0
        self.inside: set[int] = set()
        """The lists and mappings around the value being read (an alias may point to one)."""
        self.constructor = yaml.constructor.SafeConstructor()

    def tree(self, node: yaml.Node, path: str) -> _Y:
        self.count += 1
        line = node.start_mark.line + 1
        if self.count > _MAX_NODES:
            why = f"has more than {_MAX_NODES} values (aliases expand to too many)"
            self.problems.append(Problem(self.file, line, path, why))
            raise _TooBig
        if id(node) in self.inside:
            why = "contains itself (an alias to a list or mapping around it)"
            self.problems.append(Problem(self.file, line, path, why))
            return _Y("scalar", _BAD, "", line)
        self.inside.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                items = [self.tree(n, f"{path}[{i}]") for i, n in enumerate(node.value)]
                return _Y("list", items, "", line)
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, path, line)
        finally:
            self.inside.discard(id(node))
        try:
            value = self.constructor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as e:
            self.problems.append(Problem(self.file, line, path, str(e.problem)))
            value = _BAD
        except (ValueError, TypeError, AttributeError):  # `!!timestamp nope`, `!!int x`
            why = f"{_quoted(node.value)} is not a valid {node.tag.rpartition(':')[2]}"
            self.problems.append(Problem(self.file, line, path, why))
            value = _BAD
        return _Y("scalar", value, node.value, line)

    def mapping(self, node: yaml.MappingNode, path: str, line: int) -> _Y:
        entries: dict[str, _Y] = {}
        keys: dict[str, int] = {}
        merged: list[yaml.Node] = []
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge":
                merged.extend(value.value if isinstance(value, yaml.SequenceNode) else [value])
                continue
            key_line = key.start_mark.line + 1
            if not isinstance(key, yaml.ScalarNode):
                why = "a key must be a name, not a list or mapping"
                self.problems.append(Problem(self.file, key_line, path, why))
                continue
            at = _join(path, key.value)
            if key.value in keys:
                why = f"is written twice (first on line {keys[key.value]})"
                self.problems.append(Problem(self.file, key_line, at, why))
                continue
            keys[key.value] = key_line
            entries[key.value] = self.tree(value, at)
        # `<<: *base` adds base's entries that the mapping does not set itself
        for base in merged:
            if not isinstance(base, yaml.MappingNode):
                why = "<< merges a mapping (an alias like *base), not a single value"
                self.problems.append(Problem(self.file, base.start_mark.line + 1, path, why))
                continue
            extra = self.tree(base, path)  # counted, and refused if it contains itself
            for key, value in (extra.value if extra.kind == "map" else {}).items():
                if key not in entries:
                    entries[key], keys[key] = value, extra.keys[key]
        return _Y("map", entries, "", line, keys)


class _Checker:
    """Checks _Y values against the JobSpec types, noting every problem (not just the first)
    and the line of every path (for the checks that come after)."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        self.lines: dict[str, int] = {}
        """Where each path's value is written."""
        self.keys: dict[str, int] = {}
        """Where each field's key is written (a missing field's parent is named there)."""

    def problem(self, path: str, why: str, line: int | None = None) -> Any:
        self.problems.append(Problem(self.file, line or self.line(path), path, why))
        return _BAD

    def line(self, path: str) -> int | None:
        """The line of a path's value or, when it was not written, of its nearest parent's key
        (`restart:` for a restart.max_delay left to its default)."""
        if path in self.lines:
            return self.lines[path]
        while path:
            path = _parent(path)
            if path in self.keys or path in self.lines:
                return self.keys.get(path) or self.lines[path]
        return None

    def check(self, y: _Y, info: Any, path: str) -> Any:
        self.lines[path] = y.line
        if y.kind == "scalar" and y.value is _BAD:
            return _BAD  # YAML could not construct it: reported already
        if y.kind == "scalar" and y.value is None:
            return self.problem(path, f"has no value: expected {_expected(info)}")
        if isinstance(info, mi.StructType):
            return self.struct(y, info, path)
        if isinstance(info, mi.UnionType):  # a constraint's value: one string or a list
            kinds = {"list": mi.ListType, "map": mi.DictType}
            chosen = [t for t in info.types if isinstance(t, kinds.get(y.kind, mi.StrType))]
            if not chosen:
                return self.problem(path, f"expected {_expected(info)}, got {_shown(y)}")
            info = chosen[0]
        if isinstance(info, mi.ListType):
            if y.kind != "list":
                return self.problem(path, f"expected a list, got {_shown(y)}")
            return [
                self.check(item, info.item_type, f"{path}[{i}]") for i, item in enumerate(y.value)
            ]
        if isinstance(info, mi.DictType):
            if y.kind != "map":
                return self.problem(path, f"expected a mapping, got {_shown(y)}")
            return {
                key: self.check(v, info.value_type, _join(path, key)) for key, v in y.value.items()
            }
        if y.kind != "scalar":
            return self.problem(path, f"expected {_expected(info)}, got {_shown(y)}")
        if isinstance(info, mi.StrType):
            return self.string(y.text, info, path)
        if isinstance(info, mi.LiteralType):
            return self.choice(y.text, info, path)
        if isinstance(info, mi.BoolType):
            if not isinstance(y.value, bool):
                return self.problem(path, f"expected true or false, got {_shown(y)}")
            return y.value
        return self.number(y, info, path)

    def struct(self, y: _Y, info: mi.StructType, path: str) -> Any:
        self.lines[path] = y.line
        if y.kind != "map":
            names = ", ".join(f.name for f in info.fields)
            return self.problem(path, f"expected a mapping ({names}), got {_shown(y)}")
        fields = {f.name: f for f in info.fields}
        data: dict[str, Any] = {}
        for key, value in y.value.items():
            at = _join(path, key)
            self.keys[at] = y.keys[key]
            if key not in fields:
                self.problem(at, f"unknown field{_suggest(key, fields, info.cls)}", y.keys[key])
            elif value.kind == "scalar" and value.value is None and not fields[key].required:
                self.lines[at] = value.line  # `env:` with nothing under it: the default
            elif (info.cls, key) in _UNIT_FIELDS and value.kind == "scalar":
                data[key] = self.unit(value, fields[key].type, _UNIT_FIELDS[info.cls, key], at)
            else:
                data[key] = self.check(value, fields[key].type, at)
        for f in info.fields:
            if f.required and f.name not in y.value:
                self.problem(_join(path, f.name), "is required but missing")
        return data

    def string(self, text: str, info: mi.StrType, path: str) -> Any:
        if "\x00" in text:
            return self.problem(path, "contains a NUL character")
        if info.min_length and len(text) < info.min_length:
            return self.problem(path, "must not be empty")
        if info.max_length and len(text) > info.max_length:
            return self.problem(path, f"is longer than {info.max_length} characters")
        if info.pattern and not re.search(info.pattern, text):
            rule = _PATTERNS.get(info.pattern, f"it must match {info.pattern}")
            return self.problem(path, f"{_quoted(text)} is not valid: {rule}")
        return text

    def choice(self, text: str, info: mi.LiteralType, path: str) -> Any:
        values = [str(v) for v in info.values]
        if text in values:
            return text
        close = difflib.get_close_matches(text, values, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        what = {"driver": "driver", "op": "operator", "then": "choice", "type": "check type"}.get(
            path.rpartition(".")[2], "value"
        )
        return self.problem(path, f"unknown {what} {_quoted(text)}{hint} ({', '.join(values)})")

    def number(self, y: _Y, info: Any, path: str) -> Any:
        whole = isinstance(info, mi.IntType)
        value = y.value
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
            return self.problem(path, f"expected {_expected(info)}, got {_shown(y)}")
        return self.bounded(value, info, path, str)

    def unit(self, y: _Y, info: Any, unit: _Unit, path: str) -> Any:
        self.lines[path] = y.line
        value = y.value
        if isinstance(value, str):
            try:
                value = unit.parse(value)
            except ValueError as e:
                return self.problem(path, str(e))
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            return self.problem(path, f"expected {_expected(info)}, got {_shown(y)}")
        elif isinstance(value, float) and isinstance(info, mi.IntType):
            why = f"{y.text} is not a size: a plain number is whole bytes (or write 512MiB)"
            return self.problem(path, why)
        if 0 < value < unit.least:
            # `memory: 64` is 64 bytes: surely 64MiB was meant
            plain = isinstance(info, mi.IntType) and not isinstance(y.value, str)
            hint = f"; did you mean {y.text}MiB?" if plain else ""
            why = f"{_unit_text(y, unit)} is less than {unit.show(unit.least)}{hint}"
            return self.problem(path, why)
        if value > unit.most and math.isfinite(value):
            return self.problem(path, f"{_unit_text(y, unit)} is more than {unit.show(unit.most)}")
        value = int(value) if isinstance(info, mi.IntType) else float(value)
        return self.bounded(value, info, path, unit.show)

    def bounded(self, value: float, info: Any, path: str, show: Callable[[Any], str]) -> Any:
        if not math.isfinite(value):
            return self.problem(path, f"must be a finite number, got {value}")
        for name, broken, rule in _BOUNDS:
            bound = getattr(info, name)
            if bound is not None and broken(value, bound):
                return self.problem(path, f"{show(value)} is {rule} {show(bound)}")
        return value

    def semantics(self, job: dict[str, Any]) -> None:
        """The rules between fields, on the parts that were valid on their own."""
        ports = _good(job.get("ports"))
        first: dict[str, int] = {}
        for i, port in enumerate(_listed(job.get("ports"))):
            if port in first:
                self.problem(f"ports[{i}]", f"{port} is declared twice (also ports[{first[port]}])")
            elif port is not _BAD:
                first[port] = i
        for i, constraint in enumerate(_listed(job.get("constraints"))):
            if isinstance(constraint, dict):
                self.constraint(constraint, f"constraints[{i}]")
        spread = job.get("spread", "")
        if spread and spread is not _BAD and not _label_key(spread):
            self.problem("spread", f"{_quoted(spread)} is not a node label key{_LABEL_KEYS}")
        restart = job.get("restart", {})
        if restart is not _BAD:
            defaults = RestartPolicy()
            delay = restart.get("delay", defaults.delay)
            most = restart.get("max_delay", defaults.max_delay)
            if _BAD not in (delay, most) and most < delay:
                self.problem(
                    "restart.max_delay",
                    f"{format_duration(most)} is less than delay ({format_duration(delay)})",
                )
        task = job.get("task", _BAD)
        known = self.task(task, ports) if task is not _BAD else None
        raw = job.get("ports", [])
        declared = raw if isinstance(raw, list) and _BAD not in raw else None
        self.checks(_listed(job.get("checks")), declared, known)

    def constraint(self, constraint: dict[str, Any], path: str) -> None:
        label, op, value = (
            constraint.get("label"),
            constraint.get("op", "="),
            constraint.get("value"),
        )
        if isinstance(label, str) and not _label_key(label):
            self.problem(f"{path}.label", f"{_quoted(label)} is not a node label key{_LABEL_KEYS}")
        if op is _BAD or value is _BAD or value is None:
            return
        if op in ("in", "not_in") and not isinstance(value, list):
            self.problem(f"{path}.value", f"op {op} needs a list of values, like [a, b]")
        elif op in ("=", "!=") and isinstance(value, list):
            self.problem(f"{path}.value", f"op {op} needs one value; for a list use in or not_in")
        elif isinstance(value, list) and not value:
            self.problem(f"{path}.value", "needs at least one value")
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(item, str) and not _label_value(item):
                at = f"{path}.value[{i}]" if isinstance(value, list) else f"{path}.value"
                self.problem(at, f"{_quoted(item)} can never match: not a node label value")

    def task(self, task: dict[str, Any], ports: list[str]) -> list[str]:
        """Checks the task's env and args; returns the variables an instance has."""
        env = task.get("env")
        env = env if isinstance(env, dict) else {}
        given = {"PORT", *(f"PORT_{port.upper()}" for port in ports)} if ports else set()
        for name in env:
            at = _join("task.env", name)
            if not ENV_NAME.match(name):
                why = "is not a variable name (letters, digits and _, not starting with a digit)"
                self.problem(at, why)
            elif name in given or name.startswith("COLONY_"):
                self.problem(at, "is set by Colony for each instance: choose another name")
        known = [*sorted(given), *AGENT_ENV, *env]
        self.variables(task.get("args"), "task.args", known, ports)
        return known

    def variables(self, args: Any, path: str, known: list[str], ports: list[str]) -> None:
        """Every `${NAME}` in args names a variable the instance has."""
        for i, arg in enumerate(_listed(args)):
            if not isinstance(arg, str):
                continue
            for match in ARG_VARIABLE.finditer(arg):
                name = match[1]
                if name in known:
                    continue
                if name == "PORT" or name.startswith("PORT_"):
                    why = f"${{{name}}}: the job declares no port {name[5:].lower() or ''}".rstrip()
                    why += f"; it has {', '.join(ports)}" if ports else "; add one under ports"
                else:
                    close = difflib.get_close_matches(name, known, n=1)
                    hint = f"; did you mean {close[0]}?" if close else ""
                    why = f"${{{name}}} is not set for the instance{hint} (set it under task.env)"
                self.problem(f"{path}[{i}]", why)

    def checks(self, checks: list[Any], ports: list[str] | None, known: list[str] | None) -> None:
        """Each check has what its type needs (and nothing of other types), names one of
        the job's ports, answers within its interval, and has a name of its own.
        `ports` is None when they were wrong already (a port cannot be told missing then)."""
        seen: dict[str, int] = {}
        defaults = HealthCheck(type="exec")
        for i, check in enumerate(checks):
            kind = check.get("type", _BAD) if isinstance(check, dict) else _BAD
            if kind is _BAD:
                continue  # not a mapping, or no valid type: reported already
            at = f"checks[{i}]"
            for name, kinds in _CHECK_FIELDS.items():
                if name in check and kind not in kinds:
                    what = name if name == "args" else f"a {name}"
                    only = " and ".join(kinds)
                    this = "an" if kind in ("exec", "http") else "a"
                    why = f"only {only} checks have {what} (this is {this} {kind} check)"
                    self.problem(f"{at}.{name}", why)
            port, command = check.get("port", ""), check.get("command", "")
            if kind == "exec" and not command:
                why = "an exec check needs a command (run in the instance's env; exit 0: healthy)"
                self.problem(f"{at}.command", why)
            elif kind != "exec" and ports is not None:
                self.port(port, ports, f"{at}.port" if "port" in check else at, kind)
            where = check.get("path", "/")
            if kind == "http" and isinstance(where, str) and not where.startswith("/"):
                self.problem(f"{at}.path", f"{_quoted(where)} must start with / (like /{where})")
            interval = check.get("interval", defaults.interval)
            timeout = check.get("timeout", defaults.timeout)
            if _BAD not in (interval, timeout) and timeout > interval:
                why = (
                    f"{format_duration(timeout)} is longer than interval "
                    f"({format_duration(interval)}): the next check would start first"
                )
                self.problem(f"{at}.timeout", why)
            if known is not None and kind == "exec":
                self.variables(check.get("args"), f"{at}.args", known, ports or [])
            name = check.get("name", "")
            if _BAD in (name, port, command) or not check.get(_CHECK_NEEDS[kind]):
                continue  # its name is not known (or its problem is said already)
            shown = _check_name(kind, name, port, command)
            if shown in seen:
                why = f"{_quoted(shown)} is also the name of checks[{seen[shown]}]"
                why += ": give each check its own name"
                self.problem(f"{at}.name" if name else at, why)
            else:
                seen[shown] = i

    def port(self, port: Any, ports: list[str], path: str, kind: str) -> None:
        """A tcp or http check's port: one the job declares."""
        if port is _BAD:
            return
        if not ports:
            why = f"a {kind} check needs a port, and the job declares none (add one under ports)"
            if port:
                why = f"the job has no port named '{port}' (it declares none: add one under ports)"
            self.problem(path, why)
        elif not port:
            self.problem(
                path, f"a {kind} check needs port: one of the job's ports ({', '.join(ports)})"
            )
        elif port not in ports:
            close = difflib.get_close_matches(port, ports, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            why = f"the job has no port named '{port}' (its ports: {', '.join(ports)}){hint}"
            self.problem(path, why)

    def warnings(self, spec: JobSpec) -> list[Problem]:
        found = []
        if spec.driver in ("docker", "microvm"):
            why = f"{spec.driver} is not available yet: no node can run this job"
            found.append(Problem(self.file, self.line("driver"), "driver", why))
        elif spec.driver == "sim":
            why = "sim runs nothing (it is for benchmarks)"
            found.append(Problem(self.file, self.line("driver"), "driver", why))
        update = spec.update
        if update.canary > spec.replicas:
            why = f"{update.canary} is more than replicas ({spec.replicas})"
            found.append(Problem(self.file, self.line("update.canary"), "update.canary", why))
        if update.auto_promote and not update.canary:
            why = "does nothing without canaries (update.canary)"
            at = "update.auto_promote"
            found.append(Problem(self.file, self.line(at), at, why))
        known = {"PORT", *(f"PORT_{p.upper()}" for p in spec.ports), *AGENT_ENV, *spec.task.env}
        commands = [("task.args", spec.task.command, spec.task.args)]
        commands += [(f"checks[{i}].args", c.command, c.args) for i, c in enumerate(spec.checks)]
        for path, command, args in commands:
            shell = Path(command).name in _SHELLS  # `sh -c 'echo $PORT'` expands it
            for i, arg in enumerate([] if shell else args):
                for name in re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", arg):
                    if name in known:
                        why = f"${name} is passed as is (no shell expands it): write ${{{name}}}"
                        at = f"{path}[{i}]"
                        found.append(Problem(self.file, self.line(at), at, why))
        return found


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a job file (its YAML form: sizes and durations may be strings with
    units). docs/jobspec.schema.json is this, written out; a test keeps them equal."""
    schema = msgspec.json.schema(JobSpec)
    defs = schema["$defs"]
    for (cls, name), unit in _UNIT_FIELDS.items():
        prop = defs[cls.__name__]["properties"][name]
        number = {k: v for k, v in prop.items() if k != "default"}
        prop.clear()
        prop["description"] = unit.description
        prop["anyOf"] = [number, {"type": "string", "pattern": unit.form}]
        (default,) = (f.default for f in mi.type_info(cls).fields if f.name == name)
        prop["default"] = unit.show(default)
    for name, cls in (
        ("resources", JobResources),
        ("restart", RestartPolicy),
        ("update", UpdateStrategy),
    ):
        # the defaults of a whole section, in the YAML form too
        props = defs[cls.__name__]["properties"]
        defs["JobSpec"]["properties"][name]["default"] = {k: v["default"] for k, v in props.items()}
    # what each type of check needs and must not have (editors then say so as one types)
    defs["HealthCheck"]["allOf"] = [
        {
            "if": {"properties": {"type": {"const": kind}}},
            "then": {
                "required": [needs],
                "not": {
                    "anyOf": [
                        {"required": [name]}
                        for name, kinds in _CHECK_FIELDS.items()
                        if kind not in kinds
                    ]
                },
            },
        }
        for kind, needs in _CHECK_NEEDS.items()
    ]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Colony job",
        "description": "A job file: what to run, how many, with what resources "
        "(see docs/jobspec.md).",
        **schema,
    }


def _join(path: str, key: str) -> str:
    key = key if re.match(r"^[A-Za-z_][A-Za-z0-9_-]*$", key) else json.dumps(key)
    return f"{path}.{key}" if path else key


def _parent(path: str) -> str:
    return re.sub(r"(\.?[^.\[]+|\[[^\]]*\])$", "", path)


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _shown(y: _Y) -> str:
    if y.kind != "scalar":
        return "a list" if y.kind == "list" else "a mapping"
    return _quoted(y.text) if isinstance(y.value, str) else y.text


def _unit_text(y: _Y, unit: _Unit) -> str:
    """A value with a unit as written, or a plain number with the unit it is read in."""
    if isinstance(y.value, str) or unit.show is not format_size:
        return y.text
    return f"{y.text} bytes"


def _expected(info: Any) -> str:
    names = {
        mi.StrType: "a string",
        mi.IntType: "a whole number",
        mi.FloatType: "a number",
        mi.BoolType: "true or false",
        mi.ListType: "a list",
        mi.DictType: "a mapping",
        mi.StructType: "a mapping",
        mi.LiteralType: "one of " + ", ".join(map(str, getattr(info, "values", ()))),
    }
    if isinstance(info, mi.UnionType):
        return " or ".join(_expected(t) for t in info.types)
    return names.get(type(info), "a value")


def _suggest(key: str, fields: dict[str, Any], cls: type) -> str:
    close = difflib.get_close_matches(key, fields, n=1)
    if close:
        return f"; did you mean {close[0]}?"
    # a field written at the wrong level: `cpu:` at the top instead of under resources
    for name, f in fields.items():
        info = f.type.item_type if isinstance(f.type, mi.ListType) else f.type
        if isinstance(info, mi.StructType) and any(g.name == key for g in info.fields):
            return f"; did you mean {name}.{key}?"
    if cls is JobSpec:
        return f" (a job has: {', '.join(fields)})"
    return f" (known: {', '.join(fields)})"


def _listed(values: Any) -> list[Any]:
    return values if isinstance(values, list) else []


def _good(values: Any) -> list[Any]:
    return [v for v in values if v is not _BAD] if isinstance(values, list) else []


def _label_key(text: str) -> bool:
    from colony.shared.messages import NodeLabelKey  # messages imports this module

    (meta,) = NodeLabelKey.__metadata__
    return len(text) <= meta.max_length and re.match(meta.pattern, text) is not None


def _label_value(text: str) -> bool:
    from colony.shared.messages import NodeLabelValue

    (meta,) = NodeLabelValue.__metadata__
    return len(text) <= meta.max_length and re.match(meta.pattern, text) is not None


def _too_big(file: str, size: int) -> Problem:
    why = f"is {size} bytes: a job file may be at most {MAX_SOURCE_BYTES} bytes"
    return Problem(file, None, "", why)


def _syntax_problem(file: str, error: yaml.MarkedYAMLError) -> Problem:
    mark = error.problem_mark or error.context_mark
    if "single document" in str(error.context):
        why = "holds more than one document (---): a job file is one job"
        return Problem(file, mark.line + 1 if mark else None, "", why)
    why = f"is not valid YAML: {error.problem or error.context}"
    if error.context and error.problem:
        why += f" ({error.context}"
        if error.context_mark and mark and error.context_mark.line != mark.line:
            why += f" on line {error.context_mark.line + 1}"
        why += ")"
    if "\\t" in why or "tab" in why:
        why += "; indent with spaces, not tabs"
    return Problem(file, mark.line + 1 if mark else None, "", why)


if __name__ == "__main__":  # python -m colony.shared.jobspec > docs/jobspec.schema.json
    print(json.dumps(json_schema(), indent=2))
