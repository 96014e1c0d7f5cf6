"""Subcommands; each module has its own @hydra.main `main`."""
