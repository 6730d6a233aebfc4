"""A DataTable kept in step with the model in place: cells updated where they changed
(only their rows drawn again), rows added and removed, the cursor staying on the same
row (by key)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, RowDoesNotExist, RowKey

Row = tuple[str, Sequence[Text]]
"""A row's key (the object's id) and its cells, one per column."""


class LiveTable(DataTable):
    """A row-cursor table whose rows are keyed by the object they show."""

    def __init__(self, columns: Sequence[tuple[str, str]], id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._columns = list(columns)
        self._cells: dict[str, tuple[Text, ...]] = {}

    def on_mount(self) -> None:
        self.set_columns(self._columns)

    def set_columns(self, columns: Sequence[tuple[str, str]]) -> None:
        """(key, label) per column; changing them empties the table (sync refills it)."""
        self._columns = list(columns)
        self.clear(columns=True)
        self._cells.clear()
        for key, label in self._columns:
            self.add_column(Text(label, style="bold"), key=key)

    @property
    def column_keys(self) -> list[str]:
        return [key for key, _ in self._columns]

    @property
    def selected(self) -> str | None:
        """The key of the row under the cursor (None: the table is empty)."""
        if not self.row_count:
            return None
        try:
            key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        except Exception:  # a cursor past the rows just removed
            return None
        return key.value

    def select(self, key: str) -> None:
        with contextlib.suppress(RowDoesNotExist):
            self.move_cursor(row=self.get_row_index(key))

    def sync(self, rows: Sequence[Row]) -> None:
        """Show exactly `rows`, in their order: only the cells that changed are touched;
        the table is refilled only when rows appear out of order."""
        keys = [key for key, _ in rows]
        shown = list(self._cells)
        wanted = set(keys)
        kept = [key for key in shown if key in wanted]
        if kept != keys[: len(kept)]:
            self._refill(rows)
            return
        # a row removed above the cursor would leave it on the next row's place: keep it
        # on the row it was on (an action key would act on another job or node)
        selected = self.selected
        removed = False
        for key in shown:
            if key not in wanted:
                self.remove_row(key)
                del self._cells[key]
                removed = True
        columns = self.column_keys
        updates: dict[str, list[tuple[str, Text]]] = {}
        for key, cells in rows:
            cells = tuple(cells)
            old = self._cells.get(key)
            if old is None:
                self.add_row(*cells, key=key)
            elif not all(map(_same, old, cells)):
                updates[key] = [
                    (column, after)
                    for column, before, after in zip(columns, old, cells, strict=True)
                    if not _same(before, after)
                ]
            self._cells[key] = cells
        if updates:
            self._update_rows(updates)
        if removed and selected in self._cells:
            self.select(selected)

    def _update_rows(self, updates: dict[str, list[tuple[str, Text]]]) -> None:
        """Set the cells that changed, and redraw only their rows.

        DataTable.update_cell makes every cached render of the table stale (its caches
        are keyed by a count of updates) and redraws all of it: at a thousand changes a
        second, every cell in sight was rendered again each frame. Here only the renders
        of the rows that changed are dropped (Textual 8's caches: cells' and rows' keyed
        by the row first), unless a cell no longer fits its column: then the column
        widens and all is drawn again. (Columns widen, they do not narrow: a table whose
        columns shrink and grow with each update would not sit still.)"""
        widened = False
        for key, changes in updates.items():
            data = self._data[RowKey(key)]
            for column, value in changes:
                data[ColumnKey(column)] = value
                found = self.columns[ColumnKey(column)]
                if value.cell_len > found.content_width:
                    found.content_width = value.cell_len
                    widened = True
        if widened:
            self._update_count += 1
            self._require_update_dimensions = True
            self.refresh()
            return
        stale = {RowKey(key) for key in updates}
        for cache in (self._cell_render_cache, self._row_render_cache):
            for cached in [k for k in cache.keys() if k[0] in stale]:  # noqa: SIM118 (no iter)
                cache.discard(cached)
        self._line_cache.clear()
        for row_key in stale:
            index = self._row_locations.get(row_key)
            self._row_renderable_cache.discard((self._update_count, index))
            self.refresh_row(index)

    def _refill(self, rows: Sequence[Row]) -> None:
        selected = self.selected
        self.clear()
        self._cells.clear()
        for key, cells in rows:
            self._cells[key] = tuple(cells)
            self.add_row(*cells, key=key)
        if selected is not None:
            self.select(selected)

    def append(self, rows: Sequence[Row], limit: int) -> None:
        """Add `rows` at the bottom, keeping about the last `limit` (between `limit` and
        half as many again); the cursor follows the newest row when it was on the last."""
        following = self.row_count == 0 or self.cursor_row >= self.row_count - 1
        for key, cells in rows:
            if key in self._cells:
                continue
            self._cells[key] = tuple(cells)
            self.add_row(*cells, key=key)
        if len(self._cells) > limit + limit // 2:
            # one refill of `limit` rows, not a removal per row: DataTable.remove_row
            # re-indexes every row, so removing k of n rows costs k*n
            self._refill(list(self._cells.items())[-limit:])
        if following and self.row_count:
            self.move_cursor(row=self.row_count - 1)

    def _render_cell(
        self,
        row_index: int,
        column_index: int,
        base_style: Style,
        width: int,
        cursor: bool = False,
        hover: bool = False,
    ) -> list[list[Segment]]:
        """A one-line Text cell made into segments directly: what DataTable does for any
        renderable (Padding in Styled through the console) costs ~10 times more, and each
        changed row's cells are rendered again. Same key, same cache, same result;
        anything else (the header, a cell of several lines) goes DataTable's way."""
        if row_index < 0 or column_index < 0:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        row_key = self._row_locations.get_key(row_index)
        column_key = self._column_locations.get_key(column_index)
        key = (
            row_key,
            column_key,
            base_style,
            cursor,
            hover,
            self._show_hover_cursor,
            self._update_count,
            self._pseudo_class_state,
        )
        cached = self._cell_render_cache.get(key)
        if cached is not None:
            return cached
        cell = self._data[row_key].get(column_key)
        if (
            self.rows[row_key].height != 1
            or not isinstance(cell, Text)
            or cell.justify not in (None, "default", "left", "right")
            or "\n" in cell.plain
            or "\t" in cell.plain
        ):
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        fixed = row_index < self.fixed_rows or column_index < self.fixed_columns
        component, post = self._get_styles_to_render_cell(
            False,
            False,
            fixed,
            hover,
            cursor,
            self.show_cursor,
            self._show_hover_cursor,
            self.cursor_foreground_priority == "css",
            self.cursor_background_priority == "css",
        )
        pre = base_style + Style.from_meta({"row": row_index, "column": column_index}) + component
        line = _one_line(cell, width, self.cell_padding, self.app.console)
        lines = [list(Segment.apply_style(line, pre, post))]
        self._cell_render_cache[key] = lines
        return lines


