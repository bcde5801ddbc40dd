"""Generation off the event loop: worker threads, a bounded queue (429 when full), cancellation.

Each worker owns a view of the model that shares its weights but has its own KV cache and engine,
so workers never step on each other. A job is a function ``fn(omni) -> iterator of events`` run in
a worker; its events reach the event loop through an ``asyncio.Queue``. Cancelling a job (client
gone, barge-in, ``response.cancel``) is checked between tokens: the engine stream stops at the next
token and ``generate()`` closes with its ``Done`` event.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterator

import torch

from ..infer.engine import Engine
from ..infer.generate import OmniModel
from ..model import Transformer
from ..model.quant import is_quantized, quantize_int8
from .errors import APIError

__all__ = ["Job", "JobCancelled", "Scheduler"]

log = logging.getLogger("omniloom.serve")
_END = object()
_READY = object()  # a generate() job's prompt is built: its input was fine


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


class _CancellableEngine:
    """Engine.stream that stops before the next token once the running job is cancelled."""

    def __init__(self, engine: Engine, local: threading.local):
        self._engine, self._local = engine, local

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def _cancelled(self) -> bool:
        job = getattr(self._local, "job", None)
        return job is not None and job.cancel.is_set()

    def stream(self, requests):
        if self._cancelled():
            return
        for item in self._engine.stream(requests):
            yield item
            if self._cancelled():
                return

    def generate(self, requests):
        """Whole answers (image candidates, transcriptions inside a search): a cancel mid-way raises
        :class:`JobCancelled`, since a cut-off batch is no answer (the search must not go on)."""
        out: list[list[int]] = [[] for _ in requests]
        for i, tok in self.stream(requests):
            out[i].append(tok)
        if self._cancelled():
            raise JobCancelled()
        return out


class JobCancelled(Exception):
    """Raised inside a worker when its job is cancelled in the middle of a whole-answer search."""


def _prompt_built(local: threading.local, ids: list[int]) -> None:
    """``OmniModel.on_prompt`` of a worker's view: the running job's input was fine; keep its prompt.

    Only the first prompt of a job counts (a drawing search may build more, e.g. to transcribe a
    spoken request with the model itself).
    """
    job = getattr(local, "job", None)
    if job is not None and job.prompt_ids is None:
        job.prompt_ids = list(ids)
        job._put(_READY)


def _worker_view(omni: OmniModel, local: threading.local, share: bool) -> OmniModel:
    """A copy of ``omni`` with its own decoder module (weights shared unless it is the original)."""
    model = omni.model
    if share:
        with torch.device("meta"):
            clone = Transformer(copy.deepcopy(model.cfg))
            if is_quantized(model):
                quantize_int8(clone)
        clone.load_state_dict(model.state_dict(), assign=True)
        dev = next(model.parameters()).device
        clone.init_rope(dev)
        model = clone.eval()
    view = copy.copy(omni)
    view.model = model
    view.engine = _CancellableEngine(Engine(model, compile=omni.engine.compiled), local)
    view.on_prompt = functools.partial(_prompt_built, local)
    return view


@dataclass
class Job:
    fn: Callable[[OmniModel], Iterator[Any]]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    prompt_ids: list[int] | None = None
    submitted: float = field(default_factory=time.perf_counter)
    started: float | None = None
    finished: float | None = None
    cancelled: bool = False  # set when the job stopped because of cancel
    cleanup: Callable[[], None] | None = None  # run once when the job ends, whether or not it ran
    max_events: int = 256  # events the worker may run ahead of the client
    stall_timeout_s: float = 60.0  # a client that takes nothing this long: the job is cancelled
    stalled: bool = False
    _early: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._space = threading.Semaphore(max(1, self.max_events))

    def _emit(self, ev: Any) -> bool:
        """Worker side: hand one event over, waiting while ``max_events`` are not yet taken (back-pressure).
        False (and the job cancelled) when the client took nothing for ``stall_timeout_s`` or left."""
        waited = 0.0
        while not self._space.acquire(timeout=0.1):
            waited += 0.1
            if self.cancel.is_set():
                return False
            if waited >= self.stall_timeout_s:
                self.stalled = True
                self.cancel.set()
                log.warning("cancelling a job whose client took no event for %.0f s", waited)
                return False
        self._put(ev)
        return True

    def _took(self, item: Any) -> None:
        if not (item is _END or item is _READY or isinstance(item, _Raised)):
            self._space.release()

    def _put(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed (server shutting down)
            self.cancel.set()

    def stop(self) -> None:
        """Cancel from the event loop; a job still waiting for a worker ends its event stream at once."""
        self.cancel.set()
        if self.started is None:
            self.queue.put_nowait(_END)

    async def ready(self) -> None:
        """Wait until the prompt is built; raises the worker's error (e.g. bad media) if that failed.

        Lets a streaming answer turn bad input into a 400 before its 200 headers go out.
        """
        while True:
            item = await self.queue.get()
            self._took(item)
            if item is _READY:
                return
            if isinstance(item, _Raised):
                raise item.exc
            if item is _END:
                self.queue.put_nowait(_END)
                return
            self._early.append(item)

    async def events(self) -> AsyncIterator[Any]:
        """The job's events as they come; a worker exception is re-raised here."""
        while self._early:
            yield self._early.pop(0)
        while True:
            item = await self.queue.get()
            self._took(item)
            if item is _READY:
                continue
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item


