"""A recording session of the capture node: each published reconstruction written to disk.

``folder``: ``cloud_<stamp ns>.ply`` (the published cloud, output frame, metres) and
``poses_<stamp ns>.yaml`` (each camera's 4x4 camera-to-output-frame pose) per reconstruction.
``bag``: a rosbag2 bag (mcap) with the cloud, camera-pose and ``/tf`` messages exactly as
published, logged at the set's stamp.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml
from rclpy.serialization import serialize_message

from threer_ros.data.ply import write_ply
from threer_ros.data.rosbag import TYPESTORE, BagError, new_bag, qos
from threer_ros.ros.convert import cloud_from_msg

FORMATS = ("folder", "bag")


class Recording:
    """Writes reconstructions into ``directory`` until :meth:`close`.

    Args:
        directory: Created; it must not exist or be empty.
        fmt: ``folder`` or ``bag`` (see the module docstring).
        topics: Message type name -> topic (``sensor_msgs/msg/PointCloud2`` etc.) for ``bag``.

    Raises:
        ValueError: unknown format, or ``directory`` holds files already.
        OSError: the folder cannot be created.
    """

    def __init__(self, directory: str | Path, fmt: str, topics: dict[str, str]) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format {fmt!r}: use {' or '.join(FORMATS)}")
        self.directory = Path(directory).expanduser().resolve()
        if self.directory.exists() and any(self.directory.iterdir()):
            raise ValueError(f"{self.directory} is not empty; choose a new folder")
        self.format = fmt
        self.written = 0
        self._bag = None
        if fmt == "bag":
            if self.directory.exists():
                self.directory.rmdir()           # rosbags creates the bag folder itself
            try:
                self._bag = new_bag(self.directory)
                self._bag.open()
            except BagError as exc:
                raise ValueError(str(exc)) from None
            self._connections = {msgtype: self._bag.add_connection(
                topic, msgtype, typestore=TYPESTORE, offered_qos_profiles=[qos()])
                for msgtype, topic in topics.items()}
        else:
            self.directory.mkdir(parents=True, exist_ok=True)

    def write(self, stamp_ns: int, messages: dict[str, Any], cameras: Sequence[str],
              cam_to_rig: np.ndarray, frame_id: str) -> None:
        """Record one reconstruction: ``messages`` maps message type names to the published
        messages (the cloud under ``sensor_msgs/msg/PointCloud2``)."""
        if self._bag is not None:
            for msgtype, msg in messages.items():
                self._bag.write(self._connections[msgtype], stamp_ns, serialize_message(msg))
        else:
            points, colors, confidence = cloud_from_msg(messages["sensor_msgs/msg/PointCloud2"])
            write_ply(self.directory / f"cloud_{stamp_ns}.ply", points, colors, confidence)
            poses = {"frame_id": frame_id, "stamp_ns": int(stamp_ns),
                     "cam_to_frame": {c: np.asarray(T).tolist()
                                      for c, T in zip(cameras, cam_to_rig)}}
            (self.directory / f"poses_{stamp_ns}.yaml").write_text(yaml.safe_dump(poses))
        self.written += 1

    def close(self) -> str:
        """Finish the session (a bag gets its metadata); returns a one-line summary."""
        if self._bag is not None:
            self._bag.close()
            self._bag = None
        return f"{self.written} reconstructions written to {self.directory} ({self.format})"
