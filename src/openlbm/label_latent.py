"""``lbm data label-latent``: label every frame of a dataset with a latent action model's code.

Frame ``t`` of an episode of ``N`` frames gets the code of the pair ``(o_t, o_{min(t+k, N-1)})`` (``k`` the
model's frame gap; past the episode end the last frame is repeated). The output is a NEW dataset folder: the input
plus two per-frame features, declared in ``meta/info.json``::

    latent_action        float32 [L]   the quantised code vector (L = groups x code_dim)
    latent_action_index  int64   [G]   the code index of each group (for analysis)

plus ``meta/latent_action.json`` (provenance: which model made them, the sha256 of its weights, its config, k, L,
the date, the openlbm version). Videos are hard-linked (copied across filesystems), never re-encoded; data
parquet files are rewritten with the two columns appended; stats gain the two features.

Crash safety: the output folder is locked (one writer), marked as partial while it is written, and ``meta/info.json``
is written last: until then no reader takes it for a dataset, and a rerun clears the partial folder and starts over.

It composes the dataset layer (frames decoded by ``RobotDataset.get_episode``) and a trained model (``policies``),
so it lives outside both packages, like ``train_command``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from openlbm.policies.latent_action import LAM

log = logging.getLogger(__name__)

LATENT_KEY = "latent_action"
LATENT_INDEX_KEY = "latent_action_index"
PROVENANCE_PATH = "meta/latent_action.json"
PARTIAL_MARKER = ".openlbm_label_latent_partial"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed there
        shutil.copy2(src, dst)


def _prepare_out(src: Path, out: Path) -> None:
    """Refuse an output that is the input, an existing dataset or a foreign non-empty folder; clear our own partial
    output of an interrupted run (the caller holds the folder lock)."""
    from openlbm.data import layout as L
    from openlbm.locking import LOCK_FILE

    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise ValueError(f"--out {out} must be a new folder outside the input dataset {src}")
    if (out / L.INFO_PATH).exists():
        raise FileExistsError(f"{out} already holds a dataset; choose another --out (or delete it)")
    leftovers = [p for p in out.iterdir() if p.name not in (LOCK_FILE, PARTIAL_MARKER)]
    if leftovers and not (out / PARTIAL_MARKER).exists():
        raise FileExistsError(f"{out} is not empty ({leftovers[0].name}, ...) and is not an interrupted "
                              "label-latent output; choose an empty or new --out")
    for p in leftovers:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    (out / PARTIAL_MARKER).write_text("lbm data label-latent is writing this folder; rerun it to start over\n")


def compute_labels(lam: LAM, src: Path, cameras: dict[str, str], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Code vectors ``[N_frames, L]`` float32 and indices ``[N_frames, G]`` int64, by global frame index.

    ``cameras`` maps the model's camera names to the dataset's. Frames are decoded one episode at a time."""
    import numpy as np
    import torch

    from openlbm.data.dataset import RobotDataset
    from openlbm.types import camera_key, chw_from_hwc

    ds = RobotDataset(src, camera_keys=[camera_key(c) for c in cameras.values()])
    meta, k = ds.meta, lam.config.frame_gap
    codes = np.zeros((meta.num_frames, lam.config.model.latent_dim), np.float32)
    indices = np.zeros((meta.num_frames, lam.config.model.groups), np.int64)
    for ep in range(meta.num_episodes):
        data = ds.get_episode(ep)
        n, start = int(meta.ep_len[ep]), int(meta.ep_from[ep])
        frames = {mine: chw_from_hwc(data[camera_key(theirs)]) for mine, theirs in cameras.items()}  # [N, 3, H, W]
        later = torch.from_numpy(np.minimum(np.arange(n) + k, n - 1))
        for b in range(0, n, batch_size):
            sl = slice(b, min(n, b + batch_size))
            try:
                c, i = lam.encode({m: f[sl] for m, f in frames.items()}, {m: f[later[sl]] for m, f in frames.items()})
            except ValueError as e:
                raise ValueError(f"{src}, episode {ep}: {e}") from None
            codes[start + sl.start : start + sl.stop] = c.cpu().numpy()
            indices[start + sl.start : start + sl.stop] = i.cpu().numpy()
        log.debug("episode %d: %d frames labelled", ep, n)
    return codes, indices


