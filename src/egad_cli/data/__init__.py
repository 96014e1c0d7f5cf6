"""Corpora, deterministic splits, tokenisation and packing."""

from egad_cli.data.corpus import Document, check_sources, iter_documents, source_files, split_of
from egad_cli.data.packing import Packed, Splits, build_splits, pack_all

__all__ = ["Document", "Packed", "Splits", "build_splits", "check_sources", "iter_documents", "pack_all",
           "source_files", "split_of"]
