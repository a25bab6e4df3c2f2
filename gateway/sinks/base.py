"""What every sink has: the `hub.Listener` methods, `start()` and `stop(timeout)`."""

from __future__ import annotations

from ..hub import Record, State


class Sink:
    """A listener on every device's hub. Both callbacks run on the thread that
    reads the device (`on_records` under the hub lock): they may only queue, never block."""

    def on_records(self, device: str, records: list[Record]) -> None:
        pass

    def on_state(self, device: str, state: State) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 5.0) -> None:
        pass
