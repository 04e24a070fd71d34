"""Artifacts (safetensors + JSON manifest, no pickle) that rebuild compressed models exactly."""

from .artifact import MANIFEST, WEIGHTS, Artifact, artifact_bytes, copy_artifact, load, reload, save

__all__ = ["MANIFEST", "WEIGHTS", "Artifact", "artifact_bytes", "copy_artifact", "load", "reload",
           "save"]