class Scheduler:
    """``workers`` threads over one model; at most ``max_queue`` jobs waiting (else 429)."""

    def __init__(self, omni: OmniModel, workers: int = 1, max_queue: int = 8, threads: int | None = 1,
                 max_events: int = 256, stall_timeout_s: float = 60.0):
        if workers < 1 or max_queue < 0:
            raise ValueError(f"workers must be >= 1 and max_queue >= 0, got {workers}, {max_queue}")
        self._prev_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)  # tiny matmuls: one thread per worker beats oversubscription
        self.omni = omni
        self._local = threading.local()
        self._q: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self.max_queue = max_queue
        self.max_events, self.stall_timeout_s = max_events, stall_timeout_s
        self.waiting = 0
        self.running = 0
        self.stats = {"submitted": 0, "completed": 0, "cancelled": 0, "rejected": 0, "failed": 0}
        self._threads = []
        for i in range(workers):
            view = _worker_view(omni, self._local, share=i > 0)
            t = threading.Thread(target=self._work, args=(view,), name=f"omniloom-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def submit(self, fn: Callable[[OmniModel], Iterator[Any]], cleanup: Callable[[], None] | None = None) -> Job:
        """Queue ``fn``; raises a 429 :class:`APIError` when ``max_queue`` jobs already wait.

        ``cleanup`` (e.g. removing the request's temp files) runs when the job ends, on every path:
        at once on a 429, else in the worker after the job ran, failed or was cancelled unstarted.
        """
        with self._lock:
            full = self.waiting >= self.max_queue + len(self._threads) - self.running
            if full:
                self.stats["rejected"] += 1
            else:
                self.waiting += 1
                self.stats["submitted"] += 1
        if full:
            if cleanup is not None:
                cleanup()
            raise APIError(429, f"server busy: {self.waiting} requests waiting (limit {self.max_queue}); "
                                "retry later", code="rate_limit_exceeded")
        job = Job(fn, asyncio.get_running_loop(), cleanup=cleanup, max_events=self.max_events,
                  stall_timeout_s=self.stall_timeout_s)
        self._q.put(job)
        return job

    def close(self) -> None:
        """Stop the workers (after their current job) and give torch its thread count back."""
        for _ in self._threads:
            self._q.put(None)
        torch.set_num_threads(self._prev_threads)

    def _work(self, view: OmniModel) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            with self._lock:
                self.waiting -= 1
                self.running += 1
            job.started = time.perf_counter()
            self._local.job = job
            last: Any = _END  # the event that ends the job: put only after cleanup, so a caller that has
            try:              # its answer finds the request's temp files already gone
                if job.cancel.is_set():
                    job.cancelled = True
                else:
                    with torch.inference_mode():
                        for ev in job.fn(view):
                            if not job._emit(ev) or job.cancel.is_set():
                                job.cancelled = True
                                break
                    job.cancelled = job.cancelled or job.cancel.is_set()
                with self._lock:
                    self.stats["cancelled" if job.cancelled else "completed"] += 1
            except JobCancelled:
                job.cancelled = True
                with self._lock:
                    self.stats["cancelled"] += 1
            except Exception as e:  # bad input found while encoding, or a bug: report to the caller
                if not isinstance(e, (ValueError, APIError)):
                    log.exception("generation failed")
                with self._lock:
                    self.stats["failed"] += 1
                last = _Raised(e)
            finally:
                if job.cleanup is not None:
                    try:
                        job.cleanup()
                    except Exception:  # never let cleanup kill the worker
                        log.exception("job cleanup failed")
                job._put(last)
                job.finished = time.perf_counter()
                self._local.job = None
                with self._lock:
                    self.running -= 1
