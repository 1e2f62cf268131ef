"""The plant model: physics, the handshake, transfers, interlocks, safety."""

from __future__ import annotations

import itertools
import math

import pytest
from plantkit import TOWER, Operator, small_site

from sim.plant import Car, Plant, PlantError, move_progress, move_time_s


def store(op: Operator, car: Car, bay: str, level: int, column: int, side: str):
    """The store job of docs/architecture.md, one command at a time."""
    bay_column, bay_side = 1, "left" if bay == "bay-1" else "right"
    plant = op.plant
    plant.car_arrives(TOWER, bay, car)
    plant.advance(plant.now + car.driver_time_s)
    steps = [
        ("bay", bay, "check", 0, "none"),
        ("s0", "shuttle-0", "move", bay_column, "none"),
        ("s0", "shuttle-0", "pick", 0, bay_side),
        ("s0", "shuttle-0", "move", 0, "none"),
        ("lift", "lift", "move", 0, "none"),
        ("s0", "shuttle-0", "place", 0, "lift"),
        ("lift", "lift", "move", level, "none"),
        ("sk", f"shuttle-{level}", "pick", 0, "lift"),
        ("sk", f"shuttle-{level}", "move", column, "none"),
        ("sk", f"shuttle-{level}", "place", 0, side),
    ]
    for _, device, code, target, step_side in steps:
        status = op.run(device, code, target, step_side)
        assert status["result"] == "done", (device, code, status, plant.faults)


# -- physics ------------------------------------------------------------------


def test_move_time_long_move_reaches_top_speed() -> None:
    """A move longer than v*v/a cruises: t = d/v + v/a."""
    assert move_time_s(17.6, 1.0, 0.5) == pytest.approx(17.6 / 1.0 + 1.0 / 0.5)


def test_move_time_short_move_is_triangular() -> None:
    """A move shorter than v*v/a never reaches top speed: t = 2*sqrt(d/a)."""
    assert move_time_s(2.6, 1.5, 0.5) == pytest.approx(2 * math.sqrt(2.6 / 0.5))


def test_move_progress_is_continuous_and_monotonic() -> None:
    """Position on the trapezoid never jumps nor goes back, and ends at d."""
    for distance in (1.0, 4.5, 17.6):
        total = move_time_s(distance, 1.5, 0.5)
        samples = [
            move_progress(total * i / 200, distance, 1.5, 0.5) for i in range(201)
        ]
        steps = [b - a for a, b in itertools.pairwise(samples)]

        assert min(steps) >= 0
        assert max(steps) < distance / 20
        assert samples[-1] == pytest.approx(distance)
        assert move_progress(total / 2, distance, 1.5, 0.5) == pytest.approx(
            distance / 2
        )


def test_lift_move_takes_trapezoid_time(plant: Plant, op: Operator) -> None:
    """A lift move of one level (long: 2.2 m >= v*v/a = 2 m) ends at d/v + v/a."""
    seq = op.send("lift", "move", 1)

    assert plant.status(TOWER, "lift")["state"] == "busy"
    assert plant.next_event_time() == pytest.approx(2.2 / 1.0 + 1.0 / 0.5)
    plant.advance(4.19)
    assert plant.status(TOWER, "lift")["flags"]["moving"] is True
    plant.advance(4.2)
    status = plant.status(TOWER, "lift")
    assert (status["seq_done"], status["result"], status["state"]) == (
        seq,
        "done",
        "idle",
    )
    assert (status["level"], status["position_mm"]) == (1, 2200)


def test_shuttle_short_move_takes_triangular_time(plant: Plant, op: Operator) -> None:
    """A shuttle move of one column (2.6 m < v*v/a = 4.5 m) takes 2*sqrt(d/a)."""
    op.send("shuttle-3", "move", 1)
    expected = 2 * math.sqrt(2.6 / 0.5)

    assert plant.next_event_time() == pytest.approx(expected)
    plant.advance(expected / 2)
    assert plant.status(TOWER, "shuttle-3")["position_mm"] == 1300
    plant.advance(expected)
    assert plant.status(TOWER, "shuttle-3")["column"] == 1


