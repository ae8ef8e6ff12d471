"""The stage graph (graph.py), its stages as plain classes (stages.py) and the runner of the
stages that share a key (run.py). Both drivers run this one graph: the Faust agents
(agents/instruments.py, agents/options.py) and the file driver (app/commands/backfill.py).
No Faust and no runtime here (the lint in ruff.toml)."""
