"""The informers' watch stream is cut into one JSON document per line, whatever the chunk boundaries."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from aitask.adapters.watch import _lines


class Stream:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def stream(self, size: int, decode_content: bool = True) -> Iterator[bytes]:
        yield from self.chunks


@pytest.mark.parametrize("cut", [1, 3, 7, 64, 10_000])
def test_lines_survive_any_chunking(cut: int) -> None:
    events = [{"type": "MODIFIED", "object": {"metadata": {"uid": f"u{i}"}, "pad": "x" * (i * 13)}} for i in range(40)]
    data = b"\n".join(json.dumps(e).encode() for e in events) + b"\n\n"  # a blank line is skipped
    chunks = [data[i : i + cut] for i in range(0, len(data), cut)]
    got = [json.loads(line) for line in _lines(Stream(chunks))]
    assert got == events


def test_a_last_line_without_newline_is_kept() -> None:
    assert list(_lines(Stream([b'{"a": 1}\n{"b"', b": 2}"]))) == [b'{"a": 1}', b'{"b": 2}']
