"""Prompts byte-exact against spec/prompts.tsv; DMS text exact against spec/dms_examples.tsv; user DMS builder."""
from __future__ import annotations

import json

import pytest

from conftest import shared_path
from respi_edge.runtime.dms import build_dms, dms_from_row, get_context
from respi_edge.runtime.errors import PromptError
from respi_edge.runtime.prompts import compose_prompt, get_task, load_tasks, read_tsv, task_from_prompt


def _tsv(name):
    return read_tsv(shared_path("spec", name).read_text(encoding="utf-8"))


PAPER = [f"S{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 7)]


@pytest.mark.parametrize("row", _tsv("prompts.tsv"), ids=lambda r: r["task"])
def test_paper_prompts_byte_exact(row):
    t = get_task(row["task"])
    assert t.prompt == row["prompt"]
    assert t.prompt_no_audio() == row["prompt_no_audio"]
    assert (t.positive, t.negative, t.sound) == (row["label_1"], row["label_0"], row["sound"])


def test_catalogue_has_every_paper_task_and_the_composed_one():
    ids = list(load_tasks())
    assert ids[:13] == PAPER and "sprsound_normal_vs_adventitious" in ids


def test_composed_prompt_exact():
    rows = [r for r in _tsv("prompt_parts.tsv") if r["part"] == "composed_prompt"]
    assert rows and get_task(rows[0]["key"]).prompt == rows[0]["text"]
    t = get_task("sprsound_normal_vs_adventitious")
    assert (t.positive, t.negative) == ("adventitious", "normal")


def test_compose_new_task_and_free_text():
    p = compose_prompt("My clinic's recordings.", "whether the child wheezes", ["wheeze", "no wheeze", "unsure"],
                       "lung")
    assert p.startswith("<|start_prompt|>Dataset description: My clinic's recordings. Task description: classifiy "
                        "whether the child wheezes given the following information and audio of the person's lung")
    assert p.endswith("The 3 classes are: wheeze, no wheeze, unsure. Please output the class index, from 0 to 2."
                      "<|<end_prompt>|>")
    assert task_from_prompt("  anything goes ").prompt == "  anything goes "


def test_unknown_task():
    with pytest.raises(PromptError, match="known tasks: S1"):
        get_task("S9")


def _meta(js):
    m = json.loads(js)
    return {k: (float("nan") if v is None else v) for k, v in m.items()}


@pytest.mark.parametrize("row", _tsv("dms_examples.tsv"), ids=lambda r: r["case"])
def test_reference_dms_examples_exact(row):
    assert get_context(_meta(row["metadata_json"])) == row["dms"]


def test_reference_crashes_become_named_errors():
    with pytest.raises(PromptError, match="symptom"):
        get_context({"symptoms": "cough,"})  # trailing comma: KeyError('') in the reference
    with pytest.raises(PromptError, match="location"):
        get_context({"location": "X Y Z"})
    with pytest.raises(PromptError, match="medical history"):
        get_context({"medhistory": "asthma,unicorn"})


def test_glued_tr_location():
    assert get_context({"location": "L1"}) == "Record location: leftposterior-upper lung."


@pytest.mark.parametrize("kwargs,expected", [
    ({}, ""),
    ({"gender": "M", "age": "14.7", "location": "p3"}, "Gender: M. Age: 14.7. Record location: right posterior chest."),
    ({"gender": "M", "age": "74", "location": "Lr"}, "Gender: M. Age: 74. Record location: right lateral chest."),
    ({"location": "P R L "}, "Record location: posterior right lower."),
    ({"location": "left upper back"}, "Record location: left upper back."),
    ({"history": "asthma,hbp"}, "Patient presents with the following medical history conditions: asthma, "
                                 "high blood pressure. "),
    ({"history": "none"}, "Patient presents with no medical history conditions. "),
    ({"history": "mild eczema"}, "Patient presents with the following medical history conditions: mild eczema. "),
    ({"symptoms": "drycough, fever"}, "Patient presents with the following respiratory symptoms: dry cough, fever. "),
    ({"symptoms": "none"}, "Patient presents with no obvious respiratory symptoms."),
    ({"symptoms": "night cough for two weeks"},
     "Patient presents with the following respiratory symptoms: night cough for two weeks. "),
    ({"gender": "pnts", "age": "pnts", "history": "pnts", "symptoms": "pnts"}, "Gender: pnts. Age: pnts. "),
])
def test_build_dms(kwargs, expected):
    assert build_dms(**kwargs) == expected


def test_dms_from_manifest_rows():
    assert dms_from_row({"gender": "F", "age": "9.7", "location": "p1"}) == \
        "Gender: F. Age: 9.7. Record location: left posterior chest."
    assert dms_from_row({"gender": "", "age": "", "location": ""}) == ""


# -- issue 17 item 8: codes with stray spaces map; suspicious values are named (runtime/validate.py) ----------

@pytest.mark.parametrize("loc,text", [("p1", "left posterior chest"), (" p4 ", "right lateral chest"),
                                      ("Tc", "trachea"), (" Lr", "right lateral chest"),
                                      ("P R L ", "posterior right lower"), ("R2", "rightposterior-middle lung"),
                                      ("p9", None), ("P1", None), ("left upper back", None)])
def test_location_code_text(loc, text):
    from respi_edge.runtime.dms import location_code_text

    assert location_code_text(loc) == text


def test_build_dms_maps_a_code_with_spaces_and_keeps_free_text():
    assert build_dms(location=" p3 ") == "Record location: right posterior chest."
    assert build_dms(location="p9") == "Record location: p9."  # free text, but validate names it


@pytest.mark.parametrize("kwargs,names", [
    ({"location": "p9"}, ["UnknownCodeWarning"]),
    ({"location": "R7"}, ["UnknownCodeWarning"]),
    ({"location": "Xy"}, ["UnknownCodeWarning"]),
    ({"location": "chest"}, []),
    ({"age": "-5"}, ["AgeWarning"]),
    ({"age": "5-7"}, []),
    ({"age": "0"}, []),
    ({"age": "inf"}, ["AgeWarning"]),
    ({"gender": "X"}, ["GenderWarning"]),
    ({"gender": "MALE"}, []),
    ({"symptoms": "fever,coughh"}, ["UnknownCodeWarning"]),
    ({"symptoms": "night cough"}, []),
    ({"history": "copd,asthma"}, []),
    ({"history": "respiratory_condition_asma"}, ["UnknownCodeWarning"]),
])
def test_patient_warnings(kwargs, names):
    from respi_edge.runtime.validate import patient_warnings

    assert [type(w).__name__ for w in patient_warnings(**kwargs)] == names


def test_every_known_code_passes_without_warning():
    from respi_edge.runtime.dms import SPRSOUND_LOCATIONS, maps
    from respi_edge.runtime.validate import patient_warnings

    m = maps()
    locs = list(SPRSOUND_LOCATIONS) + [k for k in m["location_code"] if not k.isdigit()]
    locs += [f"{s}{d}" for s in "LR" for d in m["location_code"] if d.isdigit()]
    assert all(patient_warnings(location=loc) == [] for loc in locs)
    assert patient_warnings(history=",".join(m["medhistory"]), symptoms=",".join(m["symptoms"])) == []
    for row in _tsv("dms_examples.tsv"):  # the reference datasets' own values
        meta = json.loads(row["metadata_json"])
        assert patient_warnings(meta.get("gender"), meta.get("age"), meta.get("location"),
                                None, None) == [], row["case"]
