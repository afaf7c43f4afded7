# Source on the GPU machine, from the repository root: unpack a pack made by scripts/gpu_pack.sh
# and set up this shell to run the capture node and `threer-ros` with the machine's own Python
# 3.12 and PyTorch.
#
#   source scripts/gpu_env.sh .gpu/ros_cp312.tar.xz
pack="${1:?usage: source scripts/gpu_env.sh PACK.tar.xz}"
dest="${THREER_PACK_DIR:-/tmp/threer_ros_pack}"
mkdir -p "$dest" && tar -C "$dest" -xJf "$pack" || return 1
libs="$dest/lib"
for d in "$dest"/site/*.libs; do libs="$libs:$d"; done
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$PWD:$dest/site${PYTHONPATH:+:$PYTHONPATH}"
# The wheels' .pth bootstrapper (which re-executes Python with the library path above) is not
# read from PYTHONPATH; the path is set here instead.
export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
threer-ros() { python3 -m threer_ros.cli "$@"; }
capture_node() { python3 -m threer_ros.ros.node "$@"; }
python3 -c 'import rclpy, tf2_msgs.msg, threer_ros' || { echo "gpu_env: the pack does not import" >&2; return 1; }
