"""Argument and patient-input checks the CLI runs before loading any model (issue 17, items 2, 6 and 8).

Pure functions. Anything that cannot give a trustworthy number raises a named error (the CLI prints one line,
exit 2); anything merely unusual is returned as a named warning (`InputWarning` subclass) for the caller to print
on stderr (`warning: <Name>: <message>`): the DMS text reaches the LLM as is, and a code that looks right but is
none (`--location p9`) or an age like `abc` moves P(condition) without a word otherwise.
"""
from __future__ import annotations

import difflib
import math
import re

import numpy as np

from . import contract as C
from .dms import SPRSOUND_LOCATIONS, location_code_text, maps
from .errors import PromptError, RespiEdgeError

MIN_HOP_SECONDS = 0.1  # a live window every 0.1 s is already ~80x overlapped; below that it is a flood of lines
MAX_AGE_YEARS = 120.0
GENDER_FORMS = ("M", "F", "male", "female", "other", "pnts")  # the forms the reference's datasets use (any case)
NOT_GIVEN = ("pnts",)  # "prefer not to say", as the reference's datasets write it


class InvalidArgumentError(RespiEdgeError):
    """A command-line value that cannot give a trustworthy result (NaN, out of range, a loop that never ends)."""


class PromptTooLongError(PromptError):
    """Prompt + DMS + audio tokens do not fit the LLM's positions."""


class InputWarning(UserWarning):
    """Unusual input that is still scored; printed as `warning: <Name>: <message>`."""


class UnknownCodeWarning(InputWarning):
    """A DMS value that looks like a dataset code but is none of them (it is used as free text)."""


class AgeWarning(InputWarning):
    """An age that is not a non-negative number or range (or an implausible one)."""


class GenderWarning(InputWarning):
    """A gender in none of the forms the reference's datasets use."""


class PromptTruncatedWarning(InputWarning):
    """Text longer than the tokenizer's limit: like the reference, only its first tokens are used."""


# -- arguments -------------------------------------------------------------------------------------

def _finite(name: str, v) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(x):
        raise InvalidArgumentError(f"{name} must be a finite number, got {v!r}")
    return x


def check_hop(h) -> float:
    """--hop: seconds between live windows, finite and at least MIN_HOP_SECONDS (0 or less never ends)."""
    x = _finite("--hop", h)
    if x < MIN_HOP_SECONDS:
        raise InvalidArgumentError(f"--hop must be at least {MIN_HOP_SECONDS} s (seconds between windows), got {h!r}")
    return x


def check_duration(d) -> float | None:
    """--duration: None (until stopped) or finite and at least one window (8.18 s), else nothing would be scored."""
    if d is None:
        return None
    x = _finite("--duration", d)
    if x < C.WINDOW_SECONDS:
        raise InvalidArgumentError(f"--duration must be at least {C.WINDOW_SECONDS} s (one window) or left out to run "
                                   f"until stopped, got {d!r}")
    return x


def check_threshold(t, name: str = "--threshold") -> float | None:
    """--threshold: None (the model's) or a probability in [0, 1]; NaN would call everyone normal."""
    if t is None:
        return None
    x = _finite(name, t)
    if not 0.0 <= x <= 1.0:
        raise InvalidArgumentError(f"{name} must be a probability between 0 and 1, got {t!r}")
    return x


def check_nonnegative(v, name: str) -> float | None:
    """A budget or tolerance (--budget, --max-drift): None or a finite number >= 0 (NaN would pass every gate)."""
    if v is None:
        return None
    x = _finite(name, v)
    if x < 0:
        raise InvalidArgumentError(f"{name} must be 0 or more, got {v!r}")
    return x


