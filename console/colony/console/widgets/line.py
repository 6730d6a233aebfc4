"""A Static that redraws only when its text changes.

`Static.update` refreshes the widget and, by default, lays the whole screen out again:
called on every batch (a thousand changes a second), that is a full layout and a
repaint of every widget, each frame. A `Line` whose size is fixed by the CSS (`height`)
repaints only its own region, and only when what it says changed.
"""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget
from textual.widgets import Static


class Line(Static):
    """Text that may change often; `fixed`: its size does not depend on the text."""

    def __init__(
        self, text: str | Text = "", *, fixed: bool = True, id: str | None = None, classes=None
    ) -> None:
        super().__init__(text, id=id, classes=classes)
        self.fixed = fixed
        self._said: tuple | None = None

    def show(self, text: Text) -> None:
        said = (text.plain, text.style, tuple(text.spans))
        if said != self._said:
            self._said = said
            self.update(text, layout=not self.fixed)


def retitle(widget: Widget, title: str, subtitle: str | None = None) -> None:
    """Set `widget`'s border title (and subtitle), if it is not that already: setting one
    repaints the widget's whole region, children included, even when it does not change."""
    if widget.border_title != title:
        widget.border_title = title
    if subtitle is not None and widget.border_subtitle != subtitle:
        widget.border_subtitle = subtitle
