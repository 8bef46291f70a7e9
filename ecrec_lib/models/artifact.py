"""The trained recommender as a versioned, loadable MLflow artifact.

``log_recommender`` writes a self-describing directory (weights, id maps, config, text
encoder reference or weights, cached item text embeddings, the item matrix, and a
``manifest.json`` with the sha256 of every file) and logs it as a custom
``mlflow.pyfunc`` model with a signature. ``load_recommender(model_uri)`` verifies the
manifest and returns a :class:`~ecrec_lib.models.api.Recommender`; a corrupted or
incomplete artifact raises :class:`ArtifactError` saying which file is wrong. Nothing is read
before the manifest checks pass: every file listed, none unlisted, no name or link leading
out of the artifact folder; weights load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from ecrec_lib.lake import replace_local_dir
from ecrec_lib.models.api import UserHistory
from ecrec_lib.models.blend import CoocBlend
from ecrec_lib.models.config import ModelConfig
from ecrec_lib.models.recommender import TwoTowerRecommender
from ecrec_lib.models.text_encoder import TextEncoder, TextModelError, resolve_text_model_path
from ecrec_lib.models.two_tower import TwoTowerModel

log = logging.getLogger(__name__)

# 2: the blend's ranker reads causal features (events at or before each row's now) and no
# category-path features; a format-1 ranker was fitted on features that read later events
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
ARTIFACT_KEY = "recommender"  # name of the directory inside the pyfunc model's artifacts
REQUIRED_FILES = ("state_dict.pt", "item_ids.json", "model_config.json", "vocab.json",
                  "item_matrix.npy", "metadata.json")


class ArtifactError(RuntimeError):
    """A model artifact is missing, incomplete or corrupted."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_recommender(rec: TwoTowerRecommender, out_dir: str | Path) -> Path:
    """Write ``rec`` to ``out_dir`` with a sha256 manifest; returns the dir. An existing
    ``out_dir`` is replaced whole (no file of an earlier model, e.g. its blend, survives into
    the new manifest); a failed save leaves it untouched."""
    return replace_local_dir(out_dir, lambda out: _write_recommender(rec, out))


