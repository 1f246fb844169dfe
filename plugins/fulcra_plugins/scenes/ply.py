"""Read and write the INRIA 3D Gaussian Splatting PLY (``point_cloud.ply``).

The file holds one ``vertex`` element with float properties ``x y z nx ny nz f_dc_0..2 f_rest_0..M
opacity scale_0..2 rot_0..3``; opacities are logits, scales are logarithms, ``rot`` is (w, x, y, z)
and not necessarily normalised; ``f_rest`` is stored channel-major (all coefficients of red, then
green, then blue). Files written here carry exactly these properties, so the usual 3DGS viewers read
them; features and masks go to separate files keyed by Gaussian index (:mod:`.prune`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fulcra.errors import FormatError, MissingDependencyError

from .gaussians import Gaussians

__all__ = ["read_ply", "write_ply", "ply_vertex_count", "check_ply_header"]

_BASE = ["x", "y", "z"]
_DC = ["f_dc_0", "f_dc_1", "f_dc_2"]
_SCALE = ["scale_0", "scale_1", "scale_2"]
_ROT = ["rot_0", "rot_1", "rot_2", "rot_3"]


def _plyfile():
    try:
        import plyfile
    except ImportError as exc:  # pragma: no cover - plyfile is in the science extra
        raise MissingDependencyError(
            "reading 3DGS PLY files needs plyfile: pip install 'fulcra[science]'", extra="science"
        ) from exc
    return plyfile


def _open(path: Path):
    plyfile = _plyfile()
    if not path.is_file():
        raise FormatError(f"{path}: no such PLY file")
    check_ply_header(path)  # header against the file size, without reading the data twice
    try:
        ply = plyfile.PlyData.read(str(path))
    except Exception as exc:  # plyfile raises several types on truncated or corrupt files
        raise FormatError(f"{path}: not a readable PLY file ({type(exc).__name__}: {exc})") from exc
    names = [el.name for el in ply.elements]
    if "vertex" not in names:
        raise FormatError(f"{path}: missing element 'vertex' (elements: {', '.join(names) or 'none'})")
    if ply.text:
        _check_text_lines(path, ply)
    return ply["vertex"]


def _check_text_lines(path: Path, ply) -> None:
    """plyfile reads exactly the header's counts and ignores what follows; for an ASCII PLY (binary
    ones are checked by size in :func:`check_ply_header`), data lines beyond them mean the header
    undercounts, and using the first N would be silent."""
    raw = path.read_bytes()
    body = raw[raw.index(b"\n", raw.find(b"end_header")) + 1 :]
    extra = len([line for line in body.splitlines() if line.strip()]) - sum(int(el.count) for el in ply.elements)
    if extra > 0:
        raise FormatError(
            f"{path}: vertex count mismatch: the header says {int(ply['vertex'].count)} but the file holds "
            f"{extra} more lines of data"
        )


_PLY_SIZES = {
    "char": 1,
    "uchar": 1,
    "int8": 1,
    "uint8": 1,
    "short": 2,
    "ushort": 2,
    "int16": 2,
    "uint16": 2,
    "int": 4,
    "uint": 4,
    "int32": 4,
    "uint32": 4,
    "float": 4,
    "float32": 4,
    "double": 8,
    "float64": 8,
}


def check_ply_header(path: str | Path) -> int:
    """Read only the header of a PLY and check it against the file: a ``vertex`` element, and for
    binary files a size equal to the header's counts times their record sizes (a truncated file or a
    header that undercounts its data fails here, before any work). Returns the vertex count.

    Raises:
        FormatError: naming the file and what disagrees.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        raise FormatError(f"{path}: not a PLY file (no 'ply' magic or no end_header in the first 64 KiB)")
    lines = head[:end].decode("ascii", "replace").splitlines()
    fmt = next((ln.split()[1] for ln in lines if ln.startswith("format ")), "")
    elements: list[tuple[str, int, int | None]] = []  # name, count, record size (None: list property)
    for ln in lines:
        parts = ln.split()
        if parts[:1] == ["element"] and len(parts) == 3:
            try:
                elements.append((parts[1], int(parts[2]), 0))
            except ValueError:
                raise FormatError(f"{path}: header line {ln!r}: count is not an integer") from None
        elif parts[:1] == ["property"] and elements:
            name, count, size = elements[-1]
            if parts[1] == "list" or size is None or parts[1] not in _PLY_SIZES:
                elements[-1] = (name, count, None)
            else:
                elements[-1] = (name, count, size + _PLY_SIZES[parts[1]])
    vertex = [e for e in elements if e[0] == "vertex"]
    if not vertex:
        raise FormatError(f"{path}: missing element 'vertex' (elements: {', '.join(e[0] for e in elements) or 'none'})")
    if fmt.startswith("binary") and all(e[2] is not None for e in elements):
        data = path.stat().st_size - (head.index(b"\n", end) + 1)
        expected = sum(e[1] * e[2] for e in elements)  # type: ignore[operator]
        if data < expected:
            raise FormatError(
                f"{path}: truncated: the header's {vertex[0][1]} Gaussians need {expected} bytes, the file holds {data}"
            )
        if data > expected:
            raise FormatError(
                f"{path}: vertex count mismatch: the header says {vertex[0][1]} but the file holds "
                f"{data - expected} more bytes of data"
            )
    return vertex[0][1]


