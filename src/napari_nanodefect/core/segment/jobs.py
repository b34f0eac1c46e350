"""Training in a child process: :class:`TrainJob` (no Qt here).

The Train dock must not freeze the viewer while a model trains. A thread in the GUI
process shares the GIL and the CPU cores with Qt's event loop (micro-sam measured a
large slowdown with napari thread workers); a child process started with the ``spawn``
method has its own interpreter, so the GUI only pays for reading a few small messages
from a queue. ``benchmarks/bench_train_responsiveness.py`` measures both (see
``docs/train.md``).

Protocol: the child puts ``(kind, payload)`` tuples on a :class:`multiprocessing.Queue`:

- ``("started", {"pid", "threads", "device"})`` once torch is imported;
- ``("progress", {...})`` the fields of :class:`~.train.TrainProgress` after each validation;
- ``("done", {"path", "summary", "cancelled"})`` after the model folder is saved;
- ``("error", {"message", "traceback"})`` when training failed (a
  :class:`~napari_nanodefect.core.errors.NanodefectError` message verbatim), or, made up
  by the parent, when the child died without saying why (exit code / signal).

:meth:`TrainJob.cancel` sets a :class:`multiprocessing.Event` that the child's
``should_stop`` reads at every iteration: :func:`~.train.train` then stops, restores the
best checkpoint so far and saves it (``"done"`` with ``cancelled=True``).
:meth:`TrainJob.kill` is the last resort. Every job still running when the parent
exits is killed by an ``atexit`` hook, and the child exits by itself as soon as its
parent dies (a watchdog thread waits on the parent's sentinel), so no orphan survives.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import pickle
import queue as queue_mod
import signal
import threading
import time
import traceback
import weakref
from collections.abc import Iterable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

TERMINAL = ("done", "error")

_LIVE: weakref.WeakSet[TrainJob] = weakref.WeakSet()


def usable_cpus() -> int:
    """CPU cores this process may run on (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """torch threads for the training child: all cores but one, which stays free for the
    GUI (on 2 cores: 1; see docs/train.md for the measurement behind this)."""
    return max(1, usable_cpus() - 1)


def default_model_folder(image_path: str | os.PathLike | None = None, now: datetime | None = None) -> Path:
    """Where a newly trained model goes: ``nanodefect_models/model-YYYYmmdd-HHMMSS`` next to
    the image file when there is one, else under ``~/.nanodefect/models/``. A suffix
    ``-2``, ``-3``... avoids an existing folder."""
    stamp = (now or datetime.now()).strftime("model-%Y%m%d-%H%M%S")
    if image_path is not None and Path(image_path).parent.is_dir():
        root = Path(image_path).parent / "nanodefect_models"
    else:
        root = Path.home() / ".nanodefect" / "models"
    out = root / stamp
    k = 2
    while out.exists():
        out = root / f"{stamp}-{k}"
        k += 1
    return out


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory? the system kills the largest process when memory runs out)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {code}"


# ----------------------------------------------------------------------------- child side

def _watch_parent() -> None:
    """In the child: exit at once when the parent process dies (no orphans)."""
    parent = mp.parent_process()
    if parent is None:  # pragma: no cover - not started by multiprocessing
        return

    def watch() -> None:
        from multiprocessing.connection import wait

        try:
            wait([parent.sentinel])
        except Exception:  # pragma: no cover
            return
        os._exit(3)

    threading.Thread(target=watch, name="nanodefect-parent-watch", daemon=True).start()


