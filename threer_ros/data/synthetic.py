"""A synthetic 16-camera capture with exact ground truth, arranged like the NeRSemble dome.

Scene: a head-sized union of ellipsoids (skull, face, nose, ears, neck; about 0.17 m wide,
0.24 m tall) with a seeded procedural colour texture and Lambertian shading under a fixed
light (so colours do not depend on the viewpoint), in front of an empty (black) background.
:class:`Scene` varies it (smoother or finer texture, a textured wall behind the subject, the
subject off centre, another scale, darker cameras, noise); :data:`VARIANTS` names the variants
the ``mvs`` backend is measured on, each with its ground truth (depth and subject masks).

Rig frame (``rig``, metres, REP-103 body axes): origin at the head centre, x forward (out of
the face, towards the cameras), y to the subject's left, z up. Cameras sit on a sphere of
radius ``distance`` around the origin in two rows (elevation +/- 16 degrees) spanning 93 degrees
of azimuth, all looking at the origin, portrait images like the real rig (W:H = 2200:3208).
Camera names are given by the caller (the config's order: first row, then second row; within
a row from the subject's right to left).

Rendering is exact ray casting of the ellipsoids (no iterations), vectorised in torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from threer_ros.geometry.transforms import look_at
from threer_ros.pipeline.types import CameraCalibration, Frame, FrameSet

#: (centre xyz, radii xyz) of the ellipsoids that make the head, metres, rig frame.
HEAD_ELLIPSOIDS = (
    ((0.000, 0.000, 0.020), (0.095, 0.078, 0.110)),    # skull
    ((0.035, 0.000, -0.030), (0.070, 0.066, 0.090)),   # face and jaw
    ((0.100, 0.000, -0.010), (0.028, 0.014, 0.026)),   # nose
    ((-0.005, 0.079, 0.000), (0.012, 0.010, 0.028)),   # left ear
    ((-0.005, -0.079, 0.000), (0.012, 0.010, 0.028)),  # right ear
    ((-0.010, 0.000, -0.130), (0.050, 0.050, 0.080)),  # neck
)
ASPECT = 3208 / 2200          # height / width of the NeRSemble cameras
LIGHT = np.array([0.8, 0.3, 0.5]) / np.linalg.norm([0.8, 0.3, 0.5])


@dataclass(frozen=True)
class Scene:
    """What the rig looks at and how it sees it; the defaults are the plain head.

    Lengths are in head units: metres of the default scene, all multiplied by ``scale`` (the
    head, the wall, the offset and the camera distance), so a scaled scene gives the same
    images at another metric size.

    Attributes:
        texture_scale: Multiplies the texture's spatial frequencies (< 1 smoother, > 1 finer).
        texture_contrast: Multiplies the albedo's variation about its mean (skin: low).
        wall: Distance behind the head centre (along -x) of a textured wall facing the
            cameras (an infinite plane that fills the background); 0 = no wall (black).
        offset: Head centre in the rig frame (the cameras still aim at the rig origin).
        scale: Metric size of the whole scene relative to the default.
        dark_cameras: Indices of cameras whose image is multiplied by ``dark_gain``.
        dark_gain: Exposure factor of the dark cameras.
        noise: Standard deviation of Gaussian pixel noise in grey levels (after the gain).
        supersample: Samples per pixel side (odd), averaged (pixel integration: no texture
            aliasing); the depth is the pixel centre's.
    """

    texture_scale: float = 1.0
    texture_contrast: float = 1.0
    wall: float = 0.0
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0
    dark_cameras: tuple[int, ...] = ()
    dark_gain: float = 0.35
    noise: float = 0.0
    supersample: int = 1


#: Named variants of the scene (see :class:`Scene`): the plain head, and what real captures
#: bring (skin-like smooth texture, fine texture, a background wall, an off-centre subject,
#: another scale, under-exposed cameras). Variants other than ``base`` integrate each pixel
#: over 3 x 3 samples and have 1 grey level of noise.
VARIANTS: dict[str, Scene] = {
    "base": Scene(),
    "smooth": Scene(texture_scale=0.15, texture_contrast=0.5, noise=1.0, supersample=3),
    "fine": Scene(texture_scale=3.0, noise=1.0, supersample=3),
    "wall": Scene(wall=0.3, noise=1.0, supersample=3),
    "smooth_wall": Scene(texture_scale=0.15, texture_contrast=0.5, wall=0.2, noise=1.0,
                         supersample=3),
    "off_centre": Scene(offset=(0.02, 0.035, -0.03), wall=0.5, noise=1.0, supersample=3),
    "scale": Scene(scale=1.5, noise=1.0, supersample=3),
    "dark": Scene(dark_cameras=(2, 5, 11, 12), noise=1.5, supersample=3),
}


@dataclass(frozen=True)
class SyntheticView:
    """One rendered camera.

    Attributes:
        name: Camera name.
        image: H x W x 3 uint8 RGB.
        depth: H x W float32 depth along the optical z axis in metres; NaN where no surface.
        calibration: Intrinsics and camera-to-rig pose (metres).
        subject: H x W bool, True where the pixel sees the subject (not the wall); None:
            wherever ``depth`` is finite.
    """

    name: str
    image: np.ndarray
    depth: np.ndarray
    calibration: CameraCalibration
    subject: np.ndarray | None = None


def rig_poses(count: int, distance: float = 1.0, azimuth_span_deg: float = 93.0,
              elevation_deg: float = 16.0) -> list[np.ndarray]:
    """Camera-to-rig poses of ``count`` cameras in two rows (one row if ``count`` is odd or < 4)."""
    rows = 2 if count >= 4 and count % 2 == 0 else 1
    per_row = count // rows
    elevations = [elevation_deg, -elevation_deg] if rows == 2 else [0.0]
    poses = []
    for elevation in elevations:
        for i in range(per_row):
            azimuth = np.radians(-azimuth_span_deg / 2 + azimuth_span_deg * i / max(per_row - 1, 1))
            el = np.radians(elevation)
            centre = distance * np.array([np.cos(el) * np.cos(azimuth),
                                          np.cos(el) * np.sin(azimuth), np.sin(el)])
            poses.append(look_at(centre, np.zeros(3), np.array([0.0, 0.0, 1.0])))
    return poses


def intrinsics(width: int, field_height_m: float = 0.30, distance: float = 1.0
               ) -> tuple[np.ndarray, int]:
    """Pinhole K of a portrait image ``width`` wide that sees ``field_height_m`` at ``distance``
    metres; returns K and the image height."""
    height = int(round(width * ASPECT))
    focal = height * distance / field_height_m
    K = np.array([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])
    return K, height


def _texture(points: torch.Tensor, seed: int, scale: float = 1.0, contrast: float = 1.0
             ) -> torch.Tensor:
    """Seeded procedural RGB albedo in [0.15, 0.95] at (N, 3) surface points (metres), its
    spatial frequencies multiplied by ``scale`` and its variation by ``contrast``."""
    g = torch.Generator().manual_seed(seed)
    freqs = torch.randn(24, 3, generator=g, dtype=torch.float64)
    freqs = freqs / freqs.norm(dim=1, keepdim=True) * (2 * np.pi * scale) * \
        torch.linspace(15.0, 160.0, 24, dtype=torch.float64)[:, None]
    phases = torch.rand(24, generator=g, dtype=torch.float64) * 2 * np.pi
    mix = torch.rand(24, 3, generator=g, dtype=torch.float64) - 0.5
    waves = torch.sin(points @ freqs.T + phases)                 # (N, 24)
    colour = 0.55 + contrast * (waves @ mix) / 3.0
    return colour.clamp(0.15, 0.95)


def intersect_head(origins: torch.Tensor, dirs: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest hit of rays with the head ellipsoids: (distance along ray or inf, normal)."""
    best = torch.full(dirs.shape[:1], float("inf"), dtype=dirs.dtype)
    normal = torch.zeros_like(dirs)
    for centre, radii in HEAD_ELLIPSOIDS:
        c = torch.tensor(centre, dtype=dirs.dtype)
        r = torch.tensor(radii, dtype=dirs.dtype)
        o, d = (origins - c) / r, dirs / r
        a = (d * d).sum(-1)
        b = 2 * (o * d).sum(-1)
        cc = (o * o).sum(-1) - 1
        disc = b * b - 4 * a * cc
        t = (-b - disc.clamp(min=0).sqrt()) / (2 * a)
        hit = (disc >= 0) & (t > 0) & (t < best)
        best = torch.where(hit, t, best)
        p = origins + t[:, None] * dirs
        n = (p - c) / (r * r)
        normal = torch.where(hit[:, None], n / n.norm(dim=-1, keepdim=True), normal)
    return best, normal


