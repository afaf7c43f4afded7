"""Official network weights: where they come from, where they are kept, how to get them.

Weights live in one cache folder, ``$THREER_ROS_WEIGHTS`` or ``~/.cache/threer_ros/weights``:

* ``fast3r``: ``Fast3R_ViT_Large_512/`` (``config.json`` + ``model.safetensors``), from the
  Hugging Face repository ``jedyang97/Fast3R_ViT_Large_512``;
* ``mast3r``: ``MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric/`` (same folder layout), from
  ``naver/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric``;
* ``pow3r``: ``Pow3R_ViTLarge_BaseDecoder_512_linear.pth`` from NAVER LABS Europe's server.

Hugging Face downloads go through ``huggingface_hub`` (its cache, token and ``HF_HUB_OFFLINE``
apply); a copy already in the Hugging Face cache is found too. Offline, a download fails at
once and says where to put manually downloaded files. All three are non-commercial licences.

``threer-ros weights random NAME --out PATH`` writes the released architecture with random
weights in the official format instead: for timing the node and trying the pipeline where the
weights cannot be had (its clouds are meaningless).
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from threer_ros.cli import command_parser
from threer_ros.models.released import RELEASED

HF_FOLDER_FILES = ("config.json", "model.safetensors")


class WeightsError(RuntimeError):
    """Weights that are missing or cannot be fetched (the message says what to do)."""


@dataclass(frozen=True)
class WeightsEntry:
    """One released checkpoint.

    Attributes:
        name: Backend name (``fast3r``, ``mast3r``, ``pow3r``).
        local_name: File or folder name inside :func:`weights_dir`.
        hf_repo: Hugging Face repository holding ``config.json`` + ``model.safetensors``.
        url: HTTPS address of a single ``.pth`` file.
        licence: Licence of the weights, as published.
    """

    name: str
    local_name: str
    hf_repo: str | None = None
    url: str | None = None
    licence: str = ""

    def source(self) -> str:
        return f"https://huggingface.co/{self.hf_repo}" if self.hf_repo else str(self.url)


ENTRIES: dict[str, WeightsEntry] = {
    "fast3r": WeightsEntry("fast3r", "Fast3R_ViT_Large_512",
                           hf_repo="jedyang97/Fast3R_ViT_Large_512",
                           licence="FAIR Noncommercial Research License"),
    "mast3r": WeightsEntry("mast3r", "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric",
                           hf_repo="naver/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric",
                           licence="CC BY-NC-SA 4.0 (and the training data licences)"),
    "pow3r": WeightsEntry("pow3r", "Pow3R_ViTLarge_BaseDecoder_512_linear.pth",
                          url="https://download.europe.naverlabs.com/ComputerVision/Pow3R/"
                              "Pow3R_ViTLarge_BaseDecoder_512_linear.pth",
                          licence="CC BY-NC-SA 4.0"),
}


def weights_dir() -> Path:
    """The cache folder (``$THREER_ROS_WEIGHTS`` or ``~/.cache/threer_ros/weights``)."""
    env = os.environ.get("THREER_ROS_WEIGHTS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "threer_ros" / "weights"


def _entry(name: str) -> WeightsEntry:
    if name not in ENTRIES:
        raise WeightsError(f"no released weights named {name!r}; known: {', '.join(ENTRIES)}")
    return ENTRIES[name]


def _complete(path: Path, entry: WeightsEntry) -> bool:
    if entry.hf_repo:
        return all((path / f).is_file() and (path / f).stat().st_size > 0
                   for f in HF_FOLDER_FILES)
    return path.is_file() and path.stat().st_size > 0


def _hf_cached(entry: WeightsEntry) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = [try_to_load_from_cache(entry.hf_repo, f) for f in HF_FOLDER_FILES]
    if all(isinstance(p, str) for p in found):
        folder = Path(found[0]).parent
        return folder if _complete(folder, entry) else None
    return None


def find_weights(name: str) -> Path | None:
    """The local checkpoint of ``name`` (cache folder first, then the Hugging Face cache)."""
    entry = _entry(name)
    local = weights_dir() / entry.local_name
    if _complete(local, entry):
        return local
    return _hf_cached(entry) if entry.hf_repo else None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or \
        os.environ.get("THREER_ROS_OFFLINE", "").lower() in ("1", "true", "yes")


def manual_instructions(entry: WeightsEntry) -> str:
    """Where a manually downloaded copy must go."""
    target = weights_dir() / entry.local_name
    what = (f"the files {' and '.join(HF_FOLDER_FILES)} of {entry.source()} into the folder "
            f"{target}") if entry.hf_repo else f"{entry.source()} as {target}"
    return f"download {what} (or pass its path as checkpoint)"


def download_url(url: str, target: Path, progress: bool = True, timeout: float = 30.0) -> Path:
    """Stream ``url`` to ``target`` through ``<target>.part`` (renamed only when complete)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name,
                      disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
            if total is not None and out.tell() != total:
                raise WeightsError(f"{url}: received {out.tell()} of {total} bytes")
    except (urllib.error.URLError, OSError, WeightsError) as exc:
        partial.unlink(missing_ok=True)
        raise WeightsError(f"downloading {url} failed: {exc}") from None
    partial.replace(target)
    return target


