"""robustjax: adversarial robustness research in JAX.

Library code never imports ``configs/``: configs are data handed to the
functions here (see DESIGN.md principle 4).
"""

__version__ = "0.1.0"
