"""Typed errors. Every error Parity raises on purpose derives from :class:`ParityError`.

Errors say *what* is wrong, *where* (file, object, feature, field) and *how to fix it*.
This module imports nothing from the rest of Parity, so every layer may use it.
"""

from __future__ import annotations

from dataclasses import dataclass


class ParityError(Exception):
    """Root of every error Parity raises on purpose.

    ``hint`` is a one-line suggestion shown by the CLI under the message.
    """

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Problem:
    """One problem found in a definition set.

    ``kind``/``name`` name the object (``view user_engagement``, ``source video_events``),
    ``feature`` and ``field`` narrow it down, ``fix`` says what to do.
    """

    message: str
    file: str | None = None
    kind: str | None = None
    name: str | None = None
    feature: str | None = None
    field: str | None = None
    fix: str | None = None

    @property
    def where(self) -> str:
        parts = []
        if self.kind and self.name:
            parts.append(f"{self.kind} {self.name}")
        if self.feature:
            parts.append(f"feature {self.feature}")
        if self.field:
            parts.append(f"field {self.field}")
        located = ", ".join(parts)
        if self.file and located:
            return f"{self.file}: {located}"
        return self.file or located

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.fix:
            text += f" (fix: {self.fix})"
        return text


class DefinitionError(ParityError):
    """One or more problems in the feature definitions. All are collected before raising."""

    def __init__(self, problems: list[Problem] | Problem) -> None:
        self.problems: list[Problem] = [problems] if isinstance(problems, Problem) else list(problems)
        if len(self.problems) == 1:
            message = str(self.problems[0])
        else:
            lines = [f"{len(self.problems)} problems in the definitions:"]
            lines += [f"  - {p}" for p in self.problems]
            message = "\n".join(lines)
        super().__init__(message, hint="fix the definitions under feature_defs/ and run `parity plan` again")


class ExpressionError(ParityError):
    """An expression is outside Parity's portable subset, or does not type-check.

    ``fragment`` is the offending piece of the expression text.
    """

    def __init__(self, message: str, *, fragment: str, position: int | None = None, fix: str | None = None) -> None:
        self.fragment = fragment
        self.position = position
        self.reason = message
        self.fix = fix
        super().__init__(f"{message}: {fragment!r}" + (f" (fix: {fix})" if fix else ""))


class ConfigError(ParityError):
    """feature_store.yaml (or another config) is invalid."""


class RegistryError(ParityError):
    """The registry store failed or holds something unexpected."""


class RegistryConflictError(RegistryError):
    """Another process changed the registry between this process' read and its write."""


class PlanRefused(ParityError):
    """``plan``/``apply`` refuse a change (for example a change of meaning without a version bump)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        lines = [str(p) for p in self.problems]
        message = lines[0] if len(lines) == 1 else "\n".join(
            [f"{len(lines)} changes refused:"] + [f"  - {line}" for line in lines]
        )
        super().__init__(message, hint="bump the view's `version` to change what a feature means")


class Unsupported(ParityError):
    """An engine cannot run a construct. A typed, tested outcome, never a silent fallback."""

    def __init__(self, feature: str, engine: str, reason: str) -> None:
        self.feature = feature
        self.engine = engine
        self.reason = reason
        super().__init__(f"{engine} cannot run {feature}: {reason}")
