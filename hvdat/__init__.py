"""hvdat: distributed adversarial training on Horovod."""

__version__ = "0.1.0"
