"""The alignment methods, each a config and the stages that make its pairs (`vlalign.plugins.METHODS`)."""
