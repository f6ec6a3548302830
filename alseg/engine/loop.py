"""The active-learning round loop and its run folder.

Round 0 labels the initial set (chosen by ``al.initial_strategy``, random by default); every later
round scores the unlabeled pool with the strategy, asks the oracle, and retrains. Each round goes
through three phases (selected -> trained -> evaluated), each returning its result
(``SelectResult``, ``TrainResult``, the round record); ``state.json`` (round, phase, the current
round's phase results, records) is rewritten atomically after each one, so a run killed at any
moment continues where it stopped and, with the same seed, makes exactly the selections and the
records an uninterrupted run makes. The labels a round revealed are written once, with its
selection, to ``round_XXX/labels.jsonl``; the ledger of a resumed run is read back from those files.

On resume everything the run folder holds that the loop will read (state, labels, the next
checkpoint, reference and ensemble checkpoints) is read and checked before anything is written; a
damaged file stops the run with one line naming it and what to do. Removing round folders (the
last ones) makes the run redo those rounds. The state also holds a fingerprint of the data
(``alseg.data.fingerprint``): a run does not resume on changed annotations or images.

On N processes (``torchrun``; ``alseg.distributed``) every rank reads and checks the same inputs,
trains (DistributedDataParallel), infers its shard of the pool and of the val images, and trains
ensemble members and the reference model together; rank 0 alone runs the strategy, the oracle's
bookkeeping and every write to the run folder, and broadcasts the selection, which every rank
applies to its own ledger. The run folder, its files and its records are those of a
single-process run, and either kind of run resumes the other's.
"""

from __future__ import annotations

import copy
import logging
import logging.handlers
import math
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from alseg import distributed
from alseg.annotation.budget import Budget, budget_of, initial_amount
from alseg.annotation.cost import CostTable
from alseg.annotation.ledger import Ledger
from alseg.annotation.oracle import Oracle
from alseg.annotation.ledger import label_problem
from alseg.data.build import DataSplits
from alseg.data.fingerprint import data_fingerprint, fingerprint_changes
from alseg.data.torch_dataset import ImageView, TrainingSet
from alseg.data.transforms import build_transforms
from alseg.engine.evaluate import evaluate
from alseg.engine.initial_run import (EVAL_FILE, InitialRound, check_initial_run, check_reference_run,
                                      copy_initial_round)
from alseg.engine.state import (PHASES, STATE_VERSION, SelectResult, TrainResult,  # noqa: F401  (PHASES re-exported)
                                differing_keys, flatten, read_state, under)
from alseg.engine.trainer import (LogProgressHook, LossAverageHook, ProgressHook, Trainer, TrainerConfig,
                                  check_processes)
from alseg.config_check import config_value, integer
from alseg.errors import ConfigError, DataError
from alseg.files import (DamagedFileError, atomic_torch_save, atomic_write_json, atomic_write_text,
                         atomic_write_bytes, check_zip, load_model_state, make_dirs, missing_as_none, read_bytes,
                         read_json, write_error)
from alseg.instantiate import build
from alseg.run_naming import RESUMABLE_CHANGES  # keys that may change on resume (and stay out of run names)
from alseg.models.base import CAPABILITIES, check_model
from alseg.models.mask_iou_head import iou_prediction_errors
from alseg.predictions import infer_pool
from alseg.strategies.base import (ENSEMBLE, LABELED_PREDICTIONS, MASK_IOU_HEAD, NEEDS, NEEDS_A_TRAINED_MODEL,
                                   POINT_SUPERVISION, POOL_PREDICTIONS, PREDICTION_SETS, REFERENCE_MODEL,
                                   SelectionContext, Strategy)
from alseg.writers.base import WriterGroup

log = logging.getLogger(__name__)


# Needs computed by every rank together (training, sharded inference) before rank 0 selects.
COLLECTIVE_NEEDS = frozenset({REFERENCE_MODEL, ENSEMBLE, POOL_PREDICTIONS, LABELED_PREDICTIONS})


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"device: must be auto, cpu or cuda[:N], got {name!r}")
    return name


# Where a resumed round continues, by the last phase its state recorded.
RESUME_POINT = {"start": "selection next", "selected": "selection done, training next",
                "trained": "training done, evaluation next", "evaluated": "evaluated"}


def config_differences(old: dict, new: dict) -> list[str]:
    """Keys whose change refuses a resumption: not in RESUMABLE_CHANGES, and not a key the stored
    config lacks (added by a later alseg with its default; an override of it names another folder)."""
    old_keys = set(flatten(old))
    return [k for k in differing_keys(old, new) if not under(k, RESUMABLE_CHANGES) and k in old_keys]


