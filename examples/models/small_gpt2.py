"""transformers' GPT-2 from a small config: random weights, nothing is downloaded.

schedlang did not write this model: PyTorch's pipeline tracer cuts it where --split says
(--split transformer.h.2 begins stage 1 at the third block). Its output head is tied to the
token embedding; the two stages' copies get their gradients summed before every step.
"""

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from schedlang.runtime.models import ModelSpec


def make(num_stages, num_microbatches):
    config = GPT2Config(vocab_size=256, n_positions=32, n_embd=32, n_layer=4, n_head=2,
                        use_cache=False, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    tokens = torch.randint(0, config.vocab_size, (2 * num_microbatches, 16))  # one batch
    return ModelSpec(model=model, example=tokens)
