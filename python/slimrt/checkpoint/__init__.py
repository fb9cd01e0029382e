"""Compressed checkpoints: a directory of model.safetensors + slimrt.json (+ tokenizer files).

``save(model, path)`` writes one atomically and deterministically; ``load_model(path)`` treats one
as hostile and validates everything before a tensor is assigned; ``read_metadata(path)`` returns
the validated slimrt.json alone. No pickle anywhere. One file per part of the format:

  format.py       slimrt.json: its fields, deterministic writing, strict validation
  safetensors.py  the validating reader of model.safetensors (the header is checked before any tensor byte)
  skeleton.py     the architecture as inert JSON, and the empty meta-device model rebuilt from it
  hf_config.py    type and range checks of the Hugging Face config values the runner reads
  modules.py      what is stored apart from plain tensors: slimrt modules, non-persistent buffers
  writer.py       save: collect, entropy-code (zstd), write to a temp dir, fsync, rename
  staging.py      the save's locked temp dir, and the removal of those killed saves left behind
  loader.py       load_model, read_metadata: directory checks, checksums, assembly against the skeleton

(writer/loader rather than save/load: a submodule named ``save`` would shadow the function
``slimrt.checkpoint.save``.)
"""

from slimrt.checkpoint.loader import LoadedCheckpoint, load_model, read_metadata
from slimrt.checkpoint.modules import nonpersistent_buffers, slimrt_modules
from slimrt.checkpoint.writer import ZSTD_LEVEL, SaveResult, save
from slimrt.errors import CheckpointError, CheckpointExistsError

__all__ = ["save", "load_model", "read_metadata", "LoadedCheckpoint", "SaveResult", "CheckpointError"]
