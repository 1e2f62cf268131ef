"""The site file: one TOML file per site, validated by pydantic.

The site file describes the plant (towers, levels, columns, bays, slot zones and
the physics the simulator uses), where each PLC answers (host, port, unit id and
profile file), the MQTT feed and the control socket. Secrets (the MQTT password,
operator tokens) never live here: the file only names the files that hold them.

Every field carries a description and its unit. Changes take effect on restart
of the controller (and of the simulator, for the plant section); nothing is
reloaded live.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tower.tomlsource import TomlSource


class Side(str, Enum):
    """Which side of the aisle a slot or bay stands on."""

    LEFT = "left"
    RIGHT = "right"


class SizeClass(str, Enum):
    """The size class of a slot, and the smallest class a car needs."""

    STANDARD = "standard"
    TALL = "tall"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Site, tower and bay ids end up in MQTT topics, log fields and file names:
# letters, digits, '-' and '_' only (no '/', '+' or '#').
Name = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$", min_length=1, max_length=64)
]


class SizeLimits(_Model):
    """The largest car a slot of one size class takes."""

    max_height_mm: int = Field(description="Highest car, in mm.", gt=0)
    max_length_mm: int = Field(5000, description="Longest car, in mm.", gt=0)
    max_width_mm: int = Field(2000, description="Widest car, in mm.", gt=0)
    max_weight_class: int = Field(
        2, description="Heaviest weight class the bay reports (0..3).", ge=0, le=3
    )


def _default_sizes() -> dict[SizeClass, SizeLimits]:
    return {
        SizeClass.STANDARD: SizeLimits(max_height_mm=1600),
        SizeClass.TALL: SizeLimits(max_height_mm=2050, max_weight_class=3),
    }


class Physics(_Model):
    """Motion figures of one tower. The simulator moves by them; the core uses
    them to estimate travel. Reference figures from DESIGN.md section 2."""

    lift_speed_m_s: float = Field(1.0, description="Lift top speed, m/s.", gt=0)
    lift_accel_m_s2: float = Field(0.5, description="Lift acceleration, m/s^2.", gt=0)
    level_height_m: float = Field(2.2, description="Height of one level, m.", gt=0)
    shuttle_speed_m_s: float = Field(1.5, description="Shuttle top speed, m/s.", gt=0)
    shuttle_accel_m_s2: float = Field(
        0.5, description="Shuttle acceleration, m/s^2.", gt=0
    )
    column_pitch_m: float = Field(2.6, description="Distance between columns, m.", gt=0)
    transfer_s: float = Field(12.0, description="One car handover, s.", gt=0)
    bay_check_s: float = Field(
        10.0, description="Bay door close and entry check, s.", gt=0
    )


class Zone(_Model):
    """A rule that gives slots a size class or a charger. A slot matches when its
    level, column and side are all in the lists given (an omitted list matches
    every value). Later zones override earlier ones for the size class."""

    levels: list[int] | None = Field(None, description="Levels the zone covers.")
    columns: list[int] | None = Field(None, description="Columns the zone covers.")
    sides: list[Side] | None = Field(None, description="Sides the zone covers.")
    size: SizeClass | None = Field(None, description="Size class of these slots.")
    charger: bool | None = Field(None, description="Whether these slots charge.")
    disabled: bool | None = Field(
        None, description="Slots out of service (never allocated)."
    )


class Endpoint(_Model):
    """Where one PLC answers on Modbus TCP."""

    profile: str = Field(
        description="Profile file, relative to the profiles directory."
    )
    host: str = Field("127.0.0.1", description="Host name or address of the PLC.")
    port: int | None = Field(
        None,
        description="TCP port; default: the tower port_base plus the device offset.",
        ge=1,
        le=65535,
    )
    unit_id: int | None = Field(
        None, description="Modbus unit id; defaults to the profile's.", ge=0, le=255
    )


class BayConfig(_Model):
    """A ground-level entry/exit point, reached by the ground shuttle."""

    id: Name = Field(description="Bay name, unique in the tower, e.g. 'bay-1'.")
    column: int = Field(description="Ground-aisle column of the bay.", ge=1)
    side: Side = Field(description="Side of the ground aisle.")


class PlcConfig(_Model):
    """Which profile each device kind uses, and where the tower's PLCs answer."""

    host: str = Field(
        "127.0.0.1", description="Default host of every PLC of the tower."
    )
    port_base: int = Field(
        15020,
        description=(
            "First TCP port. The lift answers on port_base, shuttle k on "
            "port_base+1+k, bay n (1-based order in the file) on port_base+40+n."
        ),
        ge=1,
        le=65000,
    )
    lift: str = Field("lift.toml", description="Profile file of the lift PLC.")
    shuttle: str = Field("shuttle.toml", description="Profile file of the shuttles.")
    bay: str = Field("bay.toml", description="Profile file of the bay PLCs.")
    overrides: dict[str, Endpoint] = Field(
        default_factory=dict,
        description="Per-device endpoint, keyed by device name ('lift', 'shuttle-3').",
    )


