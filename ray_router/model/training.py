"""Training the SharedTrunkNet ensemble: in-process, or spread over Ray Train workers with resume.

Both paths train every ensemble member with the same `MemberTrainer`, so one seed gives the same
member whichever path trained it (see `fit_ensemble`). `TrunkConfig` is the recipe (saved with a
router); `TrainRunConfig` is where and how a run trains (never saved). Ray Train is imported only by
the Ray path, so loading a router never loads the trainer.
"""

import hashlib
import json
import math
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import ray
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ray_router.errors import UserError
from ray_router.model.trunk_net import SharedTrunkNet, ensemble_proba, masked_bce_loss, masked_pairwise_loss
from ray_router.resources import WorkerResources, cluster_cpus, cluster_gpus, ensure_ray

# Bump when a change to the training code changes the members it produces: it is part of the run
# fingerprint, so checkpoints of older code are never resumed into a newer run.
TRAINING_VERSION = 1
# The config fields that determine a member's weights (the others only decide how many members are
# trained and which are kept).
MEMBER_FIELDS = (
    "hidden", "dropout", "lr", "weight_decay", "pairwise_weight", "batch_size", "max_epochs", "patience",
    "min_delta", "val_fraction", "seed",
)  # fmt: skip
MEMBER_FILE_GLOB = "member_*.safetensors"


class TrunkConfig(BaseModel):
    """Every number of the SharedTrunkNet ensemble recipe (METHOD.md): the network, the optimiser, early
    stopping and the ensemble. Saved with every router; where a run trains is `TrainRunConfig`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: tuple[int, ...] = Field((256, 128), description="Widths of the trunk's hidden layers.")
    dropout: tuple[float, ...] = Field((0.3, 0.2), description="Dropout after each hidden layer.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="Adam weight decay.")
    pairwise_weight: float = Field(
        0.0, ge=0, description="Weight of the ranking loss between each query's targets, added to the "
        "cross-entropy in training (0: the cross-entropy alone, METHOD.md). Early stopping reads the cross-entropy."
    )
    batch_size: int = Field(512, ge=1, description="Mini-batch size.")
    max_epochs: int = Field(150, ge=1, description="Epoch limit per member.")
    patience: int = Field(15, ge=1, description="Epochs without validation improvement before stopping.")
    min_delta: float = Field(1e-4, ge=0, description="Smallest validation-loss decrease that counts.")
    n_seeds: int = Field(10, ge=1, description="Ensemble members trained (each its own split and init).")
    keep_best: int = Field(5, ge=1, description="Members kept: those with the lowest validation loss.")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="Validation share of each member's split.")
    seed: int = Field(0, ge=0, description="Base seed; member s uses (seed, s).")

    @model_validator(mode="after")
    def _consistent(self) -> "TrunkConfig":
        if len(self.hidden) != len(self.dropout):
            raise ValueError(f"hidden {self.hidden} and dropout {self.dropout} need the same length")
        if any(width < 1 for width in self.hidden):
            raise ValueError(f"hidden widths must be >= 1, got {self.hidden}")
        if any(not 0 <= rate < 1 for rate in self.dropout):
            raise ValueError(f"dropout rates must be in [0, 1), got {self.dropout}")
        if self.keep_best > self.n_seeds:
            raise ValueError(f"keep_best={self.keep_best} exceeds n_seeds={self.n_seeds}")
        return self


class TrainRunConfig(WorkerResources):
    """Where and how a training run trains (not saved with the router): the Ray Train workers
    (`num_workers` default: one per cluster GPU, else one per whole CPU, at most one per seed), their
    checkpoints and how often they report. A member trains with `torch_threads` threads, by default the
    whole part of `num_cpus` (at least 1): the count changes float rounding, so both paths use it."""

    storage_path: str | None = Field(
        None, description="Local folder or cloud URI for Ray Train checkpoints (default: a temp folder)."
    )
    run_name: str | None = Field(None, description="Ray Train run name prefix (default: shared-trunk).")
    report_interval_s: float = Field(
        2.0, ge=0, description="Least seconds between two metric reports to Ray Train (0: every epoch)."
    )

    def member_threads(self) -> int:
        """Torch threads that train one member."""
        return self.torch_threads or max(1, int(self.num_cpus))


@dataclass
class Member:
    """One trained ensemble member: best weights (on CPU), their validation loss and the curves."""

    seed_index: int
    state_dict: dict[str, torch.Tensor]
    val_loss: float
    best_epoch: int
    history: dict[str, list[float]]  # "train_loss" and "val_loss" per epoch
    trained_in: str = ""  # id of the fit_ensemble call that trained it (tells resumed members apart)

    def save(self, folder: Path) -> None:
        """Write member_<seed>.safetensors: weights, with the rest as string metadata (no pickle)."""
        metadata = {
            "seed_index": str(self.seed_index),
            "val_loss": json.dumps(self.val_loss),
            "best_epoch": str(self.best_epoch),
            "history": json.dumps(self.history),
            "trained_in": self.trained_in,
        }
        save_file(self.state_dict, str(folder / f"member_{self.seed_index:04d}.safetensors"), metadata)

    @classmethod
    def load(cls, path: Path) -> "Member":
        """Read a file written by `save`."""
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
        return cls(
            seed_index=int(metadata["seed_index"]),
            state_dict=load_file(str(path)),
            val_loss=json.loads(metadata["val_loss"]),
            best_epoch=int(metadata["best_epoch"]),
            history=json.loads(metadata["history"]),
            trained_in=metadata["trained_in"],
        )


def build_model(d_in: int, n_targets: int, config: TrunkConfig) -> SharedTrunkNet:
    """The SharedTrunkNet that `config` describes (fresh weights from the current torch RNG)."""
    return SharedTrunkNet(d_in, n_targets, hidden=config.hidden, dropout=config.dropout)


def member_split(n_rows: int, seed_index: int, config: TrunkConfig) -> tuple[np.ndarray, np.ndarray]:
    """Member `seed_index`'s own deterministic (train rows, validation rows)."""
    order = np.random.default_rng([config.seed, seed_index]).permutation(n_rows)
    n_val = max(1, round(config.val_fraction * n_rows))
    if n_rows - n_val < 1:
        raise UserError(f"{n_rows} rows are too few for a train/validation split")
    return order[n_val:], order[:n_val]


