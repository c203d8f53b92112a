"""Pretrained files the project can use: where they live, whether they are intact, how to get them.

Files live in the torch hub cache (`$TORCH_HOME/hub/checkpoints`), under the names torch hub and
torchvision give them, so `torchvision.models.alexnet(pretrained=True)` and friends find a file
placed there by `fetch` without downloading again. A file is `present` only when the SHA-256 of
its bytes starts with its published hash prefix (torch hub's convention: the hex in its name).
A file with no published hash (the TorchScript Inception, whose URL names none) is `unverified`
when there: usable, and its full SHA-256 is recorded with every score made with it, so that
scores from different files never mix. Downloads go to a temporary file in the same folder, are
hash-checked where a hash is published, then renamed into place: no partial file is ever left.
"""

import functools
import hashlib
import os
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch.hub

from casdm.errors import MissingWeightsError
from casdm.registry import lookup

Status = Literal["present", "unverified", "missing", "corrupt"]
Progress = Callable[[int, int | None], None]  # (bytes so far, total bytes or None)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightsFile:
    """One downloadable checkpoint: registry name, hub file name, URL, SHA-256 prefix, user.

    `sha256_prefix` is "" when no hash of the file is published.
    """

    name: str
    filename: str
    url: str
    sha256_prefix: str
    used_by: str
    without: str = ""  # how to run a smoke test without this file, if there is a way


INCEPTION_WITHOUT = (
    "--set eval.random_weights=true (an untrained Inception, labelled random weights in "
    "every output: a smoke test, not a result)"
)
LPIPS_WITHOUT = (
    "--set metric.trunk=random (LPIPS on an untrained trunk, labelled random-trunk in every "
    "output: a smoke test, not a result)"
)


def _hub_file(name: str, url: str, used_by: str, without: str = "") -> WeightsFile:
    """A torch-hub style entry: the file name is the URL's last part, the hash the hex after '-'."""
    filename = url.rsplit("/", 1)[-1]
    sha256_prefix = filename.rsplit("-", 1)[-1].split(".", 1)[0]
    return WeightsFile(name, filename, url, sha256_prefix, used_by, without)


WEIGHTS: dict[str, WeightsFile] = {
    "inception": _hub_file(
        "inception",
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
        "pt_inception-2015-12-05-6726825d.pth",
        "the inception evaluator, protocol legacy_pytorch (pytorch-fid's port)",
        INCEPTION_WITHOUT,
    ),
    # clean-fid's TorchScript translation of the TF graph (cleanfid.downloads_helper's URL).
    # Its name carries no hash and none is published with it: status says "unverified".
    "inception_torchscript": WeightsFile(
        "inception_torchscript",
        "inception-2015-12-05.pt",
        "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
        "inception-2015-12-05.pt",
        "",
        "the inception evaluator, protocols clean and legacy_tensorflow",
        INCEPTION_WITHOUT,
    ),
    "alexnet": _hub_file(
        "alexnet",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        "the lpips metric with net=alex",
        LPIPS_WITHOUT,
    ),
    "vgg16": _hub_file(
        "vgg16",
        "https://download.pytorch.org/models/vgg16-397923af.pth",
        "the lpips metric with net=vgg",
        LPIPS_WITHOUT,
    ),
    "squeezenet": _hub_file(
        "squeezenet",
        "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
        "the lpips metric with net=squeeze",
        LPIPS_WITHOUT,
    ),
}


def register(file: WeightsFile) -> WeightsFile:
    """Add a pretrained file a plugin's component needs (its `required_weights` names it), so
    that `bench weights`, the checks before a study and `ensure` know it. The same entry twice
    is a no-op; another under a taken name is an error."""
    existing = WEIGHTS.get(file.name)
    if existing is not None and existing != file:
        raise ValueError(f"weights name {file.name!r} is taken ({existing.url}); choose another")
    WEIGHTS[file.name] = file
    return file


def entry(name: str) -> WeightsFile:
    """The WEIGHTS entry `name`, or UnknownNameError listing the valid names."""
    return lookup(WEIGHTS, name, "weights file")


def hub_dir() -> Path:
    """The torch hub checkpoint folder, `$TORCH_HOME/hub/checkpoints` (read at every call)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_path(name: str) -> Path:
    """Where the file `name` belongs (whether or not it is there)."""
    return hub_dir() / entry(name).filename


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file, memoised on (path, size, mtime) since hashing 500 MB takes seconds."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256(path: Path) -> str:
    """Hex SHA-256 of the file at `path`, hashed once per (path, size, mtime) in this process."""
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def status(name: str) -> Status:
    """`present` (exists, hash prefix matches), `unverified` (exists, no published hash),
    `missing`, or `corrupt` (exists, wrong hash)."""
    path = weights_path(name)
    if not path.is_file():
        return "missing"
    if not entry(name).sha256_prefix:
        return "unverified"
    return "present" if sha256(path).startswith(entry(name).sha256_prefix) else "corrupt"


def usable(state: Status) -> bool:
    """Whether a file in `state` may be used: present, or unverified (no hash to check)."""
    return state in ("present", "unverified")


def fetch(name: str, progress: Progress | None = None) -> Path:
    """Download `name` into the hub folder (always, even if present), hash-checked and atomic.

    Network failures propagate as OSError (urllib's URLError is one); a download whose hash
    does not match raises MissingWeightsError. Either way no file is left behind.
    """
    weights = entry(name)
    path = weights_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{weights.filename}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        request = urllib.request.Request(weights.url, headers={"User-Agent": "casdm-bench"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=60) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length else None
            done = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        got = digest.hexdigest()
        if not got.startswith(weights.sha256_prefix):
            raise MissingWeightsError(
                f"downloaded {weights.filename} from {weights.url} but its SHA-256 starts with "
                f"{got[: len(weights.sha256_prefix)]}, expected {weights.sha256_prefix}; the file "
                f"was discarded. Retry `bench weights fetch {name}`, or download the URL by hand "
                f"and check it."
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def ensure(name: str) -> Path:
    """Path of an intact `name`, downloading it if missing; MissingWeightsError if impossible."""
    weights = entry(name)
    path = weights_path(name)
    state = status(name)
    if usable(state):
        return path
    if state == "corrupt":
        raise MissingWeightsError(
            f"{path} (used by {weights.used_by}) is corrupt: its SHA-256 does not start with "
            f"{weights.sha256_prefix} (an interrupted copy or a different file). Delete it and run "
            f"`bench weights fetch {name}`, or replace it with a fresh download of {weights.url}."
        )
    try:
        return fetch(name)
    except OSError as err:
        raise MissingWeightsError(
            f"{weights.filename} (used by {weights.used_by}) is not in {path.parent} and could "
            f"not be downloaded from {weights.url} ({err}). On a machine with network access run "
            f"`bench weights fetch {name}` (it writes to $TORCH_HOME/hub/checkpoints), or download "
            f"the URL by hand, and put the file in {path.parent}/ (set TORCH_HOME to choose "
            f"another folder)."
            + (
                f" To try the pipeline without it, run with {weights.without}."
                if weights.without
                else ""
            )
        ) from err
