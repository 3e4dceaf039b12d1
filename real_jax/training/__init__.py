"""Training's library parts: `state` (TrainState, sharded init), `step` (the one jitted train
step), `losses` (L_gen, L_con), `optimizer`, `checkpointing` (Orbax state + grain iterator +
config), `metric_writer`. The loop that runs them is `real_jax.apps.driver`.
"""