def member_torch_seed(config: TrunkConfig, seed_index: int) -> int:
    """Torch seed of member `seed_index` (weight init, batch order, dropout)."""
    return int(np.random.SeedSequence([config.seed, seed_index]).generate_state(1)[0])


class MemberTrainer:
    """Trains one ensemble member epoch by epoch, with early stopping; the unit both paths share.

    Seeds torch at construction; `run_epoch` then draws batch order and dropout from the global torch
    RNG, so one process must train its members one after the other (both paths do).
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        seed_index: int,
        config: TrunkConfig,
        device: torch.device | str = "cpu",
    ) -> None:
        self.seed_index = seed_index
        self.config = config
        train_rows, val_rows = member_split(len(x), seed_index, config)
        self.x_train, self.y_train = (torch.from_numpy(a[train_rows]).to(device) for a in (x, y))
        self.x_val, self.y_val = (torch.from_numpy(a[val_rows]).to(device) for a in (x, y))
        torch.manual_seed(member_torch_seed(config, seed_index))
        self.model = build_model(x.shape[1], y.shape[1], config).to(device)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
        self.best_loss = math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] = {}
        self.epochs_without_gain = 0
        self.done = False

    def run_epoch(self) -> dict[str, float]:
        """One pass over the training rows, then the validation loss and the early-stopping check (both losses
        the cross-entropy, whatever the pairwise weight)."""
        self.model.train()
        order = torch.randperm(len(self.x_train), device=self.x_train.device)
        weighted_sum = torch.zeros((), device=self.x_train.device)
        for start in range(0, len(order), self.config.batch_size):
            batch = order[start : start + self.config.batch_size]
            labels = self.y_train[batch]
            logits = self.model(self.x_train[batch])
            loss = masked_bce_loss(logits, labels)
            trained = loss
            if self.config.pairwise_weight:  # skipped at 0: the default members stay bit for bit METHOD.md's
                trained = trained + self.config.pairwise_weight * masked_pairwise_loss(logits, labels)
            self.optimizer.zero_grad()
            trained.backward()
            self.optimizer.step()
            weighted_sum += loss.detach() * (~torch.isnan(labels)).sum()
        train_loss = (weighted_sum / max(1, int((~torch.isnan(self.y_train)).sum()))).item()
        self.model.eval()
        with torch.no_grad():
            val_loss = masked_bce_loss(self.model(self.x_val), self.y_val).item()
        self.history["train_loss"].append(train_loss)
        self.history["val_loss"].append(val_loss)
        epoch = len(self.history["val_loss"])
        if val_loss < self.best_loss - self.config.min_delta:
            self.best_loss, self.best_epoch, self.epochs_without_gain = val_loss, epoch, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        else:
            self.epochs_without_gain += 1
        self.done = self.epochs_without_gain >= self.config.patience or epoch >= self.config.max_epochs
        return {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss}

    def result(self, trained_in: str = "") -> Member:
        """The member with its best weights restored."""
        return Member(
            self.seed_index, self.best_state, self.best_loss, self.best_epoch, self.history, trained_in
        )


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_member(
    x: np.ndarray,
    y: np.ndarray,
    seed_index: int,
    config: TrunkConfig,
    threads: int = 1,
    device: torch.device | str = "cpu",
) -> Member:
    """Train member `seed_index` to early stopping with `threads` torch threads (what each Ray Train
    worker does per seed). The thread count changes float rounding in the matrix products (over a run it
    grows to ~1e-2 in the probabilities): with equal counts both paths agree bit for bit."""
    with _torch_threads(threads):
        trainer = MemberTrainer(x, y, seed_index, config, device)
        while not trainer.done:
            trainer.run_epoch()
    return trainer.result()


def build_members(
    states: list[dict[str, torch.Tensor]], d_in: int, n_targets: int, config: TrunkConfig
) -> list[SharedTrunkNet]:
    """SharedTrunkNets in eval mode holding the given members' weights."""
    models = []
    for state in states:
        model = build_model(d_in, n_targets, config)
        model.load_state_dict(state)
        models.append(model.eval())
    return models


