"""Modal dialogs: a yes/no confirmation for disruptive commands and a small form."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

DIALOG_CSS = """
ConfirmDialog, FormDialog {
    align: center middle;
}
#dialog {
    width: 64;
    height: auto;
    max-height: 22;
    border: heavy $warning;
    padding: 0 1;
    background: $background;
}
FormDialog #dialog {
    border: heavy $primary;
}
#dialog Label.title {
    text-style: bold;
    width: 100%;
}
#dialog .buttons {
    height: auto;
    width: 100%;
    align-horizontal: right;
}
#dialog Button {
    margin-left: 1;
    min-width: 10;
}
#dialog Input {
    width: 100%;
}
#dialog .error {
    color: $error;
}
"""


class ConfirmDialog(ModalScreen[bool]):
    """Asks before a command that interrupts charging or takes a connector out of service."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, detail: str = "") -> None:
        super().__init__()
        self.question = question
        self.detail = detail

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.question, classes="title")
            if self.detail:
                yield Static(self.detail)
            with Horizontal(classes="buttons"):
                yield Button("Yes (y)", id="yes", variant="warning")
                yield Button("No (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()  # Enter on a stray key press changes nothing

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


@dataclass(frozen=True, slots=True)
class Field:
    """One input of a form: its key in the answer, its label, a default and its type."""

    key: str
    label: str
    default: str = ""
    kind: type = str  # str or int
    required: bool = True
    choices: tuple[str, ...] = ()  # if given, the value must be one of these


class FormDialog(ModalScreen[dict[str, str | int | None] | None]):
    """A few inputs; Enter submits (checked), Escape cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, fields: list[Field]) -> None:
        super().__init__()
        self.title_text = title
        self.fields = fields

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text, classes="title")
            for field in self.fields:
                hint = f" ({' / '.join(field.choices)})" if field.choices else ""
                optional = "" if field.required else " (optional)"
                yield Label(f"{field.label}{hint}{optional}")
                yield Input(
                    value=field.default,
                    id=f"field-{field.key}",
                    type="integer" if field.kind is int else "text",
                )
            yield Label("", id="form-error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("OK (Enter)", id="ok", variant="primary")
                yield Button("Cancel (Esc)", id="cancel")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        inputs = list(self.query(Input))
        index = inputs.index(event.input)
        if index + 1 < len(inputs):
            inputs[index + 1].focus()
        else:
            self.submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ok":
            self.submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def submit(self) -> None:
        answer: dict[str, str | int | None] = {}
        for field in self.fields:
            text = self.query_one(f"#field-{field.key}", Input).value.strip()
            if not text:
                if field.required:
                    self.complain(f"{field.label}: required")
                    return
                answer[field.key] = None
                continue
            if field.choices:
                match = [c for c in field.choices if c.casefold() == text.casefold()]
                if not match:
                    self.complain(f"{field.label}: one of {', '.join(field.choices)}")
                    return
                text = match[0]
            if field.kind is int:
                try:
                    answer[field.key] = int(text)
                except ValueError:
                    self.complain(f"{field.label}: a whole number")
                    return
            else:
                answer[field.key] = text
        self.dismiss(answer)

    def complain(self, text: str) -> None:
        self.query_one("#form-error", Label).update(text)
