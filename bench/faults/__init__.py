"""Helpers of ``bench/fault_injection.py``: one module per family of checks.

* :mod:`faults.common`: scratch folders, CLI runs (kill, timeout, memory watch), CSV comparison,
  the result of a check;
* :mod:`faults.kills`: SIGKILL during each writer;
* :mod:`faults.corruption`: altered ONNX file, embedding cache and model files;
* :mod:`faults.hostile`: hostile names, ``--out`` naming inputs, an export inside the query folder;
* :mod:`faults.inputs`: FIFOs and devices, malformed model and project files, odd query files;
* :mod:`faults.disk`: a small full disk, concurrent runs sharing a cache, the home folder.
"""
