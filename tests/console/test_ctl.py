"""`tower ctl` against a real control socket with a fake service behind it."""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from fakes import (
    ALARMS,
    JOBS,
    MAINTENANCE_TOKEN,
    OPERATOR_TOKEN,
    SLOTS,
    STATUS,
    VIEWER_TOKEN,
    FakeService,
    Refused,
)

from tower.console import ctl
from tower.console.server import ControlServer
from tower.console.tokens import Role


@dataclass
class Run:
    code: int
    out: str
    err: str


async def run_ctl(argv: list[str], env: dict[str, str]) -> Run:
    """Run `tower ctl` in a thread (it runs its own event loop) and capture it."""
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(ctl.main, argv, env=env, out=out, err=err)
    return Run(code, out.getvalue(), err.getvalue())


@pytest.fixture
def env(server: ControlServer) -> dict[str, str]:
    return {"TOWER_SOCKET": str(server.path), "TOWER_TOKEN": MAINTENANCE_TOKEN}


async def test_status_prints_towers_devices_and_alarms(env: dict[str, str]) -> None:
    """status shows one line per tower, its devices and the alarms."""
    run = await run_ctl(["status"], env)

    assert run.code == 0
    assert run.out.splitlines()[:3] == [
        "site zoo",
        "TOWER    STATE  CAPACITY  OCCUPIED  FREE  FREE EV  ALARMS",
        "tower-a  auto   96        10        84    5        1",
    ]
    assert "shuttle-0  busy   yes" in run.out
    assert "bay-1      fault  no" in run.out
    assert "tower-a  bay-1   offline  no answer for 3 s" in run.out


def test_status_says_when_the_feed_is_down() -> None:
    """The controller's feed flag is shown on the site line."""
    text = ctl.format_status({**STATUS, "feed": {"connected": False}})

    assert text.startswith("site zoo, feed NOT connected\n")


async def test_slots_prints_a_table_with_a_summary(
    env: dict[str, str], service: FakeService
) -> None:
    """slots TOWER lists every slot, its size, charger, state and ticket."""
    run = await run_ctl(["slots", "tower-a"], env)

    assert run.code == 0
    assert run.out.splitlines() == [
        "tower-a: 3 slots (1 blocked, 1 free, 1 occupied)",
        "SLOT     SIZE      CHARGER  STATE     TICKET",
        "01-01-L  standard  yes      free      -",
        "01-01-R  standard  no       occupied  K7QX-M2PD-9RTW",
        "08-06-R  tall      no       blocked   -",
    ]
    assert service.calls[-1][:2] == ("slots", {"tower": "tower-a"})


def test_slots_of_every_tower_are_printed_tower_by_tower() -> None:
    """The controller's all-towers answer prints one block per tower."""
    result = {"towers": [SLOTS, {**SLOTS, "tower": "tower-b", "slots": []}]}

    text = ctl.format_slots(result)

    assert "tower-a: 3 slots" in text
    assert "tower-b: 0 slots (none)" in text


async def test_jobs_prints_a_table(env: dict[str, str]) -> None:
    """jobs shows id, kind, tower, ticket, state, step, route and age."""
    run = await run_ctl(["jobs"], env)

    assert run.code == 0
    assert run.out.splitlines() == [
        "JOB       KIND   TOWER    TICKET          STATE    STEP         FROM   TO"
        "       AGE",
        "j-1a2b3c  store  tower-a  K7QX-M2PD-9RTW  running  lift move 3  bay-1  03-02-L"
        "  1m15s",
    ]


def test_no_jobs_says_so() -> None:
    """An empty job list prints a sentence, not an empty table."""
    assert ctl.format_jobs({"jobs": []}) == "no jobs"


