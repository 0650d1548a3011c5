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
