"""The README's main job: the built-in demo model screens a shipped recording, with no ../shared involved."""
from __future__ import annotations

import json
from importlib.resources import files

from click.testing import CliRunner

from respi_edge.runtime.builtin import builtin_checkpoint, demo_available, encoder_init, synthetic_encoder_state
from respi_edge.runtime.cli import main


def test_demo_model_ships_and_its_encoder_init_verifies():
    assert demo_available()
    ck = builtin_checkpoint()
    assert ck.meta["task"] == "sprsound_normal_vs_adventitious" and not ck.meta.get("untrained")
    assert ck.hparams.d_llm == 576 and ck.hparams.llm_lora_r == 16 and not ck.has_llm_weights
    assert len(synthetic_encoder_state(encoder_init())) == 200  # raises if the sha256 in configs/ differs


def test_readme_main_job():
    rec = files("respi_edge.configs") / "parity" / "40638274_9.7_1_p2_1684.flac"
    r = CliRunner().invoke(main, ["predict", str(rec), "--gender", "F", "--age", "9.7", "--location", "p2", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["task"] == "sprsound_normal_vs_adventitious" and 0 < out["prob"] < 1
    assert out["decision"] in ("adventitious", "normal") and out["untrained"] is False
    assert any("Q4_1" in c for c in out["caveats"])
    assert out["disclaimer"].startswith("Screening aid, not a diagnosis")
