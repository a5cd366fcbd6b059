"""Generated gRPC stubs for llmhyper.v1 (do not edit; run `python -m llmhyper.genproto`)."""
