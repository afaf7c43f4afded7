#!/usr/bin/env bash
# Pack the ROS 2 runtime of a Python 3.12 virtual environment for the GPU machine.
#
# The lent GPU machine runs Python 3.12 with PyTorch, NumPy, SciPy, OpenCV and the rest of the
# scientific stack, but no ROS 2 and no package registry. This script takes a venv made by
# scripts/setup_env.sh with a Python 3.12 interpreter (ROS 2 wheels and the interface packages
# built for cp312) and packs what the GPU machine lacks: the ROS 2 Python packages, their
# shared libraries, rosbags and its dependencies. The scientific stack, build and test tools
# stay behind.
#
#   PYTHON=/path/to/python3.12 THREER_VENV=.venv312 bash scripts/setup_env.sh
#   bash scripts/gpu_pack.sh .venv312 .gpu/ros_cp312.tar.xz
#   # on the GPU machine, from the repository root:
#   source scripts/gpu_env.sh .gpu/ros_cp312.tar.xz && threer-ros latency --device cuda ...
set -euo pipefail

venv="${1:?usage: gpu_pack.sh VENV OUT.tar.xz}"
out="${2:?usage: gpu_pack.sh VENV OUT.tar.xz}"
site="$(echo "$venv"/lib/python3.12/site-packages)"
[[ -d "$site" ]] || { echo "gpu_pack: $site not found: VENV must be a Python 3.12 venv" >&2; exit 1; }
"$venv/bin/python" -c 'import rclpy, tf2_msgs.msg, rosbags' \
  || { echo "gpu_pack: $venv lacks rclpy, tf2_msgs or rosbags: run scripts/setup_env.sh first" >&2; exit 1; }

# On the GPU machine already, or not needed at run time (build and test tools).
skip=(torch functorch torchgen nvidia triton numpy numpy.libs scipy scipy.libs cv2
      opencv_python_headless.libs PIL pillow.libs sympy mpmath networkx jinja2 markupsafe
      fsspec filelock typing_extensions.py yaml _yaml safetensors huggingface_hub hf_xet tqdm
      pip setuptools _distutils_hack pkg_resources wheel hypothesis _pytest pytest pluggy
      coverage pygments docutils colcon_* catkin_pkg ament_cmake* em.py emdoc.py emhelp.py
      emlib.py "__editable__*" threer_ros "threer_ros-*" "*.dist-info" "*.egg-info" __pycache__)
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/site" "$stage/lib"
excludes=()
for name in "${skip[@]}"; do excludes+=(--exclude="./$name"); done
tar -C "$site" "${excludes[@]}" --exclude=__pycache__ -cf - . | tar -C "$stage/site" -xf -
cp -a "$venv"/lib/*.so* "$stage/lib/" 2>/dev/null || true
mkdir -p "$(dirname "$out")"
tar -C "$stage" -cJf "$out" site lib
echo "gpu_pack: wrote $out ($(du -h "$out" | cut -f1))"
