"""Animate one aligned real face: piecewise-affine warps driven by viseme, blink, smile and head-pose controls.

What: ``FaceRig(identity)`` builds, once, a triangle mesh over the identity's 256 px crop: the 68 dlib
landmarks plus cheek, eyelid-crease, forehead, head-outline, neck and image-border anchors, triangulated
(Delaunay) in a reference pose with the mouth half open so the topology is valid for every control value.
``rig.render(...)`` moves the mesh vertices (jaw and lips by openness/width, upper eyelids by blink, mouth
corners, cheeks and lower lids by expression, then a pseudo-3D rotation for yaw/pitch/roll in which each
vertex has a depth from a face-shaped profile plus a nose bump, so yaw squeezes one side, widens the other
and shifts the face interior like a perspective turn), warps the crop with one vectorised per-triangle
affine map (no OpenCV), and paints a mouth interior (dark cavity, upper teeth, lower teeth and tongue
when wide open) inside the warped inner-lip contour.
Why: the corpus needs thousands of labelled talking frames per real person with known ground-truth controls.

Controls (the labels written per frame): ``openness`` 0..1 (inner-lip gap = openness * 0.5 inter-ocular
distances, absolute: 0 closes an open-mouthed photo), ``width`` 0..1 (0.5 neutral, 0 narrow, 1 spread "ee";
the viseme convention of visemes.py), ``rounding`` 0..1 (optional: lips pushed together into an "oo"),
``blink`` 0..1 (1 = both eyes shut), ``yaw``/``pitch``/``roll`` in degrees (yaw > 0 moves the nose toward
image right; pitch > 0 raises the chin/nose (looks up); roll > 0 turns the eye line clockwise on screen,
i.e. roll = atan2(dy, dx) of the eye line in image coordinates), ``expression`` 0..1 (smile added to the
photo's own expression).

Usage::

    rig = FaceRig(identity)                       # identity from faces.load_identities / fixture_identities
    frame, lm = rig.render(openness=0.4, width=0.5, blink=0.0, yaw=10, pitch=0, roll=0, expression=0.2)
    # frame uint8 [size,size,3] (size=128 default), lm float32 [68,2] landmarks after warping (frame pixels)
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial import Delaunay

from eartalking.data.faces import WORK_SIZE, Identity, eye_centres

MAX_GAP = 0.5  # inner-lip gap at openness 1, in inter-ocular distances

# how far each lip/jaw landmark follows the lower jaw (fraction of the lower-lip drop)
_JAW_FOLLOW = {8: 0.8, 7: 0.72, 9: 0.72, 6: 0.55, 10: 0.55, 5: 0.33, 11: 0.33, 4: 0.14, 12: 0.14, 3: 0.03, 13: 0.03}
_LOWER_LIP = {66: 1.0, 65: 0.85, 67: 0.85, 57: 1.0, 56: 0.92, 58: 0.92, 55: 0.55, 59: 0.55}
_UPPER_LIP = {62: 1.0, 61: 0.85, 63: 0.85, 51: 1.0, 50: 0.9, 52: 0.9, 49: 0.5, 53: 0.5}
_CORNERS_L, _CORNERS_R = (48, 60), (54, 64)
# neighbours of the mouth corners: (fraction of the corner's sideways move, fraction of its upward move)
_NEAR_CORNER = {49: (0.5, 0.75), 59: (0.5, 0.75), 61: (0.45, 0.6), 67: (0.45, 0.6),
                53: (0.5, 0.75), 55: (0.5, 0.75), 63: (0.45, 0.6), 65: (0.45, 0.6)}
# extra depth of the nose over the face profile (inter-ocular units); kept gentle so no triangle folds at 30 deg
_NOSE_DEPTH = {27: 0.05, 28: 0.10, 29: 0.14, 30: 0.18, 31: 0.08, 32: 0.11, 33: 0.13, 34: 0.11, 35: 0.08}


def _hires(identity: Identity) -> tuple[np.ndarray, np.ndarray]:
    """The identity's crop and landmarks at WORK_SIZE (upsampled from ``image`` when ``hires`` is absent)."""
    s = identity.image.shape[0]
    lm = (np.asarray(identity.landmarks, np.float64) + 0.5) * WORK_SIZE / s - 0.5
    if identity.hires is not None and identity.hires.shape[0] == WORK_SIZE:
        return identity.hires, lm
    from skimage.transform import resize

    img = resize(identity.image, (WORK_SIZE, WORK_SIZE), order=1, preserve_range=True, anti_aliasing=False)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), lm


