"""The shipped LLM refinements: one line per description sentence, with provenance, and guard verdicts that hold."""

import json

import pytest
from shipped_configs import CONFIGS

from usvl.text.guard import check_refinement
from usvl.text.prompts import load_descriptions, load_refinements

REFINED = sorted((CONFIGS / "text" / "refined").glob("*.jsonl"))


def test_every_preset_has_a_refinement():
    presets = {p.stem for p in (CONFIGS / "text").glob("*.yaml")}
    assert presets and presets == {path.name.split(".")[0] for path in REFINED}


@pytest.mark.parametrize("path", REFINED, ids=lambda p: p.name.split(".")[0])
def test_refinement_covers_its_descriptions_with_provenance(path):
    descriptions = load_descriptions(CONFIGS / "text" / f"{path.name.split('.')[0]}.yaml")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    sentences = [s for name in descriptions.sentences for s in descriptions.sentences[name]]
    assert [r["source"] for r in records] == sentences
    for record in records:
        assert record["model"]["sha256"] and record["prompt"] and record["date"].startswith("2026-")
        if record["candidate"] is not None:  # today's guard gives the stored verdict
            assert check_refinement(record["source"], record["candidate"]).accepted is record["accepted"]
        assert record["refined"] == (record["candidate"] if record["accepted"] else record["source"])
    mapping, provenance = load_refinements(path)
    refined, replaced = descriptions.with_refinements(mapping, provenance)
    assert replaced == sum(r["accepted"] and r["refined"] != r["source"] for r in records) > 0
