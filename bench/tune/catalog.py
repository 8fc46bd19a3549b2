"""The tunables catalog (tuning/tunables.yaml), validated by pydantic, and typed values.

A value is an int, a choice (a word), or a list of ints; `parse` turns the text the kernel shows
into a value, `render` turns a value into the text to write.
"""

from __future__ import annotations

import functools
import os
import re
import stat
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bench.core import shipped, yamlio
from bench.core.errors import BenchError

Value = int | str | list[int]
Scope = Literal["host-global", "per-device", "per-netns", "guest-local"]
KNOWN_TIERS = ("host", "ns", "docker", "kvm")
PATH_PREFIXES = ("/proc/sys/", "/sys/")
_PATH_RE = re.compile(r"^/[A-Za-z0-9_.+{}/-]+$")
# The only subtrees a catalog may name: the kernel's VM and network buffer knobs, THP and a
# block queue. Nothing under /proc/sys/kernel (core_pattern, modprobe), no uevent_helper.
ALLOWED = re.compile(r"^(/proc/sys/vm/[a-z_]+|/proc/sys/net/(core|ipv4)/[a-z_]+"
                     r"|/sys/kernel/mm/transparent_hugepage/[a-z_]+"
                     r"|/sys/block/\{device\}/queue/[a-z_]+)$")
# Where those paths may lead once the kernel's symlinks are resolved (a block queue lives under
# /sys/devices); checked again on the real path before every write.
ALLOWED_RESOLVED = re.compile(r"^(/proc/sys/vm/[a-z_]+|/proc/sys/net/(core|ipv4)/[a-z_]+"
                              r"|/sys/kernel/mm/transparent_hugepage/[a-z_]+"
                              r"|/sys/(block|devices)/[A-Za-z0-9_.:/-]+/queue/[a-z_]+)$")


class TuneError(BenchError):
    """A tunable could not be read, written, verified or restored, or a write was refused."""


