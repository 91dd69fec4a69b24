"""paperlab: ML papers as small, composable, pure JAX functions, and a runner that reproduces their claims."""

__version__ = "0.1.0"
