"""Failures that are the setup's, not a record's, shared by the run store and the backends that raise them."""

from __future__ import annotations


class SetupError(RuntimeError):
    """A failure no record causes and no other record escapes (an endpoint that refuses the API key, a model
    it does not serve): a stage that meets one stops at once, keeping what it wrote, instead of logging every
    remaining record as failed the same way. The message names the cause and the fix."""