class Tunable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    path: str
    type: Literal["int", "choice", "ints"]
    unit: str = ""
    valid: tuple[int, int] | None = None
    safe: tuple[int, int] | None = None
    choices: tuple[str, ...] = ()
    safe_choices: tuple[str, ...] | None = None
    length: int | None = Field(None, ge=1, le=16)
    sweep: tuple[Value, ...] = Field(min_length=1)
    zero_means_unset: bool = False
    probe: bool = False
    probe_note: str = ""
    scope: Scope
    tiers: tuple[str, ...] = Field(min_length=1)
    tiers_note: str = ""
    guest: bool = False
    counterpart: str | None = None
    affects: tuple[str, ...] = ()  # tunables a write resets (journaled too, restored after)
    risk: Literal["low", "medium", "high"]
    risk_note: str = ""
    tuned: str = Field(pattern=r"^(sysctl|sysfs|vm\.[a-z_.]+|disk\.[a-z_]+)$")
    doc: str = Field(pattern=r"^https://")
    description: str

    @field_validator("path")
    @classmethod
    def path_shape(cls, path: str) -> str:
        if not path.startswith(PATH_PREFIXES) or not _PATH_RE.match(path):
            raise ValueError(f"{path!r} must be an absolute path under /proc/sys/ or /sys/")
        if ".." in path.split("/") or "//" in path:
            raise ValueError(f"{path!r} must not hold '..' or '//'")
        placeholders = re.findall(r"{[^}]*}", path)
        if any(p != "{device}" for p in placeholders):
            raise ValueError(f"{path!r}: the only placeholder allowed is {{device}}")
        if not ALLOWED.match(path):
            raise ValueError(f"{path!r} is outside what bench may write (/proc/sys/vm, "
                             "/proc/sys/net/core, /proc/sys/net/ipv4, "
                             "/sys/kernel/mm/transparent_hugepage, /sys/block/{device}/queue)")
        return path

    @field_validator("tiers")
    @classmethod
    def known_tiers(cls, tiers: tuple[str, ...]) -> tuple[str, ...]:
        for tier in tiers:
            if tier not in KNOWN_TIERS:
                raise ValueError(f"unknown tier {tier!r}; allowed: {', '.join(KNOWN_TIERS)}")
        return tiers

    @model_validator(mode="after")
    def consistent(self) -> Tunable:
        per_device = "{device}" in self.path
        if per_device != (self.scope == "per-device"):
            raise ValueError("per-device tunables (and only they) hold {device} in their path")
        if self.type == "choice":
            if not self.choices:
                raise ValueError("a choice tunable needs `choices`")
            if self.valid or self.safe:
                raise ValueError("a choice tunable has `choices`, not `valid`/`safe` ranges")
            if self.safe_choices and not set(self.safe_choices) <= set(self.choices):
                raise ValueError("safe_choices must be a subset of choices")
        else:
            if self.valid is None or self.safe is None:
                raise ValueError(f"an {self.type} tunable needs `valid` and `safe` ranges")
            if self.valid[0] > self.valid[1] or self.safe[0] > self.safe[1]:
                raise ValueError("a range is [low, high] with low <= high")
            if self.safe[0] < self.valid[0] or self.safe[1] > self.valid[1]:
                raise ValueError(f"safe range {list(self.safe)} must lie inside the valid "
                                 f"range {list(self.valid)}")
            if self.type == "ints" and self.length is None:
                raise ValueError("an ints tunable needs `length`")
        for value in self.sweep:
            problem = self.check(value, allow_unsafe=False)
            if problem:
                raise ValueError(f"sweep value {value!r}: {problem}")
        return self

    # -- values ------------------------------------------------------------------------------
    def coerce(self, raw: Any) -> Value:
        """A value from YAML or the command line, in this tunable's type."""
        if self.type == "int":
            if isinstance(raw, bool) or not isinstance(raw, int | str):
                raise ValueError(f"{self.name} takes an integer, not {raw!r}")
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"{self.name} takes an integer, not {raw!r}") from None
        if self.type == "choice":
            if not isinstance(raw, str):
                raise ValueError(f"{self.name} takes one of {', '.join(self.choices)}")
            return raw.strip()
        items = raw.replace(",", " ").split() if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple):
            raise ValueError(f"{self.name} takes {self.length} integers, not {raw!r}")
        try:
            return [int(x) for x in items]
        except (TypeError, ValueError):
            raise ValueError(f"{self.name} takes {self.length} integers, not {raw!r}") from None

    def check(self, value: Value, allow_unsafe: bool) -> str:
        """Why `value` may not be written ('' if it may)."""
        if self.type == "choice":
            if value not in self.choices:
                return f"not one of {', '.join(self.choices)}"
            if not allow_unsafe and self.safe_choices is not None \
                    and value not in self.safe_choices:
                return f"outside the safe choices {', '.join(self.safe_choices)}"
            return ""
        numbers = value if isinstance(value, list) else [value]
        if self.type == "ints" and (not isinstance(value, list) or len(value) != self.length):
            return f"needs {self.length} integers"
        if self.type == "int" and not isinstance(value, int):
            return "needs an integer"
        if self.valid is None or self.safe is None:  # the model validator requires both
            return "has no valid and safe range in the catalog"
        for number in numbers:
            if not isinstance(number, int) or isinstance(number, bool):
                return "needs integers"
            if not self.valid[0] <= number <= self.valid[1]:
                return f"{number} is outside the valid range {self.valid[0]}..{self.valid[1]}"
            if not allow_unsafe and not self.safe[0] <= number <= self.safe[1]:
                return f"{number} is outside the safe range {self.safe[0]}..{self.safe[1]}"
        return ""

    def parse(self, text: str) -> Value:
        """The kernel's text as a value: '[mq-deadline]' picks the bracketed choice."""
        text = text.strip()
        if self.type == "int":
            return int(text)
        if self.type == "choice":
            chosen = re.search(r"\[([^\]]+)\]", text)
            return chosen.group(1) if chosen else text
        return [int(x) for x in text.split()]

    def offered(self, text: str) -> list[str]:
        """For a choice file like 'none [mq-deadline] kyber', every choice the kernel offers."""
        return [w.strip("[]") for w in text.split()]

    def render(self, value: Value) -> str:
        if isinstance(value, list):
            return " ".join(str(v) for v in value)
        return str(value)

    @property
    def per_device(self) -> bool:
        return self.scope == "per-device"


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    values: dict[str, Any] = Field(min_length=1)


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    tunables: dict[str, Tunable] = Field(min_length=1)
    profiles: dict[str, Profile] = Field(default_factory=dict)

    @field_validator("tunables", mode="before")
    @classmethod
    def names(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            return {k: {**v, "name": k} if isinstance(v, dict) else v for k, v in raw.items()}
        return raw

    @model_validator(mode="after")
    def cross_checks(self) -> Catalog:
        for name, t in self.tunables.items():
            for other_name in t.affects:
                affected = self.tunables.get(other_name)
                if affected is None or affected.scope != t.scope:
                    raise ValueError(f"tunables.{name}.affects: {other_name!r} must be a "
                                     "catalogued tunable of the same scope")
            if t.counterpart is None:
                continue
            other = self.tunables.get(t.counterpart)
            if other is None:
                raise ValueError(f"tunables.{name}.counterpart: {t.counterpart!r} is not in "
                                 "the catalog")
            if other.counterpart != name:
                raise ValueError(f"tunables.{name}.counterpart: {t.counterpart} must name "
                                 f"{name} as its counterpart too")
            if other.scope != t.scope:
                raise ValueError(f"tunables.{name}: counterparts must share a scope")
            if t.zero_means_unset == other.zero_means_unset:
                raise ValueError(f"tunables.{name}: exactly one of a counterpart pair has "
                                 "zero_means_unset (the bytes member)")
        paths = [t.path for t in self.tunables.values()]
        if len(set(paths)) != len(paths):
            raise ValueError("two tunables share a path")
        for pname, profile in self.profiles.items():
            for key, raw in profile.values.items():
                tunable = self.tunables.get(key)
                if tunable is None:
                    raise ValueError(f"profiles.{pname}.values: unknown tunable {key!r}")
                try:
                    problem = tunable.check(tunable.coerce(raw), allow_unsafe=False)
                except ValueError as exc:
                    problem = str(exc)
                if problem:
                    raise ValueError(f"profiles.{pname}.values.{key}: {problem}")
        return self

    def get(self, name: str) -> Tunable:
        tunable = self.tunables.get(name)
        if tunable is None:
            raise TuneError(f"{name!r} is not in the tunables catalog; bench writes only what "
                            "the catalog lists.",
                            f"use one of: {', '.join(self.tunables)} (or add it to "
                            "tuning/tunables.yaml with its safe range).")
        return tunable

    def by_path(self, path: str) -> tuple[Tunable, str | None]:
        """The catalog entry of a concrete path (and its device), or TuneError."""
        for tunable in self.tunables.values():
            if not tunable.per_device:
                if tunable.path == path:
                    return tunable, None
                continue
            pattern = re.escape(tunable.path).replace(re.escape("{device}"),
                                                      r"([A-Za-z0-9_-]+)")
            found = re.fullmatch(pattern, path)
            if found:
                return tunable, found.group(1)
        raise TuneError(f"{path} is not a path in the tunables catalog; bench writes only "
                        "catalogued paths.", "name a tunable from `bench tune show`.")


def tuning_dir() -> Path:
    """The tunables catalog and cache recipes shipped with this bench (beside the package).
    Never the current directory or an environment variable: the catalog decides what root
    writes; another one is only taken when given explicitly (`--catalog`) and trusted."""
    return shipped.data_dir("tuning")


def check_trusted(path: Path) -> Path:
    """`path` and every directory above it must be owned by root and writable by nobody else
    (a root-owned sticky directory such as /tmp may be an ancestor), else TuneError."""
    path = Path(os.path.abspath(path))
    current = path
    while True:
        try:
            st = os.lstat(current)
        except OSError as exc:
            raise TuneError(f"Cannot read the catalog {path}: {exc.strerror}.",
                            "give the path of an existing tunables.yaml.") from None
        problem = ""
        if stat.S_ISLNK(st.st_mode):
            problem = "is a symlink"
        elif st.st_uid != 0:
            problem = f"belongs to uid {st.st_uid}, not root"
        elif st.st_mode & 0o022 and not (current != path and st.st_mode & stat.S_ISVTX):
            problem = f"is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
        if problem:
            raise TuneError(
                f"The catalog {path} is not trusted: {current} {problem}. The catalog decides "
                "what bench writes as root, so anyone who can change it controls the host.",
                "keep the catalog in a root-owned directory (chown root: / chmod go-w), or "
                "use the shipped one (drop --catalog).")
        if current.parent == current:
            return path
        current = current.parent


def parse_catalog(text: str, source: str) -> Catalog:
    try:
        data = yamlio.safe_load(text)
    except yaml.YAMLError as exc:
        raise TuneError(f"{source} is not valid YAML: {exc}", "fix the YAML syntax.") from None
    try:
        return Catalog.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{where}: {message}")
        raise TuneError(f"{source} is not a valid tunables catalog:\n  - "
                        + "\n  - ".join(problems),
                        "correct the fields named above (the file's header explains them)."
                        ) from None


@functools.cache
def _load_cached(path: str, mtime: float) -> Catalog:
    return parse_catalog(Path(path).read_text(), path)


def load(path: Path | None = None) -> Catalog:
    """The shipped catalog, or the explicitly given `path` once it is trusted."""
    if path is not None:
        check_trusted(path)
    path = path or tuning_dir() / "tunables.yaml"
    try:
        mtime = path.stat().st_mtime
    except OSError as exc:
        raise TuneError(f"Cannot read the tunables catalog {path}: {exc.strerror}.",
                        "reinstall bench (its tuning/ directory is missing).") from None
    return _load_cached(str(path), mtime)
