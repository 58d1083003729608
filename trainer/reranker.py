"""Fine-tunes a cross-encoder on graded judgments with hard negatives mined from Vitrine's own first stage.

Loss: listwise softmax cross-entropy over one relevant document and `negatives` first-stage mistakes per query
(the negatives the reranker must learn to push down). A held-out split of queries picks the best epoch by
nDCG@10 of the re-ranked first-stage candidates; the training queries are recorded so that evaluation and the
ranker trainer can refuse to touch them.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vitrine.ranking.metrics import load_qrels, ndcg_at_k
from vitrine.trainer.distributed import broadcast, shard, world, wrap_ddp

Qrels = Mapping[str, Mapping[str, int]]


@dataclass(frozen=True)
class RerankerTrainConfig:
    epochs: int = 2
    batch_queries: int = 8          # queries per step; each brings 1 positive + `negatives` pairs
    negatives: int = 3
    max_positives: int = 3          # per query and epoch; catalogs can judge hundreds of items relevant to one query
    mine_depth: int = 20            # first-stage depth negatives are mined from (and held-out queries re-ranked at)
    lr: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 128
    holdout: float = 0.15           # share of training queries held out for early stopping
    reserve_for_ranker: float = 0.0  # share of queries kept away from this model, for training the LightGBM ranker
    patience: int = 1
    seed: int = 0
    eval_base: bool = False         # also score the untrained base on held-out (off: a fresh head is random)
    onnx: bool = True               # write ONNX fp32/int8 variants into <out>/onnx, each measured on held-out queries

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_queries", "negatives", "mine_depth", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        for name in ("holdout", "reserve_for_ranker"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}.")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}.")


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def forbidden_qids(qrels_path: str | None, forbid: Sequence[str], siblings: bool) -> dict[str, str]:
    """qid -> source file for every judgment set that must stay unseen: --forbid-qrels, plus --qrels's siblings."""
    paths = [Path(f) for f in forbid]
    if siblings and qrels_path:
        own = Path(qrels_path).resolve()
        paths += [p for p in sorted(own.parent.glob("*.tsv")) if p.resolve() != own]
    out: dict[str, str] = {}
    for p in paths:
        for qid in load_qrels(p):
            out.setdefault(qid, str(p))
    return out


def check_disjoint(train_qids: Sequence[str], forbidden: Mapping[str, str], texts: Mapping[str, str]) -> list[str]:
    """Guards against training on evaluation queries; returns train_qids minus those that repeat one's text.

    A training id that is also a held-out id is a mistake in the inputs and raises. A training query whose text
    equals a held-out query's under another id (SciFact has such pairs) is dropped, so the model never sees it.

    Args:
        train_qids: the queries about to be trained on.
        forbidden: qid -> where it comes from (e.g. "scifact/qrels/test.tsv").
        texts: qid -> query text, for every query known.
    """
    by_id = sorted(set(train_qids) & set(forbidden))
    if by_id:
        raise ValueError(f"{len(by_id)} training quer{'y' if len(by_id) == 1 else 'ies'} also appear in held-out "
                         f"judgments ({forbidden[by_id[0]]}), e.g. {by_id[:5]}; training on them would leak the test set.")
    forbidden_texts = {_norm(texts[q]) for q in forbidden if texts.get(q)}
    return [q for q in train_qids if _norm(texts.get(q, "")) not in forbidden_texts]


def split_queries(qids: Sequence[str], holdout: float, reserve: float, seed: int) -> tuple[list[str], list[str], list[str]]:
    """Deterministic (train, held-out, reserved-for-ranker) split of query ids."""
    qids = sorted(set(qids))
    random.Random(seed).shuffle(qids)
    n_hold, n_res = int(round(len(qids) * holdout)), int(round(len(qids) * reserve))
    if len(qids) - n_hold - n_res < 1:
        raise ValueError(f"{len(qids)} queries leave none to train on after the held-out and reserved shares.")
    return qids[n_hold + n_res:], qids[:n_hold], qids[n_hold:n_hold + n_res]