def _child_main(q, stop, inbox) -> None:
    """Entry point of the training process (module level: ``spawn`` pickles it by name).

    The inputs (images can be large) come through ``inbox``, not as process arguments:
    ``Process.start()`` writes its arguments into a pipe synchronously and would block the
    GUI until the child has imported torch and read them (measured: 2.3 s frozen)."""
    _watch_parent()
    try:
        sources, out, kwargs, threads = pickle.loads(inbox.get())
        inbox.close()
        import torch

        from ..errors import NanodefectError
        from .model import resolve_device
        from .train import train

        n = int(threads) if threads else default_threads()
        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set (cannot change after the first parallel op)
            pass
        try:
            dev = str(resolve_device(kwargs.get("device", "auto")))
        except NanodefectError:
            dev = str(kwargs.get("device"))
        q.put(("started", {"pid": os.getpid(), "threads": n, "device": dev}))

        def report(p) -> None:
            q.put(("progress", asdict(p)))

        res = train(sources, out, progress=report, should_stop=stop.is_set, **kwargs)
        q.put(("done", {"path": None if res.path is None else str(res.path), "summary": res.summary,
                        "cancelled": bool(res.cancelled)}))
    except BaseException as exc:
        from ..errors import NanodefectError

        if isinstance(exc, NanodefectError):
            msg = str(exc)
        elif isinstance(exc, MemoryError):
            msg = "not enough memory to train (use fewer or smaller crops, or a smaller patch / batch size)"
        elif isinstance(exc, KeyboardInterrupt):
            msg = "training was interrupted"
        else:
            msg = f"training failed: {type(exc).__name__}: {exc}"
        try:
            q.put(("error", {"message": msg, "traceback": traceback.format_exc()}))
        except Exception:  # pragma: no cover - the queue itself is broken
            pass
    finally:
        q.close()
        q.join_thread()  # flush every message into the pipe before the process ends


# ----------------------------------------------------------------------------- parent side