class TowerConfig(_Model):
    """One parking tower."""

    id: Name = Field(description="Tower name, unique on the site, e.g. 'tower-a'.")
    levels: int = Field(8, description="Storage levels above the ground.", ge=1, le=40)
    columns: int = Field(6, description="Columns per side on each level.", ge=1, le=16)
    bays: list[BayConfig] = Field(
        default_factory=lambda: [
            BayConfig(id="bay-1", column=1, side=Side.LEFT),
            BayConfig(id="bay-2", column=1, side=Side.RIGHT),
        ],
        description="Entry/exit bays on the ground level.",
    )
    zones: list[Zone] = Field(default_factory=list, description="Slot zones.")
    physics: Physics = Field(default_factory=Physics)
    plc: PlcConfig = Field(default_factory=PlcConfig)

    @model_validator(mode="after")
    def _check_layout(self) -> TowerConfig:
        ids = [b.id for b in self.bays]
        if len(set(ids)) != len(ids):
            raise ValueError(f"bay ids repeat: {ids}")
        if not self.bays:
            raise ValueError("a tower needs at least one bay")
        spots = [(b.column, b.side) for b in self.bays]
        if len(set(spots)) != len(spots):
            raise ValueError("two bays stand at the same column and side")
        for bay in self.bays:
            if bay.column > self.columns:
                raise ValueError(
                    f"bay {bay.id} at column {bay.column}, tower has {self.columns}"
                )
        for zone in self.zones:
            for level in zone.levels or []:
                if not 1 <= level <= self.levels:
                    raise ValueError(f"zone level {level} outside 1..{self.levels}")
            for column in zone.columns or []:
                if not 1 <= column <= self.columns:
                    raise ValueError(f"zone column {column} outside 1..{self.columns}")
        return self

    @property
    def shuttle_levels(self) -> range:
        """Levels with a shuttle: 0 (the ground shuttle) up to the top level."""
        return range(self.levels + 1)

    def device_names(self) -> list[str]:
        """Every PLC of the tower, by device name."""
        names = ["lift"]
        names += [f"shuttle-{k}" for k in self.shuttle_levels]
        names += [bay.id for bay in self.bays]
        return names

    def endpoint(self, device: str) -> Endpoint:
        """Where a device answers, with the defaults filled in."""
        if device == "lift":
            profile, port = self.plc.lift, self.plc.port_base
        elif device.startswith("shuttle-"):
            level = int(device.removeprefix("shuttle-"))
            profile, port = self.plc.shuttle, self.plc.port_base + 1 + level
        else:
            index = [b.id for b in self.bays].index(device)
            profile, port = self.plc.bay, self.plc.port_base + 41 + index
        base = Endpoint(profile=profile, host=self.plc.host, port=port)
        override = self.plc.overrides.get(device)
        if override is None:
            return base
        return Endpoint(
            profile=override.profile,
            host=override.host,
            port=override.port or port,
            unit_id=override.unit_id,
        )


