"""Text encoders (the ``text_encoder`` config group): captions -> caption features, the text conditions of a policy."""
