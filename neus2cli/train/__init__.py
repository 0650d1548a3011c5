"""Training: the engine (``trainer``, ``ema``, ``schedules``, ``losses``, ``pixels``), the run layer
(``run``, ``checkpoint``, ``outputs``, ``frames``) and the commands built on it (``static``, ``dynamic``,
``run_mesh``), which never import each other."""
