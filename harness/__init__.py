"""attnbench harness: registry, configs, runner plumbing, results store, reporting and CLI."""

__version__ = "0.1.0"
