"""robustjax: adversarial robustness research in JAX.

Libraries (``attacks``, ``models``, ``data``, ``training``, ``evaluation``,
``weightspace``, ``rws``, ``rift``) are functions of arrays, pytrees and
plain arguments; the task layer (``robustjax.tasks``) translates configs
(``configs/*.py``) into those arguments, and ``launch.py`` runs a task. See
docs/design.md.
"""

__version__ = "0.1.0"