def _write_data(src: Path, out: Path, meta: Any, features: dict, codes: np.ndarray, indices: np.ndarray) -> None:
    """Every data parquet file of ``src`` with the two label columns appended (rows matched by ``index``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from openlbm.data import layout as L

    for path in L.iter_data_files(src, meta.episodes, meta.data_path):
        table = pq.read_table(path)
        rows = table.column("index").to_numpy().reshape(-1)
        for key, arr in ((LATENT_KEY, codes), (LATENT_INDEX_KEY, indices)):
            typ = L.arrow_type(features[key])
            if pa.types.is_fixed_size_list(typ):
                flat = pa.array(arr[rows].reshape(-1), typ.value_type)  # [n, D] -> [n*D]
                column = pa.FixedSizeListArray.from_arrays(flat, typ.list_size)
            else:  # a one-wide feature is a plain column, as the writer stores it
                column = pa.array(arr[rows].reshape(-1), typ)
            table = table.append_column(pa.field(key, typ), column)
        specs = {k: v for k, v in features.items() if k in table.column_names}
        metadata = dict(table.schema.metadata or {})
        metadata[b"huggingface"] = L.hf_features_meta(specs).encode()
        L.write_parquet_atomic(out / path.relative_to(src), table.replace_schema_metadata(metadata))


def _write_episodes(src: Path, out: Path, meta: Any, codes: np.ndarray, indices: np.ndarray) -> None:
    """``meta/episodes`` rows of ``src`` plus each episode's stats of the two label features."""
    import pyarrow as pa

    from openlbm.data import layout as L
    from openlbm.data.stats import episode_stats

    by_file: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for e, row in enumerate(meta.episodes):
        sl = slice(int(meta.ep_from[e]), int(meta.ep_to[e]))
        row = dict(row)
        for key, st in episode_stats({LATENT_KEY: codes[sl], LATENT_INDEX_KEY: indices[sl]}).items():
            row.update({f"stats/{key}/{name}": v for name, v in st.items()})
        by_file.setdefault((int(row["meta/episodes/chunk_index"]), int(row["meta/episodes/file_index"])), []).append(row)
    for (c, f), rows in by_file.items():
        L.write_parquet_atomic(out / L.EPISODES_PATH.format(chunk_index=c, file_index=f), pa.Table.from_pylist(rows))


def _copy_rest(src: Path, out: Path) -> None:
    """Videos hard-linked; every other non-hidden file of ``src`` (top level and ``meta/``) copied, except what is
    rewritten (``info.json``, ``stats.json``, ``episodes/``)."""
    from openlbm.data import layout as L

    for p in sorted((src / "videos").rglob("*")) if (src / "videos").is_dir() else []:
        if p.is_file() and not p.name.startswith("."):
            _link_or_copy(p, out / p.relative_to(src))
    skip = {L.INFO_PATH, L.STATS_PATH, PROVENANCE_PATH}
    for p in [*src.glob("*"), *(src / "meta").glob("*")]:
        rel = str(p.relative_to(src))
        if p.is_file() and not p.name.startswith(".") and rel not in skip:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, out / rel)


def provenance(lam_path: Path, lam_dir: Path, lam: LAM, cameras: dict[str, str], src: Path, frames: int) -> dict[str, Any]:
    """The ``meta/latent_action.json`` record: which model (dir, weights hash, config) labelled which dataset, how."""
    import openlbm

    return {
        "lam_dir": str(lam_dir.resolve()),
        "lam_source": str(lam_path.resolve()),
        "weights_sha256": sha256_file(lam_dir / "model.safetensors"),
        "config": lam.config.to_dict(),
        "frame_gap": lam.config.frame_gap,
        "latent_dim": lam.config.model.latent_dim,
        "groups": lam.config.model.groups,
        "codebook_size": lam.config.model.codebook_size,
        "cameras": cameras,
        "pairing": "frame t: (o_t, o_min(t+k, N-1)), N the episode length",
        "source_dataset": str(src.resolve()),
        "frames": frames,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "openlbm_version": openlbm.__version__,
    }