@dataclass
class EnsembleResult:
    """The trained ensemble: the kept members' weights and what every member did."""

    members: list[dict[str, torch.Tensor]]  # state_dicts of the kept members, best first
    val_losses: list[float]  # best validation loss of every seed 0..n_seeds-1
    kept: list[int]  # seed indices kept, best first
    history: list[dict[str, list[float]]]  # per seed: "train_loss", "val_loss" per epoch
    best_epochs: list[int]  # per seed: the epoch whose weights were restored
    d_in: int
    n_targets: int
    config: TrunkConfig
    resumed: list[int] = field(default_factory=list)  # seeds loaded from an earlier run's checkpoint
    run_path: str | None = None  # Ray Train run folder (storage_path/name); None for the plain path

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Mean of the kept members' sigmoid outputs, eval mode, (n, K) float64."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise UserError(f"features must have shape (n, {self.d_in}), got {x.shape}")
        return ensemble_proba(build_members(self.members, self.d_in, self.n_targets, self.config), x)


def fit_ensemble(
    x: np.ndarray, y: np.ndarray, config: TrunkConfig, run: TrainRunConfig | None = None, use_ray: bool = True
) -> EnsembleResult:
    """Train `config.n_seeds` members and keep the `config.keep_best` with the lowest validation loss.

    x: (n, d) preprocessed features; y: (n, K) labels 0/1 with NaN where missing. With `use_ray`
    the members are trained by Ray Train workers (see `_train_worker`) and checkpointed under
    `run.storage_path`, so an interrupted or extended run resumes; otherwise one after the other
    in this process. Both call `MemberTrainer` with `run.member_threads()` torch threads, so a
    seed gives the same member either way (bit for bit on the same kind of device).
    """
    x, y = _checked_data(x, y)
    run = run or TrainRunConfig()
    if use_ray:
        members, run_path, attempt = _fit_members_on_ray(x, y, config, run)
    else:
        wants_gpu = torch.cuda.is_available() if run.num_gpus is None else run.num_gpus > 0
        seeds = tqdm(range(config.n_seeds), desc="ensemble members", disable=None)
        members = {s: train_member(x, y, s, config, run.member_threads(), "cuda" if wants_gpu else "cpu")
                   for s in seeds}
        run_path, attempt = None, ""
    ordered = [members[s] for s in range(config.n_seeds)]
    val_losses = [m.val_loss for m in ordered]
    kept = sorted(range(config.n_seeds), key=lambda s: (val_losses[s], s))[: config.keep_best]
    return EnsembleResult(
        members=[ordered[s].state_dict for s in kept],
        val_losses=val_losses,
        kept=kept,
        history=[m.history for m in ordered],
        best_epochs=[m.best_epoch for m in ordered],
        d_in=x.shape[1],
        n_targets=y.shape[1],
        config=config,
        resumed=[m.seed_index for m in ordered if m.trained_in != attempt],
        run_path=run_path,
    )


