"""Secret files: written whole, 0600, and refused when group or others may read them."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from edge_agent.errors import ConfigError
from edge_agent.private_files import check_private, write_private


def test_a_secret_is_written_0600_whole_and_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "device.json"
    write_private(path, b"first")
    write_private(path, b"second")
    assert path.read_bytes() == b"second"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["device.json"]  # no temp left
    check_private(path, "device")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_secret_others_may_read_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "token"
    path.write_text("t")
    path.chmod(mode)
    with pytest.raises(
        ConfigError, match=rf"websocket_output.token_file: .* \(mode {mode:04o}\); chmod 600 it"
    ):
        check_private(path, "websocket_output.token_file")


def test_a_missing_secret_names_its_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nats\.nkey_seed: cannot read"):
        check_private(tmp_path / "absent", "nats.nkey_seed")
