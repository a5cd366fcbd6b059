"""A load generator for a deployed Ranker server (``llmhyper loadtest``).

Modules: ``spec`` (the options, a pydantic model), ``users`` (who the calls are for),
``calls`` (the request of each call), ``schedule`` (which process sends which call, when),
``worker`` (one load-generator process), ``runner`` (start, release and collect the
processes), ``histogram`` (HDR histograms that merge), ``report`` (JSON, PNG).
"""
