"""The one configuration source: ``config/capture.yaml`` (ROS parameter file format).

The node declares its parameters with the defaults read from this file; the launch file and
``threer-ros`` pass the same file. Nothing else holds default settings.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

CONFIG_NAME = "capture.yaml"


def default_config_path() -> Path:
    """Locate ``config/capture.yaml``: of the checkout (editable installs), else installed."""
    candidates = [Path(__file__).resolve().parents[1] / "config"]
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory("threer_ros")) / "config")
    except Exception:  # noqa: BLE001 - ament index absent or package not in it
        pass
    candidates.append(Path(sys.prefix) / "share" / "threer_ros" / "config")
    for folder in candidates:
        if (folder / CONFIG_NAME).is_file():
            return folder / CONFIG_NAME
    raise FileNotFoundError(f"{CONFIG_NAME} not found in any of {[str(c) for c in candidates]}; "
                            "reinstall threer_ros")


def read_parameters(path: str | Path | None = None, node_name: str = "threer_capture"
                    ) -> dict[str, Any]:
    """Return the ``ros__parameters`` of a parameter file for ``node_name`` (or ``/**``)."""
    path = Path(path) if path else default_config_path()
    doc = yaml.safe_load(path.read_text()) or {}
    params: dict[str, Any] = {}
    for key in ("/**", node_name, f"/{node_name}"):
        section = doc.get(key)
        if isinstance(section, dict):
            params.update(section.get("ros__parameters", {}))
    if not params:
        raise ValueError(f"{path}: no 'ros__parameters' for '/**' or '{node_name}'")
    return params


_KEY = re.compile(r"^(?P<indent> +)(?P<key>[A-Za-z_]\w*):(?P<rest>.*)$")


def parameter_descriptions(path: str | Path | None = None) -> dict[str, str]:
    """Each parameter's documentation in a parameter file: its comment lines right above the
    key (after the last blank line or ``# ---`` heading) and the comment after its value with
    the comment lines indented below it, joined into one line. Values must not contain ``#``.
    """
    path = Path(path) if path else default_config_path()
    found: dict[str, str] = {}
    above: list[str] = []
    current: str | None = None            # the key whose trailing comment may continue
    key_indent: int | None = None         # indentation of the keys under ros__parameters
    for line in path.read_text().splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            if current is not None and key_indent is not None and indent > key_indent:
                found[current] = f"{found[current]} {text}".strip()
            elif text.startswith("---"):
                above, current = [], None
            else:
                above, current = above + [text], None
            continue
        if not stripped:
            above, current = [], None
            continue
        match = _KEY.match(line)
        if match is None or match["key"] == "ros__parameters":
            if match is not None:
                above = []
            continue                       # a value's continuation line (e.g. a long list)
        if key_indent is None:
            key_indent = len(match["indent"])
        if len(match["indent"]) != key_indent:
            continue
        trailing = match["rest"].split("#", 1)[1].strip() if "#" in match["rest"] else ""
        current = match["key"]
        found[current] = " ".join(above + ([trailing] if trailing else []))
        above = []
    return found
