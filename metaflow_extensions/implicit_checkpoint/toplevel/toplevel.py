__mf_extensions__ = "implicit-checkpoint"
__version__ = "0.1.0"
