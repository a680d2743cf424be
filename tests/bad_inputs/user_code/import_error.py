"""A user's model module that imports a package the job's environment lacks."""

import definitely_not_an_installed_package  # noqa: F401

from models.mlp import MLP


class Model(MLP):
    pass
