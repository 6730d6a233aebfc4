"""Job specs: what a user asks Colony to run, as the system holds it.

A job file is YAML written by a person (durations like ``5m``, memory like
``512MiB``); `load` turns it into a `JobSpec`, whose fields are plain numbers
(seconds, bytes, cores), or explains exactly what is wrong with it. The
`JobSpec` travels in the `JobRun` command beside the file's text as given
(the system never changes what the user wrote).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

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
    meta: dict[str, str] = {}
