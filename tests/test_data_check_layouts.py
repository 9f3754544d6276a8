"""``usvl data check`` on the miniature real layouts of tests/layouts.py: every planted problem is named, by file, under
its kind, and the command exits non-zero because some of them would corrupt training; clean layouts pass."""

import json

import layouts
import pytest

from usvl.cli import main

# (writer, source, --option values, --class-names); the command forwards class names to readers that map labels.
LAYOUTS = {
    "busi": (layouts.write_busi, "busi", [], "benign,malignant,normal"),
    "tn3k": (layouts.write_tn3k, "tn3k", [], None),
    "ddti": (layouts.write_ddti, "ddti", [], None),
    "ddti_xml": (layouts.write_ddti_xml, "ddti", ["version=original"], None),
    "prostate": (layouts.write_prostate, "prostate", [], None),
    "nextgen": (layouts.write_nextgen, "nextgen", ["dataset=BUSI"], "benign,malignant"),
    "folder": (layouts.write_folder, "folder", [], "benign,malignant"),
}
# Planted kind (tests/layouts.py) -> the checker's problem kinds that may name it.
EXPECTED_KINDS = {
    "truncated_image": {"unreadable"},
    "size_mismatch": {"size-mismatch", "mask-size-differs"},
    "unknown_label": {"unknown-label"},
    "missing_mask": {"missing-mask"},
    "duplicate": {"cross-split-duplicate", "duplicate"},
    "mask_01": {"mask-encoding"},
    "grey_mask": {"mask-encoding"},
    "rgb_mask": {"mask-encoding"},
    "rgba_image": {"image-encoding"},
    "image_16bit": {"high-bit-depth"},
}
NOT_PROBLEMS = {"non_ascii", "multi_mask"}  # handled by the readers and loaders, nothing to report


def run_check(key, root, tmp_path, task="segmentation"):
    _, source, options, class_names = LAYOUTS[key]
    report_path = tmp_path / f"{key}.json"
    argv = ["data", "check", "--source", source, "--root", str(root), "--task", task, "--threads", "1",
            "--json", str(report_path)]
    for option in options:
        argv += ["--option", option]
    if class_names:
        argv += ["--class-names", class_names]
    code = main(argv)
    return code, json.loads(report_path.read_text())


def named(report: dict, kinds: set[str], name: str) -> bool:
    """Whether a problem of one of ``kinds`` names ``name`` (prostate plants scan ids; rows are their slices)."""
    return any(problem["kind"] in kinds and any(n == name or n.endswith(f"/{name}") or f"/{name}/" in f"/{n}/"
                                                for n in problem["names"])
               for problem in report["problems"])


@pytest.mark.parametrize("key", list(LAYOUTS))
def test_check_names_every_planted_problem_and_fails(key, tmp_path, capsys):
    writer = LAYOUTS[key][0]
    root, planted = writer(tmp_path / key, quirks=True)
    code, report = run_check(key, root, tmp_path)
    printed = capsys.readouterr().out
    assert code == 1, printed
    checked = 0
    for kind, names in planted.items():
        if kind in NOT_PROBLEMS:
            continue
        for name in names:
            assert named(report, EXPECTED_KINDS[kind], name), (kind, name, printed)
            checked += 1
    assert checked >= 3
    assert any(problem["severity"] == "error" for problem in report["problems"])


@pytest.mark.parametrize("key", ["busi", "tn3k", "nextgen", "folder"])
def test_check_passes_a_clean_layout(key, tmp_path, capsys):
    root, planted = LAYOUTS[key][0](tmp_path / key)
    assert not planted
    code, report = run_check(key, root, tmp_path)
    assert code == 0, capsys.readouterr().out
    assert not [p for p in report["problems"] if p["severity"] == "error"]
