"""Contrastive CLIP training on (image, text) catalog pairs: InfoNCE with in-batch negatives, learnable temperature.

The default recipe (chosen on this 2-core CPU, see README "CLIP recipe") pairs the offline MiniLM as a frozen HF
text tower (only its projection trains; its pooled outputs are computed once and cached) with the ImageNet
EfficientNet-Lite0 image tower: its early stages frozen and cached, its last stages fine-tuned at 96 px. Linear
heads on the image embedding learn the catalog's attributes, and general (photo, caption) pairs join the batches.
The run's data and recipe live in clip_data.py, the model and its surgery in clip_towers.py, the objective in
clip_loss.py; this module is the training loop.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vitrine.encoders.clip import HEAD_SCALE, save_attribute_heads, save_checkpoint_dir
from vitrine.encoders.towers import tower_preset
from vitrine.trainer.clip_data import (ClipTask, ClipTrainConfig, GeneralPairs, Pairs, attribute_labels, attribute_vocab,
                                       fingerprint)
# Re-exported: the commands, the gate and the benches load pairs and split flickr8k through this module, and the
# names it held before the split (losses, image loading, tower presets) still import from here.
from vitrine.trainer.clip_data import (default_model_cfg, general_split, load_general, load_pairs,  # noqa: F401
                                       load_square, normalize_pixels)
from vitrine.trainer.clip_loss import attribute_loss, info_nce  # noqa: F401
from vitrine.trainer.clip_towers import HUB_PREFIX, hub_model  # noqa: F401
from vitrine.trainer.clip_loss import BatchLoss, batch_order, retrieval_recall
from vitrine.trainer.clip_towers import ClipTowers
from vitrine.trainer.distributed import broadcast, shard, world, wrap_ddp


def warmup_cosine(opt: torch.optim.Optimizer, warmup_steps: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_steps`, then cosine decay to zero at step `total`."""
    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total - warmup_steps)))

    return torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


@dataclass
class _Inputs:
    """What the trainable layers see, computed once before the first epoch. An epoch orders `rows`: a row < n is a
    shop pair, a row >= n is general photo row - n; both kinds share every batch's in-batch negatives."""

    n: int
    rows: np.ndarray                      # the training pairs, then every general photo
    views: list[torch.Tensor]             # shop image inputs per orientation (_image_inputs), every pair
    text: torch.Tensor                    # shop text inputs, a row per pair (zero for pairs the run leaves out)
    labels: dict[str, torch.Tensor]       # per attribute field, a label per pair (-100: not taught)
    general_views: list[torch.Tensor]
    general_text: torch.Tensor | None     # every caption of every general photo
    general_first: np.ndarray             # per general photo, the row of its first caption in general_text
    general_counts: np.ndarray            # per general photo, its number of captions

    @property
    def n_general(self) -> int:
        return len(self.general_counts)


@dataclass
class _HeldOut:
    """What rank 0 measures after each epoch: the held-out pairs (rows of _Inputs) and, where general photos are
    held out, their image inputs and first captions."""

    idx: np.ndarray
    general_views: list[torch.Tensor]
    general_text: torch.Tensor | None


@dataclass
class _Run:
    """A fit's optimiser and schedule, its early-stopping state (rank 0 decides it, every rank follows) and files."""

    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    steps_per_epoch: int
    state: dict[str, Any]
    t_start: float
    checkpoint: Path                      # what --resume continues from
    best_dir: Path                        # the best epoch so far, moved into out_dir at the end


