"""The engine in a process of its own, with an asyncio face.

    engine = AsyncEngine(model_dir, EngineConfig())     # starts the engine process, waits until ready
    async for out in engine.generate(prompt_ids, params, request_id):   # SequenceOutput deltas
        ...

Why a process and not a thread: the step loop runs ~200 torch ops per step and takes the GIL
back after each; in one process it queued behind the event loop's per-token work, and tokens
streamed through HTTP came out at 49% (one request) and 39% (eight) of the engine alone
(`imagemini bench http`). Here the two sides share nothing but a pipe (vLLM's engine-core split):
- the engine process (`serve_engine`) loads the checkpoint, receives requests and aborts,
  steps, and sends each step's outputs back as one message;
- this process keeps what the API needs without the decoder (`EngineFrontend`: tokenizer,
  grammar compiler, vision encoder, VQ decoder), checks each request against the engine's
  `RequestLimits` before sending it (a bad one fails here, as it would there), and reads the
  pipe on the event loop. Sends go through a thread, so a large message (prompt embeddings)
  never blocks the loop.

Leaving the `async for` early (a client that went away, a cancelled task) aborts the request:
its KV cache is freed at the engine's next step. If the engine process dies, every request in
flight ends with an error and new ones are refused (503). `shutdown()` lets running requests
finish for a grace period, aborts the rest, then stops the process.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from imagemini.logs import configure_logging, log_format_from_env
from imagemini.models.janus import load_janus
from imagemini.models.tokenizer import Tokenizer

from .engine import DTYPES, Engine, EngineConfig, RequestLimits
from .params import SamplingParams
from .sequence import SequenceOutput
from .structured import GrammarCompiler

log = logging.getLogger(__name__)
STARTUP_TIMEOUT_S = 600.0


class EngineOverloaded(Exception):
    """The waiting queue is full, the server is stopping or the engine is gone: retry later (503)."""


@dataclass(frozen=True)
class EngineFacts:
    """What the engine process reports once ready (the authority on them)."""

    limits: RequestLimits
    system_fingerprint: str
    stats: "EngineStats"  # as it starts


@dataclass
class EngineStats:
    running: int = 0
    waiting: int = 0
    kv_used_tokens: int = 0
    # Seconds each request admitted since the previous message had waited in this process
    # before the scheduler gave it room (vLLM's request_queue_time; api/metrics.py).
    queue_times: list[float] = field(default_factory=list)
    prefix_cache: dict[str, int] | None = None  # PrefixCache.stats(); None: the cache is off


def engine_stats(engine: Engine, queue_times: list[float] | None = None) -> EngineStats:
    prefix = engine.prefix_cache.stats() if engine.prefix_cache is not None else None
    return EngineStats(len(engine.scheduler.running), len(engine.scheduler.waiting), engine.kv_cache.used_tokens,
                       queue_times or [], prefix)


class EngineFrontend:
    """The model's parts the API process needs: tokenizer, grammar compiler, the image encoder
    and decoder, the token embeddings, on the engine's device. The decoder layers are dropped:
    they run in the engine process."""

    def __init__(self, model_dir: Path, config: EngineConfig) -> None:
        self.tokenizer = Tokenizer.from_dir(model_dir)
        self.model = load_janus(model_dir, DTYPES[config.dtype], config.device)
        self.model.model.language_model.layers = torch.nn.ModuleList()
        if torch.device(config.device).type == "cuda":  # hand the dropped layers' memory back to the engine process
            torch.cuda.empty_cache()
        self.grammars = GrammarCompiler(self.tokenizer, self.model.cfg.text.vocab_size)


# --- the engine process --------------------------------------------------------------------
def _engine_process(model_dir: str, config: EngineConfig, threads: int | None, conn: Connection) -> None:
    # Ctrl-C reaches the whole process group: the API process decides when the engine stops
    # (after draining), so the engine must not die of the same keystroke mid-request.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(log_format_from_env(), text_format="%(levelname)s:     engine: %(message)s")
    if threads:
        torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    try:
        engine = Engine.from_checkpoint(model_dir, config)
    except Exception as exc:  # reported to the parent, which raises it where the server starts
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", EngineFacts(engine.limits, engine.system_fingerprint, engine_stats(engine))))
    serve_engine(engine, conn)


def serve_engine(engine: Engine, conn: Connection) -> None:
    """The step loop: requests and aborts in, one ("outputs", [SequenceOutput], EngineStats)
    message out per step that produced something; returns on ("stop",) or when the other end closes."""
    stopping = False
    arrivals: dict[str, float] = {}  # request id -> when it arrived, until the scheduler admits it
    queue_times: list[float] = []  # of the requests admitted since the last message
    while True:
        busy = engine.has_work()
        refused: list[SequenceOutput] = []
        try:
            while conn.poll(0 if busy or stopping else None):
                message = conn.recv()
                if message[0] == "add":
                    refusal = _add(engine, *message[1:])
                    refused += refusal
                    if not refusal:
                        arrivals[message[1]] = time.monotonic()
                elif message[0] == "abort":
                    engine.abort(message[1])
                elif message[0] == "stop":
                    stopping = True
                busy = True
        except (EOFError, OSError):
            return  # the API process is gone
        if stopping and not engine.has_work():
            return
        step_started = time.monotonic()
        try:
            outputs = engine.step()
        except Exception:  # a bug must not leave clients hanging: end every request
            log.exception("engine step failed")
            outputs = engine.fail_all("internal error in the inference engine")
        queue_times += _admitted(engine, arrivals, outputs, step_started)
        outputs = refused + outputs
        if outputs:
            stats = engine_stats(engine, queue_times)
            queue_times = []
            try:
                conn.send(("outputs", outputs, stats))
            except (BrokenPipeError, OSError):
                return


def _admitted(engine: Engine, arrivals: dict[str, float], outputs: list[SequenceOutput], step_started: float) -> list[float]:
    """How long each request the scheduler admitted in this step had waited; each leaves
    `arrivals`. One that left the queue without running (aborted or failed before a token) has no
    queue time."""
    if not arrivals:  # the usual decode step: nothing was waiting to be admitted
        return []
    waiting = {seq.request_id for seq in engine.scheduler.waiting}
    never_ran = {out.request_id for out in outputs if out.finished and out.num_output_tokens == 0}
    left = [request_id for request_id in arrivals if request_id not in waiting]
    return [step_started - arrivals.pop(request_id) for request_id in left if request_id not in never_ran]


def _add(engine: Engine, request_id: str, prompt_ids: list[int], params: SamplingParams, grammar: str | None,
         embeds: torch.Tensor | None) -> list[SequenceOutput]:
    """Admit one request; [] or, if it cannot run after all, its final error output."""
    try:
        if grammar is not None:
            params = replace(params, grammar=engine.grammars.compile(grammar))
        engine.add_request(prompt_ids, params, request_id, embeds)
        return []
    except Exception as exc:  # the API process checked the same limits: this is a bug, not a bad request
        log.exception("request %s refused by the engine", request_id)
        return [SequenceOutput(request_id, [], "", [], True, "error", len(prompt_ids), 0,
                               error=f"internal error in the inference engine ({type(exc).__name__})")]


# --- the API side --------------------------------------------------------------------------
class AsyncEngine:
    def __init__(
        self, model_dir: str | Path, config: EngineConfig, max_pending: int = 256, threads: int | None = None,
    ) -> None:
        """Start the engine process and wait until it has loaded the checkpoint (raises
        RuntimeError with its reason if it cannot). `threads`: torch threads of the engine
        process; default one per core but one, which is left to the HTTP side (measured on 2
        cores: 1 engine thread streamed 79%/68% of the engine alone at concurrency 1/8, 2
        threads 72%/63%: the HTTP work preempts a thread the other waits for; nor do sleeping
        OpenMP workers help: OMP_WAIT_POLICY=PASSIVE made the engine alone 2.5x slower, and
        GOMP_SPINCOUNT 2,000-20,000 streamed 56-83% / 45-70%)."""
        threads = threads or max(1, len(os.sched_getaffinity(0)) - 1)
        self.max_pending = max_pending
        self.config = config
        self.frontend = EngineFrontend(Path(model_dir), config)
        self.on_stats: Callable[[EngineStats], None] | None = None  # told of every report (api/metrics.py)
        self.dead: str | None = None  # why the engine process stopped, once it has
        self._queues: dict[str, asyncio.Queue] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        context = multiprocessing.get_context("spawn")  # no fork of a process that runs torch threads
        self._conn, child_conn = context.Pipe(duplex=True)
        self._process = context.Process(
            target=_engine_process, args=(str(model_dir), config, threads, child_conn),
            name="imagemini-engine", daemon=True,
        )
        self._process.start()
        child_conn.close()
        if not self._conn.poll(STARTUP_TIMEOUT_S):
            self._process.kill()
            raise RuntimeError("the engine process did not start in time")
        try:
            status, detail = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"the engine process exited while starting (exit code {self._process.exitcode})") from None
        if status != "ready":
            raise RuntimeError(f"the engine could not load {model_dir}: {detail}")
        self.facts: EngineFacts = detail
        self.stats = detail.stats
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_loop, name="imagemini-engine-send", daemon=True)
        self._sender.start()

    # --- what the API reads ---------------------------------------------------------------
    @property
    def num_pending(self) -> int:
        return len(self._queues)

    @property
    def limits(self) -> RequestLimits:
        return self.facts.limits

    @property
    def system_fingerprint(self) -> str:
        return self.facts.system_fingerprint

    @property
    def tokenizer(self) -> Tokenizer:
        return self.frontend.tokenizer

    def start(self) -> None:
        """Attach to the running event loop (idempotent)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._conn.fileno(), self._on_readable)

    async def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        request_id: str,
        prompt_embeds: torch.Tensor | None = None,
    ) -> AsyncIterator[SequenceOutput]:
        self.start()
        if self.dead is not None:
            raise EngineOverloaded(f"the inference engine is not running ({self.dead})")
        if self._stopping:
            raise EngineOverloaded("server is shutting down")
        if len(self._queues) >= self.max_pending:
            raise EngineOverloaded(f"{len(self._queues)} requests in flight (limit {self.max_pending})")
        self.limits.check(prompt_ids, params)
        out_queue: asyncio.Queue = asyncio.Queue()
        self._queues[request_id] = out_queue
        finished = False
        grammar = params.grammar.source if params.grammar is not None else None
        try:
            self._outbox.put(("add", request_id, list(prompt_ids), replace(params, grammar=None), grammar, prompt_embeds))
            while True:
                out: SequenceOutput = await out_queue.get()
                # A consumer that fell behind gets what piled up as one delta.
                while not out.finished and not out_queue.empty():
                    out = out.merge(out_queue.get_nowait())
                finished = out.finished
                yield out
                if finished:
                    return
        finally:
            self._queues.pop(request_id, None)
            if not finished and self.dead is None:
                self._outbox.put(("abort", request_id))

    # --- the pipe -----------------------------------------------------------------------
    def _send_loop(self) -> None:
        while True:
            message = self._outbox.get()
            if message is None:
                return
            try:
                self._conn.send(message)
            except (BrokenPipeError, OSError):
                return  # the reader sees the end and fails what is in flight

    def _on_readable(self) -> None:
        try:
            while self._conn.poll():
                kind, outputs, stats = self._conn.recv()
                self.stats = stats
                if self.on_stats is not None:
                    self.on_stats(stats)
                for out in outputs:
                    q = self._queues.get(out.request_id)
                    if q is not None:
                        q.put_nowait(out)
        except (EOFError, OSError):
            self._engine_gone()

    def _engine_gone(self) -> None:
        assert self._loop is not None
        self._loop.remove_reader(self._conn.fileno())
        self._process.join(1.0)
        code = self._process.exitcode
        self.dead = "stopped" if self._stopping and code == 0 else f"the engine process exited (code {code})"
        if not self._stopping:
            log.error("%s: ending %d requests in flight", self.dead, len(self._queues))
        for request_id, q in self._queues.items():
            q.put_nowait(SequenceOutput(
                request_id, [], "", [], True, "error", 0, 0, error="the inference engine stopped unexpectedly",
            ))

    async def shutdown(self, grace_seconds: float = 10.0) -> None:
        """Stop taking requests; let running ones finish for up to `grace_seconds`, abort the
        rest (their streams end with an error), then stop the engine process."""
        self._stopping = True
        deadline = time.monotonic() + grace_seconds
        while self._queues and time.monotonic() < deadline and self.dead is None:
            await asyncio.sleep(0.05)
        for request_id in list(self._queues):
            self._outbox.put(("abort", request_id))
        deadline = time.monotonic() + 2.0
        while self._queues and time.monotonic() < deadline and self.dead is None:
            await asyncio.sleep(0.02)  # the aborts' final outputs reach their streams
        self._outbox.put(("stop",))
        self._outbox.put(None)
        await asyncio.to_thread(self._process.join, 5.0)
        if self._process.is_alive():
            self._process.kill()
        if self._loop is not None and self.dead is None:
            self._loop.remove_reader(self._conn.fileno())
            self.dead = "stopped"
