"""Hammer one shared object from several threads and check every answer belongs to its own question."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def call_concurrently(
    call: Callable[[int], Any], items: int, calls: int, threads: int
) -> list[tuple[int, Any | BaseException]]:
    """``calls`` calls of ``call(item)`` over ``threads`` threads, items in round robin (item = call % items).

    All threads start together (a barrier) so the calls really overlap. Returns (item, result or the exception
    the call raised) per call, in call order.
    """
    barrier = threading.Barrier(threads)

    def worker(first: int) -> list[tuple[int, Any | BaseException]]:
        barrier.wait()
        answers = []
        for number in range(first, calls, threads):
            item = number % items
            try:
                answers.append((item, call(item)))
            except Exception as err:  # a failing call is a finding the test reports
                answers.append((item, err))
        return answers

    with ThreadPoolExecutor(threads) as pool:
        per_thread = list(pool.map(worker, range(threads)))
    return [answer for answers in per_thread for answer in answers]


def wrong_answers(answers: list[tuple[int, Any | BaseException]], is_right: Callable[[int, Any], bool]) -> list[str]:
    """Descriptions of the calls that raised or whose result ``is_right(item, result)`` rejects."""
    wrong = []
    for item, result in answers:
        if isinstance(result, BaseException):
            wrong.append(f"item {item}: raised {type(result).__name__}: {result}")
        elif not is_right(item, result):
            wrong.append(f"item {item}: not its own result (differs from the single-thread result)")
    return wrong
