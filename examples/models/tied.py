"""Tied weights and a skip connection, cut into two stages where forward calls pipe_split()."""

import torch
from torch import nn
from torch.distributed.pipelining import pipe_split

from schedlang.runtime.models import ModelSpec


class TinyLM(nn.Module):
    def __init__(self, vocab=64, dim=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.body = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied: one matrix, used by both stages

    def forward(self, tokens):
        x = self.embed(tokens)
        pipe_split()  # stage 1 begins here
        return self.head(self.body(x) + x)  # x skips from stage 0 to the head


def make(num_stages, num_microbatches):
    return ModelSpec(model=TinyLM(), example=torch.randint(0, 64, (4 * num_microbatches, 16)))
