"""A name -> callable registry, used to pick backbones and heads from the config."""
from typing import Callable, Dict


class Registry(dict):
    """``REG.register("NAME")`` decorates a builder; ``REG["NAME"]`` returns it with a clear error."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def register(self, key: str) -> Callable:
        def deco(fn):
            if key in self:
                raise KeyError(f"{self.name}: {key!r} is already registered")
            self[key] = fn
            return fn
        return deco

    def __getitem__(self, key):
        if key not in self:
            raise KeyError(f"{self.name}: unknown entry {key!r}; registered: {sorted(self.keys())}")
        return super().__getitem__(key)
