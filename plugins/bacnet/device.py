"""Runtime state of one configured BACnet device, and small helpers shared by the driver's parts."""

from __future__ import annotations

import trio

from .reading import ObjectRead

def _objects_n(n: int) -> str:
    return f"{n} object" if n == 1 else f"{n} objects"


def flags_of(sf) -> tuple[str, ...]:
    if not sf:
        return ()
    names = ("in_alarm", "fault", "overridden", "out_of_service")
    return tuple(n for n, b in zip(names, sf) if b)


class _Dev:
    """Runtime state of one configured device."""

    def __init__(self, cfg, settings: dict, network: str, pid: int) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.s = settings
        self.network = network
        self.instance: int = cfg.settings["device_instance"]
        self.address: str | None = cfg.settings.get("address")
        self.max_apdu: int | None = cfg.settings.get("max_apdu")
        self.segmentation: str | None = cfg.settings.get("segmentation")
        self.pid = pid
        self.read_mode = settings["read_mode"]
        self.batch_cap = settings["rpm_max_objects"]
        self.objects: dict[str, ObjectRead] = {}
        self.subs: dict[str, dict] = {}  # object id -> subscription state
        self.missed = 0
        self.last_iam: float | None = None
        self.iam_event = trio.Event()
        self.cov_event = trio.Event()
        self.requests = 0
        self.values = 0
        self.cov_rounds = 0  # (re)subscription rounds completed
        self.cov_resumed: list[str] = []  # silent objects whose notifications came back, not yet logged
        self.cov_resumed_reports = 0
        self.cycles = 0
        self.object_count: int | None = None
        self.resolved = trio.Event()