async def test_store_sends_tower_and_bay_and_prints_the_ticket(
    env: dict[str, str], service: FakeService
) -> None:
    """store TOWER/BAY asks for that bay and prints the job and the ticket."""
    run = await run_ctl(["store", "tower-a/bay-1"], env)

    assert run.code == 0
    assert service.calls[-1] == (
        "store",
        {"tower": "tower-a", "bay": "bay-1"},
        Role.MAINTENANCE,
    )
    assert run.out == (
        "job j-9f8e7d stores the car from tower-a/bay-1\n"
        "ticket H3TR-8WXY-2MNP  (give it to the driver)\n"
    )


@pytest.mark.parametrize(
    ("argv", "args"),
    [
        (["retrieve", "K7QX"], {"ticket": "K7QX"}),
        (
            ["retrieve", "K7QX", "--bay", "tower-a/bay-2"],
            {"ticket": "K7QX", "tower": "tower-a", "bay": "bay-2"},
        ),
    ],
)
async def test_retrieve_sends_the_ticket_and_the_bay(
    env: dict[str, str], service: FakeService, argv: list[str], args: dict
) -> None:
    """retrieve TICKET [--bay TOWER/BAY] asks for that car and names the bay."""
    run = await run_ctl(argv, env)

    assert run.code == 0
    assert service.calls[-1][:2] == ("retrieve", args)
    assert run.out == "job j-5a5a5a brings the car to tower-a/bay-2\n"


async def test_alarms_prints_a_table(env: dict[str, str]) -> None:
    """alarms lists tower, device, code and message."""
    run = await run_ctl(["alarms"], env)

    assert run.out.splitlines() == [
        "TOWER    DEVICE  CODE   MESSAGE",
        "tower-a  lift    estop  emergency stop pressed",
    ]
    assert ctl.format_alarms({"alarms": []}) == "no alarms"


@pytest.mark.parametrize(
    ("argv", "sent", "printed"),
    [
        (
            ["mode", "tower-a", "manual"],
            ("mode", {"tower": "tower-a", "mode": "manual"}),
            "tower-a is now in manual mode\n",
        ),
        (["reset", "tower-a"], ("reset", {"tower": "tower-a"}), "tower-a reset\n"),
        (
            ["cancel", "j-1a2b3c"],
            ("cancel", {"job_id": "j-1a2b3c"}),
            "job j-1a2b3c cancelled\n",
        ),
        (
            ["place", "H3TR-8WXY-2MNP", "02-02-R"],
            ("place", {"ticket": "H3TR-8WXY-2MNP", "place": "02-02-R"}),
            "the inventory has the car at 02-02-R now\n",
        ),
        (
            ["remove", "H3TR-8WXY-2MNP"],
            ("remove", {"ticket": "H3TR-8WXY-2MNP"}),
            "the car is out of custody; its ticket is closed\n",
        ),
        (
            ["unblock", "tower-a/01-02-R"],
            ("unblock", {"tower": "tower-a", "slot": "01-02-R"}),
            "tower-a/01-02-R is back in service\n",
        ),
    ],
)
async def test_tower_commands_send_their_arguments(
    env: dict[str, str],
    service: FakeService,
    argv: list[str],
    sent: tuple,
    printed: str,
) -> None:
    """mode, reset, cancel and the hand corrections send what was typed and
    confirm in a sentence."""
    run = await run_ctl(argv, env)

    assert (run.code, run.out) == (0, printed)
    assert service.calls[-1][:2] == sent


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--json", "status"], STATUS),
        (["jobs", "--json"], JOBS),
        (["--json", "alarms"], ALARMS),
    ],
)
async def test_json_prints_the_raw_result(
    env: dict[str, str], argv: list[str], expected: dict
) -> None:
    """--json (before or after the command) prints the result as it came."""
    run = await run_ctl(argv, env)

    assert run.code == 0
    assert json.loads(run.out) == expected


