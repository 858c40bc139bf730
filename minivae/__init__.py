"""minivae: a readable variational autoencoder in NumPy.

Read in this order: :mod:`minivae.vae` (the ELBO and the model), :mod:`minivae.losses`,
:mod:`minivae.layers`, :mod:`minivae.optim`, then :mod:`minivae.loop` (the training loop, which
:mod:`minivae.train`, the main job, and :mod:`minivae.sweep`, the latent-size study, both run).
A trained run folder comes back with :func:`minivae.load` (:mod:`minivae.runs`); its options are a
:class:`minivae.config.RunConfig`, its checkpoint is read and written by :mod:`minivae.checkpoint`.
"""

from minivae import startup  # noqa: F401 - first: a Ctrl-C while the rest is imported is one line
from minivae.optim import Adam
from minivae.runs import RunError, load
from minivae.vae import VAE

__all__ = ["VAE", "Adam", "load", "RunError"]
__version__ = "0.1.0"