def _checked_data(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.float32)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise UserError(f"need X (n, d) and Y (n, K) with the same n, got {x.shape} and {y.shape}")
    if not np.isfinite(x).all():
        raise UserError("features contain NaN or infinite values")
    known = y[~np.isnan(y)]
    if not np.isin(known, (0.0, 1.0)).all():
        raise UserError("labels must be 0, 1 or NaN (missing)")
    return x, y


def run_fingerprint(x: np.ndarray, y: np.ndarray, config: TrunkConfig) -> str:
    """Hash of the data, the member-determining config fields and TRAINING_VERSION.

    It names the Ray Train run folder, so a rerun resumes only checkpoints whose members it would
    have trained itself; more seeds or another keep_best reuse the finished ones.
    """
    digest = hashlib.sha256()
    member_config = config.model_dump(include=set(MEMBER_FIELDS))
    digest.update(json.dumps([TRAINING_VERSION, x.shape, y.shape, member_config]).encode())
    digest.update(x.tobytes())
    digest.update(np.nan_to_num(y, nan=-1.0).tobytes())
    return digest.hexdigest()


def _fit_members_on_ray(
    x: np.ndarray, y: np.ndarray, config: TrunkConfig, run: TrainRunConfig
) -> tuple[dict[int, Member], str, str]:
    """Run the Ray Train job; returns the members by seed, the run folder and this attempt's id."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ensure_ray()
    gpus = run.gpus_per_worker()
    default_workers = max(1, int(cluster_gpus() / gpus if gpus else cluster_cpus()))
    num_workers = min(run.num_workers or default_workers, config.n_seeds)
    storage_path = run.storage_path or str(Path(tempfile.gettempdir()) / "ray_router_train")
    if "://" not in storage_path:
        storage_path = str(Path(storage_path).expanduser().resolve())
    name = f"{run.run_name or 'shared-trunk'}-{run_fingerprint(x, y, config)[:16]}"
    attempt = uuid.uuid4().hex
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={
            "x": ray.put(x), "y": ray.put(y), "config": config.model_dump(), "attempt": attempt,
            "threads": run.member_threads(), "report_interval_s": run.report_interval_s,
        },
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=gpus > 0,
            resources_per_worker={"CPU": run.num_cpus, **({"GPU": gpus} if gpus else {})},
        ),
        run_config=RunConfig(
            name=name, storage_path=storage_path, checkpoint_config=CheckpointConfig(num_to_keep=2)
        ),
    )
    result = trainer.fit()
    members = _members_in(result.checkpoint)
    missing = sorted(set(range(config.n_seeds)) - set(members))
    if missing:
        raise RuntimeError(f"Ray Train run {result.path} ended without members for seeds {missing}")
    return members, result.path, attempt


def _members_in(checkpoint: "ray.train.Checkpoint | None") -> dict[int, Member]:
    """The members stored in a checkpoint, by seed index (none for no checkpoint)."""
    if checkpoint is None:
        return {}
    with checkpoint.as_directory() as folder:
        members = [Member.load(path) for path in sorted(Path(folder).glob(MEMBER_FILE_GLOB))]
    return {m.seed_index: m for m in members}


def _train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker loop: this rank trains its share of the seeds (round-robin by rank).

    The members are independent models, so they are NOT wrapped in DistributedDataParallel: DDP would
    average gradients into one model, whereas here each worker trains whole members on the full data
    (data parallelism would only add all-reduce traffic to a model that trains in seconds). The one
    collective is a tiny all-reduce per epoch that keeps the workers in lockstep, because every worker
    must call `ray.train.report` the same number of times even though members stop at different
    epochs: it tells all ranks whether anyone still trains, whether anyone finished a member, and
    whether rank 0 says a report is due. Reports are throttled to one per `report_interval_s`
    (plus a last one): Ray Train V2 takes one report per worker per controller poll
    (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default) and a report made before the previous one
    was taken blocks the worker. The metrics are the rank's latest epoch; every epoch is kept in the
    member's history. The first report after a member finished carries a checkpoint: every rank
    puts in ALL members it has finished (rank 0 also carries those restored from an earlier
    attempt) and Ray Train merges the ranks' files into one folder, so the latest checkpoint always
    holds every finished member. A rerun with the same storage_path and name gets it from
    `ray.train.get_checkpoint()` and skips those seeds.
    """
    import ray.train.torch
    import torch.distributed

    config = TrunkConfig.model_validate(loop_config["config"])
    x, y = ray.get(loop_config["x"]), ray.get(loop_config["y"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(loop_config["threads"])
    device = ray.train.torch.get_device()
    restored = _members_in(ray.train.get_checkpoint())
    finished = dict(restored) if rank == 0 else {}
    todo = [s for s in range(config.n_seeds) if s not in restored][rank::world_size]
    current: MemberTrainer | None = None
    checkpoint_pending, last_report = False, time.monotonic()
    while True:
        if current is None and todo:
            current = MemberTrainer(x, y, todo.pop(0), config, device)
        metrics: dict[str, float] = {"seed": -1, "epoch": 0, "train_loss": math.nan, "val_loss": math.nan}
        just_finished = False
        if current is not None:
            metrics = {"seed": current.seed_index, **current.run_epoch()}
            if current.done:
                finished[current.seed_index] = current.result(loop_config["attempt"])
                current, just_finished = None, True
        busy = current is not None or bool(todo)
        due = rank == 0 and time.monotonic() - last_report >= loop_config["report_interval_s"]
        flags = torch.tensor([int(busy), int(just_finished), int(due)], device=device)
        torch.distributed.all_reduce(flags)
        anyone_busy, anyone_finished, report_due = flags.tolist()
        checkpoint_pending = checkpoint_pending or bool(anyone_finished)
        if report_due or not anyone_busy:
            metrics["members_finished_on_rank"] = len(finished)
            _report(metrics, finished if checkpoint_pending and finished else None)
            checkpoint_pending, last_report = False, time.monotonic()
        if not anyone_busy:
            break


def _report(metrics: dict[str, float], members: dict[int, Member] | None) -> None:
    """ray.train.report, with a checkpoint folder of `members` when given."""
    import ray.train

    if members is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        for member in members.values():
            member.save(Path(folder))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