class FaceRig:
    """Precomputed mesh + render function for one identity. Not thread-safe (caches per output size)."""

    def __init__(self, identity: Identity):
        self.identity = identity
        img, lm = _hires(identity)
        self.src = img
        self.lm0 = lm
        le, re_ = eye_centres(lm)
        self.d = float(np.linalg.norm(re_ - le))  # inter-ocular distance (256 px space)
        d = self.d
        self._build_points(lm, d)
        self._build_depth(lm, d)
        self._build_mesh()
        self.lip_rgb = self._lip_colour()
        self.lid_rgb = self._lid_colours()
        self._prefiltered: dict[int, np.ndarray] = {}

    # ------------------------------------------------------------------------------------ mesh setup
    def _build_points(self, lm: np.ndarray, d: float) -> None:
        pts = [p for p in lm]
        role = ["lm"] * 68
        c = np.array([lm[27:31, 0].mean(), (lm[[36, 45], 1].mean() + lm[8, 1]) / 2])
        self.centre = c

        def add(p, r):
            pts.append(np.asarray(p, np.float64))
            role.append(r)
            return len(pts) - 1

        self.i_cheek = [add((lm[2] + lm[31]) / 2, "cheek_l"), add((lm[14] + lm[35]) / 2, "cheek_r")]
        self.i_lcheek = [add((lm[5] + lm[48]) / 2, "lcheek_l"), add((lm[11] + lm[54]) / 2, "lcheek_r")]
        self.i_chinmid = add((lm[8] + lm[57]) / 2, "chinmid")
        # eyelid creases: between the upper lid and the brow above it
        self.i_crease = {k: add(lm[k] + 0.45 * (lm[b] - lm[k]), "crease")
                         for k, b in ((37, 19), (38, 20), (43, 23), (44, 24))}
        # forehead row above the brows, head outline and neck ring outside the jaw
        for b in (17, 19, 21, 22, 24, 26):
            add(lm[b] + np.array([0.0, -0.6 * d]), "forehead")
        self.depth_src: dict[int, tuple[int, float]] = {}  # outer vertex -> (landmark, share of its depth)
        self.i_ring = {}
        for j in (0, 2, 4, 13, 14, 16, 12):
            self.i_ring[j] = add(c + 1.32 * (lm[j] - c), "head")
            self.depth_src[self.i_ring[j]] = (j, 1.0)  # moves with its jaw point: no parallax fold
        for j in (6, 8, 10):  # neck: halfway between the jaw and the frame bottom; follows the jaw halfway
            p = lm[j] + 0.25 * (lm[j] - c) * [1, 0]
            self.i_ring[j] = add([p[0], (lm[j, 1] + WORK_SIZE) / 2], "neck")
            self.depth_src[self.i_ring[j]] = (j, 0.5)
        # image border (fixed)
        lo, hi = -1.0, WORK_SIZE
        for p in ((lo, lo), (lo, hi), (hi, lo), (hi, hi)):
            add(p, "border")
        for t in np.linspace(lo, hi, 6)[1:-1]:
            for p in ((t, lo), (t, hi), (lo, t), (hi, t)):
                add(p, "border")
        P = np.array(pts)
        # keep non-border anchors inside the frame
        nb = np.array([r != "border" for r in role])
        P[nb] = np.clip(P[nb], 2.0, WORK_SIZE - 3.0)
        outer = np.array([r in ("neck", "head") for r in role])
        P[outer] = np.clip(P[outer], 8.0, WORK_SIZE - 9.0)
        # inner mouth corners sit a little inside the outer ones, so corner triangles keep their orientation
        mc = (P[48] + P[54]) / 2
        for inner_k, outer_k in ((60, 48), (64, 54)):
            gap = np.linalg.norm(P[inner_k] - P[outer_k])
            if gap < 3.0:
                step = mc - P[outer_k]
                P[inner_k] = P[outer_k] + 3.0 * step / (np.linalg.norm(step) + 1e-9)
        # coincident vertices (closed lips, corners) would be dropped by Delaunay: nudge later ones apart
        for i in range(1, len(P)):
            for _ in range(4):
                dist = np.linalg.norm(P[:i] - P[i], axis=1)
                if dist.min() >= 0.6:
                    break
                step = c - P[i] if role[i] != "border" else np.array([1.0, 1.0])
                P[i] += 0.8 * step / (np.linalg.norm(step) + 1e-9)
        self.P0 = P
        self.role = role
        # pose moves the face rigidly (weight 1) and fades to 0 toward the fixed frame border, so the
        # displacement field stays smooth (gradient < 1) and no triangle folds
        edge = np.minimum(np.minimum(P[:, 0] + 1, P[:, 1] + 1), np.minimum(WORK_SIZE - P[:, 0], WORK_SIZE - P[:, 1]))
        fade = np.clip(edge / 40.0, 0.25, 1.0)
        self.pose_w = np.array([0.0 if r == "border" else (f if r in ("neck", "head", "forehead") else 1.0)
                                for r, f in zip(self.role, fade, strict=True)])

    def _build_depth(self, lm: np.ndarray, d: float) -> None:
        """Pseudo-depth per vertex (256 px units): a cosine face profile plus nose, lips and eye sockets."""
        c = np.array([(lm[0, 0] + lm[16, 0]) / 2, self.centre[1]])  # the jaw's middle (turned faces too)
        ax = (lm[16, 0] - lm[0, 0]) / 2 * 1.08
        ay = (lm[8, 1] - (lm[19, 1] + lm[24, 1]) / 2) / 2 + 0.5 * d
        cy = lm[8, 1] - ay + 0.05 * d
        P = self.P0
        r = np.sqrt(((P[:, 0] - c[0]) / ax) ** 2 + ((P[:, 1] - cy) / ay) ** 2)
        z = 0.5 * ax * np.cos(np.pi / 2 * np.clip(r, 0, 1))
        for k, v in _NOSE_DEPTH.items():
            z[k] += v * d
        z[48:68] += 0.08 * d
        z[36:48] -= 0.06 * d
        z[[r_ in ("head", "neck", "border") for r_ in self.role]] = 0.0
        for i, (j, share) in self.depth_src.items():
            z[i] = share * z[j]
        self.z0 = z

    def _build_mesh(self) -> None:
        ref = self._expression_points(openness=0.5, width=0.5, blink=0.0, expression=0.0)
        tri = Delaunay(ref).simplices
        # orient counter-clockwise in the reference
        a, b, c = ref[tri[:, 0]], ref[tri[:, 1]], ref[tri[:, 2]]
        cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
        tri[cross < 0] = tri[cross < 0][:, [0, 2, 1]]
        # interior-of-mouth and of-eye triangles (collapse when closed, painted over): draw them first
        inner = (np.isin(tri, np.arange(60, 68)).all(1) | np.isin(tri, np.arange(36, 42)).all(1)
                 | np.isin(tri, np.arange(42, 48)).all(1))
        self.tri = np.concatenate([tri[inner], tri[~inner]])
        self.n_inner = int(inner.sum())

    def _lip_colour(self) -> np.ndarray:
        lm, img = self.lm0, self.src.astype(np.float32)
        pts = np.concatenate([(lm[[50, 51, 52]] + lm[[61, 62, 63]]) / 2, (lm[[56, 57, 58]] + lm[[65, 66, 67]]) / 2])
        vals = []
        for x, y in np.round(pts).astype(int):
            x, y = np.clip(x, 1, WORK_SIZE - 2), np.clip(y, 1, WORK_SIZE - 2)
            vals.append(img[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(0))
        return np.median(np.array(vals), 0)

    def _lid_colours(self) -> list[np.ndarray]:
        """Skin colour of each upper eyelid (median over a box between the upper lid and the brow)."""
        lm, img = self.lm0, self.src.astype(np.float32)
        out = []
        for up, brow in (((37, 38), (19, 20)), ((43, 44), (23, 24))):
            top = lm[list(brow)].mean(0)
            lid = lm[list(up)].mean(0)
            cy = lid + 0.3 * (top - lid)
            half = max(2, int(0.06 * self.d))
            x, y = np.clip(np.round(cy).astype(int), half, WORK_SIZE - half - 1)
            above = np.median(img[y - half:y + half + 1, x - 2 * half:x + 2 * half + 1].reshape(-1, 3), 0)
            # the crease is often shadowed: mix with the cheek under the eye (lit skin)
            low = (41, 40) if up[0] == 37 else (47, 46)
            cx, cy2 = np.clip(np.round((lm[list(low)].mean(0) + lm[29]) / 2).astype(int), half, WORK_SIZE - half - 1)
            cheek = np.median(img[cy2 - half:cy2 + half + 1, cx - half:cx + half + 1].reshape(-1, 3), 0)
            out.append(0.3 * above + 0.7 * 0.97 * cheek)
        return out

    # ------------------------------------------------------------------------------------- controls
    def _expression_points(self, openness: float, width: float, blink: float, expression: float,
                           rounding: float = 0.0) -> np.ndarray:
        """Vertex positions (256 px space, frontal) for the non-pose controls."""
        P = self.P0.copy()
        lm, d = self.lm0, self.d
        dy = np.zeros(len(P))
        dx = np.zeros(len(P))
        # ---- mouth opening: absolute inner-lip gap
        gap0 = float(np.mean(lm[[67, 66, 65], 1] - lm[[61, 62, 63], 1]))
        target = float(np.clip(openness, 0.0, 1.0)) * MAX_GAP * d
        dg = target - gap0
        low = 0.8 * dg
        for k, f in _UPPER_LIP.items():
            dy[k] -= 0.2 * dg * f
        for k, f in _LOWER_LIP.items():
            dy[k] += low * f
        for k, f in _JAW_FOLLOW.items():
            dy[k] += low * f
        for k in _CORNERS_L + _CORNERS_R:
            dy[k] += 0.3 * low
        dx[list(_CORNERS_L)] += 0.06 * max(dg, 0)
        dx[list(_CORNERS_R)] -= 0.06 * max(dg, 0)
        dy[self.i_lcheek] += 0.35 * low
        dy[self.i_chinmid] += 0.9 * low
        for j in (6, 8, 10):
            dy[self.i_ring[j]] += 0.5 * low * _JAW_FOLLOW[j]
        # ---- width (spread / round) and smile move the corners and their neighbours
        w = 2.0 * float(np.clip(width, 0.0, 1.0)) - 1.0  # -1 narrow .. 0 neutral .. +1 spread
        rnd = float(np.clip(rounding, 0.0, 1.0))
        e = float(np.clip(expression, 0.0, 1.0))
        out = (0.09 if w > 0 else 0.10) * d * w - 0.08 * d * rnd + 0.10 * d * e
        up = 0.10 * d * e
        for ks, sgn in ((_CORNERS_L, -1), (_CORNERS_R, 1)):
            for k in ks:
                dx[k] += sgn * out
                dy[k] -= up
        for k, (fx, fy) in _NEAR_CORNER.items():
            sgn = -1 if k in (49, 59, 61, 67) else 1
            dx[k] += sgn * out * fx
            dy[k] -= up * fy
        if rnd > 0:  # rounded lips: the opening narrows toward a circle, lips push forward (fuller)
            for k in (61, 67):
                dx[k] += 0.03 * d * rnd
            for k in (63, 65):
                dx[k] -= 0.03 * d * rnd
            dy[[50, 51, 52]] -= 0.02 * d * rnd
            dy[[56, 57, 58]] += 0.02 * d * rnd
        dy[[50, 51, 52]] -= 0.03 * d * e
        for i, sgn in zip(self.i_cheek, (-1, 1), strict=True):
            dy[i] -= 0.07 * d * e
            dx[i] += sgn * 0.02 * d * e
        for i, sgn in zip(self.i_lcheek, (-1, 1), strict=True):
            dy[i] -= 0.03 * d * e
            dx[i] += sgn * 0.4 * out  # follow the mouth corners part of the way (no fold at the corners)
        for i, sgn in zip(self.i_cheek, (-1, 1), strict=True):
            dx[i] += sgn * 0.15 * out
        dx[31] -= 0.02 * d * e
        dx[35] += 0.02 * d * e
        dy[[31, 35]] -= 0.02 * d * e
        # lower lids rise with a smile (and slightly with a blink)
        b = float(np.clip(blink, 0.0, 1.0))
        for up_k, low_k in ((37, 41), (38, 40), (43, 47), (44, 46)):
            h = lm[low_k, 1] - lm[up_k, 1]
            rise = h * (0.22 * e + 0.12 * b)
            dy[low_k] -= rise
            low_y = lm[low_k, 1] - rise
            # upper lid comes down to the (raised) lower lid
            dy[up_k] += b * max(low_y - lm[up_k, 1] - 0.25, 0.0)
            dy[self.i_crease[up_k]] += 0.35 * b * max(h, 0.0)
        P[:, 0] += dx
        P[:, 1] += dy
        # the lower inner lip never rises above the upper one (a closed mouth stays a closed slit)
        for a, b_ in ((61, 67), (62, 66), (63, 65)):
            P[b_, 1] = max(P[b_, 1], P[a, 1] + 0.3)
        return P

    def _pose(self, P: np.ndarray, yaw: float, pitch: float, roll: float) -> np.ndarray:
        """Pseudo-3D head rotation of the expression-warped vertices (weighted per vertex role)."""
        if yaw == 0 and pitch == 0 and roll == 0:
            return P
        d = self.d
        cx, cy = self.centre
        zc = -0.7 * d  # rotation centre: inside the head, behind the face plane
        f = 9.0 * d  # focal length of the weak perspective
        X, Y, Z = P[:, 0] - cx, P[:, 1] - cy, self.z0 - zc
        ya, pa, ra = np.radians([yaw, pitch, roll])
        X1 = X * np.cos(ya) + Z * np.sin(ya)
        Z1 = -X * np.sin(ya) + Z * np.cos(ya)
        Y2 = Y * np.cos(pa) - Z1 * np.sin(pa)
        Z2 = Y * np.sin(pa) + Z1 * np.cos(pa)
        s = (f - (self.z0)) / (f - (Z2 + zc))  # perspective relative to the rest pose
        X2, Y2 = X1 * s, Y2 * s
        cr, sr = np.cos(ra), np.sin(ra)
        X3, Y3 = X2 * cr - Y2 * sr, X2 * sr + Y2 * cr
        posed = np.stack([X3 + cx, Y3 + cy], 1)
        out = P + self.pose_w[:, None] * (posed - P)
        inner = self.pose_w > 0
        out[inner] = np.clip(out[inner], 1.0, WORK_SIZE - 2.0)  # never cross the fixed image border
        return out

    def points(self, openness=0.0, width=0.5, blink=0.0, yaw=0.0, pitch=0.0, roll=0.0, expression=0.0,
               rounding=0.0) -> np.ndarray:
        """All mesh vertices after the controls (256 px space), float64 [V,2]; the first 68 are landmarks."""
        return self._pose(self._expression_points(openness, width, blink, expression, rounding), yaw, pitch, roll)

    # --------------------------------------------------------------------------------------- render
    def _source(self, size: int) -> np.ndarray:
        """The 256 px crop, Gaussian-prefiltered for sampling at ``size`` (float32 [256,256,3])."""
        if size not in self._prefiltered:
            src = self.src.astype(np.float32)
            sigma = 0.5 * (WORK_SIZE / size - 1.0)
            if sigma > 0.2:
                src = gaussian_filter(src, (sigma, sigma, 0), mode="nearest")
            self._prefiltered[size] = src
        return self._prefiltered[size]

    def render(self, openness: float = 0.0, width: float = 0.5, blink: float = 0.0, yaw: float = 0.0,
               pitch: float = 0.0, roll: float = 0.0, expression: float = 0.0, size: int = 128,
               rounding: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Render one frame: (uint8 [size,size,3], landmarks float32 [68,2] in frame pixels). See module doc."""
        if not 16 <= int(size) <= 1024:
            raise ValueError(f"render size {size} outside 16..1024")
        size = int(size)
        Q = self.points(openness, width, blink, yaw, pitch, roll, expression, rounding)
        k = size / WORK_SIZE
        Qo = (Q + 0.5) * k - 0.5
        mx, my = _piecewise_affine_map(Qo, self.P0, self.tri, size)
        frame = _bilinear(self._source(size), mx, my)
        _paint_mouth(frame, Qo, self.lip_rgb, self.d * k, float(np.clip(openness, 0, 1)))
        b = float(np.clip(blink, 0, 1))
        if b > 0.05:
            Qopen = (self.points(openness, width, 0.0, yaw, pitch, roll, expression, rounding) + 0.5) * k - 0.5
            for ei, (a, c) in enumerate(((36, 39), (42, 45))):
                _paint_lid(frame, Qo, Qopen, a, c, self.lid_rgb[ei], b)
        return np.clip(frame + 0.5, 0, 255).astype(np.uint8), Qo[:68].astype(np.float32)

    def portrait(self, size: int = 128) -> np.ndarray:
        """The neutral reference frame (mouth closed, eyes open, frontal), uint8 [size,size,3]."""
        return self.render(size=size)[0]


# ------------------------------------------------------------------------------------ warp kernels
def _piecewise_affine_map(Q: np.ndarray, S: np.ndarray, tri: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse map of a piecewise-affine warp: for every output pixel, its source position.

    Q: warped vertices in output pixels [V,2]; S: their source positions [V,2]; tri: int [T,3].
    Every triangle's bounding-box pixels are enumerated at once (no Python loop), tested with barycentric
    coordinates, and mapped through the triangle's affine. Returns (map_x, map_y), float32 [size,size].
    """
    qa, qb, qc = Q[tri[:, 0]], Q[tri[:, 1]], Q[tri[:, 2]]
    D = np.stack([np.c_[qa, np.ones(len(tri))], np.c_[qb, np.ones(len(tri))], np.c_[qc, np.ones(len(tri))]], 1)
    det = np.linalg.det(D)
    ok = np.abs(det) > 1e-6
    D[~ok] = np.eye(3)
    Dinv = np.linalg.inv(D)  # lambda = [x, y, 1] @ Dinv
    Ssrc = np.stack([S[tri[:, 0]], S[tri[:, 1]], S[tri[:, 2]]], 1)  # [T,3,2]
    M = Dinv @ Ssrc  # [T,3,2]: src = [x, y, 1] @ M
    lo = np.floor(np.minimum(np.minimum(qa, qb), qc)).astype(int)
    hi = np.ceil(np.maximum(np.maximum(qa, qb), qc)).astype(int)
    lo = np.clip(lo, 0, size - 1)
    hi = np.clip(hi, 0, size - 1)
    w = hi[:, 0] - lo[:, 0] + 1
    h = hi[:, 1] - lo[:, 1] + 1
    n = np.where(ok, w * h, 0)
    tid = np.repeat(np.arange(len(tri)), n)
    start = np.cumsum(n) - n
    kk = np.arange(int(n.sum())) - np.repeat(start, n)
    wt = w[tid]
    px = lo[tid, 0] + kk % wt
    py = lo[tid, 1] + kk // wt
    L = Dinv[tid]
    fx, fy = px.astype(np.float64), py.astype(np.float64)
    eps = -1e-7
    l0 = fx * L[:, 0, 0] + fy * L[:, 1, 0] + L[:, 2, 0]
    l1 = fx * L[:, 0, 1] + fy * L[:, 1, 1] + L[:, 2, 1]
    inside = (l0 >= eps) & (l1 >= eps) & (1.0 - l0 - l1 >= eps)
    tid, fx, fy, px, py = tid[inside], fx[inside], fy[inside], px[inside], py[inside]
    Mt = M[tid]
    sx = fx * Mt[:, 0, 0] + fy * Mt[:, 1, 0] + Mt[:, 2, 0]
    sy = fx * Mt[:, 0, 1] + fy * Mt[:, 1, 1] + Mt[:, 2, 1]
    # default: scaled identity (pixels no triangle covers)
    g = (np.arange(size) + 0.5) * (WORK_SIZE / size) - 0.5
    map_x = np.broadcast_to(g[None, :], (size, size)).astype(np.float32).copy()
    map_y = np.broadcast_to(g[:, None], (size, size)).astype(np.float32).copy()
    map_x[py, px] = sx
    map_y[py, px] = sy
    return map_x, map_y


def _bilinear(src: np.ndarray, mx: np.ndarray, my: np.ndarray) -> np.ndarray:
    """Bilinear sample of float32 [H,W,3] at (mx, my) with edge clamping -> float32 [h,w,3]."""
    H, W = src.shape[:2]
    x = np.clip(mx, 0, W - 1.001)
    y = np.clip(my, 0, H - 1.001)
    x0 = x.astype(np.int32)
    y0 = y.astype(np.int32)
    fx = (x - x0)[..., None]
    fy = (y - y0)[..., None]
    flat = src.reshape(-1, 3)
    i = y0 * W + x0
    a, b, c, e = flat[i], flat[i + 1], flat[i + W], flat[i + W + 1]
    top = a + (b - a) * fx
    bot = c + (e - c) * fx
    return top + (bot - top) * fy


def _corner_axes(c0: np.ndarray, c1: np.ndarray) -> tuple[float, np.ndarray, np.ndarray] | None:
    """(length, u axis along c0->c1, v axis perpendicular and downward) of a mouth/eye corner line; None when
    the corners are under 2 px apart (nothing to paint)."""
    axis = c1 - c0
    length = float(np.hypot(*axis))
    if length < 2:
        return None
    ex = axis / length
    return length, ex, np.array([-ex[1], ex[0]])


def _paint_mouth(frame: np.ndarray, Q: np.ndarray, lip_rgb: np.ndarray, d: float, openness: float) -> None:
    """Paint the mouth interior (cavity, teeth, tongue) inside the warped inner-lip contour, in place.

    Works in a mouth-aligned frame (u along the corner line 60->64, v perpendicular, downward) with the
    upper/lower inner-lip curves interpolated through 60-61-62-63-64 and 60-67-66-65-64; the edge is
    anti-aliased analytically (coverage = distance to the nearer lip curve + 0.5 px).
    """
    c0, c1 = Q[60], Q[64]
    frame_axes = _corner_axes(c0, c1)
    if frame_axes is None:
        return
    length, ex, ey = frame_axes
    up_k, dn_k = [60, 61, 62, 63, 64], [60, 67, 66, 65, 64]
    up = (Q[up_k] - c0) @ ex, (Q[up_k] - c0) @ ey
    dn = (Q[dn_k] - c0) @ ex, (Q[dn_k] - c0) @ ey
    gap = float(np.max(dn[1] - up[1]))
    if gap < 0.35:
        return
    poly = Q[60:68]
    size = frame.shape[0]
    x0, y0 = np.clip(np.floor(poly.min(0)).astype(int) - 1, 0, size - 1)
    x1, y1 = np.clip(np.ceil(poly.max(0)).astype(int) + 1, 0, size - 1)
    ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1].astype(np.float64)
    rx, ry = xs - c0[0], ys - c0[1]
    u = rx * ex[0] + ry * ex[1]
    v = rx * ey[0] + ry * ey[1]
    yu = _curve_at(u, *up)
    yl = _curve_at(u, *dn)
    cover = np.clip(np.minimum(v - yu, yl - v) + 0.5, 0, 1) * np.clip(np.minimum(u, length - u) + 0.5, 0, 1)
    if not cover.any():
        return
    t = np.clip(u / length, 0, 1)  # 0..1 across the mouth
    side = np.abs(2 * t - 1)  # 0 centre, 1 corners
    span = np.maximum(yl - yu, 1e-3)
    depth = np.clip((v - yu) / span, 0, 1)
    lip = np.asarray(lip_rgb, np.float32)
    # cavity: dark red-brown, darkest in the middle of the opening, a little lighter at the corners
    cav = lip * np.array([0.36, 0.17, 0.18], np.float32) + 4.0
    mid = 1.0 - np.abs(2 * depth - 1)  # 1 in the middle of the opening
    shade = (1.0 - 0.45 * mid * min(1.0, gap / (0.15 * d))) * (1.0 + 0.3 * side)
    col = cav[None, None, :] * shade[..., None]
    # tongue: a soft lighter bulge at the bottom when the mouth is open enough
    if openness > 0.35:
        tng = np.clip((depth - 0.6) * 4.0, 0, 1) * np.clip(1.0 - side * 1.3, 0, 1) * min(1.0, (openness - 0.35) * 4)
        tongue = lip * np.array([0.78, 0.48, 0.48], np.float32)
        col = col + (tongue - col) * (0.85 * tng)[..., None]
    # upper teeth: a band hanging from the upper inner lip, hidden toward the corners
    th = min(0.55 * gap, 0.10 * d)
    tv = v - yu
    tooth_mask = np.clip(th - tv + 0.5, 0, 1) * np.clip((0.84 - side) * 6.0, 0, 1)
    tooth_col = np.array([236.0, 229.0, 214.0], np.float32)
    tshade = (1.0 - 0.38 * side**2) * (1.0 - 0.10 * np.clip(tv / max(th, 1e-3), 0, 1))
    teeth = tooth_col[None, None, :] * tshade[..., None]
    col = col + (teeth - col) * tooth_mask[..., None]
    # lower teeth: a thin darker band above the lower lip when wide open
    if gap > 0.25 * d:
        lh = min(0.4 * th, (gap - 0.25 * d) * 0.5)
        lmask = np.clip(lh - (yl - v) + 0.5, 0, 1) * np.clip((0.6 - side) * 5.0, 0, 1)
        col = col + (teeth * 0.8 - col) * lmask[..., None]
    region = frame[y0:y1 + 1, x0:x1 + 1]
    region += (col - region) * cover[..., None]


def _curve_at(u: np.ndarray, us: np.ndarray, vs: np.ndarray, n: int = 8) -> np.ndarray:
    """Smooth lip curve through the points (us, vs) (Catmull-Rom), evaluated at ``u`` (linear between samples)."""
    p = np.stack([us, vs], 1)
    p = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    t = np.linspace(0, 1, n, endpoint=False)[:, None]
    t2, t3 = t * t, t * t * t
    segs = []
    for i in range(1, len(p) - 2):
        a, b, c, e = p[i - 1], p[i], p[i + 1], p[i + 2]
        segs.append(0.5 * (2 * b + (-a + c) * t + (2 * a - 5 * b + 4 * c - e) * t2 + (-a + 3 * b - 3 * c + e) * t3))
    segs.append(p[-2][None])
    curve = np.vstack(segs)
    return np.interp(u, np.maximum.accumulate(curve[:, 0]), curve[:, 1])


def _paint_lid(frame: np.ndarray, Q: np.ndarray, Qopen: np.ndarray, a: int, c: int, lid_rgb: np.ndarray,
               blink: float) -> None:
    """Paint a closing upper eyelid over one eye (corners a, c = 36, 39 or 42, 45), in place.

    The band between the open eye's upper lid (raised by a margin) and the current, lowered upper lid gets
    the lid's skin colour (darker toward the lid edge), with a dark lash line along the lid edge; its opacity
    grows with ``blink``. Keeps blinks visible even where dlib's eye contour misses part of the eye (glasses).
    """
    c0, c1 = Q[a], Q[c]
    frame_axes = _corner_axes(c0, c1)
    if frame_axes is None:
        return
    length, ex, ey = frame_axes
    up_idx = (a, a + 1, a + 2, c)
    lo_idx = (a, a + 5, a + 4, c)

    def uv(P, idx):
        return np.array([(P[i] - c0) @ ex for i in idx]), np.array([(P[i] - c0) @ ey for i in idx])

    cu, cv = uv(Q, up_idx)  # current upper lid
    ou, ov = uv(Qopen, up_idx)  # open upper lid
    lu, lv = uv(Q, lo_idx)
    margin = 0.18 * length
    size = frame.shape[0]
    pts = np.concatenate([Q[list(up_idx + lo_idx)], Qopen[list(up_idx)] - margin * ey])
    x0, y0 = np.clip(np.floor(pts.min(0)).astype(int) - 1, 0, size - 1)
    x1, y1 = np.clip(np.ceil(pts.max(0)).astype(int) + 2, 0, size - 1)
    ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1].astype(np.float64)
    rx, ry = xs - c0[0], ys - c0[1]
    u = rx * ex[0] + ry * ex[1]
    v = rx * ey[0] + ry * ey[1]
    y_cur = _curve_at(u, cu, cv)
    y_top = _curve_at(u, ou, ov) - margin * (1 - (2 * np.clip(u / length, 0, 1) - 1) ** 2)
    y_low = _curve_at(u, lu, lv)
    inside_u = np.clip(np.minimum(u, length - u) / (0.12 * length) + 0.3, 0, 1)
    # band coverage: soft above (fades into the skin), hard (anti-aliased) at the lid edge
    fade_top = np.clip((v - y_top) / max(margin, 1e-3), 0, 1)
    edge = np.clip(y_cur - v + 0.5, 0, 1)
    alpha = (min(1.0, blink * 1.25) ** 1.5) * fade_top * edge * inside_u
    if not alpha.any():
        return
    lid = np.asarray(lid_rgb, np.float32)
    region = frame[y0:y1 + 1, x0:x1 + 1]
    t = np.clip((v - y_top) / np.maximum(y_cur - y_top, 1e-3), 0, 1)  # 0 top .. 1 lid edge
    # "lighten" blend: keeps the skin texture the warp brought down, lifts what is darker (iris, pupil)
    col = np.maximum(region, lid * 0.95) * (1.0 - 0.12 * t**2)[..., None]
    # lash line: a dark rim at the lid edge, thicker at the outer half
    rim = np.clip(1.0 - (y_cur - v) / max(0.07 * length, 0.6), 0, 1) * np.clip(y_cur - v + 0.5, 0, 1)
    col = col + (lid * 0.3 - col) * (rim * 0.85)[..., None]
    # below the lid edge but above the lower lid (a nearly closed eye): keep it dark
    gap_dark = np.clip(v - y_cur, 0, 1) * np.clip(y_low - v + 0.5, 0, 1) * inside_u * min(1.0, blink * 1.25) ** 2
    region += (col - region) * alpha[..., None]
    region += (lid * 0.35 - region) * (0.6 * gap_dark)[..., None]


