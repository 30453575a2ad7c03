"""The settings `notes-server serve` reads, from the binary's own --help."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess

ENV_RE = re.compile(r"\[env:\s*([A-Z][A-Z0-9_]*)")
OPTION_RE = re.compile(r"^\s*(?:-\w,\s*)?--([a-z0-9][a-z0-9-]*)")


@dataclasses.dataclass
class Settings:
    envs: set[str]  # every NOTES_* (or other) variable the command reads
    flag_env: dict[str, str]  # --flag -> its variable
    required_envs: set[str]  # variables of the options the usage line requires


def parse_help(text: str) -> Settings:
    """Settings from clap help output (short or long form)."""
    flag_env: dict[str, str] = {}
    envs: set[str] = set()
    current = None
    for line in text.splitlines():
        m = OPTION_RE.match(line)
        if m:
            current = m.group(1)
        for env in ENV_RE.findall(line):
            envs.add(env)
            if current:
                flag_env[current] = env
    usage = next((line for line in text.splitlines() if line.startswith("Usage:")), "")
    required = {flag_env[f] for f in re.findall(r"--([a-z0-9-]+)", usage) if f in flag_env}
    return Settings(envs, flag_env, required)


def run_help(binary: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTES_")}
    out = subprocess.run(
        [binary, *args, "--help"], capture_output=True, text=True, timeout=30, env=env, check=True
    )
    return out.stdout


def serve_settings(binary: str) -> Settings:
    """`notes-server serve --help` plus the global options of `notes-server --help`."""
    serve = parse_help(run_help(binary, "serve"))
    top = parse_help(run_help(binary))
    if not serve.envs:
        raise AssertionError(f"{binary} serve --help lists no [env: ...] settings")
    return Settings(serve.envs | top.envs, {**top.flag_env, **serve.flag_env}, serve.required_envs)
