"""The active-learning round loop and its run folder.

Round 0 labels the initial set (chosen by ``al.initial_strategy``, random by default); every later
round scores the unlabeled pool with the strategy, asks the oracle, and retrains. Each round goes
through three phases (selected -> trained -> evaluated); ``state.json`` (round, phase, records) is
rewritten atomically after each one, so a run killed at any moment continues where it stopped and,
with the same seed, makes exactly the selections an uninterrupted run makes. The labels a round
revealed are written once, with its selection, to ``round_XXX/labels.jsonl``; the ledger of a
resumed run is read back from those files.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from alseg.annotation.budget import Budget
from alseg.annotation.cost import CostTable
from alseg.annotation.ledger import Ledger
from alseg.annotation.oracle import Oracle
from alseg.data.build import DataSplits
from alseg.data.torch_dataset import ImageView, TrainingSet
from alseg.data.transforms import build_transforms
from alseg.engine.evaluate import evaluate
from alseg.engine.initial_run import check_initial_run, copy_initial_round
from alseg.engine.pool_inference import infer_pool
from alseg.models.point_supervision import PointSupRoIHeads
from alseg.models.mask_iou_head import iou_prediction_errors, train_mask_iou_head
from alseg.engine.state import (atomic_torch_save, atomic_write_json, atomic_write_text, differing_keys, read_json,
                                under)
from alseg.engine.trainer import LossAverageHook, ProgressHook, Trainer, TrainerConfig
from alseg.errors import ConfigError
from alseg.instantiate import build
from alseg.run_naming import RESUMABLE_CHANGES  # keys that may change on resume (and stay out of run names)
from alseg.strategies.base import SelectionContext, Strategy
from alseg.writers.base import WriterGroup

log = logging.getLogger(__name__)

STATE_VERSION = 2  # 1 kept the whole ledger inside state.json; such runs are converted on resume
PHASES = ("start", "selected", "trained", "evaluated")


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"device: must be auto, cpu or cuda[:N], got {name!r}")
    return name


def config_differences(old: dict, new: dict) -> list[str]:
    return [k for k in differing_keys(old, new) if not under(k, RESUMABLE_CHANGES)]


class ActiveLearningLoop:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.seed = int(cfg.seed)
        self.device = resolve_device(str(cfg.device))
        self.progress = bool(cfg.get("progress", True))
        al = cfg.al
        self.rounds = int(al.rounds)
        if self.rounds < 0:
            raise ConfigError(f"al.rounds must be >= 0, got {self.rounds}")
        if al.policy not in ("finetune", "reset"):
            raise ConfigError(f"al.policy must be finetune or reset, got {al.policy!r}")
        if al.keep_checkpoints not in ("all", "last"):
            raise ConfigError(f"al.keep_checkpoints must be all or last, got {al.keep_checkpoints!r}")
        self.costs = CostTable(**OmegaConf.to_container(cfg.cost))
        self.train_cfg = TrainerConfig.from_mapping(OmegaConf.to_container(cfg.trainer.schedule), "trainer.schedule")
        # Rounds >= 1 under al.policy=finetune: the schedule with trainer.finetune's non-null fields
        # (APIS Sec. 4.1 / Fig. 2b compare such schedules).
        self.finetune_cfg = self.train_cfg.with_overrides(
            OmegaConf.to_container(cfg.trainer.get("finetune") or {}), "trainer.finetune")
        self.transforms = build_transforms(OmegaConf.to_container(cfg.trainer.transforms))
        self.budget = Budget(float(al.budget), str(al.budget_unit))

    # ---------------------------------------------------------------- setup
    def _build_data(self) -> DataSplits:
        data: DataSplits = build(self.cfg.dataset, "dataset")
        n = len(data.train.images)
        init = self.cfg.al.initial
        unit = str(self.cfg.al.get("initial_unit", "images"))
        if unit == "all":
            self.initial_budget = Budget(1, "all")
        elif unit == "images" and isinstance(init, float) and 0 < init <= 1:
            self.initial_budget = Budget(max(1, round(init * n)), "images")
        else:
            if not isinstance(init, (int, float)) or init <= 0 or (unit == "images" and init < 1):
                raise ConfigError(f"al.initial must be an image count >= 1, a fraction in (0, 1] or an amount "
                                  f"in al.initial_unit, got {init!r}")
            self.initial_budget = Budget(int(init) if unit == "images" else init, unit)
        n_inst = sum(len(r.instances) for r in data.train.images)
        self.initial_budget, self.budget = self.initial_budget.resolve(n_inst), self.budget.resolve(n_inst)
        if self.initial_budget.unit == "images" and self.initial_budget.amount > n:
            raise ConfigError(f"al.initial ({int(self.initial_budget.amount)} images) is larger than the pool ({n} images)")
        if self.budget.unit == "images" and self.initial_budget.unit == "images":
            need = self.initial_budget.amount + self.rounds * self.budget.amount
            if self.rounds and self.budget.amount > n - self.initial_budget.amount:
                raise ConfigError(f"al.budget ({int(self.budget.amount)} images) is larger than the unlabeled pool "
                                  f"({n - int(self.initial_budget.amount)} images after the initial set)")
            if need > n:
                raise ConfigError(f"al.initial + al.rounds x al.budget = {int(need)} images exceeds the pool of {n} images")
        return data

    def _build_model(self, num_classes: int):
        """A fresh copy of the initial model (built once, from the seed: the same on resume)."""
        if getattr(self, "_initial_model", None) is None:
            torch.manual_seed(self.seed)
            self._initial_model = build(self.cfg.model, "model", num_classes=num_classes).to(self.device)
        return copy.deepcopy(self._initial_model)

    def _strategy(self, node, what: str) -> Strategy:
        s = build(node, what)
        if not isinstance(s, Strategy):
            raise ConfigError(f"{what}: {node.get('_target_')} is not an alseg Strategy")
        return s

    # ---------------------------------------------------------------- state
    @property
    def state_path(self) -> Path:
        return self.run_dir / "state.json"

    def round_dir(self, k: int) -> Path:
        return self.run_dir / f"round_{k:03d}"

    def _load_or_create_state(self, config: dict) -> dict:
        if self.state_path.is_file():
            try:
                state = read_json(self.state_path)
            except (OSError, ValueError) as e:
                raise ConfigError(f"{self.state_path}: unreadable run state ({e}); move the folder away to start over") from None
            if state.get("version") not in (1, STATE_VERSION):
                raise ConfigError(f"{self.state_path}: state version {state.get('version')} is not supported")
            diffs = config_differences(state["config"], config)
            if diffs:
                raise ConfigError(
                    f"{self.run_dir}: exists with a different config (differs at: {', '.join(diffs[:5])}); "
                    f"pass run_name=NAME for a new run or remove the folder"
                )
            log.info("resuming %s at round %d (phase %s)", self.run_dir, state["round"], state["phase"])
            return state
        state = {"version": STATE_VERSION, "round": 0, "phase": "start", "records": [], "seed": self.seed,
                 "config": config}
        if self.cfg.al.get("initial_run"):
            self._initial_source = check_initial_run(self.cfg.al.initial_run, config)
            state["phase"] = "trained"  # round 0 is copied in (run()); it is evaluated here
        return state

    def labels_path(self, k: int) -> Path:
        return self.round_dir(k) / "labels.jsonl"

    def _load_ledger(self, state: dict) -> Ledger:
        """The labels of every round whose selection was committed (a round still at "start" is
        redone, whatever it left behind). A version-1 state carries the ledger itself: it is split
        into the per-round files and the state upgraded."""
        done = state["round"] + (state["phase"] != "start")
        if state["version"] == 1:
            ledger = Ledger(state.pop("ledger", []))
            for k in range(done):
                ledger.save_round(k, self.labels_path(k))
            state["version"] = STATE_VERSION
            return ledger
        ledger = Ledger()
        for k in range(done):
            if not self.labels_path(k).is_file():
                raise ConfigError(f"{self.labels_path(k)}: missing, cannot resume round {k}'s labels")
            ledger.load_round(k, self.labels_path(k))
        return ledger

    def _commit(self, state: dict) -> None:
        atomic_write_json(self.state_path, state)

    # ---------------------------------------------------------------- run
    def run(self) -> list[dict]:
        config = OmegaConf.to_container(self.cfg, resolve=True)
        data = self._build_data()  # all validation happens before the run folder is touched
        strategy = self._strategy(self.cfg.strategy, "strategy")
        initial_strategy = self._strategy(self.cfg.al.initial_strategy, "al.initial_strategy")
        self._build_model(data.train.num_classes)
        writers = WriterGroup(list(build(self.cfg.logger, "logger").values()) if self.cfg.logger else [])
        state = self._load_or_create_state(config)
        state["config"] = config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if getattr(self, "_initial_source", None) is not None:
            copy_initial_round(self.cfg.al.initial_run, self._initial_source, self.round_dir(0))
            log.info("round 0 taken from %s", self.cfg.al.initial_run)
        log_file = logging.FileHandler(self.run_dir / "run.log")
        log_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(log_file)
        try:
            log.info("run folder: %s", self.run_dir)
            # Differs from the stored one at most in keys that may change on resume (al.rounds, device, ...).
            atomic_write_text(self.run_dir / "config.yaml", OmegaConf.to_yaml(self.cfg, resolve=True))
            ledger = self._load_ledger(state)
            self._commit(state)
            oracle = Oracle(data.train, self.costs)
            writers.open(self.run_dir, config, state["records"])
            model = None
            while state["round"] <= self.rounds:
                k = state["round"]
                if state["phase"] == "start":
                    model = self._maybe_load(model, data, k - 1)
                    strat, budget = (initial_strategy, self.initial_budget) if k == 0 else (strategy, self.budget)
                    self._select(k, strat, budget, data, ledger, oracle, model)
                    state.update(phase="selected")
                    self._commit(state)
                if state["phase"] == "selected":
                    model = self._train(k, data, ledger, model)
                    state.update(phase="trained")
                    self._commit(state)
                if state["phase"] == "trained":
                    model = self._maybe_load(model, data, k)
                    record = self._evaluate(k, data, ledger, model, strategy, initial_strategy)
                    writers.write(record)
                    state["records"] = [r for r in state["records"] if r["round"] != k] + [record]
                    state.update(phase="evaluated")
                    self._commit(state)
                state.update(round=k + 1, phase="start")
                self._commit(state)
        finally:
            writers.close()
            logging.getLogger().removeHandler(log_file)
            log_file.close()
        return state["records"]

    def _maybe_load(self, model, data: DataSplits, k: int):
        """The model trained in round k (kept in memory, or read back from its checkpoint)."""
        if k < 0:
            return None
        if model is not None and getattr(model, "_alseg_round", None) == k:
            return model
        ckpt = self.round_dir(k) / "model.pt"
        if not ckpt.is_file():
            raise ConfigError(f"{ckpt}: checkpoint missing, cannot resume round {k + 1}")
        m = self._build_model(data.train.num_classes)
        m.load_state_dict(torch.load(ckpt, map_location=self.device, weights_only=True)["model"])
        m._alseg_round = k
        return m

    def _select(self, k, strategy: Strategy, budget: Budget, data, ledger: Ledger, oracle: Oracle, model) -> None:
        ledger.drop_round(k)  # a half-done selection of this round is redone from scratch
        labeled = sorted(ledger.fully_labeled_images())
        unlabeled = sorted(set(data.train.image_ids) - set(labeled))
        if not unlabeled:
            raise ConfigError(f"round {k}: the unlabeled pool is empty; lower al.rounds or al.budget")
        ctx = SelectionContext(round_index=k, data=data.train, ledger=ledger, unlabeled=unlabeled, labeled=labeled,
                               oracle=oracle, model=model, device=self.device, progress=self.progress,
                               round_dir=self.round_dir(k),
                               _providers={
                                   "reference_model": lambda: self._reference_model(data),
                                   "ensemble": lambda: self._ensemble(k - 1, data, ledger, model,
                                                                      getattr(strategy, "ensemble_size", 1)),
                                   "pool_predictions": lambda: self._infer(model, data, unlabeled),
                                   "labeled_predictions": lambda: self._infer(model, data, labeled),
                               })
        rng = np.random.default_rng([self.seed, k, 1])
        queries = strategy.select(ctx, budget, rng)
        if not queries:
            raise ConfigError(f"round {k}: strategy {strategy.name!r} selected nothing within the budget {budget}")
        seconds = 0.0
        for q in queries:
            labels = oracle.answer(q)
            seconds += sum(lab.seconds for lab in labels)
            ledger.add(labels, k)
        ledger.save_round(k, self.labels_path(k))
        analysis = strategy.analyze(ctx, queries)
        atomic_write_json(self.round_dir(k) / "selection.json", {
            "round": k, "strategy": strategy.name, "budget": {"amount": budget.amount, "unit": budget.unit},
            "seconds": seconds, "analysis": analysis, "queries": [q.to_dict() for q in queries]})
        log.info("round %d: %s selected %d queries (%.0f s of annotation)", k, strategy.name, len(queries), seconds)

    def _infer(self, model, data: DataSplits, image_ids: list[int]):
        if model is None:
            raise ConfigError("this strategy needs a trained model; it cannot be the initial strategy")
        return infer_pool(model, data.train, image_ids, device=self.device, batch_size=int(self.cfg.eval.batch_size),
                          progress=self.progress)

    def _reference_model(self, data: DataSplits):
        """A model trained on the whole pool with full masks (for model-based pruning baselines),
        trained once per run and kept in reference/model.pt for resumption."""
        path = self.run_dir / "reference" / "model.pt"
        model = self._build_model(data.train.num_classes)
        if path.is_file():
            model.load_state_dict(torch.load(path, map_location=self.device, weights_only=True)["model"])
            return model
        views = {r.image_id: ImageView(full_image=True, mask_ann_ids={i.ann_id for i in r.instances})
                 for r in data.train.images}
        log.info("training the reference model on all %d pool images", len(views))
        self._fit(model, TrainingSet(data.train, views, self.transforms, seed=self.seed), self.train_cfg,
                  "reference train", seed=self.seed)
        atomic_torch_save({"model": model.state_dict(), "round": -1}, path)
        return model

    def _ensemble(self, k: int, data: DataSplits, ledger: Ledger, model, size: int) -> list:
        """The model of round k and size - 1 more trained on round k's labels from other random
        initialisations (APIS's multiple-models set, Sec. 3.2 (b)). Each member is trained from
        scratch with the round-0 schedule and kept in round_k/ensemble_i.pt for resumption."""
        if model is None:
            raise ConfigError("a multiple-models prediction set needs a trained model; it cannot be the initial strategy")
        members = [model]
        views = ledger.training_views()  # during selection: the labels through round k, what `model` saw
        for i in range(1, size):
            path = self.round_dir(k) / f"ensemble_{i}.pt"
            torch.manual_seed(self.seed * 7919 + i)
            member = build(self.cfg.model, "model", num_classes=data.train.num_classes).to(self.device)
            if path.is_file():
                member.load_state_dict(torch.load(path, map_location=self.device, weights_only=True)["model"])
            else:
                seed = self.seed * 7919 + 1000 * i + k
                self._fit(member, TrainingSet(data.train, views, self.transforms, seed=seed), self.train_cfg,
                          f"ensemble {i} train", seed)
                atomic_torch_save({"model": member.state_dict(), "round": k}, path)
            members.append(member)
        return members

    def _fit(self, model, dataset: TrainingSet, cfg: TrainerConfig, desc: str, seed: int) -> LossAverageHook:
        torch.manual_seed(seed)
        losses = LossAverageHook()
        Trainer(model, dataset, cfg, self.device, seed=seed,
                hooks=[ProgressHook(desc, enabled=self.progress), losses]).train()
        return losses

    def _train(self, k: int, data: DataSplits, ledger: Ledger, previous):
        views = ledger.training_views()
        partial = [i for i, v in views.items() if v.box_ann_ids - v.mask_ann_ids]
        if partial and not isinstance(self._initial_model.roi_heads, PointSupRoIHeads):
            raise ConfigError("instances labeled by boxes or points need model.point_supervision=true")
        if self.cfg.al.policy == "finetune" and k > 0:
            model = self._maybe_load(previous, data, k - 1)
            cfg = self.finetune_cfg
        else:
            model = self._build_model(data.train.num_classes)
            cfg = self.train_cfg
        seed = self.seed * 1009 + k
        dataset = TrainingSet(data.train, views, self.transforms, seed=seed)
        self._loss_hook = self._fit(model, dataset, cfg, f"round {k} train", seed)
        self._extra_train_metrics = {"train/iters": cfg.iters, "train/base_lr": cfg.lr}
        if getattr(model, "mask_iou_head", None) is not None:
            self._extra_train_metrics |= train_mask_iou_head(
                model, dataset, device=self.device, seed=seed, progress=self.progress,
                batch_size=self.train_cfg.batch_size, **model.mask_iou_cfg)
        atomic_torch_save({"model": model.state_dict(), "round": k}, self.round_dir(k) / "model.pt")
        if self.cfg.al.keep_checkpoints == "last" and k > 0:
            (self.round_dir(k - 1) / "model.pt").unlink(missing_ok=True)
        model._alseg_round = k
        return model

    def _evaluate(self, k: int, data: DataSplits, ledger: Ledger, model, strategy: Strategy,
                  initial_strategy: Strategy) -> dict:
        metrics = evaluate(model, data.val, device=self.device, batch_size=int(self.cfg.eval.batch_size),
                           progress=self.progress)
        seconds = ledger.seconds()
        counts = ledger.counts()
        pool = len(data.train.images)
        record = {"round": k, "strategy": strategy.name, "initial_strategy": initial_strategy.name, "seed": self.seed,
                  **counts, "pool_images": pool, "seconds": seconds, "hours": seconds / 3600.0, **metrics}
        if counts["images_with_labels"] == counts["labeled_images"]:  # whole images only: a data-pruning run
            record["pruning_rate"] = 1.0 - counts["labeled_images"] / pool
        if getattr(self, "_loss_hook", None) is not None:
            record.update(self._loss_hook.summary())
            record.update(self._extra_train_metrics)
        if getattr(model, "mask_iou_head", None) is not None:
            record.update(iou_prediction_errors(model, data.val, device=self.device))
        analysis = read_json(self.round_dir(k) / "selection.json").get("analysis", {})
        record.update({f"selection/{key}": v for key, v in analysis.items() if isinstance(v, (int, float))})
        atomic_write_json(self.round_dir(k) / "metrics.json", record)
        return record
