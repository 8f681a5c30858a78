"""The engine on a background thread, with an asyncio face.

    engine = AsyncEngine(Engine.from_checkpoint(path))
    async for out in engine.generate(prompt_ids, params):   # SequenceOutput deltas
        ...

The step loop runs on its own thread (the event loop never blocks on a forward pass);
outputs cross back with one `call_soon_threadsafe` per step. Leaving the `async for` early
(a client that went away, a cancelled task) aborts the request: its KV cache is freed at
the next step. `shutdown()` lets the loop finish what is running, or aborts it after a grace
period.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator

import torch

from .engine import Engine
from .params import SamplingParams
from .sequence import SequenceOutput

log = logging.getLogger(__name__)
SWITCH_INTERVAL_S = 0.0002


class EngineOverloaded(Exception):
    """The waiting queue is full: the caller should retry later (HTTP 503 + Retry-After)."""


class AsyncEngine:
    def __init__(self, engine: Engine, max_pending: int = 256) -> None:
        self.engine = engine
        self.max_pending = max_pending
        self._queues: dict[str, asyncio.Queue] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="imagemini-engine", daemon=True)
        self._started = False
        self._lock = threading.Lock()

    @property
    def num_pending(self) -> int:
        return len(self._queues)

    def start(self) -> None:
        if not self._started:
            # The engine thread gives up the GIL inside every torch op and must take it back
            # for the next; with the default 5 ms switch interval a busy event loop makes it
            # wait up to 5 ms each time (measured: decode 4x slower behind a streaming server).
            sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
            self._loop = asyncio.get_running_loop()
            self._started = True
            self._thread.start()

    async def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        request_id: str,
        prompt_embeds: torch.Tensor | None = None,
    ) -> AsyncIterator[SequenceOutput]:
        self.start()
        if self._stopping:
            raise EngineOverloaded("server is shutting down")
        if len(self._queues) >= self.max_pending:
            raise EngineOverloaded(f"{len(self._queues)} requests in flight (limit {self.max_pending})")
        out_queue: asyncio.Queue = asyncio.Queue()
        self._queues[request_id] = out_queue
        finished = False
        try:
            self.engine.add_request(prompt_ids, params, request_id, prompt_embeds)
            self._wake.set()
            while True:
                out: SequenceOutput = await out_queue.get()
                # A consumer that fell behind gets what piled up as one delta: fewer, larger
                # chunks exactly when the event loop is the bottleneck.
                while not out.finished and not out_queue.empty():
                    out = out.merge(out_queue.get_nowait())
                finished = out.finished
                yield out
                if finished:
                    return
        finally:
            self._queues.pop(request_id, None)
            if not finished:
                self.engine.abort(request_id)
                self._wake.set()

    def _deliver(self, outputs: list[SequenceOutput]) -> None:
        for out in outputs:
            q = self._queues.get(out.request_id)
            if q is not None:
                q.put_nowait(out)

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            if not self.engine.has_work():
                if self._stopping:
                    return
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception:  # a bug must not leave clients hanging: end every request
                log.exception("engine step failed")
                outputs = self.engine.fail_all("internal error in the inference engine")
            if outputs and self._loop is not None:
                self._loop.call_soon_threadsafe(self._deliver, outputs)

    async def shutdown(self, grace_seconds: float = 10.0) -> None:
        """Stop taking requests; let running ones finish for up to `grace_seconds`, abort the rest."""
        self._stopping = True
        deadline = time.monotonic() + grace_seconds
        while self._queues and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for request_id in list(self._queues):
            self.engine.abort(request_id)
        self._wake.set()
        if self._started:
            await asyncio.to_thread(self._thread.join, 5.0)