#: settings shown by ``save_grid``: (label, render kwargs)
GRID_SETTINGS: list[tuple[str, dict]] = [
    ("neutral", {}), ("open .3", {"openness": 0.3}), ("open .7", {"openness": 0.7}), ("open 1", {"openness": 1.0}),
    ("ee", {"openness": 0.35, "width": 1.0}), ("oo", {"openness": 0.3, "width": 0.1, "rounding": 1.0}),
    ("blink .5", {"blink": 0.5}), ("blink 1", {"blink": 1.0}), ("smile", {"expression": 1.0}),
    ("smile+open", {"expression": 1.0, "openness": 0.4}), ("yaw -30", {"yaw": -30.0}), ("yaw +30", {"yaw": 30.0}),
    ("pitch +20", {"pitch": 20.0}), ("pitch -20", {"pitch": -20.0}), ("roll +20", {"roll": 20.0}),
    ("mix", {"yaw": 20.0, "pitch": -10.0, "roll": -8.0, "openness": 0.6, "blink": 1.0, "expression": 0.5}),
]


def save_grid(path: str, identities: list[Identity], size: int = 128) -> None:
    """PNG grid: one row per identity, one column per GRID_SETTINGS entry (labels on top)."""
    from PIL import Image, ImageDraw

    rows = []
    for ident in identities:
        rig = FaceRig(ident)
        rows.append(np.concatenate([rig.render(size=size, **kw)[0] for _, kw in GRID_SETTINGS], 1))
    grid = np.concatenate(rows, 0)
    head = Image.new("RGB", (grid.shape[1], 14), (0, 0, 0))
    draw = ImageDraw.Draw(head)
    for i, (label, _) in enumerate(GRID_SETTINGS):
        draw.text((i * size + 3, 1), label, fill=(255, 255, 0))
    out = Image.new("RGB", (grid.shape[1], grid.shape[0] + 14))
    out.paste(head, (0, 0))
    out.paste(Image.fromarray(grid), (0, 14))
    out.save(path)


if __name__ == "__main__":  # python -m eartalking.data.warp OUT.png [ASSETS_DIR] [N_IDENTITIES]
    import sys

    from eartalking.data.faces import load_identities, persons

    if len(sys.argv) < 2:
        sys.exit("usage: python -m eartalking.data.warp OUT.png [ASSETS_DIR] [N_IDENTITIES]")
    ids = load_identities(sys.argv[2] if len(sys.argv) > 2 else None, progress=False)
    people = [group[0] for group in persons(ids).values()]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    step = max(1, len(people) // n)
    save_grid(sys.argv[1], people[::step][:n])
    print(f"wrote {sys.argv[1]}")
