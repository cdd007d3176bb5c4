"""camservice's performance suite: ``python -m bench CATEGORY`` from a checkout (see bench/README.md).

Also the single-purpose tools it is built from, each runnable on its own:
``python -m bench.load`` (the load client), ``bench.baseline_server``,
``bench.vsbaseline``, ``bench.hotplug``, ``bench.scaling``, ``bench.isolation``,
``bench.download``, ``bench.files``, ``bench.media``.
"""
