"""One scan pipeline built from a config: camera, decoder, readers, policy, signals, scanner.

A pushed config replaces the whole pipeline between two frames, after every code
already decoded has been decided, signalled and stored; the outbox, the broker link
and the counters live outside it and carry on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from broker.messages import CheckIn
from broker.sealing import Sealer
from device.badge import BadgeReader
from device.camera import FrameSource, make_frame_source
from device.config import DeviceConfig
from device.credentials import CccdReader, CredentialReader
from device.dcc import DccReader
from device.decision import Decider, Decision
from device.decoder import Decoder, make_decoder
from device.outbox import Outbox
from device.policy import Policy
from device.scanner import Scanner, ScanStats
from device.signals import Signals
from device.trust import TrustList

logger = logging.getLogger(__name__)

POLICY_STATE = "policy.db"


def make_readers(config: DeviceConfig) -> list[CredentialReader]:
    """A reader for every credential kind, keyed from the config."""
    return [
        CccdReader(),
        BadgeReader(
            config.credentials.badge_keys,
            site_id=config.site_id,
            revoked=config.policy.revoked_badges,
        ),
        DccReader(TrustList.from_pem_texts(config.credentials.trust_list)),
    ]


def _sealer(config: DeviceConfig) -> Sealer | None:
    key = config.privacy.authority_public_key
    if key is None:
        logger.warning("no health authority key configured: check-ins carry no identity")
        return None
    return Sealer(key)


class Pipeline:
    """The parts that a config decides; hardware passed in by keyword is kept, not closed."""

    def __init__(
        self,
        config: DeviceConfig,
        *,
        key: bytes,
        outbox: Outbox,
        stats: ScanStats,
        on_stored: Callable[[CheckIn, Decision], None],
        on_button: Callable[[], None],
        clock_synced: Callable[[], bool],
        pin_factory: Any = None,
        frame_source: FrameSource | None = None,
        decoder: Decoder | None = None,
    ) -> None:
        self.config = config
        self._owns_source = frame_source is None
        self.frame_source = frame_source or make_frame_source(config.frame_source)
        self.decoder = decoder or make_decoder(config.decoder)
        self.signals = Signals(config.signals, pin_factory=pin_factory, on_button=on_button)
        self.policy = Policy(
            config.policy, direction=config.direction, state_path=config.state_path / POLICY_STATE
        )
        decider = Decider(
            key=key,
            debounce_s=config.policy.debounce_s,
            monotonic=time.monotonic,
            wall_clock=lambda: datetime.now(UTC),
            readers=make_readers(config),
            judge=self.policy,
            clock_synced=clock_synced,
            sealer=_sealer(config),
        )
        self.scanner = Scanner(
            frame_source=self.frame_source,
            decoder=self.decoder,
            decider=decider,
            signals=self.signals,
            outbox=outbox,
            on_stored=on_stored,
            stats=stats,
        )

    def start(self) -> None:
        self.scanner.start()

    def close(self) -> None:
        """Stop scanning and release what this pipeline opened.

        Blocks for the current frame and for the decisions still queued behind it: they
        are signalled and stored before the signals close.
        """
        self.scanner.stop()
        self.signals.close()
        self.policy.close()
        if self._owns_source:
            self.frame_source.close()

    def dropped_frames(self) -> int:
        return int(getattr(self.frame_source, "dropped", 0))