def _write_recommender(rec: TwoTowerRecommender, out: Path) -> None:
    model = rec.model
    mcfg = rec.mcfg
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / "state_dict.pt")
    (out / "item_ids.json").write_text(json.dumps(rec.item_ids))
    (out / "item_texts.json").write_text(json.dumps(rec.item_texts))
    (out / "model_config.json").write_text(json.dumps(mcfg.to_dict(), indent=1))
    (out / "vocab.json").write_text(json.dumps({
        "categories": rec.categories, "brands": rec.brands,
        "n_items": model.n_items, "text_dim": model.text_dim,
    }))
    np.save(out / "item_matrix.npy", rec.item_matrix())
    (out / "metadata.json").write_text(json.dumps(rec.metadata, indent=1, default=str))
    text_info: dict[str, Any] = {"use_text": mcfg.use_text}
    if mcfg.use_text:
        np.save(out / "item_text_emb.npy", model.item_text_emb.detach().cpu().numpy())
        enc = rec.text_encoder
        text_info.update({"mode": enc.mode, "max_length": enc.max_length,
                          "source_path": enc.path, "hidden_size": enc.hidden_size})
        if enc.trainable:
            # Fine-tuned weights are part of the model: store them (LoRA merged).
            enc.save_pretrained(str(out / "text_encoder"))
            text_info["weights"] = "text_encoder"
        else:
            # Frozen: tokenizer + config only; weights are the pretrained ones at source_path.
            enc.tokenizer.save_pretrained(str(out / "text_encoder"))
            enc.model.config.save_pretrained(str(out / "text_encoder"))
            text_info["weights"] = "source_path"
    (out / "text_encoder.json").write_text(json.dumps(text_info, indent=1))
    if rec.blend is not None:
        rec.blend.save(out)  # co-occurrence blend (ecrec_lib.models.blend)
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {
        "format_version": FORMAT_VERSION,
        "files": {str(p.relative_to(out)): _sha256(p) for p in files},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _member(root: Path, name: str) -> Path:
    """The file ``name`` of the manifest, refused when it leads out of the artifact folder."""
    rel = Path(name)
    if not name or rel.is_absolute() or ".." in rel.parts or "\\" in name:
        raise ArtifactError(
            f"model artifact at {root}: manifest entry {name!r} points outside the artifact "
            "folder (an absolute path or '..'); ecrec never writes such a manifest, so the "
            "artifact is refused; re-train and re-log the model"
        )
    path = root / rel
    target = path.resolve()
    if not target.is_relative_to(root.resolve()):
        raise ArtifactError(
            f"model artifact at {root}: {name} is a link to {target}, outside the artifact "
            "folder; the artifact is refused; re-train and re-log the model"
        )
    return path


def verify_artifact_dir(path: str | Path) -> dict[str, Any]:
    """Check the manifest: every listed file inside the folder and present with its sha256,
    no file that it does not list. Returns the manifest."""
    root = Path(path)
    mpath = root / MANIFEST
    if mpath.is_symlink():
        raise ArtifactError(f"model artifact at {root}: {MANIFEST} is a link; the artifact is refused")
    if not mpath.is_file():
        raise ArtifactError(
            f"model artifact at {root} has no {MANIFEST}: it is incomplete or not an ecrec "
            "recommender; re-log the model with ecrec_lib.models.artifact.log_recommender"
        )
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except (ValueError, KeyError) as exc:
        raise ArtifactError(f"model artifact at {root}: unreadable {MANIFEST} ({exc})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"model artifact at {root} has format {manifest.get('format_version')}, "
                            f"this code reads format {FORMAT_VERSION}: retrain the model with this "
                            "version (python -m jobs.train_encoders) and register it again")
    if not isinstance(files, dict):
        raise ArtifactError(f"model artifact at {root}: {MANIFEST} 'files' must map names to sha256")
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise ArtifactError(f"model artifact at {root} is incomplete: manifest lacks {missing}")
    members = {name: _member(root, name) for name in files}
    unlisted = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                      if (p.is_file() or p.is_symlink()) and p != mpath
                      and p.relative_to(root).as_posix() not in files)
    if unlisted:
        raise ArtifactError(
            f"model artifact at {root} holds files its {MANIFEST} does not list: {unlisted[:10]}; "
            "they were added after the model was saved, so the artifact is refused"
        )
    for name, digest in files.items():
        f = members[name]
        if not f.is_file():
            raise ArtifactError(f"model artifact at {root} is incomplete: file {name} is missing")
        if _sha256(f) != digest:
            raise ArtifactError(
                f"model artifact at {root} is corrupted: {name} does not match its sha256 in "
                f"{MANIFEST}; re-download it or re-train and re-log the model"
            )
    return manifest


def load_recommender_dir(path: str | Path, device: str = "cpu") -> TwoTowerRecommender:
    """Load a directory written by :func:`save_recommender` (manifest verified first)."""
    root = Path(path)
    verify_artifact_dir(root)
    mcfg = ModelConfig.from_dict(json.loads((root / "model_config.json").read_text()))
    vocab = json.loads((root / "vocab.json").read_text())
    item_ids = json.loads((root / "item_ids.json").read_text())
    texts = (json.loads((root / "item_texts.json").read_text())
             if (root / "item_texts.json").is_file() else [""] * len(item_ids))
    metadata = json.loads((root / "metadata.json").read_text())
    text_info = json.loads((root / "text_encoder.json").read_text()) if (
        root / "text_encoder.json").is_file() else {"use_text": False}
    state = torch.load(root / "state_dict.pt", map_location="cpu", weights_only=True)
    n = int(vocab["n_items"])
    model = TwoTowerModel(
        mcfg, n, int(vocab["text_dim"]),
        state["item_category"].numpy(), state["item_brand"].numpy(),
        len(vocab["categories"]), len(vocab["brands"]), state["has_id"].numpy(),
    )
    model.load_state_dict(state)
    if mcfg.use_text:
        model.set_text_embeddings(np.load(root / "item_text_emb.npy"))
    model.to(device).eval()
    if mcfg.use_text:
        model.set_text_embeddings(np.load(root / "item_text_emb.npy"))

    def text_loader() -> TextEncoder:
        if text_info.get("weights") == "text_encoder":
            enc_path = str(root / "text_encoder")
        else:
            try:
                enc_path = resolve_text_model_path(text_info.get("source_path", ""))
            except TextModelError:
                # The training machine's path is gone: fall back to this machine's default.
                enc_path = resolve_text_model_path("")
        enc = TextEncoder(enc_path, "frozen", int(text_info.get("max_length", mcfg.text_max_length)))
        if enc.hidden_size != int(vocab["text_dim"]):
            raise ArtifactError(
                f"text encoder at {enc_path} has hidden size {enc.hidden_size}, the model was "
                f"trained with {vocab['text_dim']}; set ECREC_TEXT_MODEL_PATH to the encoder "
                "used in training"
            )
        return enc.to(device)

    rec = TwoTowerRecommender(
        model, mcfg, item_ids, texts, vocab["categories"], vocab["brands"],
        text_encoder_loader=text_loader if mcfg.use_text else None, metadata=metadata,
    )
    rec.blend = CoocBlend.load(root)
    if rec.blend is not None:
        covered = {rec.blend.knn.n_items}
        for part in (rec.blend.user_knn, rec.blend.linear):
            if part is not None:
                covered.add(part.n_items)
        if covered != {len(item_ids)}:
            raise ArtifactError(
                f"model artifact at {root}: its co-occurrence blend covers {sorted(covered)} "
                f"items but the model has {len(item_ids)}; re-train and re-log the model"
            )
    return rec


