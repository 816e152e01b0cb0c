"""Private kernels of the backends: numerical building blocks, not backends and not a stable API.

* :mod:`.torch_lowrank` — the curvature as a torch operator (CPU/CUDA) for the swap searches;
* :mod:`.update_moves` — exact incremental moves on the update objective (low-rank refits);
* :mod:`.selection_milp` — the selection binary QP as a HiGHS MILP (miqp's ``search="milp"``);
* :mod:`.pyomo_model` — the Pyomo MIQP model and the Gurobi / SCIP engine driver.
* :mod:`.leaps_jit` — the compiled (numba) node loop of leaps-and-bounds (miqp's exact search).

The backends (one module each directly under ``solvers/``) register themselves; nothing here does.
"""
