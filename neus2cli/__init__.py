"""neus2cli: fast neural surface reconstruction (NeuS2) from posed multi-view images.

Layering (nothing imports upward; the CLI only parses and calls):

    data    -> scenes, cameras, rays, normalization (numpy / torch, no model)
    model   -> hash-grid encodings, SDF and colour networks (torch + optional tinycudann)
    render  -> occupancy grid, ray sampling, NeuS alpha, compositing (torch + optional nerfacc)
    train   -> configs-in, checkpoints-out training loops (static and dynamic)
    export  -> marching cubes, coloured meshes in world coordinates
    eval    -> geometry and image metrics

``neus2cli.backends`` probes the optional GPU packages once and is the only module
that imports them.
"""

__version__ = "0.1.0"
