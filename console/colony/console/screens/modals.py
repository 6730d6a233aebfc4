"""Dialogs over a screen: confirm an action (some ask a value first), an event's whole
payload, the help listing every key."""

from __future__ import annotations

import json
from collections.abc import Callable

from rich.json import JSON
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static

from colony.console.model import EventRow


class ConfirmScreen(ModalScreen[str | None]):
    """Ask before acting: the result is the value typed ('' when nothing is asked), None
    when cancelled. With `ask`, an input takes a value `check` approves (its error text,
    or '' when fine)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("y", "confirm", "Yes", show=False)]

    def __init__(
        self,
        title: str,
        message: str,
        *,
        verb: str = "Yes",
        danger: bool = False,
        ask: str = "",
        value: str = "",
        check: Callable[[str], str] | None = None,
    ) -> None:
        super().__init__()
        self.title_text = title
        self.message = message
        self.verb = verb
        self.danger = danger
        self.ask = ask
        self.value = value
        self.check = check or (lambda _: "")

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="danger" if self.danger else ""):
            yield Static(Text(self.title_text, style="bold"), id="dialog-title")
            yield Static(Text(self.message), id="dialog-message")
            if self.ask:
                yield Input(value=self.value, placeholder=self.ask, id="dialog-input")
                yield Static(id="dialog-error")
            with Horizontal(id="dialog-buttons"):
                yield Button(self.verb, variant="error" if self.danger else "primary", id="yes")
                yield Button("Cancel", id="no")

    def on_mount(self) -> None:
        if self.ask:
            self.query_one("#dialog-input", Input).focus()
        else:  # (a stop or drain is not done by a stray enter: 'y' or a click does it)
            self.query_one("#no" if self.danger else "#yes", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "yes":
            self.action_confirm()
        else:
            self.action_cancel()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_confirm()

    def action_confirm(self) -> None:
        value = self.query_one("#dialog-input", Input).value.strip() if self.ask else ""
        problem = self.check(value)
        if problem:
            self.query_one("#dialog-error", Static).update(Text(problem, style="bold red"))
            return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class PayloadScreen(ModalScreen[None]):
    """One event, whole: its place in the stream and its detail as pretty JSON."""

    BINDINGS = [Binding("escape,enter,q", "close", "Close")]

    def __init__(self, row: EventRow) -> None:
        super().__init__()
        self.row = row

    def compose(self) -> ComposeResult:
        row = self.row
        payload = {
            "index": row.index,
            "ts": row.ts,
            "kind": row.kind,
            "id": row.id,
            "version": row.version,
            "summary": row.summary,
            "live": row.live,
            "detail": row.detail,
        }
        with Vertical(id="payload"):
            yield Static(
                Text.assemble((f"#{row.index} ", "dim"), (f"{row.kind} {row.id}", "bold")),
                id="payload-title",
            )
            with VerticalScroll(id="payload-body"):
                yield Static(JSON(json.dumps(payload, default=str), indent=2))
            yield Static(Text("esc closes", style="dim"))

    def action_close(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    """Every key: the app's, then each screen's, as their bindings say."""

    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def __init__(self, sections: list[tuple[str, list[tuple[str, str]]]]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        half = (len(self.sections) + 1) // 2
        with Vertical(id="help"):
            yield Static(Text("keys", style="bold"), id="help-title")
            with VerticalScroll(id="help-body"), Horizontal(id="help-columns"):
                yield Static(_keys_text(self.sections[:half]), classes="help-column")
                yield Static(_keys_text(self.sections[half:]), classes="help-column")
            yield Static(Text("esc closes · ctrl+p lists every command", style="dim"))

    def action_close(self) -> None:
        self.dismiss(None)


def _keys_text(sections: list[tuple[str, list[tuple[str, str]]]]) -> Text:
    text = Text()
    for title, keys in sections:
        if text:
            text.append("\n")
        text.append(title + "\n", style="bold underline")
        for key, description in keys:
            text.append(f"{key:>13}  ", style="bold cyan")
            text.append(description + "\n")
    return text