def test_full_store_moves_car_from_bay_to_top_slot(plant: Plant, op: Operator) -> None:
    """The store sequence by hand puts the car in 08-06-R; the sensor shows it."""
    car = Car("car-1", driver_time_s=30.0)
    store(op, car, "bay-2", 8, 6, "right")

    assert plant.where("car-1") == "08-06-R"
    assert plant.slot_contents(TOWER) == {"08-06-R": "car-1"}
    sensors = plant.status(TOWER, "shuttle-8")["slot_sensors"]
    assert [i for i, on in enumerate(sensors) if on] == [(6 - 1) * 2 + 1]
    assert not any(plant.status(TOWER, "shuttle-0")["slot_sensors"])
    # check 10, move 4.56, pick 12, move 4.56, lift 0 s, place 12, lift 19.6,
    # pick 12, shuttle 6 columns 13.4, place 12: one job alone, no overlap.
    assert plant.now - 30.0 == pytest.approx(100.13, abs=0.01)
    assert max(plant.motions.values()) == 1


def test_retrieve_and_collect_delivers_the_car(plant: Plant, op: Operator) -> None:
    """The mirror job brings the car back, release opens the door, the driver
    leaves with it and it shows in delivered."""
    store(op, Car("car-1", driver_time_s=5.0), "bay-1", 2, 1, "left")
    for device, code, target, side in [
        ("shuttle-2", "move", 1, "none"),
        ("shuttle-2", "pick", 0, "left"),
        ("shuttle-2", "move", 0, "none"),
        ("lift", "move", 2, "none"),
        ("shuttle-2", "place", 0, "lift"),
        ("lift", "move", 0, "none"),
        ("shuttle-0", "pick", 0, "lift"),
        ("shuttle-0", "move", 1, "none"),
        ("shuttle-0", "place", 0, "left"),
        ("bay-1", "release", 0, "none"),
    ]:
        assert op.run(device, code, target, side)["result"] == "done"
    assert plant.status(TOWER, "bay-1")["flags"]["door_closed"] is False

    car = plant.driver_collects(TOWER, "bay-1")
    plant.advance(plant.now + 5.0)

    assert car.id == "car-1"
    assert plant.where("car-1") is None
    assert plant.delivered == [("car-1", TOWER, "bay-1", plant.now)]
    assert plant.status(TOWER, "bay-1")["flags"]["vehicle_present"] is False


def test_bay_reports_the_car_and_the_driver(plant: Plant) -> None:
    """A car drives in: vehicle present with its size, the driver inside for
    driver_time_s, the door open."""
    plant.car_arrives(TOWER, "bay-1", Car("c", height_mm=1900, driver_time_s=20))

    status = plant.status(TOWER, "bay-1")
    assert status["flags"] == {
        "vehicle_present": True,
        "person_present": True,
        "door_closed": False,
        "estop": False,
        "door_open": True,
        "vehicle_in_position": True,
    }
    assert status["vehicle_height_mm"] == 0  # not measured yet
    assert plant.next_event_time() == 20
    plant.advance(20)
    assert plant.status(TOWER, "bay-1")["flags"]["person_present"] is False


def test_bay_check_measures_the_car(plant: Plant, op: Operator) -> None:
    """Dimensions show once a check has ended done, and read 0 again once the
    door opens."""
    plant.car_arrives(TOWER, "bay-1", Car("c", height_mm=1900, driver_time_s=1))
    plant.advance(1)

    status = op.run("bay-1", "check")

    assert status["flags"]["door_closed"] is True
    assert (status["vehicle_height_mm"], status["vehicle_length_mm"]) == (1900, 4500)
    op.run("bay-1", "release")
    assert plant.status(TOWER, "bay-1")["vehicle_height_mm"] == 0


def test_check_of_an_empty_bay_closes_the_door(plant: Plant, op: Operator) -> None:
    """A retrieve closes the empty bay first: the check ends done, measuring 0."""
    status = op.run("bay-2", "check")

    assert (status["result"], status["flags"]["door_closed"]) == ("done", True)
    assert status["vehicle_length_mm"] == 0


# -- the handshake --------------------------------------------------------------


def test_same_seq_never_runs_twice(plant: Plant, op: Operator) -> None:
    """Rewriting the sequence already accepted (target changed) runs nothing."""
    seq = op.run("lift", "move", 3)["seq_done"]
    plant.write(TOWER, "lift", {"cmd_target": 5, "cmd_seq": seq})
    plant.write(TOWER, "lift", {"cmd_code": "move"})

    assert plant.status(TOWER, "lift")["state"] == "idle"
    assert plant.status(TOWER, "lift")["level"] == 3
    assert plant.motions[(TOWER, "lift", seq)] == 1


