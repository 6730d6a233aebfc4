"""Cluster (1): every node with its state, roles, resources and instances; below, the
selected node's resources over time and its own view of the membership group."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Sparkline

from colony.console.model import NodeRow
from colony.console.screens.base import ConsoleScreen
from colony.console.widgets import cells
from colony.console.widgets.line import Line, retitle
from colony.console.widgets.table import LiveTable

WIDE = 110
"""From this width on, the nodes table shows the cpu and memory trends in line."""
TREND = 12


def node_columns(wide: bool) -> list[tuple[str, str]]:
    columns = [
        ("name", "NODE"),
        ("status", "STATUS"),
        ("roles", "ROLES"),
        ("cpu", "CPU"),
        ("mem", "MEMORY"),
        ("inst", "INST"),
    ]
    if wide:
        columns.insert(4, ("cpu_trend", "cpu trend"))
        columns.insert(6, ("mem_trend", "mem trend"))
        columns.append(("address", "ADDRESS"))
    return columns


def node_cells(row: NodeRow, wide: bool) -> list[Text]:
    found = [
        cells.cell(row.name, "bold"),
        cells.node_status(row.status, row.drain, row.eligible),
        cells.roles(row.roles if wide else [r.replace("manager ", "mgr ") for r in row.roles]),
        cells.usage(row.cpu_reserved, row.cpu_used, row.cpu_capacity),
        cells.usage(row.memory_reserved, row.memory_used, row.memory_capacity, cells.short_bytes),
        cells.number(row.instances),
    ]
    if wide:
        found.insert(4, cells.spark(row.cpu_history, TREND, row.cpu_capacity))
        found.insert(6, cells.spark(row.memory_history, TREND, row.memory_capacity))
        found.append(cells.cell(row.address, "dim"))
    return found


def trend_label(what: str, history: list[float], capacity: float, fmt) -> Text:
    """'cpu used 0.50 (peak 2.2) of 4.0': the sparkline's legend."""
    if not history:
        return Text(f"{what}: no samples heard", style="dim")
    return Text.assemble(
        (f"{what} used ", "dim"),
        (fmt(history[-1]), "bold"),
        (f"  peak {fmt(max(history))}", "dim"),
        (f"  of {fmt(capacity)}" if capacity else "", "dim"),
    )


class ClusterScreen(ConsoleScreen):
    MODE = "cluster"
    BINDINGS = [
        Binding("d", "drain", "Drain"),
        Binding("u", "undrain", "Undrain"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._wide: bool | None = None
        self._rows: dict[str, NodeRow] = {}

    def compose_body(self) -> ComposeResult:
        yield LiveTable(node_columns(False), id="nodes")
        with Horizontal(id="node-detail"):
            with Vertical(id="node-usage"):
                yield Line(id="node-summary")
                yield Line("cpu used", id="cpu-label", classes="spark-label")
                yield Sparkline([], id="cpu-spark")
                yield Line("memory used", id="mem-label", classes="spark-label")
                yield Sparkline([], id="mem-spark")
            yield LiveTable(
                [("name", "MEMBER"), ("status", "STATUS"), ("inc", "INC"), ("since", "SINCE")],
                id="members",
            )

    @property
    def selected(self) -> NodeRow | None:
        key = self.query_one("#nodes", LiveTable).selected
        return self._rows.get(key) if key else None

    def on_resize(self) -> None:
        self._draw_nodes()

    def update_view(self, changed) -> None:
        super().update_view(changed)
        if changed & {"nodes", "metrics", "roles", "members", "instances"}:
            self._draw_nodes()

    def _draw_nodes(self) -> None:
        table = self.query_one("#nodes", LiveTable)
        wide = self.size.width >= WIDE
        if wide != self._wide:
            self._wide = wide
            table.set_columns(node_columns(wide))
        rows = self.console.model.node_rows()
        self._rows = {row.node: row for row in rows}
        table.sync([(row.node, node_cells(row, wide)) for row in rows])
        alive = sum(row.status == "alive" for row in rows)
        retitle(table, f"nodes ({alive}/{len(rows)} alive)", "cpu, memory: reserved/used/capacity")
        self._draw_detail()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "nodes":
            self._draw_detail()

    def _draw_detail(self) -> None:
        row = self.selected
        summary = self.query_one("#node-summary", Line)
        cpu = self.query_one("#cpu-spark", Sparkline)
        mem = self.query_one("#mem-spark", Sparkline)
        members = self.query_one("#members", LiveTable)
        if row is None:
            summary.show(Text("no nodes heard of yet", style="dim"))
            cpu.data, mem.data = [], []
            members.sync([])
            return
        text = Text.assemble(("id ", "dim"), row.node)
        if row.address:
            text.append("  address ", style="dim")
            text.append(row.address)
        text.append("\n")
        text.append_text(cells.node_status(row.status, row.drain, row.eligible))
        text.append(f"  {row.instances} instances", style="")
        if row.roles:
            text.append("  ")
            text.append_text(cells.roles(row.roles))
        # (what is used, and its peak, the sparklines' labels say)
        for what, reserved, capacity, fmt in (
            ("cpu", row.cpu_reserved, row.cpu_capacity, cells.short_cores),
            ("memory", row.memory_reserved, row.memory_capacity, cells.short_bytes),
        ):
            text.append(f"\n{what} reserved ", style="dim")
            text.append(fmt(reserved), style="bold")
            if capacity:
                text.append(f"  of {fmt(capacity)}", style="dim")
        summary.show(text)
        retitle(self.query_one("#node-usage"), row.name)
        self.query_one("#cpu-label", Line).show(
            trend_label("cpu", row.cpu_history, row.cpu_capacity, cells.short_cores)
        )
        self.query_one("#mem-label", Line).show(
            trend_label("memory", row.memory_history, row.memory_capacity, cells.short_bytes)
        )
        cpu.data = row.cpu_history or [0.0]
        mem.data = row.memory_history or [0.0]
        self._draw_members(row.node)

    def _draw_members(self, node: str) -> None:
        model = self.console.model
        reply = model.members_of(node)
        rows = []
        if reply is not None:
            for m in sorted(reply.members, key=lambda m: model.node_name(m.node)):
                rows.append(
                    (
                        m.node,
                        [
                            cells.cell(model.node_name(m.node)),
                            cells.node_status(m.status),
                            cells.number(m.incarnation),
                            cells.cell(cells.human_age(m.since), "dim"),
                        ],
                    )
                )
        table = self.query_one("#members", LiveTable)
        table.sync(rows)
        name = model.node_name(node)
        retitle(table, f"members as {name} sees them" if reply else f"{name}: no view heard")

    def action_drain(self) -> None:
        row = self.selected
        if row is not None:
            self.console.ask_drain(row.node)

    def action_undrain(self) -> None:
        row = self.selected
        if row is not None:
            self.console.ask_undrain(row.node)
