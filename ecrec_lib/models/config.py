"""ModelConfig: every knob of the two-tower model and its training loop, one reason per field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ENCODER_MODES = ("frozen", "finetune_top", "lora")
LOSSES = ("auto", "full_softmax", "sampled_softmax")
BLOCK_LAYOUTS = ("pre_ln", "post_ln")


@dataclass(frozen=True)
class ModelConfig:
    # --- item tower ------------------------------------------------------------------------
    use_text: bool = True  # pretrained text encoder over title/brand/category (False: ID-only SASRec)
    use_id: bool = True  # learned per-item ID embedding for items that have interactions
    use_side: bool = True  # category + brand embeddings (cheap, help cold and sparse items)
    text_model_path: str = ""  # local HF model dir; empty: the packaged all-MiniLM-L6-v2
    encoder_mode: str = "frozen"  # frozen (cached embeddings) | finetune_top | lora
    text_max_length: int = 64  # tokens per item text: titles are short, longer costs CPU
    text_batch_size: int = 128  # texts per encoder forward when embedding a catalog
    finetune_layers: int = 2  # finetune_top: this many top transformer layers are trained
    lora_r: int = 8  # lora: rank of the adapters on attention query/value
    lora_alpha: int = 16
    text_lr: float = 5e-5  # the pretrained encoder needs a much smaller step than the towers
    max_text_items_per_step: int = 512  # finetune modes: items re-encoded with gradient per step
    id_dropout: float = 0.2  # share of items whose ID part is zeroed per step (cold-start path)
    init_id_from_text: bool = True  # ID table starts from PCA of the frozen text embeddings
    center_text: bool = True  # subtract the catalog mean and L2-normalize text embeddings:
    # sentence embeddings share a large common direction that otherwise swamps the projection
    item_norm: bool = False  # LayerNorm on the summed item vector before L2-normalization;
    # off: it rescales the ID part and was slightly worse on Amazon Beauty
    # --- user tower ------------------------------------------------------------------------
    dim: int = 64  # width of every tower and of the shared vector space
    n_layers: int = 2
    n_heads: int = 2
    max_seq_len: int = 50  # last N item events per user fed to the user tower
    dropout: float = 0.3  # Beauty-size data overfits fast: 0.3-0.5 works
    block_layout: str = "pre_ln"  # pre_ln: LayerNorm inside each residual branch, one at the end;
    # post_ln: SASRec's (a LayerNorm on the input embeddings and after each residual sum)
    use_event_types: bool = True  # embed view/click/cart/purchase of every history event
    # --- training --------------------------------------------------------------------------
    epochs: int = 30
    batch_size: int = 256  # sequences per step (all their positions are trained at once)
    batch_by_length: bool = True  # a step's sequences of similar length: less padding, but a
    # step's loss is the mean over its targets, so steps of short histories weigh each of their
    # targets more; False: shuffled steps, every target weighs about the same (SASRec's recipe)
    lr: float = 5e-3  # 1e-3 learns too slowly per step for a CPU budget (Beauty)
    weight_decay: float = 0.0
    warmup_steps: int = 20
    lr_schedule: str = "cosine"  # constant | cosine (after the linear warmup): the decay phase
    # added ~2% validation NDCG@10 on Amazon Beauty over a constant rate
    grad_clip: float = 5.0
    patience: int = 5  # epochs without a better valid NDCG@10 before stopping
    loss: str = "auto"  # auto: full softmax up to full_softmax_max_items, else sampled
    full_softmax_max_items: int = 200_000
    n_negatives: int = 2048  # sampled softmax: uniform negatives per step (plus in-batch)
    exclude_history_negatives: bool = True  # full softmax: a position's already-seen items
    # are not negatives (ranking excludes history anyway)
    cooc_loss_weight: float = 1.0  # item-item loss: an item predicts the items bought within
    # cooc_window steps of it, in either order (what item-kNN exploits; also shapes related items)
    cooc_window: int = 3
    cooc_batch_size: int = 1024  # pairs per step
    cooc_blend: bool = True  # after training, mix in an item-kNN distribution with the weight
    # that maximizes validation NDCG@10 (0 = off when it does not help; ecrec_lib.models.blend)
    ranker: bool = True  # with the blend: also fit the learned candidate ranker (LightGBM
    # LambdaRank on each training sequence's last item; its share is chosen on validation, 0 when
    # it does not help; ecrec_lib.models.ranker)
    ranker_boosters: int = 2  # LightGBM models the ranker averages (each with its own held-out
    # split and seed): one is noisier (its early stop moves with the split); 4 served no better
    # than 2 on Beauty and cost twice the served path's tree time (BENCHMARKS.md)
    refit_neighbourhood: bool = True  # once validation has chosen the blend, fit its
    # neighbourhood parts again on the training events plus the validation targets and serve
    # those: every user's second-latest event joins item-kNN, SLIST and the ranker (+7% R@10 for
    # the ranker alone on Beauty, BENCHMARKS.md); the test targets stay out
    temperature: float = 0.07  # cosine logits are divided by this
    learn_temperature: bool = True  # start at `temperature`, let the loss tune it
    query_loss_weight: float = 0.5  # weight of the query->item contrastive loss
    query_batch_size: int = 256
    # rows ranked per batch in evaluation; 256 x 12k-item float32 rows stay under glibc's mmap
    # threshold, 4x faster per row than 1024 on Beauty (BENCHMARKS.md)
    eval_batch_size: int = 256
    valid_sample_users: int = 0  # >0: early-stop on this many random valid users (faster epochs)
    seed: int = 7
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    cpu_bf16: bool = False  # bf16 autocast on CPU too: ~2x matmul throughput on CPUs with
    # native bf16 (AVX512-BF16 / AMX), 3-4x slower on those without (the trainer warns); the
    # loss stays float32
    num_threads: int = 0  # torch CPU threads; 0 leaves torch's default

    def __post_init__(self) -> None:
        if self.encoder_mode not in ENCODER_MODES:
            raise ValueError(f"encoder_mode must be one of {ENCODER_MODES}, got {self.encoder_mode!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be constant or cosine, got {self.lr_schedule!r}")
        if self.block_layout not in BLOCK_LAYOUTS:
            raise ValueError(f"block_layout must be one of {BLOCK_LAYOUTS}, got {self.block_layout!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if not (self.use_text or self.use_id):
            raise ValueError("at least one of use_text / use_id must be true")
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        for name in ("dim", "n_layers", "n_heads", "max_seq_len", "epochs", "batch_size",
                     "ranker_boosters"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.id_dropout < 1.0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout and id_dropout must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = dict(values)
        # Artifacts saved before item_norm existed were trained with the LayerNorm (their
        # state dict holds its weights), whatever today's default is.
        if "temperature" in values and "item_norm" not in values:
            values["item_norm"] = True
        return cls(**{k: v for k, v in values.items() if k in known})

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def model_config_from(cfg: Any, **overrides: Any) -> ModelConfig:
    """ModelConfig from an :class:`~ecrec_lib.config.EcrecConfig` plus explicit overrides."""
    values: dict[str, Any] = {
        "text_model_path": cfg.text_model_path,
        "encoder_mode": cfg.encoder_mode,
        "dim": cfg.embedding_dim,
        "max_seq_len": cfg.max_seq_len,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.learning_rate,
        "seed": cfg.seed,
        "device": cfg.device,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(**values)
