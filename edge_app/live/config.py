"""``AppConfig``: everything ``edgecls run`` does, validated before a camera or model is opened."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from edge_app.runtime.errors import EdgeclsError, check_normalization, check_threads


@dataclass(frozen=True)
class AppConfig:
    """Everything ``edgecls run`` does; fields are named like its flags. Validated on creation.

    Example:
        >>> AppConfig("model.tflite", source="picamera", web="127.0.0.1:8080", threshold=0.6, smooth=5)
    """

    model: str
    labels: str | None = None
    source: str = "0"
    device: str = "cpu"
    num_threads: int | None = None
    display: bool = False
    web: str | None = None
    allow_remote: bool = False
    log: str | None = None
    log_max_mb: float = 10.0
    log_backups: int = 3
    threshold: float = 0.0
    smooth: int = 1
    top_k: int = 1
    max_frames: int | None = None
    duration: float | None = None
    save_frames: str | None = None
    save_when: tuple[str, ...] = ()
    save_every: float = 1.0
    save_max: int = 1000
    loop: bool = False
    fast_decode: bool = True
    queue_depth: int = 2
    web_fps: float = 10.0
    mean: tuple[float, ...] | float | None = None
    std: tuple[float, ...] | float | None = None
    max_pixels: int | None = None
    watch: bool = True
    collect: str | None = None
    collect_below: float = 0.5
    collect_margin: float = 0.1
    collect_every: float = 2.0
    collect_sample_every: float = 300.0
    collect_max: int = 1000
    learn: bool = False
    token_file: str | None = None
    public_view: bool = False
    unknown: bool = True
    mqtt: str | None = None
    device_id: str | None = None
    mqtt_ca: str | None = None
    trust: str | None = None
    status_every: float = 5.0  # seconds between MQTT status messages
    ha_discovery: str | None = None  # Home Assistant's discovery prefix; None: no discovery
    lang: str | None = None  # the kiosk page's language; None: the browser's

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AppConfig:
        """The settings ``edgecls run``'s flags give: each field from the flag of its name; three flags say the
        field the other way round (``--full-decode``, ``--no-watch``, ``--unknown off``)."""
        given = vars(args)
        settings = {f.name: given[f.name] for f in fields(cls) if f.name in given}
        settings.update(fast_decode=not args.full_decode, watch=not args.no_watch, unknown=args.unknown != "off")
        return cls(**settings)

    def collect_config(self):
        """The ``--collect`` settings, or ``None``."""
        from edge_app.kiosk.collect import CollectConfig

        if not self.collect:
            return None
        return CollectConfig(self.collect, self.collect_below, self.collect_margin, self.collect_every,
                             self.collect_sample_every, self.collect_max)

    def __post_init__(self):
        object.__setattr__(self, "model", str(self.model))
        object.__setattr__(self, "source", str(self.source))
        when = self.save_when.split(",") if isinstance(self.save_when, str) else self.save_when
        object.__setattr__(self, "save_when", tuple(w.strip() for w in when if w.strip()))
        problems = []
        if not 0.0 <= self.threshold <= 1.0:
            problems.append(f"--threshold must be between 0 and 1, got {self.threshold}")
        for name, value in (("--smooth", self.smooth), ("--top-k", self.top_k), ("--save-max", self.save_max),
                            ("--queue-depth", self.queue_depth)):
            if value < 1:
                problems.append(f"{name} must be 1 or more, got {value}")
        if self.max_frames is not None and self.max_frames < 1:
            problems.append(f"--max-frames must be 1 or more, got {self.max_frames}")
        if self.duration is not None and self.duration <= 0:
            problems.append(f"--duration must be more than 0 seconds, got {self.duration}")
        if self.log_max_mb <= 0 or self.log_backups < 0:
            problems.append("--log-max-mb must be more than 0 and --log-backups 0 or more")
        if self.save_every < 0 or self.web_fps <= 0:
            problems.append("--save-every must be 0 or more and --web-fps more than 0")
        if self.save_when and not self.save_frames:
            problems.append("--save-when needs --save-frames DIR (where to keep the frames)")
        if self.learn and not (self.collect and self.web):
            problems.append("--learn needs --collect DIR (where frames and models are kept) and --web HOST:PORT "
                            "(the kiosk page it works from)")
        if self.public_view and not self.web:
            problems.append("--public-view lets the --web kiosk page's field-loop reads go without the token; "
                            "add --web HOST:PORT, or drop --public-view")
        if self.token_file and not self.learn:
            problems.append("--token-file is the kiosk's token for --learn; add --learn")
        if not 0.1 <= self.status_every <= 3600:
            problems.append(f"--status-every must be from 0.1 to 3600 seconds, got {self.status_every}")
        if (self.device_id or self.mqtt_ca or self.trust) and not self.mqtt:
            problems.append("--device-id, --mqtt-ca and --trust belong to --mqtt URL (the fleet's broker); add it")
        if self.ha_discovery is not None and not self.mqtt:
            problems.append("--ha-discovery announces the device to Home Assistant through an MQTT broker; add "
                            "--mqtt URL (the broker Home Assistant's MQTT integration uses)")
        if problems:
            raise EdgeclsError("; ".join(problems))
        check_threads(self.num_threads)
        check_normalization(self.mean, self.std)
        self.collect_config()
        if self.web:
            from edge_app.kiosk.address import parse_web_address

            parse_web_address(self.web, self.allow_remote)
        if self.lang is not None:
            if not self.web:
                raise EdgeclsError("--lang is the --web kiosk page's language; add --web HOST:PORT")
            from edge_app.kiosk.i18n import check_language

            object.__setattr__(self, "lang", check_language(self.lang))
        if self.mqtt:
            from edge_app.runtime.broker import check_device_id, parse_broker_url

            parse_broker_url(self.mqtt, "--mqtt")
            check_device_id(self.fleet_id)
            if self.ha_discovery is not None:
                from edge_app.link.ha_discovery import check_prefix

                check_prefix(self.ha_discovery)

    @property
    def fleet_id(self) -> str:
        """``--device-id``, or this machine's host name."""
        import socket

        return self.device_id or socket.gethostname().split(".")[0]
