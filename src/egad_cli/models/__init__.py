"""Loading teachers and building students (HF directories, hub ids, GGUF files, presets)."""

from egad_cli.models.loading import load_teacher, preflight_model_source, preflight_student_source
from egad_cli.models.setup import check_context, load_frozen_teacher, load_models
from egad_cli.models.students import build_student
from egad_cli.models.vocab import check_shared_vocab

__all__ = ["build_student", "check_context", "check_shared_vocab", "load_frozen_teacher", "load_models", "load_teacher",
           "preflight_model_source",
           "preflight_student_source"]
