"""The site file: defaults, endpoints and line-numbered errors."""

import os
from pathlib import Path

import pytest

from tower.config import PolicyConfig, SizeClass, load_site
from tower.core.policies import POLICIES
from tower.tomlsource import ValidationProblems

SITES = Path(__file__).resolve().parent.parent / "sim" / "sites"


def test_reference_site_matches_the_design():
    """The shipped reference site has two towers of 8 levels x 6 columns x 2 sides."""
    site = load_site(SITES / "reference.toml")

    assert [t.id for t in site.towers] == ["tower-a", "tower-b"]
    assert [(t.levels, t.columns, len(t.bays)) for t in site.towers] == [(8, 6, 2)] * 2


def test_endpoints_follow_the_port_plan():
    """Lift on port_base, shuttle k on port_base+1+k, bay n on port_base+40+n."""
    tower = load_site(SITES / "reference.toml").towers[0]

    ports = {name: tower.endpoint(name).port for name in tower.device_names()}

    assert ports["lift"] == 15020
    assert ports["shuttle-0"] == 15021
    assert ports["shuttle-8"] == 15029
    assert ports["bay-1"] == 15061
    assert ports["bay-2"] == 15062


def test_profiles_dir_resolves_against_the_site_file():
    """profiles_dir is relative to the site file, not to the working directory."""
    site = load_site(SITES / "reference.toml")

    assert site.profiles_path() == (SITES / "../../plc_profiles").resolve()


def test_default_sizes_take_a_tall_car_only_in_tall_slots():
    """The standard class stops at 1600 mm, the tall class at 2050 mm."""
    site = load_site(SITES / "reference.toml")

    assert site.sizes[SizeClass.STANDARD].max_height_mm == 1600
    assert site.sizes[SizeClass.TALL].max_height_mm == 2050


def test_every_problem_is_reported_with_its_line(tmp_path):
    """A broken site file lists each problem with file, line and field."""
    path = tmp_path / "site.toml"
    path.write_text(
        'id = "zoo"\n'
        "[[towers]]\n"
        'id = "a"\n'
        "levels = 0\n"
        "[towers.physics]\n"
        "lift_speed_m_s = -1\n"
        "[[towers]]\n"
        'id = "b"\n'
        "bogus = 3\n",
        encoding="utf-8",
    )

    with pytest.raises(ValidationProblems) as caught:
        load_site(path)

    found = {(p.line, p.field) for p in caught.value.problems}
    assert found == {
        (4, "towers.0.levels"),
        (6, "towers.0.physics.lift_speed_m_s"),
        (9, "towers.1.bogus"),
    }
    assert all(p.file == str(path) for p in caught.value.problems)


def test_a_syntax_error_names_its_line(tmp_path):
    """A TOML syntax error is one problem carrying the parser's line number."""
    path = tmp_path / "site.toml"
    path.write_text('id = "zoo"\n[[towers]]\nid = \n', encoding="utf-8")

    with pytest.raises(ValidationProblems) as caught:
        load_site(path)

    [problem] = caught.value.problems
    assert problem.line == 3
    assert problem.field == "(syntax)"


def test_a_missing_file_is_a_clear_problem(tmp_path):
    """A site file that does not exist is reported, not a traceback."""
    with pytest.raises(ValidationProblems) as caught:
        load_site(tmp_path / "nope.toml")

    assert "cannot read" in str(caught.value)


def test_bays_must_stand_inside_the_tower(tmp_path):
    """A bay at a column the tower does not have is refused, with its line."""
    path = tmp_path / "site.toml"
    path.write_text(
        "[[towers]]\n"
        'id = "a"\n'
        "columns = 3\n"
        "[[towers.bays]]\n"
        'id = "bay-1"\n'
        "column = 5\n"
        'side = "left"\n',
        encoding="utf-8",
    )

    with pytest.raises(ValidationProblems) as caught:
        load_site(path)

    [problem] = caught.value.problems
    assert "column 5" in problem.message
    assert problem.line == 1  # the [[towers]] header of that tower


def test_ids_that_would_break_a_topic_are_refused(tmp_path):
    """A tower id with '/' (an MQTT level) and a prefix with '#' are refused."""
    path = tmp_path / "site.toml"
    path.write_text(
        '[[towers]]\nid = "tower/a"\n[mqtt]\ntopic_prefix = "qa/#"\n', encoding="utf-8"
    )

    with pytest.raises(ValidationProblems) as caught:
        load_site(path)

    found = {(p.line, p.field) for p in caught.value.problems}
    assert found == {(2, "towers.0.id"), (4, "mqtt.topic_prefix")}


def test_two_devices_on_one_port_are_refused(tmp_path):
    """Towers whose port ranges overlap are refused, naming both devices."""
    path = tmp_path / "site.toml"
    path.write_text(
        '[[towers]]\nid = "a"\n[towers.plc]\nport_base = 20000\n'
        '[[towers]]\nid = "b"\n[towers.plc]\nport_base = 20001\n',
        encoding="utf-8",
    )

    with pytest.raises(ValidationProblems) as caught:
        load_site(path)

    [problem] = caught.value.problems
    assert "b/lift and a/shuttle-0 both answer on 127.0.0.1:20001" in problem.message


def test_a_file_that_is_not_a_regular_file_is_refused(tmp_path):
    """A FIFO or a directory given as a site file is a problem, never a hang."""
    fifo = tmp_path / "site.toml"
    os.mkfifo(fifo)

    with pytest.raises(ValidationProblems) as caught:
        load_site(fifo)

    assert caught.value.problems[0].message == "not a regular file"


def test_toml_nested_too_deep_is_a_problem(tmp_path):
    """Nesting deep enough to exhaust the parser is reported as a syntax problem."""
    path = tmp_path / "site.toml"
    path.write_text("a = " + "[" * 50000 + "]" * 50000 + "\n", encoding="utf-8")

    with pytest.raises(ValidationProblems) as caught:
        load_site(path)

    assert caught.value.problems[0].field == "(syntax)"


def test_the_policy_defaults_to_pipelined():
    """A site file that names no policy runs the pipelined one."""
    site = load_site(SITES / "reference.toml")

    assert site.policy.name == "pipelined"
    assert PolicyConfig().name in POLICIES


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_named_policy_is_accepted(tmp_path, name):
    """Each policy of tower.core.policies, baselines included, may be chosen."""
    path = tmp_path / "site.toml"
    path.write_text(f'[[towers]]\nid = "a"\n[policy]\nname = "{name}"\n')

    assert load_site(path).policy.name == name


def test_an_unknown_policy_is_refused_with_its_line(tmp_path):
    """A policy name that is not one of tower.core.policies is refused, naming
    the file, the line, the field and the names that would do."""
    path = tmp_path / "site.toml"
    path.write_text('[[towers]]\nid = "a"\n\n[policy]\nname = "fastest"\n')

    with pytest.raises(ValidationProblems) as caught:
        load_site(path)

    [problem] = caught.value.problems
    assert (problem.file, problem.line, problem.field) == (
        str(path),
        5,
        "policy.name",
    )
    assert "unknown policy 'fastest'" in problem.message
    assert all(name in problem.message for name in POLICIES)