class ActiveLearningLoop:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.seed = config_value(integer, "seed", cfg.seed, 0, 2**32 - 1)  # numpy's seed range
        self.device = resolve_device(str(cfg.device))
        self.progress = bool(cfg.get("progress", True))
        al = cfg.al
        self.rounds = config_value(integer, "al.rounds", al.rounds, 0)
        self.initial_amount, self.initial_unit = initial_amount(al.initial, al.get("initial_unit", "images"))
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
        self.log_every = cfg.trainer.get("log_every", 50)
        if not isinstance(self.log_every, int) or isinstance(self.log_every, bool) or self.log_every < 1:
            raise ConfigError(f"trainer.log_every must be an integer >= 1, got {self.log_every!r}")
        self.transforms = build_transforms(OmegaConf.to_container(cfg.trainer.transforms))
        self.budget = budget_of("al.budget", al.budget, al.budget_unit)
        timeout = (cfg.get("distributed") or {}).get("timeout_minutes", 60)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise ConfigError(f"distributed.timeout_minutes must be a number of minutes > 0, got {timeout!r}")
        self.dist_timeout = float(timeout)
        self._initial_model = None  # built once by _build_model; every model starts as a copy of it
        self._num_classes = 0  # of the dataset, set by run()

    # ---------------------------------------------------------------- setup
    def _build_data(self) -> DataSplits:
        data: DataSplits = build(self.cfg.dataset, "dataset")
        n = len(data.train.images)
        init, unit = self.initial_amount, self.initial_unit
        if unit == "images" and isinstance(init, float):  # a fraction of the pool
            self.initial_budget = Budget(max(1, round(init * n)), "images")
        else:
            self.initial_budget = Budget(init, unit)
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
        if self._initial_model is None:
            torch.manual_seed(self.seed)
            self._initial_model = check_model(build(self.cfg.model, "model", num_classes=num_classes)).to(self.device)
        return copy.deepcopy(self._initial_model)

    def _check_processes(self) -> None:
        """What a run on N processes asks of the schedule (ConfigError before anything is written)."""
        for cfg, where in ((self.train_cfg, "trainer.schedule"), (self.finetune_cfg, "trainer.finetune")):
            check_processes(cfg, distributed.working_ranks(), torch.device(self.device).type, where)

    def _strategy(self, node, what: str) -> Strategy:
        s = build(node, what)
        if not isinstance(s, Strategy):
            raise ConfigError(f"{what}: {node.get('_target_')} is not an alseg Strategy")
        return s

    def _check_needs(self, strategy: Strategy, initial_strategy: Strategy) -> None:
        """Every strategy's ``needs`` against what the loop and the model can provide (before
        round 0, with one-line ConfigErrors): names from the vocabulary ``NEEDS``; no need of a
        trained model in a strategy that labels round 0; the model capabilities they need."""
        model = self._initial_model
        capabilities = {need: need in model.capabilities for need in sorted(CAPABILITIES)}
        fixes = {MASK_IOU_HEAD: "use a model with one (model=maskrcnn_r18_small_iou or model=condinst_r18_small_iou, "
                                "or set model.mask_iou)",
                 POINT_SUPERVISION: "use model.point_supervision=true (model=maskrcnn_r18_small_points or "
                                    "model=condinst_r18_small_points)",
                 PREDICTION_SETS: f"the {model.family} model family offers none; use a Mask R-CNN or CondInst model "
                                  f"(e.g. model=maskrcnn_r18_small_points)"}
        used = [(strategy, "strategy")] if self.rounds >= 1 else []
        if not self.cfg.al.get("initial_run"):
            used.append((initial_strategy, "al.initial_strategy"))
        for s, what in ((strategy, "strategy"), (initial_strategy, "al.initial_strategy")):
            needs = s.needs
            if isinstance(needs, str) or not all(isinstance(n, str) for n in needs):
                raise ConfigError(f"{what}: {s.name!r} declares needs {needs!r}; expected a set of names from {sorted(NEEDS)}")
            unknown = sorted(set(needs) - set(NEEDS))
            if unknown:
                raise ConfigError(f"{what}: {s.name!r} needs {unknown[0]!r}, which the loop does not provide; "
                                  f"known needs: {sorted(NEEDS)}")
        for s, what in used:
            if what == "al.initial_strategy" and set(s.needs) & NEEDS_A_TRAINED_MODEL:
                need = sorted(set(s.needs) & NEEDS_A_TRAINED_MODEL)[0]
                raise ConfigError(f"{what}: {s.name!r} needs {NEEDS[need]} ({need}), which round 0 does not have; "
                                  f"choose a strategy that needs no trained model (e.g. random, tfdp, entropy_reference) "
                                  f"or take round 0 from another run with al.initial_run")
            for need, ok in capabilities.items():
                if need in s.needs and not ok:
                    raise ConfigError(f"{what}: {s.name!r} needs {NEEDS[need]} ({need}); {fixes[need]}")

    # ---------------------------------------------------------------- state
    @property
    def state_path(self) -> Path:
        return self.run_dir / "state.json"

    def round_dir(self, k: int) -> Path:
        return self.run_dir / f"round_{k:03d}"

    def labels_path(self, k: int) -> Path:
        return self.round_dir(k) / "labels.jsonl"

    def _redo(self, k: int) -> str:
        """What to do about a damaged file of round k: the loop redoes removed last rounds."""
        return f"remove {self.round_dir(k)} and every later round folder to redo the run from round {k}"

    def _new_state(self, config: dict, fingerprint: dict) -> tuple[dict, InitialRound | None]:
        state = {"version": STATE_VERSION, "round": 0, "phase": "start", "phase_results": {}, "records": [],
                 "seed": self.seed, "config": config, "fingerprint": fingerprint}
        initial = None
        if self.cfg.al.get("reference_run"):  # checked before anything is written; copied when needed
            check_reference_run(self.cfg.al.reference_run, config)
        if self.cfg.al.get("initial_run"):
            initial = check_initial_run(self.cfg.al.initial_run, config)
            # Round 0 is copied in (run()) and evaluated here, with the source's phase results.
            state.update(phase="trained", phase_results={
                "select": initial.select.to_dict(), "train": initial.train.to_dict() if initial.train else None})
        return state, initial

    def _load_or_create_state(self, config: dict, fingerprint: dict) -> tuple[dict, InitialRound | None]:
        """The run state, read and checked (nothing is written): the config against the stored
        one, the data against the stored fingerprint, older versions converted in memory, and the
        state rolled back to the first round whose folder was removed. With the InitialRound
        when round 0 is to be taken from al.initial_run."""
        if not self.state_path.exists():
            return self._new_state(config, fingerprint)
        try:
            state = read_state(self.state_path)
        except DamagedFileError as e:
            raise e.advise("move the run folder away to start over") from None
        diffs = config_differences(state["config"], config)
        if diffs:
            raise ConfigError(
                f"{self.run_dir}: exists with a different config (differs at: {', '.join(diffs[:5])}); "
                f"pass run_name=NAME for a new run or remove the folder"
            )
        if "fingerprint" in state:
            changes = fingerprint_changes(state["fingerprint"], fingerprint)
            if changes:
                path, what = changes[0]
                raise DataError(f"{path}: {what} (fingerprint in {self.state_path}); restore the data the run "
                                f"started on, or start a new run (run_name=NAME)")
        else:
            log.info("%s: recording the fingerprint of the data (a run older than state version 3)", self.state_path)
        state["fingerprint"] = fingerprint
        if state["version"] < 3:
            self._upgrade_results(state)
        missing = self._first_removed_round(state)
        if missing is not None:
            log.warning("%s was removed: redoing the run from round %d", self.round_dir(missing), missing)
            if missing == 0:
                return self._new_state(config, fingerprint)
            state.update(round=missing, phase="start", phase_results={},
                         records=[r for r in state["records"] if r["round"] < missing])
        log.info("resuming %s at round %d (%s); %d round(s) recorded", self.run_dir, state["round"],
                 RESUME_POINT.get(state["phase"], state["phase"]), len(state["records"]))
        return state, None

    def _upgrade_results(self, state: dict) -> None:
        """Version 1/2 states keep no phase results: the selection's comes from selection.json;
        the training's is unknown (the round's record will lack its train keys)."""
        k, phase = state["round"], state["phase"]
        results = {}
        if phase in ("selected", "trained") and self.round_dir(k).is_dir():
            try:
                results["select"] = SelectResult.from_selection_file(self.round_dir(k) / "selection.json").to_dict()
            except DamagedFileError as e:
                raise e.advise(self._redo(k)) from None
        if phase == "trained":
            log.warning("round %d was trained by an older alseg: its record will have no train metrics", k)
            results["train"] = None
        state["phase_results"] = results

    def _first_removed_round(self, state: dict) -> int | None:
        """The first round with a committed selection whose folder is gone, when no later round
        folder remains (ConfigError when one does: the rounds cannot be redone out of order)."""
        done = state["round"] + (state["phase"] != "start")
        missing = next((k for k in range(done) if not self.round_dir(k).is_dir()), None)
        if missing is None:
            return None
        later = sorted(int(m.group(1)) for p in self.run_dir.iterdir()
                       if p.is_dir() and (m := re.fullmatch(r"round_(\d+)", p.name)) and int(m.group(1)) > missing)
        if later:
            raise ConfigError(f"{self.round_dir(missing)}: missing while {self.round_dir(later[0])} exists; "
                              f"{self._redo(missing)}, or move the run folder away to start over")
        return missing

    def _read_ledger(self, state: dict, initial: InitialRound | None) -> tuple[Ledger, bool]:
        """The labels of every round whose selection was committed (a round still at "start" is
        redone, whatever it left behind), and whether they must be written to per-round files (a
        version-1 state carries the ledger itself). Reads only."""
        if initial is not None:
            return Ledger(initial.entries), False
        done = state["round"] + (state["phase"] != "start")
        if state["version"] == 1:
            raw = state.get("ledger", [])
            bad = next((i for i, e in enumerate(raw) if not isinstance(e, dict) or type(e.get("round")) is not int), None)
            problem = f"ledger entry {bad}: no round" if bad is not None else next(
                (f"a ledger entry: {p}" for p in map(label_problem, raw) if p), None)
            if problem:
                raise DamagedFileError(self.state_path, problem).advise("move the run folder away to start over")
            entries = [e for e in raw if e["round"] < done]
            return Ledger(entries), True
        ledger = Ledger()
        for k in range(done):
            try:
                ledger.load_round(k, self.labels_path(k))
            except DamagedFileError as e:
                raise e.advise(self._redo(k)) from None
        return ledger, False

    def _commit(self, state: dict) -> None:
        # Keys in insertion order: records read back keep their column order (results.csv).
        distributed.main_only(lambda: atomic_write_json(self.state_path, state, sort_keys=False))

    # ---------------------------------------------------------------- checkpoints
    def _load_round_model(self, k: int, path: Path | None = None, advice: str | None = None):
        """A fresh model with round k's checkpoint loaded (DamagedFileError naming it otherwise)."""
        path = path or self.round_dir(k) / "model.pt"
        model = self._build_model(self._num_classes)
        try:
            load_model_state(model, path, map_location=self.device)
        except DamagedFileError as e:
            raise e.advise(advice or self._redo(k)) from None
        return model

    def _model_of(self, k: int, current: tuple[int, object] | None):
        """The model trained in round k: ``current`` when it holds it, else read from its checkpoint."""
        if k < 0:
            return None
        if current is not None and current[0] == k:
            return current[1]
        return self._load_round_model(k)

    def _resume_model(self, state: dict, initial: InitialRound | None) -> tuple[int, object] | None:
        """(round, model) of the checkpoint the resumed run reads next, loaded now so that a damaged
        one stops the run before anything is written; None when it reads none."""
        k, phase = state["round"], state["phase"]
        if k > self.rounds or (phase == "evaluated" and k >= self.rounds):
            return None
        finetune = self.cfg.al.policy == "finetune"
        need = {"start": k - 1, "selected": k - 1 if finetune else -1, "trained": k, "evaluated": k}[phase]
        if need < 0:
            return None
        if initial is not None and need == 0:
            return 0, self._load_round_model(0, initial.model_path, "choose another al.initial_run")
        return need, self._load_round_model(need)

    def _check_other_checkpoints(self, state: dict, strategies: list[Strategy]) -> None:
        """Whole-file checks of the reference and ensemble checkpoints the next selection reads."""
        k = state["round"]
        if k > self.rounds:
            return
        needs = set().union(*(s.needs for s in strategies))
        reference = self.run_dir / "reference" / "model.pt"
        if REFERENCE_MODEL in needs and reference.exists():
            self._check_checkpoint(reference, "remove it to train the reference model again")
        if ENSEMBLE in needs and state["phase"] == "start" and k >= 1 and self.round_dir(k - 1).is_dir():
            for path in sorted(self.round_dir(k - 1).glob("ensemble_*.pt")):
                self._check_checkpoint(path, "remove it to train that ensemble member again")

    @staticmethod
    def _check_checkpoint(path: Path, advice: str) -> None:
        try:
            check_zip(path)
        except DamagedFileError as e:
            raise e.advise(advice) from None

    # ---------------------------------------------------------------- run
    def run(self) -> list[dict]:
        """Run (or resume) every round; returns the round records. What is logged before the run
        folder may be written (data checks: dropped images, skipped annotations, EXIF warnings) is
        held in memory and goes to run.log once it is opened."""
        with distributed.process_group(self.device, self.dist_timeout) as device:
            self.device = device
            early = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
            logging.getLogger().addHandler(early)
            # run.log gets alseg's INFO lines however alseg is called (the CLI sets INFO; a Python
            # caller's root logger may be at WARNING); the level is restored afterwards. Ranks
            # other than 0 log errors only (rank 0 says everything once).
            alseg_log = logging.getLogger("alseg")
            level = alseg_log.level
            if not distributed.is_main():
                alseg_log.setLevel(logging.ERROR)
                self.progress = False
            elif alseg_log.getEffectiveLevel() > logging.INFO:
                alseg_log.setLevel(logging.INFO)
            try:
                return self._run(early)
            finally:
                alseg_log.setLevel(level)
                logging.getLogger().removeHandler(early)
                early.close()

    def _prepare(self, config: dict) -> tuple:
        """Every input read and checked, nothing written: the data, the strategies, the writers, the
        state, round 0 from al.initial_run, the ledger, the checkpoint the run reads next."""
        data = distributed.main_first(self._build_data)  # rank 0 fills the data cache, the others read it
        strategy = self._strategy(self.cfg.strategy, "strategy")
        initial_strategy = self._strategy(self.cfg.al.initial_strategy, "al.initial_strategy")
        self._num_classes = data.train.num_classes
        self._build_model(self._num_classes)
        self._check_needs(strategy, initial_strategy)
        self._check_processes()
        writers = WriterGroup(list(build(self.cfg.logger, "logger").values()) if self.cfg.logger else [])
        state, initial = self._load_or_create_state(config, data_fingerprint(data))
        ledger, write_labels = self._read_ledger(state, initial)
        current = self._resume_model(state, initial)
        self._check_other_checkpoints(state, [strategy, initial_strategy])
        return data, strategy, initial_strategy, writers, state, initial, ledger, write_labels, current

    def _run(self, early: logging.handlers.MemoryHandler) -> list[dict]:
        config = OmegaConf.to_container(self.cfg, resolve=True)
        # All validation, and every read of the run folder, happens before the run folder is touched
        # (on every rank; an error on any stops them all).
        data, strategy, initial_strategy, writers, state, initial, ledger, write_labels, current = \
            distributed.agree(lambda: self._prepare(config))
        if not distributed.is_main():
            writers = WriterGroup([])
        data_keys = skipped_annotations(data)

        state["config"] = config
        if write_labels:
            state.pop("ledger", None)
        state["version"] = STATE_VERSION
        distributed.main_only(lambda: self._start_writing(state, ledger, initial, write_labels))
        log_file = distributed.main_only(self._log_handler)
        if log_file is not None:
            early.setTarget(log_file)
            early.flush()
        logging.getLogger().removeHandler(early)
        try:
            log.info("run folder: %s", self.run_dir)
            if initial is not None:
                log.info("round 0 taken from %s", initial.source)
            if data_keys["data/skipped_annotations"]:
                log.warning("invalid annotations skipped (dataset.invalid_annotations=skip): %d; train %s, val %s",
                            data_keys["data/skipped_annotations"], data.train.skipped, data.val.skipped)
            note = from_scratch_note(self.cfg)
            if note:
                log.warning(note)
            oracle = Oracle(data.train, self.costs)
            distributed.main_only(lambda: writers.open(self.run_dir, config, state["records"]))
            while state["round"] <= self.rounds:
                k = state["round"]
                if state["phase"] == "start":
                    previous = self._model_of(k - 1, current)
                    current = (k - 1, previous) if previous is not None else current
                    strat, budget = (initial_strategy, self.initial_budget) if k == 0 else (strategy, self.budget)
                    selected = self._select(k, strat, budget, data, ledger, oracle, previous)
                    state.update(phase="selected", phase_results={"select": selected.to_dict()})
                    self._commit(state)
                if state["phase"] == "selected":
                    model, trained = self._train(k, data, ledger, current)
                    current = (k, model)
                    state["phase_results"]["train"] = trained.to_dict()
                    state["phase"] = "trained"
                    self._commit(state)
                if state["phase"] == "trained":
                    model = self._model_of(k, current)
                    current = (k, model)
                    results = state["phase_results"]
                    record = self._evaluate(k, data, ledger, model, strategy, initial_strategy,
                                            SelectResult(**results["select"]),
                                            TrainResult(**results["train"]) if results.get("train") else None,
                                            data_keys, reuse=k == 0 and initial is not None)
                    distributed.main_only(lambda: writers.write(record))
                    state["records"] = [r for r in state["records"] if r["round"] != k] + [record]
                    state.update(phase="evaluated")
                    self._commit(state)
                state.update(round=k + 1, phase="start", phase_results={})
                self._commit(state)
        except KeyboardInterrupt as e:
            doing = {"start": "selection", "selected": "training", "trained": "evaluation"}.get(state["phase"], "")
            log.warning("interrupted (%s) during round %d%s; every finished phase is saved: run the same command "
                        "again to resume", getattr(e, "signal_name", "SIGINT"), state["round"],
                        f" {doing}" if doing else "")
            raise
        finally:
            writers.close()
            if log_file is not None:
                logging.getLogger().removeHandler(log_file)
                log_file.close()
        return state["records"]

    def _start_writing(self, state: dict, ledger: Ledger, initial: InitialRound | None, write_labels: bool) -> None:
        """The run folder made (or brought up to date) once every input was checked: round 0 copied
        from al.initial_run, config.yaml, a version-1 state's labels in per-round files, state.json."""
        make_dirs(self.run_dir)
        if initial is not None:
            copy_initial_round(initial, self.round_dir(0))
        # Differs from the stored one at most in keys that may change on resume (al.rounds, device, ...).
        atomic_write_text(self.run_dir / "config.yaml", OmegaConf.to_yaml(self.cfg, resolve=True))
        if write_labels:  # a version-1 state: its ledger goes to the per-round files
            for k in range(state["round"] + (state["phase"] != "start")):
                ledger.save_round(k, self.labels_path(k))
        self._commit(state)

    def _log_handler(self) -> logging.Handler:
        path = self.run_dir / "run.log"
        try:
            handler = logging.FileHandler(path)
        except OSError as e:
            raise write_error(path, e) from None
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        return handler

    def _select(self, k, strategy: Strategy, budget: Budget, data, ledger: Ledger, oracle: Oracle,
                model) -> SelectResult:
        start = time.perf_counter()
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
                                   "pool_predictions": lambda: self._infer(k, model, data, unlabeled, "unlabeled"),
                                   "labeled_predictions": lambda: self._infer(k, model, data, labeled, "labeled"),
                               })
        if distributed.together():  # what the ranks compute together, before rank 0 selects alone
            for need in sorted(strategy.needs & COLLECTIVE_NEEDS):
                ctx.get(need)
        rng = np.random.default_rng([self.seed, k, 1])
        queries = distributed.on_main(lambda: self._choose(k, strategy, ctx, budget, rng))
        seconds = 0.0
        for q in queries:  # on every rank: each keeps the ledger its training reads
            labels = oracle.answer(q)
            seconds += sum(lab.seconds for lab in labels)
            ledger.add(labels, k)
        result = distributed.on_main(lambda: self._write_selection(k, strategy, budget, ctx, queries, seconds, ledger))
        # The merged pool predictions of a run on N processes (memory-mapped; the mapping outlives the files).
        distributed.main_only(lambda: shutil.rmtree(self.round_dir(k) / "pool_inference", ignore_errors=True))
        log.info("round %d: %s selected %d queries (%.0f s of annotation) in %.1f s", k, strategy.name, len(queries),
                 seconds, time.perf_counter() - start)
        return result

    @staticmethod
    def _choose(k: int, strategy: Strategy, ctx: SelectionContext, budget: Budget, rng) -> list:
        queries = strategy.select(ctx, budget, rng)
        if not queries:
            raise ConfigError(f"round {k}: strategy {strategy.name!r} selected nothing within the budget {budget}")
        return queries

    def _write_selection(self, k: int, strategy: Strategy, budget: Budget, ctx: SelectionContext, queries: list,
                         seconds: float, ledger: Ledger) -> SelectResult:
        """round_k/labels.jsonl and selection.json (with the strategy's analysis of its queries)."""
        ledger.save_round(k, self.labels_path(k))
        result = SelectResult(queries=len(queries), seconds=seconds, analysis=strategy.analyze(ctx, queries))
        atomic_write_json(self.round_dir(k) / "selection.json", {
            "round": k, "strategy": strategy.name, "budget": {"amount": budget.amount, "unit": budget.unit},
            "seconds": seconds, "analysis": result.analysis, "queries": [q.to_dict() for q in queries]})
        return result

    def _infer(self, k: int, model, data: DataSplits, image_ids: list[int], which: str):
        """Pool predictions of ``model`` on ``image_ids`` for round k's selection (on N processes
        each rank's share goes through round_k/pool_inference/<which>/, merged there on rank 0 and
        memory-mapped: one folder per set, as both may be in use at once)."""
        if model is None:
            raise ConfigError("this strategy needs a trained model; it cannot be the initial strategy")
        start = time.perf_counter()
        out = infer_pool(model, data.train, image_ids, device=self.device, batch_size=int(self.cfg.eval.batch_size),
                         progress=self.progress, shard_dir=self.round_dir(k) / "pool_inference" / which)
        log.info("round %d: pool inference on %d images in %.1f s", k, len(image_ids), time.perf_counter() - start)
        return out

    def _reference_model(self, data: DataSplits):
        """A model trained on the whole pool with full masks (for model-based pruning baselines),
        trained once per run and kept in reference/model.pt for resumption; or, with
        al.reference_run, that run's (checked, copied in)."""
        path = self.run_dir / "reference" / "model.pt"
        if not path.is_file() and self.cfg.al.get("reference_run"):
            source = check_reference_run(self.cfg.al.reference_run, OmegaConf.to_container(self.cfg, resolve=True))
            distributed.main_only(lambda: atomic_write_bytes(path, read_bytes(source)))
            log.info("reference model taken from %s", source)
        if path.is_file():
            return self._load_round_model(-1, path, "remove it to train the reference model again")
        model = self._build_model(data.train.num_classes)
        views = {r.image_id: ImageView(full_image=True, mask_ann_ids={i.ann_id for i in r.instances})
                 for r in data.train.images}
        log.info("training the reference model on all %d pool images", len(views))
        self._fit(model, TrainingSet(data.train, views, self.transforms, seed=self.seed), self.train_cfg,
                  "reference train", seed=self.seed)
        distributed.main_only(lambda: atomic_torch_save({"model": model.state_dict(), "round": -1}, path))
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
                try:
                    load_model_state(member, path, map_location=self.device)
                except DamagedFileError as e:
                    raise e.advise("remove it to train that ensemble member again") from None
            else:
                seed = self.seed * 7919 + 1000 * i + k
                self._fit(member, TrainingSet(data.train, views, self.transforms, seed=seed), self.train_cfg,
                          f"ensemble {i} train", seed)
                distributed.main_only(lambda: atomic_torch_save({"model": member.state_dict(), "round": k}, path))
            members.append(member)
        return members

    def _fit(self, model, dataset: TrainingSet, cfg: TrainerConfig, desc: str, seed: int) -> dict[str, float]:
        """Train ``model`` in place; the mean of each loss term over the last iterations."""
        torch.manual_seed(seed)
        losses = LossAverageHook()
        Trainer(model, dataset, cfg, self.device, seed=seed,
                hooks=[ProgressHook(desc, enabled=self.progress), LogProgressHook(desc, self.log_every), losses]).train()
        return losses.summary()

    def _train(self, k: int, data: DataSplits, ledger: Ledger, current) -> tuple[object, TrainResult]:
        """Round k's model (fine-tuned from round k-1's, or from the initial weights) and what its
        training returns; the checkpoint is written to round_k/model.pt."""
        views = ledger.training_views()
        partial = [i for i, v in views.items() if v.box_ann_ids - v.mask_ann_ids]
        if partial and POINT_SUPERVISION not in self._initial_model.capabilities:
            raise ConfigError("instances labeled by boxes or points need model.point_supervision=true")
        if self.cfg.al.policy == "finetune" and k > 0:
            model = self._model_of(k - 1, current)
            cfg = self.finetune_cfg
        else:
            model = self._build_model(data.train.num_classes)
            cfg = self.train_cfg
        seed = self.seed * 1009 + k
        dataset = TrainingSet(data.train, views, self.transforms, seed=seed)
        losses = self._fit(model, dataset, cfg, f"round {k} train", seed)
        if MASK_IOU_HEAD in model.capabilities:  # fitted on rank 0, then copied to the others
            losses |= distributed.on_main(lambda: model.train_mask_iou_head(
                dataset, device=self.device, seed=seed, progress=self.progress, batch_size=self.train_cfg.batch_size))
            distributed.broadcast_model(model)
        distributed.main_only(lambda: self._save_checkpoint(k, model))
        return model, TrainResult(iters=cfg.iters, base_lr=cfg.lr, losses=losses)

    def _save_checkpoint(self, k: int, model) -> None:
        atomic_torch_save({"model": model.state_dict(), "round": k}, self.round_dir(k) / "model.pt")
        if self.cfg.al.keep_checkpoints == "last" and k > 0:
            (self.round_dir(k - 1) / "model.pt").unlink(missing_ok=True)

    def _evaluate(self, k: int, data: DataSplits, ledger: Ledger, model, strategy: Strategy,
                  initial_strategy: Strategy, selected: SelectResult, trained: TrainResult | None,
                  data_keys: dict, reuse: bool = False) -> dict:
        """Round k's record: counts, annotation seconds, the model's metrics on the val split, and
        the select and train phases' results; also written to round_k/metrics.json, the metrics
        alone to round_k/eval.json. ``reuse``: round 0 taken from al.initial_run, whose eval.json
        (copied with its model) holds the same model's metrics on the same val split: not evaluated
        again (a source run made before eval.json existed is evaluated)."""
        start = time.perf_counter()
        copied = self.round_dir(k) / EVAL_FILE
        if reuse and copied.is_file():
            try:
                metrics = {key: math.nan if v is None else v for key, v in read_json(copied, dict).items()}  # null: NaN
            except DamagedFileError as e:
                raise ConfigError(f"al.initial_run: {e.path}: {e.problem}; delete it to evaluate round 0 again") from None
            how = "as evaluated in al.initial_run"
        else:
            metrics = evaluate(model, data.val, device=self.device, batch_size=int(self.cfg.eval.batch_size),
                               progress=self.progress)  # on every rank (sharded); the record on rank 0
            how = None
        return distributed.on_main(lambda: self._record(k, data, ledger, model, strategy, initial_strategy, selected,
                                                         trained, data_keys, metrics, start, how))

    def _record(self, k: int, data: DataSplits, ledger: Ledger, model, strategy: Strategy,
                initial_strategy: Strategy, selected: SelectResult, trained: TrainResult | None, data_keys: dict,
                metrics: dict, start: float, how: str | None = None) -> dict:
        if how is None:  # evaluated now (not taken from al.initial_run): the head's errors too, then kept
            if MASK_IOU_HEAD in model.capabilities:
                metrics = {**metrics, **iou_prediction_errors(model, data.val, device=self.device)}
            atomic_write_json(self.round_dir(k) / EVAL_FILE, missing_as_none(metrics))
        log.info("round %d: %s on %d val images in %.1f s: mask AP %.3f, mask AP50 %.3f, box AP %.3f", k,
                 how or "evaluated", len(data.val.images), time.perf_counter() - start,
                 metrics.get("mask_AP", float("nan")), metrics.get("mask_AP50", float("nan")),
                 metrics.get("box_AP", float("nan")))
        seconds = ledger.seconds()
        counts = ledger.counts()
        pool = len(data.train.images)
        record = {"round": k, "strategy": strategy.name, "initial_strategy": initial_strategy.name, "seed": self.seed,
                  **counts, "pool_images": pool, "seconds": seconds, "hours": seconds / 3600.0, **metrics}
        if self.rounds == 0 and counts["images_with_labels"] == counts["labeled_images"]:
            # A data-pruning run (TFDP Sec. 3): one selection of whole images, no active-learning round.
            record["pruning_rate"] = 1.0 - counts["labeled_images"] / pool
        if trained is not None:
            record.update(trained.record())
        record.update(selected.record())
        record.update(data_keys)
        atomic_write_json(self.round_dir(k) / "metrics.json", missing_as_none(record))  # strict JSON: NaN as null
        return record


