"""Properties of the plant under random command streams.

Whatever the controller writes and whatever the people and the operators do,
the plant never puts two cars in one place, never loses a car, and never moves
a car between a bay and the ground shuttle with the bay open or occupied.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from plantkit import TOWER, small_site

from sim.plant import Car, Plant, PlantError

LEVELS, COLUMNS = 2, 2
DEVICES = ["lift", "shuttle-0", "shuttle-1", "shuttle-2", "bay-1", "bay-2"]
CODES = {
    "lift": ["move"],
    "shuttle": ["move", "move", "pick", "place"],
    "bay": ["check", "release"],
}

commands = st.tuples(
    st.just("cmd"),
    st.sampled_from(DEVICES),
    st.integers(0, 3),  # index into the kind's codes (3 may wrap to 'none')
    st.sampled_from([0, 1, 2, 0, 1, 2, -1, 3]),
    st.sampled_from(["left", "right", "lift", "left", "right", "lift", "none"]),
    st.booleans(),  # reset a fault in the same write, as a controller would
)
# A shuttle lines up a transfer that the public status says is possible (a pick
# when empty, a place when loaded; the bay checked or the lift brought to its
# level first), waits for the lining-up moves and starts the transfer, waiting
# for it or not. Raw commands alone rarely line up a transfer.
jobs = st.tuples(
    st.just("job"), st.integers(0, LEVELS), st.integers(0, 11), st.booleans()
)

# Weighted by repetition: commands and time often, e-stops and manual rarely, so
# that most streams still get cars moving between places.
actions = st.one_of(
    *[commands] * 6,
    *[jobs] * 3,
    *[st.tuples(st.just("next"))] * 5,
    st.tuples(st.just("advance"), st.floats(0.0, 30.0)),
    st.tuples(st.just("arrive"), st.sampled_from(["bay-1", "bay-2"])),
    st.tuples(st.just("collect"), st.sampled_from(["bay-1", "bay-2"])),
    *[st.tuples(st.just("reset"), st.sampled_from(DEVICES))] * 2,
    st.tuples(st.just("reset_all")),
    *[st.tuples(st.just("heartbeat"), st.sampled_from(DEVICES))] * 2,
    st.tuples(st.just("repeat"), st.sampled_from(DEVICES)),
    st.tuples(st.just("rare"), st.sampled_from(["estop", "release"])),
    st.tuples(st.just("manual"), st.sampled_from(DEVICES), st.booleans()),
    st.tuples(st.just("inject"), st.sampled_from(DEVICES)),
)


class World:
    """The plant plus what the test knows must be in it."""

    def __init__(self, watch: bool) -> None:
        self.plant = Plant(
            small_site(levels=LEVELS, columns=COLUMNS),
            heartbeat_timeout_s=3.0,
            watch_heartbeat=watch,
        )
        self.expected: set[str] = set()
        self.seq = dict.fromkeys(DEVICES, 0)
        self.heartbeat = dict.fromkeys(DEVICES, 0)
        self.arrivals = 0
        for place in ("01-01-L", "02-02-R", "shuttle-1"):
            car = Car(f"seed-{place}", driver_time_s=5.0)
            self.plant.seed_car(TOWER, place, car)
            self.expected.add(car.id)

    def apply(self, action: tuple[Any, ...]) -> None:
        plant = self.plant
        match action:
            case ("cmd", device, code_index, target, side, reset):
                kind = device.split("-")[0]
                codes = [*CODES[kind], "none"]
                self.seq[device] = self.seq[device] % 65535 + 1
                points: dict[str, Any] = {"cmd_seq": self.seq[device]}
                if reset:
                    points["reset"] = 1
                if kind != "bay":
                    points["cmd_target"] = target
                if kind == "shuttle":
                    points["cmd_side"] = side
                plant.write(TOWER, device, points)
                code = codes[code_index % len(codes)]
                plant.write(TOWER, device, {"cmd_code": code})
            case ("job", level, choice, wait):
                self.job(level, choice, wait)
            case ("repeat", device):
                plant.write(TOWER, device, {"cmd_code": "none"})
                plant.write(TOWER, device, {"cmd_code": "move"})
            case ("advance", dt):
                plant.advance(plant.now + dt)
            case ("next",):
                due = plant.next_event_time()
                if due is not None:
                    plant.advance(due)
            case ("arrive", bay):
                self.arrivals += 1
                car = Car(f"car-{self.arrivals}", driver_time_s=4.0)
                try:
                    plant.car_arrives(TOWER, bay, car)
                except PlantError:
                    return
                self.expected.add(car.id)
            case ("collect", bay):
                try:
                    plant.driver_collects(TOWER, bay)
                except PlantError:
                    return
            case ("reset", device):
                plant.write(TOWER, device, {"reset": 1})
            case ("heartbeat", device):
                self.heartbeat[device] += 1
                plant.write(TOWER, device, {"heartbeat_ctl": self.heartbeat[device]})
            case ("reset_all",):
                for device in DEVICES:
                    plant.write(TOWER, device, {"reset": 1})
            case ("rare", "estop"):
                plant.press_estop(TOWER)
            case ("rare", "release"):
                plant.release_estop(TOWER)
            case ("manual", device, on):
                plant.set_manual(TOWER, device, on)
            case ("inject", device):
                plant.inject_fault(TOWER, device, "drive_fault")

    def send(self, device: str, points: dict[str, Any]) -> int:
        self.seq[device] = self.seq[device] % 65535 + 1
        self.plant.write(TOWER, device, {**points, "cmd_seq": self.seq[device]})
        self.plant.write(TOWER, device, {"cmd_code": points["cmd_code"]})
        return self.seq[device]

    def wait(self, device: str, seq: int) -> None:
        plant = self.plant
        for _ in range(20):
            if plant.status(TOWER, device)["seq_done"] == seq:
                return
            self.apply(("heartbeat", device))
            due = plant.next_event_time()
            if due is None:
                return
            plant.advance(due)

    def job(self, level: int, choice: int, wait: bool) -> None:
        plant = self.plant
        shuttle = f"shuttle-{level}"
        loaded = plant.status(TOWER, shuttle)["flags"]["loaded"]
        occupied = {place for _, place in plant.cars().values()}
        options = []
        for column in range(COLUMNS + 1):
            for side in ("left", "right") if column else ("lift",):
                if side == "lift":
                    place = "lift"
                elif level:
                    place = f"{level:02d}-{column:02d}-{side[0].upper()}"
                elif column == 1:
                    place = "bay-1" if side == "left" else "bay-2"
                else:
                    continue
                if (place in occupied) != loaded:
                    options.append((column, side, place))
        if not options:
            return
        column, side, place = options[choice % len(options)]

        for device in (shuttle, "lift", place):
            if device in DEVICES:
                plant.write(TOWER, device, {"reset": 1})
        if place.startswith("bay"):
            self.wait(place, self.send(place, {"cmd_code": "check"}))
        if place == "lift":
            lift = self.send("lift", {"cmd_target": level, "cmd_code": "move"})
            self.wait("lift", lift)
        self.wait(
            shuttle, self.send(shuttle, {"cmd_target": column, "cmd_code": "move"})
        )
        code = "place" if loaded else "pick"
        transfer = self.send(shuttle, {"cmd_side": side, "cmd_code": code})
        if wait:
            self.wait(shuttle, transfer)

    def check(self, before: dict[str, tuple[str, str]]) -> None:
        plant = self.plant
        for car_id, _, _, _ in plant.delivered:
            self.expected.discard(car_id)
        cars = plant.cars()

        assert set(cars) == self.expected, "a car appeared or was lost"
        places = [place for _, place in cars.values()]
        assert len(places) == len(set(places)), "two cars in one place"
        for car_id in self.expected:
            assert plant.where(car_id) == cars[car_id][1]
        for level in range(1, LEVELS + 1):
            sensors = plant.status(TOWER, f"shuttle-{level}")["slot_sensors"]
            lit = {i for i, on in enumerate(sensors) if on}
            slots = {
                (int(s[3:5]) - 1) * 2 + (0 if s.endswith("L") else 1)
                for s in plant.slot_contents(TOWER)
                if int(s[:2]) == level
            }
            assert lit == slots

        for car_id, (_, place) in cars.items():
            old = before.get(car_id, (TOWER, place))[1]
            if {old, place} & {"bay-1", "bay-2"} and "shuttle-0" in {old, place}:
                bay = place if place.startswith("bay") else old
                flags = plant.status(TOWER, bay)["flags"]
                assert flags["door_closed"], f"transfer at {bay} with door open"
                assert not flags["person_present"], f"transfer at {bay} with person"
        for device in DEVICES:
            status = plant.status(TOWER, device)
            assert status["seq_accepted"] >= 0
            if status["state"] == "busy":
                assert (TOWER, device, status["seq_accepted"]) in plant.motions


@settings(max_examples=400, deadline=None)
@given(st.lists(actions, min_size=40, max_size=200), st.booleans())
def test_random_commands_never_lose_or_stack_cars(actions, watch) -> None:
    """Random streams of commands, arrivals, collections, e-stops and faults
    keep one car per place and every car accounted for."""
    world = World(watch)
    for action in actions:
        before = world.plant.cars()
        world.apply(action)
        world.check(before)

    assert max(world.plant.motions.values(), default=1) == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(actions, max_size=80))
def test_event_times_never_go_back(actions) -> None:
    """next_event_time is never in the past, and advancing to it is allowed."""
    world = World(watch=True)
    for action in actions:
        world.apply(action)
        due = world.plant.next_event_time()

        assert due is None or due >= world.plant.now