# ---------------------------------------------------------------------- MLflow pyfunc
class TwoTowerPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc face of the recommender: a DataFrame with a ``query`` column gives query
    vectors; with ``item_ids`` (+ ``event_types``, ``event_times``, ``now_ts``) user
    vectors. Consumers should prefer :func:`load_recommender`."""

    def load_context(self, context: Any) -> None:
        self.rec = load_recommender_dir(context.artifacts[ARTIFACT_KEY])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        return pyfunc_predict(self.rec, model_input)


def pyfunc_predict(rec: TwoTowerRecommender, df: pd.DataFrame) -> np.ndarray:
    if "query" in df.columns and df["query"].notna().all():
        return rec.encode_queries(df["query"].astype(str).tolist())
    if "item_ids" in df.columns:
        hist = []
        for r in df.itertuples(index=False):
            ids = list(r.item_ids)
            types = list(getattr(r, "event_types", None) or [""] * len(ids))
            times = list(getattr(r, "event_times", None) or [0] * len(ids))
            hist.append(UserHistory(ids, types, [int(t) for t in times]))
        now = int(df["now_ts"].max()) if "now_ts" in df.columns else max(
            [max(h.event_times) for h in hist if len(h.event_times)] or [0])
        return rec.encode_users(hist, now)
    raise ValueError("model input needs a 'query' column (search) or an 'item_ids' column (users)")


def _signature(dim: int) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema, TensorSpec

    inputs = Schema([
        ColSpec("string", "query", required=False),
        ColSpec(Array("string"), "item_ids", required=False),
        ColSpec(Array("string"), "event_types", required=False),
        ColSpec(Array("long"), "event_times", required=False),
        ColSpec("long", "now_ts", required=False),
    ])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, dim))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_recommender(rec: TwoTowerRecommender, name: str = "model") -> str:
    """Log ``rec`` into the active MLflow run as a pyfunc model; returns its model URI."""
    with tempfile.TemporaryDirectory() as tmp:
        d = save_recommender(rec, Path(tmp) / ARTIFACT_KEY)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=TwoTowerPyfunc(),
            artifacts={ARTIFACT_KEY: str(d)},
            signature=_signature(rec.mcfg.dim),
            pip_requirements=["torch", "transformers", "numpy", "pandas", "mlflow"],
        )
    return info.model_uri


def load_recommender(model_uri: str, device: str = "cpu") -> TwoTowerRecommender:
    """Load a logged recommender (``runs:/``, ``models:/name@alias``, ``models:/m-...`` or a
    local path) without going through pyfunc; the manifest is verified."""
    local = Path(model_uri)
    if not local.exists():
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
        except Exception as exc:  # noqa: BLE001 - MLflow raises many types; re-raise with context
            raise ArtifactError(f"cannot download model {model_uri}: {exc}") from exc
    for candidate in (local / "artifacts" / ARTIFACT_KEY, local / ARTIFACT_KEY, local):
        if (candidate / MANIFEST).is_file() or (candidate / "state_dict.pt").is_file():
            return load_recommender_dir(candidate, device)
    raise ArtifactError(
        f"model {model_uri} holds no ecrec recommender (no artifacts/{ARTIFACT_KEY}/{MANIFEST}); "
        "it is incomplete or was not logged with log_recommender"
    )
