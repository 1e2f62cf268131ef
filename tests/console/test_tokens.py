"""The operator tokens file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tower.console.tokens import Role, TokenFileError, TokenStore

GOOD = """\
# role        token
viewer        3f1c0e5f2b7d4a9e8c6b1a0d

operator      9b2e7c4d1f0a6e3b8d5c2a7f   # the day shift
maintenance   c4a1e8f3b6d0927e5a1c8b3d
"""


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "tokens"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def test_tokens_file_gives_each_token_its_role(tmp_path: Path) -> None:
    """Comments and blank lines are skipped; each token maps to its role."""
    store = TokenStore.load(write(tmp_path, GOOD))

    roles = [
        store.role_of("3f1c0e5f2b7d4a9e8c6b1a0d"),
        store.role_of("9b2e7c4d1f0a6e3b8d5c2a7f"),
        store.role_of("c4a1e8f3b6d0927e5a1c8b3d"),
    ]

    assert roles == [Role.VIEWER, Role.OPERATOR, Role.MAINTENANCE]
    assert len(store) == 3
    assert store.warnings == []


@pytest.mark.parametrize(
    "token", ["", "3f1c0e5f2b7d4a9e8c6b1a0", "3f1c0e5f2b7d4a9e8c6b1a0dX", "tøken"]
)
def test_unknown_tokens_have_no_role(tmp_path: Path, token: str) -> None:
    """Empty, truncated, extended or non-ASCII tokens match nothing."""
    store = TokenStore.load(write(tmp_path, GOOD))

    assert store.role_of(token) is None


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("operator", "expected 'role token', found 1 words"),
        ("operator abcdefabcdefabcdef extra", "found 3 words"),
        ("admin abcdefabcdefabcdef", "unknown role 'admin'"),
        ("viewer short", "token too short (5 characters, at least 16"),
        ("viewer 3f1c0e5f2b7d4a9e8c6b1a0d", "already listed"),
    ],
)
def test_malformed_line_names_file_and_line(
    tmp_path: Path, line: str, words: str
) -> None:
    """A bad line is an error naming the file and the line number."""
    path = write(tmp_path, GOOD + line + "\n")

    with pytest.raises(TokenFileError) as caught:
        TokenStore.load(path)

    assert str(caught.value).startswith(f"{path}:6: ")
    assert words in str(caught.value)
    assert caught.value.line == 6


def test_error_never_shows_the_token(tmp_path: Path) -> None:
    """The message about a bad line does not repeat its token."""
    path = write(tmp_path, "viewer s3cr3t-but-too-long-still extra\n")

    with pytest.raises(TokenFileError) as caught:
        TokenStore.load(path)

    assert "s3cr3t" not in str(caught.value)


def test_world_readable_file_is_loaded_with_a_warning(tmp_path: Path) -> None:
    """A file every user may read works, and says it should not be so."""
    store = TokenStore.load(write(tmp_path, GOOD, mode=0o644))

    assert len(store) == 3
    assert len(store.warnings) == 1
    assert "readable or writable by every user (mode 0644)" in store.warnings[0]


def test_group_readable_file_is_fine(tmp_path: Path) -> None:
    """Mode 0640 (the controller's group reads it) gives no warning."""
    store = TokenStore.load(write(tmp_path, GOOD, mode=0o640))

    assert store.warnings == []


def test_empty_file_warns_that_every_request_is_refused(tmp_path: Path) -> None:
    """A file with no tokens loads but says nobody can get in."""
    store = TokenStore.load(write(tmp_path, "# nobody yet\n"))

    assert store.role_of("anything-at-all-123") is None
    assert "no tokens" in store.warnings[0]


def test_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    """A tokens file that is not there is a clear error."""
    with pytest.raises(TokenFileError, match="cannot read"):
        TokenStore.load(tmp_path / "absent")


def test_roles_are_ordered_by_power_not_alphabet() -> None:
    """viewer < operator < maintenance, whatever the spelling says."""
    assert Role.VIEWER < Role.OPERATOR < Role.MAINTENANCE
    assert Role.MAINTENANCE >= Role.OPERATOR
    assert not Role.VIEWER >= Role.OPERATOR
    assert sorted([Role.MAINTENANCE, Role.VIEWER, Role.OPERATOR]) == [
        Role.VIEWER,
        Role.OPERATOR,
        Role.MAINTENANCE,
    ]
