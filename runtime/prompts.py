"""Task catalogue and prompt composition (REFERENCE.md §5.1), read from the shipped configs/.

Prompts are composed from `prompt_parts.tsv` (template + dataset D + task C + classes K + sound T) exactly as the
reference's `get_prompt` does, quirks included ("classifiy", double spaces, `<|<end_prompt>|>`); the 13 paper
prompts are checked byte for byte against `prompts.tsv` in the tests.
"""
from __future__ import annotations

import functools
import importlib.resources
from dataclasses import asdict, dataclass

from .errors import PromptError

_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}


def unescape(field: str) -> str:
    """TSV field escapes: \\t \\n \\r \\\\ (REFERENCE.md companion-file rules); no stripping."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        c = field[i]
        if c == "\\" and i + 1 < len(field) and field[i + 1] in _ESCAPES:
            out.append(_ESCAPES[field[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def read_tsv(text: str) -> list[dict[str, str]]:
    """UTF-8 TSV, one header row, no quoting; trailing spaces are data."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    header = lines[0].rstrip("\r").split("\t")
    rows = []
    for ln in lines[1:]:
        cells = ln.rstrip("\r").split("\t")
        cells += [""] * (len(header) - len(cells))
        rows.append({h: unescape(c) for h, c in zip(header, cells)})
    return rows


def config_text(name: str) -> str:
    return (importlib.resources.files("respi_edge.configs") / name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class PromptParts:
    template_audio: str
    template_no_audio: str
    datasets: dict
    tasks: dict  # C: task description by label key
    classes: dict  # K: class list by label key
    positive: dict  # C1
    negative: dict  # C2


@functools.lru_cache(maxsize=1)
def prompt_parts() -> PromptParts:
    rows = read_tsv(config_text("prompt_parts.tsv"))
    by: dict[str, dict[str, str]] = {}
    for r in rows:
        by.setdefault(r["part"], {})[r["key"]] = r["text"]
    return PromptParts(by["template_audio"]["-"], by["template_no_audio"]["-"], by["D"], by["C"], by["K"],
                       by.get("C1", {}), by.get("C2", {}))


def compose_prompt(dataset_desc: str, task_desc: str, classes: str | list[str], sound: str,
                   use_audio: bool = True) -> str:
    """The reference template filled in; `classes` lists the positive class first (it becomes index 1)."""
    k = classes if isinstance(classes, str) else ", ".join(classes)
    n = len(k.split(","))
    pp = prompt_parts()
    tpl = pp.template_audio if use_audio else pp.template_no_audio
    return (tpl.replace("{D}", dataset_desc).replace("{C}", task_desc).replace("{T}", sound)
            .replace("{N}", str(n)).replace("{K}", k).replace("{M}", str(n - 1)))


@dataclass(frozen=True)
class Task:
    id: str
    dataset: str
    label: str  # label key of prompt_parts (covid, copd, ...)
    sound: str
    prompt: str
    positive: str  # class index 1
    negative: str  # class index 0
    n_classes: int = 2
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def prompt_no_audio(self) -> str:
        pp = prompt_parts()
        return compose_prompt(pp.datasets[self.dataset], pp.tasks[self.label], pp.classes[self.label], self.sound,
                              use_audio=False)


def _task(row: dict[str, str]) -> Task:
    pp = prompt_parts()
    d, lab = row["dataset"], row["label"]
    for table, key, what in ((pp.datasets, d, "dataset description"), (pp.tasks, lab, "task description"),
                             (pp.classes, lab, "class list")):
        if key not in table:
            raise PromptError(f"task {row['id']}: no {what} {key!r} in prompt_parts.tsv")
    k = pp.classes[lab]
    names = [c.strip() for c in k.split(",")]
    return Task(id=row["id"], dataset=d, label=lab, sound=row["sound"],
                prompt=compose_prompt(pp.datasets[d], pp.tasks[lab], k, row["sound"]),
                positive=pp.positive.get(lab, names[0]), negative=pp.negative.get(lab, names[-1]),
                n_classes=len(names), note=row.get("note", ""))


@functools.lru_cache(maxsize=1)
def load_tasks() -> dict[str, Task]:
    """Every task of configs/tasks.tsv, in file order."""
    return {r["id"]: _task(r) for r in read_tsv(config_text("tasks.tsv"))}


def get_task(task_id: str) -> Task:
    tasks = load_tasks()
    if task_id not in tasks:
        raise PromptError(f"unknown task {task_id!r}; known tasks: {', '.join(tasks)} "
                          f"(or give a free-text prompt with --prompt)")
    return tasks[task_id]


def task_from_prompt(prompt: str, positive: str = "class 1", negative: str = "class 0") -> Task:
    """A user's free-text prompt, used as is (no template)."""
    return Task(id="custom", dataset="custom", label="custom", sound="", prompt=prompt, positive=positive,
                negative=negative, note="free-text prompt")
