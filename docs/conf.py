"""Sphinx configuration of the paperlab docs (Sphinx + MyST, the optax / Flax convention).

The API reference, the CLI reference and the paper index are generated at build time by ``_ext/paperlab_docs.py``
from the packages' ``__all__``, the CLI's argparse parser and the paper registry, so they cannot drift from the code.
Build: ``sphinx-build -W -b html docs docs/_build/html`` (warnings are errors).
"""

import os
import sys

sys.path.insert(0, os.path.abspath("_ext"))
sys.path.insert(0, os.path.abspath(".."))

import paperlab  # noqa: E402

project = "paperlab"
author = "The paperlab authors"
copyright = "2026, The paperlab authors"  # noqa: A001
release = paperlab.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "paperlab_docs",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3
# Notebooks are executed by the test suite (nbmake); the docs render them as stored.
nb_execution_mode = "off"
autodoc_typehints = "none"  # signatures stay readable; types are in the docstrings
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
add_module_names = False
html_theme = "sphinx_book_theme"
html_title = "paperlab"
html_theme_options = {"repository_url": "https://github.com/paperlab/paperlab", "use_repository_button": True}
suppress_warnings = ["myst.header"]
