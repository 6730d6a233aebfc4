"""A check of Prometheus text exposition: `promtool check metrics`, and a little more.

`lint(text)` reports what promtool's linter (client_golang's promlint) reports, in
its words: no help text, a counter without _total, a gauge ending in _count, _sum,
_bucket or _total, the type in the name, ':' or camelCase in names, units that are
not base units or are abbreviated, 'le' or 'quantile' labels where they do not
belong. It also reports what promtool's parser refuses (a second HELP or TYPE line,
TYPE after samples, a family whose lines are not together, bad syntax) and what
Prometheus would refuse or misread that promtool lets through: the same series
twice, reserved label names, and histograms whose buckets, count and sum do not
agree. prometheus_client's own parser must read the text too.

`promtool(text)` runs the real promtool when it is installed (Debian's `prometheus`
package has it), for tests that want both.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})?[ \t]+(\S+)(?:[ \t]+(-?\d+))?[ \t]*$")
_LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*(,|$)')
_COMMENT = re.compile(rf"^#[ \t]+(HELP|TYPE)[ \t]+({_NAME})(?:[ \t]+(.*))?$")
_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")
_CAMEL = re.compile(r"[a-z][A-Z]")

BASE_UNITS = {
    # promlint's table: a unit in a name must be the base one
    **{u: u for u in ("amperes", "bytes", "celsius", "grams", "joules", "kelvin")},
    **{u: u for u in ("meters", "metres", "seconds", "volts")},
    **dict.fromkeys(("minutes", "hours", "days", "weeks"), "seconds"),
    **dict.fromkeys(("fahrenheit", "rankine"), "celsius"),
    **dict.fromkeys(("inches", "yards", "miles"), "meters"),
    "bits": "bytes",
    "calories": "joules",
    **dict.fromkeys(("pounds", "ounces"), "grams"),
}
UNIT_PREFIXES = (
    "pico", "nano", "micro", "milli", "centi", "deci", "deca", "hecto", "kilo", "kibi",
    "mega", "mibi", "giga", "gibi", "tera", "tebi", "peta", "pebi",
)  # fmt: skip
ABBREVIATIONS = {"s", "ms", "us", "ns", "sec", "b", "kb", "mb", "gb", "tb", "pb", "m", "h", "d"}


@dataclass(frozen=True, order=True)
class Problem:
    metric: str
    text: str

    def __str__(self) -> str:
        return f"{self.metric} {self.text}" if self.metric else self.text


@dataclass
class Family:
    name: str
    type: str = "untyped"
    help: str | None = None
    typed: bool = False
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def owns(self, sample: str) -> bool:
        """Whether a sample of this name belongs to this family (given its type)."""
        suffixes = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
        return sample == self.name or sample in {self.name + s for s in suffixes.get(self.type, ())}


def lint(text: str) -> list[Problem]:
    """Every problem in `text`, sorted, each once."""
    families, problems = parse(text)
    try:
        list(text_string_to_metric_families(text))
    except ValueError as e:
        problems.append(Problem("", f"prometheus_client cannot parse it: {e}"))
    for family in families:
        problems += _family_problems(family)
    return sorted(set(problems))


def parse(text: str) -> tuple[list[Family], list[Problem]]:
    """The families in `text`, in order, and what makes the text itself invalid."""
    families: list[Family] = []
    problems: list[Problem] = []
    done: set[str] = set()  # families whose lines ended (another family started)
    current: Family | None = None

    def start(name: str) -> Family:
        nonlocal current
        if current is not None:
            done.add(current.name)
        if name in done:
            problems.append(Problem(name, "family not unique: its lines are not together"))
        current = Family(name)
        families.append(current)
        return current

    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            comment = _COMMENT.match(line)
            if comment is None:
                continue  # any other comment is allowed
            kind, name, rest = comment.group(1), comment.group(2), comment.group(3) or ""
            family = current if current is not None and current.name == name else start(name)
            if kind == "HELP":
                if family.help is not None:
                    problems.append(Problem(name, f"line {number}: second HELP line"))
                family.help = rest
            elif family.typed or family.samples:
                problems.append(Problem(name, f"line {number}: second TYPE line, or after samples"))
            elif rest not in _TYPES:
                problems.append(Problem(name, f"line {number}: unknown type {rest!r}"))
            else:
                family.type, family.typed = rest, True
            continue
        parsed = _sample(line)
        if isinstance(parsed, str):
            problems.append(Problem("", f"line {number}: {parsed}: {line[:120]!r}"))
            continue
        name, labels, value = parsed
        family = current if current is not None and current.owns(name) else start(name)
        family.samples.append((name, labels, value))
    return families, problems


def _sample(line: str) -> tuple[str, dict[str, str], float] | str:
    match = _SAMPLE.match(line)
    if match is None:
        return "not a sample"
    name, raw_labels, raw_value = match.group(1), match.group(2), match.group(3)
    labels: dict[str, str] = {}
    position = 0
    while raw_labels and position < len(raw_labels):
        label = _LABEL.match(raw_labels, position)
        if label is None:
            return "bad labels"
        if label.group(1) in labels:
            return f"label {label.group(1)} twice"
        labels[label.group(1)] = label.group(2)
        position = label.end()
    try:
        value = float(raw_value)
    except ValueError:
        return f"bad value {raw_value!r}"
    return name, labels, value


def _family_problems(family: Family) -> list[Problem]:
    name, kind = family.name, family.type
    out: list[str] = []
    if not family.help:
        out.append("no help text")
    if kind == "counter" and not name.endswith("_total"):
        out.append('counter metrics should have "_total" suffix')
    if kind != "counter" and name.endswith("_total"):
        out.append('non-counter metrics should not have "_total" suffix')
    if kind not in ("histogram", "summary"):
        out += [
            f'non-histogram and non-summary metrics should not have "{suffix}" suffix'
            for suffix in ("_count", "_sum", "_bucket")
            if name.endswith(suffix)
        ]
    out += [
        f"metric name should not include type '{t}'"
        for t in ("counter", "gauge", "histogram", "summary", "gauge_histogram")
        if f"_{t}_" in name or name.endswith(f"_{t}")
    ]
    if ":" in name:
        out.append("metric names should not contain ':'")
    if _CAMEL.search(name):
        out.append("metric names should be written in 'snake_case' not 'camelCase'")
    out += _unit_problems(name)
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for sample, labels, _value in family.samples:
        if "le" in labels and kind != "histogram":
            out.append('non-histogram metrics should not have "le" label')
        if "quantile" in labels and kind != "summary":
            out.append('non-summary metrics should not have "quantile" label')
        for label in labels:
            if _CAMEL.search(label):
                out.append("label names should be written in 'snake_case' not 'camelCase'")
            if label.startswith("__"):
                out.append(f'label name "{label}" is reserved (it begins with "__")')
        key = (sample, tuple(sorted(labels.items())))
        if key in seen:
            out.append(f"metric not unique: {sample}{dict(labels)} twice")
        seen.add(key)
    if kind == "histogram":
        out += _histogram_problems(family)
    return [Problem(name, text) for text in out]


def _unit_problems(name: str) -> list[str]:
    out = []
    for token in name.split("_"):
        if token in ABBREVIATIONS:
            out.append("metric names should not contain abbreviated units")
        unit = next((token[len(p) :] for p in UNIT_PREFIXES if token.startswith(p)), token)
        base = BASE_UNITS.get(unit)
        if base is not None and base != token:
            out.append(f'use base unit "{base}" instead of "{token}"')
    return out


def _histogram_problems(family: Family) -> list[str]:
    """Per series (labels but le): cumulative buckets up to +Inf, which equals _count;
    and a _sum."""
    series: dict[tuple[tuple[str, str], ...], dict[str, list[tuple[float, float]]]] = {}
    out = []
    for sample, labels, value in family.samples:
        part = sample.removeprefix(family.name) or "_untyped"
        key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        parts = series.setdefault(key, {})
        if part == "_bucket":
            try:
                le = float(labels["le"])
            except (KeyError, ValueError):
                out.append(f"histogram bucket with a bad or missing le: {labels}")
                continue
            parts.setdefault("_bucket", []).append((le, value))
        else:
            parts.setdefault(part, []).append((0.0, value))
    for key, parts in series.items():
        where = f" (labels {dict(key)})" if key else ""
        buckets = parts.get("_bucket", [])
        bounds = [le for le, _ in buckets]
        counts = [count for _, count in buckets]
        if "_untyped" in parts:
            out.append(f"histogram has a sample with no _bucket, _sum or _count suffix{where}")
        if not buckets or not math.isinf(bounds[-1]):
            out.append(f"histogram has no +Inf bucket (last){where}")
        if bounds != sorted(set(bounds)):
            out.append(f"histogram bucket bounds do not increase{where}")
        if counts != sorted(counts):
            out.append(f"histogram buckets are not cumulative{where}")
        if len(parts.get("_count", [])) != 1 or len(parts.get("_sum", [])) != 1:
            out.append(f"histogram needs one _count and one _sum{where}")
        elif buckets and math.isinf(bounds[-1]) and counts[-1] != parts["_count"][0][1]:
            out.append(f"histogram _count differs from its +Inf bucket{where}")
    return out


def promtool(text: str) -> list[str] | None:
    """What the real `promtool check metrics` says about `text` (no lines: nothing);
    None when promtool is not installed."""
    binary = shutil.which("promtool")
    if binary is None:
        return None
    done = subprocess.run(
        [binary, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    said = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    if done.returncode != 0 and not said:
        said = [f"promtool check metrics exited with {done.returncode}"]
    return said
