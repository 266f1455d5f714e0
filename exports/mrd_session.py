"""What an inline MRD session hands to a config and gets back: parameters, models, the reply.

The scanner may follow the XML header with one text message of JSON parameters, as FIRE sends
them (``{"parameters": {...}}``, values often strings such as ``"2"`` or ``"100,180,260"``; keys
at the top level are accepted too, ``parameters`` wins). ``parameters.config`` (or a non-empty
``customconfig``) replaces the config name, as in python-ismrmrd-server. Every getter of
:class:`SessionParameters` converts and checks one key and raises :class:`SessionError` naming
the key, what was expected and what was found; the server sends that message back as ``ERR``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from exports.aif_pipeline import AIFPipeline
from exports.mapping_pipeline import MyocardiumSegmenter
from formats.mrd.stream import ImageMessage

__all__ = ["InlineModels", "Reply", "SessionError", "SessionParameters"]


class SessionError(ValueError):
    """A session that cannot be served as asked; the message is sent to the scanner."""


@dataclass(frozen=True)
class InlineModels:
    """The models the server loaded at start (resident for every session).

    Attributes:
        aif: the AIF pipeline around the AIF artifact, or None (``inlinecmr_aif`` refused).
        myocardium: the myocardium segmenter, or None (whole-slice maps only).
        aif_sha256, myocardium_sha256: the artifacts' ``weights_sha256`` ("" if absent).
        aif_backend: what runs the AIF model (``deployment.onnx_backend.BackendChoice.name``).
    """

    aif: AIFPipeline | None = None
    myocardium: MyocardiumSegmenter | None = None
    aif_sha256: str = ""
    myocardium_sha256: str = ""
    aif_backend: str = ""


@dataclass
class Reply:
    """What a config sends back, in this order, before the closing message.

    Attributes:
        images: new image series (in the input's geometry).
        texts: text messages (JSON figures; ``WRN ...`` warnings).
        summary: short figures for the server's session log.
    """

    images: list[ImageMessage] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _words(value: str) -> list[str]:
    return [w for w in value.replace(",", " ").replace(";", " ").split() if w]


@dataclass(frozen=True)
class SessionParameters:
    """The JSON parameters of a session (empty when the scanner sent none)."""

    values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_text(cls, text: str) -> SessionParameters:
        """Parse the parameters text message.

        Raises:
            SessionError: not a JSON object.

        Example:
            >>> p = SessionParameters.from_text('{"parameters": {"n_pd_frames": "2"}}')
            >>> p.integer("n_pd_frames", 0)
            2
        """
        try:
            document = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise SessionError(f"parameters text is not JSON ({exc}): {text[:80]!r}") from exc
        if not isinstance(document, dict):
            raise SessionError(
                f"parameters: expected a JSON object; found {type(document).__name__}"
            )
        nested = document.get("parameters", {})
        if not isinstance(nested, dict):
            raise SessionError("parameters: 'parameters' must be a JSON object")
        return cls({**{k: v for k, v in document.items() if k != "parameters"}, **nested})

    def config(self) -> str | None:
        """The config named by the parameters (``customconfig`` over ``config``), if any."""
        custom = str(self.values.get("customconfig") or "").strip()
        return custom or (str(self.values.get("config") or "").strip() or None)

    def _fail(self, key: str, expected: str) -> SessionError:
        return SessionError(f"parameter {key!r}: expected {expected}; found {self.values[key]!r}")

    def integer(self, key: str, default: int | None, minimum: int | None = None) -> int | None:
        """An integer (``3`` or ``"3"``), at least ``minimum``."""
        if key not in self.values:
            return default
        value = self.values[key]
        try:
            number = int(str(value).strip()) if not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is None or (minimum is not None and number < minimum):
            raise self._fail(key, "an integer" + (f" >= {minimum}" if minimum is not None else ""))
        return number

    def number(
        self, key: str, default: float | None, low: float | None = None, high: float | None = None
    ) -> float | None:
        """A finite number in the open interval (``low``, ``high``) where given."""
        if key not in self.values:
            return default
        value = self.values[key]
        try:
            number = float(str(value).strip()) if not isinstance(value, bool) else float("nan")
        except ValueError:
            number = float("nan")
        bounded = (low is None or number > low) and (high is None or number < high)
        if number != number or number in (float("inf"), float("-inf")) or not bounded:
            raise self._fail(key, "a number" + (f" in ({low}, {high})" if low is not None else ""))
        return number

    def numbers(self, key: str) -> list[float] | list[list[float]] | None:
        """A list of numbers (``[100, 180]``, ``"100,180"``), or a list of such lists."""
        if key not in self.values:
            return None
        value = self.values[key]
        try:
            if isinstance(value, str):
                text = value.strip()
                value = json.loads(text) if text.startswith("[") else _words(text)
            if (
                isinstance(value, Sequence)
                and value
                and all(isinstance(v, Sequence) and not isinstance(v, str) for v in value)
            ):
                return [[float(x) for x in v] for v in value]
            if isinstance(value, Sequence) and not isinstance(value, str):
                return [float(x) for x in value]
        except (TypeError, ValueError):
            pass
        raise self._fail(key, "a list of numbers (or one list per slice)")

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        """One of ``choices`` (case-insensitive)."""
        if key not in self.values:
            return default
        value = str(self.values[key]).strip().lower()
        if value not in choices:
            raise self._fail(key, f"one of {list(choices)}")
        return value

    def words(self, key: str, choices: Sequence[str]) -> list[str] | None:
        """A list of words from ``choices`` (``["basal", "mid"]`` or ``"basal,mid"``)."""
        if key not in self.values:
            return None
        value = self.values[key]
        items = _words(value) if isinstance(value, str) else value
        if not isinstance(items, list) or not all(str(v).lower() in choices for v in items):
            raise self._fail(key, f"a list of {list(choices)}")
        return [str(v).lower() for v in items]
