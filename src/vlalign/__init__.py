"""vlalign: align vision-language models with AI feedback."""

__version__ = "0.1.0"