def download_weights(name: str, progress: bool = True) -> Path:
    """Fetch the official weights of ``name`` into :func:`weights_dir` (no-op when present)."""
    entry = _entry(name)
    present = find_weights(name)
    if present is not None:
        return present
    if _offline():
        raise WeightsError(f"offline (HF_HUB_OFFLINE/THREER_ROS_OFFLINE set): cannot fetch "
                           f"{name}; {manual_instructions(entry)}")
    target = weights_dir() / entry.local_name
    if entry.url:
        return download_url(entry.url, target, progress)
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HfHubHTTPError

    try:
        folder = snapshot_download(entry.hf_repo, allow_patterns=list(HF_FOLDER_FILES),
                                   local_dir=target)
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise WeightsError(f"downloading {entry.hf_repo} failed ({exc}); "
                           f"{manual_instructions(entry)}") from None
    return Path(folder)


def resolve_checkpoint(name: str, checkpoint: str = "") -> Path:
    """The checkpoint a backend should load: ``checkpoint`` if given, else the cached weights."""
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.exists():
            raise WeightsError(f"checkpoint {path} does not exist")
        return path
    found = find_weights(name)
    if found is None:
        raise WeightsError(f"no {name} weights found; run `threer-ros weights download {name}` "
                           f"or {manual_instructions(_entry(name))}")
    return found


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() \
        else path.stat().st_size


def _list(_args: argparse.Namespace) -> int:
    print(f"weights folder: {weights_dir()}")
    for name, entry in ENTRIES.items():
        path = find_weights(name)
        status = f"present  {path}  ({_size(path) / 2**20:.0f} MiB)" if path else "missing"
        print(f"{name:8s} {status}\n         source: {entry.source()}  licence: {entry.licence}")
    return 0


def _download(args: argparse.Namespace) -> int:
    status = 0
    for name in dict.fromkeys(args.names):
        try:
            path = download_weights(name, progress=not args.quiet)
        except WeightsError as exc:
            print(f"threer-ros weights: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"{name}: {path}")
    return status


def write_random_weights(name: str, out: Path, seed: int = 0) -> Path:
    """Write the released architecture ``name`` with seeded random weights in its official
    file format (see :func:`threer_ros.models.checkpoint.write_checkpoint`): a stand-in that
    lets the node and the benchmarks run where the real weights cannot be downloaded. Its
    reconstructions are meaningless; its speed and memory are those of the real network."""
    import torch

    from threer_ros.models import build_model
    from threer_ros.models.checkpoint import write_checkpoint

    torch.manual_seed(seed)
    spec = RELEASED[name]
    return write_checkpoint(spec, build_model(spec).state_dict(), out)


def _random(args: argparse.Namespace) -> int:
    try:
        path = write_random_weights(args.name, args.out, args.seed)
    except OSError as exc:
        print(f"threer-ros weights random: cannot write {args.out}: {exc}", file=sys.stderr)
        return 2
    print(f"{args.name}: random weights (seed {args.seed}) of the released architecture in "
          f"{path}: for timing and trying the pipeline only, its clouds are meaningless")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``threer-ros weights list|download|random``."""
    p = command_parser(subparsers, "weights",
                       "list or download the official network weights (or random stand-ins)",
                       __doc__)
    sub = p.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    sub.add_parser("list", help="show which weights are present").set_defaults(func=_list)
    d = sub.add_parser("download", help="fetch the official weights")
    d.add_argument("names", nargs="+", choices=sorted(ENTRIES), metavar="NAME",
                   help=f"one or more of {', '.join(sorted(ENTRIES))}")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_download)
    r = sub.add_parser("random", help="write a released architecture with random weights "
                                      "(for timing the pipeline without the real weights)")
    r.add_argument("name", choices=sorted(RELEASED), metavar="NAME",
                   help=f"one of {', '.join(sorted(RELEASED))}")
    r.add_argument("--out", type=Path, required=True,
                   help="checkpoint file to write (Fast3R: a folder)")
    r.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    r.set_defaults(func=_random)
