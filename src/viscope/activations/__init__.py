"""Capture chosen layers' outputs, always per sample (see :class:`Tap`)."""

from viscope.activations.tap import (
    TOKEN_POLICIES,
    LayerRecord,
    Tap,
    capture,
    parse_layer,
    preserved_buffers,
)

__all__ = ["TOKEN_POLICIES", "LayerRecord", "Tap", "capture", "parse_layer", "preserved_buffers"]
