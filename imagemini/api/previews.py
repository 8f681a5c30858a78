"""Where drawn pictures and their previews (`image_config.partial_images`) are decoded: one
thread of their own, whose OpenMP team is that one thread.

    url = await picture_data_url(writer, codes)     # a finished picture, off the event loop
    url = await preview_data_url(writer, codes)     # a stream's preview, off the event loop
    png = picture_png(writer, codes)                # the same bytes, blocking (tests, scripts)
    png = preview_png(writer, codes)

Why not the worker threads that decode finished pictures: those run torch's default team, one
thread per core, while the engine process keeps all cores but one busy (engine/async_engine.py).
A team that waits on a thread the engine preempts spins: three previews a picture made the
bundled model's pictures arrive 50% later on 2 cores; one thread, on the core left to the HTTP
side, made no difference (`imagemini bench draw --partial-images 3`). One thread also means one
decode at a time: previews of many streams queue here instead of taking cores from the engine.
A float32 decoder's bits depend on the team size, so pictures and previews are always decoded
here: the same codes give the same PNG bytes whatever the machine's core count (the seed
guarantee does not name the thread count: engine/numerics.py).
"""

from __future__ import annotations

import asyncio
import ctypes
from concurrent.futures import ThreadPoolExecutor

import torch

from imagemini.models.image_output import ImageWriter


def _one_thread_team() -> None:
    # torch sets a thread's team size on its first parallel call: that comes first, then the size,
    # set for this thread only (omp_set_num_threads is per thread; torch.set_num_threads would
    # also change the size every thread started later takes).
    torch.get_num_threads()
    set_team_size = getattr(ctypes.CDLL(None), "omp_set_num_threads", None)  # None: torch without OpenMP
    if set_team_size is not None:
        set_team_size(1)


_decoder = ThreadPoolExecutor(1, thread_name_prefix="imagemini-previews", initializer=_one_thread_team)


async def picture_data_url(writer: ImageWriter, codes: list[int]) -> str:
    return await asyncio.get_running_loop().run_in_executor(_decoder, writer.png_data_url, codes)


async def preview_data_url(writer: ImageWriter, codes: list[int]) -> str:
    return await asyncio.get_running_loop().run_in_executor(_decoder, writer.preview_png_data_url, codes)


def picture_png(writer: ImageWriter, codes: list[int]) -> bytes:
    return _decoder.submit(writer.png, codes).result()


def preview_png(writer: ImageWriter, codes: list[int]) -> bytes:
    return _decoder.submit(writer.preview_png, codes).result()