def _cast(scene: Scene, origins: torch.Tensor, dirs: torch.Tensor, seed: int
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ray parameter of the nearest hit (inf: none), linear RGB in [0, 1] and a subject mask
    of rays ``origins + t dirs`` (rig frame, metres) through ``scene``."""
    centre = torch.tensor(scene.offset, dtype=dirs.dtype) * scene.scale
    t, normal = intersect_head((origins - centre) / scene.scale, dirs / scene.scale)
    subject = torch.isfinite(t)
    rgb = torch.zeros(dirs.shape, dtype=torch.float64)
    head = (origins[subject] - centre) / scene.scale + t[subject, None] * dirs[subject] / \
        scene.scale
    albedo = _texture(head, seed, scene.texture_scale, scene.texture_contrast)
    shade = 0.35 + 0.65 * (normal[subject] @ torch.from_numpy(LIGHT)).clamp(min=0)
    rgb[subject] = albedo * shade[:, None]
    if scene.wall > 0:
        x_wall = -scene.wall * scene.scale
        t_wall = (x_wall - origins[:, 0]) / dirs[:, 0]
        wall = ~subject & (dirs[:, 0] < 0) & (t_wall > 0)
        t = torch.where(wall, t_wall, t)
        on_wall = (origins[wall] + t_wall[wall, None] * dirs[wall]) / scene.scale
        shade = 0.35 + 0.65 * float(LIGHT[0])
        rgb[wall] = _texture(on_wall, seed + 1) * shade
    return t, rgb, subject


def render_view(K: np.ndarray, width: int, height: int, cam_to_rig: np.ndarray, seed: int,
                scene: Scene = Scene()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render RGB (uint8, before gain and noise), depth (float32 metres, NaN = background) and
    the subject mask (bool) of one camera."""
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                          torch.arange(width, dtype=torch.float64), indexing="ij")
    R = torch.from_numpy(cam_to_rig[:3, :3])
    centre = torch.from_numpy(cam_to_rig[:3, 3])
    K_inv = torch.from_numpy(np.linalg.inv(K))
    n = scene.supersample
    shifts = [(k - (n - 1) / 2) / n for k in range(n)]
    rgb = torch.zeros(height * width, 3, dtype=torch.float64)
    for du in shifts:
        for dv in shifts:
            pix = torch.stack([u.ravel() + du, v.ravel() + dv,
                               torch.ones(u.numel(), dtype=torch.float64)], -1)
            dirs = pix @ K_inv.T @ R.T                                     # z = 1 rays
            t, sample, subject = _cast(scene, centre.expand_as(dirs), dirs, seed)
            rgb += sample / n ** 2
            if du == dv == 0:
                depth, mask = t, subject
    depth = torch.where(torch.isfinite(depth), depth, float("nan"))
    image = (rgb * 255).round().clamp(0, 255).to(torch.uint8).reshape(height, width, 3)
    return (image.numpy(), depth.reshape(height, width).to(torch.float32).numpy(),
            mask.reshape(height, width).numpy())


