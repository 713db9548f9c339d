"""`intact demo` and the chaos run: simulated upstream + daemon + app-side load, judged.

`loadgen` drives the daemon through the official openai SDK and judges what the app saw
against the simulator's uninterrupted answer; `outcomes` taps what the relay says happened;
`view` renders both; `run` wires the demo together.
"""
