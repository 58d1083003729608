"""`vitrine train`: the group of training commands, one module each (train_clip, train_text, train_reranker,
train_ranker), every one a harness over trainer/."""
from __future__ import annotations

import argparse

from vitrine.cli import train_clip, train_ranker, train_reranker, train_text


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train models from catalog pairs, judgments or click logs")
    tsub = train.add_subparsers(dest="model", required=True)
    for command in (train_clip, train_reranker, train_ranker, train_text):
        command.register(tsub)
