"""neus2cli: fast neural surface reconstruction (NeuS2) from posed multi-view images.

Layering (nothing imports upward; the CLI only parses and calls):

    data    -> scenes, cameras, rays, normalization (numpy / torch, no model)
    model   -> hash-grid encodings, SDF and colour networks (torch + optional tinycudann)
    render  -> occupancy grid, ray sampling, NeuS alpha, compositing (torch + optional nerfacc)
    export  -> marching cubes on any SDF function, world-frame meshes
    eval    -> geometry and image metrics on meshes, points and images
    train   -> the training engine and runs: configs in; checkpoints, meshes, metrics out
    cli     -> thin Typer commands

``neus2cli.backends`` probes the optional GPU packages once and is the only module
that imports them; ``config``, ``errors``, ``io`` and ``log`` are shared by every layer.
"""

__version__ = "0.1.0"

import os as _os

# PyTorch's CPU thread pool (OpenMP) spins between operations by default. On a machine whose cores
# are shared (a laptop doing other work, CI, a second job), a spinning thread holds a core another
# thread needs, and a CPU training step ran 10-20x slower (issue #12: 23 min instead of 3 for the
# demo while other work ran). Threads that sleep when idle cost little on a quiet machine. Set
# before torch is imported (an explicit OMP_WAIT_POLICY wins); it has no effect once torch is loaded.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