def from_scratch_note(cfg: DictConfig) -> str | None:
    """What to expect, and what to do, when a model with no pretrained weights is trained on real
    images (any dataset but the synthetic shapes): at CPU scale its AP stays near 0. None otherwise."""
    model = cfg.model
    if str(cfg.dataset.get("name", "")) == "synthetic" or any(
            model.get(k) not in (None, "", "none", "null") for k in ("backbone_weights", "weights", "checkpoint")):
        return None
    iters = cfg.trainer.schedule.iters
    return (f"training from scratch on real images (model.backbone_weights, model.weights and model.checkpoint are "
            f"null; {iters} iterations in round 0): mask AP near 0 is expected at this scale. For useful AP load "
            f"pretrained weights: model.backbone_weights=IMAGENET1K_V1 (an ImageNet backbone), model=maskrcnn_r50 "
            f"model.weights=DEFAULT (COCO Mask R-CNN), or model.checkpoint=PATH; torchvision downloads them, or "
            f"finds them in $TORCH_HOME/hub/checkpoints when offline")


def skipped_annotations(data: DataSplits) -> dict[str, int]:
    """The record keys of invalid annotations dropped under dataset.invalid_annotations=skip,
    train and val together: "data/skipped_annotations" (total) and
    "data/skipped_annotations/<reason>" per reason."""
    total = Counter()
    for split in (data.train, data.val):
        total.update(getattr(split, "skipped", None) or {})
    return {"data/skipped_annotations": sum(total.values()),
            **{f"data/skipped_annotations/{reason}": n for reason, n in sorted(total.items())}}