def _one_line(cell: Text, width: int, padding: int, console: Console) -> list[Segment]:
    """`cell` in `width` columns with `padding` each side, as Rich would render it without
    wrapping (cut as its overflow says, justified as it says)."""
    inner = max(0, width - 2 * padding)
    overflow = cell.overflow or "fold"
    line = cell
    if cell.justify == "left":
        line = cell.copy()
        line.truncate(inner, overflow=overflow, pad=True)
    elif cell.justify == "right":
        line = cell.copy()
        line.rstrip()
        line.truncate(inner, overflow=overflow)
        line.pad_left(inner - line.cell_len)
    elif cell.cell_len > inner:
        line = cell.copy()
        line.truncate(inner, overflow=overflow)
    blank = Style.null()
    segments = [Segment(" " * padding, blank)] if padding else []
    rendered = line.render(console, end="")
    if line.style:  # (render leaves the text's own style out when it has no spans)
        rendered = Segment.apply_style(rendered, console.get_style(line.style))
    segments += rendered
    if line.cell_len < inner:
        segments.append(Segment(" " * (inner - line.cell_len), blank))
    if padding:
        segments.append(Segment(" " * padding, blank))
    return segments


def _same(a: Text, b: Text) -> bool:
    # Text's own == leaves out the base style: a status turning from green to red would not
    # count as a change
    return a.plain == b.plain and a.style == b.style and a.spans == b.spans