def json_safe(obj):
    """`obj` with every non-finite float (NaN, ±Inf) as None, so `json.dumps(..., allow_nan=False)` gives strict
    JSON (a bare NaN is not JSON, and strict parsers reject the whole document)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if math.isfinite(x) else None
    return obj


def prompt_length_check(n_tokens: int, max_positions: int, *, reserved: int = C.N_AUDIO_TOKENS,
                        truncate_at: int | None = C.TOKENIZER_MAX_LENGTH, what: str = "prompt") -> list[InputWarning]:
    """Tokens of one text part against the LLM's context.

    `n_tokens`: the part untruncated; `reserved`: positions the rest of the sequence takes (the 64 audio tokens,
    plus the other text part); `truncate_at`: the tokenizer's cut (the reference's 2048). Raises PromptTooLongError
    when the sequence cannot fit `max_positions`; warns when the text will be cut."""
    used = min(n_tokens, truncate_at) if truncate_at is not None else n_tokens
    if used + reserved > max_positions:
        raise PromptTooLongError(f"the {what} takes {used} tokens and the rest of the sequence {reserved}: more than "
                                 f"the LLM's {max_positions} positions; shorten the {what}")
    if truncate_at is not None and n_tokens > truncate_at:
        return [PromptTruncatedWarning(f"the {what} is {n_tokens} tokens; like the reference, only its first "
                                       f"{truncate_at} are used (the rest is cut): shorten it to keep its end")]
    return []


# -- patient input (DMS fields) ------------------------------------------------------------------

_CODE_LIKE_LOCATION = (re.compile(r"[A-Za-z]{1,2}\d{1,2}"),  # p9, L7, R0: SPRSound / TR style
                       re.compile(r"[A-Za-z]{1,2}"),  # Tx, X: ICBHI style
                       re.compile(r"[A-Za-z](\s+[A-Za-z]){1,3}\s*"))  # 'P X L': KAUH style


def location_warnings(location: str | None) -> list[InputWarning]:
    if location is None or not location.strip():
        return []
    loc = location.strip()
    if location_code_text(location) is not None or not any(p.fullmatch(loc) for p in _CODE_LIKE_LOCATION):
        return []
    hint = f" (did you mean {loc.lower()!r}?)" if loc.lower() in SPRSOUND_LOCATIONS else ""
    return [UnknownCodeWarning(
        f"--location {location!r} looks like a location code but is none{hint}: known codes are p1-p4 (SPRSound), "
        f"L1-L6/R1-R6, {' '.join(k for k in maps()['location_code'] if not k.isdigit())} (ICBHI) and KAUH letters "
        f"like 'P R L'; it is used as free text")]


def _list_warnings(option: str, text: str | None, table: dict[str, str], other: tuple[str, dict[str, str]]
                   ) -> list[InputWarning]:
    """Comma lists of code-like words where some word is no code (a typo, or a code of another field)."""
    if text is None:
        return []
    t = text.strip()
    if t.lower() in ("", "none", "no") or "pnts" in t:
        return []
    items = [i.strip() for i in t.strip(",").split(",")]
    if not all(re.fullmatch(r"[A-Za-z_]+", i) for i in items):
        return []  # a sentence: free text, used as is
    unknown = [i for i in items if i not in table]
    if not unknown:
        return []
    close = {i: difflib.get_close_matches(i, list(table), n=1, cutoff=0.8) for i in unknown}
    elsewhere = [i for i in unknown if i in other[1]]
    if not (len(items) > 1 or any(close.values()) or elsewhere or any("_" in i for i in unknown)):
        return []  # one ordinary word (e.g. "wheezing"): free text

    def hint(i: str) -> str:
        if i in other[1]:
            return f"{i!r} (a {other[0]} code)"
        return f"{i!r}" + (f" (did you mean {close[i][0]!r}?)" if close[i] else "")

    hints = ", ".join(hint(i) for i in unknown)
    return [UnknownCodeWarning(f"{option} {text!r}: {hints} is no known code, so the whole value is used as free "
                               f"text; known codes: {', '.join(table)}")]


def age_warnings(age) -> list[InputWarning]:
    if age is None or str(age).strip() == "":
        return []
    a = str(age).strip()
    if a in NOT_GIVEN:
        return []
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(?:-\s*(\d+(?:\.\d+)?)|(\+))?", a)
    if m is None:
        return [AgeWarning(f"--age {age!r} is not a non-negative number (e.g. 7, 0.75) or range (e.g. 5-7, 45-54, "
                           f"80+); the model reads it as text")]
    lo = float(m.group(1))
    hi = float(m.group(2)) if m.group(2) else lo
    if hi < lo:
        return [AgeWarning(f"--age {age!r}: the range ends before it starts; write it as low-high")]
    if hi > MAX_AGE_YEARS:
        return [AgeWarning(f"--age {age!r} is more than {MAX_AGE_YEARS:g} years: check the value (the unit is years)")]
    return []


def gender_warnings(gender) -> list[InputWarning]:
    if gender is None or str(gender).strip() == "":
        return []
    if str(gender).strip().lower() in {g.lower() for g in GENDER_FORMS}:
        return []
    return [GenderWarning(f"--gender {gender!r} is none of the forms the model was trained with "
                          f"({', '.join(GENDER_FORMS)}, any case); the model reads it as text")]


def patient_warnings(gender=None, age=None, location=None, history=None, symptoms=None) -> list[InputWarning]:
    """Warnings for the DMS fields `build_dms` takes (same arguments); empty when all look like dataset values."""
    return (gender_warnings(gender) + age_warnings(age) + location_warnings(location)
            + _list_warnings("--history", history, maps()["medhistory"], ("--symptoms", maps()["symptoms"]))
            + _list_warnings("--symptoms", symptoms, maps()["symptoms"], ("--history", maps()["medhistory"])))


def format_warning(w: InputWarning) -> str:
    """The one stderr line for a warning."""
    return f"warning: {type(w).__name__}: {w}"
