"""The seeded zoo-day workload: who parks when, and when they want their car back.

Theory of operation
-------------------
A workload is a trace of two kinds of event, in time order: an `Arrival` (a car
drives into a bay, its driver gets out) and a `RetrievalRequest` (a visitor asks
for the car, at the tower or minutes ahead at the kiosk by the zoo exit). The
benchmark replays the same trace for every policy, so a policy is judged on the
same day as its rivals. Time is in seconds from `day.start` of the parameter
file (08:00 in zoo-day.toml, an hour before the zoo opens).

`generate(params, site, seed)` works in three steps.

1. *A pool of visitors.* Each visitor is drawn from its own fixed block of
   uniform numbers out of `random.Random(seed)`: the arrival time from the
   arrival profile, the visit length (lognormal), whether an afternoon visitor
   stays to closing, whether a visitor leaves right after a show, the car's
   size, EV and energy need, kiosk use, the driver's times in the bay and the
   noise on the departure hint. Because every visitor uses the same number of
   draws whatever the parameters, two parameter files run with one seed see the
   same visitors wherever they agree (common random numbers), and visitor i is
   the same in a pool of any size.
2. *Fill the site.* The first n visitors of the pool are placed in arrival
   order, each in the least-loaded tower (by share of its slots) that has room
   for it: a car counts as present from its arrival until its visitor reaches
   the tower again, and a tower has room while fewer cars than
   `fill.target_occupancy` of its slots (and, for a tall car, of its tall slots)
   are present. A bisection finds the largest n for which every car finds room,
   so the busiest moment of the day takes the site to its target and no moment
   takes it beyond. Visitors are independent, so the first n are a fair sample.
3. *The trace.* The n cars get ids `car-00001`... in order of arrival, a bay
   of their tower (the core may choose another tower or bay; the trace records
   the preference), and two events each; the events are sorted by time, then
   arrivals before requests, then car id.

Rules that always hold for a generated trace:

- every car arrives once and is asked for once, strictly after its driver has
  left the bay (`t_s + driver_in_s`), and its visitor reaches the tower no later
  than `until_min_after` closing (`Workload.last_departure_s`);
- a kiosk request comes `kiosk.lead_min` before the visitor reaches the tower;
  an at-tower request has `t_s == arrives_at_tower_s`;
- at no time are more cars present (as counted above) in a tower than
  `target_occupancy` of its slots, nor more tall cars than that share of its tall
  slots;
- car dimensions stay within the site's size limits for their class.

The occupancy counted here ends when the visitor reaches the tower; in the plant
the car leaves its slot some minutes later (the retrieval and the driver's time),
which is what the free `1 - target_occupancy` of the slots is there for.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import pairwise
from pathlib import Path
from statistics import NormalDist
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from tower.config import SiteConfig, SizeClass, TowerConfig
from tower.core.model import build_slots
from tower.errors import TowerError
from tower.tomlsource import TomlSource

DEFAULT_WORKLOAD = Path(__file__).parent / "workloads" / "zoo-day.toml"
"""The shipped zoo-day parameter file."""

_NORMAL = NormalDist()
# Keeps inverse-CDF arguments inside (0, 1): random() may return exactly 0.0.
_EPS = 1e-12


class WorkloadError(TowerError, ValueError):
    """Raised when valid parameters cannot make a workload for a site: tall cars
    but no tall slot, car sizes beyond the site's size limits, a site too small
    to hold a single car."""


# -- parameters -----------------------------------------------------------------


def _fail(loc: tuple[str | int, ...], message: str, value: Any) -> ValidationError:
    """A validation error at `loc`, for checks that span several fields.

    Raised inside a model validator, pydantic keeps the location (prefixed with
    the model's own), so the file's problem names the field and its line.
    """
    error = PydanticCustomError("workload", message)
    detail = InitErrorDetails(type=error, loc=loc, input=value)
    return ValidationError.from_exception_data("WorkloadParams", [detail])


def clock_s(text: str) -> int:
    """Seconds since midnight of a clock time `HH:MM`."""
    hours, minutes = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60


def _ordered(pair: tuple[float, float]) -> tuple[float, float]:
    if pair[0] > pair[1]:
        raise ValueError(f"the low end {pair[0]} is above the high end {pair[1]}")
    return pair


Clock = Annotated[
    str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="Clock time HH:MM.")
]
Share = Annotated[float, Field(ge=0, le=1, description="A share, 0..1.")]
Millimetres = Annotated[int, Field(gt=0)]
WeightClass = Annotated[int, Field(ge=0, le=3)]
MmRange = Annotated[tuple[Millimetres, Millimetres], AfterValidator(_ordered)]
WeightRange = Annotated[tuple[WeightClass, WeightClass], AfterValidator(_ordered)]
PositiveRange = Annotated[
    tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]],
    AfterValidator(_ordered),
]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DayParams(_Params):
    """The zoo's day. t_s = 0 in the trace is `start`."""

    start: Clock = Field(description="Clock time of t_s = 0.")
    opening: Clock = Field(description="The zoo opens.")
    closing: Clock = Field(description="The zoo closes.")
    end_after_closing_min: float = Field(
        gt=0, description="The day ends this long after closing, min."
    )

    @model_validator(mode="after")
    def _check_order(self) -> DayParams:
        if clock_s(self.opening) < clock_s(self.start):
            raise _fail(("opening",), "opening is before the day's start", self.opening)
        if clock_s(self.closing) <= clock_s(self.opening):
            raise _fail(("closing",), "closing is not after opening", self.closing)
        return self


class FillParams(_Params):
    """How full the day makes the site."""

    target_occupancy: float = Field(
        gt=0,
        le=1,
        description="Share of the slots (and of the tall slots) taken at the peak.",
    )


class ProfilePoint(_Params):
    """The relative arrival rate at one clock time."""

    at: Clock = Field(description="Clock time.")
    rate: float = Field(ge=0, description="Relative rate; only ratios matter.")


class ArrivalParams(_Params):
    """When cars arrive: a piecewise-linear rate, zero outside the profile."""

    profile: list[ProfilePoint] = Field(
        min_length=2, description="Rate at clock times, linear in between."
    )

    @model_validator(mode="after")
    def _check_profile(self) -> ArrivalParams:
        for index in range(1, len(self.profile)):
            here, before = self.profile[index].at, self.profile[index - 1].at
            if clock_s(here) <= clock_s(before):
                raise _fail(
                    ("profile", index, "at"), f"{here} is not after {before}", here
                )
        if not any(p.rate > 0 for p in self.profile):
            raise _fail(("profile",), "every rate is zero: no car arrives", 0)
        return self


class VisitParams(_Params):
    """How long a visit lasts: lognormal, cut below `min_h`."""

    mean_h: float = Field(gt=0, description="Mean of the lognormal, h.")
    sd_h: float = Field(gt=0, description="Standard deviation of the lognormal, h.")
    min_h: float = Field(gt=0, description="Shortest visit, h.")


class ClosingParams(_Params):
    """The closing rush: a triangle of departures around closing."""

    share: Share = Field(
        description="Share of the visitors arriving after `stayers_arrive_after` "
        "who stay until closing."
    )
    stayers_arrive_after: Clock = Field(
        description="Only visitors arriving after this may stay until closing."
    )
    from_min_before: float = Field(
        gt=0, description="The rush starts this long before closing, min."
    )
    peak_min_before: float = Field(
        description="Busiest this long before closing, min (negative: after)."
    )
    until_min_after: float = Field(
        ge=0, description="The last visitor reaches the tower this long after, min."
    )

    @model_validator(mode="after")
    def _check_window(self) -> ClosingParams:
        if not -self.until_min_after <= self.peak_min_before <= self.from_min_before:
            raise _fail(
                ("peak_min_before",),
                "the peak is outside the window from_min_before..until_min_after",
                self.peak_min_before,
            )
        return self


class ShowParams(_Params):
    """A show whose end sends a burst of visitors to the tower."""

    name: str = Field(description="Name of the show, for the summary.")
    ends: Clock = Field(description="The show ends.")
    share: Share = Field(description="Visitors present at the end who then leave.")
    delay_min: float = Field(ge=0, description="Earliest arrival at the tower, min.")
    spread_min: float = Field(gt=0, description="Width of the burst, min.")


class VehicleClass(_Params):
    """The dimensions of one class of car, each drawn uniformly in its range."""

    length_mm: MmRange = Field(description="Length range, mm.")
    width_mm: MmRange = Field(description="Width range, mm.")
    height_mm: MmRange = Field(description="Height range, mm.")
    weight_class: WeightRange = Field(description="Weight class range (0..3).")


class VehicleParams(_Params):
    """The mix of cars: standard ones and tall ones that need a tall slot."""

    tall_share: Share = Field(description="Share of tall cars.")
    standard: VehicleClass
    tall: VehicleClass

    @model_validator(mode="after")
    def _check_classes(self) -> VehicleParams:
        if self.tall.height_mm[0] <= self.standard.height_mm[1]:
            raise _fail(
                ("tall", "height_mm"),
                "tall cars must all be taller than every standard car",
                self.tall.height_mm,
            )
        return self


class EvParams(_Params):
    """Cars that want to charge."""

    share: Share = Field(description="Share of cars that want to charge.")
    energy_kwh: PositiveRange = Field(description="Energy asked for, kWh.")


class KioskParams(_Params):
    """Visitors who ask for their car at the kiosk by the zoo exit."""

    share: Share = Field(description="Share of visitors who use the kiosk.")
    lead_min: PositiveRange = Field(
        description="From the kiosk to reaching the tower, min."
    )


class Triangle(_Params):
    """A triangular distribution."""

    min: float = Field(gt=0, description="Smallest value.")
    mode: float = Field(gt=0, description="Most likely value.")
    max: float = Field(gt=0, description="Largest value.")

    @model_validator(mode="after")
    def _check_order(self) -> Triangle:
        if not self.min <= self.mode <= self.max:
            raise _fail(("mode",), "needs min <= mode <= max", self.mode)
        return self


class DriverParams(_Params):
    """The driver's own time in the bay, which blocks the bay."""

    in_s: Triangle = Field(description="Getting out after driving in, s.")
    out_s: Triangle = Field(description="Getting in and driving off, s.")


class HintParams(_Params):
    """The departure estimate a policy may use."""

    sd_min: float = Field(ge=0, description="Noise on the true departure, min.")


class WorkloadParams(_Params):
    """Every parameter of a workload; sim/workloads/README.md explains each."""

    name: str = Field(description="Name of the workload.")
    description: str = Field("", description="One line about the day.")
    day: DayParams
    fill: FillParams
    arrivals: ArrivalParams
    visit: VisitParams
    closing: ClosingParams
    shows: list[ShowParams] = Field(default_factory=list)
    vehicles: VehicleParams
    ev: EvParams
    kiosk: KioskParams
    driver: DriverParams
    hint: HintParams

    @model_validator(mode="after")
    def _check_day(self) -> WorkloadParams:
        start = clock_s(self.day.start)
        closing = clock_s(self.day.closing)
        first, last = self.arrivals.profile[0].at, self.arrivals.profile[-1].at
        if clock_s(first) < start:
            raise _fail(
                ("arrivals", "profile", 0, "at"), "before the day's start", first
            )
        if clock_s(last) + self.visit.min_h * 3600 > self.last_departure_s + start:
            raise _fail(
                ("arrivals", "profile", len(self.arrivals.profile) - 1, "at"),
                "a car arriving this late cannot stay visit.min_h before the last "
                "departure (closing.until_min_after)",
                last,
            )
        if self.closing.until_min_after >= self.day.end_after_closing_min:
            raise _fail(
                ("closing", "until_min_after"),
                "visitors would reach the tower after the day's end",
                self.closing.until_min_after,
            )
        if closing - self.closing.from_min_before * 60 < clock_s(self.day.opening):
            raise _fail(
                ("closing", "from_min_before"),
                "the closing rush would start before opening",
                self.closing.from_min_before,
            )
        for index, show in enumerate(self.shows):
            if not clock_s(self.day.opening) < clock_s(show.ends) < closing:
                raise _fail(
                    ("shows", index, "ends"),
                    "not between opening and closing",
                    show.ends,
                )
        # A kiosk request must come after the driver has left the bay; the second
        # of slack covers the trace's rounding to 0.1 s.
        earliest_kiosk_s = self.kiosk.lead_min[1] * 60 + self.driver.in_s.max + 1
        if self.visit.min_h * 3600 <= earliest_kiosk_s:
            raise _fail(
                ("visit", "min_h"),
                "shorter than the kiosk lead plus the driver's time in the bay",
                self.visit.min_h,
            )
        return self

    @property
    def opening_s(self) -> float:
        """The zoo opens, s from the day's start."""
        return clock_s(self.day.opening) - clock_s(self.day.start)

    @property
    def closing_s(self) -> float:
        """The zoo closes, s from the day's start."""
        return clock_s(self.day.closing) - clock_s(self.day.start)

    @property
    def last_departure_s(self) -> float:
        """The latest moment a visitor reaches the tower, s from the day's start."""
        return self.closing_s + self.closing.until_min_after * 60

    @property
    def end_s(self) -> float:
        """The day's end, s from its start: every car should be gone by then."""
        return self.closing_s + self.day.end_after_closing_min * 60


def load_workload(path: str | Path = DEFAULT_WORKLOAD) -> WorkloadParams:
    """Read and validate a workload parameter file.

    Raises ValidationProblems listing every problem with its file, line and field.
    """
    return TomlSource.read(path).validate(WorkloadParams)


# -- the trace ------------------------------------------------------------------


class RequestKind(str, Enum):
    """Where a visitor asks for the car."""

    AT_TOWER = "at_tower"
    """At the tower's terminal, on arrival there."""
    KIOSK = "kiosk"
    """At the kiosk by the zoo exit, minutes before reaching the tower."""


@dataclass(frozen=True, slots=True)
class Arrival:
    """A car drives into a bay at `t_s`; its driver gets out and leaves the bay
    `driver_in_s` later. `tower` and `bay` are the visitor's choice; the core may
    send the car elsewhere. `expected_departure_s` is the estimate a policy may
    know (the truth plus noise), never the truth."""

    t_s: float
    car_id: str
    tower: str
    bay: str
    length_mm: int
    width_mm: int
    height_mm: int
    weight_class: int
    ev: bool
    energy_kwh: float
    driver_in_s: float
    driver_out_s: float
    expected_departure_s: float
    size: SizeClass


@dataclass(frozen=True, slots=True)
class RetrievalRequest:
    """A visitor asks for car `car_id` at `t_s` and reaches the tower at
    `arrives_at_tower_s` (equal to `t_s` for a request made at the tower). The
    driver then needs the car's `driver_out_s` in the bay."""

    t_s: float
    car_id: str
    kind: RequestKind
    arrives_at_tower_s: float


Event = Arrival | RetrievalRequest


@dataclass(frozen=True, slots=True)
class TowerCapacity:
    """A tower's slots and how many cars the workload lets be present in it."""

    tower: str
    slots: int
    tall_slots: int
    slot_limit: int
    tall_limit: int


@dataclass(frozen=True)
class WorkloadSummary:
    """Figures of one trace, measured from its events."""

    cars: int
    cars_per_tower: dict[str, int]
    tall_cars: int
    ev_cars: int
    energy_kwh: float
    kiosk_requests: int
    arrivals_per_hour: dict[str, int]
    departures_per_hour: dict[str, int]
    peak_arrival_hour: str
    closing_hour_departures: int
    show_departures: dict[str, int]
    peak_occupancy: int
    peak_occupancy_at: str
    slots: int
    target_occupancy: float
    fill_limited_by: str

    def lines(self) -> list[str]:
        """The summary as short lines of text, for a report or a terminal."""
        share = self.peak_occupancy / self.slots if self.slots else 0.0
        shows = ", ".join(f"{k}: {v}" for k, v in self.show_departures.items())
        return [
            f"cars {self.cars} ({self.cars_per_tower})",
            f"tall {self.tall_cars}, EV {self.ev_cars} asking {self.energy_kwh:.0f} "
            f"kWh, kiosk requests {self.kiosk_requests}",
            f"peak arrival hour {self.peak_arrival_hour}",
            f"arrivals per hour {self.arrivals_per_hour}",
            f"departures per hour {self.departures_per_hour}",
            f"closing-hour departures {self.closing_hour_departures}",
            f"show-end departures {shows or 'none'}",
            f"peak occupancy {self.peak_occupancy}/{self.slots} ({share:.0%}) at "
            f"{self.peak_occupancy_at}, target {self.target_occupancy:.0%}, "
            f"limited by {self.fill_limited_by}",
        ]


@dataclass(frozen=True)
class Workload:
    """A generated day: the events in time order and what made them."""

    params: WorkloadParams
    seed: int
    site_id: str
    towers: tuple[TowerCapacity, ...]
    events: tuple[Event, ...]
    fill_limited_by: str
    """What stopped more cars from coming: "slots" or "tall slots"."""

    @property
    def opening_s(self) -> float:
        """The zoo opens, s from the day's start."""
        return self.params.opening_s

    @property
    def closing_s(self) -> float:
        """The zoo closes, s from the day's start."""
        return self.params.closing_s

    @property
    def last_departure_s(self) -> float:
        """No visitor reaches the tower later than this, s from the day's start."""
        return self.params.last_departure_s

    @property
    def end_s(self) -> float:
        """The day's end (the benchmark's horizon), s from its start."""
        return self.params.end_s

    def arrivals(self) -> list[Arrival]:
        """The arrivals, in time order."""
        return [e for e in self.events if isinstance(e, Arrival)]

    def requests(self) -> list[RetrievalRequest]:
        """The retrieval requests, in time order of the request."""
        return [e for e in self.events if isinstance(e, RetrievalRequest)]

    def clock(self, t_s: float) -> str:
        """The clock time `HH:MM` of a trace time."""
        minutes = int((clock_s(self.params.day.start) + t_s) // 60)
        return f"{minutes // 60 % 24:02d}:{minutes % 60:02d}"

    def occupancy(self) -> list[tuple[float, int]]:
        """Cars present after each change, as (t_s, count); a car is present from
        its arrival until its visitor reaches the tower, departures first at a
        tie."""
        arrivals = [(a.t_s, 1) for a in self.arrivals()]
        leaves = [(r.arrives_at_tower_s, -1) for r in self.requests()]
        points, present = [], 0
        for t_s, step in sorted(arrivals + leaves):
            present += step
            points.append((t_s, present))
        return points

    def summary(self) -> WorkloadSummary:
        """Counts, hourly profiles, the peaks, the closing rush and show surges."""
        arrivals, requests = self.arrivals(), self.requests()
        p = self.params

        def per_hour(times: Sequence[float]) -> dict[str, int]:
            counts = Counter(int(t // 3600) for t in times)
            return {self.clock(h * 3600.0): counts[h] for h in sorted(counts)}

        departures = [r.arrives_at_tower_s for r in requests]
        hourly = per_hour([a.t_s for a in arrivals])
        peak_hour = max(hourly, key=lambda h: hourly[h]) if hourly else "-"
        closing_from = p.closing_s - 3600
        shows = {}
        for show in p.shows:
            ends = clock_s(show.ends) - clock_s(p.day.start)
            lo = ends + show.delay_min * 60
            hi = lo + show.spread_min * 60
            shows[show.name] = sum(lo <= t <= hi for t in departures)
        occupancy = self.occupancy()
        peak_t, peak = max(occupancy, key=lambda x: (x[1], -x[0]), default=(0.0, 0))

        return WorkloadSummary(
            cars=len(arrivals),
            cars_per_tower=dict(sorted(Counter(a.tower for a in arrivals).items())),
            tall_cars=sum(a.size is SizeClass.TALL for a in arrivals),
            ev_cars=sum(a.ev for a in arrivals),
            energy_kwh=round(sum(a.energy_kwh for a in arrivals), 1),
            kiosk_requests=sum(r.kind is RequestKind.KIOSK for r in requests),
            arrivals_per_hour=hourly,
            departures_per_hour=per_hour(departures),
            peak_arrival_hour=peak_hour,
            closing_hour_departures=sum(t >= closing_from for t in departures),
            show_departures=shows,
            peak_occupancy=peak,
            peak_occupancy_at=self.clock(peak_t),
            slots=sum(t.slots for t in self.towers),
            target_occupancy=p.fill.target_occupancy,
            fill_limited_by=self.fill_limited_by,
        )


# -- sampling -------------------------------------------------------------------


class _Profile:
    """Inverse-CDF sampling of a piecewise-linear arrival rate."""

    def __init__(self, points: list[tuple[float, float]]) -> None:
        self.points = points
        self.cumulative = [0.0]
        for (t0, r0), (t1, r1) in pairwise(points):
            self.cumulative.append(self.cumulative[-1] + (r0 + r1) / 2 * (t1 - t0))

    def sample(self, u: float) -> float:
        area = u * self.cumulative[-1]
        index = min(bisect_right(self.cumulative, area), len(self.points) - 1)
        (t0, r0), (t1, r1) = self.points[index - 1], self.points[index]
        a = area - self.cumulative[index - 1]
        slope = (r1 - r0) / (t1 - t0)
        # Solve r0*x + slope*x^2/2 = a for x; this form is stable for slope 0
        # and for r0 0.
        root = math.sqrt(max(r0 * r0 + 2 * slope * a, 0.0))
        x = 2 * a / (r0 + root) if r0 + root > 0 else 0.0
        return t0 + min(max(x, 0.0), t1 - t0)


def _triangle(u: float, low: float, mode: float, high: float) -> float:
    """Inverse CDF of the triangular distribution."""
    if high <= low:
        return low
    split = (mode - low) / (high - low)
    if u < split:
        return low + math.sqrt(u * (high - low) * (mode - low))
    return high - math.sqrt((1 - u) * (high - low) * (high - mode))


def _uniform_int(u: float, bounds: tuple[int, int]) -> int:
    low, high = bounds
    return min(low + int(u * (high - low + 1)), high)


@dataclass(slots=True)
class _Visitor:
    arrive_s: float
    leave_s: float
    kiosk_s: float | None
    tall: bool
    dims: tuple[int, int, int, int]
    ev: bool
    energy_kwh: float
    driver_in_s: float
    driver_out_s: float
    hint_s: float
    u_tower: float
    u_bay: float


class _Sampler:
    """Draws visitors, each from its own fixed block of uniform numbers."""

    _DRAWS = 18  # uniforms per visitor before the two per show

    def __init__(self, params: WorkloadParams, seed: int) -> None:
        p = params
        start = clock_s(p.day.start)
        self.params = p
        self.rng = random.Random(seed)
        self.profile = _Profile(
            [(clock_s(q.at) - start, q.rate) for q in p.arrivals.profile]
        )
        sigma2 = math.log(1 + (p.visit.sd_h / p.visit.mean_h) ** 2)
        self.mu, self.sigma = math.log(p.visit.mean_h * 3600) - sigma2 / 2, sigma2**0.5
        self.min_visit_s = p.visit.min_h * 3600
        below_min = (math.log(self.min_visit_s) - self.mu) / self.sigma
        self.cut = _NORMAL.cdf(below_min)
        closing = p.closing_s
        self.rush = (
            closing - p.closing.from_min_before * 60,
            closing - p.closing.peak_min_before * 60,
            p.last_departure_s,
        )
        # The latest departure, on the trace's 0.1 s grid (rounded down).
        self.last_s = math.floor(p.last_departure_s * 10) / 10
        self.stayers_from_s = clock_s(p.closing.stayers_arrive_after) - start
        self.shows = sorted(
            (
                clock_s(s.ends) - start + s.delay_min * 60,
                s.spread_min * 60,
                s.share,
                clock_s(s.ends) - start,
            )
            for s in p.shows
        )
        self.visitors: list[_Visitor] = []

    def pool(self, size: int) -> list[_Visitor]:
        """The first `size` visitors; drawing more never changes earlier ones."""
        while len(self.visitors) < size:
            self.visitors.append(self._visitor())
        return self.visitors

    def _visitor(self) -> _Visitor:
        p = self.params
        draw = self.rng.random
        (
            u_arrive, u_visit, u_stay, u_rush, u_tall, u_len, u_wid, u_hei, u_wgt,
            u_ev, u_kwh, u_kiosk, u_lead, u_in, u_out, u_hint, u_tower, u_bay,
        ) = (draw() for _ in range(self._DRAWS))  # fmt: skip
        u_shows = [draw() for _ in range(2 * len(self.shows))]

        arrive = self.profile.sample(u_arrive)
        quantile = min(self.cut + u_visit * (1 - self.cut), 1 - _EPS)
        leave = arrive + math.exp(self.mu + self.sigma * _NORMAL.inv_cdf(quantile))
        stays = arrive >= self.stayers_from_s and u_stay < p.closing.share
        if stays or leave > p.closing_s:
            leave = _triangle(u_rush, *self.rush)
        else:
            for index, (first_s, spread_s, share, ends) in enumerate(self.shows):
                saw_it = arrive + self.min_visit_s <= ends
                if saw_it and leave > first_s and u_shows[2 * index] < share:
                    leave = first_s + u_shows[2 * index + 1] * spread_s
                    break
        leave = max(leave, arrive + self.min_visit_s)
        arrive, leave = round(arrive, 1), min(round(leave, 1), self.last_s)

        tall = u_tall < p.vehicles.tall_share
        cls = p.vehicles.tall if tall else p.vehicles.standard
        dims = (
            _uniform_int(u_len, cls.length_mm),
            _uniform_int(u_wid, cls.width_mm),
            _uniform_int(u_hei, cls.height_mm),
            _uniform_int(u_wgt, cls.weight_class),
        )
        ev = u_ev < p.ev.share
        low_kwh, high_kwh = p.ev.energy_kwh
        energy = round(low_kwh + u_kwh * (high_kwh - low_kwh), 1) if ev else 0.0
        kiosk_s = None
        if u_kiosk < p.kiosk.share:
            low_min, high_min = p.kiosk.lead_min
            lead_s = (low_min + u_lead * (high_min - low_min)) * 60
            kiosk_s = round(leave - lead_s, 1)
        d_in, d_out = p.driver.in_s, p.driver.out_s
        noise_s = p.hint.sd_min * 60 * _NORMAL.inv_cdf(min(max(u_hint, _EPS), 1 - _EPS))
        hint = min(max(round(leave + noise_s, 1), arrive), self.last_s)

        return _Visitor(
            arrive_s=arrive,
            leave_s=leave,
            kiosk_s=kiosk_s,
            tall=tall,
            dims=dims,
            ev=ev,
            energy_kwh=energy,
            driver_in_s=round(_triangle(u_in, d_in.min, d_in.mode, d_in.max)),
            driver_out_s=round(_triangle(u_out, d_out.min, d_out.mode, d_out.max)),
            hint_s=hint,
            u_tower=u_tower,
            u_bay=u_bay,
        )


# -- filling the site -----------------------------------------------------------


def _slot_counts(tower: TowerConfig) -> tuple[int, int]:
    """Slots in service and tall slots of a tower, zones applied as the core
    applies them."""
    slots = [slot for slot in build_slots(tower) if not slot.disabled]
    return len(slots), sum(slot.size is SizeClass.TALL for slot in slots)


def _capacities(site: SiteConfig, target: float) -> tuple[TowerCapacity, ...]:
    out = []
    for tower in site.towers:
        slots, tall = _slot_counts(tower)
        # The epsilon keeps 0.9 * 100 at 90 despite binary floating point.
        out.append(
            TowerCapacity(
                tower=tower.id,
                slots=slots,
                tall_slots=tall,
                slot_limit=math.floor(target * slots + 1e-9),
                tall_limit=math.floor(target * tall + 1e-9),
            )
        )
    return tuple(out)


def _place(
    visitors: list[_Visitor], order: list[int], n: int, towers: Sequence[TowerCapacity]
) -> tuple[dict[int, int] | None, str]:
    """Place the first n visitors, in arrival order, each in the least-loaded
    tower with room; the tower index of each, or None and what ran out."""
    present = [0] * len(towers)
    tall_present = [0] * len(towers)
    leaving: list[tuple[float, int, bool]] = []
    placed: dict[int, int] = {}
    for index in order:
        if index >= n:
            continue
        v = visitors[index]
        while leaving and leaving[0][0] <= v.arrive_s:
            _, t, tall = heapq.heappop(leaving)
            present[t] -= 1
            tall_present[t] -= tall

        best, ties = math.inf, []
        for t, cap in enumerate(towers):
            if present[t] >= cap.slot_limit:
                continue
            if v.tall and tall_present[t] >= cap.tall_limit:
                continue
            load = present[t] / cap.slots
            if load < best:
                best, ties = load, [t]
            elif load == best:
                ties.append(t)
        if not ties:
            full = all(present[t] >= cap.slot_limit for t, cap in enumerate(towers))
            return None, "slots" if full else "tall slots"

        t = ties[int(v.u_tower * len(ties))]
        present[t] += 1
        tall_present[t] += v.tall
        heapq.heappush(leaving, (v.leave_s, t, v.tall))
        placed[index] = t
    return placed, ""


def _check_site(
    params: WorkloadParams, site: SiteConfig, towers: Sequence[TowerCapacity]
) -> None:
    """Raise WorkloadError when the cars the parameters describe cannot park."""
    if not any(t.slot_limit for t in towers):
        raise WorkloadError(
            f"site {site.id}: fill.target_occupancy "
            f"{params.fill.target_occupancy} of its slots leaves room for no car"
        )
    if params.vehicles.tall_share > 0 and not any(t.tall_limit for t in towers):
        raise WorkloadError(
            f"site {site.id}: vehicles.tall_share is "
            f"{params.vehicles.tall_share} but no tower has room for a tall car"
        )
    classes = [(SizeClass.STANDARD, params.vehicles.standard)]
    if params.vehicles.tall_share > 0:
        classes.append((SizeClass.TALL, params.vehicles.tall))
    for size, cls in classes:
        limits = site.sizes.get(size)
        if limits is None:
            raise WorkloadError(f"site {site.id} has no size limits for {size.value}")
        too_big = [
            name
            for name, high, limit in (
                ("length_mm", cls.length_mm[1], limits.max_length_mm),
                ("width_mm", cls.width_mm[1], limits.max_width_mm),
                ("height_mm", cls.height_mm[1], limits.max_height_mm),
                ("weight_class", cls.weight_class[1], limits.max_weight_class),
            )
            if high > limit
        ]
        if too_big:
            raise WorkloadError(
                f"site {site.id}: vehicles.{size.value} {', '.join(too_big)} "
                f"exceed the site's {size.value} size limits"
            )
    standard = site.sizes.get(SizeClass.STANDARD)
    if (
        params.vehicles.tall_share > 0
        and standard is not None
        and params.vehicles.tall.height_mm[0] <= standard.max_height_mm
    ):
        raise WorkloadError(
            f"site {site.id}: some tall cars ({params.vehicles.tall.height_mm[0]} mm) "
            f"fit a standard slot (<= {standard.max_height_mm} mm)"
        )


def generate(params: WorkloadParams, site: SiteConfig, seed: int) -> Workload:
    """The zoo day for a site: a deterministic trace for a seed.

    The number of cars follows from the site: as many as fill it to
    `fill.target_occupancy` at the busiest moment (see the module docstring).
    Raises WorkloadError when the parameters cannot fit the site at all.
    """
    towers = _capacities(site, params.fill.target_occupancy)
    _check_site(params, site, towers)
    sampler = _Sampler(params, seed)

    # Grow the pool until it overfills the site, then bisect for the largest
    # prefix that still fits. A failure at n does not promise one at n + 1 (a
    # later car can change the towers chosen), but the result always fits.
    size = 4 * sum(t.slot_limit for t in towers) + 16
    while True:
        pool = sampler.pool(size)
        order = sorted(range(size), key=lambda i: (pool[i].arrive_s, i))
        placed, limited_by = _place(pool, order, size, towers)
        if placed is None:
            break
        size *= 2
    fits, overfills, chosen = 0, size, {}
    while overfills - fits > 1:
        middle = (fits + overfills) // 2
        trial, reason = _place(pool, order, middle, towers)
        if trial is None:
            overfills, limited_by = middle, reason
        else:
            fits, chosen = middle, trial

    return Workload(
        params=params,
        seed=seed,
        site_id=site.id,
        towers=towers,
        events=_events(site, pool, order, chosen),
        fill_limited_by=limited_by,
    )


def _events(
    site: SiteConfig,
    pool: list[_Visitor],
    order: list[int],
    placed: dict[int, int],
) -> tuple[Event, ...]:
    events: list[Event] = []
    for number, index in enumerate((i for i in order if i in placed), start=1):
        v = pool[index]
        tower = site.towers[placed[index]]
        car_id = f"car-{number:05d}"
        length, width, height, weight = v.dims
        events.append(
            Arrival(
                t_s=v.arrive_s,
                car_id=car_id,
                tower=tower.id,
                bay=tower.bays[int(v.u_bay * len(tower.bays))].id,
                length_mm=length,
                width_mm=width,
                height_mm=height,
                weight_class=weight,
                ev=v.ev,
                energy_kwh=v.energy_kwh,
                driver_in_s=v.driver_in_s,
                driver_out_s=v.driver_out_s,
                expected_departure_s=v.hint_s,
                size=SizeClass.TALL if v.tall else SizeClass.STANDARD,
            )
        )
        kiosk = v.kiosk_s is not None
        events.append(
            RetrievalRequest(
                t_s=v.kiosk_s if v.kiosk_s is not None else v.leave_s,
                car_id=car_id,
                kind=RequestKind.KIOSK if kiosk else RequestKind.AT_TOWER,
                arrives_at_tower_s=v.leave_s,
            )
        )
    events.sort(key=lambda e: (e.t_s, isinstance(e, RetrievalRequest), e.car_id))
    return tuple(events)


# -- larger sites ---------------------------------------------------------------


def scaled_site(
    base: SiteConfig, *, towers: int | None = None, levels: int | None = None
) -> SiteConfig:
    """A larger (or smaller) site built from `base`, for the benchmark's scale runs.

    `towers`: how many towers; the copies cycle through the base's towers, are
    named `tower-01`, `tower-02`, ... and get `port_base` values 100 apart from
    the first tower's, so no two towers share a port (per-device overrides are
    kept as they are). `levels`: every tower gets this many storage levels, and
    each zone keeps the share of levels it covers: level l of the new tower is in
    a zone when level ceil(l * L_old / L_new) of the old one is (the reference
    tall zone, levels 7-8 of 8, becomes levels 16-20 of 20).

    The towers are validated again, so a bad figure raises pydantic's
    ValidationError.
    """
    templates = base.towers
    count = len(templates) if towers is None else towers
    if count < 1:
        raise ValueError(f"a site needs at least one tower, not {count}")
    first_port = templates[0].plc.port_base
    built = []
    for index in range(count):
        template = templates[index % len(templates)]
        data = template.model_dump()
        if levels is not None:
            data["levels"] = levels
            data["zones"] = [
                _rescaled_zone(zone, template.levels, levels) for zone in data["zones"]
            ]
        if towers is not None:
            data["id"] = f"tower-{index + 1:02d}"
            data["plc"]["port_base"] = first_port + 100 * index
        built.append(data)
    site = SiteConfig.model_validate({**base.model_dump(), "towers": built})
    return site.model_copy(update={"source": base.source})


def _rescaled_zone(zone: dict[str, Any], old: int, new: int) -> dict[str, Any]:
    if zone["levels"] is None:
        return zone
    covered = set(zone["levels"])
    kept = [lvl for lvl in range(1, new + 1) if -(-lvl * old // new) in covered]
    return {**zone, "levels": kept}
