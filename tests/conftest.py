"""Shared fixtures: where the real public recordings live, and a private temporary store path."""

from __future__ import annotations

import atexit
import os
import tempfile
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


LSL_PORT_RANGE = 64
"""Ports of this run's outlets. Discovery on loopback asks each port of the range (KnownPeers), so an outlet bound
outside it cannot be found: with liblsl's shared default range of 32, two suites at once ran out of ports."""


def _free_port_block(n: int) -> int:
    """The first of `n` consecutive loopback ports that are free for TCP and UDP just now (a random block)."""
    import random
    import socket

    for _ in range(200):
        base = random.randrange(20_000, 32_000 - n)  # below the ephemeral ports
        try:
            for port in range(base, base + n):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as sock:
                        sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free block of loopback ports for LSL")


def _private_lsl_config() -> str:
    """The loopback-only LSL configuration with a session id of this run's own.

    liblsl reads its configuration once per process, so this is set before any test can load pylsl: no test (or
    a subprocess it starts) resolves or announces streams beyond this machine, and two suites running at once on
    one machine never see each other's streams (LSL only matches streams within one ``SessionID``) nor take each
    other's ports (each run has a block of its own).
    """
    text = Path(__file__).with_name("lsl_loopback.cfg").read_text(encoding="utf-8")
    text = text.replace("[lab]\n", f"[lab]\nSessionID = cmt-tests-{uuid.uuid4().hex}\n", 1)
    base = _free_port_block(LSL_PORT_RANGE + 1)
    ports = f"[ports]\nMulticastPort = {base}\nBasePort = {base + 1}\nPortRange = {LSL_PORT_RANGE}\n"
    text = text.replace("[ports]\n", ports, 1)
    fd, path = tempfile.mkstemp(prefix="cmt-lsl-", suffix=".cfg")  # private to the user (0600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    atexit.register(os.unlink, path)
    return path


os.environ["LSLAPICFG"] = _private_lsl_config()


def _find_shared_data() -> Path | None:
    env = os.environ.get("CMT_SHARED_DATA")
    if env:
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "data"
        if (candidate / "README.md").exists():
            return candidate
    return None


SHARED_DATA = _find_shared_data()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only folder of real recordings (../shared/data from the project root)."""
    if SHARED_DATA is None:
        pytest.fail("../shared/data not found: the real recordings are required by these tests")
    return SHARED_DATA


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite"


@pytest.fixture
def bluez(tmp_path, monkeypatch):
    """A fake BlueZ on a private system bus, driven through bleak's real BlueZ backend (see bluez_mock.py)."""
    from bleak.backends.bluezdbus.version import BlueZFeatures
    from bluez_mock import BluezMock

    # No bluetoothctl here: tell bleak the (fake) BlueZ is recent instead of letting it guess.
    monkeypatch.setattr(BlueZFeatures, "checked_bluez_version", True)
    monkeypatch.setattr(BlueZFeatures, "supported_version", True)
    with BluezMock(log_path=tmp_path / "bluez-mock.log") as mock:
        yield mock