class TrainJob:
    """:func:`~.train.train` in a child process (``spawn``), progress streamed over a queue.

    ``sources``: :class:`~.train.TrainingImage` objects, :class:`AnnotationSet` objects or
    LabelMe/COCO file paths (as for :func:`~.train.train`); ``out``: the model folder to
    save into; ``train_kwargs``: any other keyword of :func:`~.train.train` except
    ``progress`` and ``should_stop``. ``threads``: torch threads in the child (default
    :func:`default_threads`).

    Use as a context manager (or call :meth:`close`) so the child never outlives its job::

        with TrainJob(items, "model", time_budget_s=30) as job:
            job.start()
            while job.running:
                for kind, msg in job.poll(): ...
                time.sleep(0.1)
    """

    def __init__(self, sources: Iterable[Any], out: str | os.PathLike | None, *, threads: int | None = None,
                 **train_kwargs: Any) -> None:
        for k in ("progress", "should_stop"):
            if k in train_kwargs:
                raise TypeError(f"TrainJob sets {k!r} itself")
        self.sources = [os.fspath(s) if isinstance(s, (str, os.PathLike)) else s for s in sources]
        self.out = None if out is None else os.fspath(out)
        self.threads = threads
        self.train_kwargs = dict(train_kwargs)
        self._ctx = mp.get_context("spawn")
        self._queue = None
        self._inbox = None
        self._stop = None
        self._proc = None
        self._terminal: tuple[str, dict] | None = None
        self._killed = False
        self.started_at: float | None = None
        self.cancel_requested = False

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> TrainJob:
        if self._proc is not None:
            raise RuntimeError("this TrainJob was already started")
        # pickled here, so that an unpicklable input fails now, not silently in the feeder
        # thread (the child would wait for it forever); a copy of the images, a few ms
        payload = pickle.dumps((self.sources, self.out, self.train_kwargs, self.threads),
                               protocol=pickle.HIGHEST_PROTOCOL)
        self._queue = self._ctx.Queue()
        self._stop = self._ctx.Event()
        # kept referenced until the job ends: its named semaphores must outlive the child's unpickling
        self._inbox = inbox = self._ctx.Queue()
        # daemon: multiprocessing terminates it at interpreter exit instead of waiting for it
        self._proc = self._ctx.Process(target=_child_main, name="nanodefect-train", daemon=True,
                                       args=(self._queue, self._stop, inbox))
        self.started_at = time.perf_counter()
        self._proc.start()
        # a background feeder thread pickles the inputs into the pipe: start() returns at once
        inbox.put(payload)
        inbox.close()
        inbox.cancel_join_thread()  # never wait at exit for a child that died before reading
        _LIVE.add(self)
        return self

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.is_alive()

    @property
    def finished(self) -> bool:
        """True once :meth:`poll` has returned the final ``"done"`` or ``"error"``."""
        return self._terminal is not None

    @property
    def result(self) -> tuple[str, dict] | None:
        """The final message (``"done"`` or ``"error"``) once :meth:`poll` has seen it."""
        return self._terminal

    @property
    def exitcode(self) -> int | None:
        return None if self._proc is None else self._proc.exitcode

    def poll(self) -> list[tuple[str, dict]]:
        """Every message that arrived since the last call (never blocks).

        When the child has ended without a ``"done"`` or ``"error"`` (killed, crashed),
        the last message is an ``"error"`` that says how it ended.
        """
        if self._queue is None or self._terminal is not None:
            return []
        alive = self._proc.is_alive()
        msgs = self._drain()
        if self._terminal is None and not alive:
            # the child is gone: everything it sent is in the pipe by now; read it all
            msgs += self._drain()
            if self._terminal is None:
                self._proc.join(0.1)
                how = "was stopped (killed)" if self._killed else _describe_exit(self._proc.exitcode)
                err = ("error", {"message": f"the training process {how} before it finished; no model was saved",
                                 "traceback": "", "exitcode": self._proc.exitcode})
                self._terminal = err
                msgs.append(err)
        if self._terminal is not None:
            self._release()
        return msgs

    def _drain(self) -> list[tuple[str, dict]]:
        out = []
        while self._terminal is None:
            try:
                kind, payload = self._queue.get_nowait()
            except queue_mod.Empty:
                break
            except (EOFError, OSError, ValueError):  # pipe closed under us
                break
            out.append((kind, payload))
            if kind in TERMINAL:
                self._terminal = (kind, payload)
        return out

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> list[tuple[str, dict]]:
        """Poll until the final message (or ``timeout`` s); returns every message seen."""
        t_end = None if timeout is None else time.perf_counter() + timeout
        msgs: list[tuple[str, dict]] = []
        while self._queue is not None and self._terminal is None:
            msgs += self.poll()
            if self._terminal is not None or (t_end is not None and time.perf_counter() >= t_end):
                break
            time.sleep(interval)
        return msgs

    def cancel(self) -> None:
        """Ask the child to stop: it keeps and saves the best checkpoint so far."""
        self.cancel_requested = True
        if self._stop is not None:
            self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the child process to end; True when it has."""
        if self._proc is None:
            return True
        self._proc.join(timeout)
        return not self._proc.is_alive()

    def kill(self) -> None:
        """Last resort: end the child at once (nothing is saved)."""
        if self._proc is not None and self._proc.is_alive():
            self._killed = True
            self._proc.kill()
            self._proc.join(5)

    def close(self, grace_s: float = 2.0) -> None:
        """Stop the child (cancel, wait up to ``grace_s``, then kill) and free the queue."""
        if self._proc is None:
            return
        if self._proc.is_alive():
            self.cancel()
            self._proc.join(max(0.0, grace_s))
            self.kill()
        self._release()

    def _release(self) -> None:
        _LIVE.discard(self)
        if self._proc is not None and not self._proc.is_alive():
            self._proc.join(0)
            if self._terminal is not None and self._queue is not None:
                self._queue.close()
                self._queue.cancel_join_thread()

    def __enter__(self) -> TrainJob:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            if self._proc is not None and self._proc.is_alive():
                self._proc.kill()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "not started" if self._proc is None else (
            "running" if self.running else (self._terminal[0] if self._terminal else f"exited {self.exitcode}"))
        return f"<TrainJob pid={self.pid} {state} out={self.out!r}>"


@atexit.register
def _kill_all() -> None:
    for job in list(_LIVE):
        try:
            job.kill()
        except Exception:  # pragma: no cover
            pass
