"""The Dockerfile as data, and its build replayed on this machine without a Docker engine.

The build stage's WORKDIR, ENV, COPY and RUN steps run in order, with the image's absolute
paths (/opt/venv, /src, /data) moved under a temporary directory; the result is what
`docker run` would start: the installed console script, the final stage's ENV, its WORKDIR,
ENTRYPOINT + CMD, and the HEALTHCHECK command. Used by tests/test_dockerfile.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dockerfile_parse import DockerfileParser

from tests.clients.support import run

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
# PATH of the python:3.11-slim base image, which the image's ENV extends.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Instruction:
    name: str
    value: str


@dataclass
class Stage:
    base: str
    alias: str | None
    steps: list[Instruction] = field(default_factory=list)

    def all(self, name: str) -> list[Instruction]:
        return [step for step in self.steps if step.name == name]

    def one(self, name: str) -> Instruction:
        [step] = self.all(name)
        return step

    def env(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for step in self.all("ENV"):
            for token in shlex.split(step.value):
                key, _, value = token.partition("=")
                found[key] = value
        return found


def stages() -> list[Stage]:
    parsed: list[Stage] = []
    for item in DockerfileParser(str(DOCKERFILE)).structure:
        name, value = item["instruction"], item["value"]
        if name == "FROM":
            base, _, alias = value.partition(" AS ")
            parsed.append(Stage(base.strip(), alias.strip() or None))
        elif name != "COMMENT":
            parsed[-1].steps.append(Instruction(name, value))
    return parsed


def split_flags(value: str) -> tuple[list[str], str]:
    """`--mount=... --from=x rest` → (["--mount=...", "--from=x"], "rest")."""
    flags = []
    rest = value.strip()
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        flags.append(flag)
        rest = rest.strip()
    return flags, rest


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), value
    return parsed


@dataclass
class Image:
    """What `docker run` would have: the installed venv, the image's ENV, command and workdir."""

    root: Path
    env: dict[str, str]
    workdir: Path
    command: list[str]
    healthcheck: list[str]

    @property
    def log(self) -> Path:
        """Where the started processes write (like `docker logs`)."""
        return self.root / "logs" / "gateway.log"

    def start(self, *extra: str, **env: str) -> subprocess.Popen[str]:
        """Run ENTRYPOINT + CMD (+ extra arguments, like `docker run IMAGE serve ...`)."""
        self.log.parent.mkdir(exist_ok=True)
        with self.log.open("a") as log:
            return subprocess.Popen(
                [*self.command, *extra],
                cwd=self.workdir,
                env={**self.env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )


def relocate(text: str, places: dict[str, Path]) -> str:
    """Replace the image's absolute paths (/opt/venv, /src, /data) with their local stand-ins."""
    for image_path, local in places.items():
        text = re.sub(rf"(?<![\w.\-]){re.escape(image_path)}(?=/|\b|$)", str(local), text)
    return text


def replay_build(stage: Stage, places: dict[str, Path]) -> None:
    """The build stage's WORKDIR, ENV, COPY and RUN steps, in order, on this machine."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    workdir = ROOT
    for step in stage.steps:
        if step.name == "WORKDIR":
            workdir = Path(relocate(step.value, places))
            workdir.mkdir(parents=True, exist_ok=True)
        elif step.name == "ENV":
            env.update(Stage("", None, [step]).env())
        elif step.name == "COPY":
            *sources, dest = step.value.split()
            for source in sources:
                target = workdir / dest / source if dest.endswith("/") else workdir / dest
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__py*"))
                else:
                    shutil.copy(ROOT / source, target)
        elif step.name == "RUN":
            _, command = split_flags(step.value)  # cache mounts: pip's own cache is reused
            done = run(["sh", "-c", relocate(command, places)], env=env, cwd=workdir)
            assert done.returncode == 0, f"RUN {command}\n{done.stdout}\n{done.stderr}"
        else:
            raise AssertionError(f"the replay does not know {step.name}; teach it")


def build_image(root: Path) -> Image:
    """Replay the build stage under `root`; return what `docker run` would start."""
    build, final = stages()
    places = {"/opt/venv": root / "opt" / "venv", "/src": root / "src", "/data": root / "data"}
    replay_build(build, places)
    places["/data"].mkdir()
    env = {
        key: relocate(value, places).replace("$PATH", BASE_PATH + ":" + os.environ["PATH"])
        for key, value in final.env().items()
    }
    _, healthcheck = split_flags(final.one("HEALTHCHECK").value)
    return Image(
        root=root,
        env={"HOME": str(places["/data"]), **env},
        workdir=Path(relocate(final.all("WORKDIR")[-1].value, places)),
        command=[
            shutil.which(word, path=env["PATH"]) or word
            for word in exec_form(final.one("ENTRYPOINT").value)
        ]
        + exec_form(final.one("CMD").value),
        healthcheck=exec_form(healthcheck.removeprefix("CMD ")),
    )