def test_command_while_busy_is_not_accepted(plant: Plant, op: Operator) -> None:
    """A new sequence written while busy leaves seq_accepted as it was."""
    first = op.send("lift", "move", 8)
    op.send("lift", "move", 1)

    assert plant.status(TOWER, "lift")["seq_accepted"] == first
    assert op.wait("lift", first)["level"] == 8


def test_code_none_latches_nothing(plant: Plant) -> None:
    """Writing target and seq without a command code starts nothing."""
    plant.write(TOWER, "lift", {"cmd_target": 2, "cmd_seq": 7, "cmd_code": "none"})

    assert plant.status(TOWER, "lift")["seq_accepted"] == 0
    assert plant.next_event_time() is None


def test_unknown_point_is_a_plant_error(plant: Plant) -> None:
    """A bay has no cmd_target: writing one is misuse of the sim API."""
    with pytest.raises(PlantError, match="cmd_target"):
        plant.write(TOWER, "bay-1", {"cmd_target": 1})


# -- interlocks -----------------------------------------------------------------


def _refused(op: Operator, device: str, code: str, target=0, side="none") -> str:
    status = op.run(device, code, target, side)
    assert (status["result"], status["state"]) == ("fault", "fault")
    op.reset(device)
    assert op.plant.status(TOWER, device)["state"] == "idle"
    return status["fault_code"]


def test_pick_from_empty_slot_is_refused(op: Operator) -> None:
    """No car at 01-01-L: interlock."""
    op.run("shuttle-1", "move", 1)

    assert _refused(op, "shuttle-1", "pick", side="left") == "interlock"


def test_place_from_empty_shuttle_is_refused(op: Operator) -> None:
    """The shuttle carries nothing: interlock."""
    op.run("shuttle-1", "move", 1)

    assert _refused(op, "shuttle-1", "place", side="right") == "interlock"


def test_pick_onto_loaded_shuttle_and_place_into_occupied_slot_are_refused(
    plant: Plant, op: Operator
) -> None:
    """A loaded shuttle takes no second car and puts none on a full slot."""
    plant.seed_car(TOWER, "shuttle-2", Car("a"))
    plant.seed_car(TOWER, "02-01-L", Car("b"))
    op.run("shuttle-2", "move", 1)

    assert _refused(op, "shuttle-2", "pick", side="left") == "interlock"
    assert _refused(op, "shuttle-2", "place", side="left") == "interlock"
    assert plant.where("a") == "shuttle-2"
    assert plant.where("b") == "02-01-L"


def test_bay_transfer_with_door_open_is_refused(plant: Plant, op: Operator) -> None:
    """The ground shuttle never picks from a bay whose door is open."""
    plant.car_arrives(TOWER, "bay-1", Car("a", driver_time_s=1))
    plant.advance(1)
    op.run("shuttle-0", "move", 1)

    assert _refused(op, "shuttle-0", "pick", side="left") == "interlock"
    assert plant.where("a") == "bay-1"


def test_bay_check_with_person_inside_is_refused(plant: Plant, op: Operator) -> None:
    """The door does not close on the driver."""
    plant.car_arrives(TOWER, "bay-1", Car("a", driver_time_s=60))

    assert _refused(op, "bay-1", "check") == "interlock"
    assert plant.status(TOWER, "bay-1")["flags"]["door_closed"] is False


def test_bay_transfer_with_person_inside_is_refused(plant: Plant, op: Operator) -> None:
    """A visitor walks into a released bay: no transfer into it."""
    plant.seed_car(TOWER, "shuttle-0", Car("a"))
    plant.seed_car(TOWER, "bay-1", Car("b", driver_time_s=50))
    plant.driver_collects(TOWER, "bay-1")
    op.run("shuttle-0", "move", 1)
    plant.advance(plant.now + 60)  # b has gone, the door is still open
    assert _refused(op, "shuttle-0", "place", side="left") == "interlock"
    op.run("bay-1", "check")

    assert op.run("shuttle-0", "place", side="left")["result"] == "done"
    assert plant.where("a") == "bay-1"


def test_lift_move_during_lift_transfer_is_refused(plant: Plant, op: Operator) -> None:
    """While shuttle-0 hands a car to the lift, the lift is locked."""
    plant.seed_car(TOWER, "shuttle-0", Car("a"))
    transfer = op.send("shuttle-0", "place", side="lift")

    assert _refused(op, "lift", "move", 4) == "interlock"
    assert plant.status(TOWER, "lift")["level"] == 0
    assert op.wait("shuttle-0", transfer)["result"] == "done"
    assert plant.where("a") == "lift"