def label_dataset(lam_path: Path, src: Path, out: Path, batch_size: int = 64, cameras: tuple[str, ...] = (),
                  device: str = "cpu") -> dict[str, Any]:
    """Write ``out`` = dataset ``src`` + latent action labels from the model at ``lam_path`` (run, checkpoint or LAM
    dir); returns the provenance record. ``cameras``: the dataset cameras fed to the model, in its order (default:
    the model's own camera names)."""
    import numpy as np

    from openlbm.data import layout as L
    from openlbm.data.dataset import DatasetMeta
    from openlbm.data.stats import array_source, exact_stats
    from openlbm.data.validate import require_valid
    from openlbm.locking import lock_dir
    from openlbm.policies.latent_action import LAM
    from openlbm.policies.policy_dir import resolve_policy_dir
    from openlbm.types import FeatureSpec

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    src, out = Path(src), Path(out)
    lam_dir = resolve_policy_dir(lam_path)
    lam = LAM.load(lam_dir, device)
    if cameras and len(cameras) != len(lam.cameras):
        raise ValueError(f"--cameras names {len(cameras)} camera(s); the model stacks {len(lam.cameras)}: "
                         f"{list(lam.cameras)}")
    cam_map = dict(zip(lam.cameras, cameras or lam.cameras, strict=True))
    require_valid([src])
    meta = DatasetMeta(src)
    taken = [k for k in (LATENT_KEY, LATENT_INDEX_KEY) if k in meta.features]
    if taken:
        raise ValueError(f"{src} already has feature(s) {taken}; label the unlabelled dataset instead")
    lock = lock_dir(out, "lbm data label-latent")
    try:
        _prepare_out(src, out)
        codes, indices = compute_labels(lam, src, cam_map, batch_size)
        features = {k: L.feature_from_json(k, v, src / L.INFO_PATH) for k, v in meta.info["features"].items()}
        features[LATENT_KEY] = FeatureSpec("float32", (lam.config.model.latent_dim,))
        features[LATENT_INDEX_KEY] = FeatureSpec("int64", (lam.config.model.groups,))
        _write_data(src, out, meta, features, codes, indices)
        _write_episodes(src, out, meta, codes, indices)
        _copy_rest(src, out)
        stats = json.loads((src / L.STATS_PATH).read_text())
        stats[LATENT_KEY] = exact_stats([array_source(codes)])
        stats[LATENT_INDEX_KEY] = exact_stats([array_source(indices)])
        L.write_json_atomic(out / L.STATS_PATH, stats)
        record = provenance(Path(lam_path), lam_dir, lam, cam_map, src, int(meta.num_frames))
        L.write_json_atomic(out / PROVENANCE_PATH, record)
        info = dict(meta.info)
        info["features"] = {**meta.info["features"],
                            **{k: L.feature_to_json(features[k], meta.fps) for k in (LATENT_KEY, LATENT_INDEX_KEY)}}
        L.write_json_atomic(out / L.INFO_PATH, info)  # commit point: from here on `out` is a dataset
        (out / PARTIAL_MARKER).unlink()
        usage = [len(np.unique(indices[:, g])) for g in range(indices.shape[1])]
        log.info("labelled %d frames of %s into %s; codes used per group: %s of %d", meta.num_frames, src, out, usage,
                 lam.config.model.codebook_size)
        return record
    finally:
        lock.release()


@dataclass(frozen=True)
class LabelLatent:
    """Label every frame of a dataset with a latent action model's code of (frame t, frame t+k), into a new dataset
    folder (the input + ``latent_action`` / ``latent_action_index`` features + ``meta/latent_action.json``)."""

    lam: Path
    """The latent action model: a run dir of ``lbm train lam``, one of its checkpoint dirs, or a saved model dir."""
    dataset: Path
    """The dataset to label (LeRobot v3; left unchanged)."""
    out: Path
    """The new labelled dataset's folder (must not exist, or be empty, or be an interrupted label-latent output)."""
    batch_size: int = 64
    """Frame pairs per forward pass (memory grows with it: ~0.6 GB at 64 for two 64 px cameras)."""
    cameras: tuple[str, ...] = ()
    """The dataset's cameras fed to the model, in the model's camera order; default: the model's own camera names."""
    device: str = "cpu"
    """Torch device to run the model on (``cpu``, ``cuda``...)."""

    def run(self) -> int:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        record = label_dataset(self.lam, self.dataset, self.out, self.batch_size, self.cameras, self.device)
        print(f"wrote {self.out}: {record['frames']} frames labelled with {LATENT_KEY} [{record['latent_dim']}] and "
              f"{LATENT_INDEX_KEY} [{record['groups']}] (k = {record['frame_gap']}); provenance in "
              f"{self.out / PROVENANCE_PATH}; `lbm data latent-report {self.out}` analyses the codes")
        return 0


COMMANDS: dict[str, type] = {"label-latent": LabelLatent}