def listwise_batches(qids: Sequence[str], qrels: Qrels, candidates: Mapping[str, Sequence[str]], negatives: int,
                     batch_queries: int, rng: random.Random, max_positives: int = 3) -> list[list[tuple[str, str, list[str]]]]:
    """Groups of (qid, positive doc, negative docs); hard negatives come from the query's first-stage list.

    At most `max_positives` positives per query: the highest-graded ones, those the first stage retrieved first.
    """
    groups = []
    for qid in qids:
        judged = qrels.get(qid, {})
        retrieved = set(candidates.get(qid, []))
        positives = [d for d, g in judged.items() if g > 0]
        rng.shuffle(positives)
        positives = sorted(positives, key=lambda d: (-judged[d], d not in retrieved))[:max_positives]
        for pos in positives:
            # A negative is anything the first stage ranked that is graded below this positive (grade-1 items
            # are negatives for a grade-2 positive: "red shirt" must beat the blue shirt).
            pool = [d for d in candidates.get(qid, []) if judged.get(d, 0) < judged[pos]]
            if len(pool) >= negatives:
                groups.append((qid, pos, rng.sample(pool, negatives)))
    rng.shuffle(groups)
    return [groups[i:i + batch_queries] for i in range(0, len(groups), batch_queries)]


def rerank_ndcg(score_fn: Callable[[str, list[str]], np.ndarray], qids: Sequence[str], queries: Mapping[str, str],
                candidates: Mapping[str, Sequence[str]], docs: Mapping[str, str], qrels: Qrels, k: int = 10) -> float:
    """Mean nDCG@k of each query's first-stage candidates re-ordered by score_fn(query, doc texts)."""
    values = []
    for qid in qids:
        cands = list(candidates.get(qid, []))
        if not cands:
            values.append(0.0)
            continue
        scores = score_fn(queries[qid], [docs.get(d, "") for d in cands])
        ranked = [cands[i] for i in sorted(range(len(cands)), key=lambda i: (-scores[i], i))]
        values.append(ndcg_at_k(ranked, qrels.get(qid, {}), k))
    return float(np.mean(values)) if values else 0.0


def fit_blend(score_fn: Callable[[str, list[str]], np.ndarray], qids: Sequence[str], queries: Mapping[str, str],
              candidates: Mapping[str, Sequence[str]], first_scores: Mapping[str, Sequence[float]], docs: Mapping[str, str],
              qrels: Qrels, grid: Sequence[float] = tuple(i / 20 for i in range(21))) -> tuple[float, dict[float, float]]:
    """The cross-encoder weight (ranking.rerank.blend_scores) with the best held-out nDCG@10, and every one tried."""
    from vitrine.ranking.rerank import blend_scores

    qids = [q for q in qids if candidates.get(q)]
    cross = {q: score_fn(queries[q], [docs.get(d, "") for d in candidates[q]]) for q in qids}
    results = {}
    for alpha in grid:
        values = []
        for q in qids:
            s = blend_scores(np.asarray(first_scores[q], dtype=np.float64), cross[q], alpha)
            ranked = [candidates[q][i] for i in sorted(range(len(s)), key=lambda i: (-s[i], i))]
            values.append(ndcg_at_k(ranked, qrels.get(q, {}), 10))
        results[alpha] = float(np.mean(values)) if values else 0.0
    best = max(results, key=lambda a: (results[a], -a))   # ties: the smaller weight, i.e. trust the first stage
    return best, results


def write_cross_variants(model: Any, out_dir: Path, qids: Sequence[str], queries: Mapping[str, str],
                         candidates: Mapping[str, Sequence[str]], first_scores: Mapping[str, Sequence[float]],
                         docs: Mapping[str, str], qrels: Qrels) -> dict[str, dict]:
    """Exports the cross-encoder's ONNX variants into out_dir/onnx and records each one's held-out nDCG@10 (the
    cross-encoder alone) and its loss against the torch model; returns {variant: {"ndcg@10", "loss"}}."""
    from vitrine.encoders import onnx
    from vitrine.ranking.rerank import ONNX_DIR, CrossEncoderReranker, export_cross_onnx

    record = export_cross_onnx(model, out_dir / ONNX_DIR)
    scorers = {"torch": model, **{name: CrossEncoderReranker(str(out_dir), model.config, backend=name)
                                  for name in record["variants"]}}
    ndcg = {name: fit_blend(m.score, qids, queries, candidates, first_scores, docs, qrels, grid=(1.0,))[1][1.0]
            for name, m in scorers.items()}
    record = onnx.write_record(out_dir / ONNX_DIR, onnx.add_quality(record, ndcg, f"held-out queries of training "
                                                                              f"({len(qids)}), the cross-encoder alone"))
    return {name: {"ndcg@10": v["ndcg@10"], "loss": v["loss"]} for name, v in record["variants"].items()}