def test_lift_transfer_with_lift_elsewhere_is_refused(
    plant: Plant, op: Operator
) -> None:
    """Shuttle 3 cannot pick from the lift while the lift stands at level 2."""
    plant.seed_car(TOWER, "lift", Car("a"))
    op.run("lift", "move", 2)

    assert _refused(op, "shuttle-3", "pick", side="lift") == "interlock"
    busy = op.send("lift", "move", 3)
    assert _refused(op, "shuttle-3", "pick", side="lift") == "interlock"
    op.wait("lift", busy)
    assert op.run("shuttle-3", "pick", side="lift")["result"] == "done"


def test_invalid_targets_are_bad_commands(op: Operator) -> None:
    """Out-of-range targets, a side at column 0, the lift away from column 0,
    a ground transfer where there is no bay, and an unknown code."""
    assert _refused(op, "lift", "move", 9) == "bad_command"
    assert _refused(op, "shuttle-1", "move", 7) == "bad_command"
    assert _refused(op, "shuttle-1", "pick", side="left") == "bad_command"
    assert _refused(op, "shuttle-1", "pick", side="none") == "bad_command"
    assert _refused(op, "lift", "pick") == "bad_command"
    op.run("shuttle-0", "move", 2)
    assert _refused(op, "shuttle-0", "pick", side="left") == "bad_command"
    assert _refused(op, "shuttle-0", "pick", side="lift") == "bad_command"


def test_misuse_of_the_bays_raises(plant: Plant) -> None:
    """Cars drive only into free, open bays; collecting needs a car there."""
    plant.car_arrives(TOWER, "bay-1", Car("a"))

    with pytest.raises(PlantError, match="already holds"):
        plant.car_arrives(TOWER, "bay-1", Car("b"))
    with pytest.raises(PlantError, match="already in the plant"):
        plant.car_arrives(TOWER, "bay-2", Car("a"))
    with pytest.raises(PlantError, match="no car"):
        plant.driver_collects(TOWER, "bay-2")
    with pytest.raises(PlantError, match="no tower"):
        plant.car_arrives("tower-z", "bay-2", Car("c"))


# -- stops: heartbeat, e-stop, manual, injected faults --------------------------


def test_heartbeat_loss_stops_a_motion_midway() -> None:
    """With no heartbeat_ctl change for 2 s, a long lift move stops where it is
    and the next move continues from there."""
    plant = Plant(small_site(), heartbeat_timeout_s=2.0)
    op = Operator(plant)
    seq = op.send("lift", "move", 8)  # 19.6 s
    plant.write(TOWER, "lift", {"heartbeat_ctl": 1})
    plant.advance(1.0)
    plant.write(TOWER, "lift", {"heartbeat_ctl": 2})

    plant.advance(10.0)
    status = plant.status(TOWER, "lift")
    assert (status["state"], status["result"], status["fault_code"]) == (
        "fault",
        "fault",
        "heartbeat_lost",
    )
    assert status["seq_done"] == seq
    assert plant.faults[-1].time == pytest.approx(3.0)
    stopped_mm = move_progress(3.0, 17600, 1000, 500)
    assert status["position_mm"] == round(stopped_mm)

    op.reset("lift")
    again = op.send("lift", "move", 8)
    end = 10.0 + move_time_s(17600 - stopped_mm, 1000, 500)
    for t in range(11, math.ceil(end)):
        plant.advance(float(t))
        plant.write(TOWER, "lift", {"heartbeat_ctl": t})
    plant.advance(end - 0.01)
    assert plant.status(TOWER, "lift")["state"] == "busy"
    plant.advance(end)
    assert plant.status(TOWER, "lift")["seq_done"] == again
    assert plant.status(TOWER, "lift")["position_mm"] == 17600


