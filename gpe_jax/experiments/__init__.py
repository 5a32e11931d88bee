"""The paper's experiments, each a command that writes ``report.md``, PNG figures and
``numbers.json`` into its workdir: ``python -m gpe_jax.experiments.NAME --config=... --workdir=...``.
"""
