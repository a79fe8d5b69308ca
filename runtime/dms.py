"""DMS text (demographics, medical history, symptoms) exactly as the reference's `get_context` (REFERENCE.md §5.2).

`get_context(metadata)` reproduces the reference byte for byte, quirks included ("Record location" without a
trailing space, glued "leftposterior-upper lung", NaN printed as "nan"). Where the reference crashes (unknown
code, trailing comma in symptoms) it raises PromptError instead. `build_dms(...)` is the user-facing builder:
each field takes dataset codes (`configs/dms_maps.tsv`) or free text used as is.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping

from .errors import PromptError
from .prompts import config_text, read_tsv

NO_HISTORY = "Patient presents with no medical history conditions. "
NO_SYMPTOMS = "Patient presents with no obvious respiratory symptoms."  # no trailing space (reference)
HISTORY = "Patient presents with the following medical history conditions: {}. "
SYMPTOMS = "Patient presents with the following respiratory symptoms: {}. "

# SPRSound stethoscope positions (shared/data/README.md): the reference has no entry for them, so they are
# worded like the reference's ICBHI table.
SPRSOUND_LOCATIONS = {"p1": "left posterior chest", "p2": "left lateral chest",
                      "p3": "right posterior chest", "p4": "right lateral chest"}
MANIFEST_FIELDS = ("gender", "age", "location", "history", "symptoms")


@functools.lru_cache(maxsize=1)
def maps() -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for r in read_tsv(config_text("dms_maps.tsv")):
        out.setdefault(r["field"], {})[r["code"]] = r["text"]  # a repeated code keeps its last value
    return out


def _isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def location_text(loc: str) -> str:
    """Reference location rules: 2-char codes (TR `L1`…`R6` glued, ICBHI table), else KAUH letters."""
    m = maps()
    if len(loc) == 2:
        if loc[1].isdigit():
            side = {"L": "left", "R": "right"}.get(loc[0])
            if side is None or loc[1] not in m["location_code"]:
                raise PromptError(f"unknown location code {loc!r}")
            return side + m["location_code"][loc[1]]
        if loc not in m["location_code"]:
            raise PromptError(f"unknown location code {loc!r} (ICBHI codes: Tc Al Ar Pl Pr Ll Lr)")
        return m["location_code"][loc]
    s = loc.replace(" ", "").replace("PLR", "PRL")
    try:
        return " ".join((m["location_kauh_1"][s[0]], m["location_kauh_2"][s[1]], m["location_kauh_3"][s[2]]))
    except (KeyError, IndexError):
        raise PromptError(f"unknown location code {loc!r} (KAUH codes look like 'P R L')") from None


def _mapped(items: list[str], table: dict[str, str], what: str) -> str:
    try:
        return ", ".join(table[i].lower() for i in items)
    except KeyError as e:
        raise PromptError(f"unknown {what} code {e.args[0]!r}; known codes: {', '.join(table)}") from None


def history_text(v) -> str:
    if _isnan(v) or v == "" or "None" in v or "none" in v:
        return NO_HISTORY
    if "pnts" in v:
        return ""
    v = v[1:] if v.startswith(",") else v
    v = v[:-1] if v.endswith(",") else v
    return HISTORY.format(_mapped(v.split(","), maps()["medhistory"], "medical history"))


def symptoms_text(v) -> str:
    if _isnan(v) or v == "" or "None" in v:
        return NO_SYMPTOMS
    if "pnts" in v:
        return ""
    v = v[1:] if v.startswith(",") else v
    return SYMPTOMS.format(_mapped(v.split(","), maps()["symptoms"], "symptom"))


def get_context(metadata: Mapping) -> str:
    """The reference `get_context`: fields in fixed order, each only if its key is present."""
    out = ""
    if "gender" in metadata:
        out += f"Gender: {metadata['gender']}. "
    if "age" in metadata:
        out += f"Age: {metadata['age']}. "
    if "device" in metadata:
        out += f"Recording device: {metadata['device']}. "
    if "vaccination" in metadata:
        out += f"Vaccination status: {metadata['vaccination']}. "
    if "location" in metadata:
        out += f"Record location: {location_text(metadata['location'])}."
    if "medhistory" in metadata:
        out += history_text(metadata["medhistory"])
    if "symptoms" in metadata:
        out += symptoms_text(metadata["symptoms"])
    return out


def _codes(text: str, table: Mapping[str, str]) -> bool:
    items = text.strip(",").split(",")
    return bool(items) and all(i in table for i in items)


def location_code_text(loc: str) -> str | None:
    """The text of a location code (SPRSound p1-p4 or a reference code, spaces around it ignored), else None."""
    code = loc.strip()
    if code in SPRSOUND_LOCATIONS:
        return SPRSOUND_LOCATIONS[code]
    for c in dict.fromkeys((loc, code)):
        try:
            return location_text(c)
        except PromptError:
            pass
    return None


def _user_location(loc: str) -> str:
    text = location_code_text(loc)
    return loc.strip() if text is None else text  # not a code: free text, used as is


def _user_list(text: str, table: Mapping[str, str], reference, sentence: str) -> str:
    t = text.strip()
    if t.lower() in ("none", "no", "") or "pnts" in t:
        return reference("None" if t.lower() in ("none", "no") else t)
    if _codes(t.replace(" ", ""), table):
        return reference(t.replace(" ", ""))
    return sentence.format(t.rstrip(". "))


def build_dms(gender: str | None = None, age: str | float | None = None, location: str | None = None,
              history: str | None = None, symptoms: str | None = None) -> str:
    """User-facing DMS: codes of dms_maps.tsv (and SPRSound p1–p4) are mapped, anything else is used as is.

    history / symptoms: 'none' gives the reference's "no ..." sentence; a comma list of known codes is mapped
    and lower-cased like the reference; other text goes into the same sentence unchanged. Missing fields are
    left out; all missing gives the empty DMS."""
    meta: dict = {}
    if gender is not None and str(gender) != "":
        meta["gender"] = gender
    if age is not None and str(age) != "":
        meta["age"] = age
    out = get_context(meta)
    if location is not None and location.strip():
        out += f"Record location: {_user_location(location)}."
    if history is not None:
        out += _user_list(history, maps()["medhistory"], history_text, HISTORY)
    if symptoms is not None:
        out += _user_list(symptoms, maps()["symptoms"], symptoms_text, SYMPTOMS)
    return out


def dms_from_row(row: Mapping[str, str]) -> str:
    """DMS of a dataset-manifest row (optional columns gender, age, location, history, symptoms; '' = missing)."""
    fields = {k: row.get(k) for k in MANIFEST_FIELDS if row.get(k) not in (None, "")}
    return build_dms(**fields)