@dataclass(frozen=True)
class RerankerTask:
    """What a reranker run learns from and is judged on.

    Args:
        queries: qid -> text for the training queries; qrels: their graded judgments.
        docs: doc_id -> the text the reranker sees (the same `item_text` the server uses).
        candidates: qid -> first-stage doc ids in rank order (hard-negative pool and held-out candidates).
        first_scores: qid -> their fused first-stage scores; with them, the weight of the cross-encoder against the
            first stage is chosen on the held-out queries and saved as "blend" (else 1: the cross-encoder alone).
        always_train: query ids that only ever train (pseudo-queries generated from the catalog), so that the
            held-out split, early stopping and the blend are decided on real queries alone.
    """

    queries: Mapping[str, str]
    qrels: Qrels
    docs: Mapping[str, str]
    candidates: Mapping[str, Sequence[str]]
    first_scores: Mapping[str, Sequence[float]] | None = None
    always_train: Sequence[str] = ()

    def ndcg(self, score_fn: Callable[[str, list[str]], np.ndarray], qids: Sequence[str]) -> float:
        """rerank_ndcg of these queries' candidates under score_fn."""
        return rerank_ndcg(score_fn, qids, self.queries, self.candidates, self.docs, self.qrels)


@dataclass
class _Selection:
    """The early-stopping record rank 0 keeps and every rank follows: the best held-out nDCG@10, its epoch, the
    epochs since without a gain, and the curve."""

    best: float = -1.0
    best_epoch: int = 0
    bad: int = 0
    curve: list[dict[str, Any]] = field(default_factory=list)

    def record(self, epoch: int, train_loss: float, score: float) -> bool:
        """Adds an epoch to the curve; whether it is the best so far."""
        self.curve.append({"epoch": epoch, "train_loss": train_loss, "heldout_ndcg@10": score})
        if score > self.best:
            self.best, self.best_epoch, self.bad = score, epoch, 0
            return True
        self.bad += 1
        return False


def _split_task(task: RerankerTask, config: RerankerTrainConfig) -> tuple[list[str], list[str], list[str]]:
    """(train, held-out, reserved-for-ranker) query ids: the judged real queries split by split_queries, every
    always-train query with judgments added to the training ones."""
    extra = set(task.always_train)
    real = [q for q in task.queries if q in task.qrels and q not in extra]
    train_q, held_q, reserved_q = (split_queries(real, config.holdout, config.reserve_for_ranker, config.seed) if real
                                   else ([], [], []))
    train_q += sorted(q for q in extra if q in task.qrels)
    if not train_q:
        raise ValueError("no training queries: give judged queries or pair generators.")
    return train_q, held_q, reserved_q


def _steps_per_epoch(train_q: Sequence[str], task: RerankerTask, config: RerankerTrainConfig, workers: int) -> int:
    """Batches an epoch trains on (one with fewer queries than workers is skipped); raises when there are none."""
    steps = sum(len(b) >= workers for b in listwise_batches(train_q, task.qrels, task.candidates, config.negatives,
                                                            config.batch_queries, random.Random(0), config.max_positives))
    if steps == 0:
        raise ValueError("no training query has both a relevant document and enough first-stage negatives.")
    return steps


def _optimizer(net: Any, total: int, config: RerankerTrainConfig) -> tuple[Any, Any]:
    """AdamW with a linear warm-up over warmup_ratio of the `total` steps, then cosine decay."""
    import torch

    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, int(total * config.warmup_ratio))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0)))))
    return opt, sched


def _listwise_loss(model: Any, batch: Sequence[tuple[str, str, list[str]]], task: RerankerTask, negatives: int) -> Any:
    """Softmax cross-entropy of each query's positive (column 0) against its negatives."""
    import torch

    q_texts, d_texts = [], []
    for qid, pos, negs in batch:
        for d in (pos, *negs):
            q_texts.append(task.queries[qid])
            d_texts.append(task.docs.get(d, ""))
    logits = model.logits(q_texts, d_texts).view(len(batch), 1 + negatives)   # (B, 1+N)
    return torch.nn.functional.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long, device=logits.device))


def _step(net: Any, opt: Any, sched: Any, loss: Any) -> float:
    """One optimiser step with the gradient norm clipped at 1; the loss."""
    import torch

    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    sched.step()
    return loss.item()


