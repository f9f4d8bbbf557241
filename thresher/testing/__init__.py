"""Test support, kept off the runtime path: `run_stage` (a stage on in-memory rows through a
real Beam pipeline), the arithmetic problem generator, the llama.cpp server launcher and the
scripted policy. Nothing in `thresher` outside this package imports it, except the `scripted`
policy backend, which loads `thresher.testing.scripted` only when a recipe asks for it."""