class MqttConfig(_Model):
    """The occupancy feed."""

    url: str = Field(
        "mqtt://127.0.0.1:1883",
        description="Broker URL, mqtt://host:port. The TOWER_MQTT_URL variable wins.",
    )
    topic_prefix: str = Field(
        "zoo/parking",
        description="Prefix of every topic: levels of letters, digits, '-', '_'.",
        pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
        max_length=128,
    )
    username: str | None = Field(None, description="Broker user name, if any.")
    password_file: str | None = Field(
        None, description="File holding the broker password (never the password)."
    )
    client_id: str | None = Field(
        None, description="MQTT client id; default tower-<site>-<pid>, unique."
    )


class ControlConfig(_Model):
    """The operator control socket."""

    socket: str = Field(
        "/run/tower/control.sock", description="Path of the Unix control socket."
    )
    tokens_file: str = Field(
        "/etc/tower/tokens",
        description="File of operator tokens, one 'role token' pair per line.",
    )


class JournalConfig(_Model):
    """The SQLite journal."""

    path: str = Field(
        "/var/lib/tower/journal.db", description="Journal file (SQLite, WAL)."
    )


class PollConfig(_Model):
    """How the controller talks to the PLCs."""

    interval_ms: int = Field(
        100, description="Status poll period per device, ms.", ge=10
    )
    timeout_ms: int = Field(
        1000, description="Deadline of one Modbus request, ms.", ge=10
    )
    heartbeat_ms: int = Field(
        500, description="Controller heartbeat period, ms.", ge=10
    )
    command_timeout_s: float = Field(
        300.0, description="Longest a device may take to finish one command, s.", gt=0
    )


class PolicyConfig(_Model):
    """How the controller chooses slots and orders the jobs of a tower."""

    name: str = Field(
        "pipelined",
        description=(
            "The allocation and sequencing policy, one of tower.core.policies: "
            "'pipelined' (nearest slot; pipelined sequencing, kiosk staging, "
            "idle-time relocation), 'zoned', or a baseline: 'first-free', "
            "'nearest', 'zones-fcfs'. Takes effect on restart."
        ),
    )

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from tower.core.policies import POLICIES  # noqa: PLC0415 (the core imports us)

        if name not in POLICIES:
            choices = ", ".join(POLICIES)
            raise ValueError(f"unknown policy {name!r}; choose one of {choices}")
        return name


class SiteConfig(_Model):
    """A whole site: its towers and the services around them."""

    id: Name = Field("zoo", description="Site name, used in topics and logs.")
    profiles_dir: str = Field(
        "plc_profiles",
        description="Directory of the PLC profiles, relative to this file.",
    )
    towers: Annotated[list[TowerConfig], Field(min_length=1)]
    sizes: dict[SizeClass, SizeLimits] = Field(default_factory=_default_sizes)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    journal: JournalConfig = Field(default_factory=JournalConfig)
    poll: PollConfig = Field(default_factory=PollConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    source: Path | None = Field(None, exclude=True, description="Where it was read.")

    @model_validator(mode="after")
    def _check_towers(self) -> SiteConfig:
        ids = [t.id for t in self.towers]
        if len(set(ids)) != len(ids):
            raise ValueError(f"tower ids repeat: {ids}")
        taken: dict[tuple[str, int], str] = {}
        for tower in self.towers:
            for device in tower.device_names():
                endpoint = tower.endpoint(device)
                key = (endpoint.host, endpoint.port or 502)
                here = f"{tower.id}/{device}"
                if key in taken:
                    raise ValueError(
                        f"{here} and {taken[key]} both answer on "
                        f"{key[0]}:{key[1]}; move a port_base"
                    )
                taken[key] = here
        return self

    def tower(self, tower_id: str) -> TowerConfig:
        for tower in self.towers:
            if tower.id == tower_id:
                return tower
        raise KeyError(tower_id)

    def profiles_path(self) -> Path:
        """The profiles directory, resolved against the site file's directory."""
        base = self.source.parent if self.source else Path.cwd()
        return (base / self.profiles_dir).resolve()


ConfigKind = Literal["site"]


def load_site(path: str | Path) -> SiteConfig:
    """Read and validate a site file.

    Raises ValidationProblems listing every problem with its file, line and field.
    """
    source = TomlSource.read(path)
    site = source.validate(SiteConfig)
    return site.model_copy(update={"source": Path(path).resolve()})
