"""Jobs (2): every job's desired / running / healthy instances, version, rollout and last
event; enter opens a job: its instances, its versions and its history."""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, ProgressBar

from colony.console.actions import ActionError
from colony.console.model import EventFilter, InstanceRow, JobRow
from colony.console.screens.base import ConsoleScreen
from colony.console.widgets import cells
from colony.console.widgets.line import Line, retitle
from colony.console.widgets.table import LiveTable

JOB_COLUMNS = [
    ("name", "JOB"),
    ("version", "VER"),
    ("desired", "WANT"),
    ("running", "RUN"),
    ("healthy", "OK"),
    ("progress", "ROLLOUT"),
    ("rollout", ""),
    ("event", "LAST EVENT"),
]
BAR = 10
"""Width of the rollout bar in the jobs table."""


def job_cells(row: JobRow, now: float, said: int = 30, event: int = 60) -> list[Text]:
    """The row's cells, the rollout's words cut at `said` characters, the last event's at
    `event`."""
    short = row.healthy < row.desired
    name = cells.cell(row.name, "bold")
    if row.status == "stopped":
        name.append(" stopped", style="dim")
    rollout = Text(cells.clip(row.rollout, said), style="yellow" if row.waiting_promote else "")
    if row.blocked:
        rollout = Text(cells.clip("blocked: " + row.blocked, said), style="red")
    last = Text(cells.clip(row.last_event, event))
    if row.last_event_ts:
        last = Text.assemble((cells.age(row.last_event_ts, now) + " ", "dim"), last)
    return [
        name,
        Text(f"v{row.version}"),
        cells.number(row.desired),
        cells.number(row.running, "yellow" if row.running < row.desired else ""),
        cells.number(
            row.healthy,
            "bold red" if short and row.healthy == 0 else "yellow" if short else "green",
        ),
        cells.bar(row.progress, BAR),
        rollout,
        last,
    ]


def progress(bar: ProgressBar, row: JobRow | None) -> None:
    bar.update(total=100, progress=round((row.progress if row else 0) * 100))


INSTANCE_COLUMNS = [
    ("slot", "SLOT"),
    ("id", "INSTANCE"),
    ("version", "VER"),
    ("node", "NODE"),
    ("state", "STATE"),
    ("health", "HEALTH"),
    ("restarts", "RST"),
    ("age", "AGE"),
    ("address", "ADDRESS"),
]


def instance_cells(row: InstanceRow, now: float) -> list[Text]:
    slot = Text(str(row.slot), justify="right")
    if row.canary:
        slot.append(" c", style="yellow")
    return [
        slot,
        cells.cell(row.id, "dim" if row.desired != "run" else ""),
        Text(f"v{row.version}"),
        cells.cell(row.node),
        cells.state(row.state, row.desired),
        cells.health(row.health),
        cells.number(row.restarts, "yellow" if row.restarts else "dim"),
        Text(cells.age(row.started_at, now)),
        cells.cell(row.address or "—", "" if row.address else "dim"),
    ]


class JobActions:
    """The job actions' keys, on the jobs list and on a job's page (mixed into both)."""

    BINDINGS = [
        Binding("s", "scale", "Scale"),
        Binding("r", "rollback", "Rollback"),
        Binding("p", "promote", "Promote"),
        Binding("x", "stop", "Stop"),
    ]

    def current_job(self) -> str | None:
        raise NotImplementedError

    def action_scale(self) -> None:
        if job := self.current_job():
            self.app.ask_scale(job)  # type: ignore[attr-defined]

    def action_rollback(self) -> None:
        if job := self.current_job():
            self.app.ask_rollback(job)  # type: ignore[attr-defined]

    def action_promote(self) -> None:
        if job := self.current_job():
            self.app.ask_promote(job)  # type: ignore[attr-defined]

    def action_stop(self) -> None:
        if job := self.current_job():
            self.app.ask_stop(job)  # type: ignore[attr-defined]


class JobsScreen(JobActions, ConsoleScreen):
    MODE = "jobs"
    BINDINGS = [*JobActions.BINDINGS, Binding("enter", "open", "Open", show=False)]

    def __init__(self) -> None:
        super().__init__()
        self._rows: dict[str, JobRow] = {}
        """The rows drawn last, by job."""

    def compose_body(self) -> ComposeResult:
        yield LiveTable(JOB_COLUMNS, id="jobs")
        with Vertical(id="job-summary"):
            yield Line(id="job-line")
            yield ProgressBar(total=100, show_eta=False, id="job-progress")
        yield LiveTable(INSTANCE_COLUMNS, id="job-instances")

    def current_job(self) -> str | None:
        return self.query_one("#jobs", LiveTable).selected

    def update_view(self, changed) -> None:
        super().update_view(changed)
        if changed & {"jobs", "instances", "events", "nodes", "clock"}:
            self._draw()

    def on_resize(self) -> None:
        self._draw()

    def _draw(self) -> None:
        now = self.console.clock()
        rows = self.console.model.job_rows()
        table = self.query_one("#jobs", LiveTable)
        # what is left of the width once the numbers are shown goes to the words
        width = self.size.width
        said = 30 if width >= 100 else 18
        names = max((len(row.name) for row in rows), default=3)
        event = max(12, width - 47 - said - names)
        table.sync([(row.name, job_cells(row, now, said, event)) for row in rows])
        retitle(table, f"jobs ({len(rows)})")
        self._rows = {row.name: row for row in rows}
        self._draw_summary()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._draw_summary()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def _draw_summary(self) -> None:
        job = self.current_job()
        row = self._rows.get(job) if job else None
        line = self.query_one("#job-line", Line)
        if row is None:
            line.show(Text("no jobs yet: run one with `colony job run FILE`", style="dim"))
        else:
            text = Text.assemble((row.name, "bold"), f" v{row.version}  ")
            text.append(
                row.rollout or "no rollout recorded", style="yellow" if row.waiting_promote else ""
            )
            if row.waiting_promote:
                text.append("  (p promotes)", style="dim")
            line.show(text)
        progress(self.query_one("#job-progress", ProgressBar), row)
        instances = self.query_one("#job-instances", LiveTable)
        if row is None:
            instances.sync([])
            retitle(instances, "")
            return
        now = self.console.clock()
        found = self.console.model.instance_rows(row.name)
        instances.sync([(i.id, instance_cells(i, now)) for i in found])
        retitle(instances, f"{row.name}: instances (enter opens the job)")

    def action_open(self) -> None:
        if job := self.current_job():
            self.app.push_screen(JobScreen(job))