class ClipTrainer(ClipTowers):
    """Trains a CLIP model on Pairs; resumable from out_dir/checkpoint.pt; keeps the best held-out model.

    Beside symmetric InfoNCE it teaches the catalog's attributes (article type, colour, gender) with linear heads on
    the image embedding, and mixes general (photo, caption) pairs into the batches.
    """

    def __init__(self, config: ClipTrainConfig, out_dir: Path, base: str | None = None, device: str | None = None,
                 log: Callable[[str], None] = print, model_cfg: dict[str, Any] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.log = log if world()[0] == 0 else _quiet  # in a process group, rank 0 speaks for all
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed)
        super().__init__(config, base, device, model_cfg)  # after the seeds: new weights start the same every run
        self.heads: torch.nn.ModuleDict | None = None
        self.vocab: dict[str, list[str]] = {}

    @torch.no_grad()
    def _step(self, opt: torch.optim.Optimizer, sched: Any, loss: torch.Tensor) -> float:
        """One optimiser step; the temperature stays within CLIP's bound (logit scale <= 100)."""
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss.backward()
        opt.step()
        sched.step()
        self.model.logit_scale.clamp_(0, math.log(100))
        return loss.item()

    def evaluate(self, views: list[torch.Tensor], idx: np.ndarray, text_inputs: torch.Tensor,
                 labels: Mapping[str, torch.Tensor] | None = None) -> dict[str, float]:
        """Held-out image<->text recall (pair i matches text i) and, with heads, attribute accuracy."""
        self.model.eval()
        img, txt = self._embed_images(views, idx), self._embed_texts(text_inputs)
        out = {**retrieval_recall(img, txt, 10), **retrieval_recall(img, txt, 1)}
        if self.heads is not None and labels:
            self.heads.eval()
            for f, head in self.heads.items():
                y = labels[f][idx]
                known = y >= 0
                if known.any():
                    pred = head(HEAD_SCALE * img.to(self.device)).argmax(-1).cpu()
                    out[f"acc_{f}"] = (pred[known] == y[known]).float().mean().item()
        return out

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW with two groups: a pretrained tower's trainable blocks at lr_tower, everything new at lr."""
        cfg = self.config
        pretrained_tower = (self.tower == "checkpoint" or tower_preset(self.tower).pretrained
                            or self.tower.count(":") == 2)  # open_clip:NAME:TAG
        tower, rest = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (tower if pretrained_tower and name.startswith("visual.trunk.") else rest).append(p)
        if self.heads is not None:
            rest += list(self.heads.parameters())
        groups = [{"params": rest, "lr": cfg.lr}] + ([{"params": tower, "lr": cfg.lr_tower}] if tower else [])
        return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)

    def fit(self, pairs: Pairs, resume: bool = False, progress: bool = True, general: GeneralPairs | None = None,
            general_eval: GeneralPairs | None = None) -> dict[str, Any]:
        """Trains and keeps the best held-out epoch in out_dir; returns what training.json records.

        Inside a torch process group (`vitrine train clip --ray`) every rank runs this with the same seed, so all
        draw the same batches; each encodes its share of a batch, InfoNCE runs over every rank's rows (gathered)
        and DDP averages the gradients, so a step equals the single-process one. Rank 0 alone evaluates, decides
        the early stop (broadcast to the others) and writes out_dir.
        """
        cfg = self.config
        t_start = time.perf_counter()
        rank, size = world()
        main = rank == 0
        progress = progress and main
        order, val_idx, train_idx = self._split(len(pairs.ids), size)
        n_general = len(general.photos) if general is not None else 0
        self.log(f"pairs: {len(train_idx)} train, {len(val_idx)} held out, {n_general} general photos; "
                 f"caching text tower outputs ...")
        inputs = self._inputs(pairs, order, train_idx, general if n_general else None, progress)
        held = self._held_out(val_idx, general_eval if main else None, progress)  # only rank 0 evaluates
        run = self._start(len(train_idx) + n_general, t_start, resume)
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        batch_loss = wrap_ddp(BatchLoss(self.model, self.heads, self._encode_image, self._encode_text,
                                        cfg.attribute_weight), self.device)  # the module itself in one process
        rng = np.random.default_rng(cfg.seed + run.state["epoch"])
        for epoch in range(run.state["epoch"], cfg.epochs):
            losses = self._train_epoch(epoch, inputs, run, batch_loss, rng, progress)
            if main:
                self._end_epoch(run, epoch, float(np.mean(losses)), inputs, held)
                self._checkpoint(run)
            run.state = broadcast(run.state)  # rank 0 evaluated and decided; every rank follows
            if run.state["bad_epochs"] >= cfg.patience:
                self.log(f"early stop: no held-out gain for {cfg.patience} epochs")
                break
        extra = {"general_photos": n_general, "tower": self.tower,
                 "trainable_stages": None if self.split is None else len(self.split.trunk.blocks) - self.split.cut,
                 "attributes": {f: len(v) for f, v in self.vocab.items()}, "workers": size,
                 "heldout_ids": self._heldout_ids([pairs.ids[i] for i in val_idx])}
        training = None
        if main:
            training = self._finish(run.best_dir, run.state, pairs, len(train_idx), len(val_idx),
                                    time.perf_counter() - t_start, extra)
        return broadcast(training)

    def _split(self, n: int, workers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(the pairs this run uses in a seeded order, the held-out ones, the training ones), as rows of the pairs."""
        cfg = self.config
        if n < 4:
            raise ValueError(f"need at least 4 (image, text) pairs to train, got {n}.")
        if cfg.batch_size % workers:
            raise ValueError(f"batch_size {cfg.batch_size} is not a multiple of the {workers} workers; each worker takes "
                             f"an equal share of every batch.")
        order = np.random.default_rng(cfg.seed).permutation(n)
        if cfg.max_pairs:
            order = order[:cfg.max_pairs]
        holdout = min(cfg.holdout, max(2, len(order) // 10))
        return order, order[:holdout], order[holdout:]

    def _inputs(self, pairs: Pairs, order: np.ndarray, train_idx: np.ndarray, general: GeneralPairs | None,
                progress: bool) -> _Inputs:
        """Every used pair's text and image inputs and every general photo's, computed once; sets up the heads."""
        n = len(pairs.ids)
        used = np.sort(order)
        cached = self._text_inputs([pairs.texts[i] for i in used])
        text_all = cached.new_zeros((n, *cached.shape[1:]))
        text_all[torch.from_numpy(used)] = cached
        # General photos have several captions: all are cached, and each epoch pairs a photo with one of them.
        g_text, g_first, g_counts = None, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        if general is not None:
            g_text = self._text_inputs([c for caps in general.captions for c in caps])
            g_first = np.cumsum([0] + [len(c) for c in general.captions[:-1]])
            g_counts = np.array([len(c) for c in general.captions])
        labels = self._attribute_heads(pairs, train_idx)
        views = self._image_inputs(pairs.pixels, progress)
        g_views = self._image_inputs(general.pixels, progress) if general is not None else []
        rows = np.concatenate([train_idx, n + np.arange(len(g_counts))])
        return _Inputs(n, rows, views, text_all, labels, g_views, g_text, g_first, g_counts)

    def _attribute_heads(self, pairs: Pairs, train_idx: np.ndarray) -> dict[str, torch.Tensor]:
        """A linear head per attribute field the training pairs teach (none at attribute_weight 0); returns every
        pair's labels."""
        cfg = self.config
        n = len(pairs.ids)
        attrs = pairs.attributes if len(pairs.attributes) == n else [{}] * n
        self.vocab = attribute_vocab([attrs[i] for i in train_idx], cfg.attribute_fields, cfg.attribute_min_count) \
            if cfg.attribute_weight > 0 else {}
        labels = attribute_labels(attrs, self.vocab)
        if self.vocab:
            self.heads = torch.nn.ModuleDict({f: torch.nn.Linear(self.model_cfg["embed_dim"], len(v))
                                              for f, v in self.vocab.items()}).to(self.device)
            self.log("attribute heads: " + ", ".join(f"{f} ({len(v)} values)" for f, v in self.vocab.items()))
        return labels

    def _held_out(self, val_idx: np.ndarray, general_eval: GeneralPairs | None, progress: bool) -> _HeldOut:
        if general_eval is None:
            return _HeldOut(val_idx, [], None)
        views = self._image_inputs(general_eval.pixels, progress, train=False)
        return _HeldOut(val_idx, views, self._text_inputs([c[0] for c in general_eval.captions]))

    def _start(self, n_rows: int, t_start: float, resume: bool) -> _Run:
        """The optimiser, its schedule and a fresh early-stopping state; with `resume`, all three (and the model,
        the heads and the torch RNG) as out_dir/checkpoint.pt left them."""
        cfg = self.config
        opt = self._optimizer()
        steps_per_epoch = max(1, n_rows // cfg.batch_size)
        sched = warmup_cosine(opt, cfg.warmup_steps, steps_per_epoch * cfg.epochs)
        state = {"epoch": 0, "best": -1.0, "best_epoch": -1, "curve": [], "bad_epochs": 0}
        run = _Run(opt, sched, steps_per_epoch, state, t_start, self.out_dir / "checkpoint.pt", self.out_dir / ".best")
        if resume and run.checkpoint.is_file():
            ckpt = torch.load(run.checkpoint, map_location=self.device, weights_only=False)
            self.model.load_state_dict(ckpt["model"])
            if self.heads is not None and ckpt.get("heads"):
                self.heads.load_state_dict(ckpt["heads"])
            opt.load_state_dict(ckpt["opt"])
            sched.load_state_dict(ckpt["sched"])
            run.state = ckpt["state"]
            torch.set_rng_state(ckpt["rng"])
            self.log(f"resumed from {run.checkpoint} after epoch {run.state['epoch']}")
        return run

    def _train_epoch(self, epoch: int, inputs: _Inputs, run: _Run, batch_loss: torch.nn.Module,
                     rng: np.random.Generator, progress: bool) -> list[float]:
        """One pass over the rows in batch_order, this rank encoding its share of each batch; the step losses."""
        cfg = self.config
        self._train_mode()
        if self.heads is not None:
            self.heads.train()
        perm = batch_order(inputs.rows, inputs.n, inputs.labels.get(cfg.attribute_fields[0]) if cfg.attribute_fields
                           else None, cfg.type_runs, rng)
        caption_pick = rng.integers(0, 1 << 30, size=inputs.n_general)
        losses = []
        bar = tqdm(range(run.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                   mininterval=2.0)
        for step in bar:
            batch = shard(perm[step * cfg.batch_size:(step + 1) * cfg.batch_size])  # this rank's share
            shop = batch[batch < inputs.n]
            images, texts = self._batch(inputs, batch, caption_pick)
            loss = batch_loss(images, texts, len(shop), {f: y[shop] for f, y in inputs.labels.items()})
            losses.append(self._step(run.opt, run.sched, loss))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", T=f"{1 / self.model.logit_scale.exp().item():.3f}")
        return losses

    def _batch(self, inputs: _Inputs, batch: np.ndarray, caption_pick: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch's image and text inputs, shop rows first; each general photo with the caption this epoch picked."""
        shop, gen = batch[batch < inputs.n], batch[batch >= inputs.n] - inputs.n
        parts_img = [self._batch_images(inputs.views, shop, self.config.hflip)]
        parts_txt = [inputs.text[shop]]
        if len(gen):
            parts_img.append(self._batch_images(inputs.general_views, gen, self.config.hflip))
            pick = inputs.general_first[gen] + caption_pick[gen] % inputs.general_counts[gen]
            parts_txt.append(inputs.general_text[pick])
        return torch.cat(parts_img), torch.cat(parts_txt)

    def _end_epoch(self, run: _Run, epoch: int, train_loss: float, inputs: _Inputs, held: _HeldOut) -> None:
        """Held-out metrics into the curve; the best epoch so far is saved to best_dir (updates `run.state`)."""
        metrics = self.evaluate(inputs.views, held.idx, inputs.text[held.idx], inputs.labels)
        if held.general_text is not None:
            g = self.evaluate(held.general_views, np.arange(len(held.general_text)), held.general_text)
            metrics.update({f"general_{k}": v for k, v in g.items() if k.startswith("t2i_r@10")})
        state = run.state
        state["curve"].append({"epoch": epoch + 1, "train_loss": train_loss, **metrics,
                               "elapsed_s": round(time.perf_counter() - run.t_start, 1)})
        self.log(f"epoch {epoch + 1}: loss {train_loss:.3f}, held-out mean R@10 {metrics['mean_r@10']:.3f}"
                 + "".join(f", {k} {v:.3f}" for k, v in metrics.items() if k.startswith(("acc_", "general_"))))
        state["epoch"] = epoch + 1
        # R@10 saturates on small held-out sets; adding R@1 keeps the selection sensitive.
        score = metrics["mean_r@10"] + metrics["mean_r@1"]
        if score > state["best"]:
            state.update(best=score, best_epoch=epoch + 1, bad_epochs=0)
            self._save(run.best_dir)
        else:
            state["bad_epochs"] += 1

    def _checkpoint(self, run: _Run) -> None:
        """What --resume needs, written beside and renamed into place so that a crash never leaves half of one."""
        tmp = run.checkpoint.with_suffix(".tmp")
        torch.save({"model": self.model.state_dict(), "opt": run.opt.state_dict(), "sched": run.sched.state_dict(),
                    "heads": self.heads.state_dict() if self.heads is not None else None,
                    "state": run.state, "rng": torch.get_rng_state()}, tmp)
        tmp.replace(run.checkpoint)

    def _heldout_ids(self, ids: list[str]) -> list[str]:
        """The catalog items no training run of this model saw: this run's held-out pairs, less any its base
        checkpoint trained on (those outside the base's own held-out ids). The indexer's CLIP check
        (indexer/bundle.clip_check) queries with them, so its recall is measured on pairs the model never learned."""
        record = Path(self.base) / "training.json" if self.base else None
        before = json.loads(record.read_text()).get("heldout_ids") if record is not None and record.is_file() else None
        if before is None:   # no base, or a base that did not record them (its training pairs are unknown)
            return ids
        unseen = set(before)
        return [i for i in ids if i in unseen]

    def _save(self, out: Path) -> None:
        save_checkpoint_dir(self.model, self.model_cfg, self.preprocess, out)
        if self.heads is not None:
            save_attribute_heads(out, self.heads, self.vocab, HEAD_SCALE)

    def _finish(self, best_dir: Path, state: dict, pairs: Pairs, n_train: int, n_val: int, seconds: float,
                extra: dict[str, Any] | None = None) -> dict:
        # After a resume that found nothing better, the best model is already in out_dir.
        if best_dir.is_dir():
            for f in best_dir.iterdir():
                target = self.out_dir / f.name
                if target.is_dir():
                    shutil.rmtree(target)
                f.replace(target)
            best_dir.rmdir()
        best = next(c for c in state["curve"] if c["epoch"] == state["best_epoch"])
        version = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        training = {"version": version, "config": asdict(self.config), "train_pairs": n_train, "heldout_pairs": n_val,
                    **(extra or {}), "best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
                    "seconds": round(seconds, 1), "curve": state["curve"], "device": self.device,
                    "broken_images": pairs.broken[:100]}
        (self.out_dir / "training.json").write_text(json.dumps(training, indent=2))
        (self.out_dir / "metrics.json").write_text(json.dumps({"heldout": best}, indent=2))
        (self.out_dir / "data_fingerprint.txt").write_text(fingerprint(pairs) + "\n")
        return training


def _quiet(message: str) -> None:
    pass


def train_clip(config: ClipTrainConfig, out_dir: Path, task: ClipTask, base: str | None = None, resume: bool = False,
               progress: bool = True, device: str | None = None, model_cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ClipTrainer built and fitted in one call: what each Ray worker runs (trainer/distributed.py)."""
    trainer = ClipTrainer(config, out_dir, base=base, device=device, model_cfg=model_cfg)
    return trainer.fit(task.pairs, resume=resume, progress=progress, general=task.general, general_eval=task.general_eval)
