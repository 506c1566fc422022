"""Join per-episode files into the multi-episode files of the v3 layout (staged; see :mod:`openlbm.data.writer`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from openlbm.data import checksums as C
from openlbm.data import layout as L
from openlbm.data.writer import STAGING

if TYPE_CHECKING:
    from openlbm.data.writer import DatasetWriter

EPISODES_PER_META_FILE = 1000


def _groups(sizes: list[float], limit_bytes: float) -> list[int]:
    """Assign consecutive items to files so that each file stays under ``limit_bytes`` (at least one item each)."""
    out, file, acc = [], 0, 0.0
    for s in sizes:
        if acc > 0 and acc + s > limit_bytes:
            file, acc = file + 1, 0.0
        out.append(file)
        acc += s
    return out


def _join_segments(segments: list[tuple[Path, float, float]], out: Path) -> list[float]:
    """Copy the packets of ``(file, from_s, to_s)`` segments back to back into ``out``; returns the start times."""
    starts: list[float] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), "w", format="mp4") as oc:
        ost, tb, offset = None, None, 0
        for path, t0, t1 in segments:
            with av.open(str(path)) as ic:
                ist = ic.streams.video[0]
                if ost is None:
                    ost, tb = oc.add_stream_from_template(ist, opaque=True), ist.time_base
                elif ist.time_base != tb:
                    raise L.DatasetError(f"{L.where(path)}: time base {ist.time_base} differs from {tb}; cannot join")
                p0, p1 = round(t0 / tb), round(t1 / tb)
                starts.append(float(offset * tb))
                ic.seek(p0, stream=ist, backward=True, any_frame=False)
                for pkt in ic.demux(ist):
                    if pkt.dts is None or pkt.pts < p0:
                        continue
                    if pkt.pts >= p1:
                        break
                    pkt.pts += offset - p0
                    pkt.dts += offset - p0
                    pkt.stream = ost
                    oc.mux(pkt)
                offset += p1 - p0
    return starts


def consolidate(w: DatasetWriter) -> tuple[list[list[str]], list[dict[str, Any]]]:
    """Write the joined files under ``root/.openlbm_finalize/``; returns ``(moves, new episode rows)``."""
    root, cs = w.root, w.chunk_size
    stage = root / STAGING
    rows = [dict(r) for r in w.episodes]

    def rel(template: str, slot: int, key: str | None = None) -> str:
        c, f = divmod(slot, cs)
        return template.format(chunk_index=c, file_index=f, video_key=key)

    def src(template: str, r: dict[str, Any], prefix: str, key: str | None = None) -> Path:
        return root / template.format(chunk_index=r[f"{prefix}/chunk_index"], file_index=r[f"{prefix}/file_index"], video_key=key)

    moves: list[list[str]] = []
    # data: sizes estimated from file size x share of rows
    tables: dict[Path, pa.Table] = {}
    sizes = []
    for r in rows:
        p = src(L.DATA_PATH, r, "data")
        if p not in tables:
            tables[p] = pq.read_table(p)
        sizes.append(p.stat().st_size * r["length"] / max(1, tables[p].num_rows))
    groups = _groups(sizes, float(w.info.get("data_files_size_in_mb", 100)) * 2**20)
    for g in sorted(set(groups)):
        parts = []
        for r, gi in zip(rows, groups, strict=True):
            if gi == g:
                t = tables[src(L.DATA_PATH, r, "data")]
                idx = t.column("index")
                mask = pc.and_(pc.greater_equal(idx, r["dataset_from_index"]), pc.less(idx, r["dataset_to_index"]))
                parts.append(t.filter(mask))
                r["data/chunk_index"], r["data/file_index"] = divmod(g, cs)
        table = pa.concat_tables(parts)
        out = rel(L.DATA_PATH, g)
        L.write_parquet_atomic(stage / out, table.replace_schema_metadata(parts[0].schema.metadata))
        moves.append([f"{STAGING}/{out}", out])
    for k in w.video_keys:
        segs = [(src(L.VIDEO_PATH, r, f"videos/{k}", k), r[f"videos/{k}/from_timestamp"], r[f"videos/{k}/to_timestamp"]) for r in rows]
        total = {p: 0.0 for p, _, _ in segs}
        for p, t0, t1 in segs:
            total[p] += t1 - t0
        sizes = [p.stat().st_size * (t1 - t0) / max(1e-9, total[p]) for p, t0, t1 in segs]
        groups = _groups(sizes, float(w.info.get("video_files_size_in_mb", 200)) * 2**20)
        for g in sorted(set(groups)):
            members = [i for i, gi in enumerate(groups) if gi == g]
            out = rel(L.VIDEO_PATH, g, k)
            starts = _join_segments([segs[i] for i in members], stage / out)
            for i, t0 in zip(members, starts, strict=True):
                r = rows[i]
                r[f"videos/{k}/chunk_index"], r[f"videos/{k}/file_index"] = divmod(g, cs)
                r[f"videos/{k}/to_timestamp"] = t0 + (r[f"videos/{k}/to_timestamp"] - r[f"videos/{k}/from_timestamp"])
                r[f"videos/{k}/from_timestamp"] = t0
            moves.append([f"{STAGING}/{out}", out])
    for start in range(0, len(rows), EPISODES_PER_META_FILE):
        slot = start // EPISODES_PER_META_FILE
        part = rows[start : start + EPISODES_PER_META_FILE]
        for r in part:
            r["meta/episodes/chunk_index"], r["meta/episodes/file_index"] = divmod(slot, cs)
        out = rel(L.EPISODES_PATH, slot)
        L.write_parquet_atomic(stage / out, pa.Table.from_pylist(part))
        moves.append([f"{STAGING}/{out}", out])
    # the joined files' hashes replace the per-episode ones in the same journal: applied together, or neither
    hashes = {dst: C.file_sha256(root / src) for src, dst in moves if not dst.startswith(L.EPISODES_DIR)}
    C.write(stage / C.CHECKSUMS_PATH, hashes)
    moves.append([f"{STAGING}/{C.CHECKSUMS_PATH}", C.CHECKSUMS_PATH])
    return moves, rows
