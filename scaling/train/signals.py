"""Interruptions and progress of a training job: signals become a flag checked between steps (then
chain to the handler installed before, e.g. submitit's requeue), and progress goes to a tqdm bar on a
terminal or to one log line per metrics row otherwise.

    >>> from scaling.train.signals import Progress, Signals
    >>> with Signals() as signals:
    ...     ...                       # between steps: if signals.received: checkpoint, signals.chain()
"""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


class Signals:
    """Turns SIGTERM/SIGUSR2/SIGINT into a flag checked between steps; then chains to the old handler."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        for sig in SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: no signal handling
                self.previous[sig] = signal.signal(sig, self._flag)
        return self

    def _flag(self, signum, frame) -> None:
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def chain(self) -> None:
        """Hand the received signal to the handler installed before ours (submitit's requeue)."""
        handler = self.previous.get(self.received)
        if callable(handler) and handler is not signal.default_int_handler:
            handler(self.received, None)


class Progress:
    """A tqdm bar on a terminal; plain log lines (one per metrics row) otherwise."""

    def __init__(self, run_id: str, total: int, start: int) -> None:
        self.run_id = run_id
        self.bar = None
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, initial=start, desc=run_id, unit="step", dynamic_ncols=True
            )
        elif start:
            self.line(f"resuming at step {start}/{total}")
        self.total = total

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(f"{self.run_id}: {text}")
        else:
            print(f"{self.run_id}: {text}", file=sys.stderr, flush=True)

    def step(self, row: dict[str, Any] | None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if row is not None:
                self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
        elif row is not None:
            self.line(
                f"step {row['step']}/{self.total} loss {row['loss']:.4f} lr {row['lr']:.2e} "
                f"grad {row['grad_norm']:.3g} {row['tokens_per_s']:.0f} tok/s"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
