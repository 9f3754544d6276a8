"""The static refiner, the provenance JSONL (atomic, never overwritten) and ``usvl text refine``."""

import hashlib
import json
from pathlib import Path

import pytest
from shipped_configs import CONFIGS

from usvl.cli import main
from usvl.text.refine import load_texts, refine_texts, write_jsonl_new
from usvl.text.refiners import StaticRefiner

FAITHFUL = ("A solid hypoechoic thyroid nodule with punctate echogenic foci.",
            "A hypoechoic, solid thyroid nodule containing punctate echogenic foci.")
CONTRADICTED = ("A malignant thyroid nodule with spiculated margins.", "A benign thyroid nodule with smooth margins.")


@pytest.fixture
def refinements(tmp_path):
    path = tmp_path / "refinements.jsonl"
    path.write_text("".join(json.dumps({"source": s, "refined": r}) + "\n" for s, r in (FAITHFUL, CONTRADICTED)))
    return path


def test_static_refinements_are_guarded_and_carry_provenance(refinements):
    items = [{"text": FAITHFUL[0], "class": "malignant"}, {"text": CONTRADICTED[0]}, {"text": "Not in the file."}]
    records, summary = refine_texts(items, StaticRefiner(refinements), "Rewrite.")
    kept, rejected, missing = records
    assert kept["accepted"] and kept["refined"] == FAITHFUL[1] and kept["class"] == "malignant"
    assert not rejected["accepted"] and rejected["refined"] == CONTRADICTED[0]
    assert rejected["candidate"] == CONTRADICTED[1] and len(rejected["reasons"]) == 2
    assert missing["reasons"] == [f"refiner failed: {refinements} has no refinement for this text"]
    assert kept["model"] == {"id": f"static:{refinements}",
                             "sha256": hashlib.sha256(refinements.read_bytes()).hexdigest()}
    assert kept["prompt"] == "Rewrite." and kept["date"][:2] == "20" and kept["refiner"] == "static"
    assert (summary.total, summary.accepted, summary.rejected) == (3, 1, 2)
    assert [r["index"] for r in summary.rejections] == [1, 2]
    assert "1 accepted, 2 rejected" in summary.format()


def test_output_is_written_whole_and_never_overwritten(tmp_path):
    path = write_jsonl_new(tmp_path / "out" / "refined.jsonl", [{"a": 1}, {"b": "é"}])
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == [{"a": 1}, {"b": "é"}]
    with pytest.raises(FileExistsError, match="never overwritten"):
        write_jsonl_new(path, [{"c": 3}])
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0]) == {"a": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["refined.jsonl"]


def test_texts_load_from_jsonl_yaml_lists_and_class_descriptions(tmp_path):
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('"plain text"\n{"text": "with id", "id": 7}\n')
    assert load_texts(jsonl) == [{"text": "plain text"}, {"text": "with id", "id": 7}]
    listed = tmp_path / "t.yaml"
    listed.write_text("texts: [one, two]\n")
    assert [item["text"] for item in load_texts(listed)] == ["one", "two"]
    described = load_texts(Path(__file__).parents[1] / "configs/text/thyroid_tirads.yaml")
    assert {item["class"] for item in described} == {"benign", "malignant"} and len(described) == 12
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"id": 1}\n')
    with pytest.raises(ValueError, match="b.jsonl: entry 1 has no 'text'"):
        load_texts(broken)


def test_cli_refines_with_the_static_refiner_and_refuses_to_overwrite(tmp_path, refinements, capsys):
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": s}) + "\n" for s, _ in (FAITHFUL, CONTRADICTED)))
    output = tmp_path / "refined.jsonl"
    args = ["text", "refine", "--refiner", "static", "--input", str(texts), "--output", str(output),
            "--refinements", str(refinements)]
    assert main(args) == 0
    assert [json.loads(line)["accepted"] for line in output.read_text().splitlines()] == [True, False]
    assert "1 accepted, 1 rejected" in capsys.readouterr().out
    before = output.read_bytes()
    assert main(args) == 2
    assert "exists; refinements are never overwritten" in capsys.readouterr().err
    assert output.read_bytes() == before


def test_cli_names_the_missing_option(tmp_path, capsys):
    code = main(["text", "refine", "--refiner", "openai", "--input", "x.jsonl", "--output", str(tmp_path / "o")])
    assert code == 2 and "needs --model, --base-url" in capsys.readouterr().err


def test_cli_reads_refiner_settings_from_a_config_and_flags_override(tmp_path, refinements, capsys):
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"text": FAITHFUL[0]}) + "\n")
    config = tmp_path / "refiner.yaml"
    config.write_text(f"name: static\npath: {tmp_path / 'nowhere.jsonl'}\n")
    output = tmp_path / "refined.jsonl"
    args = ["text", "refine", "--config", str(config), "--input", str(texts), "--output", str(output)]
    assert main(args) == 2 and "nowhere.jsonl" in capsys.readouterr().err
    assert main([*args, "--refinements", str(refinements)]) == 0
    assert json.loads(output.read_text())["accepted"] is True


def test_shipped_refiner_configs_parse():
    from usvl.text.cli import build_parser, refiner_spec

    for config in sorted((CONFIGS / "text" / "refiners").glob("*.yaml")):
        options = build_parser().parse_args(["refine", "--config", str(config), "--input", "x", "--output", "y"])
        spec = refiner_spec(options)
        assert spec["name"] == "transformers" and spec["model"] and spec["gguf_file"].endswith(".gguf")
