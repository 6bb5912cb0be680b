"""Robust weight signatures (RWS, Cai, Zhang, Wang, ICML 2023).

  signatures  project_out, quantize, extract, patch / unpatch / scale /
              compose, reference_coefficients
  fileformat  the ``.rws`` signature file: save / load (no pickle)
  batchnorm   patch_variables: BatchNorm kept (``keep_a``), re-estimated
              on clean data (``recompute``), or the reference's rule
              (``average``: BN and shortcut tensors averaged over the
              robust models, statistics re-estimated on corrupted data)
  analysis    depth profile, similarity matrix, storage ratio

The ``rws`` and ``rws_finetune`` tasks behind ``launch.py`` live in
``robustjax/tasks/``.

See docs/rws.md.
"""

from robustjax.rws.batchnorm import patch_variables
from robustjax.rws.fileformat import load, save
from robustjax.rws.signatures import (Signature, check_fits, compose,
                                      dequantize, extract, patch,
                                      project_out, quantize,
                                      reference_coefficients, scale,
                                      select_paths, unpatch)

__all__ = ["Signature", "check_fits", "compose", "dequantize", "extract",
           "load", "patch", "patch_variables", "project_out", "quantize",
           "reference_coefficients", "save", "scale", "select_paths",
           "unpatch"]
