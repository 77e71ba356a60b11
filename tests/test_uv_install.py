"""tools/uv_install.py hands uv the pip settings that decide what `make install` installs and from where."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tools"))
from uv_install import pip_config, uv_arguments  # noqa: E402


def _settings(tmp_path: Path, **variables: str) -> tuple[list[str], dict[str, str]]:
    config = tmp_path / "pip.conf"
    config.write_text("[global]\nindex-url = https://mirror.example/simple\n"
                      "extra-index-url =\n    https://one.example/simple\n    https://two.example/simple\n"
                      "find-links = /global/wheels\ncert = /etc/ca.pem\nconstraint = /global/constraints.txt\n"
                      "trusted-host = mirror.example\n"
                      "[install]\nfind-links = /install/wheels\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env |= {"PIP_CONFIG_FILE": str(config), **variables}
    return uv_arguments(pip_config(sys.executable, env))


def _values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args) if arg == flag]


def test_pip_files_sections_and_variables_reach_uv_with_pip_precedence(tmp_path: Path) -> None:
    args, env = _settings(tmp_path, PIP_CONSTRAINT="/env/constraints.txt")
    assert _values(args, "--index-url") == ["https://mirror.example/simple"]
    assert _values(args, "--extra-index-url") == ["https://one.example/simple", "https://two.example/simple"]
    assert _values(args, "--find-links") == ["/install/wheels"]  # [install] overrides [global]
    assert _values(args, "--constraint") == ["/env/constraints.txt"]  # PIP_* overrides the files
    assert _values(args, "--allow-insecure-host") == ["mirror.example"]
    assert _values(args, "--index-strategy") == ["unsafe-best-match"]  # pip weighs every index equally
    assert env == {"SSL_CERT_FILE": "/etc/ca.pem"}
    assert "--compile-bytecode" in args and "--no-index" not in args


def test_no_index_and_no_compile_are_kept(tmp_path: Path) -> None:
    args, _ = _settings(tmp_path, PIP_NO_INDEX="1", PIP_NO_COMPILE="1")
    assert "--no-index" in args and "--compile-bytecode" not in args
