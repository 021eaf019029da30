"""`xmppll chat NAME`: the terminal face of a conversation (agent/conversation.py holds
the rest): the scroll-back, new lines as they come, and an input line with editing
and history that output never garbles (prompt_toolkit's patch_stdout prints above it).

What is shown:
- each message as `[HH:MM:SS] who: text`, ours once the peer took it (a line that
  failed says so instead);
- the peer's presence and typing in the bottom bar, and a line when its status changes;
- `/file PATH` hands a file to the agent's file transfer, `/help` lists the commands,
  Ctrl-D (or `/quit`) leaves.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from xmppll.agent.conversation import Conversation, Event
from xmppll.cli import render

HELP = "/file PATH sends a file, /quit or Ctrl-D leaves, Up/Down recall what you typed"


def clock(stamp: str | None) -> str:
    """An ISO UTC time as local HH:MM:SS (now when there is none)."""
    try:
        when = datetime.fromisoformat((stamp or "").replace("Z", "+00:00")).astimezone()
    except ValueError:
        when = datetime.now()
    return when.strftime("%H:%M:%S")


def message_line(event: Event, me: str, peer: str, color: bool) -> str:
    who = me if event["direction"] == "out" else peer
    code = "32" if event["direction"] == "out" else "1"
    mark = "" if event["direction"] == "out" or event.get("verified") is not False else \
        render.paint(" (unverified)", "33", color)
    return (f"[{clock(event.get('time'))}] {render.paint(render.safe(who), code, color)}"
            f"{mark}: {render.safe(event['body'])}")


def presence_text(presence: Event | None) -> str:
    if not presence or not presence.get("online"):
        return "not on the link"
    text = presence.get("status") or "avail"
    return f"{text}: {presence['msg']}" if presence.get("msg") else text


class Screen:
    """The chat's state as the bottom bar shows it; lines go through `say`."""

    def __init__(self, conv: Conversation, me: str, color: bool) -> None:
        self.conv, self.me, self.color = conv, me, color
        self.typing = False
        self.app: Any = None
        self.before: Event | None = conv.presence

    def say(self, line: str) -> None:
        print(line, flush=True)

    def note(self, text: str) -> None:
        self.say(render.paint(f"-- {render.safe(text)}", "2", self.color))

    def toolbar(self) -> str:
        peer = self.conv.peer
        typing = f"  ·  {peer} is typing…" if self.typing else ""
        return f" {peer}: {presence_text(self.conv.presence)}{typing}  ·  Ctrl-D leaves"

    def show(self, event: Event) -> None:
        kind = event["kind"]
        if kind == "message":
            if event["direction"] == "in":
                self.typing = False
            self.say(message_line(event, self.me, self.conv.peer, self.color))
        elif kind == "chatstate":
            self.typing = event.get("state") == "composing"
        elif kind == "presence":
            before = self.before
            if (before or {}).get("online") != event.get("online") or \
                    (before or {}).get("status") != event.get("status") or \
                    (before or {}).get("msg") != event.get("msg"):
                self.note(f"{self.conv.peer} is {presence_text(event)}")
            if not event.get("online"):
                self.typing = False
            self.before = event
        if self.app is not None:
            self.app.invalidate()


def run(agent: str, peer: str, *, last: int, color: bool) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.patch_stdout import patch_stdout

    conv = Conversation(agent, peer)
    conv.presence_now()
    screen = Screen(conv, agent, color)
    screen.note(f"chat with {peer} as {agent} ({presence_text(conv.presence)}); {HELP}")
    for event in conv.history(last):
        screen.say(message_line(event, agent, peer, color))
    history = FileHistory(str(Path(conv.state) / "chat-input.history"))
    session: PromptSession[str] = PromptSession(
        history=history, bottom_toolbar=screen.toolbar, refresh_interval=1.0,
        erase_when_done=True)
    screen.app = session.app

    def typed(buffer: Any) -> None:
        if buffer.text:
            conv.key_pressed()
        else:
            conv.input_cleared()

    session.default_buffer.on_text_changed += typed
    stop = threading.Event()

    def follow() -> None:
        try:
            for event in conv.events():
                if stop.is_set():
                    return
                screen.show(event)
        except Exception as exc:  # the agent went away: say so, keep the screen
            screen.note(f"lost the agent: {exc}")
        if not stop.is_set():
            screen.note("the agent stopped; Ctrl-D leaves")

    def tick() -> None:
        while not stop.wait(1.0):
            conv.tick()
            while conv.errors:
                screen.note(f"not delivered: {conv.errors.pop(0)}")

    with patch_stdout(raw=True):
        threading.Thread(target=follow, daemon=True, name="xmppll-chat-in").start()
        threading.Thread(target=tick, daemon=True, name="xmppll-chat-tick").start()
        try:
            while True:
                try:
                    text = session.prompt(f"{agent}> ")
                except KeyboardInterrupt:
                    continue  # ^C clears the line, as in a shell; ^D leaves
                except EOFError:
                    break
                if not _command(text, conv, screen):
                    break
        finally:
            stop.set()
            conv.leave()
            time.sleep(0.05)
    screen.note("bye")


def _command(text: str, conv: Conversation, screen: Screen) -> bool:
    """Handle one entered line; False to leave."""
    stripped = text.strip()
    if not stripped:
        conv.input_cleared()
        return True
    if stripped in ("/quit", "/exit"):
        return False
    if stripped == "/help":
        screen.note(HELP)
        return True
    if stripped.startswith("/file"):
        path = stripped[len("/file"):].strip()
        if not path:
            screen.note("usage: /file PATH")
        else:
            screen.note(conv.send_file(path))
        return True
    if stripped.startswith("//"):
        text = text.replace("//", "/", 1)  # a line that starts with a slash
    elif stripped.startswith("/"):
        screen.note(f"unknown command {stripped.split()[0]}; {HELP} (// sends a /)")
        return True
    conv.say(text)
    return True