class JobScreen(JobActions, ConsoleScreen):
    """One job: summary and rollout, its instances, its versions and its history."""

    MODE = "jobs"
    BINDINGS = [
        *JobActions.BINDINGS,
        Binding("l", "logs", "Logs"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, job: str) -> None:
        super().__init__()
        self.job = job
        self._version = -1
        """The job version the versions table was read at."""

    def current_job(self) -> str | None:
        return self.job

    def compose_body(self) -> ComposeResult:
        with Vertical(id="job-head"):
            yield Line(id="job-title")
            yield ProgressBar(total=100, show_eta=False, id="job-progress")
        yield LiveTable(INSTANCE_COLUMNS, id="instances")
        with Horizontal(id="job-lower"):
            yield LiveTable(
                [("version", "VER"), ("when", "AGE"), ("outcome", "OUTCOME"), ("cause", "CAUSE")],
                id="versions",
            )
            yield LiveTable([("time", "TIME"), ("summary", "WHAT")], id="history")

    def on_mount(self) -> None:
        retitle(self.query_one("#versions"), "versions")
        retitle(self.query_one("#history"), "history")
        super().on_mount()

    def update_view(self, changed) -> None:
        super().update_view(changed)
        model = self.console.model
        now = self.console.clock()
        row = next((r for r in model.job_rows() if r.name == self.job), None)
        if changed & {"jobs", "instances", "nodes", "clock"}:
            self._draw_head(row)
            instances = model.instance_rows(self.job)
            table = self.query_one("#instances", LiveTable)
            table.sync([(i.id, instance_cells(i, now)) for i in instances])
            retitle(table, f"instances ({sum(i.desired == 'run' for i in instances)} wanted)")
        if changed & {"events"}:
            history = model.events_matching(EventFilter(job=self.job), limit=50)
            table = self.query_one("#history", LiveTable)
            room = max(20, self.app.size.width // 2 - 18)
            table.append(
                [
                    (
                        str(e.index),
                        [
                            cells.cell(cells.clock_time(e.ts), "dim"),
                            cells.cell(cells.clip(e.summary, room)),
                        ],
                    )
                    for e in history
                ],
                limit=50,
            )
        if row is not None and row.version != self._version:
            self._version = row.version
            self.read_versions()

    def _draw_head(self, row: JobRow | None) -> None:
        title = self.query_one("#job-title", Line)
        if row is None:
            title.show(Text.assemble((self.job, "bold"), ("  gone (stopped and purged)", "dim")))
            progress(self.query_one("#job-progress", ProgressBar), None)
            return
        text = Text.assemble(
            (row.name, "bold"),
            f" v{row.version} ",
            (row.status, "green" if row.status == "running" else "dim"),
            f"   want {row.desired}  run {row.running}  ",
            ("ok " + str(row.healthy), "green" if row.healthy >= row.desired else "yellow"),
        )
        text.append("\n")
        text.append(
            row.rollout or "no rollout recorded", style="yellow" if row.waiting_promote else ""
        )
        if row.blocked:
            text.append("  blocked: " + row.blocked, style="red")
        title.show(text)
        progress(self.query_one("#job-progress", ProgressBar), row)

    @work(exclusive=True, group="versions", exit_on_error=False)
    async def read_versions(self) -> None:
        table = self.query_one("#versions", LiveTable)
        try:
            versions = await self.console.cluster_actions.versions(self.job)
        except Exception as e:  # an unforeseen failure reads as one too, not a crash
            said = str(e) if isinstance(e, ActionError) else f"{type(e).__name__}: {e}"
            retitle(table, "versions: not read")
            self.notify(said, title=f"versions of {self.job}", severity="error", markup=False)
            return
        now = self.console.clock()
        room = max(8, self.app.size.width // 2 - 32)
        table.sync(
            [
                (
                    str(v.version),
                    [
                        Text(f"v{v.version}", style="bold" if v.current else ""),
                        Text(cells.age(v.submitted, now)),
                        Text(
                            v.outcome or ("current" if v.current else "—"),
                            style=_outcome(v.outcome),
                        ),
                        cells.cell(cells.clip(v.cause or v.reason, room), "dim"),
                    ],
                )
                for v in versions
            ]
        )

    def action_logs(self) -> None:
        key = self.query_one("#instances", LiveTable).selected
        if key:
            self.console.follow(key)

    def action_back(self) -> None:
        self.dismiss()


def _outcome(outcome: str) -> str:
    return {"succeeded": "green", "failed": "bold red", "reverted": "yellow"}.get(outcome, "dim")