@dataclass(frozen=True)
class SyntheticRig:
    """Rendered views of the synthetic head; see the module docstring for frames."""

    views: tuple[SyntheticView, ...]
    seed: int
    scene: Scene = field(default_factory=Scene)

    @classmethod
    def render(cls, seed: int = 0, width: int = 320,
               names: list[str] | tuple[str, ...] | None = None, count: int = 16,
               distance: float = 1.0, image_noise: float = 0.0,
               scene: Scene | str = "base") -> "SyntheticRig":
        """Render the rig deterministically from ``seed``.

        Args:
            seed: Texture and noise seed.
            width: Image width in pixels (height follows the NeRSemble aspect ratio).
            names: Camera names (defaults ``cam_00`` ...); their number sets the camera count.
            count: Number of cameras when ``names`` is None.
            distance: Camera distance to the rig origin in head units (metres at scale 1).
            image_noise: Standard deviation of Gaussian pixel noise, in grey levels (added to
                the scene's own ``noise``).
            scene: A :class:`Scene` or the name of one of :data:`VARIANTS`.
        """
        scene = VARIANTS[scene] if isinstance(scene, str) else scene
        if scene.supersample < 1 or scene.supersample % 2 == 0:
            raise ValueError(f"supersample must be odd and positive, got {scene.supersample}")
        names = tuple(names) if names is not None else tuple(f"cam_{i:02d}" for i in range(count))
        K, height = intrinsics(width, 0.30 * scene.scale, distance * scene.scale)
        noise = np.hypot(image_noise, scene.noise)
        rng = np.random.default_rng(seed)
        views = []
        for i, (name, pose) in enumerate(zip(names, rig_poses(len(names),
                                                              distance * scene.scale))):
            image, depth, subject = render_view(K, width, height, pose, seed, scene)
            if i in scene.dark_cameras:
                image = np.round(image * scene.dark_gain).astype(np.uint8)
            if noise > 0:
                noisy = image + rng.normal(0.0, noise, image.shape)
                image = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
            views.append(SyntheticView(name, image, depth,
                                       CameraCalibration(K.copy(), width, height,
                                                         cam_to_rig=pose), subject))
        return cls(tuple(views), seed, scene)

    def surface_points(self, max_points: int = 200_000, subject_only: bool = False
                       ) -> np.ndarray:
        """Ground-truth surface points seen by the cameras (rig frame, metres), subsampled
        (seeded); with ``subject_only`` without the wall."""
        clouds = []
        for v in self.views:
            depth = v.depth
            if subject_only and v.subject is not None:
                depth = np.where(v.subject, depth, np.nan)
            clouds.append(backproject_depth(depth, v.calibration))
        points = np.concatenate(clouds)
        if len(points) > max_points:
            points = points[np.random.default_rng(self.seed).choice(len(points), max_points,
                                                                    replace=False)]
        return points

    def save(self, path: Path) -> None:
        """Write the rendered rig (every view's image, depth, subject mask and calibration,
        the seed and the scene) to ``path`` (``.npz``), for :meth:`load` in another process
        instead of rendering again (seconds to minutes for large images)."""
        arrays: dict[str, np.ndarray] = {
            "names": np.array([v.name for v in self.views]),
            "meta": np.array(json.dumps({"seed": self.seed, "scene": asdict(self.scene)}))}
        for i, v in enumerate(self.views):
            c = v.calibration
            arrays.update({f"image_{i}": v.image, f"depth_{i}": v.depth,
                           f"K_{i}": np.asarray(c.K, np.float64),
                           f"size_{i}": np.array([c.width, c.height]),
                           f"cam_to_rig_{i}": np.asarray(c.cam_to_rig, np.float64)})
            if v.subject is not None:
                arrays[f"subject_{i}"] = v.subject
        with open(path, "wb") as f:         # as given: np.savez would append ".npz"
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: Path) -> "SyntheticRig":
        """The rig :meth:`save` wrote to ``path``.

        Raises:
            ValueError: ``path`` is not a saved synthetic rig (the message says why).
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                views = []
                for i, name in enumerate(data["names"].tolist()):
                    width, height = (int(x) for x in data[f"size_{i}"])
                    calibration = CameraCalibration(data[f"K_{i}"], width, height,
                                                    cam_to_rig=data[f"cam_to_rig_{i}"])
                    subject = data[f"subject_{i}"] if f"subject_{i}" in data else None
                    views.append(SyntheticView(name, data[f"image_{i}"], data[f"depth_{i}"],
                                               calibration, subject))
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path} is not a synthetic rig written by SyntheticRig.save "
                             f"({type(exc).__name__}: {exc}); render it again") from exc
        scene = meta["scene"]
        scene = Scene(**{**scene, "offset": tuple(scene["offset"]),
                         "dark_cameras": tuple(scene["dark_cameras"])})
        return cls(tuple(views), int(meta["seed"]), scene)

    def frame_set(self, stamp_ns: int = 0) -> FrameSet:
        """The views as a calibrated :class:`FrameSet` taken at ``stamp_ns``."""
        return FrameSet(tuple(Frame(v.name, v.image, stamp_ns, v.calibration) for v in self.views),
                        stamp_ns)


def backproject_depth(depth: np.ndarray, calib: CameraCalibration) -> np.ndarray:
    """Rig-frame points (P, 3) of the valid (finite, > 0) pixels of a z-depth map."""
    v, u = np.nonzero(np.isfinite(depth) & (depth > 0))
    z = depth[v, u].astype(np.float64)
    rays = np.stack([u, v, np.ones_like(u)], 1) @ np.linalg.inv(calib.K).T
    cam = rays * z[:, None]
    return cam @ calib.cam_to_rig[:3, :3].T + calib.cam_to_rig[:3, 3]


def signed_distance(points: np.ndarray) -> np.ndarray:
    """Approximate signed distance (metres) of points to the head surface (0 on the surface).

    Exact zero set; the magnitude is the ellipsoid's scaled algebraic distance (good near the
    surface, which is what tests use it for).
    """
    values = []
    for centre, radii in HEAD_ELLIPSOIDS:
        q = (points - np.asarray(centre)) / np.asarray(radii)
        values.append((np.linalg.norm(q, axis=-1) - 1.0) * min(radii))
    return np.min(values, axis=0)
