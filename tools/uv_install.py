"""`uv pip install` that honours pip's configuration: the Makefile's installer.

uv installs the pinned stack in seconds where pip takes minutes (mostly unpacking and
byte-compiling torch), but it reads neither pip.conf nor the PIP_* variables. A machine
set up for pip (a mirror, a local wheel folder, a constraints file, a private CA) must
install the same wheels through uv, so the options that decide what is installed and from
where are carried over. pip weighs every index equally; uv's equivalent is
`--index-strategy unsafe-best-match`. pip byte-compiles what it installs and uv does not by
default: without it every interpreter compiles torch's sources again wherever
PYTHONDONTWRITEBYTECODE is set (measured: the test suite took 21 min instead of 14.5).

Usage: python tools/uv_install.py [uv pip install arguments...]
Runs with the target environment's python, whose pip and uv are used.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Mapping

# pip option -> uv pip install flag; list-valued options hold whitespace-separated values.
_LIST_OPTIONS = {
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
    "trusted-host": "--allow-insecure-host",
}
_SINGLE_OPTIONS = {"index-url": "--index-url"}
_PRECEDENCE = ("global.", "install.", ":env:.")  # later wins, as in pip


def pip_config(python: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """pip's effective settings for `pip install` (files, sections and PIP_* variables), from `pip config list`."""
    listing = subprocess.run(
        [python, "-m", "pip", "config", "list"], check=True, capture_output=True, text=True,
        env=None if env is None else dict(env),
    ).stdout
    by_section: dict[str, dict[str, str]] = {prefix: {} for prefix in _PRECEDENCE}
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        for prefix in _PRECEDENCE:
            if key.startswith(prefix):
                by_section[prefix][key[len(prefix) :]] = str(ast.literal_eval(value))
    merged: dict[str, str] = {}
    for prefix in _PRECEDENCE:
        merged.update(by_section[prefix])
    return merged


def _true(value: str | None) -> bool:
    return (value or "").lower() in {"1", "true", "yes", "on"}


def uv_arguments(config: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The uv flags and environment that reproduce pip's settings."""
    args = ["--index-strategy", "unsafe-best-match"]
    env: dict[str, str] = {}
    for option, flag in _SINGLE_OPTIONS.items():
        if config.get(option):
            args += [flag, config[option]]
    for option, flag in _LIST_OPTIONS.items():
        for value in config.get(option, "").split():
            args += [flag, value]
    if _true(config.get("no-index")):
        args.append("--no-index")
    if not _true(config.get("no-compile")):
        args.append("--compile-bytecode")
    if config.get("cert"):
        env["SSL_CERT_FILE"] = config["cert"]
    return args, env


def main(argv: list[str]) -> int:
    python = sys.executable
    args, env = uv_arguments(pip_config(python))
    command = [python, "-m", "uv", "pip", "install", "--python", python, *args, *argv]
    return subprocess.run(command, env={**os.environ, **env}).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
