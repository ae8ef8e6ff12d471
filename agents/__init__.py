"""The Faust driver of the stage graph: one module per agent (instruments: every stage keyed by
instrument, on the raw topic; options: the option groups, on `options.parts`; control: runtime
settings), and the web views of their state (web). Above the runtime (app/), which imports
nothing from here but in its entry point."""
