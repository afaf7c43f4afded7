"""The transform tree against hand-computed chains (a URDF-like rig -> link -> optical frame)."""

from __future__ import annotations

import numpy as np
import pytest

from threer_ros.geometry.tf_tree import TransformTree


def _translation(x: float, y: float, z: float) -> np.ndarray:
    T = np.eye(4)
    T[:3, 3] = (x, y, z)
    return T


#: <cam>_link -> <cam>_optical_frame (REP-103): optical x = -body y, y = -body z, z = body x;
#: its columns are the optical axes written in body coordinates.
LINK_TO_OPTICAL = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]], float)


def _urdf_rig() -> TransformTree:
    tree = TransformTree()
    tree.set("rig", "cam_a_link", _translation(1.0, 0.0, 0.5))
    tree.set("cam_a_link", "cam_a_optical_frame", LINK_TO_OPTICAL)
    tree.set("rig", "cam_b_link", _translation(0.0, 2.0, 0.0))
    tree.set("cam_b_link", "cam_b_optical_frame", LINK_TO_OPTICAL)
    return tree


def test_a_chain_composes_parent_first():
    pose = _urdf_rig().lookup("rig", "cam_a_optical_frame")
    # the optical z axis (forward) is the rig's x axis; the centre is the link's origin
    np.testing.assert_allclose(pose @ [0, 0, 1, 0], [1, 0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(pose @ [0, 0, 0, 1], [1.0, 0.0, 0.5, 1], atol=1e-12)
    # a point 2 m in front of camera a, expressed in the rig
    np.testing.assert_allclose(pose @ [0, 0, 2, 1], [3.0, 0.0, 0.5, 1], atol=1e-12)


def test_a_lookup_across_branches_goes_through_the_common_ancestor():
    pose = _urdf_rig().lookup("cam_b_optical_frame", "cam_a_optical_frame")
    # camera a's centre seen from camera b: (1, -2, 0.5) in rig axes = body axes of b;
    # optical = (-body y, -body z, body x)
    np.testing.assert_allclose(pose @ [0, 0, 0, 1], [2.0, -0.5, 1.0, 1], atol=1e-12)
    inverse = _urdf_rig().lookup("cam_a_optical_frame", "cam_b_optical_frame")
    np.testing.assert_allclose(inverse @ pose, np.eye(4), atol=1e-12)


def test_unknown_or_disconnected_frames_have_no_pose():
    tree = _urdf_rig()
    tree.set("world", "table", _translation(0, 0, 1))
    assert tree.lookup("rig", "table") is None
    assert tree.lookup("rig", "nowhere") is None
    np.testing.assert_allclose(tree.lookup("rig", "rig"), np.eye(4))


def test_a_new_transform_replaces_the_edge_and_its_parent():
    tree = _urdf_rig()
    tree.set("rig", "cam_a_link", _translation(0, 0, 0))
    np.testing.assert_allclose(tree.lookup("rig", "cam_a_optical_frame")[:3, 3], 0, atol=1e-12)
    tree.set("cam_b_link", "cam_a_link", np.eye(4))      # re-parented
    assert tree.parent("cam_a_link") == "cam_b_link"
    np.testing.assert_allclose(tree.lookup("rig", "cam_a_link")[:3, 3], [0, 2, 0], atol=1e-12)


@pytest.mark.parametrize("parent, child", [("cam_a_optical_frame", "rig"), ("rig", "rig"),
                                           ("", "x")])
def test_loops_and_unnamed_frames_are_refused(parent, child):
    with pytest.raises(ValueError):
        _urdf_rig().set(parent, child, np.eye(4))
