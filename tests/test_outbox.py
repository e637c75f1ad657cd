"""The device outbox: durable, ordered, never reusing a sequence number."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from broker.messages import CheckIn
from device.outbox import Outbox


def record(seq: int) -> CheckIn:
    return CheckIn(
        seq=seq,
        scanned_at=datetime(2026, 11, 23, 8, 0, tzinfo=UTC),
        direction="in",
        kind="unrecognized",
        accepted=False,
        reason="unrecognized",
    )


def test_append_pending_ack(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    stored = [box.append(record) for _ in range(5)]
    assert [r.seq for r in stored] == [1, 2, 3, 4, 5]
    assert [r.seq for r in box.pending(after=2, limit=2)] == [3, 4]
    assert box.ack(3) == 3
    assert [r.seq for r in box.pending()] == [4, 5]
    assert box.depth() == 2
    assert box.oldest_pending_at() is not None
    box.close()


def test_sequence_and_stream_survive_reopen_and_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    stream = box.stream
    for _ in range(3):
        box.append(record)
    box.ack(3)
    box.close()

    again = Outbox(path)
    assert again.stream == stream
    assert again.depth() == 0
    assert again.append(record).seq == 4
    assert again.last_seq() == 4
    again.close()


def test_a_new_outbox_gets_a_new_stream(tmp_path: Path) -> None:
    first = Outbox(tmp_path / "a.db")
    second = Outbox(tmp_path / "b.db")
    assert first.stream != second.stream
    first.close()
    second.close()


def test_a_check_in_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    script = (
        "import os, signal, sys\n"
        "from tests.test_outbox import record\n"
        "from pathlib import Path\n"
        "from device.outbox import Outbox\n"
        f"box = Outbox(Path({str(path)!r}))\n"
        "box.append(record)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", script], cwd=root, check=False)
    assert result.returncode == -9
    box = Outbox(path)
    assert [r.seq for r in box.pending()] == [1]
    box.close()
