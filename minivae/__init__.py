"""minivae: a readable variational autoencoder in NumPy.

Read in this order: :mod:`minivae.vae` (the ELBO and the model), :mod:`minivae.losses`,
:mod:`minivae.layers`, :mod:`minivae.optim`, then :mod:`minivae.train` (the training loop).
"""

from minivae.optim import Adam
from minivae.vae import VAE

__all__ = ["VAE", "Adam"]
__version__ = "0.1.0"