def ply_vertex_count(path: str | Path) -> int:
    """Number of Gaussians in a PLY (reads the file)."""
    return int(_open(Path(path)).count)


def read_ply(path: str | Path, device: torch.device | str = "cpu") -> Gaussians:
    """Load a 3DGS PLY into :class:`Gaussians` (sigmoid opacities, exp scales, unit quaternions).

    Args:
        path: the ``.ply`` file.
        device: where the tensors go.
    Returns:
        :class:`Gaussians` in the file's vertex order.
    Raises:
        FormatError: naming the file and the field (missing property, f_rest count that is not an SH
            layout, non-finite value, zero-norm rotation, empty file).
    """
    path = Path(path)
    vertex = _open(path)
    props = [p.name for p in vertex.properties]
    n = int(vertex.count)
    data = vertex.data
    if len(data) != n:
        raise FormatError(f"{path}: vertex count mismatch: header says {n}, data holds {len(data)}")
    if n == 0:
        raise FormatError(f"{path}: vertex: the PLY holds no Gaussians")
    for name in _BASE + _DC + ["opacity"] + _SCALE + _ROT:
        if name not in props:
            raise FormatError(f"{path}: missing vertex property '{name}' of a 3DGS PLY")
    rest = sorted((p for p in props if p.startswith("f_rest_")), key=lambda s: int(s.split("_")[-1]))
    if rest and [int(p.split("_")[-1]) for p in rest] != list(range(len(rest))):
        raise FormatError(f"{path}: f_rest_* properties are not numbered 0..{len(rest) - 1}")
    if len(rest) % 3 or (len(rest) // 3) not in (0, 3, 8, 15):
        raise FormatError(
            f"{path}: f_rest count mismatch: {len(rest)} properties, expected 0, 9, 24 or 45 (SH degree 0-3)"
        )

    def col(names: list[str]) -> np.ndarray:
        arr = np.stack([np.asarray(data[name], dtype=np.float32) for name in names], axis=1)
        bad = ~np.isfinite(arr)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise FormatError(f"{path}: non-finite value in vertex property '{names[j]}' at Gaussian {i}")
        return arr

    means = col(_BASE)
    sh0 = col(_DC)
    opac = col(["opacity"])[:, 0]
    scales = col(_SCALE)
    quats = col(_ROT)
    k = len(rest) // 3
    shN = col(rest).reshape(n, 3, k).transpose(0, 2, 1) if k else np.zeros((n, 0, 3), np.float32)
    normals = col(["nx", "ny", "nz"]) if all(p in props for p in ("nx", "ny", "nz")) else None
    qn = np.linalg.norm(quats, axis=1, keepdims=True)
    if (qn == 0).any():
        raise FormatError(
            f"{path}: zero-norm rotation in vertex properties 'rot_0..3' at Gaussian {int(np.argmax(qn[:, 0] == 0))}"
        )

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)

    return Gaussians(
        means=t(means),
        quats=t(quats / qn),
        scales=torch.exp(t(scales)),
        opacities=torch.sigmoid(t(opac)),
        sh0=t(sh0),
        shN=t(shN),
        normals=t(normals) if normals is not None else None,
    )


def write_ply(gaussians: Gaussians, path: str | Path) -> Path:
    """Write :class:`Gaussians` as a 3DGS PLY (binary little endian, only the standard properties).

    Opacities are stored as logits (clamped to [1e-6, 1 - 1e-6] so they stay finite) and scales as
    logarithms. Returns the path written. The write goes through a temporary file, then a rename.
    """
    plyfile = _plyfile()
    path = Path(path)
    g = gaussians.to("cpu")
    n = len(g)
    k = g.shN.shape[1]
    rest = [f"f_rest_{i}" for i in range(3 * k)]
    names = _BASE + ["nx", "ny", "nz"] + _DC + rest + ["opacity"] + _SCALE + _ROT
    normals = g.normals if g.normals is not None else torch.zeros(n, 3)
    op = g.opacities.double().clamp(1e-6, 1 - 1e-6)
    cols = [
        g.means,
        normals,
        g.sh0,
        g.shN.transpose(1, 2).reshape(n, 3 * k),
        torch.log(op / (1 - op)).float()[:, None],
        torch.log(g.scales.clamp_min(1e-30)),
        g.quats,
    ]
    arr = torch.cat([c.float().reshape(n, -1) for c in cols], dim=1).numpy()
    rec = np.empty(n, dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        rec[name] = arr[:, i]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    plyfile.PlyData([plyfile.PlyElement.describe(rec, "vertex")], text=False).write(str(tmp))
    tmp.replace(path)
    return path