async def test_refusal_exits_1_with_the_reason(
    env: dict[str, str], service: FakeService
) -> None:
    """A refused command exits 1 and says the code and the message on stderr."""
    service.refuse["retrieve"] = Refused("unknown_ticket", "no car with ticket NOPE")

    run = await run_ctl(["retrieve", "NOPE"], env)
    as_json = await run_ctl(["--json", "retrieve", "NOPE"], env)

    assert (run.code, run.out) == (1, "")
    assert run.err == "tower ctl: refused: unknown_ticket: no car with ticket NOPE\n"
    assert as_json.code == 1
    assert json.loads(as_json.out) == {
        "error": {"code": "unknown_ticket", "message": "no car with ticket NOPE"}
    }


async def test_role_too_low_exits_1(env: dict[str, str]) -> None:
    """A viewer token asking to store is refused by the controller: exit 1."""
    run = await run_ctl(["store", "tower-a/bay-1"], env | {"TOWER_TOKEN": VIEWER_TOKEN})

    assert run.code == 1
    assert "forbidden" in run.err


async def test_no_controller_exits_2(short_dir: Path) -> None:
    """A missing socket is a connection problem: exit 2, saying where it looked."""
    path = short_dir / "absent.sock"

    run = await run_ctl(
        ["--socket", str(path), "status"], {"TOWER_TOKEN": OPERATOR_TOKEN}
    )

    assert run.code == 2
    assert run.err == (
        f"tower ctl: control socket {path}: no such file (is the controller running?)\n"
    )


async def test_no_token_exits_2(server: ControlServer) -> None:
    """Without a token file or TOWER_TOKEN nothing is sent: exit 2."""
    run = await run_ctl(["status"], {"TOWER_SOCKET": str(server.path)})

    assert run.code == 2
    assert "no token" in run.err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["launch"],
        ["store", "tower-a"],
        ["store", "tower-a/bay-1/x"],
        ["mode", "tower-a", "fast"],
        ["unblock", "01-02-R"],
        ["place", "H3TR-8WXY-2MNP"],
    ],
)
async def test_usage_errors_exit_2(env: dict[str, str], argv: list[str]) -> None:
    """A command line that does not parse exits 2 with the usage."""
    run = await run_ctl(argv, env)

    assert run.code == 2


async def test_token_file_holds_just_the_token(
    env: dict[str, str], service: FakeService, tmp_path: Path
) -> None:
    """--token-file reads the first line that is not blank or a comment."""
    path = tmp_path / "token"
    path.write_text(f"# the day shift's token\n\n{OPERATOR_TOKEN}\n")
    path.chmod(0o600)
    env = {"TOWER_SOCKET": env["TOWER_SOCKET"]}

    run = await run_ctl(["--token-file", str(path), "reset", "tower-a"], env)

    assert (run.code, run.err) == (0, "")
    assert service.calls[-1][2] == Role.OPERATOR


async def test_token_file_from_the_environment_wins_over_the_token(
    env: dict[str, str], service: FakeService, tmp_path: Path
) -> None:
    """TOWER_TOKEN_FILE is used when set, before TOWER_TOKEN."""
    path = tmp_path / "token"
    path.write_text(f"{VIEWER_TOKEN}\n")
    path.chmod(0o600)

    run = await run_ctl(["status"], env | {"TOWER_TOKEN_FILE": str(path)})

    assert run.code == 0
    assert service.calls[-1][2] == Role.VIEWER


async def test_controller_tokens_file_is_not_a_ctl_token_file(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A 'role token' line is refused with a hint, and the token is not sent."""
    path = tmp_path / "tokens"
    path.write_text(f"operator {OPERATOR_TOKEN}\n")
    path.chmod(0o600)

    run = await run_ctl(["--token-file", str(path), "status"], env)

    assert run.code == 2
    assert "holds just the token" in run.err
    assert OPERATOR_TOKEN not in run.err


async def test_world_readable_token_file_warns(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A token file every user can read works, with a warning on stderr."""
    path = tmp_path / "token"
    path.write_text(f"{VIEWER_TOKEN}\n")
    path.chmod(0o644)

    run = await run_ctl(["--token-file", str(path), "status"], env)

    assert run.code == 0
    assert "readable by every user" in run.err