def _install(tmp_best: Path, out_dir: Path) -> Path:
    """The best epoch's model moved to out_dir, replacing what was there."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp_best.rename(out_dir)
    return out_dir


def train_reranker(base: str, out_dir: Path, task: RerankerTask, config: RerankerTrainConfig = RerankerTrainConfig(),
                   device: str | None = None, progress: bool = True, log: Callable[[str], None] = print,
                   extra_meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tunes `base` (a name or directory) on `task`; writes the best epoch to out_dir as a CrossEncoder directory.

    Inside a torch process group (`vitrine train reranker --ray`) every rank draws the same batches and scores its
    share of each through DDP, which averages the gradients (a batch with fewer queries than ranks is skipped).
    Rank 0 alone evaluates, decides the early stop (broadcast to the others) and writes out_dir; every rank
    returns the summary.
    """
    import torch

    from vitrine.ranking.rerank import CrossEncoderReranker, RerankConfig

    rank, workers = world()
    if rank:
        progress, log = False, _quiet
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    train_q, held_q, reserved_q = _split_task(task, config)
    model = CrossEncoderReranker(base, RerankConfig(max_length=config.max_length, cache_size=0), device=device)
    net = model.net
    train_net = wrap_ddp(net, model.device)  # the training forward; evaluation (rank 0 alone) uses net itself
    baseline = {"first_stage": task.ndcg(lambda q, d: -np.arange(len(d), dtype=np.float32), held_q)}
    if config.eval_base and rank == 0:
        baseline["base_model"] = task.ndcg(model.score, held_q)
    log(f"reranker: {len(train_q)} train / {len(held_q)} held-out / {len(reserved_q)} reserved queries; held-out nDCG@10 "
        + ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in baseline.items()))
    opt, sched = _optimizer(net, _steps_per_epoch(train_q, task, config, workers) * config.epochs, config)
    sel, t0 = _Selection(), time.perf_counter()
    tmp_best = Path(out_dir).with_name(Path(out_dir).name + ".best-tmp")
    for epoch in range(1, config.epochs + 1):
        net.train()
        model.net = train_net
        losses = []
        batches = listwise_batches(train_q, task.qrels, task.candidates, config.negatives, config.batch_queries, rng,
                                   config.max_positives)
        for batch in tqdm([b for b in batches if len(b) >= workers], desc=f"reranker epoch {epoch}", disable=not progress,
                          unit="step"):
            loss = _listwise_loss(model, shard(batch), task, config.negatives)  # this rank's share
            losses.append(_step(net, opt, sched, loss))
        net.eval()
        model.net = net
        model._cache.clear()
        if rank == 0:
            score = task.ndcg(model.score, held_q)
            log(f"reranker epoch {epoch}: loss {np.mean(losses):.4f}, held-out nDCG@10 {score:.4f}")
            if sel.record(epoch, float(np.mean(losses)), score):
                shutil.rmtree(tmp_best, ignore_errors=True)
                model.model.save(str(tmp_best))
        sel = broadcast(sel)  # rank 0 decides, every rank follows
        if sel.bad > config.patience:
            log(f"reranker: early stop after epoch {epoch} (best {sel.best_epoch})")
            break
    if rank:
        return broadcast(None)
    out_dir = _install(tmp_best, Path(out_dir))
    summary = {
        "version": f"ce-{time.strftime('%Y%m%d-%H%M%S')}", "base": base, "config": asdict(config),
        "best_epoch": sel.best_epoch, "heldout": {"ndcg@10": sel.best, **{f"{k}_ndcg@10": v for k, v in baseline.items()}},
        "curve": sel.curve, "seconds": round(time.perf_counter() - t0, 1),
        "train_qids": train_q, "heldout_qids": held_q, "reserved_qids": reserved_q, "workers": workers,
        **(extra_meta or {}),
    }
    if task.first_scores is not None and held_q:
        _blend(summary, out_dir, task, held_q, config, device, log)
    (out_dir / "training.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "metrics.json").write_text(json.dumps({"heldout": summary["heldout"], "curve": sel.curve}, indent=2))
    return broadcast(summary)


def _blend(summary: dict[str, Any], out_dir: Path, task: RerankerTask, held_q: Sequence[str], config: RerankerTrainConfig,
           device: str | None, log: Callable[[str], None]) -> None:
    """Chooses the saved model's blend weight on the held-out queries and, with config.onnx, writes and measures
    its ONNX variants; both into `summary`."""
    from vitrine.ranking.rerank import CrossEncoderReranker, RerankConfig

    best_model = CrossEncoderReranker(str(out_dir), RerankConfig(max_length=config.max_length, cache_size=0), device=device)
    summary["blend"], tried = fit_blend(best_model.score, held_q, task.queries, task.candidates, task.first_scores,
                                        task.docs, task.qrels)
    summary["heldout"]["blended_ndcg@10"] = tried[summary["blend"]]
    log(f"reranker: blend weight {summary['blend']:.2f} gives held-out nDCG@10 {tried[summary['blend']]:.4f}")
    if config.onnx:
        summary["onnx"] = write_cross_variants(best_model, out_dir, held_q, task.queries, task.candidates,
                                               task.first_scores, task.docs, task.qrels)
        log("reranker: ONNX variants " + ", ".join(f"{n} loss {v['loss']:+.4f}" for n, v in summary["onnx"].items()))


def _quiet(message: str) -> None:
    pass
