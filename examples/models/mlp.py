"""A plain nn.Sequential: schedlang cuts it into balanced stages and supplies the rest.

The input shape comes from the first nn.Linear (4 rows per microbatch of 16 features), the
targets are class indices for the 10 outputs, the loss is cross entropy, the optimizer AdamW.
"""

from torch import nn


def make(num_stages, num_microbatches):
    return nn.Sequential(
        nn.Linear(16, 64), nn.GELU(),
        nn.Linear(64, 64), nn.GELU(),
        nn.Linear(64, 64), nn.GELU(),
        nn.Linear(64, 10),
    )
