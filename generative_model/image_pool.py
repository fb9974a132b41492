"""A history of generated (mask, image) pairs shown to the discriminator (Shrivastava et al. 2017).

Half of the time a new fake takes the place of a random stored one and the stored one is shown
instead, so the discriminator keeps seeing the generator's older mistakes.
"""
import torch


class ImagePool:
    """Keeps up to ``size`` fakes; ``size`` 0 passes every batch through unchanged."""

    def __init__(self, size=50, generator=None):
        self.size = size
        self.items = []
        self.generator = generator

    def query(self, fakes):
        if self.size == 0:
            return fakes
        out = []
        for fake in fakes.detach():
            if len(self.items) < self.size:
                self.items.append(fake.clone())
                out.append(fake)
            elif torch.rand((), generator=self.generator).item() < 0.5:
                slot = int(torch.randint(len(self.items), (), generator=self.generator))
                out.append(self.items[slot])
                self.items[slot] = fake.clone()
            else:
                out.append(fake)
        return torch.stack(out)
