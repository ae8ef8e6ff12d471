"""The Faust driver of the stage graph: one module per agent (instruments: every stage keyed by
instrument, on the raw topic; options: the option groups, on `options.parts`; control: runtime
settings), the web views of their state (web), the consumer lag per partition (lag), and the C
heap's timed trim (heap). Above the runtime (app/), which imports nothing from here but in its
entry point."""
