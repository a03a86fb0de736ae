"""The training state ``runner_glscl`` saves and resumes: model (frozen weights included), optimizer, scaler, epoch,
iteration, every rank's generator states, the best metric, the data layout and the plateau history, written
atomically and never with non-finite weights; pruning of old epoch checkpoints; resuming with the same architecture."""
import logging
import os
from typing import Optional

import torch
from lavis.common.dist_utils import is_main_process

from lavis_glscl import distributed
from lavis_glscl.seeding import rng_state, set_rng_state
from lavis_glscl.serialization import read_checkpoint
from lavis_glscl.typed_options import ConfigError


class CheckpointState:
    """Saving and resuming the whole training state (a mixin of :class:`~lavis_glscl.runners.runner.RunnerGlscl`)."""

    def _save_checkpoint(self, cur_epoch, is_best=False, iteration: Optional[int] = None):
        """Full training state; ``iteration`` = next step of ``cur_epoch`` for a mid-epoch save, None at epoch end."""
        rng_states = distributed.gather_objects(rng_state())
        if not is_main_process():
            return
        model = self.unwrap_dist_model(self.model)
        state_dict = model.state_dict()
        bad = [name for name, value in state_dict.items()
               if value.is_floating_point() and not torch.isfinite(value).all()]
        if bad:
            logging.error("not saving a checkpoint at epoch %s: non-finite values in %s", cur_epoch, bad[:5])
            return
        save_obj = {
            "model": state_dict,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "config": self.config.to_dict(),
            "epoch": cur_epoch,
            "iteration": iteration,
            "rng": rng_states,
            "best": dict(self.best),
            "data_layout": self.train_loader.layout,  # what sharded data needs to resume mid-epoch
            "plateau_history": list(self.plateau.history) if self.plateau else None,
        }
        name = "best" if is_best else ("latest" if iteration is not None else cur_epoch)
        path = self.output_dir / f"checkpoint_{name}.pth"
        logging.info("Saving checkpoint at epoch %s%s to %s.", cur_epoch,
                     "" if iteration is None else f" iteration {iteration}", path)
        temporary = path.with_suffix(".pth.tmp")
        torch.save(save_obj, temporary)
        os.replace(temporary, path)
        if not is_best and iteration is None:
            self._prune_epoch_checkpoints(cur_epoch)

    def _reload_best_model(self, model):
        """The best checkpoint's weights, read as data (LAVIS's own reload unpickles the file with ``torch.load``)."""
        path = self.output_dir / "checkpoint_best.pth"
        logging.info("Loading checkpoint from %s.", path)
        self.unwrap_dist_model(model).load_state_dict(read_checkpoint(str(path))["model"])
        return model

    def _check_same_architecture(self, path: str, checkpoint: dict) -> None:
        """Refuse, naming both, to resume a run of one model from a checkpoint of another (its config says which)."""
        if not isinstance(checkpoint, dict) or "model" not in checkpoint or "optimizer" not in checkpoint:
            raise ConfigError(f"run.resume_ckpt_path {path} is not a training checkpoint (model, optimizer, epoch); to "
                              "start from its weights, set model.pretrained instead")
        saved = (checkpoint.get("config") or {}).get("model") or {}
        current = self.config.model_cfg
        ours = (current.get("arch"), current.get("model_type"))
        theirs = (saved.get("arch"), saved.get("model_type"))
        if saved and ours != theirs:
            raise ConfigError(f"run.resume_ckpt_path {path} is a checkpoint of {theirs[0]} ({theirs[1]}), this run "
                              f"builds {ours[0]} ({ours[1]}): resume with the same model.arch and model.model_type, "
                              "or start from its weights with model.pretrained")

    def _prune_epoch_checkpoints(self, cur_epoch: int) -> None:
        keep = self.options.keep_last_checkpoints
        if not keep:
            return
        for epoch in range(cur_epoch - int(keep), -1, -1):
            old = self.output_dir / f"checkpoint_{epoch}.pth"
            if not old.exists():
                break
            old.unlink()

    def _load_checkpoint(self, url_or_filename):
        """Restore the full training state; returns ``(start_epoch, start_iter)`` (``RunOptions`` checked that the file
        exists)."""
        checkpoint = read_checkpoint(url_or_filename)
        self._check_same_architecture(url_or_filename, checkpoint)
        self.unwrap_dist_model(self.model).load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.best.update(checkpoint.get("best", {}))
        if self.plateau is not None:
            self.plateau.history = list(checkpoint.get("plateau_history") or [])
        rank, world_size = distributed.world()
        states = checkpoint.get("rng") or []
        if len(states) == world_size:
            set_rng_state(states[rank])
        elif states:
            logging.warning("checkpoint holds RNG states of %d ranks, running on %d: RNG not restored", len(states),
                            world_size)
        iteration = checkpoint.get("iteration")
        if iteration is not None:
            self.train_loader.check_resumable(checkpoint.get("data_layout"))
        epoch = int(checkpoint["epoch"])
        logging.info("Resumed from %s (epoch %d, %s)", url_or_filename, epoch,
                     "end of epoch" if iteration is None else f"iteration {iteration}")
        return (epoch + 1, 0) if iteration is None else (epoch, int(iteration))
