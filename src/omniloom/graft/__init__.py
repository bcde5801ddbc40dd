"""Graft a pretrained text LLM into an omni model directory (``omniloom graft``)."""