def test_heartbeat_loss_during_transfer_leaves_the_car() -> None:
    """An interrupted pick leaves the car in its slot."""
    plant = Plant(small_site(), heartbeat_timeout_s={"shuttle": 5.0})
    plant.seed_car(TOWER, "01-01-L", Car("a"))
    op = Operator(plant)
    plant.write(TOWER, "shuttle-1", {"heartbeat_ctl": 1})
    seq = op.send("shuttle-1", "move", 1)
    op.wait("shuttle-1", seq)
    plant.write(TOWER, "shuttle-1", {"heartbeat_ctl": 2})
    op.send("shuttle-1", "pick", side="left")

    plant.advance(plant.now + 20)

    assert plant.status(TOWER, "shuttle-1")["fault_code"] == "heartbeat_lost"
    assert plant.where("a") == "01-01-L"


def test_idle_device_never_faults_on_heartbeat() -> None:
    """Heartbeat loss matters only while busy."""
    plant = Plant(small_site(), heartbeat_timeout_s=1.0)

    plant.advance(100.0)

    assert plant.status(TOWER, "lift")["state"] == "idle"
    assert plant.next_event_time() is None


def test_estop_stops_everything_until_release_and_reset(
    plant: Plant, op: Operator
) -> None:
    """E-stop ends running commands in a fault; commands are refused until the
    button is released and each device reset."""
    lift_seq = op.send("lift", "move", 8)
    op.send("shuttle-2", "move", 6)
    plant.advance(5.0)
    plant.press_estop(TOWER)

    for device in ("lift", "shuttle-2", "shuttle-5", "bay-1"):
        status = plant.status(TOWER, device)
        assert status["state"] == "estop"
        assert status["flags"]["estop"] is True
    lift = plant.status(TOWER, "lift")
    assert (lift["seq_done"], lift["result"]) == (lift_seq, "fault")
    assert 0 < lift["position_mm"] < 17600
    assert plant.next_event_time() is None

    op.send("lift", "move", 0)
    assert plant.status(TOWER, "lift")["seq_accepted"] == lift_seq
    op.reset("lift")
    assert plant.status(TOWER, "lift")["state"] == "estop"

    plant.release_estop(TOWER)
    op.reset("lift")
    assert plant.status(TOWER, "lift")["state"] == "idle"
    assert plant.status(TOWER, "lift")["fault_code"] == "none"
    assert plant.status(TOWER, "shuttle-2")["state"] == "estop"


def test_manual_device_accepts_no_command(plant: Plant, op: Operator) -> None:
    """In manual the PLC ignores remote commands; back in auto it takes them."""
    plant.set_manual(TOWER, "lift", on=True)
    op.send("lift", "move", 2)

    assert plant.status(TOWER, "lift")["state"] == "manual"
    assert plant.status(TOWER, "lift")["seq_accepted"] == 0
    plant.set_manual(TOWER, "lift", on=False)
    assert op.run("lift", "move", 2)["level"] == 2


def test_injected_fault_fails_the_next_command_halfway(
    plant: Plant, op: Operator
) -> None:
    """An injected drive fault stops the next move halfway, with its code."""
    plant.inject_fault(TOWER, "shuttle-1", "drive_fault")

    status = op.run("shuttle-1", "move", 2)

    assert (status["result"], status["fault_code"]) == ("fault", "drive_fault")
    assert status["position_mm"] == 2600
    op.reset("shuttle-1")
    assert op.run("shuttle-1", "move", 2)["result"] == "done"


# -- status details -------------------------------------------------------------


def test_plc_heartbeat_ticks_every_tenth_second_and_wraps(plant: Plant) -> None:
    """The counter is plant time in tenths of a second, modulo 65536."""
    plant.advance(0.35)
    assert plant.status(TOWER, "lift")["heartbeat"] == 3
    plant.advance(6553.6 + 0.35)
    assert plant.status(TOWER, "lift")["heartbeat"] == 3


def test_changed_reports_devices_once(plant: Plant, op: Operator) -> None:
    """changed() names the devices touched since the last call, and moving ones."""
    plant.changed()
    op.send("lift", "move", 4)

    assert plant.changed() == {(TOWER, "lift")}
    assert plant.changed() == set()
    plant.advance(1.0)
    assert plant.changed() == {(TOWER, "lift")}


def test_seed_car_in_slot_shows_on_the_sensor(plant: Plant) -> None:
    """A seeded car is in the inventory and on its level's sensors."""
    plant.seed_car(TOWER, "03-02-L", Car("a"))

    assert plant.where("a") == "03-02-L"
    assert plant.status(TOWER, "shuttle-3")["slot_sensors"][2] is True
    with pytest.raises(PlantError, match="no place"):
        plant.seed_car(TOWER, "09-01-L", Car("b"))
