"""What every console screen shares: the status bar on top, the keys at the bottom, and
`update_view`, which the app calls with the areas of the model a batch changed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer

from colony.console.model import AREAS
from colony.console.widgets.status import StatusBar

if TYPE_CHECKING:
    from colony.console.app import ConsoleApp


class ConsoleScreen(Screen):
    """A screen of the console: subclasses compose their body and redraw the areas they
    show in `update_view` (in place: rows updated, not the table rebuilt)."""

    MODE = ""
    """The app mode (and status-bar tab) this screen belongs to."""

    @property
    def console(self) -> ConsoleApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield StatusBar(self.MODE)
        yield from self.compose_body()
        yield Footer()

    def compose_body(self) -> ComposeResult:
        yield from ()

    def on_mount(self) -> None:
        self.update_view(AREAS)

    def on_screen_resume(self) -> None:
        # updates were only drawn on the screen in front while this one was hidden
        self.update_view(AREAS)

    def update_view(self, changed: set[str] | frozenset[str]) -> None:
        """Redraw what shows the `changed` areas of the model (called once per batch)."""
        self.query_one(StatusBar).refresh()
